//! Dataspaces: memory a program allocates through its namespace (`namespace::ALLOC`) and shares
//! by capability. Each dataspace has two gates of ours (read-write, read-only), each watched
//! (`IpcGate::Watch`) once handed out; when no program holds either, its pages are revoked from
//! everyone, go back to the pool, and the owner's quota is refunded.

use crate::mem::{Account, Chunk, Pool};
use abi::cap::well_known as wk;
use abi::proto::fpage::{mem_rights, unmap_mask, Fpage};
use abi::{CapIdx, Error, Rights};
use alloc::vec::Vec;
use l4::ipc::{factory, gate, irq, task};

/// Gate labels: `GATE_LABEL + 2 id` read-write, `+ 1` read-only; watch Irqs likewise.
pub const GATE_LABEL: u64 = 0x1_0000;
pub const GONE_LABEL: u64 = 0x2_0000;
/// Our slots: 4 per dataspace (rw gate, ro gate, rw Irq, ro Irq) from `CAP_BASE`.
const CAP_BASE: u64 = 4000;
const MAX: usize = 1000;
/// Largest dataspace (pages are lent one by one).
const MAX_SIZE: u64 = 64 << 20;

pub struct Ds {
    pages: Vec<Chunk>,
    size: u64,
    /// The program charged for it.
    owner: usize,
    /// Per side (rw, ro): handed out, and gone again.
    out: [bool; 2],
    gone: [bool; 2],
}

#[derive(Default)]
pub struct Dataspaces {
    list: Vec<Option<Ds>>,
}

/// The read-only gate's slot of dataspace `id`.
pub fn ro_slot(id: usize) -> u64 {
    gate_slot(id, 1).0
}

fn gate_slot(id: usize, side: usize) -> CapIdx {
    CapIdx(CAP_BASE + 4 * id as u64 + side as u64)
}

fn irq_slot(id: usize, side: usize) -> CapIdx {
    CapIdx(CAP_BASE + 4 * id as u64 + 2 + side as u64)
}

impl Dataspaces {
    /// A new zeroed dataspace of `size` bytes for program `owner`; its read-write gate.
    pub fn alloc(
        &mut self,
        pool: &mut Pool,
        a: &mut Account,
        owner: usize,
        size: u64,
    ) -> Result<(usize, CapIdx), Error> {
        if size == 0 || size > MAX_SIZE {
            return Err(Error::Inval);
        }
        let size = size.next_multiple_of(4096);
        let id = match self.list.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.list.len() < MAX => {
                self.list.push(None);
                self.list.len() - 1
            }
            None => return Err(Error::NoMem),
        };
        let mut pages = Vec::new();
        for _ in 0..size / 4096 {
            match pool.lend_detached(a, 12) {
                Ok(c) => pages.push(c),
                Err(e) => {
                    pool.give_back(a, &mut pages);
                    return Err(e);
                }
            }
        }
        for side in 0..2 {
            let made = factory::gate(
                wk::FACTORY,
                gate_slot(id, side),
                wk::THREAD,
                GATE_LABEL + 2 * id as u64 + side as u64,
            )
            .and_then(|()| factory::irq(wk::FACTORY, irq_slot(id, side)))
            .and_then(|()| {
                irq::attach(irq_slot(id, side), wk::THREAD, GONE_LABEL + 2 * id as u64 + side as u64)
            });
            if let Err(e) = made {
                delete_caps(id);
                pool.give_back(a, &mut pages);
                return Err(e);
            }
        }
        self.list[id] = Some(Ds { pages, size, owner, out: [false; 2], gone: [false; 2] });
        Ok((id, gate_slot(id, 0)))
    }

    /// A new dataspace for program `owner` with a copy of the one `cap` (a capability someone
    /// sent us, either side) refers to.
    pub fn copy(
        &mut self,
        pool: &mut Pool,
        a: &mut Account,
        owner: usize,
        cap: CapIdx,
    ) -> Result<(usize, CapIdx), Error> {
        let src = (0..self.list.len())
            .filter(|&id| self.list[id].is_some())
            .find(|&id| {
                (0..2).any(|side| l4::ipc::task::cap_equal(wk::TASK, cap, gate_slot(id, side)) == Ok(true))
            })
            .ok_or(Error::NoEnt)?;
        let size = self.list[src].as_ref().map_or(0, |d| d.size);
        let (id, gate) = self.alloc(pool, a, owner, size)?;
        let (from, to) = (self.list[src].as_ref(), self.list[id].as_ref());
        if let (Some(from), Some(to)) = (from, to) {
            for (&(s, _), &(d, _)) in from.pages.iter().zip(&to.pages) {
                // SAFETY: both are pages of ours, mapped writable (never granted away), and
                // distinct chunks; nobody else writes the new one yet.
                unsafe { core::ptr::copy_nonoverlapping(s as *const u8, d as *mut u8, 4096) };
            }
        }
        Ok((id, gate))
    }

    pub fn get(&self, id: usize) -> Option<&Ds> {
        self.list.get(id)?.as_ref()
    }

    /// The gate of `side` (0 rw, 1 ro) is being handed out: watch it from now on (call after
    /// the reply that carries it).
    pub fn handed_out(&mut self, id: usize, side: usize) {
        if let Some(d) = self.list.get_mut(id).and_then(Option::as_mut) {
            if !d.out[side] {
                d.out[side] = true;
                let _ = gate::watch(gate_slot(id, side), Some(irq_slot(id, side)));
            }
        }
    }

    /// A watch fired: that side's last capability outside moe is gone. Returns (owner, bytes)
    /// when the dataspace was freed.
    pub fn gone(
        &mut self,
        pool: &mut Pool,
        accounts: &mut [Account],
        label: u64,
    ) -> Option<(usize, usize, u64)> {
        let n = label.checked_sub(GONE_LABEL)? as usize;
        let (id, side) = (n / 2, n % 2);
        let d = self.list.get_mut(id)?.as_mut()?;
        d.gone[side] = true;
        if !(d.gone[0] && (!d.out[1] || d.gone[1])) {
            return None;
        }
        let mut d = self.list[id].take()?;
        // Revoke the pages from every program that mapped them, then return them.
        for &(at, order) in &d.pages {
            let _ = task::unmap(wk::TASK, unmap_mask::OTHER_SPACES, &[Fpage::memory(at, order, Rights::ALL)]);
        }
        delete_caps(id);
        let owner = d.owner;
        let size = d.size;
        pool.give_back(&mut accounts[owner], &mut d.pages);
        Some((id, owner, size))
    }
}

impl Ds {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The page at `offset` as a flexpage with the rights of `side`.
    pub fn page(&self, offset: u64, side: usize) -> Option<Fpage> {
        let &(at, _) = self.pages.get((offset / 4096) as usize)?;
        let r = if side == 0 { mem_rights::R | mem_rights::W } else { mem_rights::R };
        Some(Fpage::memory(at, 12, Rights::from_bits_truncate(r)))
    }
}

fn delete_caps(id: usize) {
    let fps = [0, 1].map(|s| Fpage::object(gate_slot(id, s), 0, Rights::ALL));
    let irqs = [0, 1].map(|s| Fpage::object(irq_slot(id, s), 0, Rights::ALL));
    let _ = task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &fps);
    let _ = task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &irqs);
}

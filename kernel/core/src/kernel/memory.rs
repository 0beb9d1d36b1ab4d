//! Mapping memory and capabilities between tasks: map/grant items, `Task::Map`, `Task::Unmap`,
//! and keeping page tables and capability tables in step with the mapping databases.

use crate::hal::Arch;
use crate::kernel::{Kernel, Obj};
use crate::mapdb::{Entry, MapDbError};
use crate::mem::{Perms, PhysAddr, VirtAddr, PAGE_SIZE};
use crate::slab::Id;
use abi::proto::fpage::{self, Fpage, Type};
use abi::{CapIdx, Error, Rights};

/// Memory rights in flexpages (Fiasco's): execute, write, read.
pub const MEM_X: u8 = 1;
pub const MEM_W: u8 = 2;
pub const MEM_R: u8 = 4;
pub const MEM_ALL: u8 = MEM_X | MEM_W | MEM_R;

/// Pages a lazy range materializes at once (2 MiB): few faults, little work per fault.
const LAZY_BLOCK: u64 = 512 * PAGE_SIZE;

/// Physical memory given to a task (sigma0) without mapping it yet: at boot, mapping 100+ MiB
/// page by page costs tens of milliseconds. A block becomes mapping-database roots and
/// page-table entries when the task first touches it or maps from it, exactly once: a block it
/// has since granted away is not conjured up again.
pub struct Lazy {
    pub task: Id,
    pub va: u64,
    pub pa: u64,
    pub len: u64,
    done: alloc::vec::Vec<bool>,
}

/// Largest flexpage the kernel processes in one item (1 GiB of memory, 2^16 slots).
const MAX_MEM_ORDER: u32 = 30;
const MAX_OBJ_ORDER: u32 = 16;

fn perms(rights: u8) -> Perms {
    Perms { write: rights & MEM_W != 0, exec: rights & MEM_X != 0 }
}

fn db_error(e: MapDbError) -> Error {
    match e {
        MapDbError::NoSource => Error::NoEnt,
        MapDbError::Cycle => Error::Inval,
        MapDbError::Occupied => Error::Exists,
    }
}

/// A map or grant item as the kernel carries it out: the flexpage `fp` of the sender, placed at
/// `snd_base` inside the receiver's `window`; granted (the sender loses it) or mapped.
#[derive(Clone, Copy, Debug)]
pub struct MapItem {
    pub fp: Fpage,
    pub snd_base: u64,
    pub window: Fpage,
    pub grant: bool,
}

impl MapItem {
    /// The item whose words are `w0` (send base | `map::GRANT`) and `fp`, into `window`
    /// (`None`: the receiver's whole space of `fp`'s type, as for page-fault replies and
    /// `Task::Map`).
    #[inline(always)]
    pub fn new(w0: u64, fp: Fpage, window: Option<Fpage>) -> Self {
        // (Tests of the type bits, not a `match`: its jump table would be one more page to
        // touch on the fault path.)
        let window = window.unwrap_or(if fp.is(Type::Object) {
            Fpage::object(CapIdx(0), 16, Rights::ALL)
        } else if fp.is(Type::IoPort) {
            Fpage::io(0, 16, Rights::ALL)
        } else {
            Fpage::memory(0, 47, Rights::ALL)
        });
        MapItem { fp, snd_base: w0 & !0xfff, window, grant: w0 & abi::proto::map::GRANT != 0 }
    }
}

/// Where one item lands: source base, destination base, and size (units of the fpage type).
fn placement(fp: Fpage, snd_base: u64, window: Fpage) -> Option<(u64, u64, u64)> {
    let (fs, ws) = (fp.size()?, window.size()?);
    if fs <= ws {
        Some((fp.base(), window.base() + (snd_base & (ws - 1) & !(fs - 1)), fs))
    } else {
        Some((fp.base() + (snd_base & (fs - 1) & !(ws - 1)), window.base(), ws))
    }
}

impl<A: Arch> Kernel<A> {
    /// Applies removed memory mappings to the page tables.
    #[link_section = ".text.fast.map"]
    pub fn unmap_entries(&mut self, gone: &[Entry<PhysAddr>]) {
        for e in gone {
            if let Some(t) = self.tasks.get_mut(Id::from_u64(e.key.0)) {
                A::unmap(&mut t.space, VirtAddr(e.key.1));
            }
        }
    }

    /// Applies reduced rights (or a new mapping) to the page tables.
    #[link_section = ".text.fast.map"]
    fn remap_entries(&mut self, changed: &[Entry<PhysAddr>]) {
        for e in changed {
            let Some(t) = self.tasks.get_mut(Id::from_u64(e.key.0)) else { continue };
            if e.rights == 0 {
                A::unmap(&mut t.space, VirtAddr(e.key.1));
            } else {
                let _ = A::map(&mut t.space, VirtAddr(e.key.1), e.value, perms(e.rights));
            }
        }
    }

    /// Records `pa` as a root mapping of `task` at `va` and enters it into its page table.
    pub fn map_root(&mut self, task: Id, va: u64, pa: PhysAddr, rights: u8) -> Result<(), Error> {
        let key = (task.as_u64(), va);
        let gone = self.memdb.revoke(key, true);
        self.unmap_entries(&gone);
        self.memdb.insert_root(key, pa, rights).map_err(db_error)?;
        let t = self.tasks.get_mut(task).ok_or(Error::NoEnt)?;
        A::map(&mut t.space, VirtAddr(va), pa, perms(rights)).map_err(|_| Error::NoMem)?;
        Ok(())
    }

    /// Gives `task` the physical memory `pa..pa + len` at `va`, materialized block by block on
    /// first use (all three page-aligned).
    pub fn add_lazy(&mut self, task: Id, va: u64, pa: PhysAddr, len: u64) {
        let blocks = len.div_ceil(LAZY_BLOCK) as usize;
        self.lazy.push(Lazy { task, va, pa: pa.0, len, done: alloc::vec![false; blocks] });
    }

    /// Materializes the lazy block of `task` holding `va`, if there is one not yet done.
    /// Returns true if it did (a fault there is then resolved).
    pub fn materialize(&mut self, task: Id, va: u64) -> bool {
        let Some(r) = self.lazy.iter_mut().find(|r| r.task == task && va >= r.va && va - r.va < r.len) else {
            return false;
        };
        let block = ((va - r.va) / LAZY_BLOCK) as usize;
        if core::mem::replace(&mut r.done[block], true) {
            return false;
        }
        let (va0, pa0) = (r.va + block as u64 * LAZY_BLOCK, r.pa + block as u64 * LAZY_BLOCK);
        let end = (r.va + r.len).min(va0 + LAZY_BLOCK);
        let mut off = 0;
        while va0 + off < end {
            if self.map_root(task, va0 + off, PhysAddr(pa0 + off), MEM_ALL).is_err() {
                return false;
            }
            off += PAGE_SIZE;
        }
        true
    }

    /// Maps (or grants) the flexpage `fp` of `src` into `dst` at the place `snd_base` selects
    /// inside `window`. Slots the source does not have are skipped, as in L4.
    #[inline(always)]
    pub fn map_fpage(&mut self, src: Id, dst: Id, it: MapItem) -> Result<(), Error> {
        if it.fp.is(Type::Memory) & it.window.is(Type::Memory) {
            return self.map_memory(src, dst, it);
        }
        self.map_other(src, dst, it)
    }

    /// [`Kernel::map_fpage`] of memory: every page fault a vCPU's guest resolves comes here,
    /// so it sits with the rest of the map path in `.text.fast.map` (few code pages to touch).
    #[inline(never)]
    #[link_section = ".text.fast.map"]
    fn map_memory(&mut self, src: Id, dst: Id, it: MapItem) -> Result<(), Error> {
        let MapItem { fp, snd_base, window, grant } = it;
        if fp.order() > MAX_MEM_ORDER || fp.order() < 12 {
            return Err(Error::Inval);
        }
        let (from, to, size) = placement(fp, snd_base, window).ok_or(Error::Inval)?;
        let mask = fp.rights().bits();
        let (s, d) = (src.as_u64(), dst.as_u64());
        let mut off = 0;
        while off < size {
            let (sk, dk) = ((s, from + off), (d, to + off));
            off += PAGE_SIZE;
            if dk.1 >= abi::kip::USER_END || dk.1 == abi::kip::KIP_ADDR {
                return Err(Error::Inval);
            }
            if sk == dk {
                continue;
            }
            // Slots the source does not have are skipped (lazy memory materializes first, then
            // it is tried once more); the database's own lookup tells, rather than one more
            // before it. (One call site: `derive` is inlined here.)
            let mut retried = false;
            let r = loop {
                let r = if grant { self.memdb.grant(sk, dk, mask) } else { self.memdb.derive(sk, dk, mask) };
                if matches!(r, Err(MapDbError::NoSource))
                    && !retried
                    && !self.lazy.is_empty()
                    && self.materialize(src, sk.1)
                {
                    retried = true;
                    continue;
                }
                break r;
            };
            let (gone, e) = match r {
                Err(MapDbError::NoSource) => continue,
                r => r.map_err(db_error)?,
            };
            if !gone.is_empty() {
                self.unmap_entries(&gone);
            }
            if grant {
                if let Some(t) = self.tasks.get_mut(src) {
                    A::unmap(&mut t.space, VirtAddr(sk.1));
                }
            }
            self.remap_entries(&[e]);
        }
        Ok(())
    }

    /// [`Kernel::map_fpage`] of capabilities and I/O ports (and of mismatched types).
    #[inline(never)]
    fn map_other(&mut self, src: Id, dst: Id, it: MapItem) -> Result<(), Error> {
        let MapItem { fp, snd_base, window, grant } = it;
        if fp.typ() != window.typ() {
            return Err(Error::Inval);
        }
        match fp.typ() {
            Some(Type::Object) => {}
            Some(Type::IoPort) => return self.map_ports(src, dst, fp, grant),
            _ => return Err(Error::Inval),
        }
        if fp.order() > MAX_OBJ_ORDER {
            return Err(Error::Inval);
        }
        // The send base is a selector (index << 12) for objects.
        let (from, to, size) = placement(fp, snd_base >> 12, window).ok_or(Error::Inval)?;
        let mask = fp.rights().bits();
        let (s, d) = (src.as_u64(), dst.as_u64());
        for off in 0..size {
            let (sk, dk) = ((s, from + off), (d, to + off));
            if sk == dk || self.capdb.get(sk).is_none() {
                continue;
            }
            if CapIdx(dk.1).0 == 0 || dk.1 as usize >= crate::captable::MAX_SLOTS {
                return Err(Error::Inval);
            }
            let r = if grant { self.capdb.grant(sk, dk, mask) } else { self.capdb.derive(sk, dk, mask) };
            let (gone, e) = r.map_err(db_error)?;
            if !grant {
                self.cap_added(e.value);
            }
            self.drop_caps(&gone);
            if grant {
                self.caps_changed();
                if let Some(t) = self.tasks.get_mut(src) {
                    t.caps.take(CapIdx(sk.1));
                }
            }
            self.update_caps(&[e]);
        }
        Ok(())
    }

    /// `Task::Unmap` of flexpages of `task`: revokes what was derived from them, removes them
    /// too with `ALL_SPACES`, and destroys the objects with `DELETE_OBJ` (needs the D right).
    /// Returns true if the caller's own task was destroyed.
    pub fn unmap_fpage(&mut self, task: Id, fp: Fpage, mask: u64) -> Result<bool, Error> {
        let include_self = mask & fpage::unmap_mask::ALL_SPACES != 0;
        let delete = mask & fpage::unmap_mask::DELETE_OBJ == fpage::unmap_mask::DELETE_OBJ;
        let t = task.as_u64();
        match fp.typ() {
            Some(Type::Memory) if fp.order() >= 12 && fp.order() <= 47 => {
                let size = fp.size().ok_or(Error::Inval)?;
                let base = fp.base();
                let last = base.saturating_add(size) - 1;
                let rights = fp.rights().bits();
                // The flexpage's rights are the ones to take away; taking R removes.
                if rights & MEM_R != 0 {
                    let gone = self.memdb.revoke_range(t, base, last, include_self);
                    self.unmap_entries(&gone);
                } else {
                    for k in self.memdb.keys_in(t, base, last) {
                        let changed = self.memdb.reduce(k, rights, include_self);
                        self.remap_entries(&changed);
                    }
                }
                Ok(false)
            }
            Some(Type::Object) if fp.order() <= MAX_OBJ_ORDER => {
                let me_dead = self.current_task() == Some(task);
                for idx in fp.base()..fp.base() + (1u64 << fp.order()) {
                    let Some(cap) = self.cap(task, CapIdx(idx)) else { continue };
                    if delete && cap.rights.contains(Rights::D) && fp.rights().contains(Rights::D) {
                        self.destroy(cap.obj);
                        if me_dead && cap.obj == Obj::Task(task) {
                            return Ok(true);
                        }
                        continue;
                    }
                    let r = fp.rights().bits();
                    if r & Rights::R.bits() != 0 {
                        let gone = self.capdb.revoke((t, idx), include_self);
                        self.drop_caps(&gone);
                    } else {
                        let changed = self.capdb.reduce((t, idx), r, include_self);
                        self.update_caps(&changed);
                    }
                }
                Ok(false)
            }
            Some(Type::IoPort) if fp.order() <= 16 => {
                let (first, end) = (fp.base(), (fp.base() + (1 << fp.order())).min(PORTS));
                let keys = self.iodb.keys_in(t, first, end.max(first + 1) - 1);
                for k in keys {
                    let gone = self.iodb.revoke(k, include_self);
                    self.deny_ports(&gone);
                }
                Ok(false)
            }
            _ => Err(Error::Inval),
        }
    }
}

/// Number of x86 I/O ports.
const PORTS: u64 = 65536;

impl<A: Arch> Kernel<A> {
    /// Maps (or grants) I/O ports: they keep their numbers, so only the flexpage matters. The
    /// root owner (sigma0) has every port without a database entry until it first maps it.
    fn map_ports(&mut self, src: Id, dst: Id, fp: Fpage, grant: bool) -> Result<(), Error> {
        if fp.order() > 16 {
            return Err(Error::Inval);
        }
        let (first, end) = (fp.base(), fp.base() + (1 << fp.order()));
        if end > PORTS {
            return Err(Error::Inval);
        }
        let root = self.tasks.get(src).ok_or(Error::NoEnt)?.io_root;
        let (s, d) = (src.as_u64(), dst.as_u64());
        for port in first..end {
            if self.iodb.get((s, port)).is_none() {
                if !root {
                    continue;
                }
                self.iodb.insert_root((s, port), port, Rights::ALL.bits()).map_err(db_error)?;
            }
            if s == d {
                continue;
            }
            let mask = fp.rights().bits() | Rights::R.bits();
            let r = if grant {
                self.iodb.grant((s, port), (d, port), mask)
            } else {
                self.iodb.derive((s, port), (d, port), mask)
            };
            let (gone, e) = r.map_err(db_error)?;
            self.deny_ports(&gone);
            self.set_port(dst, e.value, true);
            if grant {
                self.set_port(src, port, false);
            }
        }
        Ok(())
    }

    /// Removed port mappings: their tasks lose the ports.
    pub fn deny_ports(&mut self, gone: &[Entry<u64>]) {
        for e in gone {
            self.set_port(Id::from_u64(e.key.0), e.value, false);
        }
    }

    /// Allows or denies `port` in `task`'s bitmap, creating it on the first allowed port, and
    /// keeps the loaded TSS copy current.
    fn set_port(&mut self, task: Id, port: u64, allow: bool) {
        let key = task.as_u64();
        let Some(t) = self.tasks.get(task) else { return };
        if t.io.is_none() {
            if !allow {
                return;
            }
            self.caps_changed();
            let Some(t) = self.tasks.get_mut(task) else { return };
            t.io = Some(alloc::boxed::Box::new([0xff; crate::hal::IO_BITMAP_BYTES]));
            let threads = t.threads.clone();
            for th in threads {
                if let Some(x) = self.threads.get_mut(th) {
                    // A vCPU in a user task gets it back when it returns to its own.
                    match (x.vcpu_user, x.vcpu.as_mut()) {
                        (Some(_), Some(a)) => a.kernel_io = key,
                        _ => x.io_task = key,
                    }
                }
            }
        }
        let Some(bits) = self.tasks.get_mut(task).and_then(|t| t.io.as_mut()) else { return };
        let (byte, bit) = ((port / 8) as usize, 1u8 << (port % 8));
        if allow {
            bits[byte] &= !bit;
        } else {
            bits[byte] |= bit;
        }
        if self.io_loaded == key {
            A::io_load(bits);
        }
    }

    /// The key [`Kernel::load_io`] takes for `task`'s threads: the task if it has an I/O
    /// bitmap, else 0.
    pub fn io_key(&self, task: Id) -> u64 {
        if self.tasks.get(task).is_some_and(|t| t.io.is_some()) {
            task.as_u64()
        } else {
            0
        }
    }

    /// Makes the TSS hold the I/O bitmap of task `key` (0: none) before that task runs.
    pub fn load_io(&mut self, key: u64) {
        if self.io_loaded == key {
            return;
        }
        match self.tasks.get(Id::from_u64(key)).and_then(|t| t.io.as_ref()) {
            Some(bits) if key != 0 => A::io_load(bits),
            _ => A::io_disable(),
        }
        self.io_loaded = key;
    }
}

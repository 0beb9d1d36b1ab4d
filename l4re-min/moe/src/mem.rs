//! Memory moe lends its programs through the sigma0 protocol, within each program's quota.
//!
//! moe maps chunks to a program and never grants them, so every chunk stays in moe's space
//! (at `POOL_BASE` upwards) and outlives the program it was lent to: when that program ends,
//! its chunks return to the pool and are zeroed before they are lent again.

use abi::Error;
use alloc::vec::Vec;
use l4::loader::{LoadError, PageSource};

/// moe's window for lent memory (above its own heap at 0x10_0000_0000 and the loader's scratch
/// page at 0x20_0000_0000).
const POOL_BASE: u64 = 0x30_0000_0000;
const POOL_END: u64 = 0x40_0000_0000;
/// Chunk sizes a program may ask for: one page to 4 MiB.
const ORDERS: core::ops::RangeInclusive<u32> = 12..=22;

/// A chunk: its address in our space and log2 size.
pub type Chunk = (u64, u32);

/// What one program holds.
pub struct Account {
    pub quota: u64,
    /// Lent through the sigma0 protocol (counted against `quota`).
    pub used: u64,
    /// Image and stack pages the loader took for it (not counted against `quota`).
    pub image: u64,
    /// Of `used`, the bytes that had served an ended program before (zeroed since).
    pub reused: u64,
    chunks: Vec<Chunk>,
    /// The range reserved by `REQ_RESERVE` (charged to `used`), backed on first touch.
    reserved: Option<Reserved>,
}

/// A reserved range of a program's space and which of its pages are backed.
struct Reserved {
    start: u64,
    end: u64,
    /// One bit per page from `start`.
    backed: Vec<u64>,
}

impl Reserved {
    fn page(&self, addr: u64) -> usize {
        ((addr - self.start) / 4096) as usize
    }

    fn is_backed(&self, addr: u64) -> bool {
        let p = self.page(addr);
        self.backed[p / 64] & (1 << (p % 64)) != 0
    }

    fn set_backed(&mut self, addr: u64) {
        let p = self.page(addr);
        self.backed[p / 64] |= 1 << (p % 64);
    }
}

/// What a first touch of a reserved range backs at most: 2 MiB (log2). A whole aligned block
/// comes from sigma0 aligned and contiguous, so the kernel maps it with one 2 MiB page: fewer
/// faults (L4Linux touches ~120 of its 192 blocks while it boots) and page walks that read one
/// table less after every switch (`docs/perf.md`). The price: a first touch zeroes 2 MiB.
const RESERVE_BLOCK: u32 = 21;

impl Account {
    pub fn new(quota: u64) -> Self {
        Account { quota, used: 0, image: 0, reused: 0, chunks: Vec::new(), reserved: None }
    }
}

pub struct Pool {
    next: u64,
    free: Vec<Chunk>,
}

impl Pool {
    pub const fn new() -> Self {
        Pool { next: POOL_BASE, free: Vec::new() }
    }

    /// Lends `a` a zeroed chunk of 2^`order` bytes within its quota.
    pub fn lend(&mut self, a: &mut Account, order: u32) -> Result<Chunk, Error> {
        if !ORDERS.contains(&order) {
            return Err(Error::Inval);
        }
        if a.used + (1u64 << order) > a.quota {
            return Err(Error::NoMem);
        }
        let c = self.take(a, order)?;
        a.used += 1 << order;
        Ok(c)
    }

    /// A zeroed chunk for `a`: a returned one, else a fresh one from sigma0.
    fn take(&mut self, a: &mut Account, order: u32) -> Result<Chunk, Error> {
        let size = 1u64 << order;
        let chunk = match self.free.iter().position(|c| c.1 == order) {
            Some(i) => {
                let c = self.free.swap_remove(i);
                // SAFETY: the chunk is mapped writable in our space (we never grant it away)
                // and lent to nobody now: its last borrower's task is gone.
                unsafe { core::ptr::write_bytes(c.0 as *mut u8, 0, size as usize) };
                a.reused += size;
                c
            }
            None => {
                let at = self.next.next_multiple_of(size);
                if at + size > POOL_END {
                    return Err(Error::NoMem);
                }
                l4::ipc::sigma0::any(at, order)?;
                self.next = at + size;
                (at, order)
            }
        };
        a.chunks.push(chunk);
        Ok(chunk)
    }

    /// `[start, end)` of `a`'s space (page aligned) charged to its quota now and backed on
    /// first touch ([`Pool::back`]). One range per program.
    pub fn reserve(&mut self, a: &mut Account, start: u64, end: u64) -> Result<(), Error> {
        if a.reserved.is_some() {
            return Err(Error::Exists);
        }
        if start >= end
            || end > abi::kip::USER_END
            || !start.is_multiple_of(4096)
            || !end.is_multiple_of(4096)
        {
            return Err(Error::Inval);
        }
        if a.used.checked_add(end - start).is_none_or(|u| u > a.quota) {
            return Err(Error::NoMem);
        }
        a.used += end - start;
        let pages = (end - start) / 4096;
        a.reserved = Some(Reserved { start, end, backed: alloc::vec![0; pages.div_ceil(64) as usize] });
        Ok(())
    }

    /// A page fault of `a` at `addr`: if it lies in its reserved range, on a page not backed
    /// yet, a zeroed chunk (already charged) and where it goes: the largest aligned block of
    /// at most 2 MiB around `addr` inside the range. `Ok(None)`: not ours to answer; an
    /// error: ours, but the pool has no memory left (quotas promise more than there is).
    pub fn back(&mut self, a: &mut Account, addr: u64) -> Result<Option<(Chunk, u64)>, Error> {
        let Some(r) = a.reserved.as_ref() else { return Ok(None) };
        if !(r.start..r.end).contains(&addr) || r.is_backed(addr) {
            return Ok(None);
        }
        // The largest aligned block around `addr` inside the range with no page backed yet
        // (a backed page is never backed again: its contents would be lost).
        let fits = |order: u32| {
            let base = addr & !((1u64 << order) - 1);
            base >= r.start
                && base + (1 << order) <= r.end
                && (base..base + (1 << order)).step_by(4096).all(|p| !r.is_backed(p))
        };
        // The page itself is not backed: order 12 always fits.
        let order = (12..=RESERVE_BLOCK).rev().find(|o| fits(*o)).unwrap_or(12);
        let base = addr & !((1u64 << order) - 1);
        let chunk = self.take(a, order)?;
        if let Some(r) = a.reserved.as_mut() {
            for p in (base..base + (1 << order)).step_by(4096) {
                r.set_backed(p);
            }
        }
        Ok(Some((chunk, base)))
    }

    /// A zeroed chunk charged to `a` but not reclaimed with it (a dataspace's page, which may
    /// outlive the program); it comes back through [`Pool::give_back`].
    pub fn lend_detached(&mut self, a: &mut Account, order: u32) -> Result<Chunk, Error> {
        let c = self.lend(a, order)?;
        a.chunks.retain(|x| *x != c);
        Ok(c)
    }

    /// Chunks from [`Pool::lend_detached`] return; `a` is refunded.
    pub fn give_back(&mut self, a: &mut Account, chunks: &mut Vec<Chunk>) {
        for c in chunks.drain(..) {
            a.used = a.used.saturating_sub(1 << c.1);
            self.free.push(c);
        }
    }

    /// The program behind `a` is gone: its chunks come back.
    pub fn reclaim(&mut self, a: &mut Account) {
        self.free.append(&mut a.chunks);
        (a.used, a.image, a.reused, a.reserved) = (0, 0, 0, None);
    }
}

/// The loader's pages for one program: lent from the pool (kept by moe, so they come back).
pub struct ImagePages<'a> {
    pub pool: &'a mut Pool,
    pub account: &'a mut Account,
}

impl PageSource for ImagePages<'_> {
    fn page(&mut self) -> Result<u64, LoadError> {
        let (at, _) = self.pool.take(self.account, 12)?;
        self.account.image += 1 << 12;
        Ok(at)
    }

    fn keeps(&self) -> bool {
        true
    }
}

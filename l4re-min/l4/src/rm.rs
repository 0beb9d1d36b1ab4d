//! The region manager (feature `runtime`): dataspaces attached to ranges of the program's own
//! address space, their pages mapped on first touch. As in L4Re it lives in the program: a
//! thread of ours becomes the pager of our main thread; a page fault inside a region makes it
//! ask the dataspace (the root task) for that page, mapped straight into our space, and the
//! faulting thread retries. A fault outside every region ends the program with a report.

use crate::ipc::{self, ds, factory, task, thread};
use abi::cap::well_known as wk;
use abi::proto::{event, fpage::unmap_mask, fpage::Fpage, thread_control as tc};
use abi::{CapIdx, Error, MsgTag, Rights};
use core::sync::atomic::{AtomicBool, Ordering};

/// The gate our threads' page faults go to.
const RM_GATE: CapIdx = CapIdx(2990);
const MAX_REGIONS: usize = 16;

/// Where `attach_anywhere` and `reserve` look for free ranges: far above the heap (which grows
/// from 0x10_0000_0000), below the stacks, UTCBs and KIP.
const FREE_START: u64 = 0x40_0000_0000;
const FREE_END: u64 = 0x7000_0000_0000;

#[derive(Clone, Copy)]
struct Region {
    start: u64,
    size: u64,
    /// `None`: a reserved area (nothing is mapped there; a fault in it is an error).
    ds: Option<CapIdx>,
    offset: u64,
}

/// The regions, behind a spin lock: the main thread attaches, the pager thread looks up.
struct Regions {
    lock: AtomicBool,
    list: core::cell::UnsafeCell<[Option<Region>; MAX_REGIONS]>,
}

// SAFETY: `list` is only touched with `lock` held (see `with`).
unsafe impl Sync for Regions {}

static REGIONS: Regions =
    Regions { lock: AtomicBool::new(false), list: core::cell::UnsafeCell::new([None; MAX_REGIONS]) };
static STARTED: AtomicBool = AtomicBool::new(false);

fn with<R>(f: impl FnOnce(&mut [Option<Region>; MAX_REGIONS]) -> R) -> R {
    while REGIONS.lock.swap(true, Ordering::Acquire) {
        core::hint::spin_loop();
    }
    // SAFETY: we hold the lock; the reference does not outlive `f`.
    let r = f(unsafe { &mut *REGIONS.list.get() });
    REGIONS.lock.store(false, Ordering::Release);
    r
}

/// The pager thread: resolves faults inside regions, forever.
fn serve() -> i64 {
    loop {
        let Ok((tag, _)) = ipc::wait(0) else { continue };
        if tag.label() != event::PAGE_FAULT {
            continue;
        }
        let (addr, ip) = (ipc::mr(0) & !0xfff, ipc::mr(1));
        let hit = with(|l| l.iter().flatten().find(|r| addr >= r.start && addr < r.start + r.size).copied());
        let mapped = hit.and_then(|r| Some(ds::map(r.ds?, r.offset + (addr - r.start), addr)));
        match mapped {
            Some(Ok(())) => {
                // The page is in our space now: the faulting thread retries.
                let _ = ipc::reply(MsgTag::new(0, 0, 0, 0));
            }
            Some(Err(e)) => {
                crate::println!("rm: dataspace refused the page at {addr:#x} (ip {ip:#x}): {e:?}");
                crate::sys::exit(139);
            }
            None => {
                crate::println!("rm: page fault at {addr:#x} (ip {ip:#x}) outside every attached dataspace");
                crate::sys::exit(139);
            }
        }
    }
}

/// Starts the region manager (once): a pager thread, made our main thread's pager. Needs the
/// factory and scheduler threads need (see `thread`).
pub fn start() -> Result<(), Error> {
    if STARTED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let h = crate::thread::spawn(serve)?;
    factory::gate(wk::FACTORY, RM_GATE, h.cap(), 0)?;
    thread::control(wk::THREAD, tc::SET_PAGER, RM_GATE, CapIdx(0), CapIdx(0), 0)?;
    // The pager runs for the program's life.
    core::mem::forget(h);
    Ok(())
}

/// Enters a region at `start`, or (`None`) at the lowest free range of `size` in the search
/// window; where it went.
fn insert(start: Option<u64>, size: u64, ds: Option<CapIdx>, offset: u64) -> Result<u64, Error> {
    if size == 0 || !size.is_multiple_of(4096) || start.is_some_and(|s| !s.is_multiple_of(4096)) {
        return Err(Error::Inval);
    }
    with(|l| {
        let overlaps = |a: u64| l.iter().flatten().any(|r| a < r.start + r.size && r.start < a + size);
        let at = match start {
            Some(a) if overlaps(a) => return Err(Error::Exists),
            Some(a) => a,
            None => {
                // Candidates: the window's start and the end of every region.
                let mut best: Option<u64> = None;
                for a in core::iter::once(FREE_START).chain(l.iter().flatten().map(|r| r.start + r.size)) {
                    if a >= FREE_START && a + size <= FREE_END && !overlaps(a) && best.is_none_or(|b| a < b) {
                        best = Some(a);
                    }
                }
                best.ok_or(Error::NoMem)?
            }
        };
        let free = l.iter_mut().find(|r| r.is_none()).ok_or(Error::NoMem)?;
        *free = Some(Region { start: at, size, ds, offset });
        Ok(at)
    })
}

/// Attaches `size` bytes of dataspace `ds` from byte `offset` at `start` (page aligned).
pub fn attach(ds: CapIdx, start: u64, size: u64, offset: u64) -> Result<(), Error> {
    if !offset.is_multiple_of(4096) || offset + size > ds::size(ds)? {
        return Err(Error::Inval);
    }
    insert(Some(start), size, Some(ds), offset).map(|_| ())
}

/// Attaches `size` bytes of `ds` from `offset` wherever there is room; the address.
pub fn attach_anywhere(ds: CapIdx, size: u64, offset: u64) -> Result<u64, Error> {
    if !offset.is_multiple_of(4096) || offset + size > ds::size(ds)? {
        return Err(Error::Inval);
    }
    insert(None, size, Some(ds), offset)
}

/// Reserves `size` bytes (at `start`, or wherever there is room): nothing is attached there,
/// and nothing can be until `detach` of its start; a touch there ends the program.
pub fn reserve(start: Option<u64>, size: u64) -> Result<u64, Error> {
    insert(start, size, None, 0)
}

/// Detaches the region starting at `start`: its pages leave our space.
pub fn detach(start: u64) -> Result<(), Error> {
    let r = with(|l| l.iter_mut().find(|r| r.is_some_and(|r| r.start == start)).and_then(Option::take));
    let r = r.ok_or(Error::NoEnt)?;
    let mut at = r.start;
    while at < r.start + r.size {
        task::unmap(wk::TASK, unmap_mask::ALL_SPACES, &[Fpage::memory(at, 12, Rights::ALL)])?;
        at += 4096;
    }
    Ok(())
}

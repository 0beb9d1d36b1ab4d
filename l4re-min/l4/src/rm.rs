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

#[derive(Clone, Copy)]
struct Region {
    start: u64,
    size: u64,
    ds: CapIdx,
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
        let mapped = hit.map(|r| ds::map(r.ds, r.offset + (addr - r.start), addr));
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
                crate::println!("rm: page fault at {addr:#x} (ip {ip:#x}) outside every region");
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

/// Attaches `size` bytes of dataspace `ds` from byte `offset` at `start` (page aligned).
pub fn attach(ds: CapIdx, start: u64, size: u64, offset: u64) -> Result<(), Error> {
    if !start.is_multiple_of(4096) || !size.is_multiple_of(4096) || !offset.is_multiple_of(4096) || size == 0
    {
        return Err(Error::Inval);
    }
    if offset + size > ds::size(ds)? {
        return Err(Error::Inval);
    }
    with(|l| {
        if l.iter().flatten().any(|r| start < r.start + r.size && r.start < start + size) {
            return Err(Error::Exists);
        }
        let free = l.iter_mut().find(|r| r.is_none()).ok_or(Error::NoMem)?;
        *free = Some(Region { start, size, ds, offset });
        Ok(())
    })
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

//! Linux processes' address spaces as tasks: created by our factory, filled with pages of
//! Linux's RAM by `Task::Map` as UML's page-table sync asks (`map`/`unmap`/`protect`), deleted
//! with the mm. UML keeps the task's capability slot as the mm's "pid" (>= 2).

use crate::mem::{chunk_order, map_range, rights, unmap_range};
use crate::slot;
use crate::vcpu::held;
use abi::cap::well_known as wk;
use abi::kip::BOOT_UTCB_ADDR;
use abi::proto::fpage::{unmap_mask, Fpage};
use abi::{CapIdx, Rights};
use core::ffi::c_int;
use core::sync::atomic::{AtomicU64, Ordering};

/// Process tasks at once (slots `FIRST_TASK..FIRST_TASK + MAX`).
const MAX: usize = 4096;
static USED: [AtomicU64; MAX / 64] = [const { AtomicU64::new(0) }; MAX / 64];

fn alloc() -> Option<u64> {
    for (w, word) in USED.iter().enumerate() {
        let v = word.load(Ordering::Relaxed);
        if v != u64::MAX {
            let b = (!v).trailing_zeros() as u64;
            word.store(v | 1 << b, Ordering::Relaxed);
            return Some(slot::FIRST_TASK + w as u64 * 64 + b);
        }
    }
    None
}

fn free(s: u64) {
    let i = (s - slot::FIRST_TASK) as usize;
    USED[i / 64].fetch_and(!(1 << (i % 64)), Ordering::Relaxed);
}

fn cap(task: c_int) -> Option<CapIdx> {
    let t = task as u64;
    (t >= slot::FIRST_TASK && t < slot::FIRST_TASK + MAX as u64).then_some(CapIdx(t))
}

/// `lx_task_create`: a new, empty address space; its slot, or a negative error.
#[no_mangle]
pub extern "C" fn lx_task_create() -> c_int {
    let Some(s) = alloc() else { return -11 };
    // The UTCB area is required of every task; processes have no threads of their own, and it
    // lies above the range Linux gives them (TASK_SIZE), like the KIP.
    match held(|| {
        l4::ipc::factory::task(slot::FACTORY, CapIdx(s), Fpage::memory(BOOT_UTCB_ADDR, 12, Rights::ALL))
    }) {
        Ok(()) => s as c_int,
        Err(e) => {
            free(s);
            -(e as c_int)
        }
    }
}

/// `lx_task_delete`: the address space and everything mapped into it go away.
#[no_mangle]
pub extern "C" fn lx_task_delete(task: c_int) {
    let Some(c) = cap(task) else { return };
    let b = batch();
    if b.task == c.0 {
        b.n = 0;
    }
    let r =
        held(|| l4::ipc::task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &[Fpage::object(c, 0, Rights::ALL)]));
    if let Err(e) = r {
        l4::println!("deleting process task {task} failed: {e:?}");
    }
    free(c.0);
}

/// Map items for one process task that wait for its next resume, which carries them (one
/// kernel entry instead of one `Task::Map` each): UML's page-table sync runs right before it.
/// Anything that must not be reordered with them (an unmap, a map into another task, a full
/// batch) sends them first with `Task::Map`. Only the vCPU thread, with interrupts off during
/// the sync, touches this.
pub(crate) struct Batch {
    task: u64,
    n: usize,
    items: [(u64, Fpage); MAX_ITEMS],
}

impl Batch {
    pub(crate) const EMPTY: Batch = Batch { task: 0, n: 0, items: [(0, Fpage(0)); MAX_ITEMS] };
}

/// Items in one resume message: MR[0] is the opcode, each item takes two words.
const MAX_ITEMS: usize = (abi::utcb::MR_COUNT - 1) / 2;

fn batch() -> &'static mut Batch {
    // SAFETY: only the vCPU thread uses it (see Batch and Hot); no reference to it outlives
    // the calls below.
    unsafe { &mut *crate::vcpu::HOT.batch.get() }
}

/// Cycles spent in the kernel calls of this module (task create/delete, maps and unmaps not
/// carried by a resume), for `lx.profile`.
pub static SYSCALL_CYCLES: AtomicU64 = AtomicU64::new(0);

/// Runs `f`, adding its cycles to [`SYSCALL_CYCLES`].
fn timed<R>(f: impl FnOnce() -> R) -> R {
    let t0 = l4::sys::cycles();
    let r = f();
    SYSCALL_CYCLES.fetch_add(l4::sys::cycles() - t0, Ordering::Relaxed);
    r
}

/// Map items sent by `Task::Map` instead of a resume (`lx.profile`; those carried by a resume
/// are counted in `vcpu::HOT`).
pub static BY_MAP: AtomicU64 = AtomicU64::new(0);

/// Sends the waiting items with `Task::Map` (their task is not the one resumed next).
fn flush() -> c_int {
    let b = batch();
    let (task, n) = (b.task, core::mem::take(&mut b.n));
    BY_MAP.fetch_add(n as u64, Ordering::Relaxed);
    timed(|| {
        held(|| {
            for &(virt, fp) in &b.items[..n] {
                if let Err(e) = l4::ipc::task::map(CapIdx(task), wk::TASK, fp, virt) {
                    return -(e as c_int);
                }
            }
            0
        })
    })
}

/// `lx_task_map`: our page(s) `[src, src+len)` at `virt` in the process with `prot`; `prot` 0
/// unmaps (UML maps not-yet-accessed pages with no access to see the first touch). Queued for
/// the process's next resume.
#[no_mangle]
pub extern "C" fn lx_task_map(task: c_int, virt: u64, src: u64, len: u64, prot: c_int) -> c_int {
    let Some(c) = cap(task) else { return -22 };
    if prot & 7 == 0 || !virt.is_multiple_of(4096) || !src.is_multiple_of(4096) || !len.is_multiple_of(4096) {
        let e = flush();
        return if e != 0 { e } else { map_range(c, virt, src, len, prot) };
    }
    let r = rights(prot);
    // No `mem::touch` here (it cost fork_exit 7 %): Linux maps into a process only memory it
    // has written (zeroed, copied or read into: it never shows a process uninitialized
    // memory), so our pager has backed it (`lx_ram_back`).
    let mut off = 0;
    while off < len {
        let b = batch();
        if b.n > 0 && (b.task != c.0 || b.n == MAX_ITEMS) {
            let e = flush();
            if e != 0 {
                return e;
            }
        }
        let o = chunk_order(virt + off, src + off, virt + len, 22);
        let b = batch();
        b.task = c.0;
        b.items[b.n] = (virt + off, Fpage::memory(src + off, o, r));
        b.n += 1;
        off += 1 << o;
    }
    0
}

/// `lx_task_unmap`: removes `[virt, virt+len)` from the process.
#[no_mangle]
pub extern "C" fn lx_task_unmap(task: c_int, virt: u64, len: u64) -> c_int {
    let Some(c) = cap(task) else { return -22 };
    let e = flush();
    if e != 0 {
        return e;
    }
    timed(|| unmap_range(c, virt, len, true))
}

/// Puts the items waiting for `task` into the message registers from MR[1] for its resume;
/// items for another task go out now. Returns how many it put.
#[link_section = ".text.hot.lx"]
pub fn items_for_resume(task: u64) -> Result<u64, c_int> {
    let b = batch();
    if b.n == 0 {
        return Ok(0);
    }
    if b.task != task {
        return match flush() {
            0 => Ok(0),
            e => Err(e),
        };
    }
    let n = core::mem::take(&mut b.n);
    crate::vcpu::HOT.on_resume.fetch_add(n as u64, Ordering::Relaxed);
    for (i, &(virt, fp)) in b.items[..n].iter().enumerate() {
        l4::ipc::put_map_item(1 + 2 * i, virt, fp, false);
    }
    Ok(n as u64)
}

//! Linux processes' address spaces as tasks: created by our factory, filled with pages of
//! Linux's RAM by `Task::Map` as UML's page-table sync asks (`map`/`unmap`/`protect`), deleted
//! with the mm. UML keeps the task's capability slot as the mm's "pid" (>= 2).

use crate::mem::{map_range, unmap_range};
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
    let r =
        held(|| l4::ipc::task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &[Fpage::object(c, 0, Rights::ALL)]));
    if let Err(e) = r {
        l4::println!("deleting process task {task} failed: {e:?}");
    }
    free(c.0);
}

/// `lx_task_map`: our page(s) `[src, src+len)` at `virt` in the process with `prot`; `prot` 0
/// unmaps (UML maps not-yet-accessed pages with no access to see the first touch).
#[no_mangle]
pub extern "C" fn lx_task_map(task: c_int, virt: u64, src: u64, len: u64, prot: c_int) -> c_int {
    match cap(task) {
        Some(c) => map_range(c, virt, src, len, prot),
        None => -22,
    }
}

/// `lx_task_unmap`: removes `[virt, virt+len)` from the process.
#[no_mangle]
pub extern "C" fn lx_task_unmap(task: c_int, virt: u64, len: u64) -> c_int {
    match cap(task) {
        Some(c) => unmap_range(c, virt, len, true),
        None => -22,
    }
}

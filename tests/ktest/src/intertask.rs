//! Inter-task checks: a second task B built by this one (the program image mapped into it),
//! IPC across address spaces, page faults of B served by sigma0 through a mapped pager gate,
//! and deleting B.

use crate::objects::{check, expect_err, ok, slot, R};
use abi::cap::well_known as wk;
use abi::proto::{fpage::unmap_mask, fpage::Fpage, thread_control as tc};
use abi::{CapIdx, Error, MsgTag, Rights};
use core::sync::atomic::{AtomicU64, Ordering};
use l4::ipc::{self, factory, mr, set_mr, task, thread};
use l4::println;

/// Where B's UTCB area lies.
pub const B_UTCB: u64 = 0x7fff_ffd0_0000;

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// [start, end) of this program's image.
pub fn image() -> (u64, u64) {
    (&raw const __image_start as u64, &raw const __image_end as u64)
}

static B_TOUCHED: AtomicU64 = AtomicU64::new(0);

/// Runs in task B: touches memory only B's pager can provide, then echoes calls.
extern "C" fn b_server() -> ! {
    let p = 0x3000_0000 as *const u64;
    // SAFETY: the access faults; B's pager (sigma0, through the mapped gate) maps a page.
    let v = unsafe { p.read_volatile() };
    B_TOUCHED.store(v + 1, Ordering::SeqCst);
    crate::objects::echo_server()
}

/// Maps the whole image of this program into `dst` at the same addresses.
pub fn map_image(dst: CapIdx) -> R {
    let (start, end) = image();
    let mut a = start;
    while a < end {
        ok(task::map(dst, wk::TASK, Fpage::memory(a, 12, Rights::ALL), a), "map image page")?;
        a += 4096;
    }
    Ok(())
}

/// Creates task B with the image and a pager gate, and an echo server thread in it.
pub fn make_b(
    task_slot: CapIdx,
    thread_slot: CapIdx,
    gate_slot: CapIdx,
    stack: usize,
    f: extern "C" fn() -> !,
) -> R {
    ok(factory::task(wk::FACTORY, task_slot, Fpage::memory(B_UTCB, 12, Rights::ALL)), "create task")?;
    map_image(task_slot)?;
    ok(
        task::map(task_slot, wk::TASK, Fpage::object(wk::PAGER, 0, Rights::RW), wk::PAGER.0 << 12),
        "map pager gate",
    )?;
    spawn_in(task_slot, thread_slot, stack, f)?;
    ok(factory::gate(wk::FACTORY, gate_slot, thread_slot, 0xb0b), "gate to B")
}

fn spawn_in(task_slot: CapIdx, thread_slot: CapIdx, stack: usize, f: extern "C" fn() -> !) -> R {
    ok(factory::thread(wk::FACTORY, thread_slot), "create thread")?;
    ok(
        thread::control(thread_slot, tc::BIND_TASK | tc::SET_PAGER, wk::PAGER, CapIdx(0), task_slot, B_UTCB),
        "bind",
    )?;
    ok(thread::ex_regs(thread_slot, f as *const () as u64, crate::objects::stack_top(stack), 0), "ex_regs")?;
    ok(l4::ipc::scheduler::run_thread(wk::SCHEDULER, thread_slot, 100, 1, 0), "run")
}

pub fn run() -> R {
    expect_err(
        factory::task(wk::FACTORY, slot::SCRATCH, Fpage::memory(B_UTCB, 20, Rights::ALL)),
        Error::Inval,
        "task with a 1 MiB UTCB area",
    )?;
    make_b(slot::TASK_B, slot::THREAD_B, slot::GATE_B, 5, b_server)?;
    set_mr(0, 99);
    let t = ok(ipc::call(slot::GATE_B, MsgTag::new(3, 1, 0, 0), 0), "call into task B")?;
    check(t.words() == 2 && mr(0) == 100 && mr(1) == 0xb0b, "reply from task B")?;
    check(B_TOUCHED.load(Ordering::SeqCst) == 1, "B's page fault was served by its pager")?;
    // Deleting B kills its thread: the gate is unbound, calls fail.
    ok(
        task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &[Fpage::object(slot::TASK_B, 0, Rights::ALL)]),
        "delete B",
    )?;
    check(ok(task::cap_info(wk::TASK, slot::THREAD_B), "info")?.0 == 0, "B's thread died with it")?;
    expect_err(ipc::call(slot::GATE_B, MsgTag::new(3, 1, 0, 0), 0), Error::NoEnt, "call into deleted task")?;
    println!("inter-task IPC, pager of a created task, task deletion ok");
    Ok(())
}

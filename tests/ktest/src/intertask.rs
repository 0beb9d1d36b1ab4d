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

const IO_TASK: CapIdx = CapIdx(70);
const IO_THREAD: CapIdx = CapIdx(71);
const IO_GO: CapIdx = CapIdx(72);
const IO_DONE: CapIdx = CapIdx(73);
const SLEEP: CapIdx = CapIdx(74);
/// Slots of the go/done semaphores inside the I/O task.
const GO_IN_T: CapIdx = CapIdx(9);
const DONE_IN_T: CapIdx = CapIdx(10);
/// The POST diagnostic port: reading it has no effect on the machine.
const PORT: u16 = 0x80;

static IO_READS: AtomicU64 = AtomicU64::new(0);

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: reading port 0x80 has no side effects; without the right the CPU raises #GP,
    // which is what the tests want to see.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nostack, nomem)) };
    v
}

/// In the I/O task: on every go, read the port once and report.
extern "C" fn io_user() -> ! {
    loop {
        let _ = l4::ipc::semaphore::down(GO_IN_T, 0);
        inb(PORT);
        IO_READS.fetch_add(1, Ordering::SeqCst);
        let _ = l4::ipc::semaphore::up(DONE_IN_T);
    }
}

/// Starts the I/O task and thread; `with_port` maps the port from us into it.
fn io_task(with_port: bool) -> R {
    let _ = task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &[Fpage::object(IO_TASK, 0, Rights::ALL)]);
    ok(factory::task(wk::FACTORY, IO_TASK, Fpage::memory(B_UTCB, 12, Rights::ALL)), "io task")?;
    map_image(IO_TASK)?;
    for (from, to) in [(IO_GO, GO_IN_T), (IO_DONE, DONE_IN_T)] {
        ok(task::map(IO_TASK, wk::TASK, Fpage::object(from, 0, Rights::RW), to.0 << 12), "semaphore")?;
    }
    if with_port {
        ok(task::map(IO_TASK, wk::TASK, Fpage::io(PORT as u64, 0, Rights::ALL), 0), "map the port")?;
    }
    spawn_in(IO_TASK, IO_THREAD, 4, io_user)
}

/// Waits up to a second for the I/O thread to be gone (its task destroyed by a #GP).
fn io_thread_dies() -> R {
    for _ in 0..50 {
        if ok(task::cap_info(wk::TASK, IO_THREAD), "info")?.0 == 0 {
            return Ok(());
        }
        let _ = l4::ipc::semaphore::down(SLEEP, abi::syscall::timeout::pack(0, 20_000));
    }
    check(false, "a task using a port it does not have is stopped")
}

/// I/O ports: sigma0 hands them out, the TSS bitmap enforces them, unmapping revokes them.
pub fn io_ports() -> R {
    ok(factory::semaphore(wk::FACTORY, IO_GO, 0), "go")?;
    ok(factory::semaphore(wk::FACTORY, IO_DONE, 0), "done")?;
    ok(factory::semaphore(wk::FACTORY, SLEEP, 0), "sleep")?;
    l4::ipc::set_br(0, Fpage::io(0, 16, Rights::ALL).0);
    set_mr(0, abi::proto::sigma0::REQ_IO);
    set_mr(1, Fpage::io(PORT as u64, 0, Rights::ALL).0);
    ok(ipc::call(wk::PAGER, MsgTag::new(abi::proto::event::SIGMA0, 2, 0, 0), 0), "port from sigma0")?;
    inb(PORT);
    // A task without the port is stopped at its first access.
    io_task(false)?;
    ok(l4::ipc::semaphore::up(IO_GO), "go")?;
    io_thread_dies()?;
    check(IO_READS.load(Ordering::SeqCst) == 0, "no read without the port")?;
    // With the port mapped from us it reads; after we revoke it, it is stopped.
    io_task(true)?;
    ok(l4::ipc::semaphore::up(IO_GO), "go")?;
    ok(l4::ipc::semaphore::down(IO_DONE, abi::syscall::timeout::pack(0, 1_000_000)), "read with the port")?;
    check(IO_READS.load(Ordering::SeqCst) == 1, "one read with the port")?;
    ok(
        task::unmap(wk::TASK, unmap_mask::OTHER_SPACES, &[Fpage::io(PORT as u64, 0, Rights::ALL)]),
        "revoke the port",
    )?;
    ok(l4::ipc::semaphore::up(IO_GO), "go")?;
    io_thread_dies()?;
    check(IO_READS.load(Ordering::SeqCst) == 1, "no read after the revoke")?;
    inb(PORT);
    println!("I/O ports from sigma0, enforcement and revocation ok");
    Ok(())
}

//! `ktest bench`: kernel micro-benchmarks, printed as `BENCH <name> <value> cycles` (medians).

use crate::intertask::{make_b, map_image};
use crate::objects::{echo_server, echo_server_short, ok, spawn, stack_top, R};
use abi::cap::well_known as wk;
use abi::kip::BOOT_UTCB_ADDR;
use abi::proto::{fpage::unmap_mask, fpage::Fpage, thread_control as tc};
use abi::{CapIdx, MsgTag, Rights};
use core::sync::atomic::{AtomicU64, Ordering};
use l4::ipc::{self, factory, mr, put_map_item, scheduler, set_mr, task, thread};
use l4::println;
use l4::sys::cycles;

const SERVER: CapIdx = CapIdx(100);
const GATE: CapIdx = CapIdx(101);
const TASK_B: CapIdx = CapIdx(102);
const THREAD_B: CapIdx = CapIdx(103);
const GATE_B: CapIdx = CapIdx(104);
const TASK_C: CapIdx = CapIdx(105);
const THREAD_C: CapIdx = CapIdx(106);
const PAGER: CapIdx = CapIdx(107);
const PAGER_GATE: CapIdx = CapIdx(108);
const FPU_SERVER: CapIdx = CapIdx(109);
const FPU_GATE: CapIdx = CapIdx(110);
const TASK_D: CapIdx = CapIdx(111);
const THREAD_D: CapIdx = CapIdx(112);
const GATE_D: CapIdx = CapIdx(113);
/// First slot of the idle tasks created for the scaling measurement.
const IDLE_TASKS: u64 = 1000;

/// An echo server that also writes xmm0 for every request: with a client that does the same,
/// every hand-off moves the FPU state (lazily, through #NM).
extern "C" fn fpu_echo_server() -> ! {
    ipc::server_loop(|msg| {
        // SAFETY: writes only xmm0, unused by the (soft-float) compiled code.
        unsafe { core::arch::asm!("movq xmm0, {}", in(reg) 7u64, out("xmm0") _) };
        Some(MsgTag::new(0, if msg.is_ok() { 1 } else { 0 }, 0, 0))
    })
}

/// What `cost` runs before it measures. QEMU sizes its software TLB by the use of the last
/// 100 ms and clears all of it at every address-space switch: after a burst that touched
/// many pages (creating 1,000 tasks) each switch costs more until the TLB shrinks again,
/// which takes ~100 ms of switching. The measurements are of the steady state.
const SETTLE_MS: u64 = 150;

/// Median over `batches` batches of `per` runs of `f` (given the run's number), in cycles per
/// run, after [`SETTLE_MS`] of runs.
fn cost(batches: usize, per: u64, mut f: impl FnMut(u64)) -> u64 {
    let settled = cycles() + l4::kip().tsc_hz / 1000 * SETTLE_MS;
    while cycles() < settled {
        f(0);
    }
    let mut s = [0u64; 64];
    let n = batches.min(s.len());
    for v in s[..n].iter_mut() {
        let t0 = cycles();
        for i in 0..per {
            f(i);
        }
        *v = (cycles() - t0) / per;
    }
    crate::median(&mut s[..n])
}

/// Like `call_cost`, with the caller writing xmm0 before every call.
fn fpu_call_cost(gate: CapIdx, batches: usize, per: u64) -> u64 {
    cost(batches, per, |i| {
        // SAFETY: as in `fpu_echo_server`.
        unsafe { core::arch::asm!("movq xmm0, {}", in(reg) i, out("xmm0") _) };
        set_mr(0, 1);
        let _ = ipc::call(gate, MsgTag::new(1, 1, 0, 0), 0);
    })
}

/// Calls through `gate` with a one-word register message (the shortest IPC there is): cycles
/// per call, as [`cost`] measures.
fn short_call_cost(gate: CapIdx, batches: usize, per: u64) -> u64 {
    cost(batches, per, |_| {
        let _ = ipc::call_short(gate, 1, &[1]);
    })
}

/// Calls through `gate` with a one-word message in the UTCB: cycles per call.
fn call_cost(gate: CapIdx, batches: usize, per: u64) -> u64 {
    cost(batches, per, |_| {
        set_mr(0, 1);
        let _ = ipc::call(gate, MsgTag::new(1, 1, 0, 0), 0);
    })
}

fn null_cost() -> u64 {
    let mut s = crate::samples::<63>(500);
    crate::median(&mut s)
}

fn page() -> u64 {
    // The page the pager hands out: one of our own (in .bss, page aligned).
    #[repr(C, align(4096))]
    struct Page([u8; 4096]);
    static mut PAGE: Page = Page([0; 4096]);
    &raw const PAGE as u64
}

/// A pager that maps one page of ours at every fault address.
extern "C" fn pager() -> ! {
    ipc::server_loop(|msg| {
        Some(match msg {
            Ok((t, _)) if t.label() == abi::proto::event::PAGE_FAULT => {
                put_map_item(0, mr(0) & !0xfff, Fpage::memory(page(), 12, Rights::ALL), false);
                MsgTag::new(0, 0, 1, 0)
            }
            _ => MsgTag::new(0, 0, 0, 0),
        })
    })
}

static FAULT_CYCLES: AtomicU64 = AtomicU64::new(0);
const FAULT_PAGES: u64 = 512;

/// Runs in task C: touches FAULT_PAGES fresh pages, each resolved by our pager.
extern "C" fn toucher() -> ! {
    let base = 0x4000_0000u64;
    let t0 = cycles();
    for i in 0..FAULT_PAGES {
        // SAFETY: each access faults and the pager maps a page there.
        unsafe { core::ptr::read_volatile((base + i * 4096) as *const u8) };
    }
    FAULT_CYCLES.store((cycles() - t0) / FAULT_PAGES, Ordering::SeqCst);
    loop {
        let _ = ipc::wait(0);
    }
}

fn map_unmap_cost() -> Result<u64, &'static str> {
    let mut s = [0u64; 31];
    let fp = Fpage::memory(page(), 12, Rights::ALL);
    for v in s.iter_mut() {
        let t0 = cycles();
        for _ in 0..64 {
            ok(task::map(TASK_B, wk::TASK, fp, 0x5000_0000), "map")?;
            ok(task::unmap(wk::TASK, unmap_mask::OTHER_SPACES, &[fp]), "unmap")?;
        }
        *v = (cycles() - t0) / 64;
    }
    Ok(crate::median(&mut s))
}

/// A marker for execution traces (`-d exec`): its address brackets the traced round trips.
#[inline(never)]
pub extern "C" fn trace_mark() {
    core::hint::black_box(0);
}

/// `ktest trace`: a few inter-task round trips (register messages, as the benchmark's) between
/// two calls of `trace_mark`, then (between the next two) four null system calls.
pub fn trace() -> R {
    make_b(TASK_B, THREAD_B, GATE_B, 1, echo_server_short)?;
    short_call_cost(GATE_B, 4, 50);
    trace_mark();
    short_call_cost(GATE_B, 1, 4);
    trace_mark();
    // Then four null system calls (the general path's shortest), in a window of their own.
    crate::samples::<1>(4);
    trace_mark();
    crate::samples::<1>(4);
    trace_mark();
    Ok(())
}

pub fn run() -> R {
    let null = null_cost();
    println!("BENCH syscall_roundtrip {null} cycles");
    spawn(SERVER, wk::TASK, BOOT_UTCB_ADDR + 1024, echo_server_short, 0, 100)?;
    ok(factory::gate(wk::FACTORY, GATE, SERVER, 1), "gate")?;
    println!("BENCH ipc_intra_task_roundtrip {} cycles", short_call_cost(GATE, 63, 500));
    // The same with both sides using SSE: what lazy FPU switching costs per round trip.
    spawn(FPU_SERVER, wk::TASK, BOOT_UTCB_ADDR + 3 * 1024, fpu_echo_server, 5, 100)?;
    ok(factory::gate(wk::FACTORY, FPU_GATE, FPU_SERVER, 1), "fpu gate")?;
    println!("BENCH ipc_intra_task_roundtrip_fpu {} cycles", fpu_call_cost(FPU_GATE, 63, 300));
    make_b(TASK_B, THREAD_B, GATE_B, 1, echo_server_short)?;
    let inter = short_call_cost(GATE_B, 63, 500);
    println!("BENCH ipc_inter_task_roundtrip {inter} cycles");
    // The same with the word in the UTCBs (another task pair: a server of its own).
    make_b(TASK_D, THREAD_D, GATE_D, 6, echo_server)?;
    println!("BENCH ipc_inter_task_roundtrip_utcb {} cycles", call_cost(GATE_D, 63, 500));
    println!("BENCH map_unmap_page {} cycles", map_unmap_cost()?);
    // Page faults of task C resolved by our pager thread.
    spawn(PAGER, wk::TASK, BOOT_UTCB_ADDR + 2048, pager, 2, 120)?;
    ok(factory::gate(wk::FACTORY, PAGER_GATE, PAGER, 0), "pager gate")?;
    ok(factory::task(wk::FACTORY, TASK_C, Fpage::memory(0x7fff_ffc0_0000, 12, Rights::ALL)), "task C")?;
    map_image(TASK_C)?;
    ok(task::map(TASK_C, wk::TASK, Fpage::object(PAGER_GATE, 0, Rights::RW), 4 << 12), "pager gate into C")?;
    ok(factory::thread(wk::FACTORY, THREAD_C), "thread C")?;
    ok(
        thread::control(
            THREAD_C,
            tc::BIND_TASK | tc::SET_PAGER,
            CapIdx(4),
            CapIdx(0),
            TASK_C,
            0x7fff_ffc0_0000,
        ),
        "bind",
    )?;
    ok(thread::ex_regs(THREAD_C, toucher as *const () as u64, stack_top(3), 0), "ex_regs")?;
    ok(scheduler::run_thread(wk::SCHEDULER, THREAD_C, 90, 1, 0), "run")?;
    while FAULT_CYCLES.load(Ordering::SeqCst) == 0 {
        let _ = ipc::wait(abi::syscall::timeout::pack(0, 1000));
    }
    println!("BENCH pagefault_roundtrip {} cycles", FAULT_CYCLES.load(Ordering::SeqCst));
    crate::vcpubench::run()?;
    crate::worldbench::run()?;
    // The same inter-task round trip with 10, 100 and 1000 tasks alive.
    let mut alive = 1;
    for target in [10u64, 100, 1000] {
        while alive < target {
            let slot = CapIdx(IDLE_TASKS + alive);
            let area = Fpage::memory(0x7fff_ff80_0000, 12, Rights::ALL);
            ok(factory::task(wk::FACTORY, slot, area), "idle task")?;
            alive += 1;
        }
        println!("BENCH ipc_inter_task_roundtrip_{target}_tasks {} cycles", short_call_cost(GATE_B, 63, 300));
    }
    Ok(())
}

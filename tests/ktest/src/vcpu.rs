//! `ktest vcpu`: a small OS on the vCPU interface — the shape L4Linux has. A vCPU thread runs
//! three user tasks: two that print, fault on a data page, yield, spin until the timer preempts
//! them and exit; one that executes an invalid instruction in a loop and is killed. System
//! calls, page faults (mapped at resume), exceptions and timer interrupts all arrive as upcalls.

use crate::objects::{check, expect_err, ok, stack_top, R};
use abi::cap::well_known as wk;
use abi::kip::BOOT_UTCB_ADDR;
use abi::proto::{self, fpage::unmap_mask, fpage::Fpage, thread_control as tc};
use abi::syscall::timeout;
use abi::vcpu::{state, trap, VcpuRegs, VcpuState};
use abi::{CapIdx, Error, MsgTag, Rights};
use core::sync::atomic::{AtomicU64, Ordering};
use l4::ipc::{factory, irq, put_map_item, scheduler, semaphore, set_mr, task, thread};
use l4::println;

const VCPU: CapIdx = CapIdx(80);
const TIMER: CapIdx = CapIdx(81);
const DONE: CapIdx = CapIdx(82);
/// An interrupt the main thread raises as fast as it can while the mini-OS runs.
const STORM: CapIdx = CapIdx(86);
const STORM_LABEL: u64 = 0x72;
const STORM_TRIGGERS: u64 = 20_000;
/// User tasks' capability slots.
const TASKS: [CapIdx; 3] = [CapIdx(83), CapIdx(84), CapIdx(85)];
/// The vCPU's UTCB and state area: slots of the boot task's UTCB area.
const VCPU_UTCB: u64 = BOOT_UTCB_ADDR + 9 * 1024;
const VCPU_STATE: u64 = BOOT_UTCB_ADDR + 10 * 1024;
/// Where the user tasks find their data page (mapped on their first touch).
const DATA: u64 = 0x5000_0000;
const SYS_WRITE: u64 = 1;
const SYS_YIELD: u64 = 2;
const SYS_EXIT: u64 = 3;
/// Sleep for `rdi` timer periods; made with `int 0x80`, the other system-call gate.
const SYS_SLEEP: u64 = 4;

core::arch::global_asm!(
    r#"
    .section .text.utask, "ax"
    .p2align 12
    .global utask_entry
utask_entry:
    mov r12, rdi
    mov r14, rsi
    lea rax, [r12 + 0x1000]
    movq xmm0, rax
    mov eax, 1
    lea rdi, [r12 + 0x61]
    syscall
    mov qword ptr [0x50000000], r12
    mov rax, qword ptr [0x50000000]
    cmp rax, r12
    jne 2f
    mov eax, 2
    syscall
    mov eax, 1
    lea rdi, [r12 + 0x41]
    syscall
    rdtsc
    shl rdx, 32
    or rax, rdx
    lea r13, [rax + r14]
1:  rdtsc
    shl rdx, 32
    or rax, rdx
    cmp rax, r13
    jb 1b
    mov eax, 4
    mov edi, 2
    int 0x80
    movq rax, xmm0
    lea rdx, [r12 + 0x1000]
    cmp rax, rdx
    jne 2f
    mov eax, 3
    lea rdi, [r12 + 40]
    syscall
2:  ud2
    .global utask_bad
utask_bad:
    ud2
    jmp utask_bad
    .p2align 12
    .global utask_end
utask_end:

    .section .text
    .global vcpu_entry
vcpu_entry:
    and rsp, -16
    call vcpu_upcall
    ud2
"#
);

extern "C" {
    fn utask_entry();
    fn utask_bad();
    fn utask_end();
    fn vcpu_entry();
}

/// What the mini-OS knows about a user task.
/// An FXSAVE image.
#[repr(C, align(16))]
struct Fx([u8; 512]);

struct Proc {
    regs: VcpuRegs,
    /// The task's FPU/SSE registers while others run: the vCPU thread's registers are the
    /// running task's, so the guest switches them itself (FXSAVE/FXRSTOR are unprivileged).
    fpu: Fx,
    exited: Option<u64>,
    /// Timer period at which a sleeping task may run again.
    wake_at: u64,
}

/// The mini-OS's state: touched only by the vCPU thread (and read by the main thread after
/// the DONE semaphore).
struct Os {
    procs: [Proc; 3],
    cur: usize,
    out: [u8; 16],
    out_len: usize,
    faults: u64,
    timer_upcalls: u64,
    storm_upcalls: u64,
    sleeps: u64,
    killed: u64,
    bad_resume: Option<Error>,
}

/// The mini-OS state, in a cell: only the vCPU thread touches it while the test runs.
struct OsCell(core::cell::UnsafeCell<Os>);

// SAFETY: the vCPU thread is the only one to mutate the state; the main thread reads it only
// after the vCPU signalled DONE and stopped (see `os`).
unsafe impl Sync for OsCell {}

static OS: OsCell = OsCell(core::cell::UnsafeCell::new(Os {
    procs: [const {
        Proc {
            regs: VcpuRegs {
                rax: 0,
                rbx: 0,
                rcx: 0,
                rdx: 0,
                rsi: 0,
                rdi: 0,
                rbp: 0,
                r8: 0,
                r9: 0,
                r10: 0,
                r11: 0,
                r12: 0,
                r13: 0,
                r14: 0,
                r15: 0,
                rip: 0,
                rsp: 0,
                rflags: 0,
                fs_base: 0,
                gs_base: 0,
                trapno: 0,
                err: 0,
                pfa: 0,
            },
            fpu: Fx([0; 512]),
            exited: None,
            wake_at: 0,
        }
    }; 3],
    cur: 0,
    out: [0; 16],
    out_len: 0,
    faults: 0,
    timer_upcalls: 0,
    storm_upcalls: 0,
    sleeps: 0,
    killed: 0,
    bad_resume: None,
}));

/// One data page per user task, handed out at its page fault.
#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut DATA_PAGES: [Page; 3] = [const { Page([0; 4096]) }; 3];

fn os() -> &'static mut Os {
    // SAFETY: only the vCPU thread mutates OS while the test runs; the main thread reads it
    // after the vCPU signalled DONE and stopped touching it.
    unsafe { &mut *OS.0.get() }
}

fn vstate() -> &'static mut VcpuState {
    // SAFETY: the kernel keeps the state area mapped (UTCB area) for the task's lifetime;
    // only the vCPU thread uses it.
    unsafe { &mut *(VCPU_STATE as *mut VcpuState) }
}

static OUT_DONE: AtomicU64 = AtomicU64::new(0);

/// Picks the next task after `cur` that has not exited and is not asleep, round robin.
fn next_runnable(os: &Os, from: usize) -> Option<usize> {
    (1..=3)
        .map(|d| (from + d) % 3)
        .find(|i| os.procs[*i].exited.is_none() && os.procs[*i].wake_at <= os.timer_upcalls)
}

/// Continues task `i` (its context goes into the state area), with `items` map items in MRs.
fn resume(i: usize, items: u64) -> ! {
    let os = os();
    os.cur = i;
    // SAFETY: a 16-byte aligned FXSAVE image taken by `fxsave` (see `vcpu_upcall`/`vcpu_start`).
    unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) os.procs[i].fpu.0.as_ptr(), options(nostack)) };
    vstate().regs = os.procs[i].regs;
    enter_user(TASKS[i], items)
}

/// `VcpuResume` into user task `task` with interrupts on and `items` map items in the MRs;
/// the context is the state area's.
fn enter_user(task: CapIdx, items: u64) -> ! {
    resume_user(VCPU, vstate(), task, state::USER_MODE | state::IRQ, items)
}

/// `VcpuResume` by vCPU `vcpu` of the context in its state area `st`, in user task `task` with
/// flags `flags` and `items` map items in the MRs (the vCPU benchmarks and guest-world tests
/// use it too). Returns only if the kernel refused, and then never.
pub(crate) fn resume_user(vcpu: CapIdx, st: &mut VcpuState, task: CapIdx, flags: u64, items: u64) -> ! {
    st.user_task = task.0;
    st.saved_state = flags;
    set_mr(0, proto::thread::Op::VcpuResume.code());
    let r = l4::sys::invoke(
        abi::CapSel::from_idx(vcpu),
        abi::syscall::Flags::CALL,
        MsgTag::new(proto::thread::LABEL, 1, items, 0),
    );
    println!("vcpu: resume failed: {:?}", r.result());
    loop {
        core::hint::spin_loop();
    }
}

/// User task `slot` (its UTCB area out of the way) with our code pages `[code, end)` mapped
/// read and execute at their addresses.
pub(crate) fn user_task(slot: CapIdx, code: u64, end: u64) -> R {
    ok(factory::task(wk::FACTORY, slot, Fpage::memory(0x7fff_ff00_0000, 12, Rights::ALL)), "user task")?;
    let mut a = code & !0xfff;
    while a < end {
        ok(task::map(slot, wk::TASK, Fpage::memory(a, 12, Rights::from_bits_truncate(5)), a), "map code")?;
        a += 4096;
    }
    Ok(())
}

/// The vCPU's timer Irq (label 0x71), a one-shot `us` microseconds ahead.
/// Makes our thread capability `slot` a vCPU: a new thread of our task, its UTCB at `utcb`, its
/// state area at `state` (both in our UTCB area).
pub(crate) fn vcpu_thread(slot: CapIdx, utcb: u64, state: u64) -> R {
    ok(factory::thread(wk::FACTORY, slot), "vcpu thread")?;
    ok(thread::control(slot, tc::BIND_TASK, CapIdx(0), CapIdx(0), wk::TASK, utcb), "bind")?;
    ok(
        l4::sys::call_words(slot, proto::thread::LABEL, &[proto::thread::Op::VcpuControl.code(), state]),
        "vcpu control",
    )
    .map(|_| ())
}

fn arm_timer(us: u64) -> R {
    ok(factory::irq(wk::FACTORY, TIMER), "timer irq")?;
    ok(irq::attach(TIMER, VCPU, 0x71), "attach timer")?;
    ok(l4::sys::call_words(TIMER, proto::irq::LABEL, &[proto::irq::Op::SetTimer.code(), us, 0]), "timer")?;
    Ok(())
}

/// Nothing left to run: report and wait for good.
fn finish() -> ! {
    OUT_DONE.store(1, Ordering::SeqCst);
    let _ = semaphore::up(DONE);
    loop {
        let _ = l4::ipc::wait(0);
    }
}

/// Saves the interrupted task's context and switches to the next runnable one; with only
/// sleepers left, waits for timer interrupts (as messages: an open wait) until one wakes.
fn switch_from(cur: usize, saved: VcpuRegs) -> ! {
    let os = os();
    os.procs[cur].regs = saved;
    loop {
        if let Some(n) = next_runnable(os, cur) {
            resume(n, 0)
        }
        if os.procs.iter().all(|p| p.exited.is_some()) {
            finish()
        }
        if let Ok((_, label)) = l4::ipc::wait(0) {
            if label == 0x71 {
                os.timer_upcalls += 1;
            }
        }
    }
}

#[no_mangle]
extern "C" fn vcpu_upcall(st: *mut VcpuState) -> ! {
    // SAFETY: the kernel passes the state area's user address.
    let st = unsafe { &mut *st };
    let os = os();
    let cur = os.cur;
    // SAFETY: saves the interrupted task's FPU/SSE registers into its aligned image.
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) os.procs[cur].fpu.0.as_mut_ptr(), options(nostack)) };
    let regs = st.regs;
    match regs.trapno {
        trap::SYSCALL => match regs.rax {
            SYS_WRITE => {
                if os.out_len < os.out.len() {
                    os.out[os.out_len] = regs.rdi as u8;
                    os.out_len += 1;
                }
                os.procs[cur].regs = regs;
                resume(cur, 0)
            }
            SYS_YIELD => switch_from(cur, regs),
            SYS_EXIT => {
                os.procs[cur].exited = Some(regs.rdi);
                switch_from(cur, regs)
            }
            _ => resume(cur, 0),
        },
        0x80 if regs.rax == SYS_SLEEP => {
            os.sleeps += 1;
            os.procs[cur].wake_at = os.timer_upcalls + regs.rdi;
            switch_from(cur, regs)
        }
        14 if regs.pfa & !0xfff == DATA => {
            os.faults += 1;
            os.procs[cur].regs = regs;
            // SAFETY: only the address of the task's data page is taken.
            let page = unsafe { &raw const DATA_PAGES[cur] } as u64;
            put_map_item(1, DATA, Fpage::memory(page, 12, Rights::ALL), false);
            resume(cur, 1)
        }
        trap::IRQ => {
            if st.irq_label == STORM_LABEL {
                os.storm_upcalls += 1;
            } else {
                os.timer_upcalls += 1;
            }
            if st.saved_state & state::USER_MODE != 0 {
                switch_from(cur, regs)
            }
            resume(cur, 0)
        }
        _ => {
            // Any other exception: the task is killed, the others go on.
            os.killed += 1;
            os.procs[cur].exited = Some(255);
            let _ =
                task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &[Fpage::object(TASKS[cur], 0, Rights::ALL)]);
            match next_runnable(os, cur) {
                Some(n) => resume(n, 0),
                None => finish(),
            }
        }
    }
}

/// The vCPU thread starts here: one resume with a bad user task (must fail), then task 0.
extern "C" fn vcpu_start() -> ! {
    for p in os().procs.iter_mut() {
        // SAFETY: takes the initial (reset) FPU state as every task's starting image.
        unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) p.fpu.0.as_mut_ptr(), options(nostack)) };
    }
    let st = vstate();
    st.entry_ip = vcpu_entry as *const () as u64;
    st.entry_sp = stack_top(2);
    st.regs = os().procs[0].regs;
    st.user_task = 999;
    st.saved_state = state::USER_MODE | state::IRQ;
    set_mr(0, proto::thread::Op::VcpuResume.code());
    let r = l4::sys::invoke(
        abi::CapSel::from_idx(VCPU),
        abi::syscall::Flags::CALL,
        MsgTag::new(proto::thread::LABEL, 1, 0, 0),
    );
    os().bad_resume = r.result().err();
    resume(0, 0)
}

pub fn run() -> R {
    let spin = l4::kip().tsc_hz / 1000 * 8; // 8 ms: several timer periods
    let (code, end) = (utask_entry as *const () as u64, utask_end as *const () as u64);
    for (i, t) in TASKS.iter().enumerate() {
        user_task(*t, code, end)?;
        let entry = if i == 2 { utask_bad as *const () as u64 } else { code };
        os().procs[i].regs = VcpuRegs {
            rip: entry,
            rsp: 0x6000_0000,
            rflags: 0x202,
            rdi: i as u64,
            rsi: spin,
            ..Default::default()
        };
    }
    ok(factory::semaphore(wk::FACTORY, DONE, 0), "done")?;
    ok(factory::thread(wk::FACTORY, VCPU), "vcpu thread")?;
    ok(thread::control(VCPU, tc::BIND_TASK, CapIdx(0), CapIdx(0), wk::TASK, VCPU_UTCB), "bind")?;
    expect_err(
        l4::sys::call_words(VCPU, proto::thread::LABEL, &[proto::thread::Op::VcpuControl.code(), VCPU_UTCB]),
        Error::Exists,
        "a UTCB in use is no state area",
    )?;
    ok(
        l4::sys::call_words(VCPU, proto::thread::LABEL, &[proto::thread::Op::VcpuControl.code(), VCPU_STATE]),
        "vcpu control",
    )?;
    expect_err(
        l4::sys::call_words(VCPU, proto::thread::LABEL, &[proto::thread::Op::VcpuResume.code()]),
        Error::Inval,
        "resume on another thread",
    )?;
    arm_timer(2000)?;
    ok(thread::ex_regs(VCPU, vcpu_start as *const () as u64, stack_top(3), 0), "ex_regs")?;
    ok(scheduler::run_thread(wk::SCHEDULER, VCPU, 100, 1, 0), "run vcpu")?;
    ok(factory::irq(wk::FACTORY, STORM), "storm irq")?;
    ok(irq::attach(STORM, VCPU, STORM_LABEL), "attach storm")?;
    // The storm: while it lasts the vCPU keeps its IRQs masked in its handler (pending, not
    // lost) and the user tasks still make progress between upcalls.
    for _ in 0..STORM_TRIGGERS {
        ok(irq::trigger(STORM), "trigger")?;
    }
    ok(semaphore::down(DONE, timeout::pack(0, 10_000_000)), "mini-OS finished")?;
    ok(
        l4::sys::call_words(TIMER, proto::irq::LABEL, &[proto::irq::Op::SetTimer.code(), 0, 0]),
        "stop timer",
    )?;
    let os = os();
    let out = core::str::from_utf8(&os.out[..os.out_len]).unwrap_or("?");
    println!(
        "mini-OS: output {out:?}, exits {:?} {:?} {:?}, {} page faults, {} timer upcalls, {} storm upcalls, {} sleeps, {} killed",
        os.procs[0].exited, os.procs[1].exited, os.procs[2].exited, os.faults, os.timer_upcalls, os.storm_upcalls, os.sleeps, os.killed
    );
    check(os.bad_resume.is_some(), "resume with a bad user task capability fails")?;
    // Each task's own calls in order; how the two interleave depends on the storm and timer.
    let at = |c| out.find(c).unwrap_or(usize::MAX);
    check(
        out.len() == 4 && at('a') < at('A') && at('b') < at('B') && at('B') < usize::MAX,
        "system calls in order",
    )?;
    check(os.procs[0].exited == Some(40) && os.procs[1].exited == Some(41), "exit codes")?;
    check(os.procs[2].exited == Some(255) && os.killed == 1, "the faulting task was killed")?;
    check(os.faults == 2, "one page fault per task, resolved by map-on-resume")?;
    check(os.timer_upcalls >= 2, "the timer preempted the spinning tasks")?;
    check(os.sleeps == 2, "both tasks slept through int 0x80")?;
    check(
        (1..STORM_TRIGGERS).contains(&os.storm_upcalls),
        "a storm is coalesced while masked, and delivered",
    )?;
    check(OUT_DONE.load(Ordering::SeqCst) == 1, "done")?;
    println!("vcpu mini-OS ok");
    Ok(())
}

core::arch::global_asm!(
    r#"
    .section .text.doomed, "ax"
    .p2align 12
    .global doomed_spin
doomed_spin:
    pause
    jmp doomed_spin
    .p2align 12
"#
);

extern "C" {
    fn doomed_spin();
}

/// `ktest vcpu-doomed` (a boot task of its own): a vCPU whose upcall entry is a kernel address
/// runs a user task that spins with interrupts on, above everyone else's priority. Its timer's
/// upcall finds the entry unusable: the kernel destroys this task, from the timer interrupt,
/// with the vCPU current — and must then run the next thread instead of returning into the
/// dead one. The kernel's report and the other programs running on are the result.
pub fn doomed() -> R {
    let spin = doomed_spin as *const () as u64;
    user_task(TASKS[0], spin, spin + 1)?;
    vcpu_thread(VCPU, VCPU_UTCB, VCPU_STATE)?;
    let st = vstate();
    (st.entry_ip, st.entry_sp) = (abi::kip::USER_END, stack_top(2));
    st.regs = VcpuRegs { rip: spin, rsp: 0x6000_0000, rflags: 0x202, ..Default::default() };
    arm_timer(2000)?;
    ok(thread::ex_regs(VCPU, doomed_start as *const () as u64, stack_top(3), 0), "ex_regs")?;
    println!("armed: the timer fires in 2 ms");
    ok(scheduler::run_thread(wk::SCHEDULER, VCPU, 200, 1, 0), "run vcpu")?;
    loop {
        let _ = l4::ipc::wait(0);
    }
}

/// The doomed vCPU's first context: into its user task with interrupts on.
extern "C" fn doomed_start() -> ! {
    enter_user(TASKS[0], 0)
}

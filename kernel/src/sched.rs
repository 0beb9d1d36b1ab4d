//! Entries of the current thread and the switching that follows them: the tick, interrupts,
//! system calls, user faults, preemption and the idle loop. The decisions are the portable
//! kernel's (`kernel_core::kernel`); this module moves address spaces and contexts.
//!
//! Threads have no kernel stacks (see `arch_x86_64::trap`): an entry either returns to its
//! thread, or abandons the kernel stack and resumes a thread from its registers — after
//! blocking, preemption, or a new context. Only the idle loop's context, on the boot stack,
//! is saved and resumed.

use crate::{with_kernel, A};
use abi::MsgTag;
use arch_x86_64::trap;
use kernel_core::hal::{self, Arch, Resume, ThreadContext, UserRegs};
use kernel_core::kernel::ipc::Outcome;
use kernel_core::kernel::switch::Next;
use kernel_core::kernel::{Kernel, ThreadState};
use kernel_core::mem::PAGE_SIZE;

/// Save slot of the idle context (the boot stack) while a thread runs: the one kernel context
/// that is kept.
static mut IDLE_RSP: u64 = 0;

/// Creates the kernel state, including the kernel info page.
pub fn init(tsc_hz: u64) {
    let kip = A::with_frames(|f| f.alloc()).expect("no memory for the KIP");
    let mut page = [0u8; PAGE_SIZE as usize];
    page[0..4].copy_from_slice(&abi::kip::KIP_MAGIC.to_le_bytes());
    page[4..8].copy_from_slice(&abi::ABI_VERSION.to_le_bytes());
    page[8..16].copy_from_slice(&tsc_hz.to_le_bytes());
    page[16..24].copy_from_slice(&A::TICK_HZ.to_le_bytes());
    if let Some(secs) = arch_x86_64::rtc::unix_seconds() {
        let at = core::mem::offset_of!(abi::kip::Kip, wallclock_ns);
        page[at..at + 8].copy_from_slice(&(secs * 1_000_000_000).to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&A::cycles().to_le_bytes());
    }
    A::write_phys(kip, &page);
    crate::init_kernel(Kernel::new(kip));
}

/// The boot context after start-up: runs whatever is ready, else waits for an interrupt.
pub fn idle_loop() -> ! {
    loop {
        reschedule(Resume::Exception);
        arch_x86_64::wait_for_interrupt();
    }
}

/// The scheduling tick. (Out of line, like `line`: `kernel_event` stays small for the fault
/// fast path.)
#[inline(never)]
pub fn tick() {
    let switch = with_kernel(|k| k.tick());
    resume_if_replaced();
    // While idle, the idle loop reschedules once the interrupt returns.
    if switch {
        reschedule(Resume::Exception);
    }
}

/// A hardware interrupt line fired.
#[inline(never)]
pub fn line(line: u8) {
    let preempt = with_kernel(|k| {
        k.line_fired(line);
        k.preempt()
    });
    resume_if_replaced();
    if preempt {
        reschedule(Resume::Exception);
    }
}

/// If an interrupt replaced the current thread's context (a vCPU upcall), continue it from its
/// new frame, in the address space it now belongs to, the way its new context allows.
fn resume_if_replaced() {
    if with_kernel(|k| core::mem::take(&mut k.resume_current)) {
        resume_current();
    }
}

/// Resumes the current thread from its frame, in the address space it now belongs to. If the
/// upcall that replaced its context ended it instead (an unusable entry loses the vCPU its
/// task: at a timer interrupt, or at a `VcpuResume` that found an interrupt pending), the next
/// thread runs.
#[link_section = ".text.fast"]
fn resume_current() -> ! {
    match with_kernel(|k| k.resume_self()) {
        Some(next) => resume(next),
        None => block_and_leave(Resume::Exception),
    }
}

/// The current thread's frame (0: none, the idle loop), which a returning entry leaves by, and
/// which its next entry saves into: the entry may have moved it (creating a thread can grow the
/// arena). If the entry ended the current thread or left it not running (a vCPU whose upcall
/// entry was unusable loses its task, also from a timer interrupt), the next thread runs
/// instead: there is nothing to return to.
pub fn current_frame() -> u64 {
    let frame = with_kernel(|k| {
        let Some(c) = k.current else { return Some(0) };
        let t = k.threads.get(c).filter(|t| t.state == ThreadState::Running)?;
        let frame = t.ctx.frame();
        A::set_entry_frame(frame);
        k.world_refresh();
        Some(frame)
    });
    frame.unwrap_or_else(|| block_and_leave(hal::Resume::Exception))
}

/// Preemption and the idle loop: runs the best ready thread. A running current thread goes to
/// the tail of its level, to resume from its frame the way `how` says (`Resume::Exception`
/// after an interrupt, `Resume::Syscall` after a finished system call); its kernel context is
/// abandoned unless it stays. The idle context is kept.
pub fn reschedule(how: Resume) {
    let idle = with_kernel(|k| {
        assert!(arch_x86_64::cpu::kernel_stack_intact(), "kernel stack overflow");
        k.current.is_none()
    });
    if idle {
        if let Some(n) = with_kernel(|k| k.pick()) {
            let (root, how) = way_out(&n);
            // SAFETY: `n` names the frame of the live thread just made current; the idle slot
            // is static.
            unsafe { trap::switch(&raw mut IDLE_RSP, root, n.frame, how) };
        }
        return;
    }
    let next = with_kernel(|k| {
        let was = k.current;
        k.requeue_current(how);
        match k.pick() {
            Some(_) if k.current == was => None,
            n => n,
        }
    });
    // `None`: the current thread stays (a current thread that is gone or not running is
    // left by `current_frame` on the way out).
    if let Some(n) = next {
        resume(n)
    }
}

/// The current thread blocked (or died) inside the kernel: abandon its kernel context — it
/// resumes straight from its user frame, the way `how` says — and run the next thread.
#[link_section = ".text.fast"]
fn block_and_leave(how: hal::Resume) -> ! {
    let next = with_kernel(|k| {
        // An overflowing kernel stack has corrupted the data below it: stop here.
        assert!(arch_x86_64::cpu::kernel_stack_intact(), "kernel stack overflow");
        if let Some(t) = k.current.and_then(|c| k.threads.get_mut(c)) {
            t.resume = Some(how);
        }
        // Not blocked after all (e.g. a zero timeout): it competes like any other thread.
        k.requeue_current(how);
        let n = k.pick();
        if n.is_none() {
            k.current = None;
        }
        n
    });
    match next {
        Some(n) => resume(n),
        None => resume_idle(),
    }
}

#[link_section = ".text.fast.ipc"]
fn resume(next: Next) -> ! {
    let (root, how) = way_out(&next);
    // SAFETY: `next.frame` is the frame of the live current thread, to leave the way it says;
    // `root` is 0 or a task's page-table root (its world's for a thread in a guest world);
    // nothing on the abandoned stack is used again.
    unsafe { trap::resume(root, next.frame, how) }
}

/// The root to load and the way to leave for `next`: a thread in a guest world leaves by the
/// world's way out, with the world's root.
#[inline(always)]
fn way_out(next: &Next) -> (u64, trap::By) {
    if next.world != 0 {
        (next.world, trap::By::World)
    } else {
        (next.root, next.by.into())
    }
}

/// An event's entry from a guest world: the kernel's record of the vCPU catches up with what
/// the entry trampoline did meanwhile (`Kernel::world_entry`; a system call does it under the
/// lock it takes anyway).
#[inline(always)]
pub fn from_world() {
    if arch_x86_64::cpu::world() != 0 {
        with_kernel(|k| k.world_entry());
    }
}

/// Back to the idle loop's saved context: nothing is ready.
fn resume_idle() -> ! {
    // SAFETY: IDLE_RSP is only touched here and by `switch`, on this single CPU with
    // interrupts masked; it holds the idle context saved there (the idle loop runs first and
    // saves it before any thread runs).
    unsafe { trap::resume(0, (&raw const IDLE_RSP).read(), trap::By::Context) }
}

/// A system call of the current thread: the fast path (IPC hand-off, vCPU reflection) here,
/// everything else out of line, so that the code a fast round trip runs stays in few pages.
/// Returns the frame to leave by.
#[link_section = ".text.fast.ipc"]
pub fn syscall([rdx, rax, _label, r8]: [u64; 4]) -> u64 {
    let general = with_kernel(|k| {
        if arch_x86_64::cpu::world() != 0 {
            k.world_entry();
        }
        match k.fastpath(rdx, MsgTag(rax), r8) {
            Some(next) => Err(next),
            None => Ok(invoke_general(k, rdx, MsgTag(rax), r8)),
        }
    });
    match general {
        Err(next) => resume(next),
        Ok(g) => syscall_finish(g),
    }
}

/// What the general path did: its outcome, whether a thread it readied should run now, and
/// the frame of a finished call's caller, its results written (0: the caller destroyed
/// itself, or the call did not finish).
type General = (Outcome, bool, u64);

#[inline(never)]
fn invoke_general(k: &mut Kernel<A>, rdx: u64, tag: MsgTag, r8: u64) -> General {
    let out = k.invoke(rdx, tag, r8);
    // The call may ready a thread above us (run_thread, a semaphore up, an Irq trigger): it
    // runs at once, not at the next tick; we continue when our turn comes again.
    let preempt = k.take_preempt();
    let Outcome::Done(tag, label) = out else { return (out, preempt, 0) };
    let Some(t) = k.current.and_then(|c| k.threads.get_mut(c)) else { return (out, preempt, 0) };
    // New ip/sp from an `ex_regs` on itself apply on the way out of a finished call only.
    let pending = t.pending_regs.take();
    let f = t.ctx.regs();
    if let Some((ip, sp)) = pending {
        if ip != u64::MAX {
            f.set_ip(ip);
        }
        if sp != u64::MAX {
            f.set_sp(sp);
        }
    }
    f.set_syscall_result(tag.0, label);
    // The call may have moved the frame (creating a thread can grow the arena).
    let frame = t.ctx.frame();
    A::set_entry_frame(frame);
    (out, preempt, frame)
}

#[inline(never)]
fn syscall_finish((out, preempt, frame): General) -> u64 {
    match out {
        // The caller destroyed itself.
        Outcome::Done(..) if frame == 0 => block_and_leave(hal::Resume::Syscall),
        // The call moved a guest kernel out of the world it runs in (its user task went).
        Outcome::Done(..) if with_kernel(|k| core::mem::take(&mut k.resume_current)) => resume_current(),
        Outcome::Done(..) => with_kernel(|k| k.world_refresh()),
        Outcome::Blocked => block_and_leave(hal::Resume::Syscall),
        // A vCPU upcall or resume replaced the whole context.
        Outcome::Resume => resume_current(),
    }
    if preempt {
        reschedule(Resume::Syscall);
    }
    frame
}

/// #NM: the current thread's first FPU/SSE instruction since it was switched in.
#[inline(never)]
pub fn fpu_fault() {
    with_kernel(|k| k.fpu_fault())
}

/// A user exception of the current thread. Of a vCPU's user task: an upcall, at once (the
/// fast path of every Linux process's page fault). Otherwise out of line.
#[link_section = ".text.fast.vcpu"]
pub fn user_fault(vector: u8, error: u64, addr: u64) {
    if let Some(next) = with_kernel(|k| k.vcpu_fault(vector, error, addr)) {
        resume(next)
    }
    user_fault_general(vector, error, addr)
}

/// A user exception of a thread that is not a vCPU in user mode: a message to its pager or
/// exception handler, whose reply resolves it; without a handler the task is destroyed.
#[inline(never)]
fn user_fault_general(vector: u8, error: u64, addr: u64) {
    // sigma0 touching its memory for the first time: map it and retry the access.
    if vector == 14 && with_kernel(|k| k.current_task().is_some_and(|t| k.materialize(t, addr))) {
        return;
    }
    let sent = with_kernel(|k| {
        let me = k.current?;
        k.raise_fault(me, vector, error, addr)
    });
    if sent.is_none() {
        with_kernel(|k| {
            let Some(task) = k.current_task() else { return };
            let name = k.tasks.get(task).map(|t| t.name.clone()).unwrap_or_default();
            let (ip, sp) = k
                .current
                .and_then(|c| k.threads.get_mut(c))
                .map_or((0, 0), |t| (t.ctx.regs().ip(), t.ctx.regs().sp()));
            log::warn!(
                "user fault: task {name}: {} ip={ip:#x} addr={addr:#x} err={error:#x} sp={sp:#x}; no handler, task destroyed",
                arch_x86_64::exception_name(vector),
            );
            k.destroy_task(task);
        });
    }
    block_and_leave(hal::Resume::Exception)
}

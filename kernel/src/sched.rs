//! Entries of the current thread and the switching that follows them: the tick, interrupts,
//! system calls, user faults, preemption and the idle loop. The decisions are the portable
//! kernel's (`kernel_core::kernel`); this module moves stacks and address spaces.

use crate::{with_kernel, A};
use abi::MsgTag;
use arch_x86_64::trap;
use arch_x86_64::TrapFrame;
use kernel_core::hal::{self, Arch, ThreadStack, UserRegs};
use kernel_core::kernel::ipc::Outcome;
use kernel_core::kernel::switch::Next;
use kernel_core::kernel::Kernel;
use kernel_core::mem::PAGE_SIZE;

/// Save slot of the idle context (the boot stack) while a thread runs.
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
        reschedule();
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
        reschedule();
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
        reschedule();
    }
}

/// If an interrupt replaced the current thread's context (a vCPU upcall), continue it from its
/// new frame instead of returning into the old one.
fn resume_if_replaced() {
    if with_kernel(|k| core::mem::take(&mut k.resume_current)) {
        resume_current();
    }
}

/// Resumes the current thread from its frame, in the address space it now belongs to.
#[link_section = ".text.fast"]
fn resume_current() -> ! {
    let next = with_kernel(|k| k.resume_self()).expect("the current thread is alive");
    resume(next)
}

/// Preemption and the idle loop: switches to the best ready thread, keeping the current kernel
/// context to come back to. A running current thread goes to the tail of its level.
pub fn reschedule() {
    let switch = with_kernel(|k| {
        assert!(k.current_stack().is_none_or(|s| s.intact()), "kernel stack overflow");
        let cur = k.current_stack().map(|s| (s.saved_slot(), s.top()));
        k.reap(cur.map(|(_, top)| top));
        k.requeue_current();
        let save = cur.map_or(&raw mut IDLE_RSP, |(slot, _)| slot);
        let was = k.current;
        match k.pick() {
            Some(_) if k.current == was => None,
            Some(n) => {
                if n.root != 0 {
                    arch_x86_64::paging::write_cr3(kernel_core::mem::PhysAddr(n.root));
                }
                Some((save, n.rsp))
            }
            None => {
                k.current = None;
                cur.map(|_| (save, idle_rsp()))
            }
        }
    });
    if let Some((save, to)) = switch {
        // SAFETY: `to` is the saved context of a live thread (or the idle context); `save` is
        // the current context's slot, kept alive: the idle slot is static and a dead thread's
        // stack is reaped only by another context.
        unsafe { trap::switch(save, to) };
    }
}

/// The current thread blocked (or died) inside the kernel: abandon its kernel context — it
/// resumes straight from its user frame, the way `how` says — and run the next thread.
#[link_section = ".text.fast"]
fn block_and_leave(how: hal::Resume) -> ! {
    let next = with_kernel(|k| {
        // A kernel stack that overflowed has corrupted the heap next to it: stop here.
        assert!(k.current_stack().is_none_or(|s| s.intact()), "kernel stack overflow");
        let top = k.current_stack().map(|s| s.top());
        k.reap(top);
        if let Some(t) = k.current.and_then(|c| k.threads.get_mut(c)) {
            t.kstack.prepare_resume(how);
            t.resume = Some(how);
        }
        // Not blocked after all (e.g. a zero timeout): it competes like any other thread.
        k.requeue_current();
        k.pick().unwrap_or_else(|| {
            k.current = None;
            Next { root: 0, rsp: idle_rsp() }
        })
    });
    resume(next)
}

#[link_section = ".text.fast.ipc"]
fn resume(next: Next) -> ! {
    // SAFETY: `next.rsp` is a saved context of a live thread or of the idle loop; `root` is 0
    // or a task's page-table root; nothing on the abandoned stack is used again.
    unsafe { trap::resume(next.root, next.rsp) }
}

fn idle_rsp() -> u64 {
    // SAFETY: IDLE_RSP is only touched here and by `switch`, on this single CPU with
    // interrupts masked.
    unsafe { (&raw const IDLE_RSP).read() }
}

/// A system call of the current thread: the fast path (IPC hand-off, vCPU reflection) here,
/// everything else out of line, so that the code a fast round trip runs stays in few pages.
#[link_section = ".text.fast.ipc"]
pub fn syscall(f: &mut TrapFrame) {
    let [rdx, rax, _label, r8] = f.syscall_args();
    let general = with_kernel(|k| match k.fastpath(rdx, MsgTag(rax), r8) {
        Some(next) => Err(next),
        None => Ok(invoke_general(k, rdx, MsgTag(rax), r8)),
    });
    match general {
        Err(next) => resume(next),
        Ok(g) => syscall_finish(f, g),
    }
}

/// What the general path did: its outcome, whether a thread it readied should run now, and
/// the caller's pending new ip/sp (`None`: the caller destroyed itself).
type General = (Outcome, bool, Option<Option<(u64, u64)>>);

#[inline(never)]
fn invoke_general(k: &mut Kernel<A>, rdx: u64, tag: MsgTag, r8: u64) -> General {
    let out = k.invoke(rdx, tag, r8);
    // The call may ready a thread above us (run_thread, a semaphore up, an Irq trigger): it
    // runs at once, not at the next tick; we continue when our turn comes again.
    let preempt = k.take_preempt();
    // New ip/sp from an `ex_regs` on itself apply on the way out of a finished call only.
    let regs = match out {
        Outcome::Done(..) => k.current.and_then(|c| k.threads.get_mut(c)).map(|t| t.pending_regs.take()),
        _ => Some(None),
    };
    (out, preempt, regs)
}

#[inline(never)]
fn syscall_finish(f: &mut TrapFrame, (out, preempt, regs): General) {
    let (tag, label) = match out {
        Outcome::Done(tag, label) => (tag, label),
        Outcome::Blocked => block_and_leave(hal::Resume::Syscall),
        // A vCPU upcall or resume replaced the whole context: leave by iretq from the frame.
        Outcome::Resume => resume_current(),
    };
    match regs {
        // The caller destroyed itself.
        None => block_and_leave(hal::Resume::Syscall),
        Some(Some((ip, sp))) => {
            if ip != u64::MAX {
                f.rip = ip;
            }
            if sp != u64::MAX {
                f.rsp = sp;
            }
        }
        Some(None) => {}
    }
    f.set_syscall_result(tag.0, label);
    if preempt {
        reschedule();
    }
}

/// #NM: the current thread's first FPU/SSE instruction since it was switched in.
#[inline(never)]
pub fn fpu_fault() {
    with_kernel(|k| k.fpu_fault())
}

/// A user exception of the current thread. Of a vCPU's user task: an upcall, at once (the
/// fast path of every Linux process's page fault). Otherwise out of line.
#[link_section = ".text.fast.vcpu"]
pub fn user_fault(f: &mut TrapFrame, vector: u8, error: u64, addr: u64) {
    if let Some(next) = with_kernel(|k| k.vcpu_fault(vector, error, addr)) {
        resume(next)
    }
    user_fault_general(f, vector, error, addr)
}

/// A user exception of a thread that is not a vCPU in user mode: a message to its pager or
/// exception handler, whose reply resolves it; without a handler the task is destroyed.
#[inline(never)]
fn user_fault_general(f: &mut TrapFrame, vector: u8, error: u64, addr: u64) {
    // sigma0 touching its memory for the first time: map it and retry the access.
    if vector == 14 && with_kernel(|k| k.current_task().is_some_and(|t| k.materialize(t, addr))) {
        return;
    }
    let sent = with_kernel(|k| {
        let me = k.current?;
        k.raise_fault(me, vector, error, addr, f)
    });
    if sent.is_none() {
        with_kernel(|k| {
            let Some(task) = k.current_task() else { return };
            let name = k.tasks.get(task).map(|t| t.name.clone()).unwrap_or_default();
            log::warn!(
                "user fault: task {name}: {} ip={:#x} addr={addr:#x} err={error:#x} sp={:#x}; no handler, task destroyed",
                arch_x86_64::exception_name(vector),
                f.rip,
                f.rsp
            );
            k.destroy_task(task);
        });
    }
    block_and_leave(hal::Resume::Exception)
}

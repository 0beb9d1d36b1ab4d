//! Scheduling and kernel entries of the current thread: picking the next thread, the tick, the
//! idle loop, finishing a system call that blocked, and user faults.

use crate::ipc::Outcome;
use crate::objects::{with_kernel, Kernel, KernelStack, ThreadState};
use crate::A;
use abi::proto::exc_regs;
use abi::{Error, MsgTag};
use arch_x86_64::{cpu, trap, TrapFrame};
use kernel_core::hal::{Arch, UserFrame};
use kernel_core::mem::PAGE_SIZE;

/// Save slot of the idle context (the boot stack) while a thread runs.
static mut IDLE_RSP: u64 = 0;

/// Creates the kernel state, including the kernel info page.
pub fn init(tsc_hz: u64) {
    let kip = crate::mem::with_frames(|f| f.alloc()).expect("no memory for the KIP");
    let mut page = [0u8; PAGE_SIZE as usize];
    page[0..4].copy_from_slice(&abi::kip::KIP_MAGIC.to_le_bytes());
    page[4..8].copy_from_slice(&abi::ABI_VERSION.to_le_bytes());
    page[8..16].copy_from_slice(&tsc_hz.to_le_bytes());
    page[16..24].copy_from_slice(&arch_x86_64::TICK_HZ.to_le_bytes());
    A::write_phys(kip, &page);
    crate::objects::init(Kernel::new(kip));
}

/// The boot context after start-up: runs whatever is ready, else waits for an interrupt.
pub fn idle_loop() -> ! {
    loop {
        reschedule();
        arch_x86_64::wait_for_interrupt();
    }
}

/// The scheduling tick: expires timeouts and ends used-up time slices.
pub fn tick() {
    let switch = with_kernel(|k| {
        k.expire_timeouts();
        let Some(cur) = k.current else { return false };
        let Some(t) = k.threads.get_mut(cur) else { return false };
        t.quantum = t.quantum.saturating_sub(1);
        if t.quantum == 0 {
            t.quantum = t.quantum_len;
            return true;
        }
        k.ready.highest().is_some_and(|p| p > t.prio)
    });
    // While idle, the idle loop reschedules once the interrupt returns.
    if switch {
        reschedule();
    }
}

/// A hardware interrupt line fired.
pub fn line(line: u8) {
    let preempt = with_kernel(|k| {
        k.line_fired(line);
        let prio = k.current.and_then(|c| k.threads.get(c)).map(|t| t.prio);
        prio.is_some_and(|p| k.ready.highest().is_some_and(|h| h > p))
    });
    if preempt {
        reschedule();
    }
}

fn stack_slot(s: &KernelStack) -> *mut u64 {
    (&s.saved_rsp as *const u64).cast_mut()
}

/// Switches to the best ready thread unless that is the current one. A running current thread
/// goes to the tail of its priority level; a blocked or dead one is left where it is.
pub fn reschedule() {
    let switch = with_kernel(|k| {
        // (save slot, stack top) of the context we run on.
        let cur_stack = k.current_stack().map(|s| (stack_slot(s), s.top()));
        k.reap(cur_stack.map(|(_, top)| top));
        if let Some(c) = k.current {
            if let Some(t) = k.threads.get_mut(c).filter(|t| t.state == ThreadState::Running) {
                t.state = ThreadState::Ready;
                let p = t.prio;
                k.ready.enqueue(c, p);
            }
        }
        let save = cur_stack.map_or(&raw mut IDLE_RSP, |(slot, _)| slot);
        let Some(next) = k.ready.dequeue() else {
            k.current = None;
            return cur_stack.map(|_| (save, idle_rsp()));
        };
        let t = k.threads.get_mut(next).expect("ready queue names a live thread");
        t.state = ThreadState::Running;
        if k.current == Some(next) {
            return None;
        }
        t.fresh = false;
        k.current = Some(next);
        let (task, to, top, utcb) = (t.task, t.kstack.saved_rsp, t.kstack.top(), t.utcb_user);
        k.tasks
            .get(task.expect("runnable threads are bound"))
            .expect("thread of a live task")
            .space
            .activate();
        cpu::set_kernel_stack(top);
        cpu::set_user_gs(utcb);
        Some((save, to))
    });
    if let Some((save, to)) = switch {
        // SAFETY: `to` was saved by `switch` or built by `init_kernel_stack` for a live
        // thread (or is the idle context); `save` is the current context's slot, kept alive:
        // the idle slot is static and a dead thread's stack is reaped only by another context.
        unsafe { trap::switch(save, to) };
    }
}

fn idle_rsp() -> u64 {
    // SAFETY: IDLE_RSP is only touched here and by `switch`, on this single CPU with
    // interrupts masked.
    unsafe { (&raw const IDLE_RSP).read() }
}

impl Kernel {
    /// The kernel stack the CPU runs on (the current thread's, also when it just died).
    fn current_stack(&self) -> Option<&KernelStack> {
        let c = self.current?;
        match self.threads.get(c) {
            Some(t) => Some(&t.kstack),
            None => self.zombies.iter().find(|(id, _)| *id == c).map(|(_, z)| &*z.kstack),
        }
    }
}

/// Never return to a thread that is gone (it destroyed itself, or its task).
fn leave_if_dead() {
    let dead = with_kernel(|k| k.current.is_some_and(|c| k.threads.get(c).is_none()));
    if dead {
        reschedule();
        unreachable!("a destroyed thread was resumed");
    }
}

/// Applies what others left for the current thread: ex_regs and exception-reply registers.
/// Returns the result registers of a blocking operation, if any.
fn apply_pending(f: &mut TrapFrame) -> Option<(u64, u64)> {
    with_kernel(|k| {
        let t = k.threads.get_mut(k.current?)?;
        t.pending_fault = None;
        if let Some((ip, sp)) = t.pending_regs.take() {
            if ip != u64::MAX {
                f.rip = ip;
            }
            if sp != u64::MAX {
                f.rsp = sp;
            }
        }
        if let Some(r) = t.pending_exc.take() {
            use exc_regs::*;
            if r[IP] < abi::kip::USER_END && r[SP] < abi::kip::USER_END {
                (f.rip, f.rsp) = (r[IP], r[SP]);
            }
            // Only the arithmetic flags are the thread's to change.
            f.rflags = (f.rflags & !0xcd5) | (r[FLAGS] & 0xcd5);
            (f.rax, f.rbx, f.rcx, f.rdx) = (r[RAX], r[RBX], r[RCX], r[RDX]);
            (f.rsi, f.rdi, f.rbp, f.r8) = (r[RSI], r[RDI], r[RBP], r[R8]);
        }
        t.result.take()
    })
}

/// A system call of the current thread.
pub fn syscall(f: &mut TrapFrame) {
    let [rdx, rax, _label, r8] = f.syscall_args();
    let out = with_kernel(|k| k.invoke(rdx, MsgTag(rax), r8));
    let done = match out {
        Outcome::Done(tag, label) => Some((tag.0, label)),
        Outcome::Blocked => {
            reschedule();
            None
        }
    };
    leave_if_dead();
    let woke = apply_pending(f);
    let (tag, label) = done.or(woke).unwrap_or((MsgTag::error(Error::Canceled).0, 0));
    f.set_syscall_result(tag, label);
}

/// A user exception of the current thread: a message to its pager or exception handler, whose
/// reply resolves it; without a handler (or if the handler fails) the task is destroyed.
pub fn user_fault(f: &mut TrapFrame, vector: u8, error: u64, addr: u64) {
    let sent = with_kernel(|k| {
        let me = k.current?;
        k.raise_fault(me, vector, error, addr, f)
    });
    let failure = match sent {
        Some(_) => {
            reschedule();
            leave_if_dead();
            match apply_pending(f).map(|(tag, _)| MsgTag(tag).result()) {
                Some(Err(e)) => Some(alloc::format!("handler failed ({e:?})")),
                _ => None,
            }
        }
        None => Some(alloc::string::String::from("no handler")),
    };
    let Some(why) = failure else { return };
    with_kernel(|k| {
        let Some(task) = k.current_task() else { return };
        let name = k.tasks.get(task).map(|t| t.name.clone()).unwrap_or_default();
        log::warn!(
            "user fault: task {name}: {} ip={:#x} addr={addr:#x} err={error:#x} sp={:#x}; {why}, task destroyed",
            arch_x86_64::exception_name(vector),
            f.rip,
            f.rsp
        );
        k.destroy_task(task);
    });
    reschedule();
    unreachable!("a destroyed thread was resumed");
}

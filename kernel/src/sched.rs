//! Scheduling and kernel entries of the current thread: picking the next thread, the tick, the
//! idle loop, finishing a system call that blocked, and user faults.

use crate::ipc::Outcome;
use crate::objects::{with_kernel, Kernel, KernelStack, ThreadState};
use crate::A;
use abi::MsgTag;
use arch_x86_64::trap::Resume;
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

/// Where the CPU goes next: an address space to load (0: keep) and a saved context.
pub struct Next {
    pub cr3: u64,
    pub rsp: u64,
}

/// Makes `t` the thread the next kernel entry belongs to (kernel stack, user GS) and says where
/// to resume it. The caller has made it current.
#[inline(always)]
pub fn enter(t: &crate::objects::Thread) -> Next {
    cpu::set_kernel_stack(t.kstack.top());
    cpu::set_user_gs(t.utcb_user);
    debug_assert!(t.root != 0, "runnable threads are bound");
    let cr3 = if arch_x86_64::paging::read_cr3().0 == t.root { 0 } else { t.root };
    Next { cr3, rsp: t.kstack.saved_rsp }
}

impl Kernel {
    /// Picks the best ready thread and makes it current (kernel stack, GS, nothing else yet).
    /// `None`: nothing is ready; the caller decides between going idle and staying.
    fn pick(&mut self) -> Option<Next> {
        let next = self.ready.dequeue()?;
        let t = self.threads.get_mut(next).expect("ready queue names a live thread");
        t.state = ThreadState::Running;
        t.fresh = false;
        t.resume = None;
        let io = t.io_task;
        let n = enter(t);
        self.current = Some(next);
        self.load_io(io);
        Some(n)
    }

    /// The kernel stack the CPU runs on (the current thread's, also when it just died).
    fn current_stack(&self) -> Option<&KernelStack> {
        let c = self.current?;
        match self.threads.get(c) {
            Some(t) => Some(&t.kstack),
            None => self.zombies.iter().find(|(id, _)| *id == c).map(|(_, z)| &*z.kstack),
        }
    }
}

/// Preemption, yield and the idle loop: switches to the best ready thread, keeping the current
/// kernel context to come back to. A running current thread goes to the tail of its level.
pub fn reschedule() {
    let switch = with_kernel(|k| {
        let cur = k.current_stack().map(|s| (stack_slot(s), s.top()));
        k.reap(cur.map(|(_, top)| top));
        if let Some(c) = k.current {
            if let Some(t) = k.threads.get_mut(c).filter(|t| t.state == ThreadState::Running) {
                t.state = ThreadState::Ready;
                let p = t.prio;
                k.ready.enqueue(c, p);
            }
        }
        let save = cur.map_or(&raw mut IDLE_RSP, |(slot, _)| slot);
        let was = k.current;
        match k.pick() {
            Some(n) if k.current == was => {
                // The same thread again: nothing to switch.
                let _ = n;
                None
            }
            Some(n) => {
                if n.cr3 != 0 {
                    arch_x86_64::paging::write_cr3(kernel_core::mem::PhysAddr(n.cr3));
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
        // SAFETY: `to` was saved by `switch`/`prepare_resume`/`init_kernel_stack` for a live
        // thread (or is the idle context); `save` is the current context's slot, kept alive:
        // the idle slot is static and a dead thread's stack is reaped only by another context.
        unsafe { trap::switch(save, to) };
    }
}

/// The current thread blocked (or died) inside the kernel: abandon its kernel context — it will
/// resume straight from its user frame, the way `how` says — and run the next thread.
fn block_and_leave(how: Resume) -> ! {
    let next = with_kernel(|k| {
        let cur_top = k.current_stack().map(|s| s.top());
        k.reap(cur_top);
        if let Some(t) = k.current.and_then(|c| k.threads.get_mut(c)) {
            let base = t.kstack.stack.as_ptr() as u64;
            let off = trap::prepare_resume(&mut t.kstack.stack, how);
            t.kstack.saved_rsp = base + off as u64;
            t.resume = Some(how);
            if t.state == ThreadState::Running {
                // Not blocked after all (e.g. a zero timeout): it competes like any other.
                t.state = ThreadState::Ready;
                let p = t.prio;
                let c = k.current.expect("checked");
                k.ready.enqueue(c, p);
            }
        }
        k.pick().unwrap_or_else(|| {
            k.current = None;
            Next { cr3: 0, rsp: idle_rsp() }
        })
    });
    // SAFETY: `next.rsp` is a saved context of a live thread or the idle loop; `cr3` is 0 or a
    // task's root; nothing on this abandoned stack is used again.
    unsafe { trap::resume(next.cr3, next.rsp) }
}

fn idle_rsp() -> u64 {
    // SAFETY: IDLE_RSP is only touched here and by `switch`, on this single CPU with
    // interrupts masked.
    unsafe { (&raw const IDLE_RSP).read() }
}

/// A system call of the current thread.
#[link_section = ".text.fast"]
pub fn syscall(f: &mut TrapFrame) {
    let [rdx, rax, _label, r8] = f.syscall_args();
    let out = with_kernel(|k| match k.fastpath(rdx, MsgTag(rax), r8) {
        Some(next) => Err(next),
        None => Ok(k.invoke(rdx, MsgTag(rax), r8)),
    });
    let out = match out {
        Ok(out) => out,
        // SAFETY: the fast path made `next` current and left this thread blocked with a
        // resume context; nothing on this stack is used again.
        Err(next) => unsafe { trap::resume(next.cr3, next.rsp) },
    };
    let (tag, label) = match out {
        Outcome::Done(tag, label) => (tag, label),
        Outcome::Blocked => block_and_leave(Resume::Sysret),
    };
    let regs = with_kernel(|k| match k.current.and_then(|c| k.threads.get_mut(c)) {
        Some(t) => Ok(t.pending_regs.take()),
        None => Err(()),
    });
    match regs {
        // The caller destroyed itself.
        Err(()) => block_and_leave(Resume::Sysret),
        Ok(Some((ip, sp))) => {
            if ip != u64::MAX {
                f.rip = ip;
            }
            if sp != u64::MAX {
                f.rsp = sp;
            }
        }
        Ok(None) => {}
    }
    f.set_syscall_result(tag.0, label);
}

/// A user exception of the current thread: a message to its pager or exception handler, whose
/// reply resolves it; without a handler the task is destroyed.
pub fn user_fault(f: &mut TrapFrame, vector: u8, error: u64, addr: u64) {
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
    block_and_leave(Resume::Iret)
}

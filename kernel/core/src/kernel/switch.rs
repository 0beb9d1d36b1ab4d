//! Choosing the thread to run next. The kernel binary performs the actual switch (stacks and
//! address space) with what [`Next`] says.

use crate::hal::{Arch, ThreadStack};
use crate::kernel::{Kernel, Thread, ThreadState};

/// Where the CPU goes next: an address space to load (0: keep the current one) and the saved
/// kernel stack pointer of the thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Next {
    pub root: u64,
    pub rsp: u64,
}

impl Next {
    /// Prepares the CPU for the first user entry of `t` (kernel stack, user thread pointer) and
    /// says where to resume it. The caller makes it current.
    #[inline(always)]
    pub fn enter<A: Arch>(t: &Thread<A>) -> Next {
        Self::enter_at(t, t.kstack.saved())
    }

    /// [`Next::enter`] with the stack pointer already known (from `ThreadStack::hand_off`).
    #[inline(always)]
    pub fn enter_at<A: Arch>(t: &Thread<A>, rsp: u64) -> Next {
        A::set_kernel_stack(t.kstack.top());
        A::set_user_gs(t.gs_base);
        A::set_user_fs(t.fs_base);
        debug_assert!(t.root != 0, "runnable threads are bound");
        let root = if A::active_root() == t.root { 0 } else { t.root };
        Next { root, rsp }
    }
}

impl<A: Arch> Kernel<A> {
    /// The FPU trap setting for running `t`: its registers are loaded only if it owns them.
    pub fn fpu_for(&self, t: crate::slab::Id) {
        A::fpu_trap(self.fpu_owner != Some(t));
    }

    /// #NM: the current thread touched the FPU; give it its own state.
    pub fn fpu_fault(&mut self) {
        let Some(cur) = self.current else { return };
        A::fpu_trap(false);
        if self.fpu_owner == Some(cur) {
            return;
        }
        if let Some(o) = self.fpu_owner.and_then(|o| self.threads.get_mut(o)) {
            o.kstack.fpu_save();
        }
        if let Some(t) = self.threads.get(cur) {
            t.kstack.fpu_restore();
        }
        self.fpu_owner = Some(cur);
    }

    /// Takes the best ready thread and makes it current. `None`: nothing is ready (the caller
    /// decides between idling and staying).
    pub fn pick(&mut self) -> Option<Next> {
        let next = self.ready.dequeue()?;
        let t = self.threads.get_mut(next).expect("ready queue names a live thread");
        t.state = ThreadState::Running;
        t.fresh = false;
        t.resume = None;
        let io = t.io_task;
        let n = Next::enter(t);
        self.current = Some(next);
        self.load_io(io);
        self.fpu_for(next);
        Some(n)
    }

    /// The kernel stack the CPU runs on: the current thread's, also when it just died.
    pub fn current_stack(&mut self) -> Option<&mut A::Stack> {
        let c = self.current?;
        if self.threads.get(c).is_some() {
            return self.threads.get_mut(c).map(|t| &mut *t.kstack);
        }
        self.zombies.iter_mut().find(|(id, _)| *id == c).map(|(_, z)| &mut *z.kstack)
    }

    /// The timer interrupt: time-slice accounting when a tick is due, expired timeouts and
    /// timers, and the next interrupt programmed for whatever comes first. True if the current
    /// thread's time slice is used up or a more important thread is ready.
    pub fn tick(&mut self) -> bool {
        let now = A::cycles();
        let mut slice_over = false;
        if now >= self.next_tick {
            self.next_tick = now + A::cycles_hz() / A::TICK_HZ;
            if let Some(t) = self.current.and_then(|c| self.threads.get_mut(c)) {
                t.quantum = t.quantum.saturating_sub(1);
                if t.quantum == 0 {
                    t.quantum = t.quantum_len;
                    slice_over = true;
                }
            }
        }
        self.expire_timeouts();
        self.fire_timers();
        self.arm_timer();
        slice_over || self.preempt()
    }

    /// Programs the timer for the earliest of: the next tick, a timer Irq, an IPC timeout.
    pub fn arm_timer(&self) {
        let timers = self.timers.iter().map(|(_, next, _)| *next);
        let timeouts = self.timed.iter().filter_map(|t| self.threads.get(*t).and_then(|x| x.deadline));
        let first = timers.chain(timeouts).fold(self.next_tick, u64::min);
        A::set_timer(first);
    }

    /// After a system call: true if it readied a thread that should preempt the caller now.
    pub fn take_preempt(&mut self) -> bool {
        core::mem::take(&mut self.readied) && self.preempt()
    }

    /// True if a ready thread should preempt the current one.
    pub fn preempt(&self) -> bool {
        self.current.and_then(|c| self.threads.get(c)).is_some_and(|t| self.ready.any_above(t.prio))
    }

    /// The current thread, running, goes to the tail of its priority level (preemption).
    pub fn requeue_current(&mut self) {
        let Some(c) = self.current else { return };
        if let Some(t) = self.threads.get_mut(c).filter(|t| t.state == ThreadState::Running) {
            t.state = ThreadState::Ready;
            let p = t.prio;
            self.ready.enqueue(c, p);
        }
    }
}

impl<A: Arch> Kernel<A> {
    /// Raises the Irqs whose timer is due; periodic ones are re-armed, one-shots dropped.
    pub fn fire_timers(&mut self) {
        if self.timers.is_empty() {
            return;
        }
        let now = A::cycles();
        let due: alloc::vec::Vec<crate::slab::Id> =
            self.timers.iter().filter(|(_, next, _)| *next <= now).map(|(i, _, _)| *i).collect();
        self.timers.retain(|(_, next, period)| *next > now || *period != 0);
        for (_, next, period) in self.timers.iter_mut() {
            while *next <= now {
                *next += *period;
            }
        }
        for i in due {
            let _ = self.trigger_irq(i);
        }
    }
}

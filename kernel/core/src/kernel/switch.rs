//! Choosing the thread to run next. The kernel binary performs the actual switch (address
//! space, user registers) with what [`Next`] says.

use crate::hal::{Arch, Resume, ThreadContext, WorldExit};
use crate::kernel::{Kernel, Thread, ThreadState};

/// Where the CPU goes next: an address space to load (0: keep the current one), the user
/// registers of the thread to resume and how to leave by them; for a thread in a guest world,
/// the world's root (0: none), which the way out loads instead (see [`Arch::set_world`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Next {
    pub root: u64,
    pub frame: u64,
    pub by: Resume,
    pub world: u64,
}

impl Next {
    /// Prepares the CPU for the next user entry of `t` (where its registers are saved, its
    /// thread pointers, its guest world) and says how to resume it. The caller makes it
    /// current; `epoch` is [`Kernel::cap_epoch`].
    #[inline(always)]
    pub fn enter<A: Arch>(t: &Thread<A>, by: Resume, epoch: u64) -> Next {
        let frame = t.ctx.frame();
        A::set_entry_frame(frame);
        A::set_user_gs(t.gs_base);
        A::set_user_fs(t.fs_base);
        debug_assert!(t.root != 0, "runnable threads are bound");
        let root = if A::active_root() == t.root { 0 } else { t.root };
        if t.world_root == 0 {
            A::set_world(None);
        } else {
            A::set_world(Some(&Self::world_exit(t, epoch)));
        }
        Next { root, frame, by, world: t.world_root }
    }

    /// What the entry trampoline needs to know of guest-world thread `t` ([`WorldExit`]).
    /// Beside the vCPU paths (every way out to a world comes here), out of the IPC fast
    /// path's page.
    #[inline(never)]
    #[link_section = ".text.fast.vcpu"]
    pub(crate) fn world_exit<A: Arch>(t: &Thread<A>, epoch: u64) -> WorldExit {
        let area = t.vcpu.expect("a thread in a guest world is a vCPU");
        let world = area.world.expect("a thread in a guest world has one");
        // The trampoline may complete a resume the kernel checked: into the same user task, by
        // the same capabilities (changing capabilities takes a kernel entry, whose exit comes
        // here again).
        let valid = |c: &crate::kernel::vcpu::ResumeCache| (c.epoch == epoch) & (Some(c.user) == world.task);
        let (resume_rdx, resume_user) = match area.resume_cache.filter(valid) {
            Some(c) => (abi::CapSel::from_idx(abi::CapIdx(c.sel)).raw() | CALL_FLAGS, c.user_idx),
            None => (0, 0),
        };
        WorldExit {
            root: t.world_root,
            kernel_root: t.root,
            frame: t.ctx.frame(),
            state: area.user,
            utcb: t.utcb_user,
            user_fs: t.fs_base,
            user_gs: t.gs_base,
            resume_rdx,
            resume_user,
        }
    }
}

/// `Kernel::next_tick` while the ticks are stopped: no thread is ready.
pub const NO_TICK: u64 = u64::MAX;

/// The flags of a call, as `VcpuResume` is made.
const CALL_FLAGS: u64 = abi::syscall::Flags::CALL.bits();

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
            o.ctx.fpu_save();
        }
        if let Some(t) = self.threads.get(cur) {
            t.ctx.fpu_restore();
        }
        self.fpu_owner = Some(cur);
    }

    /// Takes the best ready thread and makes it current. `None`: nothing is ready (the caller
    /// decides between idling and staying).
    pub fn pick(&mut self) -> Option<Next> {
        let next = self.ready.dequeue()?;
        let t = self.threads.get_mut(next).expect("ready queue names a live thread");
        t.state = ThreadState::Running;
        let by = t.resume.take().unwrap_or(Resume::Exception);
        let io = t.io_task;
        let n = Next::enter(t, by, self.cap_epoch);
        self.current = Some(next);
        self.load_io(io);
        self.fpu_for(next);
        Some(n)
    }

    /// The timer interrupt: time-slice accounting when a tick is due, expired timeouts and
    /// timers, and the next interrupt programmed for whatever comes first. True if the current
    /// thread's time slice is used up or a more important thread is ready.
    ///
    /// Time slices matter only while another thread is ready: with none, the ticks stop
    /// ([`NO_TICK`]) until one is ([`Kernel::make_ready`]). A thread running alone (a guest
    /// kernel, most of the time) is then interrupted only for its own timers: under TCG each
    /// interrupt of a guest world costs two address-space switches and the refill of the
    /// world's pages after them (`docs/perf.md`).
    pub fn tick(&mut self) -> bool {
        let now = A::cycles();
        let mut slice_over = false;
        if now >= self.next_tick {
            self.next_tick = if self.ready.is_empty() { NO_TICK } else { now + A::cycles_hz() / A::TICK_HZ };
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

    /// Puts `t` (of priority `prio`) into the ready queue, at the head of its level with
    /// `front` (a woken IPC partner), and starts the ticks if they had stopped.
    pub fn make_ready(&mut self, t: crate::slab::Id, prio: u8, front: bool) {
        if front {
            self.ready.enqueue_front(t, prio);
        } else {
            self.ready.enqueue(t, prio);
        }
        if self.next_tick == NO_TICK {
            self.next_tick = A::cycles() + A::cycles_hz() / A::TICK_HZ;
            self.arm_timer();
        }
    }

    /// Programs the timer for the earliest of: the next tick, a timer Irq, an IPC timeout
    /// (none of them: [`NO_TICK`], no interrupt).
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

    /// The current thread, running, goes to the tail of its priority level (preemption), to
    /// resume from its registers the way `how` says.
    pub fn requeue_current(&mut self, how: Resume) {
        let Some(c) = self.current else { return };
        if let Some(t) = self.threads.get_mut(c).filter(|t| t.state == ThreadState::Running) {
            t.state = ThreadState::Ready;
            t.resume = Some(how);
            let p = t.prio;
            self.make_ready(c, p, false);
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

//! Scheduling: picking the next thread, the tick, the idle loop, and what happens to a thread
//! that faults.

use crate::objects::{with_kernel, Kernel, KernelStack, ThreadState};
use crate::A;
use arch_x86_64::{cpu, trap, TrapFrame};
use kernel_core::hal::Arch;
use kernel_core::mem::PAGE_SIZE;

/// Ticks in a time slice.
pub const QUANTUM: u32 = 10;

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
    crate::objects::init(Kernel {
        tasks: Default::default(),
        threads: Default::default(),
        ready: Default::default(),
        current: None,
        zombies: Default::default(),
        kip,
    });
}

/// The boot context after start-up: runs whatever is ready, else waits for an interrupt.
pub fn idle_loop() -> ! {
    loop {
        reschedule();
        arch_x86_64::wait_for_interrupt();
    }
}

/// The scheduling tick: ends the current time slice when it is used up.
pub fn tick() {
    let expired = with_kernel(|k| {
        let cur = k.current?;
        let t = k.threads.get_mut(cur)?;
        t.quantum = t.quantum.saturating_sub(1);
        (t.quantum == 0).then(|| {
            t.quantum = QUANTUM;
        })
    });
    // While idle the idle loop reschedules after the interrupt returns.
    if expired.is_some() {
        reschedule();
    }
}

fn stack_slot(s: &KernelStack) -> *mut u64 {
    (&s.saved_rsp as *const u64).cast_mut()
}

/// Switches to the best ready thread, if that is not the current one. A running current thread
/// goes to the tail of its priority level; a dead one is left for good.
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
            // Nothing to run: back to the idle context unless already there.
            k.current = None;
            return cur_stack.map(|_| (save, idle_rsp()));
        };
        let t = k.threads.get_mut(next).expect("ready queue names a live thread");
        t.state = ThreadState::Running;
        if k.current == Some(next) {
            return None;
        }
        k.current = Some(next);
        let (task, to, top, utcb) = (t.task, t.kstack.saved_rsp, t.kstack.top(), t.utcb_user);
        k.tasks.get(task).expect("thread of a live task").space.activate();
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
    // SAFETY: IDLE_RSP is only touched here and by `switch` on this single CPU with interrupts
    // masked.
    unsafe { (&raw const IDLE_RSP).read() }
}

/// A user thread raised an exception. No exception handler exists for boot tasks yet, so the
/// fault is reported and the whole task is destroyed; everything else goes on.
pub fn user_fault(f: &TrapFrame, vector: u8, error: u64, addr: u64) {
    with_kernel(|k| {
        let Some(task) = k.current_task() else { return };
        let name = k.tasks.get(task).map(|t| t.name.clone()).unwrap_or_default();
        log::warn!(
            "user fault: task {name}: {} ip={:#x} addr={addr:#x} err={error:#x} sp={:#x}; task destroyed",
            arch_x86_64::exception_name(vector),
            f.rip,
            f.rsp
        );
        k.destroy_task(task);
    });
    reschedule();
    unreachable!("a destroyed thread was resumed");
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

/// Ensures the kernel never returns to a thread that is gone (after a self-destruction).
pub fn leave_if_dead() {
    let dead = with_kernel(|k| k.current.is_some_and(|c| k.threads.get(c).is_none()));
    if dead {
        reschedule();
        unreachable!("a destroyed thread was resumed");
    }
}

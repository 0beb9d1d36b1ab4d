//! Kernel objects (tasks, threads, kernel singletons) and the global kernel state.

use crate::mem::with_frames;
use crate::A;
use abi::{CapIdx, Rights};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use kernel_core::captable::{Cap, CapTable};
use kernel_core::hal::Arch;
use kernel_core::mem::PhysAddr;
use kernel_core::sched::ReadyQueues;
use kernel_core::slab::{Id, Slab};
use spin::Mutex;

/// What a capability refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Obj {
    Task(Id),
    /// The kernel console.
    Log,
    /// Machine control (shutdown).
    PlatformCtl,
}

pub struct Task {
    pub name: String,
    pub space: <A as Arch>::Space,
    pub caps: CapTable<Obj>,
    /// Frames the kernel allocated for this task (image, stack, UTCB); freed with it.
    pub frames: Vec<PhysAddr>,
    pub threads: Vec<Id>,
    /// Console state: the next byte starts a line and gets the task's name as prefix.
    pub log_at_line_start: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadState {
    Ready,
    Running,
    Dead,
}

/// Bytes of a thread's kernel stack (including the saved stack pointer).
pub const KSTACK_SIZE: usize = 16 * 1024;

/// A thread's kernel stack; its first word holds the saved stack pointer while switched out.
/// Boxed so that its address is stable while the thread table grows.
#[repr(C, align(16))]
pub struct KernelStack {
    pub saved_rsp: u64,
    _pad: u64,
    pub stack: [u64; KSTACK_SIZE / 8 - 2],
}

impl KernelStack {
    pub fn new() -> Box<Self> {
        Box::new(KernelStack { saved_rsp: 0, _pad: 0, stack: [0; KSTACK_SIZE / 8 - 2] })
    }

    pub fn top(&self) -> u64 {
        self.stack.as_ptr_range().end as u64
    }
}

pub struct Thread {
    pub task: Id,
    pub state: ThreadState,
    pub prio: u8,
    /// Ticks left in the current time slice.
    pub quantum: u32,
    pub kstack: Box<KernelStack>,
    /// The UTCB: user address and backing frame.
    pub utcb_user: u64,
    pub utcb_frame: PhysAddr,
}

/// Everything the kernel knows, behind one lock. Interrupts are masked in the kernel, so the
/// lock only orders code paths, never contends; it is never held across a context switch.
pub struct Kernel {
    pub tasks: Slab<Task>,
    pub threads: Slab<Thread>,
    pub ready: ReadyQueues<Id>,
    /// The running thread; `None` while idle.
    pub current: Option<Id>,
    /// Dead threads whose kernel stacks are freed once nobody runs on them.
    pub zombies: Vec<(Id, Thread)>,
    /// The frame of the kernel info page, mapped read-only into every task.
    pub kip: PhysAddr,
}

static KERNEL: Mutex<Option<Kernel>> = Mutex::new(None);

/// Runs `f` with the kernel state.
pub fn with_kernel<R>(f: impl FnOnce(&mut Kernel) -> R) -> R {
    f(KERNEL.lock().as_mut().expect("kernel state not initialised"))
}

pub fn init(kernel: Kernel) {
    *KERNEL.lock() = Some(kernel);
}

impl Kernel {
    pub fn current_task(&self) -> Option<Id> {
        self.threads.get(self.current?).map(|t| t.task)
    }

    /// Looks up a capability of the current task.
    pub fn lookup(&self, idx: CapIdx) -> Option<Cap<Obj>> {
        self.tasks.get(self.current_task()?)?.caps.get(idx)
    }

    /// Destroys a task: its threads die, its memory and page tables are freed, and every
    /// capability naming it disappears. The current thread may be among the dead; the caller
    /// must then reschedule instead of returning to user mode.
    pub fn destroy_task(&mut self, id: Id) {
        let Some(task) = self.tasks.remove(id) else { return };
        for tid in &task.threads {
            if let Some(mut t) = self.threads.remove(*tid) {
                self.ready.remove(*tid, t.prio);
                t.state = ThreadState::Dead;
                self.zombies.push((*tid, t));
            }
        }
        for (_, other) in self.tasks.iter_mut() {
            other.caps.purge(Obj::Task(id));
        }
        let Task { space, frames, .. } = task;
        with_frames(|fa| {
            A::destroy_space(space, fa);
            for f in frames {
                fa.free(f);
            }
        });
    }

    /// Frees the kernel stacks of dead threads other than the current one.
    pub fn reap(&mut self, keep: Option<u64>) {
        self.zombies.retain(|(_, z)| Some(z.kstack.top()) == keep);
    }
}

/// Rights of the capabilities a boot task starts with.
pub const BOOT_CAPS: [(CapIdx, Rights); 3] = [
    (abi::cap::well_known::TASK, Rights::ALL),
    (abi::cap::well_known::LOG, Rights::RW),
    (abi::cap::well_known::PLATFORM_CTL, Rights::RW),
];

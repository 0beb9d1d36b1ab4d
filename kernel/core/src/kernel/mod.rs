//! The kernel proper, generic over the architecture: objects and their lifetime, capability and
//! mapping databases, IPC, kernel-object operations, and the choice of the next thread. The
//! kernel binary owns the one instance and the entry/exit glue; host tests drive a fake
//! architecture (`fake.rs`).
//!
//! Objects live in generational arenas (`Slab`); capabilities name them through [`Obj`]. Every
//! capability and every user mapping is also a node of a mapping database, so that unmapping
//! revokes everything derived from it and deleting an object removes every capability to it.

pub mod console;
pub mod fastpath;
pub mod icu;
pub mod invoke;
pub mod ipc;
pub mod memory;
pub mod switch;
pub mod vcpu;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use crate::captable::{Cap, CapTable};
use crate::hal::{Arch, Resume};
use crate::mapdb::{Entry, MapDb};
use crate::mem::{PhysAddr, PAGE_SIZE};
use crate::sched::ReadyQueues;
use crate::slab::{Id, Slab};
use abi::proto::Protocol;
use abi::{CapIdx, Error, Rights};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

/// What a capability refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Obj {
    Task(Id),
    Thread(Id),
    Gate(Id),
    Irq(Id),
    Semaphore(Id),
    Factory(Id),
    Scheduler,
    Log,
    Icu,
    PlatformCtl,
}

impl Obj {
    pub fn protocol(self) -> Protocol {
        match self {
            Obj::Task(_) => Protocol::Task,
            Obj::Thread(_) => Protocol::Thread,
            Obj::Gate(_) => Protocol::IpcGate,
            Obj::Irq(_) => Protocol::Irq,
            Obj::Semaphore(_) => Protocol::Semaphore,
            Obj::Factory(_) => Protocol::Factory,
            Obj::Scheduler => Protocol::Scheduler,
            Obj::Log => Protocol::Log,
            Obj::Icu => Protocol::Icu,
            Obj::PlatformCtl => Protocol::PlatformCtl,
        }
    }
}

/// A key of the mapping databases: (task, page address or slot index).
pub type Slot = crate::mapdb::Key;

pub struct Task<A: Arch> {
    pub name: String,
    pub space: A::Space,
    pub caps: CapTable<Obj>,
    /// Kernel-allocated frames (boot image, stack, UTCB area); freed with the task.
    pub frames: Vec<PhysAddr>,
    /// The UTCB area: user address, size and its frames.
    pub utcb_area: (u64, u64),
    pub utcb_frames: Vec<PhysAddr>,
    pub threads: Vec<Id>,
    pub log_at_line_start: bool,
    pub factory: Option<Id>,
    /// I/O permission bitmap (a set bit denies the port); `None`: no ports at all.
    pub io: Option<Box<[u8; crate::hal::IO_BITMAP_BYTES]>>,
    /// Owns every I/O port from boot on (sigma0), the root of all port mappings.
    pub io_root: bool,
}

impl<A: Arch> Task<A> {
    /// The frame backing user address `va` of the UTCB area.
    pub fn utcb_frame(&self, va: u64) -> Option<PhysAddr> {
        let (base, size) = self.utcb_area;
        if va < base || va >= base + size || !va.is_multiple_of(abi::utcb::UTCB_SIZE as u64) {
            return None;
        }
        let off = va - base;
        let f = self.utcb_frames.get((off / 4096) as usize)?;
        Some(PhysAddr(f.0 + off % 4096))
    }
}

/// Why a thread waits in a receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Open wait: any sender, or a pending interrupt.
    Open,
    /// The reply of the thread it called.
    Reply(Id),
    /// The pager's answer to a page fault.
    PageFault(Id),
    /// The exception handler's answer.
    Exception(Id),
    /// A semaphore's `Up`.
    Semaphore(Id),
    /// Closed receive: a message from this thread only.
    From(Id),
    /// Closed receive: this interrupt only.
    FromIrq(Id),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadState {
    /// Created, not yet made runnable by the scheduler.
    Inactive,
    Ready,
    Running,
    /// Waiting for `to` to receive.
    Sending {
        to: Id,
    },
    Receiving(Wait),
}

/// A message a blocked sender offers: where it goes and how it was sent.
#[derive(Clone, Copy, Debug)]
pub struct PendingSend {
    pub tag: abi::MsgTag,
    /// The label the receiver sees (the gate's).
    pub label: u64,
    /// A call: the sender waits for the reply afterwards.
    pub call: bool,
    pub recv_timeout: u32,
}

/// A thread. The fields the IPC fast path reads come first.
pub struct Thread<A: Arch> {
    pub state: ThreadState,
    pub prio: u8,
    /// How the thread returns to user mode once it runs again, while it is not running
    /// (`None`: it has never run, or runs: by `iret`). Wakers of a thread that blocked in a
    /// system call write its result registers into its frame.
    pub resume: Option<Resume>,
    pub utcb_frame: Option<PhysAddr>,
    pub utcb_user: u64,
    /// Page-table root of the address space the thread runs in (its task's, or for a vCPU in
    /// user mode the user task's; 0: unbound), so a switch needs no task lookup.
    pub root: u64,
    /// User-mode thread-pointer bases (GS: the UTCB for native threads; FS: TLS).
    pub gs_base: u64,
    pub fs_base: u64,
    /// Key of the bound task if it has an I/O bitmap, else 0 (see `Kernel::io_loaded`).
    pub io_task: u64,
    /// The caller waiting for this thread's reply (the implicit reply capability).
    pub reply_to: Option<Id>,
    /// Its user registers (saved here by every entry from user mode) and FPU area.
    pub ctx: A::Context,
    pub task: Option<Id>,
    pub quantum: u32,
    pub quantum_len: u32,
    pub pager: CapIdx,
    pub exc_handler: CapIdx,
    /// Threads blocked sending to this one, in arrival order.
    pub senders: VecDeque<Id>,
    pub send: Option<PendingSend>,
    /// TSC deadline of the current block.
    pub deadline: Option<u64>,
    /// New ip/sp from an `ex_regs` on itself, applied on its way out of the kernel.
    pub pending_regs: Option<(u64, u64)>,
    /// The fault message this thread sends while blocked on its pager / exception handler.
    pub pending_fault: Option<Box<(crate::kernel::ipc::FaultKind, [u64; abi::proto::exc_regs::WORDS])>>,
    /// Interrupts attached to this thread.
    pub irqs: Vec<Id>,
    /// The vCPU state area, if the thread is a vCPU.
    pub vcpu: Option<vcpu::VcpuArea>,
    /// The user task a vCPU runs in now (its `USER_MODE`).
    pub vcpu_user: Option<Id>,
    /// The root of the guest world a guest-world vCPU runs in (`root` is the same task's
    /// normal root, which the kernel runs on); 0 for every other thread.
    pub world_root: u64,
    /// The gate this thread called last on the fast path (see [`GateCache`]).
    pub gate_cache: Option<GateCache>,
    pub factory: Option<Id>,
}

/// A call's lookups through gate capability `sel`: the thread bound to the gate and its label,
/// valid while [`Kernel::cap_epoch`] is `epoch` (the epoch also moves when a gate is bound or
/// loses its thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateCache {
    pub epoch: u64,
    pub sel: u64,
    pub dst: Id,
    pub label: u64,
}

pub struct Gate {
    pub thread: Option<Id>,
    pub label: u64,
    pub factory: Option<Id>,
    /// `IpcGate::Watch`: the Irq raised when only one capability to the gate is left.
    pub watch: Option<Id>,
}

pub struct Irq {
    pub target: Option<(Id, u64)>,
    pub pending: bool,
    /// Hardware line this Irq is bound to through the ICU.
    pub line: Option<u8>,
    pub factory: Option<Id>,
}

pub struct Semaphore {
    pub count: u64,
    pub waiters: VecDeque<Id>,
    pub factory: Option<Id>,
}

pub struct Factory {
    pub limit: u64,
    pub used: u64,
    pub parent: Option<Id>,
}

/// Kernel memory charged per object kind (approximate footprint in bytes).
pub mod cost {
    pub const TASK: u64 = 3 * 4096;
    /// The thread's arena entry with its registers, and its FPU area.
    pub const THREAD: u64 = 2 * 1024;
    pub const SMALL: u64 = 128;
}

/// Everything the kernel knows, behind one lock. Interrupts are masked in the kernel, so the
/// lock only orders code paths; it is never held across a context switch.
pub struct Kernel<A: Arch> {
    pub tasks: Slab<Task<A>>,
    pub threads: Slab<Thread<A>>,
    pub gates: Slab<Gate>,
    pub irqs: Slab<Irq>,
    pub sems: Slab<Semaphore>,
    pub factories: Slab<Factory>,
    pub capdb: MapDb<Obj>,
    pub memdb: MapDb<PhysAddr>,
    /// I/O port mappings: (task, port) → port.
    pub iodb: MapDb<u64>,
    /// The task whose I/O bitmap the TSS holds (0: none loaded).
    pub io_loaded: u64,
    pub ready: ReadyQueues<Id>,
    pub current: Option<Id>,
    /// Threads blocked with a deadline.
    pub timed: Vec<Id>,
    pub kip: PhysAddr,
    /// Hardware interrupt lines → bound Irq.
    pub lines: [Option<Id>; crate::kernel::icu::LINES],
    /// Capabilities per object: an object goes away with its last capability, as in Fiasco.
    pub cap_refs: BTreeMap<Obj, u32>,
    /// Objects whose last capability went, waiting to be destroyed.
    dying: Vec<Obj>,
    /// True while `dying` is being worked off (destroying can make more objects die).
    reaping_objects: bool,
    /// The current thread's context was replaced (a vCPU upcall or resume): it must be
    /// resumed afresh from its frame, in its (possibly new) address space.
    pub resume_current: bool,
    /// A vCPU thread that runs a user task, with its own task's page-table root, while it is
    /// current: an event of the user task switches there before it touches the thread arena
    /// (under TCG a page touched before the switch costs a TLB refill in the user task's
    /// window too). A stale entry could only cost a switch: the entry names a live thread
    /// whenever it is current, so the root is live too.
    pub user_vcpu: Option<(Id, u64)>,
    /// A thread became ready during this kernel entry: the caller may have to yield to it
    /// (see [`Kernel::take_preempt`]). Saves the ready-queue scan on the common path.
    readied: bool,
    /// Memory handed to sigma0 but not yet mapped: see [`memory::Lazy`].
    pub lazy: Vec<memory::Lazy>,
    /// How that resumption may leave: by sysret (rcx and r11 of the new context are its ip and
    /// flags, as at every upcall entry and after a user `syscall`) or only by iret.
    pub resume_by: Resume,
    /// Irqs the kernel timer raises: (irq, next deadline in cycles, period in cycles or 0).
    pub timers: Vec<(Id, u64, u64)>,
    /// The thread whose FPU/SSE state is in the registers (switched lazily on #NM).
    pub fpu_owner: Option<Id>,
    /// When the next scheduling tick is due (time-slice accounting).
    pub next_tick: u64,
    /// Console input and the terminal task.
    pub console: console::Console,
    /// Changes whenever a capability slot loses or changes what it holds, a task goes away or
    /// gets an I/O bitmap, a gate is bound or loses its thread: a lookup remembered with the
    /// value it had is still right while the value is the same ([`vcpu::ResumeCache`],
    /// [`GateCache`]).
    pub cap_epoch: u64,
}

impl<A: Arch> Kernel<A> {
    pub fn new(kip: PhysAddr) -> Self {
        Kernel {
            tasks: Slab::new(),
            threads: Slab::new(),
            gates: Slab::new(),
            irqs: Slab::new(),
            sems: Slab::new(),
            factories: Slab::new(),
            capdb: MapDb::new(1),
            memdb: MapDb::new(PAGE_SIZE),
            iodb: MapDb::new(1),
            io_loaded: 0,
            ready: ReadyQueues::new(),
            current: None,
            timed: Vec::new(),
            kip,
            lines: [None; crate::kernel::icu::LINES],
            cap_refs: BTreeMap::new(),
            dying: Vec::new(),
            reaping_objects: false,
            resume_current: false,
            user_vcpu: None,
            readied: false,
            lazy: Vec::new(),
            resume_by: Resume::Exception,
            timers: Vec::new(),
            fpu_owner: None,
            cap_epoch: 0,
            next_tick: 0,
            console: console::Console::new(),
        }
    }

    pub fn current_task(&self) -> Option<Id> {
        self.threads.get(self.current?)?.task
    }

    /// Looks up a capability of `task`.
    pub fn cap(&self, task: Id, idx: CapIdx) -> Option<Cap<Obj>> {
        self.tasks.get(task)?.caps.get(idx)
    }

    /// A capability of `task` that must name a thread.
    pub fn thread_cap(&self, task: Id, idx: u64) -> Result<Id, Error> {
        match self.cap(task, CapIdx(idx)).ok_or(Error::NoEnt)?.obj {
            Obj::Thread(t) => Ok(t),
            _ => Err(Error::Inval),
        }
    }

    /// A capability of `task` that must name an Irq; slot 0 (none) gives `None`.
    pub fn opt_irq_cap(&self, task: Id, idx: u64) -> Result<Option<Id>, Error> {
        if idx == 0 {
            return Ok(None);
        }
        match self.cap(task, CapIdx(idx)).ok_or(Error::NoEnt)?.obj {
            Obj::Irq(i) => Ok(Some(i)),
            _ => Err(Error::Inval),
        }
    }

    /// Installs a root capability (a new object's first capability, or a boot capability).
    /// Whatever the slot held is revoked first.
    pub fn install_cap(&mut self, task: Id, idx: CapIdx, obj: Obj, rights: Rights) -> Result<(), Error> {
        if idx.0 == 0 || idx.0 as usize >= crate::captable::MAX_SLOTS {
            return Err(Error::Inval);
        }
        let key = (task.as_u64(), idx.0);
        let gone = self.capdb.revoke(key, true);
        self.drop_caps(&gone);
        self.caps_changed();
        let t = self.tasks.get_mut(task).ok_or(Error::NoEnt)?;
        t.caps.set(idx, Cap { obj, rights })?;
        self.capdb.insert_root(key, obj, rights.bits()).map_err(|_| Error::Exists)?;
        self.cap_added(obj);
        Ok(())
    }

    /// See [`Kernel::cap_epoch`].
    pub fn caps_changed(&mut self) {
        self.cap_epoch = self.cap_epoch.wrapping_add(1);
    }

    /// Counts a new capability to `obj`.
    pub fn cap_added(&mut self, obj: Obj) {
        *self.cap_refs.entry(obj).or_insert(0) += 1;
    }

    /// Mirrors removed capability slots into the tables; objects left without any capability
    /// are destroyed.
    pub fn drop_caps(&mut self, gone: &[Entry<Obj>]) {
        if !gone.is_empty() {
            self.caps_changed();
        }
        for e in gone {
            if let Some(t) = self.tasks.get_mut(Id::from_u64(e.key.0)) {
                t.caps.take(CapIdx(e.key.1));
            }
            let left = match self.cap_refs.get_mut(&e.value) {
                Some(n) => {
                    *n -= 1;
                    *n
                }
                None => 0,
            };
            if let (1, Obj::Gate(g)) = (left, e.value) {
                if let Some(irq) = self.gates.get(g).and_then(|g| g.watch) {
                    // The Irq may be gone (ids are never reused): then nobody listens.
                    let _ = self.trigger_irq(irq);
                }
            }
            if left == 0 {
                self.cap_refs.remove(&e.value);
                if !matches!(e.value, Obj::Scheduler | Obj::Log | Obj::Icu | Obj::PlatformCtl) {
                    self.dying.push(e.value);
                }
            }
        }
        if self.reaping_objects {
            return;
        }
        self.reaping_objects = true;
        while let Some(o) = self.dying.pop() {
            self.destroy(o);
        }
        self.reaping_objects = false;
    }

    /// Mirrors changed capability rights into the tables.
    pub fn update_caps(&mut self, changed: &[Entry<Obj>]) {
        if !changed.is_empty() {
            self.caps_changed();
        }
        for e in changed {
            if let Some((_, t)) = self.tasks.iter_mut().find(|(id, _)| id.as_u64() == e.key.0) {
                let _ = t
                    .caps
                    .set(CapIdx(e.key.1), Cap { obj: e.value, rights: Rights::from_bits_truncate(e.rights) });
            }
        }
    }

    /// Charges `bytes` to a factory (and nothing if `None`, for the kernel's own objects).
    pub fn charge(&mut self, f: Option<Id>, bytes: u64) -> Result<(), Error> {
        let Some(f) = f else { return Ok(()) };
        let fac = self.factories.get_mut(f).ok_or(Error::NoEnt)?;
        if fac.used + bytes > fac.limit {
            return Err(Error::NoMem);
        }
        fac.used += bytes;
        Ok(())
    }

    pub fn refund(&mut self, f: Option<Id>, bytes: u64) {
        if let Some(fac) = f.and_then(|f| self.factories.get_mut(f)) {
            fac.used = fac.used.saturating_sub(bytes);
        }
    }

    /// Destroys an object: every capability to it disappears, its waiters get an error.
    pub fn destroy(&mut self, obj: Obj) {
        self.purge_caps(obj);
        match obj {
            Obj::Task(id) => self.destroy_task(id),
            Obj::Thread(id) => self.destroy_thread(id),
            Obj::Gate(id) => {
                if let Some(g) = self.gates.remove(id) {
                    self.refund(g.factory, cost::SMALL);
                }
            }
            Obj::Irq(id) => {
                let waiting: Vec<Id> = self
                    .threads
                    .iter()
                    .filter(|(_, t)| t.state == ThreadState::Receiving(Wait::FromIrq(id)))
                    .map(|(t, _)| t)
                    .collect();
                for t in waiting {
                    self.wake(t, Err(Error::Canceled));
                }
                if let Some(irq) = self.irqs.remove(id) {
                    if let Some((t, _)) = irq.target {
                        if let Some(th) = self.threads.get_mut(t) {
                            th.irqs.retain(|i| *i != id);
                        }
                    }
                    self.timers.retain(|(t, _, _)| *t != id);
                    self.console_irq_gone(id);
                    if let Some(l) = irq.line {
                        self.lines[l as usize] = None;
                        A::line_mask(l);
                    }
                    self.refund(irq.factory, cost::SMALL);
                }
            }
            Obj::Semaphore(id) => {
                if let Some(s) = self.sems.remove(id) {
                    for w in s.waiters {
                        self.wake(w, Err(Error::Canceled));
                    }
                    self.refund(s.factory, cost::SMALL);
                }
            }
            Obj::Factory(id) => {
                if let Some(f) = self.factories.remove(id) {
                    self.refund(f.parent, f.limit + cost::SMALL);
                }
            }
            // Kernel singletons cannot be destroyed; their capabilities are gone above.
            Obj::Scheduler | Obj::Log | Obj::Icu | Obj::PlatformCtl => {}
        }
    }

    /// Destroys a task: its threads die, its mappings (and everything derived from them) and
    /// capabilities go, its memory is freed. The current thread may be among the dead; the
    /// caller must then reschedule instead of returning to user mode.
    pub fn destroy_task(&mut self, id: Id) {
        self.vcpu_task_gone(id);
        self.console_task_gone(id);
        let Some(task) = self.tasks.get(id) else { return };
        let threads = task.threads.clone();
        for t in threads {
            self.destroy_thread(t);
        }
        let k = id.as_u64();
        let gone = self.capdb.remove_space(k);
        self.drop_caps(&gone);
        // The space's own page tables go as a whole below: only mappings derived into other
        // spaces are unmapped one by one.
        let gone = self.memdb.remove_space(k);
        let derived: Vec<_> = gone.into_iter().filter(|e| e.key.0 != k).collect();
        self.unmap_entries(&derived);
        let gone = self.iodb.remove_space(k);
        self.deny_ports(&gone);
        if self.io_loaded == k {
            self.io_loaded = 0;
            A::io_disable();
        }
        self.purge_caps(Obj::Task(id));
        self.caps_changed();
        let Some(task) = self.tasks.remove(id) else { return };
        self.refund(task.factory, cost::TASK + task.utcb_frames.len() as u64 * 4096);
        let Task { space, mut frames, mut utcb_frames, .. } = task;
        A::destroy_space(space);
        A::with_frames(|fa| {
            for f in frames.drain(..).chain(utcb_frames.drain(..)) {
                fa.free(f);
            }
        });
        // (The vectors go only now, outside the frame allocator's lock: the heap takes that
        // lock to free a large block.)
    }

    /// Removes every capability naming `obj`.
    fn purge_caps(&mut self, obj: Obj) {
        for key in self.capdb.slots_of(obj) {
            let gone = self.capdb.revoke(key, true);
            self.drop_caps(&gone);
        }
    }

    /// Kills a thread: it leaves every queue, its partners are told, its capabilities vanish,
    /// its stack is reaped later.
    pub fn destroy_thread(&mut self, id: Id) {
        if self.threads.get(id).is_none() {
            return;
        }
        self.purge_caps(Obj::Thread(id));
        let Some(t) = self.threads.get(id) else { return };
        let (prio, state, task, senders, reply_to, irqs) =
            (t.prio, t.state, t.task, t.senders.clone(), t.reply_to, t.irqs.clone());
        self.ready.remove(id, prio);
        self.leave_wait(id, state);
        for s in senders {
            self.wake(s, Err(Error::Canceled));
        }
        if let Some(c) = reply_to {
            self.wake(c, Err(Error::Canceled));
        }
        // Whoever waits for an answer from this thread gets an error.
        let waiting: Vec<Id> = self
            .threads
            .iter()
            .filter(|(_, o)| {
                matches!(o.state, ThreadState::Receiving(Wait::Reply(p) | Wait::PageFault(p) | Wait::Exception(p) | Wait::From(p)) if p == id)
            })
            .map(|(i, _)| i)
            .collect();
        for w in waiting {
            self.wake(w, Err(Error::Canceled));
        }
        for irq in irqs {
            if let Some(i) = self.irqs.get_mut(irq) {
                i.target = None;
            }
        }
        for (_, g) in self.gates.iter_mut() {
            if g.thread == Some(id) {
                g.thread = None;
            }
        }
        self.caps_changed();
        if let Some(task) = task.and_then(|t| self.tasks.get_mut(t)) {
            task.threads.retain(|t| *t != id);
        }
        if self.fpu_owner == Some(id) {
            self.fpu_owner = None;
        }
        if let Some(t) = self.threads.remove(id) {
            self.refund(t.factory, cost::THREAD);
        }
    }
}

impl<A: Arch> Kernel<A> {
    /// Verifies the invariants that tie the kernel's structures together.
    pub fn self_check(&self) -> Result<(), &'static str> {
        self.capdb.check()?;
        self.memdb.check()?;
        self.iodb.check()?;
        let mut caps = 0;
        for (tid, t) in self.tasks.iter() {
            for (idx, c) in t.caps.iter() {
                caps += 1;
                match self.capdb.get((tid.as_u64(), idx.0)) {
                    Some((o, r)) if o == c.obj && r == c.rights.bits() => {}
                    _ => return Err("capability table and database disagree"),
                }
            }
            for th in &t.threads {
                if self.threads.get(*th).and_then(|x| x.task) != Some(tid) {
                    return Err("task lists a thread that is not bound to it");
                }
            }
        }
        if caps != self.capdb.len() {
            return Err("capability database holds slots no table has");
        }
        // Remembered lookups of the current epoch must still be what the tables say.
        for (id, t) in self.threads.iter() {
            let Some(c) = t.gate_cache.filter(|c| c.epoch == self.cap_epoch) else { continue };
            if self.gate_lookup(id, c.sel) != Some((c.dst, c.label)) {
                return Err("a thread's gate lookup outlived a capability or binding change");
            }
        }
        if let Some((v, root)) = self.user_vcpu.filter(|(v, _)| self.current == Some(*v)) {
            let t = self.threads.get(v).ok_or("the current vCPU is gone")?;
            if t.vcpu_user.is_none() || t.vcpu.map(|a| a.kernel_root) != Some(root) {
                return Err("the current vCPU is not in the user task it is remembered in");
            }
        }
        for (id, t) in self.threads.iter() {
            let Some(c) = t.vcpu.and_then(|a| a.resume_cache).filter(|c| c.epoch == self.cap_epoch) else {
                continue;
            };
            // (The world root is the user task's world's, made once: not a lookup.)
            let now = t.task.and_then(|own| self.resume_lookup(id, own, c.sel, c.user_idx));
            if now.map(|n| vcpu::ResumeCache { world_root: c.world_root, ..n }) != Some(c) {
                return Err("a vCPU's resume lookup outlived a capability change");
            }
        }
        if self.cap_refs.values().map(|n| *n as usize).sum::<usize>() != caps
            || self.cap_refs.values().any(|n| *n == 0)
        {
            return Err("capability reference counts are off");
        }
        for (_, f) in self.factories.iter() {
            if f.used > f.limit {
                return Err("factory over quota");
            }
        }
        for (id, t) in self.threads.iter() {
            match t.state {
                ThreadState::Sending { to }
                    if !self.threads.get(to).is_some_and(|r| r.senders.contains(&id)) =>
                {
                    return Err("sender not queued at its receiver");
                }
                ThreadState::Receiving(Wait::Semaphore(s))
                    if !self.sems.get(s).is_some_and(|x| x.waiters.contains(&id)) =>
                {
                    return Err("semaphore waiter not queued");
                }
                _ => {}
            }
            if t.task.is_some_and(|tk| self.tasks.get(tk).is_none()) {
                return Err("thread bound to a dead task");
            }
        }
        for (_, g) in self.gates.iter() {
            if g.thread.is_some_and(|t| self.threads.get(t).is_none()) {
                return Err("gate bound to a dead thread");
            }
        }
        if let Some(t) = self.console.terminal {
            if self.tasks.get(t.task).is_none() {
                return Err("the console's terminal is a dead task");
            }
            if t.irq.is_some_and(|i| self.irqs.get(i).is_none()) {
                return Err("the console's terminal has a dead Irq");
            }
        }
        Ok(())
    }
}

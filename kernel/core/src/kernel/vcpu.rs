//! vCPUs: upcalls on the events of a user task (and on interrupts), and `VcpuResume` back into
//! the saved context — the execution model L4Linux runs on. Layout and flags: `abi::vcpu`.

use super::ipc::Outcome;
use super::switch::Next;
use super::{Kernel, Obj, ThreadState, Wait};
use crate::hal::{Arch, GuestRegions, ThreadContext, UserRegs};
use crate::mem::PhysAddr;
use crate::slab::Id;
use abi::vcpu::{off, state, sticky, trap, VERSION};
use abi::{CapIdx, Error, MsgTag};

/// Where a vCPU's state area is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuArea {
    /// Kernel view (a frame of the task's UTCB area, so it cannot go away under us).
    pub frame: PhysAddr,
    /// User address (passed to the upcall handler).
    pub user: u64,
    /// The FS base of the vCPU's own context, kept while it runs a user task.
    pub kernel_fs: u64,
    /// Its own task's page-table root and I/O key (`Thread::root`, `Thread::io_task`), kept
    /// while it runs a user task, so that an upcall needs no task lookup (one page less to
    /// touch after the address-space switch).
    pub kernel_root: u64,
    pub kernel_io: u64,
    /// What the last `VcpuResume` on the fast path looked up, reused while
    /// [`Kernel::cap_epoch`] is unchanged: the capability and task tables are then two pages
    /// not touched after the address-space switch.
    pub resume_cache: Option<ResumeCache>,
    /// The guest world, if the vCPU runs its guest in one (`abi::vcpu`).
    pub world: Option<GuestWorld>,
}

/// A vCPU whose guest kernel runs in guest worlds: at privilege level 1 in the address space
/// of the user task it runs, the `regions` of its own task shown there for it alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestWorld {
    pub regions: GuestRegions,
    /// The root of the vCPU's task's space, whose regions the worlds show.
    pub guest: u64,
    /// The world root of the vCPU's own task.
    pub own_root: u64,
    /// The task whose world the vCPU is in (`None`: none yet, its first context runs as any
    /// thread's does, until the first upcall).
    pub task: Option<Id>,
}

/// `VcpuResume`'s lookups: the vCPU's own thread capability `sel` (with the read right) and
/// the user task capability `user_idx` naming `user`, whose page-table root, world root (for
/// a guest-world vCPU, else 0) and I/O key are `root`, `world_root` and `io`; valid for
/// `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeCache {
    pub epoch: u64,
    pub sel: u64,
    pub user_idx: u64,
    pub user: Id,
    pub root: u64,
    pub world_root: u64,
    pub io: u64,
}

fn word<A: Arch>(a: &VcpuArea, i: usize) -> u64 {
    let mut w = [0u64; 1];
    A::read_words(PhysAddr(a.frame.0 + i as u64 * 8), &mut w);
    w[0]
}

fn set_word<A: Arch>(a: &VcpuArea, i: usize, v: u64) {
    A::write_words(PhysAddr(a.frame.0 + i as u64 * 8), &[v]);
}

impl<A: Arch> Kernel<A> {
    /// `Thread::VcpuControl`: the state area at `addr` (1 KiB aligned, in the thread's task's
    /// UTCB area, not a UTCB in use) makes `t` a vCPU; with guest `regions` (memory flexpages
    /// of its task), one whose guest runs in guest worlds: they must hold the state area and
    /// `t`'s UTCB.
    pub fn vcpu_control(&mut self, t: Id, addr: u64, regions: &[u64]) -> Result<(), Error> {
        let th = self.threads.get(t).ok_or(Error::NoEnt)?;
        let (task, utcb) = (th.task.ok_or(Error::Inval)?, th.utcb_user);
        if th.vcpu.is_some() {
            return Err(Error::Exists);
        }
        let frame = self.tasks.get(task).ok_or(Error::NoEnt)?.utcb_frame(addr).ok_or(Error::Inval)?;
        if self.threads.iter().any(|(_, o)| o.task == Some(task) && o.utcb_user == addr) {
            return Err(Error::Exists);
        }
        let world = if regions.is_empty() {
            None
        } else {
            if regions.len() > abi::vcpu::GUEST_REGIONS {
                return Err(Error::Inval);
            }
            let mut list = [(0, 0); abi::vcpu::GUEST_REGIONS];
            for (l, &f) in list.iter_mut().zip(regions) {
                let f = abi::proto::fpage::Fpage(f);
                if f.typ() != Some(abi::proto::fpage::Type::Memory) {
                    return Err(Error::Inval);
                }
                *l = (f.base(), f.order());
            }
            let regions = GuestRegions::new(&list[..regions.len()])
                .filter(|g| g.contains(addr) && g.contains(utcb))
                .ok_or(Error::Inval)?;
            let space = &mut self.tasks.get_mut(task).ok_or(Error::NoEnt)?.space;
            A::guest_regions(space, &regions).map_err(|_| Error::NoMem)?;
            let guest = A::space_root(space);
            let own_root = A::world_root(space, guest, &regions).map_err(|_| Error::NoMem)?;
            Some(GuestWorld { regions, guest, own_root, task: None })
        };
        A::write_words(frame, &[0; off::WORDS]);
        let area = VcpuArea {
            frame,
            user: addr,
            kernel_fs: 0,
            kernel_root: 0,
            kernel_io: 0,
            resume_cache: None,
            world,
        };
        set_word::<A>(&area, off::VERSION, VERSION);
        self.threads.get_mut(t).ok_or(Error::NoEnt)?.vcpu = Some(area);
        Ok(())
    }

    /// The current thread goes back to user mode without a switch: if it runs in a guest
    /// world, the trampoline learns what this entry changed (FS/GS bases, capabilities).
    pub fn world_refresh(&self) {
        let Some(t) = self.current.and_then(|c| self.threads.get(c)) else { return };
        if t.world_root != 0 {
            A::set_world(Some(&Next::world_exit(t, self.cap_epoch)));
        }
    }

    /// A kernel entry of the current thread from a guest world: the entry trampoline may have
    /// moved the vCPU between its guest kernel and its user task without the kernel (a
    /// forwarded system call, a resume it completed). Brings the thread's record in line with
    /// the level the entry came from.
    #[inline]
    pub fn world_entry(&mut self) {
        let Some(me) = self.current else { return };
        let Some(t) = self.threads.get_mut(me) else { return };
        let Some(w) = t.vcpu.and_then(|a| a.world) else { return };
        let guest = t.ctx.regs().guest_mode();
        match (guest, t.vcpu_user) {
            // Forwarded: the guest kernel took its user task's system call.
            (true, Some(_)) => t.vcpu_user = None,
            // Resumed by the trampoline: back in the world's user task.
            (false, None) => t.vcpu_user = w.task.filter(|&u| Some(u) != t.task),
            _ => {}
        }
    }

    /// Sends vCPU thread `t` to its upcall handler in its own task (a guest-world vCPU: at
    /// level 1 in the world it is in). With `save`, its current context is saved in the state
    /// area first; otherwise the area keeps the context it already holds (an interrupt found
    /// pending at resume). Sets `resume_current` if `t` runs.
    #[link_section = ".text.fast.vcpu"]
    pub fn vcpu_upcall(&mut self, t: Id, trapno: u64, err: u64, pfa: u64, label: Option<u64>, save: bool) {
        let Some(th) = self.threads.get_mut(t) else { return };
        let Some(area) = th.vcpu else { return };
        let world = area.world;
        if world.is_none() & (self.current == Some(t)) & th.vcpu_user.is_some() {
            // Out of the user task into the vCPU's own address space first: the state area
            // and the rest of this path are then touched only there, where the handler and
            // `VcpuResume` touch them anyway (under TCG a page touched after a switch costs a
            // TLB refill). The resume that follows finds the root loaded.
            A::load_root(area.kernel_root);
        }
        // One read of the header; the context and trap words straight from the frame into the
        // area (no copies in between: under TCG each is a memory access more); the flags.
        let head: [u64; off::REGS] = A::read_array(area.frame);
        let regs = PhysAddr(area.frame.0 + off::REGS as u64 * 8);
        if save {
            th.ctx.regs().save_context(regs, [th.fs_base, th.gs_base, trapno, err, pfa]);
        } else {
            A::write_words(PhysAddr(area.frame.0 + off::TRAPNO as u64 * 8), &[trapno, err, pfa]);
        }
        A::write_words(PhysAddr(area.frame.0 + off::STATE as u64 * 8), &[0, head[off::STATE]]);
        if let Some(l) = label {
            set_word::<A>(&area, off::IRQ_LABEL, l);
        }
        let (ip, sp) = (head[off::ENTRY_IP], head[off::ENTRY_SP]);
        if !th.ctx.regs().set_entry(ip, sp, area.user, world.is_some()) {
            let own = th.task;
            return self.vcpu_entry_unusable(own, ip, sp);
        }
        match world {
            // The guest kernel stays in the world it is in (its own task's if none yet), with
            // its user task's FS/GS bases.
            Some(w) => {
                th.vcpu_user = None;
                if w.task.is_none() {
                    self.enter_own_world(t);
                }
            }
            None => {
                th.gs_base = th.utcb_user;
                if th.vcpu_user.take().is_some() {
                    // Back from a user task to its own: as it was at the resume.
                    (th.fs_base, th.root, th.io_task) = (area.kernel_fs, area.kernel_root, area.kernel_io);
                    if self.user_vcpu.is_some_and(|(v, _)| v == t) {
                        self.user_vcpu = None;
                    }
                }
            }
        }
        if self.current == Some(t) {
            self.resume_current = true;
            // The entry context's rcx/r11 are ip/flags, but sysret only goes to user level: a
            // guest kernel's leaves by iret (a world's way out, in fact).
            self.resume_by =
                if world.is_some() { crate::hal::Resume::Exception } else { crate::hal::Resume::Syscall };
        }
    }

    /// Puts guest-world vCPU `t` into its own task's world (its guest's own contexts run there,
    /// and there it goes when its user task's world goes away).
    fn enter_own_world(&mut self, t: Id) {
        let Some(th) = self.threads.get_mut(t) else { return };
        let Some(a) = th.vcpu.as_mut() else { return };
        let Some(w) = a.world.as_mut() else { return };
        w.task = th.task;
        th.world_root = w.own_root;
        // Its own task's root and I/O key, as bound (kept in the area while it ran a user task).
        if a.kernel_root != 0 {
            (th.root, th.io_task) = (a.kernel_root, a.kernel_io);
        }
        a.kernel_root = 0;
    }

    /// vCPU `me`, its context loaded, continues in user task `user` (page-table root, world
    /// root for a guest-world vCPU, I/O key) with FS/GS bases `fs`/`gs`. Its own task's root
    /// and I/O key (and FS base) are kept for the way back, unless it runs a user task already.
    #[inline(always)]
    pub(crate) fn enter_user_task(&mut self, me: Id, user: Id, roots: (u64, u64, u64), bases: (u64, u64)) {
        let Some(th) = self.threads.get_mut(me) else { return };
        let own = (th.fs_base, th.root, th.io_task);
        let Some(a) = th.vcpu.as_mut() else { return };
        match a.world.as_mut() {
            Some(w) => {
                if a.kernel_root == 0 {
                    (a.kernel_root, a.kernel_io) = (own.1, own.2);
                }
                w.task = Some(user);
            }
            None => {
                if th.vcpu_user.is_none() {
                    (a.kernel_fs, a.kernel_root, a.kernel_io) = own;
                }
                self.user_vcpu = Some((me, a.kernel_root));
            }
        }
        (th.root, th.world_root, th.io_task) = roots;
        (th.fs_base, th.gs_base) = bases;
        th.vcpu_user = Some(user);
    }

    /// An exception of the current thread: if it is a vCPU running a user task, the upcall
    /// to the guest kernel and where to resume; `None` for everyone else.
    #[link_section = ".text.fast.vcpu"]
    pub fn vcpu_fault(&mut self, vector: u8, error: u64, addr: u64) -> Option<Next> {
        let me = self.current?;
        self.leave_user_task(me);
        self.threads.get(me)?.vcpu_user?;
        self.vcpu_upcall(me, vector as u64, error, addr, None, true);
        self.resume_self()
    }

    /// If `me` is the vCPU remembered to run a user task ([`Kernel::user_vcpu`]): into its own
    /// address space at once, before the thread arena is touched.
    #[inline(always)]
    pub(crate) fn leave_user_task(&self, me: Id) {
        if let Some((v, root)) = self.user_vcpu {
            if v == me {
                A::load_root(root);
            }
        }
    }

    /// No usable upcall entry point: the guest kernel cannot take the event, its task goes.
    /// (Out of line: the upcall is a fast path, under TCG its code pages count.)
    #[cold]
    #[inline(never)]
    fn vcpu_entry_unusable(&mut self, own: Option<Id>, ip: u64, sp: u64) {
        let name = own.and_then(|o| self.tasks.get(o)).map(|x| x.name.clone()).unwrap_or_default();
        log::warn!("vcpu of task {name}: entry ip/sp {ip:#x}/{sp:#x} unusable; task destroyed");
        if let Some(o) = own {
            self.destroy_task(o);
        }
    }

    /// Makes the current thread, whose context was replaced, resume from its frame (the way
    /// `resume_by` allows) and says where; clears the request.
    #[link_section = ".text.fast.vcpu"]
    pub fn resume_self(&mut self) -> Option<Next> {
        self.resume_current = false;
        let how = core::mem::replace(&mut self.resume_by, crate::hal::Resume::Exception);
        let (c, epoch) = (self.current?, self.cap_epoch);
        let t = self.threads.get_mut(c)?;
        let io = t.io_task;
        let n = Next::enter(t, how, epoch);
        self.load_io(io);
        Some(n)
    }

    /// `Thread::VcpuResume` by `me`: continue the context in the state area.
    pub fn vcpu_resume(&mut self, me: Id, tag: MsgTag) -> Outcome {
        match self.try_vcpu_resume(me, tag) {
            Ok(()) => {
                let exact = self.threads.get_mut(me).is_some_and(|t| t.ctx.regs().syscall_exit_exact());
                self.resume_by =
                    if exact { crate::hal::Resume::Syscall } else { crate::hal::Resume::Exception };
                Outcome::Resume
            }
            Err(e) => Outcome::err(e),
        }
    }

    pub(crate) fn try_vcpu_resume(&mut self, me: Id, tag: MsgTag) -> Result<(), Error> {
        let th = self.threads.get(me).ok_or(Error::NoEnt)?;
        let area = th.vcpu.ok_or(Error::Inval)?;
        let own = th.task.ok_or(Error::Inval)?;
        let mut w = [0u64; off::WORDS];
        A::read_words(area.frame, &mut w);
        // The context to continue and its flags are in `saved_state` (as the upcall left
        // them, or as the handler set them up); `state` is the handler's own, IRQs usually off.
        let resumed = w[off::SAVED_STATE];
        let user_mode = resumed & state::USER_MODE != 0;
        let user = match user_mode {
            false => None,
            true => match self.cap(own, CapIdx(w[off::USER_TASK])).ok_or(Error::NoEnt)?.obj {
                Obj::Task(u) if u != own => Some(u),
                _ => return Err(Error::Inval),
            },
        };
        // Map items first: they belong to the context even if an interrupt comes in between.
        if let (Some(u), true) = (user, tag.items() > 0) {
            self.map_items(me, own, u, tag)?;
        }
        if w[off::STICKY] & sticky::IRQ_PENDING != 0 && resumed & state::IRQ != 0 {
            // Deliver one pending interrupt now; the area keeps the context to resume. The flag
            // stays while more are pending.
            if let Some((_, label)) = self.take_pending_irq(me) {
                if !self.has_pending_irq(me) {
                    set_word::<A>(&area, off::STICKY, w[off::STICKY] & !sticky::IRQ_PENDING);
                }
                self.vcpu_upcall(me, trap::IRQ, 0, 0, Some(label), false);
                // An unusable entry took the vCPU's task, state area and all.
                if self.threads.get(me).is_none() {
                    return Ok(());
                }
                // The context in the area is the one being resumed: its flags (USER_MODE
                // above all) are those the handler asked for, not the handler's own.
                set_word::<A>(&area, off::SAVED_STATE, resumed);
                return Ok(());
            }
            set_word::<A>(&area, off::STICKY, w[off::STICKY] & !sticky::IRQ_PENDING);
        }
        let regs = PhysAddr(area.frame.0 + off::REGS as u64 * 8);
        let (fs, gs) = (w[off::REGS + 18], w[off::REGS + 19]);
        let world = area.world;
        let Some(user) = user else {
            let th = self.threads.get_mut(me).ok_or(Error::NoEnt)?;
            if !th.ctx.regs().load_context(regs, world.is_some()) {
                return Err(Error::Inval);
            }
            (th.fs_base, th.gs_base) = (fs, gs);
            th.vcpu_user = None;
            if world.is_some() {
                // A guest's own contexts run in its own task's world.
                self.enter_own_world(me);
            }
            set_word::<A>(&area, off::STATE, resumed);
            return Ok(());
        };
        let io = self.io_key(user);
        let space = &mut self.tasks.get_mut(user).ok_or(Error::NoEnt)?.space;
        let root = A::space_root(space);
        let world_root = match world {
            Some(w) => A::world_root(space, w.guest, &w.regions).map_err(|_| Error::NoMem)?,
            None => 0,
        };
        let th = self.threads.get_mut(me).ok_or(Error::NoEnt)?;
        if !th.ctx.regs().load_context(regs, false) {
            return Err(Error::Inval);
        }
        self.enter_user_task(me, user, (root, world_root, io), (fs, gs));
        set_word::<A>(&area, off::STATE, resumed);
        Ok(())
    }

    /// Irq `irq` (label `label`) fired for vCPU thread `t`: an upcall now if its IRQs are on;
    /// else the Irq stays pending and the state area's sticky flag says so (each pending Irq
    /// is delivered at a later resume, or taken by an open wait).
    pub fn vcpu_irq(&mut self, t: Id, irq: Id, label: u64) {
        let Some(th) = self.threads.get(t) else { return };
        let Some(area) = th.vcpu else { return };
        let runs = matches!(th.state, ThreadState::Running | ThreadState::Ready);
        if word::<A>(&area, off::STATE) & state::IRQ != 0 && runs {
            self.vcpu_upcall(t, trap::IRQ, 0, 0, Some(label), true);
        } else {
            if let Some(i) = self.irqs.get_mut(irq) {
                i.pending = true;
            }
            let s = word::<A>(&area, off::STICKY);
            set_word::<A>(&area, off::STICKY, s | sticky::IRQ_PENDING);
        }
    }

    /// True if `t` is a vCPU that takes interrupts as messages now (waiting in an open wait).
    pub fn vcpu_waits(&self, t: Id) -> bool {
        self.threads.get(t).is_some_and(|x| x.vcpu.is_none() || x.state == ThreadState::Receiving(Wait::Open))
    }

    /// vCPUs running in a task that goes away are sent back to their handler; a guest kernel
    /// in that task's world continues in its own task's.
    pub fn vcpu_task_gone(&mut self, task: Id) {
        let users: alloc::vec::Vec<Id> =
            self.threads.iter().filter(|(_, t)| t.vcpu_user == Some(task)).map(|(id, _)| id).collect();
        let guests: alloc::vec::Vec<Id> = self
            .threads
            .iter()
            .filter(|(_, t)| t.vcpu.and_then(|a| a.world).is_some_and(|w| w.task == Some(task)))
            .map(|(id, _)| id)
            .collect();
        for t in users {
            self.vcpu_upcall(t, trap::TASK_GONE, 0, 0, None, false);
        }
        for t in guests {
            self.enter_own_world(t);
            if self.current == Some(t) {
                // Its exit must not load the dying task's roots: it goes through `Next::enter`.
                self.resume_current = true;
            }
        }
    }
}

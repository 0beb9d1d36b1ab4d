//! The IPC fast path: a call to a thread waiting in open wait, and a reply-and-wait to a caller
//! waiting for the reply — the two halves of every client/server round trip — done in one short
//! pass with a direct switch to the partner.
//!
//! Under TCG every address-space switch flushes the emulated TLB and the jump cache, so what
//! costs is the number of distinct pages and basic blocks touched per round trip: this path
//! reads only the two threads, the caller's capability slot and the gate, copies the untyped
//! words UTCB to UTCB, and leaves both ready queue and scheduler alone. Anything unusual (typed
//! items, timeouts, a higher-priority thread ready, queued senders, pending interrupts) takes
//! the general path in `ipc.rs`, which has the same semantics.

use crate::hal::{Arch, Message, Resume, ThreadContext, UserRegs};
use crate::kernel::switch::Next;
use crate::kernel::vcpu::{GuestWorld, ResumeCache};
use crate::kernel::GateCache;
use crate::kernel::{Kernel, Obj, ThreadState, Wait};
use crate::slab::Id;
use abi::syscall::{FLAGS_MASK, REG_WORDS};
use abi::{CapSel, MsgTag};

/// Untyped words the fast path copies; longer messages take the general path.
const MAX_WORDS: usize = crate::hal::HAND_OFF_WORDS;
const CALL: u64 = 0x3;
const REPLY_AND_WAIT: u64 = 0xf;

impl<A: Arch> Kernel<A> {
    /// Tries the fast path for the current thread's `invoke`. `Some`: done, the partner is
    /// current and the caller blocked; resume `Next`.
    ///
    /// Written for few branches: under TCG each basic block first executed after an
    /// address-space switch costs a hash lookup, so conditions are combined before testing.
    #[link_section = ".text.fast.ipc"]
    pub fn fastpath(&mut self, rdx: u64, tag: MsgTag, r8: u64) -> Option<Next> {
        let me = self.current?;
        self.leave_user_task(me);
        let t = self.threads.get(me)?;
        if t.vcpu_user.is_some() {
            // A system call of a vCPU's user task (a Linux process): straight up to the guest
            // kernel, whatever its registers say.
            self.vcpu_upcall(me, abi::vcpu::trap::SYSCALL, 0, 0, None, true);
            return self.resume_self();
        }
        let flags = rdx & FLAGS_MASK;
        // A thread call with one word and any number of map items: a vCPU's `VcpuResume`?
        let items = MsgTag::ITEMS_MASK << MsgTag::ITEMS_SHIFT;
        let resume = MsgTag::new(abi::proto::thread::LABEL, 1, 0, 0).0;
        if t.vcpu.is_some() & (flags == CALL) & (r8 == 0) & (tag.0 & !items == resume) {
            return self.vcpu_resume_fast(me, rdx, tag);
        }
        let (words, regs) = (tag.words(), tag.in_regs());
        // No timeouts, no typed items, no tag flags but REGS, a short message, a call or
        // reply-and-wait.
        let shape = (r8 == 0)
            & (tag.0 & 0xffc0 & !(MsgTag::REGS << MsgTag::FLAGS_SHIFT) == 0)
            & (words <= MAX_WORDS)
            & (!regs | (words <= REG_WORDS))
            & ((flags == CALL) | (flags == REPLY_AND_WAIT));
        if !shape {
            return None;
        }
        let call = flags == CALL;
        let (sel, epoch) = (CapSel::from_raw(rdx).idx().0, self.cap_epoch);
        let (dst, label) = if call {
            // The gate this thread called last, while no capability or binding changed:
            // neither the task, the capability table nor the gate is touched then.
            match self.threads.get(me)?.gate_cache.filter(|c| (c.epoch == epoch) & (c.sel == sel)) {
                Some(c) => (c.dst, c.label),
                None => self.gate_lookup(me, sel)?,
            }
        } else {
            (self.threads.get(me)?.reply_to?, 0)
        };
        let (t, d) = self.threads.get2_mut(me, dst)?;
        // The partner must wait for exactly this, with a user frame to resume by sysret, and
        // nothing may be queued at us that an open wait would have to take first.
        // (Spelt out rather than comparing `Wait`s: the derived comparison is an out-of-line
        // function with a jump table, two more pages to touch.)
        let waits = match d.state {
            ThreadState::Receiving(Wait::Open) => call,
            ThreadState::Receiving(Wait::Reply(c)) => !call & (c == me),
            _ => false,
        };
        let ok = waits
            & (d.resume == Some(Resume::Syscall))
            & d.senders.is_empty()
            & (call | (t.senders.is_empty() & t.irqs.is_empty()))
            & (!call | (tag.label() != abi::proto::ipc_gate::LABEL))
            & (d.io_task == self.io_loaded)
            // A guest world's exit is another way out (`Arch::set_world`).
            & (d.world_root == 0)
            & !self.ready.any_above(d.prio.max(t.prio));
        if !ok {
            return None;
        }
        // A register message stays one: neither UTCB is touched.
        let msg = if regs {
            Message::Regs { words: t.ctx.regs().reg_words(), n: words }
        } else {
            Message::Utcb { dst: d.utcb_frame?, src: t.utcb_frame?, words }
        };
        let rtag = MsgTag::new(tag.label(), words as u64, 0, if regs { MsgTag::REGS } else { 0 });
        // Delivered once the address space is switched (see `ThreadContext::hand_off`): the
        // partner's UTCB is touched only in its own window.
        d.ctx.hand_off(msg, rtag.0, label);
        d.state = ThreadState::Running;
        d.resume = None;
        // A call hands the partner our reply capability; a reply uses up ours.
        if call {
            d.reply_to = Some(me);
            t.gate_cache = Some(GateCache { epoch, sel, dst, label });
        } else {
            t.reply_to = None;
        }
        t.state = ThreadState::Receiving(if call { Wait::Reply(dst) } else { Wait::Open });
        t.resume = Some(Resume::Syscall);
        let next = Next::enter(d, Resume::Syscall, epoch);
        self.current = Some(dst);
        self.fpu_for(dst);
        Some(next)
    }

    /// `VcpuResume` into a user task without a pending interrupt, with its map items (the
    /// answer to a page fault of a Linux process), in one pass. `None` leaves everything else
    /// to the general path, which has the same semantics; once the map items are taken, an
    /// error is returned from here (as the general path does after them).
    #[link_section = ".text.fast.vcpu"]
    #[inline(never)] // with the vCPU code, not inside the IPC fast path's page
    fn vcpu_resume_fast(&mut self, me: Id, rdx: u64, tag: MsgTag) -> Option<Next> {
        use abi::vcpu::{off, state, sticky};
        let t = self.threads.get(me)?;
        let (area, own, utcb) = (t.vcpu?, t.task?, t.utcb_frame?);
        let op: [u64; 1] = A::read_array(utcb);
        // The header words up to the user task's; the context is loaded in place below.
        let w: [u64; off::USER_TASK + 1] = A::read_array(area.frame);
        let resumed = w[off::SAVED_STATE];
        let (sel, user_idx) = (CapSel::from_raw(rdx).idx().0, w[off::USER_TASK]);
        let cached = area
            .resume_cache
            .filter(|c| (c.epoch == self.cap_epoch) & (c.sel == sel) & (c.user_idx == user_idx));
        let found = match cached {
            Some(c) => c,
            None => self.resume_world(me, own, sel, user_idx, area.world)?,
        };
        let (user, root, io) = (found.user, found.root, found.io);
        let plain = (op[0] == abi::proto::thread::Op::VcpuResume.code())
            & (resumed & state::USER_MODE != 0)
            & (w[off::STICKY] & sticky::IRQ_PENDING == 0)
            // As the general path demands: items that fit the UTCB after the opcode.
            & (2 * tag.items() < abi::utcb::MR_COUNT);
        if !plain {
            return None;
        }
        if tag.items() > 0 {
            if let Err(e) = self.map_items(me, own, user, tag) {
                return self.vcpu_resume_failed(me, e);
            }
        }
        let regs = crate::mem::PhysAddr(area.frame.0 + off::REGS as u64 * 8);
        let t = self.threads.get_mut(me)?;
        if !t.ctx.regs().load_context(regs, false) {
            return self.vcpu_resume_failed(me, abi::Error::Inval);
        }
        // After a user `syscall` (or at an upcall entry) rcx/r11 are ip/flags: sysret is exact.
        let exact = t.ctx.regs().syscall_exit_exact();
        let [fs, gs]: [u64; 2] = A::read_array(crate::mem::PhysAddr(regs.0 + 18 * 8));
        if let Some(a) = t.vcpu.as_mut() {
            a.resume_cache = Some(found);
        }
        self.enter_user_task(me, user, (root, found.world_root, io), (fs, gs));
        A::write_words(crate::mem::PhysAddr(area.frame.0 + off::STATE as u64 * 8), &[resumed]);
        self.resume_by = if exact { Resume::Syscall } else { Resume::Exception };
        self.resume_self()
    }

    /// The thread behind gate capability `sel` of `me`'s task, and the gate's label: the call
    /// fast path's lookups the slow way (task, capability table, gate).
    #[inline(always)]
    pub(crate) fn gate_lookup(&self, me: Id, sel: u64) -> Option<(Id, u64)> {
        let task = self.threads.get(me)?.task?;
        let Obj::Gate(g) = self.tasks.get(task)?.caps.get(abi::CapIdx(sel))?.obj else { return None };
        let gate = self.gates.get(g)?;
        Some((gate.thread?, gate.label))
    }

    /// `VcpuResume`'s lookups the slow way (capability and task tables): `me`'s own thread
    /// capability `sel` with the read right, the user task `user_idx` (not its own task `own`).
    /// `None` if they do not hold: the general path answers. (`world_root` is 0: see
    /// [`Kernel::resume_world`].)
    #[inline(never)]
    pub(crate) fn resume_lookup(&self, me: Id, own: Id, sel: u64, user_idx: u64) -> Option<ResumeCache> {
        let caps = &self.tasks.get(own)?.caps;
        let me_cap = caps.get(abi::CapIdx(sel))?;
        if (me_cap.obj != Obj::Thread(me)) | !me_cap.rights.contains(abi::Rights::R) {
            return None;
        }
        let Obj::Task(user) = caps.get(abi::CapIdx(user_idx))?.obj else { return None };
        if user == own {
            return None;
        }
        let root = A::space_root(&self.tasks.get(user)?.space);
        Some(ResumeCache {
            epoch: self.cap_epoch,
            sel,
            user_idx,
            user,
            root,
            world_root: 0,
            io: self.io_key(user),
        })
    }

    /// [`Kernel::resume_lookup`] for a vCPU with guest world `world` (if any): with the user
    /// task's world root.
    #[inline(never)]
    fn resume_world(
        &mut self,
        me: Id,
        own: Id,
        sel: u64,
        user_idx: u64,
        world: Option<GuestWorld>,
    ) -> Option<ResumeCache> {
        let mut c = self.resume_lookup(me, own, sel, user_idx)?;
        if let Some(w) = world {
            c.world_root = A::world_root(&mut self.tasks.get_mut(c.user)?.space, w.guest, &w.regions).ok()?;
        }
        Some(c)
    }

    /// `VcpuResume` by `me` failed after its map items were taken: the error goes back to
    /// the vCPU's own context, whose frame is untouched.
    #[cold]
    fn vcpu_resume_failed(&mut self, me: Id, e: abi::Error) -> Option<Next> {
        let t = self.threads.get_mut(me)?;
        t.ctx.regs().set_syscall_result(MsgTag::error(e).0, 0);
        self.resume_by = Resume::Syscall;
        self.resume_self()
    }
}

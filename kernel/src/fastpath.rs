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

use crate::objects::{Kernel, Obj, ThreadState, Wait};
use crate::sched::{enter, Next};
use crate::A;
use abi::syscall::FLAGS_MASK;
use abi::{CapSel, MsgTag};
use arch_x86_64::trap::{self, Resume};
use kernel_core::hal::Arch;
use kernel_core::slab::Id;

/// Untyped words the fast path copies; longer messages take the general path.
const MAX_WORDS: usize = 16;
const CALL: u64 = 0x3;
const REPLY_AND_WAIT: u64 = 0xf;

impl Kernel {
    /// Tries the fast path for the current thread's `invoke`. `Some`: done, the partner is
    /// current and the caller blocked; resume `Next`.
    pub fn fastpath(&mut self, rdx: u64, tag: MsgTag, r8: u64) -> Option<Next> {
        let flags = rdx & FLAGS_MASK;
        if r8 != 0 || tag.items() != 0 || tag.words() > MAX_WORDS || tag.flags() != 0 {
            return None;
        }
        let me = self.current?;
        let (dst, label, wait) = match flags {
            CALL => {
                let task = self.threads.get(me)?.task?;
                let cap = self.tasks.get(task)?.caps.get(CapSel::from_raw(rdx).idx())?;
                let Obj::Gate(g) = cap.obj else { return None };
                if tag.label() == abi::proto::ipc_gate::LABEL {
                    return None;
                }
                let gate = self.gates.get(g)?;
                let dst = gate.thread?;
                let d = self.threads.get(dst)?;
                if d.state != ThreadState::Receiving(Wait::Open) || !d.senders.is_empty() {
                    return None;
                }
                (dst, gate.label, Wait::Reply(dst))
            }
            REPLY_AND_WAIT => {
                let t = self.threads.get(me)?;
                let dst = t.reply_to?;
                if !t.senders.is_empty() || !t.irqs.is_empty() {
                    return None;
                }
                if self.threads.get(dst)?.state != ThreadState::Receiving(Wait::Reply(me)) {
                    return None;
                }
                (dst, 0, Wait::Open)
            }
            _ => return None,
        };
        self.handoff(me, dst, tag, label, wait)
    }

    /// Moves the message and the CPU from `me` to the waiting `dst`; `me` waits in `wait`.
    #[inline(always)]
    fn handoff(&mut self, me: Id, dst: Id, tag: MsgTag, label: u64, wait: Wait) -> Option<Next> {
        let (src_utcb, my_prio) = {
            let t = self.threads.get(me)?;
            (t.utcb_frame?, t.prio)
        };
        let d = self.threads.get(dst)?;
        // Direct switching may not overtake a more important ready thread.
        if d.resume != Some(Resume::Sysret) || self.ready.highest().is_some_and(|h| h > d.prio.max(my_prio)) {
            return None;
        }
        let dst_utcb = d.utcb_frame?;
        let words = tag.words();
        A::copy_phys(dst_utcb, src_utcb, words * 8);
        let d = self.threads.get_mut(dst)?;
        let f = trap::user_frame(&mut d.kstack.stack);
        f.rax = MsgTag::new(tag.label(), words as u64, 0, 0).0;
        f.rsi = label;
        d.state = ThreadState::Running;
        d.resume = None;
        if let Wait::Reply(_) = wait {
            d.reply_to = Some(me);
        }
        let next = enter(d);
        let t = self.threads.get_mut(me)?;
        if let Wait::Open = wait {
            t.reply_to = None;
        }
        t.state = ThreadState::Receiving(wait);
        let base = t.kstack.stack.as_ptr() as u64;
        t.kstack.saved_rsp = base + trap::prepare_resume(&mut t.kstack.stack, Resume::Sysret) as u64;
        t.resume = Some(Resume::Sysret);
        self.current = Some(dst);
        Some(next)
    }
}

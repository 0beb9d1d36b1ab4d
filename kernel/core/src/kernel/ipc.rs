//! The IPC state machine: send, receive, call, reply, open wait, timeouts, and the messages the
//! kernel sends on behalf of a faulting thread (page faults, exceptions) or an interrupt.
//!
//! A thread that blocks abandons its kernel context; it resumes straight from its saved user
//! frame, into which the waker writes the result registers.

use crate::hal::Arch;
use crate::hal::{Resume, ThreadContext, UserRegs};
use crate::kernel::memory::MapItem;
use crate::kernel::{Kernel, PendingSend, ThreadState, Wait};
use crate::mem::PhysAddr;
use crate::slab::Id;
use abi::proto::{event, exc_regs, fpage::Fpage, map};
use abi::syscall::timeout;
use abi::utcb::{BR_OFFSET, MR_COUNT};
use abi::{Error, MsgTag};

/// What a system call did to the calling thread.
pub enum Outcome {
    /// Finished: result tag and label for the caller's registers.
    Done(MsgTag, u64),
    /// The caller blocked; the waker writes its result into its user frame.
    Blocked,
    /// The caller's context was replaced (vCPU upcall or resume): resume it from its frame.
    Resume,
}

impl Outcome {
    pub fn err(e: Error) -> Self {
        Outcome::Done(MsgTag::error(e), 0)
    }
}

/// Where the words of a message come from.
#[derive(Clone, Copy)]
pub enum Source {
    /// The sender's UTCB.
    Utcb(Id),
    /// Words the kernel made (fault and exception messages).
    Kernel([u64; exc_regs::WORDS]),
}

/// The kind of answer a fault message waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Page,
    Exception,
}

fn read_words<A: Arch>(frame: PhysAddr, first: usize, n: usize, out: &mut [u64]) {
    A::read_words(PhysAddr(frame.0 + first as u64 * 8), &mut out[..n]);
}

fn write_words<A: Arch>(frame: PhysAddr, words: &[u64]) {
    A::write_words(frame, words);
}

/// Microseconds to a TSC deadline.
fn deadline<A: Arch>(us: u32) -> Option<u64> {
    match us {
        timeout::NEVER => None,
        timeout::ZERO => Some(A::cycles()),
        us => Some(A::cycles() + A::cycles_hz() / 1_000_000 * us as u64),
    }
}

impl<A: Arch> Kernel<A> {
    /// Takes a thread out of whatever it waits in (queues, timeout list).
    pub fn leave_wait(&mut self, t: Id, state: ThreadState) {
        match state {
            ThreadState::Sending { to } => {
                if let Some(r) = self.threads.get_mut(to) {
                    r.senders.retain(|s| *s != t);
                }
            }
            ThreadState::Receiving(Wait::Semaphore(s)) => {
                if let Some(s) = self.sems.get_mut(s) {
                    s.waiters.retain(|w| *w != t);
                }
            }
            _ => {}
        }
        self.timed.retain(|x| *x != t);
        if let Some(th) = self.threads.get_mut(t) {
            th.deadline = None;
            th.send = None;
        }
    }

    /// Makes a blocked thread runnable with a result. No-op for threads not blocked.
    pub fn wake(&mut self, t: Id, r: Result<(MsgTag, u64), Error>) {
        let Some(th) = self.threads.get(t) else { return };
        let state = th.state;
        if !matches!(state, ThreadState::Sending { .. } | ThreadState::Receiving(_)) {
            return;
        }
        self.leave_wait(t, state);
        let th = self.threads.get_mut(t).expect("checked above");
        if th.resume == Some(Resume::Syscall) {
            let (tag, label) = match r {
                Ok((tag, label)) => (tag.0, label),
                Err(e) => (MsgTag::error(e).0, 0),
            };
            th.ctx.regs().set_syscall_result(tag, label);
        }
        // A fault message, if it sent one, has been answered.
        th.pending_fault = None;
        th.state = ThreadState::Ready;
        let p = th.prio;
        // Woken partners run next among equals: the IPC hand-off needs no scheduling round.
        self.make_ready(t, p, true);
        self.readied = true;
    }

    /// Blocks `t` (the current thread) in `state` with a timeout in microseconds.
    pub fn block(&mut self, t: Id, state: ThreadState, us: u32) {
        let d = deadline::<A>(us);
        if let Some(th) = self.threads.get_mut(t) {
            th.state = state;
            th.deadline = d;
        }
        if d.is_some() {
            self.timed.push(t);
            self.arm_timer();
        }
    }

    /// Wakes every thread whose deadline passed, with `Error::Timeout`.
    pub fn expire_timeouts(&mut self) {
        if self.timed.is_empty() {
            return;
        }
        let now = A::cycles();
        let due: alloc::vec::Vec<Id> = self
            .timed
            .iter()
            .copied()
            .filter(|t| self.threads.get(*t).and_then(|th| th.deadline).is_some_and(|d| d <= now))
            .collect();
        for t in due {
            self.wake(t, Err(Error::Timeout));
        }
    }

    /// Copies a message into `to`'s UTCB and carries out its typed items. Returns the tag the
    /// receiver sees.
    fn transfer(&mut self, src: Source, to: Id, tag: MsgTag, fault_reply: bool) -> Result<MsgTag, Error> {
        let (words, items) = (tag.words(), tag.items());
        if words + 2 * items > MR_COUNT {
            return Err(Error::MsgTooLong);
        }
        let dst = self.threads.get(to).ok_or(Error::NoEnt)?;
        let dst_utcb = dst.utcb_frame.ok_or(Error::Inval)?;
        let dst_task = dst.task.ok_or(Error::Inval)?;
        let src_task = match src {
            Source::Utcb(s) => {
                let st = self.threads.get(s).ok_or(Error::NoEnt)?;
                let src_utcb = st.utcb_frame.ok_or(Error::Inval)?;
                if src_utcb != dst_utcb {
                    A::copy_words(dst_utcb, src_utcb, words);
                }
                st.task
            }
            Source::Kernel(w) => {
                write_words::<A>(dst_utcb, &w[..w.len().min(words)]);
                None
            }
        };
        if items > 0 {
            let window = if fault_reply {
                None
            } else {
                let mut br = [0u64; 1];
                read_words::<A>(dst_utcb, BR_OFFSET, 1, &mut br);
                Some(Fpage(br[0]))
            };
            let s = match src {
                Source::Utcb(s) => s,
                Source::Kernel(_) => return Err(Error::Inval),
            };
            self.map_items_into(s, src_task.ok_or(Error::Inval)?, dst_task, tag, window)?;
        }
        Ok(MsgTag::new(tag.label(), words as u64, items as u64, 0))
    }

    /// Carries out the typed items of `s`'s message (after its untyped words) from task `from`
    /// into task `to`, through `window` (`None`: the whole space, as for page-fault replies).
    #[link_section = ".text.fast.map"]
    fn map_items_into(
        &mut self,
        s: Id,
        from: Id,
        to: Id,
        tag: MsgTag,
        window: Option<Fpage>,
    ) -> Result<(), Error> {
        let (words, items) = (tag.words(), tag.items());
        let utcb = self.threads.get(s).and_then(|t| t.utcb_frame).ok_or(Error::Inval)?;
        if window.is_some_and(|w| w.0 == 0) {
            return Err(Error::MsgTooLong);
        }
        for i in 0..items {
            // Item by item, straight from the UTCB (the callers bound `words + 2 * items` by
            // MR_COUNT): no zeroed buffer, which would be a memset call on the fault path.
            let [w0, fp]: [u64; 2] = A::read_array(PhysAddr(utcb.0 + (words + 2 * i) as u64 * 8));
            if w0 & map::ITEM == 0 {
                return Err(Error::Inval);
            }
            self.map_fpage(from, to, MapItem::new(w0, Fpage(fp), window))?;
        }
        Ok(())
    }

    /// Map items of a `VcpuResume` message of `me` (task `own`) into the user task.
    #[link_section = ".text.fast.map"]
    pub fn map_items(&mut self, me: Id, own: Id, user: Id, tag: MsgTag) -> Result<(), Error> {
        if tag.words() + 2 * tag.items() > MR_COUNT {
            return Err(Error::MsgTooLong);
        }
        self.map_items_into(me, own, user, tag, None)
    }

    /// Sends from the current thread `me` to thread `dst` with `label` as the receiver's label.
    pub fn send(&mut self, me: Id, dst: Id, tag: MsgTag, label: u64, call: bool, r8: u64) -> Outcome {
        let Some(d) = self.threads.get(dst) else { return Outcome::err(Error::NoEnt) };
        let receives = matches!(d.state, ThreadState::Receiving(Wait::Open))
            || d.state == ThreadState::Receiving(Wait::From(me));
        if receives {
            let rtag = match self.transfer(Source::Utcb(me), dst, tag, false) {
                Ok(t) => t,
                Err(e) => return Outcome::err(e),
            };
            if call {
                if let Some(d) = self.threads.get_mut(dst) {
                    d.reply_to = Some(me);
                }
            }
            self.wake(dst, Ok((rtag, label)));
            if call {
                if timeout::recv(r8) == timeout::ZERO {
                    // Delivered, but the caller will not wait for the answer.
                    if let Some(d) = self.threads.get_mut(dst) {
                        d.reply_to = None;
                    }
                    return Outcome::err(Error::Timeout);
                }
                self.block(me, ThreadState::Receiving(Wait::Reply(dst)), timeout::recv(r8));
                return Outcome::Blocked;
            }
            return Outcome::Done(MsgTag::new(0, 0, 0, 0), 0);
        }
        if timeout::send(r8) == timeout::ZERO {
            return Outcome::err(Error::Timeout);
        }
        let pending = PendingSend { tag, label, call, recv_timeout: timeout::recv(r8) };
        self.block(me, ThreadState::Sending { to: dst }, timeout::send(r8));
        if let Some(t) = self.threads.get_mut(me) {
            t.send = Some(pending);
        }
        if let Some(d) = self.threads.get_mut(dst) {
            d.senders.push_back(me);
        }
        Outcome::Blocked
    }

    /// Open wait of the current thread: a pending interrupt, a queued sender, or block.
    pub fn wait(&mut self, me: Id, r8: u64) -> Outcome {
        self.receive(me, Wait::Open, r8)
    }

    /// Waits for what `from` allows (`Open`, `From(thread)` or `FromIrq(irq)`): takes it if it
    /// is already there, else blocks.
    pub fn receive(&mut self, me: Id, from: Wait, r8: u64) -> Outcome {
        let irq = match from {
            Wait::Open => self.take_pending_irq(me),
            Wait::FromIrq(i) => self.take_irq(me, i),
            _ => None,
        };
        if let Some((tag, label)) = irq {
            return Outcome::Done(tag, label);
        }
        loop {
            let next = match from {
                Wait::Open => self.threads.get_mut(me).and_then(|t| t.senders.pop_front()),
                Wait::From(s) => self.threads.get_mut(me).and_then(|t| {
                    let pos = t.senders.iter().position(|x| *x == s)?;
                    t.senders.remove(pos)
                }),
                _ => None,
            };
            let Some(s) = next else { break };
            if let Some(out) = self.take_message(me, s) {
                return out;
            }
        }
        if timeout::recv(r8) == timeout::ZERO {
            return Outcome::err(Error::Timeout);
        }
        self.block(me, ThreadState::Receiving(from), timeout::recv(r8));
        Outcome::Blocked
    }

    /// Takes the message sender `s` (out of `me`'s queue) offers. `None`: it could not be
    /// delivered; the sender was told why.
    fn take_message(&mut self, me: Id, s: Id) -> Option<Outcome> {
        let p = self.threads.get(s).and_then(|t| t.send)?;
        let src = match self.fault_source(s) {
            Some(w) => Source::Kernel(w),
            None => Source::Utcb(s),
        };
        match self.transfer(src, me, p.tag, false) {
            Ok(rtag) => {
                let kind = self.threads.get(s).map(|t| t.state);
                self.leave_wait(s, kind.unwrap_or(ThreadState::Ready));
                if p.call {
                    let w = match self.fault_kind(s) {
                        Some(FaultKind::Page) => Wait::PageFault(me),
                        Some(FaultKind::Exception) => Wait::Exception(me),
                        None => Wait::Reply(me),
                    };
                    self.block(s, ThreadState::Receiving(w), p.recv_timeout);
                    if let Some(t) = self.threads.get_mut(me) {
                        t.reply_to = Some(s);
                    }
                } else {
                    if let Some(t) = self.threads.get_mut(s) {
                        t.state = ThreadState::Sending { to: me };
                    }
                    self.wake(s, Ok((MsgTag::new(0, 0, 0, 0), 0)));
                }
                Some(Outcome::Done(rtag, p.label))
            }
            Err(e) => {
                if let Some(t) = self.threads.get_mut(s) {
                    t.state = ThreadState::Sending { to: me };
                }
                self.wake(s, Err(e));
                None
            }
        }
    }

    /// Replies through the implicit reply capability of `me` (use-once).
    pub fn reply(&mut self, me: Id, tag: MsgTag) -> Result<(), Error> {
        let caller = self.threads.get_mut(me).and_then(|t| t.reply_to.take()).ok_or(Error::NoEnt)?;
        let state = self.threads.get(caller).map(|t| t.state).ok_or(Error::NoEnt)?;
        match state {
            ThreadState::Receiving(Wait::Reply(p)) if p == me => {
                let rtag = self.transfer(Source::Utcb(me), caller, tag, false);
                self.wake(caller, rtag.map(|t| (t, 0)));
                Ok(())
            }
            ThreadState::Receiving(Wait::PageFault(p)) if p == me => {
                if tag.label() < 0 {
                    // The pager refuses: retrying would fault forever.
                    self.kill_faulter(caller, "its pager refused the page fault");
                    return Ok(());
                }
                let r = self.transfer(Source::Utcb(me), caller, tag, true);
                if r.is_err() {
                    self.kill_faulter(caller, "the pager's mapping failed");
                    return Ok(());
                }
                self.wake(caller, r.map(|t| (t, 0)));
                Ok(())
            }
            ThreadState::Receiving(Wait::Exception(p)) if p == me => {
                if tag.label() < 0 {
                    self.kill_faulter(caller, "its exception handler gave up");
                    return Ok(());
                }
                if tag.words() >= exc_regs::WORDS {
                    let mut r = [0u64; exc_regs::WORDS];
                    let utcb = self.threads.get(me).and_then(|t| t.utcb_frame).ok_or(Error::Inval)?;
                    read_words::<A>(utcb, 0, exc_regs::WORDS, &mut r);
                    if let Some(t) = self.threads.get_mut(caller) {
                        t.ctx.regs().apply_exception_words(&r);
                    }
                }
                self.wake(caller, Ok((MsgTag::new(0, 0, 0, 0), 0)));
                Ok(())
            }
            // The caller gave up (timeout, cancel) or is gone.
            _ => Err(Error::NoEnt),
        }
    }

    /// Destroys the task of a thread whose fault cannot be resolved, and says why.
    pub fn kill_faulter(&mut self, t: Id, why: &str) {
        let Some(task) = self.threads.get(t).and_then(|x| x.task) else { return };
        let name = self.tasks.get(task).map(|x| x.name.clone()).unwrap_or_default();
        log::warn!("user fault: task {name}: {why}; task destroyed");
        self.destroy_task(task);
    }

    /// Words of a fault message a blocked sender carries, if it is one.
    fn fault_source(&self, s: Id) -> Option<[u64; exc_regs::WORDS]> {
        self.threads.get(s)?.pending_fault.as_ref().map(|f| f.1)
    }

    fn fault_kind(&self, s: Id) -> Option<FaultKind> {
        self.threads.get(s)?.pending_fault.as_ref().map(|f| f.0)
    }

    /// A user exception of the current thread `me`: sends the fault message to its pager
    /// (page faults) or exception handler, and `me` blocks. Returns `None` if there is no
    /// handler. (A vCPU's user task upcalls instead: [`Kernel::vcpu_fault`].)
    pub fn raise_fault(&mut self, me: Id, vector: u8, error: u64, addr: u64) -> Option<()> {
        let (kind, handler_idx) = {
            let t = self.threads.get(me)?;
            if vector == 14 {
                (FaultKind::Page, t.pager)
            } else {
                (FaultKind::Exception, t.exc_handler)
            }
        };
        let task = self.threads.get(me)?.task?;
        let (dst, label) = self.ipc_target(task, handler_idx).ok()?;
        if dst == me {
            return None;
        }
        let f = self.threads.get_mut(me)?.ctx.regs();
        let (w, tag) = match kind {
            FaultKind::Page => {
                let mut w = [0u64; exc_regs::WORDS];
                let write = if error & 2 != 0 { 2 } else { 0 };
                let fetch = if error & 0x10 != 0 { 1 } else { 0 };
                w[0] = (addr & !7) | write | fetch;
                w[1] = f.ip();
                (w, MsgTag::new(event::PAGE_FAULT, 2, 0, 0))
            }
            FaultKind::Exception => (
                f.exception_words(vector as u64, error, addr),
                MsgTag::new(event::EXCEPTION, exc_regs::WORDS as u64, 0, 0),
            ),
        };
        if let Some(t) = self.threads.get_mut(me) {
            t.pending_fault = Some(alloc::boxed::Box::new((kind, w)));
        }
        let wait = match kind {
            FaultKind::Page => Wait::PageFault(dst),
            FaultKind::Exception => Wait::Exception(dst),
        };
        if self.threads.get(dst)?.state == ThreadState::Receiving(Wait::Open) {
            let rtag = self.transfer(Source::Kernel(w), dst, tag, false).ok()?;
            if let Some(d) = self.threads.get_mut(dst) {
                d.reply_to = Some(me);
            }
            self.wake(dst, Ok((rtag, label)));
            self.block(me, ThreadState::Receiving(wait), timeout::NEVER);
        } else {
            self.block(me, ThreadState::Sending { to: dst }, timeout::NEVER);
            if let Some(t) = self.threads.get_mut(me) {
                t.send = Some(PendingSend { tag, label, call: true, recv_timeout: timeout::NEVER });
            }
            if let Some(d) = self.threads.get_mut(dst) {
                d.senders.push_back(me);
            }
        }
        Some(())
    }

    /// The thread and label an IPC to capability `idx` of `task` goes to (gate or thread).
    pub fn ipc_target(&self, task: Id, idx: abi::CapIdx) -> Result<(Id, u64), Error> {
        match self.cap(task, idx).ok_or(Error::NoEnt)?.obj {
            crate::kernel::Obj::Gate(g) => {
                let g = self.gates.get(g).ok_or(Error::NoEnt)?;
                Ok((g.thread.ok_or(Error::NoEnt)?, g.label))
            }
            crate::kernel::Obj::Thread(t) => Ok((t, 0)),
            _ => Err(Error::Inval),
        }
    }

    /// Irq `i`, if it is attached to `me` and pending.
    fn take_irq(&mut self, me: Id, i: Id) -> Option<(MsgTag, u64)> {
        let irq = self.irqs.get_mut(i)?;
        match irq.target {
            Some((t, label)) if t == me && irq.pending => {
                irq.pending = false;
                Some((MsgTag::new(abi::proto::irq::LABEL, 0, 0, 0), label))
            }
            _ => None,
        }
    }

    /// True if an interrupt attached to `me` is pending.
    pub fn has_pending_irq(&self, me: Id) -> bool {
        self.threads
            .get(me)
            .is_some_and(|t| t.irqs.iter().any(|i| self.irqs.get(*i).is_some_and(|x| x.pending)))
    }

    /// An interrupt attached to `me` that fired while it was not waiting.
    pub fn take_pending_irq(&mut self, me: Id) -> Option<(MsgTag, u64)> {
        let irqs = self.threads.get(me)?.irqs.clone();
        for i in irqs {
            let irq = self.irqs.get_mut(i)?;
            if irq.pending {
                irq.pending = false;
                let label = irq.target.map_or(0, |(_, l)| l);
                return Some((MsgTag::new(abi::proto::irq::LABEL, 0, 0, 0), label));
            }
        }
        None
    }

    /// Raises Irq `i`: delivered at once to a thread in open wait, else left pending.
    pub fn trigger_irq(&mut self, i: Id) -> Result<(), Error> {
        let irq = self.irqs.get_mut(i).ok_or(Error::NoEnt)?;
        let Some((t, label)) = irq.target else {
            irq.pending = true;
            return Ok(());
        };
        if !self.vcpu_waits(t) {
            self.vcpu_irq(t, i, label);
            return Ok(());
        }
        let waiting = self.threads.get(t).is_some_and(|th| {
            th.state == ThreadState::Receiving(Wait::Open)
                || th.state == ThreadState::Receiving(Wait::FromIrq(i))
        });
        if waiting {
            self.wake(t, Ok((MsgTag::new(abi::proto::irq::LABEL, 0, 0, 0), label)));
        } else if let Some(irq) = self.irqs.get_mut(i) {
            irq.pending = true;
        }
        Ok(())
    }
}

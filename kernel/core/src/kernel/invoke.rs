//! The `invoke` system call: IPC through gates and reply capabilities, and the operations of
//! kernel objects, dispatched from the protocol table in `abi::proto`.
//!
//! Arguments are read from the caller's UTCB through the kernel's mapping of its frame, never
//! through user pointers; results are written back there.

use crate::captable::CapTable;
use crate::hal::{Arch, ThreadContext, UserRegs};
use crate::kernel::ipc::Outcome;
use crate::kernel::memory::{MapItem, MEM_ALL};
use crate::kernel::Wait;
use crate::kernel::{cost, Factory, Gate, Irq, Kernel, Obj, Semaphore, Task, Thread, ThreadState};
use crate::mem::PhysAddr;
use crate::slab::Id;
use abi::proto::{self, fpage::Fpage, Protocol};
use abi::syscall::Flags;
use abi::utcb::{MR_COUNT, TCR_SELF_OFFSET};
use abi::{CapIdx, CapSel, Error, MsgTag, Rights};
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// The message registers of the invoking thread.
struct Mrs {
    w: [u64; MR_COUNT],
    n: usize,
}

impl Mrs {
    fn get(&self, i: usize) -> Result<u64, Error> {
        if i < self.n {
            Ok(self.w[i])
        } else {
            Err(Error::Inval)
        }
    }
}

fn ok() -> Outcome {
    Outcome::Done(MsgTag::new(0, 0, 0, 0), 0)
}

fn done(r: Result<(), Error>) -> Outcome {
    match r {
        Ok(()) => ok(),
        Err(e) => Outcome::err(e),
    }
}

fn need(rights: Rights, r: Rights) -> Result<(), Error> {
    if rights.contains(r) {
        Ok(())
    } else {
        Err(Error::Perm)
    }
}

/// Default time slice, in ticks.
pub const QUANTUM: u32 = 10;

impl<A: Arch> Kernel<A> {
    /// The general path takes a register message (`MsgTag::REGS`) as if its words had been in
    /// the UTCB: they are put there, and the flag cleared, so that queued sends, kernel
    /// objects and the receivers it delivers to see one format. (Only the fast path delivers
    /// in registers.)
    fn regs_to_utcb(&mut self, me: Id, rdx: u64, tag: MsgTag) -> Result<MsgTag, Error> {
        if !tag.in_regs() || rdx & Flags::SEND.bits() == 0 {
            return Ok(tag);
        }
        if tag.items() > 0 || tag.words() > abi::syscall::REG_WORDS {
            return Err(Error::Inval);
        }
        let t = self.threads.get_mut(me).ok_or(Error::Inval)?;
        let words = t.ctx.regs().reg_words();
        A::write_words(t.utcb_frame.ok_or(Error::Inval)?, &words[..tag.words()]);
        Ok(tag.without_regs())
    }

    /// Handles one `invoke` of the current thread.
    pub fn invoke(&mut self, rdx: u64, tag: MsgTag, r8: u64) -> Outcome {
        let Some(me) = self.current else { return Outcome::err(Error::Inval) };
        if self.threads.get(me).is_some_and(|t| t.vcpu_user.is_some()) {
            // A system call of a vCPU's user task belongs to the guest kernel.
            self.vcpu_upcall(me, abi::vcpu::trap::SYSCALL, 0, 0, None, true);
            return Outcome::Resume;
        }
        let tag = match self.regs_to_utcb(me, rdx, tag) {
            Ok(t) => t,
            Err(e) => return Outcome::err(e),
        };
        let Some(task) = self.current_task() else { return Outcome::err(Error::Inval) };
        let flags = Flags::from_bits_truncate(rdx & abi::syscall::FLAGS_MASK);
        if flags.contains(Flags::REPLY) {
            let r = self.reply(me, tag);
            if flags.contains(Flags::RECV) && flags.contains(Flags::OPEN_WAIT) {
                return match r {
                    Ok(()) | Err(Error::NoEnt) => self.wait(me, r8),
                    Err(e) => Outcome::err(e),
                };
            }
            return done(r);
        }
        if !flags.contains(Flags::SEND) {
            if !flags.contains(Flags::RECV) {
                return Outcome::err(Error::Inval);
            }
            if flags.contains(Flags::OPEN_WAIT) {
                return self.wait(me, r8);
            }
            // Closed receive: from the thread or interrupt the selector names.
            let from = match self.cap(task, CapSel::from_raw(rdx).idx()).map(|c| c.obj) {
                Some(Obj::Thread(t)) if t != me => Wait::From(t),
                Some(Obj::Irq(i)) => Wait::FromIrq(i),
                Some(_) => return Outcome::err(Error::Inval),
                None => return Outcome::err(Error::NoEnt),
            };
            return self.receive(me, from, r8);
        }
        let idx = CapSel::from_raw(rdx).idx();
        let Some(cap) = self.cap(task, idx) else { return Outcome::err(Error::NoEnt) };
        if let Obj::Gate(g) = cap.obj {
            if tag.label() != proto::ipc_gate::LABEL {
                let Some(gate) = self.gates.get(g) else { return Outcome::err(Error::NoEnt) };
                let Some(dst) = gate.thread else { return Outcome::err(Error::NoEnt) };
                let label = gate.label;
                return self.send(me, dst, tag, label, flags.contains(Flags::RECV), r8);
            }
        }
        let proto = cap.obj.protocol();
        if tag.label() != 0 && tag.label() != proto.label() {
            return Outcome::err(Error::BadProto);
        }
        if !cap.rights.contains(Rights::R) {
            return Outcome::err(Error::Perm);
        }
        let Some(utcb) = self.threads.get(me).and_then(|t| t.utcb_frame) else {
            return Outcome::err(Error::Inval);
        };
        let n = tag.words();
        if n + 2 * tag.items() > MR_COUNT {
            return Outcome::err(Error::Inval);
        }
        let mut mrs = Mrs { w: [0; MR_COUNT], n };
        read_mrs::<A>(utcb, &mut mrs.w[..n]);
        let op = match mrs.get(0) {
            Ok(op) => op,
            Err(e) => return Outcome::err(e),
        };
        if cap.obj == Obj::Thread(me) && op == proto::thread::Op::VcpuResume.code() {
            return self.vcpu_resume(me, tag);
        }
        let r = match cap.obj {
            Obj::Log => match proto::log::Op::from_code(op) {
                Some(proto::log::Op::Write) => self.log_write(task, &mrs).map(|_| Vec::new()),
                Some(proto::log::Op::Terminal) => self.log_terminal(task, cap.rights, &mrs),
                Some(proto::log::Op::Read) => self.log_read(task, &mrs),
                None => Err(Error::NoSys),
            },
            Obj::PlatformCtl => match proto::platform_ctl::Op::from_code(op) {
                Some(proto::platform_ctl::Op::Shutdown) => need(cap.rights, Rights::W).and_then(|_| {
                    let status = mrs.get(1)?;
                    log::info!("shutdown requested with status {status}");
                    A::shutdown(status as u32)
                }),
                Some(proto::platform_ctl::Op::SelfCheck) => {
                    self.self_check().map(|_| Vec::new()).map_err(|why| {
                        log::error!("self-check failed: {why}");
                        Error::Inval
                    })
                }
                None => Err(Error::NoSys),
            },
            Obj::Task(t) => self.task_op(task, t, cap.rights, op, &mrs),
            Obj::Thread(t) => self.thread_op(task, t, cap.rights, op, &mrs),
            Obj::Factory(f) => self.factory_op(task, f, cap.rights, op, &mrs),
            Obj::Gate(g) => self.gate_op(task, g, cap.rights, op, &mrs),
            Obj::Irq(i) => self.irq_op(task, i, cap.rights, op, &mrs),
            Obj::Semaphore(s) => return self.sem_op(me, s, op, r8),
            Obj::Scheduler => self.sched_op(task, op, &mrs),
            Obj::Icu => self.icu_op(task, op, &mrs),
        };
        match r {
            Ok(words) => {
                write_mrs::<A>(utcb, &words);
                Outcome::Done(MsgTag::new(0, words.len() as u64, 0, 0), 0)
            }
            Err(e) => Outcome::err(e),
        }
    }

    /// `Log::Write`: prints bytes, each line prefixed with the task's name — or, from the
    /// console's terminal, exactly the bytes.
    fn log_write(&mut self, task: Id, mrs: &Mrs) -> Result<(), Error> {
        let len = mrs.get(1)? as usize;
        if len > mrs.n.saturating_sub(2) * 8 {
            return Err(Error::Inval);
        }
        let raw = self.console.terminal_task() == Some(task);
        let t = self.tasks.get_mut(task).ok_or(Error::NoEnt)?;
        let mut bytes = [0u8; MR_COUNT * 8];
        abi::utcb::unpack_bytes(&mrs.w[2..mrs.n], &mut bytes[..len]);
        if raw {
            A::console_write_raw(&bytes[..len]);
            if let Some(&last) = bytes[..len].last() {
                t.log_at_line_start = last == b'\n';
            }
            return Ok(());
        }
        // Whole lines go out at once, each prefixed with the task's name.
        let mut line = [0u8; 64 + MR_COUNT * 8];
        let mut n = 0;
        for &b in &bytes[..len] {
            if t.log_at_line_start {
                let name = &t.name.as_bytes()[..t.name.len().min(32)];
                line[n..n + name.len()].copy_from_slice(name);
                n += name.len();
                line[n..n + 2].copy_from_slice(b": ");
                n += 2;
            }
            line[n] = b;
            n += 1;
            t.log_at_line_start = b == b'\n';
            if n > line.len() - 40 {
                A::console_write(&line[..n]);
                n = 0;
            }
        }
        A::console_write(&line[..n]);
        Ok(())
    }

    /// `Log::Terminal`: the caller's task becomes (or stays, with a new Irq) the console's
    /// terminal, or gives the role up.
    fn log_terminal(&mut self, task: Id, rights: Rights, m: &Mrs) -> Result<Vec<u64>, Error> {
        need(rights, Rights::W)?;
        let arg = m.get(1)?;
        let holder = self.console.terminal_task();
        if arg == proto::TERMINAL_RELEASE {
            if holder != Some(task) {
                return Err(Error::Perm);
            }
            self.console.terminal = None;
            return Ok(Vec::new());
        }
        if holder.is_some_and(|h| h != task) {
            return Err(Error::Exists);
        }
        let irq = self.opt_irq_cap(task, arg)?;
        self.console.terminal = Some(crate::kernel::console::Terminal { task, irq });
        if self.console.waiting() > 0 {
            self.console_notify();
        }
        Ok(Vec::new())
    }

    /// `Log::Read`: the terminal takes waiting console input, without blocking.
    fn log_read(&mut self, task: Id, m: &Mrs) -> Result<Vec<u64>, Error> {
        if self.console.terminal_task() != Some(task) {
            return Err(Error::Perm);
        }
        let want = match m.get(1) {
            Ok(w) => usize::try_from(w).unwrap_or(usize::MAX).min(proto::LOG_READ_MAX),
            Err(_) => proto::LOG_READ_MAX,
        };
        let mut bytes = [0u8; proto::LOG_READ_MAX];
        let n = self.console.take(&mut bytes[..want]);
        let mut words = alloc::vec![0u64; 1 + n.div_ceil(8)];
        words[0] = n as u64;
        abi::utcb::pack_bytes(&bytes[..n], &mut words[1..]);
        Ok(words)
    }

    fn task_op(&mut self, me: Id, t: Id, rights: Rights, op: u64, m: &Mrs) -> Result<Vec<u64>, Error> {
        match proto::task::Op::from_code(op).ok_or(Error::NoSys)? {
            proto::task::Op::Map => {
                need(rights, Rights::W)?;
                let src = match self.cap(me, CapIdx(m.get(1)?)).ok_or(Error::NoEnt)?.obj {
                    Obj::Task(s) => s,
                    _ => return Err(Error::Inval),
                };
                let fp = Fpage(m.get(2)?);
                let base = m.get(3)?;
                self.map_fpage(src, t, MapItem::new(base, fp, None))?;
                Ok(Vec::new())
            }
            proto::task::Op::Unmap => {
                let mask = m.get(1)?;
                for i in 2..m.n {
                    if self.unmap_fpage(t, Fpage(m.w[i]), mask)? {
                        break;
                    }
                }
                Ok(Vec::new())
            }
            proto::task::Op::CapInfo => {
                let c = self.cap(t, CapIdx(m.get(1)?));
                Ok(alloc::vec![
                    c.map_or(0, |c| c.obj.protocol().label() as u64),
                    c.map_or(0, |c| c.rights.bits() as u64)
                ])
            }
            proto::task::Op::CapEqual => {
                let a = self.cap(t, CapIdx(m.get(1)?)).map(|c| c.obj);
                let b = self.cap(t, CapIdx(m.get(2)?)).map(|c| c.obj);
                Ok(alloc::vec![u64::from(a.is_some() && a == b)])
            }
            proto::task::Op::SetName => {
                need(rights, Rights::W)?;
                let len = m.get(1)? as usize;
                if len == 0 || len > proto::TASK_NAME_MAX || m.n < 2 + len.div_ceil(8) {
                    return Err(Error::Inval);
                }
                let mut name = [0u8; proto::TASK_NAME_MAX];
                abi::utcb::unpack_bytes(&m.w[2..m.n], &mut name[..len]);
                let name = core::str::from_utf8(&name[..len]).map_err(|_| Error::Inval)?;
                self.tasks.get_mut(t).ok_or(Error::NoEnt)?.name = name.into();
                Ok(Vec::new())
            }
        }
    }

    fn thread_op(&mut self, me: Id, t: Id, rights: Rights, op: u64, m: &Mrs) -> Result<Vec<u64>, Error> {
        need(rights, Rights::W)?;
        match proto::thread::Op::from_code(op).ok_or(Error::NoSys)? {
            proto::thread::Op::Control => {
                use proto::thread_control::*;
                let flags = m.get(1)?;
                if flags & BIND_TASK != 0 {
                    let task = match self.cap(me, CapIdx(m.get(4)?)).ok_or(Error::NoEnt)?.obj {
                        Obj::Task(x) => x,
                        _ => return Err(Error::Inval),
                    };
                    let addr = m.get(5)?;
                    if self.threads.get(t).ok_or(Error::NoEnt)?.task.is_some() {
                        return Err(Error::Exists);
                    }
                    let tk = self.tasks.get(task).ok_or(Error::NoEnt)?;
                    let frame = tk.utcb_frame(addr).ok_or(Error::Inval)?;
                    let root = A::space_root(&tk.space);
                    let io = self.io_key(task);
                    if self.threads.iter().any(|(_, o)| o.task == Some(task) && o.utcb_user == addr) {
                        return Err(Error::Exists);
                    }
                    A::write_phys(PhysAddr(frame.0 + TCR_SELF_OFFSET as u64), &addr.to_le_bytes());
                    self.tasks.get_mut(task).ok_or(Error::NoEnt)?.threads.push(t);
                    let th = self.threads.get_mut(t).ok_or(Error::NoEnt)?;
                    th.task = Some(task);
                    th.utcb_frame = Some(frame);
                    th.utcb_user = addr;
                    th.root = root;
                    th.gs_base = addr;
                    th.io_task = io;
                }
                let th = self.threads.get_mut(t).ok_or(Error::NoEnt)?;
                if flags & SET_PAGER != 0 {
                    th.pager = CapIdx(m.get(2)?);
                }
                if flags & SET_EXC_HANDLER != 0 {
                    th.exc_handler = CapIdx(m.get(3)?);
                }
                Ok(Vec::new())
            }
            proto::thread::Op::ExRegs => {
                let (ip, sp, flags) = (m.get(1)?, m.get(2)?, m.get(3)?);
                if (ip != u64::MAX && ip >= abi::kip::USER_END)
                    || (sp != u64::MAX && sp >= abi::kip::USER_END)
                {
                    return Err(Error::Inval);
                }
                let current = self.current == Some(t);
                let th = self.threads.get_mut(t).ok_or(Error::NoEnt)?;
                let f = th.ctx.regs();
                let old = [f.ip(), f.sp(), f.flags()];
                if current {
                    // Our own frame is in use by this very system call: apply on the way out.
                    th.pending_regs = Some((ip, sp));
                } else {
                    // Not running: its frame is only read when it resumes.
                    if ip != u64::MAX {
                        f.set_ip(ip);
                    }
                    if sp != u64::MAX {
                        f.set_sp(sp);
                    }
                }
                if flags & proto::ex_regs::CANCEL != 0 {
                    self.wake(t, Err(Error::Canceled));
                }
                Ok(old.to_vec())
            }
            proto::thread::Op::VcpuControl => {
                let regions: Vec<u64> = (2..).map_while(|i| m.get(i).ok()).collect();
                self.vcpu_control(t, m.get(1)?, &regions)?;
                Ok(Vec::new())
            }
            // Only on the caller's own thread, handled before the dispatch.
            proto::thread::Op::VcpuResume => Err(Error::Inval),
        }
    }

    fn factory_op(&mut self, me: Id, f: Id, rights: Rights, op: u64, m: &Mrs) -> Result<Vec<u64>, Error> {
        need(rights, Rights::W)?;
        proto::factory::Op::from_code(op).ok_or(Error::NoSys)?;
        let kind = Protocol::from_label(m.get(1)? as i64).ok_or(Error::Inval)?;
        let slot = CapIdx(m.get(2)?);
        if slot.0 == 0 || slot.0 as usize >= crate::captable::MAX_SLOTS {
            return Err(Error::Inval);
        }
        let fac = Some(f);
        let obj = match kind {
            Protocol::Task => {
                let area = Fpage(m.get(3)?);
                if area.typ() != Some(proto::fpage::Type::Memory) || !(12..=16).contains(&area.order()) {
                    return Err(Error::Inval);
                }
                let pages = 1u64 << (area.order() - 12);
                self.charge(fac, cost::TASK + pages * 4096)?;
                match self.new_task(area.base(), pages, fac) {
                    Ok(t) => Obj::Task(t),
                    Err(e) => {
                        self.refund(fac, cost::TASK + pages * 4096);
                        return Err(e);
                    }
                }
            }
            Protocol::Thread => {
                self.charge(fac, cost::THREAD)?;
                Obj::Thread(self.new_thread(fac))
            }
            Protocol::IpcGate => {
                let th = match m.get(3)? {
                    0 => None,
                    i => Some(self.thread_cap(me, i)?),
                };
                let label = m.get(4)?;
                self.charge(fac, cost::SMALL)?;
                Obj::Gate(self.gates.insert(Gate { thread: th, label, factory: fac, watch: None }))
            }
            Protocol::Irq => {
                self.charge(fac, cost::SMALL)?;
                Obj::Irq(self.irqs.insert(Irq { target: None, pending: false, line: None, factory: fac }))
            }
            Protocol::Semaphore => {
                let count = m.get(3)?;
                self.charge(fac, cost::SMALL)?;
                Obj::Semaphore(self.sems.insert(Semaphore { count, waiters: VecDeque::new(), factory: fac }))
            }
            Protocol::Factory => {
                let limit = m.get(3)?;
                self.charge(fac, limit.checked_add(cost::SMALL).ok_or(Error::NoMem)?)?;
                Obj::Factory(self.factories.insert(Factory { limit, used: 0, parent: fac }))
            }
            _ => return Err(Error::Inval),
        };
        if let Err(e) = self.install_cap(me, slot, obj, Rights::ALL) {
            self.destroy(obj);
            return Err(e);
        }
        Ok(Vec::new())
    }

    /// A new task with a UTCB area of `pages` pages at `base`.
    pub fn new_task(&mut self, base: u64, pages: u64, factory: Option<Id>) -> Result<Id, Error> {
        let space = A::with_frames(|fa| A::new_space(fa)).ok_or(Error::NoMem)?;
        let id = self.tasks.insert(Task {
            name: alloc::string::String::from("task"),
            space,
            caps: CapTable::new(),
            frames: Vec::new(),
            utcb_area: (base, pages * 4096),
            utcb_frames: Vec::new(),
            threads: Vec::new(),
            log_at_line_start: true,
            factory,
            io: None,
            io_root: false,
        });
        for i in 0..pages {
            let Some(f) = A::with_frames(|fa| fa.alloc()) else {
                self.destroy_task(id);
                return Err(Error::NoMem);
            };
            A::write_phys(f, &[0; 4096]);
            self.tasks.get_mut(id).ok_or(Error::NoEnt)?.utcb_frames.push(f);
            if let Err(e) = self.map_root(id, base + i * 4096, f, MEM_ALL & !crate::kernel::memory::MEM_X) {
                self.destroy_task(id);
                return Err(e);
            }
        }
        let kip = self.kip;
        self.map_root(id, abi::kip::KIP_ADDR, kip, crate::kernel::memory::MEM_R)?;
        Ok(id)
    }

    /// A new, inactive, unbound thread.
    pub fn new_thread(&mut self, factory: Option<Id>) -> Id {
        self.threads.insert(Thread {
            task: None,
            root: 0,
            io_task: 0,
            gs_base: 0,
            fs_base: 0,
            vcpu: None,
            vcpu_user: None,
            world_root: 0,
            gate_cache: None,
            state: ThreadState::Inactive,
            prio: 0,
            quantum: QUANTUM,
            quantum_len: QUANTUM,
            ctx: A::Context::new_user(),
            utcb_user: 0,
            utcb_frame: None,
            pager: CapIdx(0),
            exc_handler: CapIdx(0),
            reply_to: None,
            senders: VecDeque::new(),
            send: None,
            deadline: None,
            resume: None,
            pending_regs: None,
            pending_fault: None,
            irqs: Vec::new(),
            factory,
        })
    }

    fn gate_op(&mut self, me: Id, g: Id, rights: Rights, op: u64, m: &Mrs) -> Result<Vec<u64>, Error> {
        match proto::ipc_gate::Op::from_code(op).ok_or(Error::NoSys)? {
            proto::ipc_gate::Op::Bind => {
                need(rights, Rights::W)?;
                let t = self.thread_cap(me, m.get(1)?)?;
                let label = m.get(2)?;
                let gate = self.gates.get_mut(g).ok_or(Error::NoEnt)?;
                gate.thread = Some(t);
                gate.label = label;
                self.caps_changed();
                Ok(Vec::new())
            }
            proto::ipc_gate::Op::GetInfo => {
                let gate = self.gates.get(g).ok_or(Error::NoEnt)?;
                Ok(alloc::vec![gate.label, gate.thread.is_some() as u64])
            }
            proto::ipc_gate::Op::Watch => {
                need(rights, Rights::W)?;
                let irq = self.opt_irq_cap(me, m.get(1)?)?;
                self.gates.get_mut(g).ok_or(Error::NoEnt)?.watch = irq;
                if let (Some(i), true) = (irq, self.cap_refs.get(&Obj::Gate(g)).copied().unwrap_or(0) <= 1) {
                    self.trigger_irq(i)?;
                }
                Ok(Vec::new())
            }
        }
    }

    fn irq_op(&mut self, me: Id, i: Id, rights: Rights, op: u64, m: &Mrs) -> Result<Vec<u64>, Error> {
        match proto::irq::Op::from_code(op).ok_or(Error::NoSys)? {
            proto::irq::Op::Attach => {
                need(rights, Rights::W)?;
                let t = self.thread_cap(me, m.get(1)?)?;
                let label = m.get(2)?;
                self.detach_irq(i)?;
                self.irqs.get_mut(i).ok_or(Error::NoEnt)?.target = Some((t, label));
                self.threads.get_mut(t).ok_or(Error::NoEnt)?.irqs.push(i);
                if self.irqs.get(i).is_some_and(|x| x.pending) {
                    self.irqs.get_mut(i).ok_or(Error::NoEnt)?.pending = false;
                    self.trigger_irq(i)?;
                }
                Ok(Vec::new())
            }
            proto::irq::Op::Detach => {
                need(rights, Rights::W)?;
                self.detach_irq(i)?;
                Ok(Vec::new())
            }
            proto::irq::Op::Trigger => {
                self.trigger_irq(i)?;
                Ok(Vec::new())
            }
            proto::irq::Op::SetTimer => {
                need(rights, Rights::W)?;
                let (us, oneshot) = (m.get(1)?, m.get(2)? != 0);
                self.timers.retain(|(x, _, _)| *x != i);
                if us > 0 {
                    let period = A::cycles_hz().saturating_mul(us) / 1_000_000;
                    self.timers.push((i, A::cycles() + period, if oneshot { 0 } else { period.max(1) }));
                    self.arm_timer();
                }
                Ok(Vec::new())
            }
            proto::irq::Op::Unmask => {
                if let Some(l) = self.irqs.get(i).ok_or(Error::NoEnt)?.line {
                    A::line_unmask(l);
                }
                Ok(Vec::new())
            }
        }
    }

    fn detach_irq(&mut self, i: Id) -> Result<(), Error> {
        let irq = self.irqs.get_mut(i).ok_or(Error::NoEnt)?;
        if let Some((t, _)) = irq.target.take() {
            if let Some(th) = self.threads.get_mut(t) {
                th.irqs.retain(|x| *x != i);
            }
        }
        Ok(())
    }

    fn sem_op(&mut self, me: Id, s: Id, op: u64, r8: u64) -> Outcome {
        let Some(sem) = self.sems.get_mut(s) else { return Outcome::err(Error::NoEnt) };
        match proto::semaphore::Op::from_code(op) {
            Some(proto::semaphore::Op::Up) => match sem.waiters.pop_front() {
                Some(w) => {
                    self.wake(w, Ok((MsgTag::new(0, 0, 0, 0), 0)));
                    ok()
                }
                None => {
                    sem.count = sem.count.saturating_add(1);
                    ok()
                }
            },
            Some(proto::semaphore::Op::Down) => {
                if sem.count > 0 {
                    sem.count -= 1;
                    return ok();
                }
                if abi::syscall::timeout::recv(r8) == abi::syscall::timeout::ZERO {
                    return Outcome::err(Error::Timeout);
                }
                sem.waiters.push_back(me);
                self.block(
                    me,
                    ThreadState::Receiving(crate::kernel::Wait::Semaphore(s)),
                    abi::syscall::timeout::recv(r8),
                );
                Outcome::Blocked
            }
            None => Outcome::err(Error::NoSys),
        }
    }

    fn sched_op(&mut self, me: Id, op: u64, m: &Mrs) -> Result<Vec<u64>, Error> {
        match proto::scheduler::Op::from_code(op).ok_or(Error::NoSys)? {
            proto::scheduler::Op::Info => Ok(alloc::vec![1, 255]),
            proto::scheduler::Op::RunThread => {
                let t = self.thread_cap(me, m.get(1)?)?;
                let prio = u8::try_from(m.get(2)?).map_err(|_| Error::Inval)?;
                let cpus = m.get(3)?;
                if cpus & 1 == 0 {
                    // Only CPU 0 exists (SMP comes later): a set without it cannot be honoured.
                    return Err(Error::Inval);
                }
                let us = m.get(4)?;
                let ticks = if us == 0 {
                    QUANTUM
                } else {
                    u32::try_from(us.div_ceil(1_000_000 / A::TICK_HZ)).map_err(|_| Error::Inval)?.max(1)
                };
                let th = self.threads.get_mut(t).ok_or(Error::NoEnt)?;
                if th.task.is_none() {
                    return Err(Error::Inval);
                }
                let old = th.prio;
                th.prio = prio;
                th.quantum_len = ticks;
                match th.state {
                    ThreadState::Inactive => {
                        th.state = ThreadState::Ready;
                        th.quantum = ticks;
                        self.make_ready(t, prio, false);
                        self.readied = true;
                    }
                    ThreadState::Ready => {
                        self.ready.remove(t, old);
                        self.make_ready(t, prio, false);
                        self.readied = true;
                    }
                    _ => {}
                }
                Ok(Vec::new())
            }
        }
    }

    fn icu_op(&mut self, me: Id, op: u64, m: &Mrs) -> Result<Vec<u64>, Error> {
        match proto::icu::Op::from_code(op).ok_or(Error::NoSys)? {
            proto::icu::Op::Info => Ok(alloc::vec![crate::kernel::icu::LINES as u64]),
            proto::icu::Op::Bind => {
                let line = crate::kernel::icu::valid_line(m.get(1)?).ok_or(Error::Inval)?;
                if Some(line) == A::CONSOLE_LINE {
                    // The kernel console's input line is the kernel's own.
                    return Err(Error::Exists);
                }
                // Slot 0 names no Irq: NoEnt, as an empty slot.
                let irq = self.opt_irq_cap(me, m.get(2)?)?.ok_or(Error::NoEnt)?;
                if self.lines[line as usize].is_some() || self.irqs.get(irq).and_then(|i| i.line).is_some() {
                    return Err(Error::Exists);
                }
                self.lines[line as usize] = Some(irq);
                self.irqs.get_mut(irq).ok_or(Error::NoEnt)?.line = Some(line);
                A::line_unmask(line);
                Ok(Vec::new())
            }
            proto::icu::Op::Unbind => {
                let line = crate::kernel::icu::valid_line(m.get(1)?).ok_or(Error::Inval)?;
                let irq = self.lines[line as usize].take().ok_or(Error::NoEnt)?;
                A::line_mask(line);
                if let Some(i) = self.irqs.get_mut(irq) {
                    i.line = None;
                }
                Ok(Vec::new())
            }
        }
    }
}

fn read_mrs<A: Arch>(utcb: PhysAddr, out: &mut [u64]) {
    A::read_words(utcb, out);
}

fn write_mrs<A: Arch>(utcb: PhysAddr, words: &[u64]) {
    A::write_words(utcb, words);
}

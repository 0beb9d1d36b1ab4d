//! Host tests of the kernel proper on the fake architecture: IPC, deletion, timeouts, mapping,
//! and a property test that quotas hold and deleting everything leaves nothing behind.

use super::fake::{self, Fake};
use super::ipc::Outcome;
use super::{Factory, Kernel, Obj, ThreadState, Wait};
use crate::hal::{Arch, Resume, ThreadContext, UserRegs};
use crate::slab::Id;
use abi::cap::well_known as wk;
use abi::proto::{self, fpage::unmap_mask, fpage::Fpage, thread_control as tc, Protocol};
use abi::syscall::{timeout, Flags};
use abi::{CapIdx, CapSel, Error, MsgTag, Rights};
use proptest::prelude::*;

mod console;

const UTCB: u64 = 0x7fff_ffe0_0000;

struct M {
    k: Kernel<Fake>,
    root: Id,
    factory: Id,
}

fn machine(quota: u64) -> M {
    fake::reset();
    let kip = Fake::with_frames(|f| f.alloc()).unwrap();
    let mut k = Kernel::<Fake>::new(kip);
    let factory = k.factories.insert(Factory { limit: quota, used: 0, parent: None });
    let task = k.new_task(UTCB, 4, None).unwrap();
    let root = k.new_thread(None);
    let frame = k.tasks.get(task).unwrap().utcb_frame(UTCB).unwrap();
    let r = Fake::space_root(&k.tasks.get(task).unwrap().space);
    let t = k.threads.get_mut(root).unwrap();
    (t.task, t.utcb_frame, t.utcb_user, t.root, t.state) =
        (Some(task), Some(frame), UTCB, r, ThreadState::Running);
    k.tasks.get_mut(task).unwrap().threads.push(root);
    for (idx, obj, rights) in [
        (wk::TASK, Obj::Task(task), Rights::ALL),
        (wk::FACTORY, Obj::Factory(factory), Rights::RW),
        (wk::THREAD, Obj::Thread(root), Rights::ALL),
        (wk::SCHEDULER, Obj::Scheduler, Rights::RW),
        (wk::LOG, Obj::Log, Rights::RW),
    ] {
        k.install_cap(task, idx, obj, rights).unwrap();
    }
    k.current = Some(root);
    M { k, root, factory }
}

impl M {
    /// One system call of `me`, as the kernel binary runs it: fast path first, then the general
    /// path. `None`: the thread blocked.
    fn sys(&mut self, me: Id, rdx: u64, tag: MsgTag, r8: u64) -> Option<(MsgTag, u64)> {
        let prio = self.k.threads.get(me).unwrap().prio;
        self.k.ready.remove(me, prio);
        self.k.threads.get_mut(me).unwrap().state = ThreadState::Running;
        self.k.current = Some(me);
        if let Some(n) = self.k.fastpath(rdx, tag, r8) {
            // Whoever runs next is resumed from its own registers, and its next entry saves
            // them there again.
            let f = self.k.current.and_then(|c| self.k.threads.get(c)).unwrap().ctx.frame();
            assert_eq!((n.frame, fake::ENTRY_FRAME.with(|e| e.get())), (f, f));
            return None;
        }
        match self.k.invoke(rdx, tag, r8) {
            Outcome::Done(t, l) => Some((t, l)),
            Outcome::Blocked => {
                self.k.threads.get_mut(me).unwrap().resume = Some(Resume::Syscall);
                None
            }
            Outcome::Resume => {
                self.k.resume_current = false;
                None
            }
        }
    }

    fn set_mrs(&self, t: Id, words: &[u64]) {
        Fake::write_words(self.k.threads.get(t).unwrap().utcb_frame.unwrap(), words);
    }

    fn mrs(&self, t: Id, n: usize) -> Vec<u64> {
        let mut w = vec![0; n];
        Fake::read_words(self.k.threads.get(t).unwrap().utcb_frame.unwrap(), &mut w);
        w
    }

    /// A kernel-object operation by the root thread.
    fn op(&mut self, cap: CapIdx, label: i64, words: &[u64]) -> Result<Vec<u64>, Error> {
        self.set_mrs(self.root, words);
        let (t, _) = self
            .sys(
                self.root,
                CapSel::from_idx(cap).raw() | Flags::CALL.bits(),
                MsgTag::new(label, words.len() as u64, 0, 0),
                0,
            )
            .expect("kernel ops do not block");
        t.result().map(|t| self.mrs(self.root, t.words()))
    }

    /// The result registers a blocked thread was woken with.
    fn woke_with(&mut self, t: Id) -> (MsgTag, u64) {
        let r = self.k.threads.get_mut(t).unwrap().ctx.regs().syscall_args();
        (MsgTag(r[1]), r[2])
    }

    /// A thread in the root's task at UTCB slot `n`, made runnable.
    fn thread(&mut self, slot: CapIdx, n: u64) -> Id {
        self.op(wk::FACTORY, proto::factory::LABEL, &[0, Protocol::Thread.label() as u64, slot.0]).unwrap();
        self.op(slot, proto::thread::LABEL, &[0, tc::BIND_TASK, 0, 0, wk::TASK.0, UTCB + n * 1024]).unwrap();
        self.op(wk::SCHEDULER, proto::scheduler::LABEL, &[1, slot.0, 10, 1, 0]).unwrap();
        match self.k.cap(self.k.current_task().unwrap(), slot).unwrap().obj {
            Obj::Thread(t) => t,
            _ => unreachable!(),
        }
    }

    /// A new task (UTCB area at UTCB) in the root's slot `slot`.
    fn task(&mut self, slot: CapIdx) -> Id {
        self.op(
            wk::FACTORY,
            proto::factory::LABEL,
            &[0, Protocol::Task.label() as u64, slot.0, Fpage::memory(UTCB, 12, Rights::ALL).0],
        )
        .unwrap();
        match self.k.cap(self.k.current_task().unwrap(), slot).unwrap().obj {
            Obj::Task(t) => t,
            _ => unreachable!(),
        }
    }

    fn gate(&mut self, slot: CapIdx, thread: CapIdx, label: u64) {
        self.op(
            wk::FACTORY,
            proto::factory::LABEL,
            &[0, Protocol::IpcGate.label() as u64, slot.0, thread.0, label],
        )
        .unwrap();
    }

    fn wait(&mut self, t: Id, r8: u64) -> Option<(MsgTag, u64)> {
        self.sys(t, (Flags::RECV | Flags::OPEN_WAIT).bits(), MsgTag::new(0, 0, 0, 0), r8)
    }

    fn call(&mut self, t: Id, gate: CapIdx, words: &[u64]) -> Option<(MsgTag, u64)> {
        self.set_mrs(t, words);
        self.sys(
            t,
            CapSel::from_idx(gate).raw() | Flags::CALL.bits(),
            MsgTag::new(7, words.len() as u64, 0, 0),
            0,
        )
    }

    fn reply_and_wait(&mut self, t: Id, words: &[u64]) -> Option<(MsgTag, u64)> {
        self.set_mrs(t, words);
        self.sys(t, 0xf, MsgTag::new(0, words.len() as u64, 0, 0), 0)
    }
}

#[test]
fn call_and_reply_both_paths() {
    for words in [2usize, 40] {
        let mut m = machine(4 << 20);
        let s = m.thread(CapIdx(20), 1);
        m.gate(CapIdx(21), CapIdx(20), 0x42);
        assert_eq!(m.wait(s, 0), None, "server blocks in open wait");
        let msg: Vec<u64> = (0..words as u64).collect();
        assert_eq!(m.call(m.root, CapIdx(21), &msg), None, "caller blocks for the reply");
        let (tag, label) = m.woke_with(s);
        assert_eq!((tag.words(), tag.label(), label), (words, 7, 0x42));
        assert_eq!(m.mrs(s, words), msg);
        assert_eq!(m.k.threads.get(m.root).unwrap().state, ThreadState::Receiving(Wait::Reply(s)));
        assert_eq!(m.reply_and_wait(s, &[99; 3]), None, "server waits again");
        let (tag, _) = m.woke_with(m.root);
        assert_eq!((tag.words(), tag.result().is_ok()), (3, true));
        assert_eq!(m.mrs(m.root, 3), vec![99; 3]);
        assert_eq!(m.k.threads.get(s).unwrap().state, ThreadState::Receiving(Wait::Open));
        assert_eq!(m.k.self_check(), Ok(()));
    }
}

#[test]
fn register_messages_on_both_paths() {
    let mut m = machine(4 << 20);
    let s = m.thread(CapIdx(20), 1);
    m.gate(CapIdx(21), CapIdx(20), 0x42);
    let regs = |label, n| MsgTag::new(label, n, 0, MsgTag::REGS);
    let call = CapSel::from_idx(CapIdx(21)).raw() | Flags::CALL.bits();
    // The fast path: frame to frame, flagged, neither UTCB written.
    m.wait(s, 0);
    m.set_mrs(s, &[0; 4]);
    m.k.threads.get_mut(m.root).unwrap().ctx.regs().words = [10, 11, 12, 13];
    assert_eq!(m.sys(m.root, call, regs(7, 3), 0), None);
    let (tag, label) = m.woke_with(s);
    assert_eq!((tag.in_regs(), tag.words(), tag.label(), label), (true, 3, 7, 0x42));
    assert_eq!(m.k.threads.get_mut(s).unwrap().ctx.regs().words[..3], [10, 11, 12]);
    assert_eq!(m.mrs(s, 4), vec![0; 4], "the receiver's UTCB is untouched");
    // The reply in registers too.
    m.k.threads.get_mut(s).unwrap().ctx.regs().words = [20, 21, 0, 0];
    assert_eq!(m.sys(s, 0xf, regs(0, 2), 0), None);
    let (tag, _) = m.woke_with(m.root);
    assert_eq!((tag.in_regs(), tag.words()), (true, 2));
    assert_eq!(m.k.threads.get_mut(m.root).unwrap().ctx.regs().words[..2], [20, 21]);
    // With a send timeout the general path takes it: the words arrive in the UTCB, unflagged.
    m.k.threads.get_mut(m.root).unwrap().ctx.regs().words = [30, 31, 32, 33];
    assert_eq!(m.sys(m.root, call, regs(7, 4), timeout::pack(1000, 0)), None);
    let (tag, _) = m.woke_with(s);
    assert_eq!((tag.in_regs(), tag.words()), (false, 4));
    assert_eq!(m.mrs(s, 4), vec![30, 31, 32, 33]);
    m.reply_and_wait(s, &[1]);
    // Five words, or an item: refused on either path.
    for (tag, r8) in
        [(regs(7, 5), 0), (MsgTag::new(7, 0, 1, MsgTag::REGS), 0), (regs(7, 5), timeout::pack(1000, 0))]
    {
        let r = m.sys(m.root, call, tag, r8).map(|(t, _)| t.ipc_result());
        assert_eq!(r, Some(Err(Error::Inval)), "{tag:?}");
    }
    assert_eq!(m.k.self_check(), Ok(()));
}

#[test]
fn a_remembered_gate_follows_its_binding() {
    let mut m = machine(4 << 20);
    let (s1, s2) = (m.thread(CapIdx(20), 1), m.thread(CapIdx(22), 2));
    m.gate(CapIdx(21), CapIdx(20), 0x21);
    // A call through the gate and its answer, on the fast path; returns who got the call.
    let round = |m: &mut M| {
        for s in [s1, s2] {
            m.wait(s, 0);
        }
        m.call(m.root, CapIdx(21), &[1]);
        let got = [s1, s2].into_iter().find(|s| m.k.threads.get(*s).unwrap().state == ThreadState::Running);
        if let Some(s) = got {
            m.reply_and_wait(s, &[2]);
        }
        got.map(|s| (s, m.woke_with(s).1))
    };
    assert_eq!(round(&mut m), Some((s1, 0x21)));
    assert!(m.k.threads.get(m.root).unwrap().gate_cache.is_some(), "the call was remembered");
    assert_eq!(round(&mut m), Some((s1, 0x21)), "again, from what it remembered");
    assert_eq!(m.k.self_check(), Ok(()));
    // Bound to the other thread with another label: the next call follows.
    m.op(CapIdx(21), proto::ipc_gate::LABEL, &[proto::ipc_gate::Op::Bind.code(), 22, 0x22]).unwrap();
    assert_eq!(round(&mut m), Some((s2, 0x22)));
    assert_eq!(m.k.self_check(), Ok(()));
}

#[test]
fn deleting_the_server_wakes_its_caller_with_an_error() {
    let mut m = machine(4 << 20);
    let s = m.thread(CapIdx(20), 1);
    m.gate(CapIdx(21), CapIdx(20), 1);
    let c = m.thread(CapIdx(22), 2);
    assert_eq!(m.wait(s, 0), None);
    assert_eq!(m.call(c, CapIdx(21), &[1]), None);
    m.op(
        wk::TASK,
        proto::task::LABEL,
        &[1, unmap_mask::DELETE_OBJ, Fpage::object(CapIdx(20), 0, Rights::ALL).0],
    )
    .unwrap();
    let (tag, _) = m.woke_with(c);
    assert_eq!(tag.ipc_result(), Err(Error::Canceled));
    assert_eq!(m.k.threads.get(c).unwrap().state, ThreadState::Ready);
    assert!(m.k.cap(m.k.current_task().unwrap(), CapIdx(20)).is_none(), "capability gone");
    assert_eq!(m.k.self_check(), Ok(()));
}

#[test]
fn receive_timeout_expires() {
    let mut m = machine(4 << 20);
    let s = m.thread(CapIdx(20), 1);
    assert_eq!(m.wait(s, timeout::pack(0, 10)), None);
    m.k.expire_timeouts();
    assert!(matches!(m.k.threads.get(s).unwrap().state, ThreadState::Receiving(_)), "not yet");
    fake::advance(20_000);
    m.k.expire_timeouts();
    assert_eq!(m.woke_with(s).0.ipc_result(), Err(Error::Timeout));
    assert_eq!(
        m.wait(s, timeout::pack(0, timeout::ZERO)).map(|r| r.0.ipc_result()),
        Some(Err(Error::Timeout))
    );
}

#[test]
fn memory_map_and_revoke_between_tasks() {
    let mut m = machine(4 << 20);
    let me = m.k.current_task().unwrap();
    let page = Fake::with_frames(|f| f.alloc()).unwrap();
    m.k.map_root(me, 0x10_0000, page, super::memory::MEM_ALL).unwrap();
    let b = m.task(CapIdx(30));
    let ro = Fpage::memory(0x10_0000, 12, Rights::R);
    m.op(CapIdx(30), proto::task::LABEL, &[0, wk::TASK.0, ro.0, 0x20_0000]).unwrap();
    let (pa, perms) = m.k.tasks.get(b).unwrap().space.pages[&0x20_0000];
    assert_eq!((pa, perms.write), (page, false), "mapped read-only");
    m.op(
        wk::TASK,
        proto::task::LABEL,
        &[1, unmap_mask::OTHER_SPACES, Fpage::memory(0x10_0000, 12, Rights::ALL).0],
    )
    .unwrap();
    assert!(!m.k.tasks.get(b).unwrap().space.pages.contains_key(&0x20_0000), "revoked");
    assert!(m.k.tasks.get(me).unwrap().space.pages.contains_key(&0x10_0000), "own mapping stays");
    assert_eq!(m.k.self_check(), Ok(()));
}

#[derive(Clone, Debug)]
enum Op {
    Create(u8, u64),
    Delete(u64),
    MapCap(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 32u64..48).prop_map(|(k, s)| Op::Create(k, s)),
        (32u64..48).prop_map(Op::Delete),
        (32u64..48, 32u64..48).prop_map(|(a, b)| Op::MapCap(a, b)),
    ]
}

const KINDS: [Protocol; 6] = [
    Protocol::Task,
    Protocol::Thread,
    Protocol::IpcGate,
    Protocol::Irq,
    Protocol::Semaphore,
    Protocol::Factory,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Quotas are never exceeded, the kernel's invariants hold after every step, and deleting
    /// every object gives back every byte of quota and every frame.
    #[test]
    fn quotas_and_deletion(ops in proptest::collection::vec(op(), 1..40)) {
        let mut m = machine(200_000);
        let frames_machine = fake::free_frames();
        for o in ops {
            let _ = match o {
                Op::Create(kind, slot) => {
                    let mut w = vec![0, KINDS[kind as usize].label() as u64, slot];
                    match KINDS[kind as usize] {
                        Protocol::Task => w.push(Fpage::memory(UTCB, 12, Rights::ALL).0),
                        Protocol::IpcGate => w.extend([0, 5]),
                        Protocol::Semaphore => w.push(1),
                        Protocol::Factory => w.push(30_000),
                        _ => {}
                    }
                    m.op(wk::FACTORY, proto::factory::LABEL, &w)
                }
                Op::Delete(slot) => m.op(wk::TASK, proto::task::LABEL, &[1, unmap_mask::DELETE_OBJ, Fpage::object(CapIdx(slot), 0, Rights::ALL).0]),
                Op::MapCap(a, b) => m.op(wk::TASK, proto::task::LABEL, &[0, wk::TASK.0, Fpage::object(CapIdx(a), 0, Rights::RW).0, b << 12]),
            };
            let f = m.k.factories.get(m.factory).unwrap();
            prop_assert!(f.used <= f.limit, "quota exceeded");
            prop_assert_eq!(m.k.self_check(), Ok(()));
        }
        for slot in 32..48 {
            let _ = m.op(wk::TASK, proto::task::LABEL, &[1, unmap_mask::DELETE_OBJ, Fpage::object(CapIdx(slot), 0, Rights::ALL).0]);
        }
        prop_assert_eq!(m.k.factories.get(m.factory).unwrap().used, 0, "quota not refunded");
        prop_assert_eq!(fake::free_frames(), frames_machine, "frames leaked");
        prop_assert_eq!(m.k.self_check(), Ok(()));
    }
}

#[test]
fn fpu_state_switches_lazily() {
    let mut m = machine(4 << 20);
    let a = m.root;
    let b = m.thread(CapIdx(20), 1);
    fake::FPU_OPS.with(|f| f.borrow_mut().clear());
    m.k.current = Some(a);
    m.k.fpu_fault();
    assert_eq!(m.k.fpu_owner, Some(a));
    m.k.fpu_for(b);
    assert!(fake::FPU_TRAPS.with(|f| f.get()), "b does not own the FPU: it traps");
    m.k.current = Some(b);
    m.k.fpu_fault();
    let ops = fake::FPU_OPS.with(|f| f.borrow().iter().map(|(op, _)| *op).collect::<Vec<_>>());
    assert_eq!(ops, vec!["restore", "save", "restore"], "a's state saved before b's is loaded");
    m.k.fpu_for(b);
    assert!(!fake::FPU_TRAPS.with(|f| f.get()));
    m.op(
        wk::TASK,
        proto::task::LABEL,
        &[1, unmap_mask::DELETE_OBJ, Fpage::object(CapIdx(20), 0, Rights::ALL).0],
    )
    .unwrap();
    assert_eq!(m.k.fpu_owner, None, "a dead owner leaves nothing to save");
}

#[test]
fn vcpu_resume_and_upcall() {
    use abi::vcpu::{off, state, trap};
    let mut m = machine(4 << 20);
    let v = m.thread(CapIdx(20), 1);
    m.op(
        wk::FACTORY,
        proto::factory::LABEL,
        &[0, Protocol::Task.label() as u64, 21, Fpage::memory(UTCB, 12, Rights::ALL).0],
    )
    .unwrap();
    let area_addr = UTCB + 3 * 1024;
    m.op(CapIdx(20), proto::thread::LABEL, &[proto::thread::Op::VcpuControl.code(), area_addr]).unwrap();
    let area = m.k.threads.get(v).unwrap().vcpu.unwrap().frame;
    let mut w = [0u64; off::WORDS];
    Fake::read_words(area, &mut w);
    assert_eq!(w[off::VERSION], abi::vcpu::VERSION);
    // Into the user task at ip 0x1000 with rax 5.
    w[off::SAVED_STATE] = state::USER_MODE;
    w[off::USER_TASK] = 21;
    (w[off::ENTRY_IP], w[off::ENTRY_SP]) = (0x40_0000, 0x7000);
    (w[off::REGS], w[off::REGS + 15], w[off::REGS + 16]) = (5, 0x1000, 0x2000);
    Fake::write_words(area, &w);
    m.set_mrs(v, &[proto::thread::Op::VcpuResume.code()]);
    m.sys(
        v,
        CapSel::from_idx(CapIdx(20)).raw() | Flags::CALL.bits(),
        MsgTag::new(proto::thread::LABEL, 1, 0, 0),
        0,
    );
    let user = match m.k.cap(m.k.current_task().unwrap(), CapIdx(21)).unwrap().obj {
        Obj::Task(u) => u,
        _ => unreachable!(),
    };
    let t = m.k.threads.get_mut(v).unwrap();
    assert_eq!(t.vcpu_user, Some(user));
    assert_eq!((t.ctx.regs().ip(), t.ctx.regs().sp(), t.ctx.regs().gpr[0]), (0x1000, 0x2000, 5));
    // A system call in the user task is an upcall, not an invocation.
    t.ctx.regs().ip = 0x1002;
    assert_eq!(m.sys(v, 0, MsgTag::new(0, 0, 0, 0), 0), None);
    let t = m.k.threads.get_mut(v).unwrap();
    assert_eq!(t.vcpu_user, None, "back in the vCPU's own task");
    assert_eq!((t.ctx.regs().ip(), t.ctx.regs().sp(), t.ctx.regs().gpr[5]), (0x40_0000, 0x7000, area_addr));
    Fake::read_words(area, &mut w);
    assert_eq!((w[off::TRAPNO], w[off::REGS + 15], w[off::STATE]), (trap::SYSCALL, 0x1002, 0));
    assert_eq!(w[off::SAVED_STATE], state::USER_MODE);
    // An interrupt while its IRQs are off stays pending, and comes at the next resume.
    m.op(wk::FACTORY, proto::factory::LABEL, &[0, Protocol::Irq.label() as u64, 22]).unwrap();
    m.op(CapIdx(22), proto::irq::LABEL, &[0, 20, 0x99]).unwrap();
    m.op(CapIdx(22), proto::irq::LABEL, &[2]).unwrap();
    Fake::read_words(area, &mut w);
    assert_eq!(w[off::STICKY], abi::vcpu::sticky::IRQ_PENDING);
    w[off::SAVED_STATE] = state::USER_MODE | state::IRQ;
    Fake::write_words(area, &w);
    m.set_mrs(v, &[proto::thread::Op::VcpuResume.code()]);
    m.sys(
        v,
        CapSel::from_idx(CapIdx(20)).raw() | Flags::CALL.bits(),
        MsgTag::new(proto::thread::LABEL, 1, 0, 0),
        0,
    );
    Fake::read_words(area, &mut w);
    assert_eq!(
        (w[off::TRAPNO], w[off::STICKY], w[off::IRQ_LABEL]),
        (trap::IRQ, 0, 0x99),
        "the pending IRQ upcalls at resume"
    );
    assert_eq!(
        w[off::SAVED_STATE],
        state::USER_MODE | state::IRQ,
        "the upcall reports the resumed context's flags, so the handler knows it was a user's"
    );
    assert_eq!(m.k.threads.get(v).unwrap().vcpu_user, None);
    assert_eq!(m.k.self_check(), Ok(()));
}

#[test]
fn vcpu_resume_with_map_items_takes_the_fast_path() {
    use abi::vcpu::{off, state};
    let mut m = machine(4 << 20);
    let me = m.k.current_task().unwrap();
    let v = m.thread(CapIdx(20), 1);
    let page = Fake::with_frames(|f| f.alloc()).unwrap();
    m.k.map_root(me, 0x10_0000, page, super::memory::MEM_ALL).unwrap();
    let user = m.task(CapIdx(21));
    m.op(CapIdx(20), proto::thread::LABEL, &[proto::thread::Op::VcpuControl.code(), UTCB + 3 * 1024])
        .unwrap();
    let area = m.k.threads.get(v).unwrap().vcpu.unwrap().frame;
    // A resume into the user task at `ip` with one map item: our page at `to`. True if the
    // fast path took the call (the general path is not tried).
    let resume = |m: &mut M, ip: u64, to: u64| {
        let mut w = [0u64; off::WORDS];
        Fake::read_words(area, &mut w);
        (w[off::SAVED_STATE], w[off::USER_TASK]) = (state::USER_MODE, 21);
        (w[off::ENTRY_IP], w[off::ENTRY_SP]) = (0x40_0000, 0x7000);
        (w[off::REGS + 15], w[off::REGS + 16]) = (ip, 0x2000);
        Fake::write_words(area, &w);
        let item = Fpage::memory(0x10_0000, 12, Rights::RW);
        m.set_mrs(v, &[proto::thread::Op::VcpuResume.code(), to | proto::map::ITEM, item.0]);
        m.k.current = Some(v);
        m.k.threads.get_mut(v).unwrap().state = ThreadState::Running;
        let rdx = CapSel::from_idx(CapIdx(20)).raw() | Flags::CALL.bits();
        m.k.fastpath(rdx, MsgTag::new(proto::thread::LABEL, 1, 1, 0), 0).is_some()
    };
    assert!(resume(&mut m, 0x1000, 0x30_0000), "a page-fault answer takes the fast path");
    let own_root = m.k.threads.get(m.root).unwrap().root;
    let t = m.k.threads.get_mut(v).unwrap();
    assert_eq!((t.vcpu_user, t.ctx.regs().ip()), (Some(user), 0x1000));
    assert_eq!(m.k.tasks.get(user).unwrap().space.pages[&0x30_0000].0, page, "mapped on the way");
    assert_eq!(m.k.user_vcpu, Some((v, own_root)), "remembered in its user task");
    assert_eq!(m.k.self_check(), Ok(()));
    // Back to the vCPU (a system call in the user task): its own address space is loaded
    // before anything else, then a resume whose context is bad: the item is taken, as on the
    // general path, and the error returns to the vCPU.
    Fake::load_root(Fake::space_root(&m.k.tasks.get(user).unwrap().space));
    m.sys(v, 0, MsgTag::new(0, 0, 0, 0), 0);
    assert_eq!(Fake::active_root(), own_root, "the vCPU's own space, loaded at the event");
    assert_eq!(m.k.threads.get(v).unwrap().vcpu_user, None);
    assert_eq!(m.k.user_vcpu, None, "forgotten at the upcall");
    assert!(resume(&mut m, abi::kip::USER_END, 0x31_0000));
    assert_eq!(m.k.threads.get(v).unwrap().vcpu_user, None, "still in its own task");
    assert_eq!(m.woke_with(v).0.result(), Err(Error::Inval));
    assert!(m.k.tasks.get(user).unwrap().space.pages.contains_key(&0x31_0000));
    assert_eq!(m.k.self_check(), Ok(()));
}

#[test]
fn vcpu_resume_lookup_is_forgotten_when_capabilities_change() {
    use abi::vcpu::{off, state};
    let mut m = machine(4 << 20);
    let v = m.thread(CapIdx(20), 1);
    let first = m.task(CapIdx(21));
    m.op(CapIdx(20), proto::thread::LABEL, &[proto::thread::Op::VcpuControl.code(), UTCB + 3 * 1024])
        .unwrap();
    let area = m.k.threads.get(v).unwrap().vcpu.unwrap().frame;
    // A resume into task slot 21 on the fast path; then back by a system call there.
    let resume = |m: &mut M| {
        let mut w = [0u64; off::WORDS];
        Fake::read_words(area, &mut w);
        (w[off::SAVED_STATE], w[off::USER_TASK]) = (state::USER_MODE, 21);
        (w[off::ENTRY_IP], w[off::ENTRY_SP], w[off::REGS + 15], w[off::REGS + 16]) =
            (0x40_0000, 0x7000, 0x1000, 0x2000);
        Fake::write_words(area, &w);
        m.set_mrs(v, &[proto::thread::Op::VcpuResume.code()]);
        m.k.current = Some(v);
        m.k.threads.get_mut(v).unwrap().state = ThreadState::Running;
        let rdx = CapSel::from_idx(CapIdx(20)).raw() | Flags::CALL.bits();
        let fast = m.k.fastpath(rdx, MsgTag::new(proto::thread::LABEL, 1, 0, 0), 0).is_some();
        let into = m.k.threads.get(v).unwrap().vcpu_user;
        if into.is_some() {
            m.sys(v, 0, MsgTag::new(0, 0, 0, 0), 0);
        }
        (fast, into)
    };
    assert_eq!(resume(&mut m), (true, Some(first)));
    assert_eq!(resume(&mut m), (true, Some(first)), "again, from what it remembered");
    assert_eq!(m.k.self_check(), Ok(()));
    // Slot 21 gets another task: the next resume goes there, not to the remembered one.
    let second = m.task(CapIdx(21));
    assert_ne!(first, second);
    assert_eq!(resume(&mut m), (true, Some(second)));
    assert_eq!(m.k.self_check(), Ok(()));
    // Slot 21 emptied: the fast path declines, the general path says why.
    m.op(
        wk::TASK,
        proto::task::LABEL,
        &[1, unmap_mask::ALL_SPACES, Fpage::object(CapIdx(21), 0, Rights::ALL).0],
    )
    .unwrap();
    assert_eq!(resume(&mut m), (false, None));
    assert_eq!(m.k.self_check(), Ok(()));
}

#[test]
fn closed_receive_takes_only_its_partner() {
    let mut m = machine(4 << 20);
    let s = m.thread(CapIdx(20), 1);
    m.gate(CapIdx(21), CapIdx(20), 0x21);
    let c = m.thread(CapIdx(22), 2);
    let d = m.thread(CapIdx(23), 3);
    // s takes a message from c only.
    let recv_c = CapSel::from_idx(CapIdx(22)).raw() | Flags::RECV.bits();
    assert_eq!(m.sys(s, recv_c, MsgTag::new(0, 0, 0, 0), 0), None);
    assert_eq!(m.call(d, CapIdx(21), &[4]), None, "d waits: s receives from c only");
    assert!(matches!(m.k.threads.get(d).unwrap().state, ThreadState::Sending { .. }));
    assert_eq!(m.call(c, CapIdx(21), &[3]), None);
    assert_eq!(m.mrs(s, 1), vec![3], "c's message, not d's");
    assert_eq!(
        m.reply_and_wait(s, &[30]),
        Some((MsgTag::new(7, 1, 0, 0), 0x21)),
        "d's queued message at once"
    );
    assert_eq!(m.mrs(s, 1), vec![4], "the open wait then takes d's queued message");
    assert_eq!(m.woke_with(c).0.words(), 1);
    assert_eq!(m.k.self_check(), Ok(()));
}

#[test]
fn a_task_name_prefixes_its_log_lines() {
    let mut m = machine(1 << 20);
    let (set_name, task) = (proto::task::Op::SetName.code(), proto::task::LABEL);
    let server = u64::from_le_bytes(*b"server\0\0");
    m.op(wk::TASK, task, &[set_name, 6, server]).unwrap();
    let hi = u64::from_le_bytes(*b"hi\n\0\0\0\0\0");
    m.op(wk::LOG, proto::log::LABEL, &[proto::log::Op::Write.code(), 3, hi]).unwrap();
    assert!(fake::console().ends_with("server: hi\n"), "{:?}", fake::console());
    // Empty, too long, shorter than its length, not UTF-8: refused, the name stays.
    for bad in
        [&[set_name, 0][..], &[set_name, 33, 0, 0, 0, 0, 0], &[set_name, 9, server], &[set_name, 1, 0xff]]
    {
        assert_eq!(m.op(wk::TASK, task, bad), Err(Error::Inval), "{bad:x?}");
    }
    // Naming needs the W right.
    let read_only = Fpage::object(wk::TASK, 0, Rights::R).0;
    m.op(wk::TASK, task, &[proto::task::Op::Map.code(), wk::TASK.0, read_only, 20 << 12]).unwrap();
    assert_eq!(m.op(CapIdx(20), task, &[set_name, 1, u64::from(b'x')]), Err(Error::Perm));
    m.op(wk::LOG, proto::log::LABEL, &[proto::log::Op::Write.code(), 3, hi]).unwrap();
    assert!(fake::console().ends_with("server: hi\nserver: hi\n"));
}

#[test]
fn readying_a_higher_priority_thread_preempts_the_caller() {
    let mut m = machine(1 << 20);
    let root_prio = m.k.threads.get(m.root).unwrap().prio;
    assert!(root_prio < 200);
    let t = CapIdx(40);
    m.thread(t, 1);
    let _ = m.k.take_preempt();
    // Raising it above us: the caller must yield at once, and only once.
    m.op(wk::SCHEDULER, proto::scheduler::LABEL, &[1, t.0, 200, 1, 0]).unwrap();
    assert!(m.k.take_preempt());
    assert!(!m.k.take_preempt());
    // Readying at or below our level does not preempt.
    m.op(wk::SCHEDULER, proto::scheduler::LABEL, &[1, t.0, u64::from(root_prio), 1, 0]).unwrap();
    assert!(!m.k.take_preempt());
}

#[test]
fn ticks_run_only_while_another_thread_is_ready() {
    // A thread running alone has no time slice to lose: the periodic interrupt stops, and a
    // second ready thread starts it again (each interrupt of a guest world costs two
    // address-space switches under TCG).
    use super::switch::NO_TICK;
    let mut m = machine(4 << 20);
    let period = Fake::cycles_hz() / Fake::TICK_HZ;
    let timer = || fake::TIMER.with(|t| t.get());
    fake::advance(period);
    assert!(!m.k.tick());
    assert_eq!((m.k.next_tick, timer()), (NO_TICK, NO_TICK), "alone: no tick armed");
    fake::advance(100 * period);
    assert!(!m.k.tick(), "a stray interrupt changes nothing");
    assert_eq!(timer(), NO_TICK);

    // A thread of the same priority gets ready: ticks again, and its turn comes once the
    // running one's slice is used up.
    let prio = m.k.threads.get(m.root).unwrap().prio;
    let t = m.thread(CapIdx(40), 1);
    let now = Fake::cycles();
    m.op(wk::SCHEDULER, proto::scheduler::LABEL, &[1, 40, u64::from(prio), 1, 0]).unwrap();
    assert_eq!((m.k.next_tick, timer()), (now + period, now + period));
    assert!(m.k.threads.get(t).unwrap().state == ThreadState::Ready);
    m.k.threads.get_mut(m.root).unwrap().quantum = 1;
    fake::advance(period);
    assert!(m.k.tick(), "the slice of one tick is over");
    assert_eq!(timer(), now + 2 * period, "still ticking while the other waits");

    // Its own timeouts still wake a lone thread.
    let mut m = machine(4 << 20);
    fake::advance(period);
    m.k.tick();
    let s = m.thread(CapIdx(20), 1);
    assert_eq!(m.wait(s, timeout::pack(0, 10)), None);
    let due = timer();
    assert!(due != NO_TICK && due <= Fake::cycles() + 10_000 * Fake::cycles_hz() / 1_000_000);
}

#[test]
fn lazy_memory_is_mapped_block_by_block_and_once() {
    let mut m = machine(1 << 20);
    let task = m.k.current_task().unwrap();
    let pa = Fake::with_frames(|f| f.alloc_contiguous(600)).unwrap();
    let va = 0x100_0000_0000;
    let at = |page: u64| (task.as_u64(), va + page * 4096);
    m.k.add_lazy(task, va, pa, 600 * 4096);
    assert!(m.k.memdb.get(at(0)).is_none(), "nothing is mapped up front");
    // A touch in the second (short) block maps that block only, once.
    assert!(m.k.materialize(task, va + 513 * 4096));
    assert_eq!(m.k.memdb.get(at(599)).map(|e| e.0), Some(crate::mem::PhysAddr(pa.0 + 599 * 4096)));
    assert!(m.k.memdb.get(at(511)).is_none());
    assert!(!m.k.materialize(task, va + 520 * 4096));
    // Mapping from an untouched block materializes it first.
    let map = proto::task::Op::Map.code();
    let fp = Fpage::memory(va, 12, Rights::RW).0;
    m.op(wk::TASK, proto::task::LABEL, &[map, wk::TASK.0, fp, 0x20_0000]).unwrap();
    assert!(m.k.memdb.get((task.as_u64(), 0x20_0000)).is_some());
    // Granted away, a page is not conjured up again by a later touch.
    m.op(wk::TASK, proto::task::LABEL, &[map, wk::TASK.0, fp, 0x30_0000 | proto::map::GRANT]).unwrap();
    assert!(m.k.memdb.get(at(0)).is_none());
    assert!(!m.k.materialize(task, va));
    // Outside every lazy range nothing happens.
    assert!(!m.k.materialize(task, va + 600 * 4096));
}

#[test]
fn a_watched_gate_tells_its_server_when_the_client_copy_goes() {
    let mut m = machine(4 << 20);
    let me = m.k.current_task().unwrap();
    // A session gate (ours, slot 30), a client task (31) with a copy of it, an Irq (32) pending
    // on nobody: its `pending` flag shows each trigger.
    m.gate(CapIdx(30), CapIdx(0), 5);
    m.op(
        wk::FACTORY,
        proto::factory::LABEL,
        &[0, Protocol::Task.label() as u64, 31, Fpage::memory(UTCB, 12, Rights::ALL).0],
    )
    .unwrap();
    m.op(wk::FACTORY, proto::factory::LABEL, &[0, Protocol::Irq.label() as u64, 32]).unwrap();
    let irq = match m.k.cap(me, CapIdx(32)).unwrap().obj {
        Obj::Irq(i) => i,
        _ => unreachable!(),
    };
    let pending = |m: &mut M| core::mem::replace(&mut m.k.irqs.get_mut(irq).unwrap().pending, false);
    let watch = proto::ipc_gate::Op::Watch.code();
    // Only our capability so far: the watch fires at once.
    m.op(CapIdx(30), proto::ipc_gate::LABEL, &[watch, 32]).unwrap();
    assert!(pending(&mut m), "a gate nobody else holds is reported at once");
    // The client gets its copy (twice: a second slot), then drops them one by one.
    let copy = |m: &mut M, at: u64| {
        let fp = Fpage::object(CapIdx(30), 0, Rights::RW);
        m.op(CapIdx(31), proto::task::LABEL, &[0, wk::TASK.0, fp.0, at << 12]).unwrap();
    };
    copy(&mut m, 40);
    copy(&mut m, 41);
    assert!(!pending(&mut m));
    m.op(
        CapIdx(31),
        proto::task::LABEL,
        &[1, unmap_mask::ALL_SPACES, Fpage::object(CapIdx(40), 0, Rights::ALL).0],
    )
    .unwrap();
    assert!(!pending(&mut m), "the client still holds a copy");
    // The client task ends: its last copy goes, and the server hears of it.
    m.op(
        wk::TASK,
        proto::task::LABEL,
        &[1, unmap_mask::DELETE_OBJ, Fpage::object(CapIdx(31), 0, Rights::ALL).0],
    )
    .unwrap();
    assert!(pending(&mut m), "the client's end is reported");
    // Unwatched: nothing more.
    m.op(CapIdx(30), proto::ipc_gate::LABEL, &[watch, 0]).unwrap();
    assert!(!pending(&mut m));
    // Watching needs an Irq: anything else is refused.
    assert_eq!(m.op(CapIdx(30), proto::ipc_gate::LABEL, &[watch, 30]), Err(Error::Inval));
    assert_eq!(m.k.self_check(), Ok(()));
}

#[test]
fn cap_equal_tells_objects_apart() {
    let mut m = machine(4 << 20);
    m.gate(CapIdx(30), CapIdx(0), 1);
    m.gate(CapIdx(31), CapIdx(0), 1);
    let fp = Fpage::object(CapIdx(30), 0, Rights::R);
    m.op(wk::TASK, proto::task::LABEL, &[0, wk::TASK.0, fp.0, 32 << 12]).unwrap();
    let eq = |m: &mut M, a: u64, b: u64| {
        m.op(wk::TASK, proto::task::LABEL, &[proto::task::Op::CapEqual.code(), a, b]).unwrap()[0]
    };
    assert_eq!(eq(&mut m, 30, 32), 1, "a copy (even with fewer rights) names the same gate");
    assert_eq!(eq(&mut m, 30, 31), 0, "two gates with the same label are different objects");
    assert_eq!(eq(&mut m, 33, 33), 0, "empty slots name nothing");
}

#[test]
fn preempted_threads_resume_from_their_frames_the_way_they_left() {
    // There are no kernel stacks to keep a preempted context on: a thread interrupted in user
    // mode resumes by iret from its frame, one preempted after a finished system call by
    // sysret, and the CPU's next entry saves into the frame of whoever runs.
    let mut m = machine(4 << 20);
    let a = m.root;
    let b = m.thread(CapIdx(20), 1);
    let prio = m.k.threads.get(b).unwrap().prio;
    let ta = m.k.threads.get_mut(a).unwrap();
    (ta.prio, ta.state) = (prio, ThreadState::Running);
    ta.ctx.regs().ip = 0x1234;
    m.k.current = Some(a);
    let frame = |m: &M, t: Id| m.k.threads.get(t).unwrap().ctx.frame();

    m.k.requeue_current(Resume::Exception); // the tick interrupted a
    let n = m.k.pick().unwrap();
    assert_eq!((m.k.current, n.by, n.frame), (Some(b), Resume::Exception, frame(&m, b)), "b never ran: iret");
    assert_eq!(fake::ENTRY_FRAME.with(|e| e.get()), frame(&m, b));

    m.k.requeue_current(Resume::Syscall); // b finished a call, then a higher thread was ready
    let n = m.k.pick().unwrap();
    assert_eq!((m.k.current, n.by, n.frame), (Some(a), Resume::Exception, frame(&m, a)));
    assert_eq!(m.k.threads.get_mut(a).unwrap().ctx.regs().ip, 0x1234, "a's frame untouched");
    m.k.requeue_current(Resume::Exception);
    let n = m.k.pick().unwrap();
    assert_eq!((m.k.current, n.by), (Some(b), Resume::Syscall));
    assert_eq!(m.k.threads.get(b).unwrap().resume, None, "running threads have no resumption pending");
}

#[test]
fn a_resume_whose_pending_irq_finds_no_usable_entry_ends_the_vcpu_without_touching_its_area() {
    use abi::vcpu::{off, state};
    let mut m = machine(4 << 20);
    let v = m.thread(CapIdx(20), 1);
    m.task(CapIdx(21));
    m.op(CapIdx(20), proto::thread::LABEL, &[proto::thread::Op::VcpuControl.code(), UTCB + 3 * 1024])
        .unwrap();
    let area = m.k.threads.get(v).unwrap().vcpu.unwrap().frame;
    // A pending interrupt, its IRQs on in the context to resume, and an entry outside the
    // user half: the upcall at resume cannot run, and the vCPU's task (ours) goes.
    m.op(wk::FACTORY, proto::factory::LABEL, &[0, Protocol::Irq.label() as u64, 22]).unwrap();
    m.op(CapIdx(22), proto::irq::LABEL, &[0, 20, 0x99]).unwrap();
    m.op(CapIdx(22), proto::irq::LABEL, &[2]).unwrap();
    let mut w = [0u64; off::WORDS];
    Fake::read_words(area, &mut w);
    assert_eq!(w[off::STICKY], abi::vcpu::sticky::IRQ_PENDING);
    (w[off::STATE], w[off::SAVED_STATE], w[off::USER_TASK]) = (0, state::USER_MODE | state::IRQ, 21);
    (w[off::ENTRY_IP], w[off::ENTRY_SP]) = (abi::kip::USER_END, 0x7000);
    Fake::write_words(area, &w);
    m.set_mrs(v, &[proto::thread::Op::VcpuResume.code()]);
    let rdx = CapSel::from_idx(CapIdx(20)).raw() | Flags::CALL.bits();
    m.sys(v, rdx, MsgTag::new(proto::thread::LABEL, 1, 0, 0), 0);
    assert!(m.k.threads.get(v).is_none(), "the vCPU went with its task");
    assert_eq!(m.k.resume_self(), None, "nothing to resume: the next thread runs");
    Fake::read_words(area, &mut w);
    assert_eq!(w[off::SAVED_STATE], 0, "the freed state area was not written after the upcall");
}

#[test]
fn guest_world_vcpu() {
    use abi::vcpu::{off, state, trap};
    let mut m = machine(4 << 20);
    let v = m.thread(CapIdx(20), 1);
    m.op(
        wk::FACTORY,
        proto::factory::LABEL,
        &[0, Protocol::Task.label() as u64, 21, Fpage::memory(UTCB, 12, Rights::ALL).0],
    )
    .unwrap();
    let area_addr = UTCB + 3 * 1024;
    let control = proto::thread::Op::VcpuControl.code();
    // The regions must hold the state area and the UTCB, be aligned memory of 1 GiB to
    // 512 GiB in the user half, disjoint, and at most four.
    let slot255 = Fpage::memory(0x7f80_0000_0000, 39, Rights::ALL).0;
    let low = |i: u64| Fpage::memory(i << 30, 30, Rights::ALL).0;
    for bad in [
        vec![low(1)],
        vec![Fpage::memory(0x7fff_ffe0_0000, 29, Rights::ALL).0],
        vec![Fpage::memory(0x8000_0000_0000, 39, Rights::ALL).0],
        vec![slot255, Fpage::memory(0x7fc0_0000_0000, 30, Rights::ALL).0],
        vec![slot255, low(1), low(2), low(3), low(4)],
        vec![Fpage::object(CapIdx(1), 0, Rights::ALL).0],
    ] {
        let words: Vec<u64> = [control, area_addr].into_iter().chain(bad).collect();
        assert_eq!(m.op(CapIdx(20), proto::thread::LABEL, &words), Err(Error::Inval));
    }
    assert!(m.k.threads.get(v).unwrap().vcpu.is_none(), "a refused control changes nothing");
    m.op(CapIdx(20), proto::thread::LABEL, &[control, area_addr, slot255, low(511)]).unwrap();
    let a = m.k.threads.get(v).unwrap().vcpu.unwrap();
    let w = a.world.unwrap();
    let regions = crate::hal::GuestRegions::new(&[(0x7f80_0000_0000, 39), (511 << 30, 30)]).unwrap();
    assert_eq!((w.regions, w.task), (regions, None));
    let own_space = &m.k.tasks.get(m.k.current_task().unwrap()).unwrap().space;
    assert_eq!(own_space.guest, Some(regions), "the regions' tables are made in the vCPU's task");
    assert_eq!(own_space.world, Some((w.own_root, w.guest, regions)));
    assert_eq!(w.guest, Fake::space_root(own_space));
    assert_eq!(m.k.threads.get(v).unwrap().world_root, 0, "its first context runs as any thread's");
    let user = match m.k.cap(m.k.current_task().unwrap(), CapIdx(21)).unwrap().obj {
        Obj::Task(u) => u,
        _ => unreachable!(),
    };
    let resume = |m: &mut M, words: &[(usize, u64)]| {
        let mut w = [0u64; off::WORDS];
        Fake::read_words(a.frame, &mut w);
        for &(i, x) in words {
            w[i] = x;
        }
        Fake::write_words(a.frame, &w);
        m.set_mrs(v, &[proto::thread::Op::VcpuResume.code()]);
        m.sys(
            v,
            CapSel::from_idx(CapIdx(20)).raw() | Flags::CALL.bits(),
            MsgTag::new(proto::thread::LABEL, 1, 0, 0),
            0,
        )
    };
    // Into the user task: its world, at user level.
    let into_user = [
        (off::SAVED_STATE, state::USER_MODE),
        (off::USER_TASK, 21),
        (off::ENTRY_IP, 0x40_0000),
        (off::ENTRY_SP, 0x7000),
        (off::REGS + 15, 0x1000),
        (off::REGS + 16, 0x2000),
    ];
    resume(&mut m, &into_user);
    let user_world = m.k.tasks.get(user).unwrap().space.world.unwrap();
    assert_eq!(
        (user_world.1, user_world.2),
        (w.guest, regions),
        "the user task's world shows the guest's regions"
    );
    let t = m.k.threads.get_mut(v).unwrap();
    assert_eq!((t.vcpu_user, t.world_root, t.ctx.regs().guest), (Some(user), user_world.0, false));
    let exit = fake::WORLD.with(|x| x.get()).expect("the way out is the world's");
    assert_eq!((exit.root, exit.state, exit.utcb), (user_world.0, area_addr, UTCB + 1024));
    assert_eq!(exit.kernel_root, Fake::space_root(&m.k.tasks.get(user).unwrap().space));
    assert_eq!(
        (exit.resume_rdx, exit.resume_user),
        (CapSel::from_idx(CapIdx(20)).raw() | Flags::CALL.bits(), 21),
        "the trampoline may continue this user task"
    );
    // A system call of the user task that reached the kernel: an upcall at guest level, in the
    // same world.
    m.k.threads.get_mut(v).unwrap().ctx.regs().ip = 0x1002;
    assert_eq!(m.sys(v, 0, MsgTag::new(0, 0, 0, 0), 0), None);
    let t = m.k.threads.get_mut(v).unwrap();
    assert_eq!((t.vcpu_user, t.world_root, t.ctx.regs().guest), (None, user_world.0, true));
    assert_eq!((t.ctx.regs().ip(), t.ctx.regs().gpr[5]), (0x40_0000, area_addr));
    let mut words = [0u64; off::WORDS];
    Fake::read_words(a.frame, &mut words);
    assert_eq!((words[off::TRAPNO], words[off::REGS + 15]), (trap::SYSCALL, 0x1002));
    // The trampoline continued the user task without the kernel: the next entry, from user
    // level, puts the record right; one from guest level (a forwarded call) likewise.
    m.k.threads.get_mut(v).unwrap().ctx.regs().guest = false;
    m.k.current = Some(v);
    m.k.world_entry();
    assert_eq!(m.k.threads.get(v).unwrap().vcpu_user, Some(user));
    m.k.threads.get_mut(v).unwrap().ctx.regs().guest = true;
    m.k.world_entry();
    assert_eq!(m.k.threads.get(v).unwrap().vcpu_user, None);
    // Its own context (no USER_MODE) continues in its own task's world.
    resume(&mut m, &[(off::SAVED_STATE, 0), (off::REGS + 15, 0x3000), (off::REGS + 16, 0x4000)]);
    let own_root = Fake::space_root(&m.k.tasks.get(m.k.current_task().unwrap()).unwrap().space);
    let t = m.k.threads.get_mut(v).unwrap();
    assert_eq!((t.world_root, t.root, t.ctx.regs().guest, t.vcpu_user), (w.own_root, own_root, true, None));
    // The user task goes while the guest kernel runs in its world: back to its own.
    resume(&mut m, &into_user);
    assert_eq!(m.k.threads.get(v).unwrap().world_root, user_world.0);
    m.k.current = Some(m.root);
    m.op(
        wk::TASK,
        proto::task::LABEL,
        &[1, unmap_mask::DELETE_OBJ, Fpage::object(CapIdx(21), 0, Rights::ALL).0],
    )
    .unwrap();
    let t = m.k.threads.get_mut(v).unwrap();
    assert_eq!((t.world_root, t.root, t.vcpu_user, t.ctx.regs().guest), (w.own_root, own_root, None, true));
    Fake::read_words(a.frame, &mut words);
    assert_eq!(words[off::TRAPNO], trap::TASK_GONE);
    assert_eq!(m.k.self_check(), Ok(()));
}

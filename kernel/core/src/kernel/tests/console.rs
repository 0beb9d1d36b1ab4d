//! Console input and the terminal (`Log::Terminal` / `Log::Read`, the console's line).

use super::*;
use abi::utcb::{pack_bytes, unpack_bytes};

const LOG: i64 = proto::log::LABEL;
const TERMINAL: u64 = proto::log::Op::Terminal.code();
const READ: u64 = proto::log::Op::Read.code();
const WRITE: u64 = proto::log::Op::Write.code();
/// The fake architecture's console line.
const LINE: u8 = 4;

impl M {
    /// A kernel-object operation by thread `t` (of any task).
    fn op_by(&mut self, t: Id, cap: CapIdx, label: i64, words: &[u64]) -> Result<Vec<u64>, Error> {
        self.set_mrs(t, words);
        let (tag, _) = self
            .sys(
                t,
                CapSel::from_idx(cap).raw() | Flags::CALL.bits(),
                MsgTag::new(label, words.len() as u64, 0, 0),
                0,
            )
            .expect("kernel ops do not block");
        tag.result().map(|tag| self.mrs(t, tag.words()))
    }

    /// A second task called `name`, with one thread (capability at `slot + 1` in the root's
    /// table) and the kernel log at its `wk::LOG` with `log_rights`. Its capability is `slot`.
    fn other_task(&mut self, slot: CapIdx, name: &str, log_rights: Rights) -> (Id, Id) {
        let area = Fpage::memory(UTCB, 12, Rights::ALL).0;
        self.op(wk::FACTORY, proto::factory::LABEL, &[0, Protocol::Task.label() as u64, slot.0, area])
            .unwrap();
        let th = CapIdx(slot.0 + 1);
        self.op(wk::FACTORY, proto::factory::LABEL, &[0, Protocol::Thread.label() as u64, th.0]).unwrap();
        self.op(th, proto::thread::LABEL, &[0, tc::BIND_TASK, 0, 0, slot.0, UTCB]).unwrap();
        self.op(wk::SCHEDULER, proto::scheduler::LABEL, &[1, th.0, 10, 1, 0]).unwrap();
        self.map_cap(slot, wk::LOG, wk::LOG, log_rights);
        let mut w = [0u64; 5];
        let n = pack_bytes(name.as_bytes(), &mut w);
        let mut words = vec![proto::task::Op::SetName.code(), name.len() as u64];
        words.extend(&w[..n]);
        self.op(slot, proto::task::LABEL, &words).unwrap();
        let me = self.k.current_task().unwrap();
        match (self.k.cap(me, slot).unwrap().obj, self.k.cap(me, th).unwrap().obj) {
            (Obj::Task(t), Obj::Thread(x)) => (t, x),
            _ => unreachable!(),
        }
    }

    /// Maps the root's capability `from` into task `task` (a root slot) at `to`.
    fn map_cap(&mut self, task: CapIdx, from: CapIdx, to: CapIdx, rights: Rights) {
        let fp = Fpage::object(from, 0, rights).0;
        self.op(task, proto::task::LABEL, &[proto::task::Op::Map.code(), wk::TASK.0, fp, to.0 << 12])
            .unwrap();
    }

    /// A new Irq at `slot` attached to `thread` (a root slot) with `label`.
    fn irq(&mut self, slot: CapIdx, thread: CapIdx, label: u64) -> Id {
        self.op(wk::FACTORY, proto::factory::LABEL, &[0, Protocol::Irq.label() as u64, slot.0]).unwrap();
        self.op(slot, proto::irq::LABEL, &[proto::irq::Op::Attach.code(), thread.0, label]).unwrap();
        match self.k.cap(self.k.current_task().unwrap(), slot).unwrap().obj {
            Obj::Irq(i) => i,
            _ => unreachable!(),
        }
    }

    /// `Log::Write` of `text` by thread `t`.
    fn write_by(&mut self, t: Id, text: &str) {
        let mut w = [0u64; 16];
        let n = pack_bytes(text.as_bytes(), &mut w);
        let mut words = vec![WRITE, text.len() as u64];
        words.extend(&w[..n]);
        self.op_by(t, wk::LOG, LOG, &words).unwrap();
    }

    /// `Log::Read` by thread `t` (`max`: `MR[1]`, if any): the bytes.
    fn read_by(&mut self, t: Id, max: Option<u64>) -> Result<Vec<u8>, Error> {
        let words = match max {
            Some(m) => self.op_by(t, wk::LOG, LOG, &[READ, m])?,
            None => self.op_by(t, wk::LOG, LOG, &[READ])?,
        };
        let n = words[0] as usize;
        assert_eq!(words.len(), 1 + n.div_ceil(8), "the reply carries exactly the bytes");
        let mut bytes = vec![0u8; n];
        unpack_bytes(&words[1..], &mut bytes);
        Ok(bytes)
    }

    /// Input arrives at the console device and its line fires.
    fn type_in(&mut self, bytes: &[u8]) {
        fake::type_input(bytes);
        self.k.line_fired(LINE);
    }
}

#[test]
fn the_terminal_writes_raw_and_everyone_else_is_prefixed() {
    let mut m = machine(4 << 20);
    let root = m.root;
    let (_, shell) = m.other_task(CapIdx(20), "shell", Rights::RW);
    m.write_by(root, "before\n");
    m.write_by(shell, "prompt\n");
    assert!(fake::console().ends_with("task: before\nshell: prompt\n"), "{:?}", fake::console());
    assert_eq!(m.op_by(shell, wk::LOG, LOG, &[TERMINAL, 0]), Ok(vec![]));
    m.write_by(shell, "$ ls\r\nfoo\n\nbar");
    m.write_by(root, "kernel test\n");
    m.write_by(shell, "$ ");
    assert_eq!(fake::raw(), "$ ls\r\nfoo\n\nbar$ ", "the terminal's bytes, exactly");
    assert!(
        fake::console().ends_with("shell: prompt\n$ ls\r\nfoo\n\nbartask: kernel test\n$ "),
        "{:?}",
        fake::console()
    );
    // The role is the first holder's while its task lives; it may change its Irq.
    assert_eq!(m.op(wk::LOG, LOG, &[TERMINAL, 0]), Err(Error::Exists));
    assert_eq!(m.op(wk::LOG, LOG, &[TERMINAL, proto::TERMINAL_RELEASE]), Err(Error::Perm));
    assert_eq!(m.op_by(shell, wk::LOG, LOG, &[TERMINAL, 0]), Ok(vec![]), "again: still the terminal");
    assert_eq!(m.op_by(shell, wk::LOG, LOG, &[TERMINAL, 77]), Err(Error::NoEnt), "no Irq in that slot");
    assert_eq!(m.op_by(shell, wk::LOG, LOG, &[TERMINAL, wk::LOG.0]), Err(Error::Inval), "not an Irq");
    assert_eq!(m.op_by(shell, wk::LOG, LOG, &[TERMINAL]), Err(Error::Inval), "MR[1] is needed");
    // Released, it is prefixed again (from the next line on) and another task may take over.
    assert_eq!(m.op_by(shell, wk::LOG, LOG, &[TERMINAL, proto::TERMINAL_RELEASE]), Ok(vec![]));
    m.write_by(shell, "\nexit\n");
    assert!(fake::console().ends_with("$ \nshell: exit\n"), "{:?}", fake::console());
    assert_eq!(m.op(wk::LOG, LOG, &[TERMINAL, 0]), Ok(vec![]));
    m.write_by(root, "raw now\n");
    assert!(fake::raw().ends_with("$ raw now\n"));
    // Taking the role changes console state: it needs W on the Log capability.
    let (_, reader) = m.other_task(CapIdx(30), "ro", Rights::R);
    assert_eq!(m.op(wk::LOG, LOG, &[TERMINAL, proto::TERMINAL_RELEASE]), Ok(vec![]));
    assert_eq!(m.op_by(reader, wk::LOG, LOG, &[TERMINAL, 0]), Err(Error::Perm));
    assert_eq!(m.k.console.terminal, None);
    assert_eq!(m.k.self_check(), Ok(()));
}

#[test]
fn the_terminal_reads_buffered_input_and_its_irq_marks_new_input() {
    let mut m = machine(4 << 20);
    let root = m.root;
    let waiter = m.thread(CapIdx(20), 1);
    let irq = m.irq(CapIdx(21), CapIdx(20), 0x7e);
    // Input before there is a terminal waits in the kernel; the line is open again at once.
    m.type_in(b"early\n");
    assert_eq!(fake::unmasked(), vec![LINE], "the kernel unmasks its console line itself");
    assert_eq!(m.k.console.waiting(), 6);
    assert_eq!(m.read_by(root, None), Err(Error::Perm), "only the terminal reads");
    // Taking the role with input waiting triggers the Irq at once.
    assert_eq!(m.wait(waiter, 0), None);
    assert_eq!(m.op(wk::LOG, LOG, &[TERMINAL, 21]), Ok(vec![]));
    assert_eq!(m.woke_with(waiter), (MsgTag::new(proto::irq::LABEL, 0, 0, 0), 0x7e));
    assert_eq!(m.read_by(root, None), Ok(b"early\n".to_vec()));
    assert_eq!(m.read_by(root, None), Ok(vec![]), "nothing left: 0, without blocking");
    // New input triggers it; a line firing without input does not.
    assert_eq!(m.wait(waiter, 0), None);
    m.type_in(b"");
    assert!(matches!(m.k.threads.get(waiter).unwrap().state, ThreadState::Receiving(Wait::Open)));
    assert!(!m.k.irqs.get(irq).unwrap().pending);
    m.type_in(b"ls -l\r");
    assert_eq!(m.woke_with(waiter).1, 0x7e);
    assert_eq!(fake::unmasked(), vec![LINE; 3]);
    // MR[1] limits a read; the rest stays for the next one.
    assert_eq!(m.read_by(root, Some(2)), Ok(b"ls".to_vec()));
    assert_eq!(m.read_by(root, Some(0)), Ok(vec![]));
    assert_eq!(m.read_by(root, Some(u64::MAX)), Ok(b" -l\r".to_vec()));
    // Input while nobody waits leaves the Irq pending, as for any interrupt.
    m.type_in(b"x");
    assert!(m.k.irqs.get(irq).unwrap().pending);
    assert_eq!(m.wait(waiter, 0).map(|r| r.1), Some(0x7e));
    // More than a device read at a time (the kernel drains all of it), more than one Read.
    let long: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
    m.type_in(&long);
    let mut got = m.read_by(root, None).unwrap();
    assert_eq!(got.len(), proto::LOG_READ_MAX, "a read returns what fits in the MRs");
    while let Ok(more) = m.read_by(root, None) {
        if more.is_empty() {
            break;
        }
        got.extend(more);
    }
    assert_eq!(got[0], b'x');
    assert_eq!(&got[1..], &long[..]);
    // A non-terminal still cannot read.
    let (_, other) = m.other_task(CapIdx(30), "other", Rights::RW);
    m.type_in(b"secret");
    assert_eq!(m.read_by(other, None), Err(Error::Perm));
    assert_eq!(m.k.console.waiting(), 6);
    assert_eq!(m.k.self_check(), Ok(()));
}

#[test]
fn console_input_beyond_the_buffer_drops_the_newest_bytes() {
    let mut m = machine(4 << 20);
    let root = m.root;
    let first: Vec<u8> = (0..proto::CONSOLE_INPUT_BUFFER).map(|i| (i % 251) as u8).collect();
    m.type_in(&first);
    m.type_in(b"lost");
    assert_eq!(fake::CONSOLE_IN.with(|c| c.borrow().len()), 0, "the device is drained even so");
    assert_eq!((m.k.console.waiting(), m.k.console.dropped), (proto::CONSOLE_INPUT_BUFFER, 4));
    assert_eq!(m.op(wk::LOG, LOG, &[TERMINAL, 0]), Ok(vec![]));
    let mut got = Vec::new();
    loop {
        let b = m.read_by(root, None).unwrap();
        if b.is_empty() {
            break;
        }
        got.extend(b);
    }
    assert_eq!(got, first, "the oldest bytes are kept");
    m.type_in(b"room again");
    assert_eq!(m.read_by(root, None), Ok(b"room again".to_vec()));
    assert_eq!(m.k.console.dropped, 4);
}

#[test]
fn deleting_the_terminal_task_or_its_irq_leaves_nothing_dangling() {
    let mut m = machine(4 << 20);
    let (task, shell) = m.other_task(CapIdx(20), "shell", Rights::RW);
    let irq = m.irq(CapIdx(22), CapIdx(21), 1);
    m.map_cap(CapIdx(20), CapIdx(22), CapIdx(40), Rights::RW);
    assert_eq!(m.op_by(shell, wk::LOG, LOG, &[TERMINAL, 40]), Ok(vec![]));
    assert_eq!(m.k.console.terminal, Some(crate::kernel::console::Terminal { task, irq: Some(irq) }));
    // The task goes: the role with it; the Irq (the root still has it) is untouched.
    let del = |slot: u64| {
        [proto::task::Op::Unmap.code(), unmap_mask::DELETE_OBJ, Fpage::object(CapIdx(slot), 0, Rights::ALL).0]
    };
    m.op(wk::TASK, proto::task::LABEL, &del(20)).unwrap();
    assert!(m.k.tasks.get(task).is_none());
    assert_eq!(m.k.console.terminal, None, "a dead task is no terminal");
    assert_eq!(m.k.self_check(), Ok(()));
    m.type_in(b"after\n");
    assert!(m.k.irqs.get(irq).is_some_and(|i| !i.pending), "nobody to tell");
    // The root takes over (input typed meanwhile still waits); then its Irq is deleted.
    let waiter = m.thread(CapIdx(23), 2);
    let irq2 = m.irq(CapIdx(24), CapIdx(23), 2);
    assert_eq!(m.op(wk::LOG, LOG, &[TERMINAL, 24]), Ok(vec![]));
    assert!(m.k.irqs.get(irq2).unwrap().pending, "triggered at once for the waiting input");
    assert_eq!(m.wait(waiter, 0).map(|r| r.1), Some(2));
    m.op(wk::TASK, proto::task::LABEL, &del(24)).unwrap();
    assert!(m.k.irqs.get(irq2).is_none());
    assert_eq!(m.k.console.terminal.map(|t| t.irq), Some(None), "still the terminal, without an Irq");
    assert_eq!(m.k.self_check(), Ok(()));
    m.type_in(b"more");
    assert_eq!(m.read_by(m.root, None), Ok(b"after\nmore".to_vec()));
}

#[test]
fn the_console_line_is_the_kernels() {
    let mut m = machine(4 << 20);
    let root_task = m.k.current_task().unwrap();
    m.k.install_cap(root_task, wk::ICU, Obj::Icu, Rights::RW).unwrap();
    let waiter = m.thread(CapIdx(20), 1);
    m.irq(CapIdx(21), CapIdx(20), 3);
    let icu = proto::icu::LABEL;
    let bind = proto::icu::Op::Bind.code();
    assert_eq!(m.op(wk::ICU, icu, &[bind, LINE as u64, 21]), Err(Error::Exists), "the console's line");
    assert_eq!(m.op(wk::ICU, icu, &[proto::icu::Op::Unbind.code(), LINE as u64]), Err(Error::NoEnt));
    assert_eq!(m.k.lines[LINE as usize], None);
    assert_eq!(m.op(wk::ICU, icu, &[bind, 3, 21]), Ok(vec![]), "other lines bind as before");
    // The console line fires: input is buffered; the Irq bound to line 3 hears nothing of it.
    assert_eq!(m.wait(waiter, 0), None);
    m.type_in(b"k");
    assert!(matches!(m.k.threads.get(waiter).unwrap().state, ThreadState::Receiving(Wait::Open)));
    assert_eq!(m.k.console.waiting(), 1);
    m.k.line_fired(3);
    assert_eq!(m.woke_with(waiter).1, 3);
}

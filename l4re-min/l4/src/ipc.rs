//! IPC and kernel-object stubs. Each stub puts its opcode and arguments into the message
//! registers as `abi::proto` documents them and makes one `invoke`.

use crate::sys::{call_words, invoke_full, invoke_regs, utcb};
use abi::proto::{self, fpage::Fpage, Protocol};
use abi::syscall::{Flags, REG_WORDS};
use abi::utcb::{pack_bytes, unpack_bytes, MR_COUNT};
use abi::{CapIdx, CapSel, Error, MsgTag};

/// Message register `i` of this thread.
pub fn mr(i: usize) -> u64 {
    // SAFETY: this thread's UTCB is mapped read-write for its lifetime; the index is bounded
    // by the array.
    unsafe { (*utcb()).mr[i] }
}

/// Puts a string in the MRs from `at` on as length, then bytes packed little-endian; returns
/// how many MRs it took. [`get_str`] reads it back.
pub fn set_str(at: usize, s: &str) -> usize {
    let mut words = [0u64; MR_COUNT];
    let n = pack_bytes(s.as_bytes(), &mut words[..MR_COUNT - 1 - at]);
    set_mr(at, s.len() as u64);
    for (i, &w) in words[..n].iter().enumerate() {
        set_mr(at + 1 + i, w);
    }
    1 + n
}

/// The string [`set_str`] put at `at`, if the message's `words` hold it, it is at most `max`
/// bytes and valid UTF-8; copied into `buf`.
pub fn get_str(at: usize, words: usize, max: usize, buf: &mut [u8]) -> Option<&str> {
    let len = mr(at) as usize;
    if len > max || len > buf.len() || words < at + 1 + len.div_ceil(8) {
        return None;
    }
    let mut packed = [0u64; MR_COUNT];
    for (i, w) in packed[..len.div_ceil(8)].iter_mut().enumerate() {
        *w = mr(at + 1 + i);
    }
    unpack_bytes(&packed, &mut buf[..len]);
    core::str::from_utf8(&buf[..len]).ok()
}

pub fn set_mr(i: usize, v: u64) {
    // SAFETY: as in `mr`.
    unsafe { (*utcb()).mr[i] = v };
}

/// Buffer register `i` (`BR[0]` is the receive window for map items).
pub fn set_br(i: usize, v: u64) {
    // SAFETY: as in `mr`.
    unsafe { (*utcb()).br[i] = v };
}

/// Calls and kernel operations: a negative reply label is an error.
fn ipc(sel: CapSel, flags: Flags, tag: MsgTag, timeouts: u64) -> Result<(MsgTag, u64), Error> {
    let (t, label) = invoke_full(sel, flags, tag, timeouts);
    t.result().map(|t| (t, label))
}

/// Receives: only a failed IPC is an error; requests may carry negative protocol labels.
fn recv(sel: CapSel, flags: Flags, tag: MsgTag, timeouts: u64) -> Result<(MsgTag, u64), Error> {
    let (t, label) = invoke_full(sel, flags, tag, timeouts);
    t.ipc_result().map(|t| (t, label))
}

/// Call: send through `gate`, then wait for the reply. Returns the reply tag.
pub fn call(gate: CapIdx, tag: MsgTag, timeouts: u64) -> Result<MsgTag, Error> {
    ipc(CapSel::from_idx(gate), Flags::CALL, tag, timeouts).map(|(t, _)| t)
}

/// Send only.
pub fn send(gate: CapIdx, tag: MsgTag, timeouts: u64) -> Result<(), Error> {
    ipc(CapSel::from_idx(gate), Flags::SEND, tag, timeouts).map(|_| ())
}

/// Open wait: the next message (or interrupt). Returns its tag and label.
pub fn wait(timeouts: u64) -> Result<(MsgTag, u64), Error> {
    recv(CapSel::INVALID, Flags::RECV | Flags::OPEN_WAIT, MsgTag::new(0, 0, 0, 0), timeouts)
}

/// Closed receive: the next message from the thread, or the interrupt, `from` names.
pub fn receive(from: CapIdx, timeouts: u64) -> Result<(MsgTag, u64), Error> {
    recv(CapSel::from_idx(from), Flags::RECV, MsgTag::new(0, 0, 0, 0), timeouts)
}

/// Reply to the last caller, then open wait.
pub fn reply_and_wait(tag: MsgTag, timeouts: u64) -> Result<(MsgTag, u64), Error> {
    recv(CapSel::INVALID, Flags::SEND | Flags::RECV | Flags::OPEN_WAIT | Flags::REPLY, tag, timeouts)
}

/// A server's loop: hands each received message (or receive error) to `handle`, which returns
/// the reply — or `None` for a message that wants none (then we just wait for the next).
pub fn server_loop(mut handle: impl FnMut(Result<(MsgTag, u64), Error>) -> Option<MsgTag>) -> ! {
    let mut msg = wait(0);
    loop {
        msg = match handle(msg) {
            Some(reply) => reply_and_wait(reply, 0),
            None => wait(0),
        };
    }
}

/// The words of a short message received with tag `t`: the registers `w` if it came in them,
/// else the UTCB's first message registers (`abi::syscall::REG_WORDS` of them).
#[inline]
pub fn short_words(t: MsgTag, w: [u64; REG_WORDS]) -> [u64; REG_WORDS] {
    if t.in_regs() {
        w
    } else {
        utcb_words(t)
    }
}

/// The first words of a message received in the UTCB (out of line: the register case is the
/// one to keep small).
#[inline(never)]
fn utcb_words(t: MsgTag) -> [u64; REG_WORDS] {
    core::array::from_fn(|i| if i < t.words() { mr(i) } else { 0 })
}

/// The register message with `words` (at most `abi::syscall::REG_WORDS`) and `label`.
#[inline]
fn short(label: i64, words: &[u64]) -> (MsgTag, [u64; REG_WORDS]) {
    assert!(words.len() <= REG_WORDS, "a register message has at most {REG_WORDS} words");
    let mut w = [0; REG_WORDS];
    w[..words.len()].copy_from_slice(words);
    (MsgTag::new(label, words.len() as u64, 0, MsgTag::REGS), w)
}

/// Call with a short message in registers (at most `abi::syscall::REG_WORDS` words): on the
/// kernel's fast path neither UTCB is touched. Returns the reply tag and its first words,
/// wherever they came (the tag's `words` says how many are valid).
#[inline]
pub fn call_short(gate: CapIdx, label: i64, words: &[u64]) -> Result<(MsgTag, [u64; REG_WORDS]), Error> {
    let (tag, w) = short(label, words);
    let (t, _, w) = invoke_regs(CapSel::from_idx(gate), Flags::CALL, tag, 0, w);
    let t = t.result()?;
    Ok((t, short_words(t, w)))
}

/// A request of [`server_loop_short`]: its tag, label and first words (wherever they came).
pub type ShortRequest = Result<(MsgTag, u64, [u64; REG_WORDS]), Error>;

/// [`server_loop`] for short messages: `handle` gets each request's first words and returns
/// the reply's label and words (at most `abi::syscall::REG_WORDS`), sent in registers.
pub fn server_loop_short<const N: usize>(
    mut handle: impl FnMut(ShortRequest) -> Option<(i64, [u64; N])>,
) -> ! {
    let recv = |flags: Flags, tag: MsgTag, w| -> ShortRequest {
        let (t, label, w) = invoke_regs(CapSel::INVALID, flags, tag, 0, w);
        let t = t.ipc_result()?;
        Ok((t, label, short_words(t, w)))
    };
    let wait = Flags::RECV | Flags::OPEN_WAIT;
    let mut msg = recv(wait, MsgTag::new(0, 0, 0, 0), [0; REG_WORDS]);
    loop {
        msg = match handle(msg) {
            Some((label, words)) => {
                let (tag, w) = short(label, &words);
                recv(wait | Flags::SEND | Flags::REPLY, tag, w)
            }
            None => recv(wait, MsgTag::new(0, 0, 0, 0), [0; REG_WORDS]),
        };
    }
}

/// Reply to the last caller.
pub fn reply(tag: MsgTag) -> Result<(), Error> {
    recv(CapSel::INVALID, Flags::SEND | Flags::REPLY, tag, 0).map(|_| ())
}

/// A map item in MR[`at`], MR[`at`+1].
pub fn put_map_item(at: usize, snd_base: u64, fp: Fpage, grant: bool) {
    set_mr(at, (snd_base & !0xfff) | proto::map::ITEM | if grant { proto::map::GRANT } else { 0 });
    set_mr(at + 1, fp.0);
}

fn results<const N: usize>() -> [u64; N] {
    core::array::from_fn(mr)
}

pub mod task {
    use super::*;
    use proto::task::{Op, LABEL};

    /// Maps `fp` of task `src` into task `dst` at `snd_base` (| `map::GRANT`).
    pub fn map(dst: CapIdx, src: CapIdx, fp: Fpage, snd_base: u64) -> Result<(), Error> {
        call_words(dst, LABEL, &[Op::Map.code(), src.0, fp.0, snd_base]).map(|_| ())
    }

    /// Unmaps flexpages of `task` with `mask` (`fpage::unmap_mask`).
    pub fn unmap(task: CapIdx, mask: u64, fps: &[Fpage]) -> Result<(), Error> {
        let mut w = [0u64; 16];
        w[0] = Op::Unmap.code();
        w[1] = mask;
        for (i, f) in fps.iter().take(14).enumerate() {
            w[2 + i] = f.0;
        }
        call_words(task, LABEL, &w[..2 + fps.len().min(14)]).map(|_| ())
    }

    /// (protocol label, rights) of slot `idx` of `task`; label 0 for an empty slot.
    pub fn cap_info(task: CapIdx, idx: CapIdx) -> Result<(i64, u64), Error> {
        call_words(task, LABEL, &[Op::CapInfo.code(), idx.0])?;
        let [l, r] = results::<2>();
        Ok((l as i64, r))
    }

    /// Whether our slots `a` and `b` name the same object.
    pub fn cap_equal(task: CapIdx, a: CapIdx, b: CapIdx) -> Result<bool, Error> {
        call_words(task, LABEL, &[Op::CapEqual.code(), a.0, b.0])?;
        Ok(mr(0) == 1)
    }

    /// Names `task` in kernel messages (log prefix, fault reports).
    pub fn set_name(task: CapIdx, name: &str) -> Result<(), Error> {
        if name.is_empty() || name.len() > proto::TASK_NAME_MAX {
            return Err(Error::Inval);
        }
        set_mr(0, Op::SetName.code());
        let words = set_str(1, name);
        call(task, MsgTag::new(LABEL, 1 + words as u64, 0, 0), 0).map(|_| ())
    }
}

pub mod thread {
    use super::*;
    use proto::thread::{Op, LABEL};

    pub fn control(
        thread: CapIdx,
        flags: u64,
        pager: CapIdx,
        exc: CapIdx,
        task: CapIdx,
        utcb: u64,
    ) -> Result<(), Error> {
        call_words(thread, LABEL, &[Op::Control.code(), flags, pager.0, exc.0, task.0, utcb]).map(|_| ())
    }

    /// Sets ip and sp (`u64::MAX`: unchanged); returns the old (ip, sp, flags).
    pub fn ex_regs(thread: CapIdx, ip: u64, sp: u64, flags: u64) -> Result<[u64; 3], Error> {
        call_words(thread, LABEL, &[Op::ExRegs.code(), ip, sp, flags])?;
        Ok(results::<3>())
    }
}

pub mod factory {
    use super::*;
    use proto::factory::{Op, LABEL};

    fn create(f: CapIdx, kind: Protocol, slot: CapIdx, args: &[u64]) -> Result<(), Error> {
        let mut w = [0u64; 5];
        w[0] = Op::Create.code();
        w[1] = kind.label() as u64;
        w[2] = slot.0;
        w[3..3 + args.len()].copy_from_slice(args);
        call_words(f, LABEL, &w[..3 + args.len()]).map(|_| ())
    }

    /// A task whose UTCB area is `utcb_area` (a memory flexpage of 4..64 KiB).
    pub fn task(f: CapIdx, slot: CapIdx, utcb_area: Fpage) -> Result<(), Error> {
        create(f, Protocol::Task, slot, &[utcb_area.0])
    }

    pub fn thread(f: CapIdx, slot: CapIdx) -> Result<(), Error> {
        create(f, Protocol::Thread, slot, &[])
    }

    /// An IPC gate bound to `thread` (slot 0: unbound) with `label`.
    pub fn gate(f: CapIdx, slot: CapIdx, thread: CapIdx, label: u64) -> Result<(), Error> {
        create(f, Protocol::IpcGate, slot, &[thread.0, label])
    }

    pub fn irq(f: CapIdx, slot: CapIdx) -> Result<(), Error> {
        create(f, Protocol::Irq, slot, &[])
    }

    pub fn semaphore(f: CapIdx, slot: CapIdx, count: u64) -> Result<(), Error> {
        create(f, Protocol::Semaphore, slot, &[count])
    }

    /// A factory with `quota` bytes, carved out of `f`'s.
    pub fn factory(f: CapIdx, slot: CapIdx, quota: u64) -> Result<(), Error> {
        create(f, Protocol::Factory, slot, &[quota])
    }
}

pub mod gate {
    use super::*;
    use proto::ipc_gate::{Op, LABEL};

    pub fn bind(gate: CapIdx, thread: CapIdx, label: u64) -> Result<(), Error> {
        call_words(gate, LABEL, &[Op::Bind.code(), thread.0, label]).map(|_| ())
    }

    /// (label, bound).
    pub fn info(gate: CapIdx) -> Result<(u64, bool), Error> {
        call_words(gate, LABEL, &[Op::GetInfo.code()])?;
        let [l, b] = results::<2>();
        Ok((l, b != 0))
    }

    /// Triggers `irq` when only one capability to `gate` is left (ours: the client's copy went);
    /// `None` stops watching. Call it after handing out the client's copy.
    pub fn watch(gate: CapIdx, irq: Option<CapIdx>) -> Result<(), Error> {
        call_words(gate, LABEL, &[Op::Watch.code(), irq.map_or(0, |c| c.0)]).map(|_| ())
    }
}

pub mod irq {
    use super::*;
    use proto::irq::{Op, LABEL};

    pub fn attach(irq: CapIdx, thread: CapIdx, label: u64) -> Result<(), Error> {
        call_words(irq, LABEL, &[Op::Attach.code(), thread.0, label]).map(|_| ())
    }

    pub fn detach(irq: CapIdx) -> Result<(), Error> {
        call_words(irq, LABEL, &[Op::Detach.code()]).map(|_| ())
    }

    pub fn trigger(irq: CapIdx) -> Result<(), Error> {
        call_words(irq, LABEL, &[Op::Trigger.code()]).map(|_| ())
    }

    pub fn unmask(irq: CapIdx) -> Result<(), Error> {
        call_words(irq, LABEL, &[Op::Unmask.code()]).map(|_| ())
    }
}

pub mod semaphore {
    use super::*;
    use proto::semaphore::{Op, LABEL};

    pub fn up(s: CapIdx) -> Result<(), Error> {
        call_words(s, LABEL, &[Op::Up.code()]).map(|_| ())
    }

    /// Waits for the count to become positive (receive timeout of `timeouts`).
    pub fn down(s: CapIdx, timeouts: u64) -> Result<(), Error> {
        set_mr(0, Op::Down.code());
        ipc(CapSel::from_idx(s), Flags::CALL, MsgTag::new(LABEL, 1, 0, 0), timeouts).map(|_| ())
    }
}

pub mod scheduler {
    use super::*;
    use proto::scheduler::{Op, LABEL};

    /// (CPU mask, highest priority).
    pub fn info(s: CapIdx) -> Result<(u64, u64), Error> {
        call_words(s, LABEL, &[Op::Info.code()])?;
        let [c, p] = results::<2>();
        Ok((c, p))
    }

    pub fn run_thread(s: CapIdx, thread: CapIdx, prio: u8, cpus: u64, slice_us: u64) -> Result<(), Error> {
        call_words(s, LABEL, &[Op::RunThread.code(), thread.0, prio as u64, cpus, slice_us]).map(|_| ())
    }
}

pub mod icu {
    use super::*;
    use proto::icu::{Op, LABEL};

    pub fn bind(icu: CapIdx, line: u64, irq: CapIdx) -> Result<(), Error> {
        call_words(icu, LABEL, &[Op::Bind.code(), line, irq.0]).map(|_| ())
    }

    pub fn unbind(icu: CapIdx, line: u64) -> Result<(), Error> {
        call_words(icu, LABEL, &[Op::Unbind.code(), line]).map(|_| ())
    }

    pub fn info(icu: CapIdx) -> Result<u64, Error> {
        call_words(icu, LABEL, &[Op::Info.code()])?;
        Ok(mr(0))
    }
}

/// The sigma0 protocol as our pager (slot 4) serves it: sigma0 itself, or a root task that
/// lends memory the same way.
pub mod sigma0 {
    use super::*;
    use proto::{
        event,
        sigma0::{REQ_ANY, REQ_RESERVE},
    };

    /// 2^`order` bytes of zeroed memory, mapped at `at` (aligned to its size) in our space.
    pub fn any(at: u64, order: u32) -> Result<(), Error> {
        set_br(0, Fpage::memory(at, order, abi::Rights::ALL).0);
        set_mr(0, REQ_ANY);
        set_mr(1, order as u64);
        call(abi::cap::well_known::PAGER, MsgTag::new(event::SIGMA0, 2, 0, 0), 0).map(|_| ())
    }

    /// `[start, end)` of our space (page aligned) charged to our quota now and backed with
    /// zeroed memory where we first touch it (`REQ_RESERVE`).
    pub fn reserve(start: u64, end: u64) -> Result<(), Error> {
        call_words(abi::cap::well_known::PAGER, event::SIGMA0, &[REQ_RESERVE, start, end]).map(|_| ())
    }
}

pub mod namespace {
    use super::*;
    use proto::namespace::{FILE, LABEL, NAME_MAX, QUERY, REGISTER};

    /// Asks the namespace `ns` for the capability called `name`; it lands in our slot `into`.
    pub fn query(ns: CapIdx, name: &str, into: CapIdx) -> Result<(), Error> {
        if name.len() > NAME_MAX {
            return Err(Error::Inval);
        }
        set_br(0, Fpage::object(into, 0, abi::Rights::ALL).0);
        set_mr(0, QUERY);
        let words = set_str(1, name);
        call(ns, MsgTag::new(LABEL, 1 + words as u64, 0, 0), 0).map(|_| ())
    }

    /// Publishes our capability `cap` under `name` (the script says we provide it).
    pub fn register(ns: CapIdx, name: &str, cap: CapIdx) -> Result<(), Error> {
        if name.len() > NAME_MAX {
            return Err(Error::Inval);
        }
        set_mr(0, REGISTER);
        let words = set_str(1, name);
        put_map_item(1 + words, 0, Fpage::object(cap, 0, abi::Rights::R | abi::Rights::S), false);
        call(ns, MsgTag::new(LABEL, 1 + words as u64, 1, 0), 0).map(|_| ())
    }

    /// Boot module `name` (the script's `file NAME`): its size, and with `at` a private copy
    /// of its bytes `[offset, offset + 2^order)` mapped at `at` (aligned to that size).
    pub fn file(ns: CapIdx, name: &str, offset: u64, at: Option<(u64, u32)>) -> Result<u64, Error> {
        if name.len() > NAME_MAX {
            return Err(Error::Inval);
        }
        let (window, order) = at.map_or((0, 12), |(a, o)| (Fpage::memory(a, o, abi::Rights::ALL).0, o));
        set_br(0, window);
        set_mr(0, FILE);
        set_mr(1, if at.is_some() { offset } else { u64::MAX });
        set_mr(2, order as u64);
        let words = set_str(3, name);
        call(ns, MsgTag::new(LABEL, 3 + words as u64, 0, 0), 0)?;
        Ok(mr(0))
    }
}

/// Dataspaces (`abi::proto::dataspace`): memory from the root task, shared by capability.
pub mod ds {
    use super::*;
    use proto::dataspace::{LABEL, MAP, READ_ONLY, SIZE};

    /// A new zeroed dataspace of `size` bytes (our namespace's `ALLOC`, within our quota); its
    /// read-write capability lands in `into`.
    pub fn alloc(size: u64, into: CapIdx) -> Result<(), Error> {
        set_br(0, Fpage::object(into, 0, abi::Rights::ALL).0);
        set_mr(0, proto::namespace::ALLOC);
        set_mr(1, size);
        call(abi::cap::well_known::NAMESPACE, MsgTag::new(proto::namespace::LABEL, 2, 0, 0), 0).map(|_| ())
    }

    pub fn size(ds: CapIdx) -> Result<u64, Error> {
        set_mr(0, SIZE);
        call(ds, MsgTag::new(LABEL, 1, 0, 0), 0)?;
        Ok(mr(0))
    }

    /// The page at byte `offset` of `ds`, mapped at `at` in our space.
    pub fn map(ds: CapIdx, offset: u64, at: u64) -> Result<(), Error> {
        set_br(0, Fpage::memory(at, 12, abi::Rights::ALL).0);
        set_mr(0, MAP);
        set_mr(1, offset);
        call(ds, MsgTag::new(LABEL, 2, 0, 0), 0).map(|_| ())
    }

    /// A new dataspace (within our quota) with a copy of `ds`'s contents; its read-write
    /// capability lands in `into`.
    pub fn copy(ds: CapIdx, into: CapIdx) -> Result<(), Error> {
        set_br(0, Fpage::object(into, 0, abi::Rights::ALL).0);
        set_mr(0, proto::namespace::COPY);
        put_map_item(1, 0, Fpage::object(ds, 0, abi::Rights::R | abi::Rights::S), false);
        call(abi::cap::well_known::NAMESPACE, MsgTag::new(proto::namespace::LABEL, 1, 1, 0), 0).map(|_| ())
    }

    /// A read-only capability to the same dataspace, into `into`.
    pub fn read_only(ds: CapIdx, into: CapIdx) -> Result<(), Error> {
        set_br(0, Fpage::object(into, 0, abi::Rights::ALL).0);
        set_mr(0, READ_ONLY);
        call(ds, MsgTag::new(LABEL, 1, 0, 0), 0).map(|_| ())
    }
}

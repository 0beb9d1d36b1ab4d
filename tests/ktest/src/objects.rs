//! `ktest objects`: every kernel object and opcode, with success and error paths. Runs with
//! sigma0 in the boot image. Each check prints `<name> ok`; the first failure ends the run.

use abi::cap::well_known as wk;
use abi::kip::BOOT_UTCB_ADDR;
use abi::proto::{self, fpage::unmap_mask, fpage::Fpage, thread_control as tc, Protocol};
use abi::syscall::timeout;
use abi::utcb::UTCB_SIZE;
use abi::{CapIdx, Error, MsgTag, Rights};
use core::sync::atomic::{AtomicU64, Ordering};
use l4::ipc::{self, factory, gate, icu, irq, mr, scheduler, semaphore, set_br, set_mr, task, thread};
use l4::println;

pub type R = Result<(), &'static str>;

/// Fails with `what` unless `cond`.
pub fn check(cond: bool, what: &'static str) -> R {
    if cond {
        Ok(())
    } else {
        println!("check failed: {what}");
        Err(what)
    }
}

/// Fails unless `r` is exactly the error `e`.
pub fn expect_err<T: core::fmt::Debug>(r: Result<T, Error>, e: Error, what: &'static str) -> R {
    if matches!(&r, Err(x) if *x == e) {
        Ok(())
    } else {
        println!("{what}: got {r:?}, want Err({e:?})");
        Err(what)
    }
}

/// Turns a kernel error into a test failure naming the step.
pub fn ok<T>(r: Result<T, Error>, what: &'static str) -> Result<T, &'static str> {
    r.map_err(|e| {
        println!("{what}: unexpected {e:?}");
        what
    })
}

/// Capability slots this test uses.
pub mod slot {
    use abi::CapIdx;
    pub const SEM: CapIdx = CapIdx(20);
    pub const GATE: CapIdx = CapIdx(21);
    pub const SERVER: CapIdx = CapIdx(22);
    pub const IRQ: CapIdx = CapIdx(23);
    pub const SMALL_FACTORY: CapIdx = CapIdx(24);
    pub const TASK_B: CapIdx = CapIdx(25);
    pub const THREAD_B: CapIdx = CapIdx(26);
    pub const GATE_B: CapIdx = CapIdx(27);
    pub const SCRATCH: CapIdx = CapIdx(28);
    pub const CTL_RO: CapIdx = CapIdx(41);
    pub const LOG_COPY: CapIdx = CapIdx(42);
    pub const LOG_COPY2: CapIdx = CapIdx(43);
    pub const EXC_THREAD: CapIdx = CapIdx(44);
    pub const EXC_HANDLER: CapIdx = CapIdx(45);
    pub const EXC_GATE: CapIdx = CapIdx(46);
    pub const VICTIM: CapIdx = CapIdx(47);
    pub const VICTIM_GATE: CapIdx = CapIdx(48);
    pub const CLIENT: CapIdx = CapIdx(49);
    pub const SHORT_SERVER: CapIdx = CapIdx(50);
    pub const SHORT_GATE: CapIdx = CapIdx(51);
}

/// A stack for a helper thread, in .bss (shared with any task the image is mapped into).
#[repr(C, align(16))]
pub struct Stack(pub [u8; 16384]);

pub static mut STACKS: [Stack; 8] = [const { Stack([0; 16384]) }; 8];

/// The top of helper stack `i` (only the address is taken; each helper owns its stack).
pub fn stack_top(i: usize) -> u64 {
    let base = &raw const STACKS as u64;
    base + (i as u64 + 1) * core::mem::size_of::<Stack>() as u64 - 8
}

/// Creates a thread in task `task_cap` with the UTCB at `utcb`, starting at `f` on stack `i`.
pub fn spawn(
    slot: CapIdx,
    task_cap: CapIdx,
    utcb: u64,
    f: extern "C" fn() -> !,
    stack: usize,
    prio: u8,
) -> R {
    ok(factory::thread(wk::FACTORY, slot), "create thread")?;
    ok(thread::control(slot, tc::BIND_TASK, CapIdx(0), CapIdx(0), task_cap, utcb), "bind thread")?;
    ok(thread::ex_regs(slot, f as *const () as u64, stack_top(stack), 0), "ex_regs")?;
    ok(scheduler::run_thread(wk::SCHEDULER, slot, prio, 1, 0), "run_thread")
}

fn utcb(n: u64) -> u64 {
    BOOT_UTCB_ADDR + n * UTCB_SIZE as u64
}

/// An echo server: replies to every call with MR0 + 1 and the label it saw in MR1.
/// [`echo_server`] with register messages (`MsgTag::REGS`): answers MR0 + 1 and the label.
pub extern "C" fn echo_server_short() -> ! {
    ipc::server_loop_short(|msg| {
        Some(match msg {
            Ok((_, label, w)) => (0, [w[0] + 1, label]),
            Err(_) => (0, [0, 0]),
        })
    })
}

pub extern "C" fn echo_server() -> ! {
    ipc::server_loop(|msg| {
        Some(match msg {
            Ok((_, label)) => {
                let v = mr(0);
                set_mr(0, v + 1);
                set_mr(1, label);
                MsgTag::new(0, 2, 0, 0)
            }
            Err(_) => MsgTag::new(0, 0, 0, 0),
        })
    })
}

fn sigma0() -> R {
    set_mr(0, proto::sigma0::REQ_INFO);
    let t = ok(ipc::call(wk::PAGER, MsgTag::new(proto::event::SIGMA0, 1, 0, 0), 0), "sigma0 info")?;
    check(t.words() == 1 && mr(0) > 1 << 20, "sigma0 reports free memory")?;
    // A 16 KiB block into a receive window at 0x1000_0000.
    set_br(0, Fpage::memory(0x1000_0000, 14, Rights::ALL).0);
    set_mr(0, proto::sigma0::REQ_ANY);
    set_mr(1, 14);
    ok(ipc::call(wk::PAGER, MsgTag::new(proto::event::SIGMA0, 2, 0, 0), 0), "sigma0 any")?;
    let p = 0x1000_3000 as *mut u64;
    // SAFETY: sigma0 just mapped 16 KiB at 0x1000_0000 into this task.
    unsafe { p.write_volatile(0x5a5a) };
    // SAFETY: as above.
    check(unsafe { p.read_volatile() } == 0x5a5a, "memory from sigma0 is usable")?;
    set_mr(0, proto::sigma0::REQ_ANY);
    set_mr(1, 40);
    expect_err(
        ipc::call(wk::PAGER, MsgTag::new(proto::event::SIGMA0, 2, 0, 0), 0),
        Error::Inval,
        "sigma0 bad order",
    )?;
    // A page fault on fresh address space is served by sigma0 (our pager).
    let q = 0x2000_0008 as *const u64;
    // SAFETY: the access faults; sigma0 maps a zeroed page and the access is retried.
    check(unsafe { q.read_volatile() } == 0, "page fault served with a zero page")?;
    println!("sigma0 and page faults ok");
    Ok(())
}

/// A 2 MiB block from sigma0 (aligned and contiguous: the kernel maps it with one large page)
/// keeps every page's contents when one page loses its write right and another is unmapped;
/// only the unmapped one faults anew (and sigma0 serves a zero page there).
fn large_pages() -> R {
    const AT: u64 = 0x1200_0000;
    const PAGES: u64 = 512;
    ok(l4::ipc::sigma0::any(AT, 21), "2 MiB from sigma0")?;
    let word = |i: u64| (AT + i * 4096) as *mut u64;
    for i in 0..PAGES {
        // SAFETY: sigma0 mapped the block at AT into this task; nothing else refers to it.
        unsafe { word(i).write_volatile(i + 1) };
    }
    let page = |i: u64, r: u8| Fpage::memory(AT + i * 4096, 12, Rights::from_bits_truncate(r));
    let (w, all) = (proto::fpage::mem_rights::W, Rights::ALL.bits());
    ok(task::unmap(wk::TASK, unmap_mask::ALL_SPACES, &[page(9, w)]), "take the write right of a page")?;
    ok(task::unmap(wk::TASK, unmap_mask::ALL_SPACES, &[page(5, all)]), "unmap a page")?;
    // SAFETY: as above; page 5 faults and sigma0 maps a zero page there.
    let kept = (0..PAGES).filter(|i| *i != 5).all(|i| unsafe { word(i).read_volatile() } == i + 1);
    check(kept, "the other pages of the block keep their contents")?;
    // SAFETY: as above.
    check(unsafe { word(5).read_volatile() } == 0, "the unmapped page is gone")?;
    println!("2 MiB pages ok");
    Ok(())
}

/// The boot image is mapped into boot tasks and lists this program with its arguments.
fn boot_image() -> R {
    let img = l4::sys::boot_image().ok_or("no boot image mapped")?;
    let me = img.modules().flatten().find(|m| m.name == "ktest");
    check(me.is_some_and(|m| m.args == "objects" && m.data.starts_with(b"\x7fELF")), "boot image lists us")?;
    check(img.modules().flatten().any(|m| m.name == "sigma0"), "and sigma0")?;
    println!("boot image visible ok ({} modules)", img.len());
    Ok(())
}

fn factory_and_caps() -> R {
    use factory as f;
    ok(f::semaphore(wk::FACTORY, slot::SEM, 0), "create semaphore")?;
    let (label, rights) = ok(task::cap_info(wk::TASK, slot::SEM), "cap_info")?;
    check(
        label == Protocol::Semaphore.label() && rights == Rights::ALL.bits() as u64,
        "cap_info of semaphore",
    )?;
    check(ok(task::cap_info(wk::TASK, CapIdx(999)), "cap_info empty")?.0 == 0, "empty slot has no object")?;
    expect_err(f::semaphore(wk::FACTORY, CapIdx(0), 0), Error::Inval, "create into slot 0")?;
    expect_err(
        l4::sys::call_words(wk::FACTORY, proto::factory::LABEL, &[0, Protocol::Log.label() as u64, 30]),
        Error::Inval,
        "create a kernel singleton",
    )?;
    expect_err(
        l4::sys::call_words(wk::FACTORY, proto::factory::LABEL, &[0, 12345, 30]),
        Error::Inval,
        "create unknown kind",
    )?;
    expect_err(f::semaphore(wk::LOG, slot::SCRATCH, 0), Error::BadProto, "factory op on the log")?;
    // Quotas: a small factory cannot pay for a thread; a factory cannot give more than it has.
    ok(f::factory(wk::FACTORY, slot::SMALL_FACTORY, 1000), "create small factory")?;
    expect_err(f::thread(slot::SMALL_FACTORY, slot::SCRATCH), Error::NoMem, "thread beyond quota")?;
    ok(f::gate(slot::SMALL_FACTORY, slot::SCRATCH, CapIdx(0), 0), "gate within quota")?;
    expect_err(f::factory(slot::SMALL_FACTORY, CapIdx(29), 1 << 40), Error::NoMem, "factory beyond quota")?;
    // Rights: a read-only copy of platform control cannot shut down; a log copy can print.
    let ro = Fpage::object(wk::PLATFORM_CTL, 0, Rights::R);
    ok(task::map(wk::TASK, wk::TASK, ro, slot::CTL_RO.0 << 12), "map ctl read-only")?;
    check(
        ok(task::cap_info(wk::TASK, slot::CTL_RO), "cap_info ro")?.1 == Rights::R.bits() as u64,
        "rights reduced",
    )?;
    expect_err(
        l4::sys::call_words(slot::CTL_RO, proto::platform_ctl::LABEL, &[0, 5]),
        Error::Perm,
        "shutdown without W",
    )?;
    ok(
        task::map(wk::TASK, wk::TASK, Fpage::object(wk::LOG, 0, Rights::ALL), slot::LOG_COPY.0 << 12),
        "map log",
    )?;
    ok(
        task::map(wk::TASK, wk::TASK, Fpage::object(slot::LOG_COPY, 0, Rights::ALL), slot::LOG_COPY2.0 << 12),
        "map copy",
    )?;
    ok(l4::sys::call_words(slot::LOG_COPY2, 0, &[0, 0]), "log through a derived capability")?;
    // Revoking the first copy takes the derived one with it, but not the copy itself.
    ok(
        task::unmap(wk::TASK, unmap_mask::OTHER_SPACES, &[Fpage::object(slot::LOG_COPY, 0, Rights::ALL)]),
        "revoke",
    )?;
    check(ok(task::cap_info(wk::TASK, slot::LOG_COPY2), "info")?.0 == 0, "derived capability revoked")?;
    check(ok(task::cap_info(wk::TASK, slot::LOG_COPY), "info")?.0 != 0, "revoked capability itself stays")?;
    ok(
        task::unmap(wk::TASK, unmap_mask::ALL_SPACES, &[Fpage::object(slot::LOG_COPY, 0, Rights::ALL)]),
        "unmap",
    )?;
    check(ok(task::cap_info(wk::TASK, slot::LOG_COPY), "info")?.0 == 0, "unmapped capability gone")?;
    expect_err(task::map(wk::TASK, wk::LOG, ro, 50 << 12), Error::Inval, "map from a non-task")?;
    expect_err(l4::sys::call_words(wk::TASK, proto::task::LABEL, &[9]), Error::NoSys, "bad task opcode")?;
    println!("factory, quotas, capability rights and revocation ok");
    Ok(())
}

fn semaphores() -> R {
    ok(semaphore::up(slot::SEM), "up")?;
    ok(semaphore::down(slot::SEM, timeout::pack(timeout::NEVER, timeout::ZERO)), "down after up")?;
    expect_err(
        semaphore::down(slot::SEM, timeout::pack(0, timeout::ZERO)),
        Error::Timeout,
        "down, zero timeout",
    )?;
    let t0 = l4::sys::cycles();
    expect_err(semaphore::down(slot::SEM, timeout::pack(0, 20_000)), Error::Timeout, "down, 20 ms timeout")?;
    let ms = (l4::sys::cycles() - t0) / (l4::kip().tsc_hz / 1000);
    check((19..200).contains(&ms), "relative timeout took about 20 ms")?;
    println!("semaphore and timeouts ok ({ms} ms)");
    Ok(())
}

fn ipc_intra() -> R {
    spawn(slot::SERVER, wk::TASK, utcb(1), echo_server, 0, 100)?;
    expect_err(
        thread::control(slot::SERVER, tc::BIND_TASK, CapIdx(0), CapIdx(0), wk::TASK, utcb(2)),
        Error::Exists,
        "bind a bound thread",
    )?;
    ok(factory::gate(wk::FACTORY, slot::GATE, slot::SERVER, 0x1234), "create gate")?;
    check(ok(gate::info(slot::GATE), "gate info")? == (0x1234, true), "gate info")?;
    set_mr(0, 41);
    let t = ok(ipc::call(slot::GATE, MsgTag::new(7, 1, 0, 0), 0), "call")?;
    if !(t.words() == 2 && mr(0) == 42 && mr(1) == 0x1234) {
        println!("echo reply: {t:?} mr0={} mr1={:#x}", mr(0), mr(1));
    }
    check(t.words() == 2 && mr(0) == 42 && mr(1) == 0x1234, "echo reply with the gate label")?;
    ok(factory::gate(wk::FACTORY, slot::SCRATCH, CapIdx(0), 0), "unbound gate")?;
    expect_err(ipc::call(slot::SCRATCH, MsgTag::new(1, 0, 0, 0), 0), Error::NoEnt, "call an unbound gate")?;
    expect_err(gate::bind(slot::SCRATCH, wk::LOG, 1), Error::Inval, "bind a gate to a non-thread")?;
    expect_err(thread::ex_regs(wk::TASK, 0, 0, 0), Error::BadProto, "thread op on a task")?;
    expect_err(
        scheduler::run_thread(wk::SCHEDULER, slot::SERVER, 1, 0b10, 0),
        Error::Inval,
        "CPU set without CPU 0",
    )?;
    expect_err(ipc::reply(MsgTag::new(0, 0, 0, 0)), Error::NoEnt, "reply without a caller")?;
    // A thread that never waits: sends time out.
    ok(factory::thread(wk::FACTORY, slot::VICTIM), "idle thread")?;
    ok(factory::gate(wk::FACTORY, slot::VICTIM_GATE, slot::VICTIM, 0), "gate to idle thread")?;
    expect_err(
        ipc::call(slot::VICTIM_GATE, MsgTag::new(1, 0, 0, 0), timeout::pack(timeout::ZERO, 0)),
        Error::Timeout,
        "send with zero timeout",
    )?;
    expect_err(
        ipc::call(slot::VICTIM_GATE, MsgTag::new(1, 0, 0, 0), timeout::pack(5_000, 0)),
        Error::Timeout,
        "send with 5 ms timeout",
    )?;
    expect_err(ipc::call(slot::GATE, MsgTag::new(1, 62, 1, 0), 0), Error::MsgTooLong, "message too long")?;
    // A map item to a receiver that opened no receive window.
    set_mr(0, 1);
    l4::ipc::put_map_item(1, 0, Fpage::object(wk::LOG, 0, Rights::R), false);
    expect_err(ipc::call(slot::GATE, MsgTag::new(1, 1, 1, 0), 0), Error::MsgTooLong, "no receive window")?;
    let (mask, prio) = ok(scheduler::info(wk::SCHEDULER), "scheduler info")?;
    check(mask == 1 && prio == 255, "scheduler info")?;
    register_messages()?;
    println!("intra-task IPC, gates, errors ok");
    Ok(())
}

/// Register messages (`MsgTag::REGS`) through the fast path and the general path, to servers
/// reading their requests from registers or from the UTCB, to a kernel object, and malformed.
fn register_messages() -> R {
    use abi::syscall::{Flags, REG_WORDS};
    use l4::sys::invoke_regs;
    let regs = |label, n| MsgTag::new(label, n, 0, MsgTag::REGS);
    // To the UTCB echo server: its stub finds the words in its UTCB, its reply comes there.
    let (t, w) = ok(ipc::call_short(slot::GATE, 7, &[41]), "register call to a UTCB server")?;
    check(t.words() == 2 && w[..2] == [42, 0x1234], "register request, UTCB reply")?;
    spawn(slot::SHORT_SERVER, wk::TASK, utcb(3), echo_server_short, 2, 100)?;
    ok(factory::gate(wk::FACTORY, slot::SHORT_GATE, slot::SHORT_SERVER, 0x5678), "short gate")?;
    // Registers both ways (the fast path), and what a register reply does to a UTCB caller.
    for i in 0..3 {
        let (t, w) = ok(ipc::call_short(slot::SHORT_GATE, 7, &[40 + i]), "register call")?;
        check(t.in_regs() && t.words() == 2 && w[..2] == [41 + i, 0x5678], "register request and reply")?;
    }
    set_mr(0, 9);
    let t = ok(ipc::call(slot::SHORT_GATE, MsgTag::new(7, 1, 0, 0), 0), "UTCB call to a register server")?;
    check(
        !t.in_regs() && t.words() == 2 && mr(0) == 10 && mr(1) == 0x5678,
        "UTCB request, reply put in the UTCB",
    )?;
    // A send timeout takes the general path, which reads the words from the registers too.
    let gate = abi::CapSel::from_idx(slot::SHORT_GATE);
    let (t, _, w) = invoke_regs(gate, Flags::CALL, regs(7, 1), timeout::pack(1_000_000, 0), [70, 0, 0, 0]);
    let t = ok(t.result(), "register call, general path")?;
    check(t.words() == 2 && ipc::short_words(t, w)[..2] == [71, 0x5678], "register call, general path")?;
    // Too many words, or a typed item: refused.
    let (t, _, _) = invoke_regs(gate, Flags::CALL, regs(7, REG_WORDS as u64 + 1), 0, [0; REG_WORDS]);
    expect_err(t.result(), Error::Inval, "register message of five words")?;
    let (t, _, _) = invoke_regs(gate, Flags::CALL, MsgTag::new(7, 0, 1, MsgTag::REGS), 0, [0; REG_WORDS]);
    expect_err(t.result(), Error::Inval, "register message with an item")?;
    // A kernel object reads the words as its message registers.
    let info = [abi::proto::ipc_gate::Op::GetInfo.code(), 0, 0, 0];
    let (t, _, _) = invoke_regs(gate, Flags::CALL, regs(abi::proto::ipc_gate::LABEL, 1), 0, info);
    ok(t.result(), "gate info by a register message")?;
    check(mr(0) == 0x5678 && mr(1) == 1, "gate info by a register message")?;
    ok(
        task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &[Fpage::object(slot::SHORT_SERVER, 0, Rights::ALL)]),
        "delete the register server",
    )?;
    Ok(())
}

fn irqs() -> R {
    ok(factory::irq(wk::FACTORY, slot::IRQ), "create irq")?;
    ok(irq::attach(slot::IRQ, wk::THREAD, 0x77), "attach")?;
    ok(irq::trigger(slot::IRQ), "trigger")?;
    let (t, label) = ok(ipc::wait(timeout::pack(0, timeout::ZERO)), "receive pending irq")?;
    check(t.label() == proto::irq::LABEL && label == 0x77, "irq message and label")?;
    expect_err(ipc::wait(timeout::pack(0, timeout::ZERO)), Error::Timeout, "no second irq")?;
    ok(irq::detach(slot::IRQ), "detach")?;
    ok(irq::trigger(slot::IRQ), "trigger detached")?;
    expect_err(ipc::wait(timeout::pack(0, timeout::ZERO)), Error::Timeout, "detached irq not delivered")?;
    ok(irq::attach(slot::IRQ, wk::THREAD, 0x78), "re-attach delivers the pending one")?;
    check(ok(ipc::wait(timeout::pack(0, timeout::ZERO)), "pending after attach")?.1 == 0x78, "label")?;
    ok(irq::unmask(slot::IRQ), "unmask")?;
    // Closed receive: of two pending interrupts, only the one asked for.
    ok(factory::irq(wk::FACTORY, CapIdx(36)), "second irq")?;
    ok(irq::attach(CapIdx(36), wk::THREAD, 0x79), "attach second")?;
    ok(irq::trigger(CapIdx(36)), "trigger second")?;
    ok(irq::trigger(slot::IRQ), "trigger first")?;
    check(
        ok(ipc::receive(slot::IRQ, timeout::pack(0, timeout::ZERO)), "receive first")?.1 == 0x78,
        "closed receive",
    )?;
    check(
        ok(ipc::wait(timeout::pack(0, timeout::ZERO)), "then the other")?.1 == 0x79,
        "open wait takes the rest",
    )?;
    expect_err(ipc::receive(slot::IRQ, timeout::pack(0, timeout::ZERO)), Error::Timeout, "nothing left")?;
    expect_err(ipc::receive(wk::LOG, 0), Error::Inval, "receive from a non-partner")?;
    check(ok(icu::info(wk::ICU), "icu info")? == 16, "16 lines")?;
    expect_err(icu::bind(wk::ICU, 4, slot::IRQ), Error::Exists, "bind the console's line (the kernel's)")?;
    ok(icu::bind(wk::ICU, 3, slot::IRQ), "bind line 3")?;
    expect_err(icu::bind(wk::ICU, 3, slot::IRQ), Error::Exists, "bind twice")?;
    expect_err(icu::bind(wk::ICU, 0, slot::IRQ), Error::Inval, "bind the timer line")?;
    expect_err(icu::bind(wk::ICU, 99, slot::IRQ), Error::Inval, "bind a missing line")?;
    ok(icu::unbind(wk::ICU, 3), "unbind")?;
    expect_err(icu::unbind(wk::ICU, 3), Error::NoEnt, "unbind twice")?;
    ok(irq::detach(slot::IRQ), "detach again")?;
    println!("irq and icu ok");
    Ok(())
}

static EXC_SEEN: AtomicU64 = AtomicU64::new(0);

/// Receives exceptions and resumes the thread after its 2-byte `ud2`.
extern "C" fn exc_handler() -> ! {
    ipc::server_loop(|msg| {
        Some(match msg {
            Ok((t, _)) if t.label() == proto::event::EXCEPTION => {
                EXC_SEEN.store(mr(proto::exc_regs::TRAPNO), Ordering::SeqCst);
                set_mr(proto::exc_regs::IP, mr(proto::exc_regs::IP) + 2);
                set_mr(proto::exc_regs::RAX, 0xfeed);
                MsgTag::new(0, proto::exc_regs::WORDS as u64, 0, 0)
            }
            _ => MsgTag::new(0, 0, 0, 0),
        })
    })
}

static EXC_RESULT: AtomicU64 = AtomicU64::new(0);

extern "C" fn faulting_thread() -> ! {
    let rax: u64;
    // SAFETY: ud2 raises #UD; the exception handler skips it and sets rax.
    unsafe { core::arch::asm!("xor eax, eax", "ud2", out("rax") rax) };
    EXC_RESULT.store(rax, Ordering::SeqCst);
    let _ = semaphore::up(slot::SEM);
    loop {
        let _ = ipc::wait(0);
    }
}

fn exceptions() -> R {
    spawn(slot::EXC_HANDLER, wk::TASK, utcb(2), exc_handler, 1, 110)?;
    ok(factory::gate(wk::FACTORY, slot::EXC_GATE, slot::EXC_HANDLER, 9), "exception gate")?;
    ok(factory::thread(wk::FACTORY, slot::EXC_THREAD), "create faulting thread")?;
    ok(
        thread::control(
            slot::EXC_THREAD,
            tc::BIND_TASK | tc::SET_EXC_HANDLER,
            CapIdx(0),
            slot::EXC_GATE,
            wk::TASK,
            utcb(3),
        ),
        "bind with exception handler",
    )?;
    ok(thread::ex_regs(slot::EXC_THREAD, faulting_thread as *const () as u64, stack_top(2), 0), "ex_regs")?;
    ok(scheduler::run_thread(wk::SCHEDULER, slot::EXC_THREAD, 90, 1, 0), "run")?;
    ok(semaphore::down(slot::SEM, timeout::pack(0, 1_000_000)), "faulting thread continues")?;
    check(EXC_SEEN.load(Ordering::SeqCst) == 6, "handler saw #UD")?;
    check(EXC_RESULT.load(Ordering::SeqCst) == 0xfeed, "registers from the reply applied")?;
    println!("exception IPC ok");
    Ok(())
}

static CLIENT_RESULT: AtomicU64 = AtomicU64::new(0);

/// Receives one call and never replies.
extern "C" fn black_hole() -> ! {
    let _ = ipc::wait(0);
    loop {
        let _ = semaphore::down(CapIdx(31), 0);
    }
}

extern "C" fn client() -> ! {
    let r = ipc::call(slot::VICTIM_GATE, MsgTag::new(1, 0, 0, 0), 0);
    CLIENT_RESULT.store(if r == Err(Error::Canceled) { 1 } else { 2 }, Ordering::SeqCst);
    let _ = semaphore::up(slot::SEM);
    loop {
        let _ = ipc::wait(0);
    }
}

fn deletion() -> R {
    ok(factory::semaphore(wk::FACTORY, CapIdx(31), 0), "never-up semaphore")?;
    ok(
        task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &[Fpage::object(slot::VICTIM, 0, Rights::ALL)]),
        "delete",
    )?;
    check(ok(task::cap_info(wk::TASK, slot::VICTIM), "info")?.0 == 0, "deleted thread's capability gone")?;
    check(!ok(gate::info(slot::VICTIM_GATE), "gate info")?.1, "gate of a deleted thread is unbound")?;
    // A server that dies while a client waits for its reply: the client gets an error.
    spawn(slot::VICTIM, wk::TASK, utcb(4), black_hole, 3, 100)?;
    ok(gate::bind(slot::VICTIM_GATE, slot::VICTIM, 5), "rebind gate")?;
    spawn(slot::CLIENT, wk::TASK, utcb(5), client, 4, 100)?;
    // Let both run: the client's call reaches the black hole, which keeps it.
    expect_err(semaphore::down(CapIdx(31), timeout::pack(0, 20_000)), Error::Timeout, "let them run")?;
    ok(
        task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &[Fpage::object(slot::VICTIM, 0, Rights::ALL)]),
        "kill server",
    )?;
    ok(semaphore::down(slot::SEM, timeout::pack(0, 1_000_000)), "client woke")?;
    check(CLIENT_RESULT.load(Ordering::SeqCst) == 1, "client got Canceled from its dead partner")?;
    expect_err(semaphore::up(slot::VICTIM), Error::NoEnt, "invoke a deleted object")?;
    println!("deletion wakes partners ok");
    Ok(())
}

static FPU_GOOD: AtomicU64 = AtomicU64::new(0);
static FPU_NEXT: AtomicU64 = AtomicU64::new(1);
const FPU_SLEEP: CapIdx = CapIdx(32);
const FPU_DONE: CapIdx = CapIdx(33);

fn xmm0_set(v: u64) {
    // SAFETY: writes only xmm0, which the compiler does not use (soft-float target).
    unsafe { core::arch::asm!("movq xmm0, {}", in(reg) v, out("xmm0") _) };
}

fn xmm0_get() -> u64 {
    let v: u64;
    // SAFETY: reads xmm0 only.
    unsafe { core::arch::asm!("movq {}, xmm0", out(reg) v) };
    v
}

/// Keeps a value of its own in xmm0 across 10 sleeps, while other threads do the same.
extern "C" fn fpu_worker() -> ! {
    let v = 0x5151_0000_0000_0000 | FPU_NEXT.fetch_add(1, Ordering::SeqCst);
    let mut good = true;
    for _ in 0..10 {
        xmm0_set(v);
        let _ = semaphore::down(FPU_SLEEP, timeout::pack(0, 1000));
        good &= xmm0_get() == v;
    }
    if good {
        FPU_GOOD.fetch_add(1, Ordering::SeqCst);
    }
    let _ = semaphore::up(FPU_DONE);
    loop {
        let _ = ipc::wait(0);
    }
}

/// Each thread's SSE registers survive switches to other threads that use them too.
fn fpu() -> R {
    ok(factory::semaphore(wk::FACTORY, FPU_SLEEP, 0), "sleep")?;
    ok(factory::semaphore(wk::FACTORY, FPU_DONE, 0), "done")?;
    spawn(CapIdx(34), wk::TASK, utcb(6), fpu_worker, 6, 100)?;
    spawn(CapIdx(35), wk::TASK, utcb(7), fpu_worker, 7, 100)?;
    let mine = 0x7777_0000_0000_0001;
    xmm0_set(mine);
    for _ in 0..2 {
        ok(semaphore::down(FPU_DONE, timeout::pack(0, 2_000_000)), "worker finished")?;
    }
    check(xmm0_get() == mine, "our xmm0 survived")?;
    check(FPU_GOOD.load(Ordering::SeqCst) == 2, "each worker's xmm0 survived")?;
    println!("FPU/SSE state per thread ok");
    Ok(())
}

/// Runs every check; prints the summary marker on success.
pub fn run() -> R {
    sigma0()?;
    large_pages()?;
    boot_image()?;
    factory_and_caps()?;
    semaphores()?;
    ipc_intra()?;
    irqs()?;
    exceptions()?;
    deletion()?;
    fpu()?;
    crate::intertask::run()?;
    crate::intertask::io_ports()?;
    println!("all kernel object checks passed");
    Ok(())
}

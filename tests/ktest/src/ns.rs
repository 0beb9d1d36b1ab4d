//! `ktest ns-server` / `ktest ns-client`: two programs the root task (moe) starts from a boot
//! script. Each holds only its namespace and the log; everything else it asks for by name, so
//! the pair checks the script's wiring end to end: the server binds the gate the script calls
//! `hello`, the client calls it, and only the client was granted `platform` to power off.
//! `ktest log-proxy` stands in for the kernel log of another program (interposition).

use crate::objects::{check, echo_server, expect_err, ok, R};
use abi::cap::well_known as wk;
use abi::proto::log;
use abi::syscall::timeout;
use abi::utcb::{unpack_bytes, MR_COUNT};
use abi::{CapIdx, Error, MsgTag};
use l4::ipc::{self, gate, mr, namespace, set_mr};
use l4::println;

const HELLO: CapIdx = CapIdx(20);
const SCRATCH: CapIdx = CapIdx(21);
const LOGS: CapIdx = CapIdx(22);

pub fn server() -> R {
    ok(namespace::query(wk::NAMESPACE, "hello", HELLO), "query hello")?;
    // The server holds no platform capability: the script did not grant one.
    expect_err(namespace::query(wk::NAMESPACE, "platform", SCRATCH), Error::NoEnt, "platform withheld")?;
    ok(gate::bind(HELLO, wk::THREAD, 7), "bind hello")?;
    println!("serving `hello`");
    echo_server()
}

pub fn client() -> R {
    ok(namespace::query(wk::NAMESPACE, "hello", HELLO), "query hello")?;
    expect_err(namespace::query(wk::NAMESPACE, "nosuch", SCRATCH), Error::NoEnt, "unknown name")?;
    let long = "x".repeat(abi::proto::namespace::NAME_MAX + 1);
    expect_err(namespace::query(wk::NAMESPACE, &long, SCRATCH), Error::Inval, "overlong name")?;
    // A client may call through the gate but not bind it.
    check(gate::bind(HELLO, wk::THREAD, 1).is_err(), "a client cannot bind the gate")?;
    // The server may not have bound the gate yet: an unbound gate answers NoEnt.
    let mut tries = 0;
    let reply = loop {
        set_mr(0, 41);
        match ipc::call(HELLO, MsgTag::new(0, 1, 0, 0), 0) {
            Err(Error::NoEnt) if tries < 1000 => {
                tries += 1;
                // Nobody sends to us: a 1 ms open wait is a sleep.
                let _ = ipc::wait(timeout::pack(timeout::NEVER, 1000));
            }
            r => break ok(r, "call hello")?,
        }
    };
    check(reply.words() == 2 && mr(0) == 42 && mr(1) == 7, "echo through the named gate")?;
    println!("hello answered 42");
    ok(namespace::query(wk::NAMESPACE, "platform", wk::PLATFORM_CTL), "query platform")?;
    Ok(())
}

/// Lines holding this word do not get through the proxy.
const FILTERED: &[u8] = b"secret";

/// Serves the Log protocol on the gate the script calls `logs`: whole lines of the client go
/// to our own log with a `[client]` tag, except lines with a filtered word, which are counted.
pub fn log_proxy() -> R {
    ok(namespace::query(wk::NAMESPACE, "logs", LOGS), "query logs")?;
    ok(gate::bind(LOGS, wk::THREAD, 1), "bind logs")?;
    println!("standing in for the log");
    let mut line = [0u8; 160];
    let mut n = 0;
    ipc::server_loop(|msg| {
        Some(match msg {
            Ok((tag, _))
                if tag.label() == log::LABEL && tag.words() >= 2 && mr(0) == log::Op::Write.code() =>
            {
                let len = mr(1) as usize;
                if len > (tag.words() - 2) * 8 {
                    MsgTag::error(Error::Inval)
                } else {
                    // Copy the message out first: printing reuses our message registers.
                    let mut words = [0u64; MR_COUNT];
                    for (i, w) in words.iter_mut().enumerate().take(len.div_ceil(8)) {
                        *w = mr(2 + i);
                    }
                    let mut bytes = [0u8; MR_COUNT * 8];
                    unpack_bytes(&words, &mut bytes[..len]);
                    for &b in &bytes[..len] {
                        if b != b'\n' && n < line.len() {
                            line[n] = b;
                            n += 1;
                        }
                        if b == b'\n' || n == line.len() {
                            forward(&line[..n]);
                            n = 0;
                        }
                    }
                    MsgTag::new(0, 0, 0, 0)
                }
            }
            Ok(_) => MsgTag::error(Error::BadProto),
            Err(_) => MsgTag::error(Error::Inval),
        })
    })
}

fn forward(line: &[u8]) {
    if line.windows(FILTERED.len()).any(|w| w == FILTERED) {
        println!("dropped a line of [client] (it mentions a secret)");
    } else {
        println!("[client] {}", core::str::from_utf8(line).unwrap_or("(not UTF-8)"));
    }
}

/// Allocates until the heap says no (the script gave us a small quota); returns the exit status.
pub fn hog() -> i32 {
    const BLOCK: usize = 256 << 10;
    let mut blocks: alloc::vec::Vec<alloc::vec::Vec<u8>> = alloc::vec::Vec::with_capacity(256);
    loop {
        let mut v = alloc::vec::Vec::new();
        if v.try_reserve_exact(BLOCK).is_err() {
            break;
        }
        // Fresh memory from our pager must not show an earlier program's bytes (a hog before
        // us filled its blocks with 0xa5): probe one word per page before writing.
        if (0..BLOCK / 4096).any(|p| probe(v.as_ptr() as u64 + p as u64 * 4096) != 0) {
            println!("FAILED: lent memory was not zeroed");
            return 1;
        }
        v.resize(BLOCK, 0xa5);
        blocks.push(v);
        if blocks.len() == blocks.capacity() {
            println!("FAILED: 64 MiB and no limit");
            return 1;
        }
    }
    println!("allocation refused after {} KiB", blocks.len() * BLOCK / 1024);
    // What we hold is intact, and freed memory serves again.
    let intact = blocks.iter().all(|b| b.iter().all(|&x| x == 0xa5));
    blocks.pop();
    let mut again = alloc::vec::Vec::<u8>::new();
    if !intact || again.try_reserve_exact(BLOCK).is_err() {
        println!("FAILED: memory lost after the refusal");
        return 1;
    }
    0
}

/// `ktest reserve` (under moe, quota 2 MiB): moe's `sigma0::REQ_RESERVE`, which L4Linux's RAM
/// uses: bad ranges and ranges beyond the quota refused, one range per program, each page zero
/// at its first touch (a page fault moe answers) and keeping what is written.
pub fn reserve() -> R {
    use l4::ipc::sigma0;
    const AT: u64 = 0x50_0000_0000;
    const LEN: u64 = 1 << 20;
    expect_err(sigma0::reserve(AT, AT + (8 << 20)), Error::NoMem, "a range beyond the quota")?;
    expect_err(sigma0::reserve(AT + 1, AT + 4096), Error::Inval, "an unaligned range")?;
    expect_err(sigma0::reserve(AT, AT), Error::Inval, "an empty range")?;
    expect_err(sigma0::reserve(AT, abi::kip::USER_END + 4096), Error::Inval, "a range beyond user space")?;
    ok(sigma0::reserve(AT, AT + LEN), "reserve 1 MiB")?;
    expect_err(sigma0::reserve(AT + LEN, AT + 2 * LEN), Error::Exists, "a second range")?;
    for p in (AT..AT + LEN).step_by(4096) {
        check(probe(p) == 0, "reserved memory not zero at its first touch")?;
        // SAFETY: the page is ours (reserved, backed by the probe's fault) and nothing else
        // refers to it.
        unsafe { (p as *mut u64).write_volatile(p) };
    }
    check((AT..AT + LEN).step_by(4096).all(|p| probe(p) == p), "a reserved page lost what was written")?;
    println!("reserve ok: 1 MiB backed on first touch");
    Ok(())
}

/// Reads the word at `addr` without Rust's rules on uninitialized memory (the asm is opaque).
fn probe(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: callers pass addresses of memory the heap just reserved for them (mapped).
    unsafe { core::arch::asm!("mov {}, [{}]", out(reg) v, in(reg) addr, options(nostack, readonly)) };
    v
}

/// `ktest provider`: publishes a gate of its own under the provided name `svc` at run time, and
/// serves it; a name it does not provide is refused.
pub fn provider() -> R {
    const SVC: CapIdx = CapIdx(23);
    ok(namespace::query(wk::NAMESPACE, "factory", wk::FACTORY), "query factory")?;
    ok(l4::ipc::factory::gate(wk::FACTORY, SVC, wk::THREAD, 9), "make the gate")?;
    expect_err(
        namespace::register(wk::NAMESPACE, "other", SVC),
        Error::Perm,
        "register a name not provided",
    )?;
    ok(namespace::register(wk::NAMESPACE, "svc", SVC), "register svc")?;
    println!("serving `svc`");
    echo_server()
}

/// `ktest consumer`: asks for `svc` until its provider registered it, then calls it.
pub fn consumer() -> R {
    let mut waited = 0;
    loop {
        match namespace::query(wk::NAMESPACE, "svc", SCRATCH) {
            Ok(()) => break,
            Err(Error::NoEnt) if waited < 500 => {
                if waited == 0 {
                    println!("`svc` is not registered yet");
                }
                waited += 1;
                let _ = ipc::wait(timeout::pack(0, 10_000));
            }
            Err(_) => return Err("`svc` never registered"),
        }
    }
    ok(namespace::query(wk::NAMESPACE, "platform", wk::PLATFORM_CTL), "query platform")?;
    set_mr(0, 41);
    ok(ipc::call(SCRATCH, MsgTag::new(0, 1, 0, 0), 0), "call svc")?;
    check(mr(0) == 42 && mr(1) == 9, "svc answers through the provider's gate")?;
    println!("`svc` answered {}", mr(0));
    Ok(())
}

/// `ktest argv ...`: prints its argv, one environment variable and the page size from the
/// auxiliary vector, as a program the root task started sees them.
pub fn argv() -> R {
    let words: alloc::vec::Vec<&str> = l4::env::args().collect();
    println!("{} arguments: {}", words.len(), words.join("|"));
    println!("GREETING={}", l4::env::var("GREETING").unwrap_or("(unset)"));
    println!("page size {}", l4::env::aux(abi::startup::at::PAGESZ).unwrap_or(0));
    check(l4::env::aux(abi::startup::at::ENTRY).is_some(), "the entry point in auxv")?;
    Ok(())
}

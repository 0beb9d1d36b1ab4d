//! The kernel's test program. Its argument string picks a mode; `cargo xtask test` boots it in
//! the scenarios of `build/src/ktests.rs` and judges the serial output and exit status.
#![no_std]
#![no_main]

extern crate alloc;

mod bench;
mod fuzz;
mod intertask;
mod ns;
mod objects;
mod session;
mod spawn;
mod terminal;
mod threads;
mod vcpu;
mod vcpubench;
mod world;
mod worldbench;

use abi::cap::well_known;
use abi::syscall::Flags;
use abi::{CapIdx, CapSel, Error, MsgTag};
use l4::println;
use l4::sys::{call_words, cycles, invoke};

l4::entry!(main);

fn main(args: &str) -> i32 {
    let mut words = args.split_whitespace();
    match (words.next(), words.next()) {
        (Some("syscall"), _) => finish(syscall_checks()),
        (Some("bench"), _) => finish(bench::run()),
        (Some("trace"), _) => finish(bench::trace()),
        (Some("vcpu-bench"), _) => finish(vcpubench::run()),
        (Some("world-bench"), _) => finish(worldbench::run()),
        (Some("world"), _) => finish(world::run()),
        (Some("objects"), _) => finish(objects::run()),
        (Some("vcpu"), _) => finish(vcpu::run()),
        (Some("vcpu-doomed"), _) => finish(vcpu::doomed()),
        (Some("spawn"), _) => finish(spawn::run()),
        (Some("terminal"), _) => finish(terminal::run()),
        (Some("threads"), _) => finish(threads::run()),
        (Some("session-server"), _) => finish(session::server()),
        (Some("session-client"), _) => status(session::client()),
        (Some("ds-client"), _) => status(session::ds_client()),
        (Some("threads-denied"), _) => status(threads::denied()),
        (Some("ns-server"), _) => finish(ns::server()),
        (Some("provider"), _) => finish(ns::provider()),
        (Some("argv"), _) => status(ns::argv()),
        (Some("consumer"), _) => finish(ns::consumer()),
        (Some("ns-client"), _) => finish(ns::client()),
        (Some("log-proxy"), _) => finish(ns::log_proxy()),
        (Some("hog"), _) => ns::hog(),
        (Some("reserve"), _) => status(ns::reserve()),
        (Some("fuzz"), Some(seed)) => {
            let count = words.next().and_then(|c| c.parse().ok()).unwrap_or(100_000);
            match seed.parse() {
                Ok(seed) => finish(fuzz::run(seed, count)),
                Err(_) => finish(Err("fuzz: the seed must be a number")),
            }
        }
        (Some("fault"), Some(kind)) => fault(kind),
        (Some("panic"), _) => panic!("on purpose"),
        (Some("survivor"), _) => {
            spin_for_ms(50);
            println!("survivor still running after the faults");
            finish(Ok(()))
        }
        (Some("outlive"), Some(ms)) => outlive(ms.parse().unwrap_or(5000)),
        (Some("spin"), _) => {
            println!("spinning without system calls");
            #[allow(clippy::empty_loop)]
            loop {}
        }
        (Some("preempt"), _) => {
            println!("ran while the spinner spins");
            finish(Ok(()))
        }
        _ => {
            println!("unknown mode `{args}`");
            2
        }
    }
}

/// For programs that end without powering off (their parent hears the status): 0 on success,
/// else the failure reported and 1.
fn status(r: Result<(), &'static str>) -> i32 {
    r.map_or_else(
        |why| {
            println!("FAILED: {why}");
            1
        },
        |()| 0,
    )
}

/// Powers off with 0 on success; reports and returns a failure status otherwise.
fn finish(r: Result<(), &'static str>) -> i32 {
    match r {
        Ok(()) => {
            l4::shutdown(0);
            1
        }
        Err(why) => {
            println!("FAILED: {why}");
            l4::shutdown(1);
            1
        }
    }
}

fn expect(what: &str, got: Result<MsgTag, Error>, want: Error) -> Result<(), &'static str> {
    if got.map(|_| ()) == Err(want) {
        println!("{what} -> {want:?} ok");
        Ok(())
    } else {
        println!("{what}: got {got:?}, want {want:?}");
        Err("an invocation returned the wrong result")
    }
}

fn null_syscall() -> MsgTag {
    invoke(CapSel::INVALID, Flags::CALL, MsgTag::new(0, 0, 0, 0))
}

fn syscall_checks() -> Result<(), &'static str> {
    expect("invalid selector", null_syscall().result(), Error::NoEnt)?;
    expect("empty slot", call_words(CapIdx(4000), 0, &[0]), Error::NoEnt)?;
    expect("bad opcode", call_words(well_known::LOG, 0, &[77]), Error::NoSys)?;
    expect("wrong protocol", call_words(well_known::LOG, abi::proto::task::LABEL, &[0]), Error::BadProto)?;
    expect("oversized log write", call_words(well_known::LOG, 0, &[0, 1000, 0]), Error::Inval)?;
    expect("missing opcode", call_words(well_known::LOG, 0, &[]), Error::Inval)?;
    let mut s = samples::<31>(200);
    println!("syscall round trip: {} cycles (median of {} batches)", median(&mut s), s.len());
    Ok(())
}

/// Median cost of a null system call, in batches of `per_batch`.
pub fn samples<const N: usize>(per_batch: u64) -> [u64; N] {
    let mut s = [0u64; N];
    for v in s.iter_mut() {
        let t0 = cycles();
        for _ in 0..per_batch {
            null_syscall();
        }
        *v = (cycles() - t0) / per_batch;
    }
    s
}

pub fn median(s: &mut [u64]) -> u64 {
    s.sort_unstable();
    s[s.len() / 2]
}

fn spin_for_ms(ms: u64) {
    let end = cycles() + l4::kip().tsc_hz / 1000 * ms;
    while cycles() < end {
        core::hint::spin_loop();
    }
}

/// A program beside another that dies (L4Linux's panic): sleeps `ms`, says it still runs, and
/// powers off with 0 through the `platform` capability its boot script grants.
fn outlive(ms: u64) -> i32 {
    let _ = l4::ipc::namespace::query(
        abi::cap::well_known::NAMESPACE,
        "platform",
        abi::cap::well_known::PLATFORM_CTL,
    );
    // Nobody sends to us: the receive ends by its timeout (microseconds).
    let _ = l4::ipc::wait(abi::syscall::timeout::pack(0, (ms * 1000).min(u32::MAX as u64 - 1) as u32));
    println!("still running after {ms} ms");
    finish(Ok(()))
}

/// Raises the named fault; the kernel reports it and destroys this task.
fn fault(kind: &str) -> i32 {
    match kind {
        // SAFETY: deliberately reads an unmapped address; the kernel ends the task.
        "page" => unsafe {
            core::ptr::read_volatile(0xdead_0000 as *const u64);
        },
        // SAFETY: deliberately reads the kernel image (supervisor only); the kernel ends the task.
        "kernel-read" => unsafe {
            core::ptr::read_volatile(0xffff_ffff_8010_0000u64 as *const u64);
        },
        // SAFETY: an undefined instruction; the kernel ends the task.
        "ud" => unsafe { core::arch::asm!("ud2") },
        // SAFETY: a privileged instruction in ring 3 raises #GP; the kernel ends the task.
        "gp" => unsafe { core::arch::asm!("hlt") },
        // SAFETY: divides by zero; the kernel ends the task. Registers are declared clobbered.
        "div" => unsafe {
            core::arch::asm!(
                "xor edx, edx",
                "xor eax, eax",
                "xor ecx, ecx",
                "div ecx",
                out("eax") _,
                out("edx") _,
                out("ecx") _
            )
        },
        _ => {
            println!("unknown fault kind `{kind}`");
            return 2;
        }
    }
    println!("FAILED: fault `{kind}` did not fault");
    3
}

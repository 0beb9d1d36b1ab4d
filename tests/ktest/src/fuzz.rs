//! `ktest fuzz SEED COUNT`: a hostile task throws COUNT random invocations at the kernel —
//! random selectors, flags, tags, message and buffer registers (in the UTCB and in registers),
//! flexpages and timeouts — then the kernel must still run and pass its self-check. The seed is
//! printed, so a failure can be replayed with the same arguments.

use crate::intertask::{map_image, B_UTCB};
use crate::objects::{check, ok, stack_top, R};
use abi::cap::well_known as wk;
use abi::proto::{self, fpage::Fpage, thread_control as tc, Protocol};
use abi::syscall::{timeout, Flags};
use abi::{CapIdx, CapSel, MsgTag, Rights};
use core::sync::atomic::{AtomicU64, Ordering};
use l4::ipc::{factory, scheduler, semaphore, set_br, set_mr, task, thread};
use l4::println;

const HOSTILE: CapIdx = CapIdx(60);
const HOSTILE_THREAD: CapIdx = CapIdx(61);
const HOSTILE_FACTORY: CapIdx = CapIdx(62);
/// A semaphore nobody raises: waiting on it with a timeout is our sleep.
const SLEEP: CapIdx = CapIdx(63);

static SEED: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);
static PROGRESS: AtomicU64 = AtomicU64::new(0);

/// xorshift64*: small, seedable, good enough to cover the input space.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A word biased towards values the kernel interprets: small numbers, labels, flexpages.
    fn word(&mut self) -> u64 {
        match self.below(8) {
            0 | 1 => self.below(70),
            2 => Protocol::ALL[self.below(Protocol::ALL.len() as u64) as usize].label() as u64,
            3 => self.fpage().0,
            4 => u64::MAX - self.below(4),
            5 => self.below(1 << 20) << 12,
            6 => proto::fpage::unmap_mask::DELETE_OBJ | self.below(2) << 31,
            _ => self.next(),
        }
    }

    fn fpage(&mut self) -> Fpage {
        let rights = Rights::from_bits_truncate(self.below(16) as u8);
        match self.below(4) {
            0 => Fpage::object(CapIdx(self.below(80)), self.below(10) as u32, rights),
            1 => Fpage::memory(self.below(1 << 24) << 12, 12 + self.below(20) as u32, rights),
            2 => Fpage::memory(self.next(), self.below(64) as u32, rights),
            _ => Fpage(self.next()),
        }
    }
}

/// One random invocation.
fn one(rng: &mut Rng) {
    let sel = CapSel::from_idx(CapIdx(rng.below(72)));
    let flags = Flags::from_bits_truncate(rng.below(16));
    let label = match rng.below(4) {
        0 => 0,
        1 | 2 => Protocol::ALL[rng.below(Protocol::ALL.len() as u64) as usize].label(),
        _ => rng.next() as i64,
    };
    let tag = MsgTag::new(label, rng.below(64), rng.below(4) * rng.below(2), rng.below(16));
    for i in 0..abi::utcb::MR_COUNT {
        set_mr(i, rng.word());
    }
    set_br(0, if rng.below(2) == 0 { rng.fpage().0 } else { 0 });
    // Never block for long: the fuzzer must make progress on its own.
    let t = if rng.below(16) == 0 {
        timeout::pack(1 + rng.below(50) as u32, 1 + rng.below(50) as u32)
    } else {
        timeout::pack(timeout::ZERO, timeout::ZERO)
    };
    // Random words in the message registers too (a tag may flag a register message).
    let w = [rng.word(), rng.word(), rng.word(), rng.word()];
    let _ = l4::sys::invoke_regs(sel, flags, tag, t, w);
}

/// The hostile thread: runs in its own task with only a small factory and the log. It
/// publishes its progress in shared memory (the image is mapped into its task).
extern "C" fn hostile() -> ! {
    let mut rng = Rng(SEED.load(Ordering::SeqCst) | 1);
    let n = COUNT.load(Ordering::SeqCst);
    for i in 0..n {
        one(&mut rng);
        PROGRESS.store(i + 1, Ordering::SeqCst);
    }
    loop {
        let _ = l4::ipc::wait(0);
    }
}

pub fn run(seed: u64, count: u64) -> R {
    println!("fuzz: seed {seed}, {count} invocations (replay: ktest fuzz {seed} {count})");
    SEED.store(seed, Ordering::SeqCst);
    COUNT.store(count, Ordering::SeqCst);
    ok(factory::factory(wk::FACTORY, HOSTILE_FACTORY, 4 << 20), "hostile factory")?;
    ok(factory::semaphore(wk::FACTORY, SLEEP, 0), "sleep semaphore")?;
    ok(factory::task(wk::FACTORY, HOSTILE, Fpage::memory(B_UTCB, 12, Rights::ALL)), "hostile task")?;
    map_image(HOSTILE)?;
    for (from, to) in [(HOSTILE_FACTORY, wk::FACTORY), (wk::LOG, wk::LOG)] {
        // Without D: the hostile task may drop its copies but not destroy our objects.
        ok(
            task::map(HOSTILE, wk::TASK, Fpage::object(from, 0, Rights::RW | Rights::S), to.0 << 12),
            "hand a capability",
        )?;
    }
    ok(factory::thread(wk::FACTORY, HOSTILE_THREAD), "hostile thread")?;
    ok(thread::control(HOSTILE_THREAD, tc::BIND_TASK, CapIdx(0), CapIdx(0), HOSTILE, B_UTCB), "bind")?;
    ok(thread::ex_regs(HOSTILE_THREAD, hostile as *const () as u64, stack_top(5), 0), "ex_regs")?;
    ok(scheduler::run_thread(wk::SCHEDULER, HOSTILE_THREAD, 50, 1, 0), "run")?;
    let t0 = l4::sys::cycles();
    let ms_now = || (l4::sys::cycles() - t0) / (l4::kip().tsc_hz / 1000);
    // Poll the shared progress counter; no progress for 10 s means the kernel stranded it.
    let (mut last, mut last_change) = (0, 0);
    loop {
        let _ = semaphore::down(SLEEP, timeout::pack(0, 20_000));
        let done = PROGRESS.load(Ordering::SeqCst);
        if done == count {
            break;
        }
        if done != last {
            (last, last_change) = (done, ms_now());
        } else if ms_now() - last_change > 10_000 {
            println!("hostile task stuck after {done} invocations");
            return check(false, "hostile task finished its invocations");
        }
    }
    let done = PROGRESS.load(Ordering::SeqCst);
    let ms = ms_now();
    ok(
        l4::sys::call_words(
            wk::PLATFORM_CTL,
            proto::platform_ctl::LABEL,
            &[proto::platform_ctl::Op::SelfCheck.code()],
        ),
        "kernel self-check",
    )?;
    println!("fuzz: {done} invocations in {ms} ms, kernel self-check passed");
    Ok(())
}

//! `ktest threads`: `l4::thread` in a program the root task starts with `cap factory = @factory`
//! and `cap scheduler = @scheduler`: threads run concurrently on one shared counter and return
//! values to `join`; the UTCB area's 15 free slots are all usable and come back after `join`.
//! `ktest threads-denied`: without those capabilities `spawn` fails with `NoEnt`.

use crate::objects::{check, expect_err, ok, R};
use abi::cap::well_known as wk;
use abi::Error;
use core::sync::atomic::{AtomicU64, Ordering};
use l4::ipc::namespace;
use l4::println;
use l4::thread;

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn run() -> R {
    ok(namespace::query(wk::NAMESPACE, "platform", wk::PLATFORM_CTL), "query platform")?;
    // Three threads add to one counter, yielding between steps, and return their own sums.
    let mut handles = alloc::vec::Vec::new();
    for k in 1..=3u64 {
        let h = ok(
            thread::spawn(move || {
                let mut own = 0;
                for i in 0..1000u64 {
                    COUNTER.fetch_add(1, Ordering::SeqCst);
                    own += i * k;
                    if i % 100 == 0 {
                        let _ = l4::ipc::wait(abi::syscall::timeout::pack(0, abi::syscall::timeout::ZERO));
                    }
                }
                own as i64
            }),
            "spawn",
        )?;
        handles.push(h);
    }
    let mut sums = alloc::vec::Vec::new();
    for h in handles {
        sums.push(ok(h.join(), "join")?);
    }
    println!("threads returned {sums:?}, counter {}", COUNTER.load(Ordering::SeqCst));
    check(sums == [499_500, 999_000, 1_498_500], "each thread's own result")?;
    check(COUNTER.load(Ordering::SeqCst) == 3000, "all increments of all threads")?;
    // All 15 free UTCB slots, then one too many; joined, they are free again.
    let mut all = alloc::vec::Vec::new();
    loop {
        match thread::spawn_with(100, 8192, || 7) {
            Ok(h) => all.push(h),
            Err(e) => {
                check(e == Error::NoMem, "the 16th thread is refused with NoMem")?;
                break;
            }
        }
        check(all.len() <= 15, "no more threads than UTCB slots")?;
    }
    check(all.len() == 15, "15 threads beside the main one")?;
    let mut total = 0;
    for h in all {
        total += ok(h.join(), "join")?;
    }
    check(total == 15 * 7, "every thread's value")?;
    check(ok(thread::spawn(|| 42), "spawn after joins")?.join() == Ok(42), "slots come back")?;
    println!("threads ok");
    Ok(())
}

pub fn denied() -> R {
    expect_err(thread::spawn(|| 0).map(|_| ()), Error::NoEnt, "spawn without a factory")?;
    println!("threads denied");
    Ok(())
}

//! Linux's clock (the TSC, whose rate the KIP gives) and its timer (an Irq the kernel raises
//! once or periodically, delivered to the vCPU).

use crate::slot;
use crate::vcpu::{held, IRQ_TIMER};
use abi::cap::well_known as wk;
use abi::proto;
use core::ffi::c_int;
use core::sync::atomic::{AtomicBool, Ordering};

/// True while a timer is programmed (one shot not yet fired, or periodic).
static ARMED: AtomicBool = AtomicBool::new(false);

/// `lx_nsecs`: monotonic nanoseconds since boot.
#[no_mangle]
pub extern "C" fn lx_nsecs() -> i64 {
    let hz = l4::kip().tsc_hz.max(1) as u128;
    (l4::sys::cycles() as u128 * 1_000_000_000 / hz) as i64
}

/// `lx_tsc_hz`: the clock's rate (cycles per second), for Linux's loops-per-jiffy.
#[no_mangle]
pub extern "C" fn lx_tsc_hz() -> u64 {
    l4::kip().tsc_hz
}

/// `lx_wallclock_ns`: nanoseconds since the Unix epoch, from the wall-clock time the kernel
/// read at boot (KIP) advanced by the TSC; 0 if the machine has no clock.
#[no_mangle]
pub extern "C" fn lx_wallclock_ns() -> i64 {
    let k = l4::kip();
    if k.wallclock_ns == 0 {
        return 0;
    }
    let since = l4::sys::cycles().saturating_sub(k.wallclock_tsc) as u128 * 1_000_000_000;
    (k.wallclock_ns as u128 + since / k.tsc_hz.max(1) as u128) as i64
}

/// `lx_timer_create`: the timer Irq, attached to this (vCPU) thread.
#[no_mangle]
pub extern "C" fn lx_timer_create() -> c_int {
    let label = IRQ_TIMER.trailing_zeros() as u64 + 1;
    let r = held(|| {
        l4::ipc::factory::irq(slot::FACTORY, slot::TIMER)?;
        l4::ipc::irq::attach(slot::TIMER, wk::THREAD, label)
    });
    match r {
        Ok(()) => 0,
        Err(e) => {
            l4::println!("no timer: {e:?}");
            -(e as c_int)
        }
    }
}

/// `lx_timer_set`: fire after `ns` (once) or every `ns` (`periodic`); 0 stops it.
#[no_mangle]
pub extern "C" fn lx_timer_set(ns: u64, periodic: c_int) -> c_int {
    let us = if ns == 0 { 0 } else { ns.div_ceil(1000).max(1) };
    let once = u64::from(periodic == 0);
    let r = held(|| {
        l4::sys::call_words(slot::TIMER, proto::irq::LABEL, &[proto::irq::Op::SetTimer.code(), us, once])
    });
    ARMED.store(us != 0, Ordering::Relaxed);
    match r {
        Ok(_) => 0,
        Err(e) => -(e as c_int),
    }
}

/// `lx_timer_fired`: a one-shot timer went off (it is no longer armed).
#[no_mangle]
pub extern "C" fn lx_timer_fired(periodic: c_int) {
    if periodic == 0 {
        ARMED.store(false, Ordering::Relaxed);
    }
}

/// `lx_timer_armed`: whether waiting for an interrupt can end (UML's idle only sleeps then).
#[no_mangle]
pub extern "C" fn lx_timer_armed() -> c_int {
    c_int::from(ARMED.load(Ordering::Relaxed))
}

//! Threads of the program's own task (feature `runtime`): [`spawn`] runs a closure on a new
//! thread with its own stack (from the heap) and UTCB (a slot of the task's UTCB area);
//! [`JoinHandle::join`] waits until it returned and gives its value.
//!
//! A thread is made by a factory and run by a scheduler. Boot tasks have both in their
//! well-known slots; a program the root task starts asks its namespace for `factory` and
//! `scheduler` (boot script: `cap factory = @factory`, `cap scheduler = @scheduler`) and gets a
//! clear `NoEnt` without them. Threads share the heap (one spin lock: give them the same
//! priority, or a higher one that blocks, so a holder is never starved by a spinner).

use crate::ipc::{factory, namespace, scheduler, semaphore, task, thread};
use abi::cap::well_known as wk;
use abi::kip::{BOOT_UTCB_ADDR, UTCB_AREA_ORDER};
use abi::proto::{fpage::unmap_mask, fpage::Fpage, thread_control as tc};
use abi::syscall::timeout;
use abi::utcb::UTCB_SIZE;
use abi::{CapIdx, Error, Rights};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicI64, AtomicU32, Ordering};

/// UTCB slots of the area (`UTCB_AREA_ORDER`), one bit each; slot 0 is the main thread's.
const SLOTS: u32 = (1 << UTCB_AREA_ORDER) / UTCB_SIZE as u32;
static UTCBS: AtomicU32 = AtomicU32::new(1);
/// Capability slots: thread i uses `CAP_BASE + 2 i` (thread) and `+ 1` (its done semaphore).
const CAP_BASE: u64 = 3000;
/// A thread's stack, unless the caller asks for another size.
pub const DEFAULT_STACK: usize = 64 * 1024;

/// What the new thread starts with (its stack's first word points here).
struct Start {
    f: Option<Box<dyn FnOnce() -> i64 + Send>>,
    result: AtomicI64,
    done: CapIdx,
}

/// A running (or finished) thread. Dropping it without `join` leaves the thread running with
/// its stack (which is then never freed).
pub struct JoinHandle {
    slot: u32,
    start: *mut Start,
    stack: Option<Vec<u8>>,
}

impl Drop for JoinHandle {
    fn drop(&mut self) {
        // Not joined: the thread may still use its stack.
        if let Some(s) = self.stack.take() {
            core::mem::forget(s);
        }
    }
}

core::arch::global_asm!(
    r#"
    .section .text.l4_thread_entry, "ax"
    .global l4_thread_entry
l4_thread_entry:
    mov rdi, [rsp]
    and rsp, -16
    xor ebp, ebp
    call l4_thread_main
    ud2
    "#
);

extern "C" {
    fn l4_thread_entry();
}

/// The new thread: runs its function, publishes the result, tells `join`, then waits to be
/// deleted.
#[no_mangle]
extern "C" fn l4_thread_main(start: *mut Start) -> ! {
    // SAFETY: `spawn` leaked the Start box for this thread and frees it only after `done`;
    // until then only this thread touches `f`.
    let s = unsafe { &mut *start };
    let r = s.f.take().map_or(0, |f| f());
    s.result.store(r, Ordering::SeqCst);
    let _ = semaphore::up(s.done);
    loop {
        let _ = crate::ipc::wait(timeout::pack(0, timeout::NEVER));
    }
}

/// Makes sure `slot` holds a capability: ours already, or the one the namespace calls `name`.
fn ensure(slot: CapIdx, name: &str) -> Result<(), Error> {
    match task::cap_info(wk::TASK, slot) {
        Ok((label, _)) if label != 0 => Ok(()),
        _ => namespace::query(wk::NAMESPACE, name, slot),
    }
}

fn take_utcb() -> Option<u32> {
    let mut cur = UTCBS.load(Ordering::SeqCst);
    loop {
        let free = (!cur).trailing_zeros();
        if free >= SLOTS {
            return None;
        }
        match UTCBS.compare_exchange(cur, cur | 1 << free, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Some(free),
            Err(now) => cur = now,
        }
    }
}

fn give_utcb(slot: u32) {
    UTCBS.fetch_and(!(1 << slot), Ordering::SeqCst);
}

/// Runs `f` on a new thread at priority `prio` with a stack of `stack` bytes.
pub fn spawn_with(
    prio: u8,
    stack: usize,
    f: impl FnOnce() -> i64 + Send + 'static,
) -> Result<JoinHandle, Error> {
    ensure(wk::FACTORY, "factory")?;
    ensure(wk::SCHEDULER, "scheduler")?;
    let slot = take_utcb().ok_or(Error::NoMem)?;
    let (th, done) = (CapIdx(CAP_BASE + 2 * slot as u64), CapIdx(CAP_BASE + 2 * slot as u64 + 1));
    let mut stack = alloc::vec![0u8; stack.max(4096)];
    let start = Box::into_raw(Box::new(Start { f: Some(Box::new(f)), result: AtomicI64::new(0), done }));
    let top = (stack.as_mut_ptr() as u64 + stack.len() as u64 - 16) & !15;
    // SAFETY: `top` lies inside `stack` (16 bytes below its end, aligned); the entry reads it.
    unsafe { (top as *mut u64).write(start as u64) };
    let utcb = BOOT_UTCB_ADDR + slot as u64 * UTCB_SIZE as u64;
    let made = factory::semaphore(wk::FACTORY, done, 0)
        .and_then(|()| factory::thread(wk::FACTORY, th))
        .and_then(|()| {
            let flags = tc::BIND_TASK | tc::SET_PAGER | tc::SET_EXC_HANDLER;
            thread::control(th, flags, wk::PAGER, wk::PARENT, wk::TASK, utcb)
        })
        .and_then(|()| thread::ex_regs(th, l4_thread_entry as *const () as u64, top, 0).map(|_| ()))
        .and_then(|()| scheduler::run_thread(wk::SCHEDULER, th, prio, 1, 0));
    if let Err(e) = made {
        delete(th, done);
        give_utcb(slot);
        // SAFETY: the thread never ran (or was deleted above): the box is ours again.
        drop(unsafe { Box::from_raw(start) });
        return Err(e);
    }
    Ok(JoinHandle { slot, start, stack: Some(stack) })
}

/// Runs `f` on a new thread at the default priority (100) with a 64 KiB stack.
pub fn spawn(f: impl FnOnce() -> i64 + Send + 'static) -> Result<JoinHandle, Error> {
    spawn_with(100, DEFAULT_STACK, f)
}

fn delete(th: CapIdx, done: CapIdx) {
    let fps = [Fpage::object(th, 0, Rights::ALL), Fpage::object(done, 0, Rights::ALL)];
    let _ = task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &fps);
}

impl JoinHandle {
    /// The thread's capability (ours, while the handle lives).
    pub fn cap(&self) -> CapIdx {
        CapIdx(CAP_BASE + 2 * self.slot as u64)
    }

    /// Waits until the thread's function returned; its value. The thread, its stack and its
    /// UTCB slot are freed.
    pub fn join(mut self) -> Result<i64, Error> {
        let (th, done) =
            (CapIdx(CAP_BASE + 2 * self.slot as u64), CapIdx(CAP_BASE + 2 * self.slot as u64 + 1));
        semaphore::down(done, 0)?;
        delete(th, done);
        give_utcb(self.slot);
        drop(self.stack.take());
        // SAFETY: the thread signalled `done` after its last use of Start and is deleted now.
        let start = unsafe { Box::from_raw(self.start) };
        Ok(start.result.load(Ordering::SeqCst))
    }
}

//! os-L4: the host layer of User-Mode Linux on our kernel (the L4 side).
//!
//! Linux 6.12 `ARCH=um` calls its host through ~80 functions (`arch/um/include/shared/os.h` and
//! friends). Their C half (`../os-L4/*.c`, compiled inside the Linux tree against the Linux
//! headers) keeps UML's data structures; this crate is the half that talks to the kernel: the
//! vCPU (interrupt flag, upcalls, resuming Linux processes), Linux's "physical" memory, the
//! tasks that are Linux processes' address spaces, the clock and timer, the console, and boot
//! modules as read-only files. The seam between the halves is `../os-L4/lx_arch.h`: plain
//! integers and pointers, so neither side needs the other's layouts.
//!
//! The per-event path is laid out for few pages (costs.md: each page touched after an
//! address-space switch is a TLB refill under TCG): its functions in `.text.hot.lx`, which
//! Linux's linker script puts first in `.text` next to the C half's `userspace()`, and the
//! statics it touches in one static, `vcpu::HOT`.
//!
//! Every function here that uses the UTCB's message registers runs with the vCPU's interrupts
//! held off ([`vcpu::held`]): an interrupt upcall in between would run Linux code that makes
//! system calls of its own and overwrite them.
#![no_std]

mod args;
mod files;
mod mem;
mod task;
mod time;
mod vcpu;

use abi::cap::well_known as wk;
use core::ffi::{c_char, c_int};
use core::sync::atomic::Ordering;

extern "C" {
    /// UML's kernel entry (`arch/um/kernel/um_arch.c`); returns when Linux halts or reboots.
    fn linux_main(argc: c_int, argv: *mut *mut c_char) -> c_int;
    /// The status Linux leaves for its host (`reboot`, `poweroff`, panics).
    static uml_exitcode: c_int;
}

/// Capability slots this program uses (above the well-known ones).
pub(crate) mod slot {
    use abi::CapIdx;
    /// The factory the boot script grants (`cap factory = @factory`): tasks and the timer Irq.
    pub const FACTORY: CapIdx = CapIdx(20);
    /// The timer Irq.
    pub const TIMER: CapIdx = CapIdx(21);
    /// The console-input Irq.
    pub const CONSOLE: CapIdx = CapIdx(22);
    /// The first of the slots for process tasks ([`crate::task`]), lowest free first: every
    /// `VcpuResume` looks up our thread's slot and the process's, and under TCG it matters
    /// that they share a page of the capability table (about 170 slots per page).
    pub const FIRST_TASK: u64 = 32;
}

l4::entry!(main);

fn main(args: &str) -> i32 {
    if let Err(e) = l4::ipc::namespace::query(wk::NAMESPACE, "factory", slot::FACTORY) {
        l4::println!("no factory capability ({e:?}): the boot script must grant `cap factory = @factory`");
        return 1;
    }
    // Optional: with it, Linux halting powers the machine off with Linux's status.
    let platform = l4::ipc::namespace::query(wk::NAMESPACE, "platform", wk::PLATFORM_CTL).is_ok();
    if args.split_ascii_whitespace().any(|a| a == "lx.profile") {
        vcpu::HOT.profile.store(true, Ordering::Relaxed);
    }
    take_terminal();
    let (argc, argv) = args::argv(args);
    // SAFETY: argv holds argc NUL-terminated strings followed by a null pointer, in static
    // storage that lives for the program (see `args`); linux_main expects exactly that.
    unsafe { linux_main(argc, argv) };
    vcpu::disable();
    // SAFETY: a plain int Linux writes before it returns; nothing else runs by now.
    let status = unsafe { uml_exitcode };
    if vcpu::HOT.profile.load(Ordering::Relaxed) {
        let ((n, c), kinds) = vcpu::profile();
        l4::println!("os-L4 profile: {n} process events, {c} cycles each in Linux from upcall to resume");
        for (kind, n, c) in kinds.into_iter().filter(|k| k.1 > 0) {
            l4::println!("os-L4 profile:   {}: {n} events, {c} cycles each", vcpu::Kind(kind));
        }
        let (r, m) = (vcpu::HOT.on_resume.load(Ordering::Relaxed), task::BY_MAP.load(Ordering::Relaxed));
        let sc = task::SYSCALL_CYCLES.load(Ordering::Relaxed) / n.max(1);
        l4::println!("os-L4 profile: {r} pages mapped by resumes, {m} by Task::Map; {sc} cycles per event in task calls");
    }
    if platform {
        l4::println!("halted with status {status}; powering off");
        l4::sys::shutdown(status as u64);
    }
    status
}

/// `lx_console_write`: Linux's console output and early messages.
///
/// # Safety
/// Called from os-L4's C half with the pointers lx_arch.h describes: valid for the
/// stated sizes, or null where the function checks.
#[no_mangle]
pub unsafe extern "C" fn lx_console_write(s: *const u8, n: usize) {
    if s.is_null() {
        return;
    }
    // SAFETY: the C side passes a buffer of n readable bytes (a kernel string or console buffer).
    let bytes = unsafe { core::slice::from_raw_parts(s, n) };
    vcpu::held(|| {
        let _ = l4::io::write(bytes);
    });
}

/// `lx_console_read`: console input, up to `n` bytes into `buf`; 0 when there is none.
///
/// # Safety
/// Called from os-L4's C half with the pointers lx_arch.h describes: valid for the
/// stated sizes, or null where the function checks.
#[no_mangle]
pub unsafe extern "C" fn lx_console_read(buf: *mut u8, n: usize) -> c_int {
    if buf.is_null() {
        return -22;
    }
    // SAFETY: the C half passes a buffer of n writable bytes.
    let buf = unsafe { core::slice::from_raw_parts_mut(buf, n) };
    match vcpu::held(|| l4::io::read(buf)) {
        Ok(n) => n as c_int,
        Err(e) => -(e as c_int),
    }
}

/// Makes Linux the console's terminal: its output goes out as written (no name prefix) and
/// input raises the console Irq, which reaches the vCPU as `LX_IRQ_CONSOLE`. Without it Linux
/// still runs, with output only.
fn take_terminal() {
    let label = vcpu::IRQ_CONSOLE.trailing_zeros() as u64 + 1;
    let r = l4::ipc::factory::irq(slot::FACTORY, slot::CONSOLE)
        .and_then(|()| l4::ipc::irq::attach(slot::CONSOLE, wk::THREAD, label))
        .and_then(|()| l4::io::terminal(Some(slot::CONSOLE)));
    if let Err(e) = r {
        l4::println!("no console input ({e:?}): another program is the terminal?");
    }
}

/// `lx_exit`: the end of the Linux program (after halt/reboot, or a fatal error).
#[no_mangle]
pub extern "C" fn lx_exit(status: c_int) -> ! {
    vcpu::disable();
    l4::sys::exit(status)
}

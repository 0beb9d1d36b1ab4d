//! The microkernel binary: glue between the portable logic in `kernel-core` and the hardware
//! layer chosen below, plus object invocation.
#![no_std]
#![no_main]

extern crate alloc;

mod heap;
mod loader;
mod sched;
mod selftest;

/// The architecture this kernel is built for: the one place it is chosen.
pub type A = arch_x86_64::X86_64;

/// The kernel's state: one instance, behind one lock. Interrupts are masked in the kernel, so
/// the lock only orders code paths; it is never held across a context switch. It shares the
/// hot data page with the kernel stack's top and the per-CPU tables (see the linker script).
#[link_section = ".data.hot.0"]
static KERNEL: spin::Mutex<Option<kernel_core::kernel::Kernel<A>>> = spin::Mutex::new(None);

/// Runs `f` with the kernel state.
pub fn with_kernel<R>(f: impl FnOnce(&mut kernel_core::kernel::Kernel<A>) -> R) -> R {
    f(KERNEL.lock().as_mut().expect("kernel state not initialised"))
}

fn init_kernel(k: kernel_core::kernel::Kernel<A>) {
    *KERNEL.lock() = Some(k);
}

use arch_x86_64::{Boot, Event};

#[global_allocator]
static HEAP: heap::Heap = heap::Heap;

/// Entered from the architecture's boot code with the hardware initialised.
#[no_mangle]
fn kernel_main(boot: Boot) -> ! {
    log::info!(
        "booting (ABI v{}, {} KiB image)",
        abi::ABI_VERSION,
        (boot.image.end - boot.image.start) / 1024
    );
    log::info!(
        "clocks: TSC {} MHz, APIC timer {} MHz, tick {} Hz",
        boot.clocks.tsc_hz / 1_000_000,
        boot.clocks.apic_hz / 1_000_000,
        arch_x86_64::TICK_HZ
    );
    let cmdline = boot.info.cmdline();
    if !cmdline.is_empty() {
        log::info!("command line: {cmdline}");
    }
    arch_x86_64::frames::init(&boot);
    sched::init(boot.clocks.tsc_hz);
    for opt in cmdline.split_whitespace() {
        match opt {
            "bench" => selftest::bench(),
            "selftest=kernel-fault" => selftest::kernel_fault(),
            "selftest=large-pages" => selftest::large_pages(),
            "selftest=worlds" => selftest::worlds(),
            _ => {}
        }
    }
    match boot.info.module {
        Some(m) => loader::start_boot_tasks(m),
        None => log::error!("no boot image: nothing to run (pass one as QEMU -initrd)"),
    }
    sched::idle_loop()
}

/// An event from user mode, or an interrupt while idle. Returns the current thread's frame
/// (0: none).
#[no_mangle]
#[link_section = ".text.fast.vcpu"]
fn kernel_event(ev: Event) -> u64 {
    sched::from_world();
    match ev {
        Event::Timer => sched::tick(),
        Event::Line(line) => sched::line(line),
        // #NM: the thread's first FPU/SSE instruction since it was switched in.
        Event::Exception { vector: 7, .. } => sched::fpu_fault(),
        Event::Exception { vector, error, addr } => sched::user_fault(vector, error, addr),
    }
    sched::current_frame()
}

/// A system call from user mode with its `(rdx, rax, rsi, r8)`. Returns the frame to leave by.
#[no_mangle]
#[link_section = ".text.fast.ipc"]
fn kernel_syscall(args: [u64; 4]) -> u64 {
    sched::syscall(args)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    use core::fmt::Write;
    arch_x86_64::serial::with_console(|s| {
        let _ = writeln!(s, "\nKERNEL PANIC: {info}");
    });
    <A as kernel_core::hal::Arch>::shutdown(abi::kip::KERNEL_FAILURE_STATUS)
}

//! The x86_64 layer of the microkernel. All `unsafe` of the kernel that touches hardware lives
//! in this crate, each block with its `// SAFETY:` argument.
//!
//! Boot path: `boot.rs` (PVH, 32-bit) → [`arch_boot`] → the kernel's `kernel_main`.
//! Entry path: `trap.rs` stubs → [`arch_trap`] / [`arch_syscall`] → the kernel's handlers.
#![no_std]

extern crate alloc;

pub mod apic;
mod boot;
pub mod cpu;
pub mod frames;
pub mod paging;
pub mod pvh;
pub mod rtc;
pub mod serial;
pub mod trap;
pub mod world;

use core::sync::atomic::{AtomicU64, Ordering};
use kernel_core::frames::FrameAllocator;
use kernel_core::hal::{Arch, MapError};
use kernel_core::mem::{Perms, PhysAddr, PhysRange, VirtAddr};
pub use trap::TrapFrame;

/// Scheduling tick frequency.
pub const TICK_HZ: u64 = 1000;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// The architecture as the kernel sees it.
pub struct X86_64;

impl Arch for X86_64 {
    type Space = paging::AddressSpace;
    type Context = trap::Context;

    const TICK_HZ: u64 = TICK_HZ;

    fn cycles() -> u64 {
        cpu::rdtsc()
    }

    fn cycles_hz() -> u64 {
        TSC_HZ.load(Ordering::Relaxed)
    }

    fn shutdown(status: u32) -> ! {
        cpu::shutdown(status)
    }

    fn with_frames<R>(f: impl FnOnce(&mut FrameAllocator<'static>) -> R) -> R {
        frames::with_frames(f)
    }

    fn new_space(fa: &mut FrameAllocator) -> Option<Self::Space> {
        paging::AddressSpace::new(fa)
    }

    #[inline(always)]
    fn map(s: &mut Self::Space, va: VirtAddr, pa: PhysAddr, p: Perms) -> Result<Option<PhysAddr>, MapError> {
        s.map(va, pa, p)
    }

    fn unmap(s: &mut Self::Space, va: VirtAddr) -> Option<PhysAddr> {
        s.unmap(va)
    }

    fn destroy_space(s: Self::Space) {
        s.destroy()
    }

    fn space_root(s: &Self::Space) -> u64 {
        s.root().0
    }

    fn active_root() -> u64 {
        paging::active_root().0
    }

    #[inline(always)]
    fn load_root(root: u64) {
        paging::load_cr3(PhysAddr(root))
    }

    fn write_phys(pa: PhysAddr, bytes: &[u8]) {
        paging::write_phys(pa, bytes)
    }

    // Inlined: the fast paths use it, and an out-of-line copy is one more code page.
    #[inline(always)]
    fn copy_words(dst: PhysAddr, src: PhysAddr, n: usize) {
        paging::copy_words(dst, src, n)
    }

    fn console_write(bytes: &[u8]) {
        serial::with_console(|s| s.write_bytes(bytes));
    }

    fn console_write_raw(bytes: &[u8]) {
        serial::with_console(|s| s.write_raw(bytes));
    }

    const CONSOLE_LINE: Option<u8> = Some(serial::LINE);

    fn console_read(buf: &mut [u8]) -> usize {
        serial::with_console(|s| s.read_bytes(buf))
    }

    #[inline(always)]
    fn set_entry_frame(frame: u64) {
        cpu::set_entry_frame(frame)
    }

    fn set_user_gs(base: u64) {
        cpu::set_user_gs(base)
    }

    fn set_user_fs(base: u64) {
        cpu::set_user_fs(base)
    }

    fn fpu_trap(on: bool) {
        cpu::fpu_trap(on)
    }

    fn set_timer(deadline: u64) {
        apic::set_deadline(deadline)
    }

    fn io_load(bits: &[u8; kernel_core::hal::IO_BITMAP_BYTES]) {
        cpu::io_load(bits)
    }

    fn io_disable() {
        cpu::io_disable()
    }

    fn guest_regions(s: &mut Self::Space, regions: &kernel_core::hal::GuestRegions) -> Result<(), MapError> {
        s.guest_regions(regions)
    }

    fn world_root(
        s: &mut Self::Space,
        guest: u64,
        regions: &kernel_core::hal::GuestRegions,
    ) -> Result<u64, MapError> {
        s.world_root(PhysAddr(guest), regions).map(|p| p.0)
    }

    #[inline(always)]
    fn set_world(w: Option<&kernel_core::hal::WorldExit>) {
        cpu::set_world(w)
    }

    fn line_mask(line: u8) {
        apic::pic_mask(line)
    }

    fn line_unmask(line: u8) {
        apic::pic_unmask(line)
    }

    // Inlined: the fast paths use it, and an out-of-line copy is one more code page.
    #[inline(always)]
    fn read_words(pa: PhysAddr, out: &mut [u64]) {
        paging::read_words(pa, out)
    }

    #[inline(always)]
    fn read_array<const N: usize>(pa: PhysAddr) -> [u64; N] {
        paging::read_array(pa)
    }

    // Inlined: the fast paths use it, and an out-of-line copy is one more code page.
    #[inline(always)]
    fn write_words(pa: PhysAddr, words: &[u64]) {
        paging::write_words(pa, words)
    }

    fn read_phys(pa: PhysAddr, buf: &mut [u8]) {
        paging::read_phys(pa, buf)
    }
}

/// What the kernel is told about an entry that is not a system call.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    /// The scheduling tick.
    Timer,
    /// A legacy interrupt line fired; it is masked until the kernel unmasks it.
    Line(u8),
    /// A CPU exception raised by user code.
    Exception { vector: u8, error: u64, addr: u64 },
}

/// Boot facts handed to the kernel.
pub struct Boot {
    pub info: pvh::BootInfo,
    /// Physical extent of the kernel image (text, data, bss).
    pub image: PhysRange,
    pub clocks: apic::Clocks,
}

extern "Rust" {
    /// The kernel's entry point once the hardware is up.
    fn kernel_main(boot: Boot) -> !;
    /// An event from user mode (or an interrupt in the idle loop). Returns the current
    /// thread's frame (0: none), which an event from user mode leaves by.
    fn kernel_event(ev: Event) -> u64;
    /// A `syscall` from user mode with its `(rdx, rax, rsi, r8)`. Returns the frame to leave
    /// by: the current thread's (the call may have moved it, with the thread arena).
    fn kernel_syscall(args: [u64; 4]) -> u64;
}

extern "C" {
    static __kernel_end: u8;
}

/// Called by the boot code on the boot stack, in long mode, interrupts off.
#[no_mangle]
extern "C" fn arch_boot(start_info: u32) -> ! {
    serial::init(log::LevelFilter::Info);
    let info = pvh::parse(start_info as u64);
    // `nogbpages` (Linux's name): 2 MiB pages even where the CPU has 1 GiB pages.
    let allow_gib = !info.cmdline().split_whitespace().any(|o| o == "nogbpages");
    paging::init(&[apic::APIC_PHYS & !0x1f_ffff], allow_gib);
    cpu::init();
    let clocks = apic::init(TICK_HZ);
    // Console input: the kernel owns the UART's line (the PIC came up with every line masked).
    apic::pic_unmask(serial::LINE);
    serial::enable_input();
    TSC_HZ.store(clocks.tsc_hz, Ordering::Relaxed);
    let image = PhysRange::new(0x100000, paging::image_phys(&raw const __kernel_end).0);
    // SAFETY: kernel_main is defined by the kernel binary with exactly this signature.
    unsafe { kernel_main(Boot { info, image, clocks }) }
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error (#DE)",
    "debug (#DB)",
    "NMI",
    "breakpoint (#BP)",
    "overflow (#OF)",
    "bound range (#BR)",
    "invalid opcode (#UD)",
    "device not available (#NM)",
    "double fault (#DF)",
    "coprocessor segment overrun",
    "invalid TSS (#TS)",
    "segment not present (#NP)",
    "stack fault (#SS)",
    "general protection (#GP)",
    "page fault (#PF)",
    "reserved",
    "x87 floating point (#MF)",
    "alignment check (#AC)",
    "machine check (#MC)",
    "SIMD floating point (#XM)",
    "virtualization (#VE)",
    "control protection (#CP)",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection (#HV)",
    "VMM communication (#VC)",
    "security (#SX)",
    "reserved",
];

/// Human name of an exception vector.
pub fn exception_name(vector: u8) -> &'static str {
    EXCEPTION_NAMES.get(vector as usize).copied().unwrap_or("interrupt")
}

/// A fault in kernel mode: dump everything and stop the machine with the failure status.
fn kernel_fault(f: &TrapFrame) -> ! {
    use core::fmt::Write;
    let cr2 = trap::cr2();
    let cr3 = paging::read_cr3().0;
    serial::with_console(|s| {
        let _ = writeln!(
            s,
            "\nKERNEL FAULT: {} vector={} error={:#x}",
            exception_name(f.vector as u8),
            f.vector,
            f.error
        );
        let _ = writeln!(
            s,
            "rip={:#018x} cs={:#x} rflags={:#x} rsp={:#018x} ss={:#x}",
            f.rip, f.cs, f.rflags, f.rsp, f.ss
        );
        let _ =
            writeln!(s, "rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}", f.rax, f.rbx, f.rcx, f.rdx);
        let _ = writeln!(s, "rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}", f.rsi, f.rdi, f.rbp, f.r8);
        let _ = writeln!(s, "r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}", f.r9, f.r10, f.r11, f.r12);
        let _ = writeln!(s, "r13={:#018x} r14={:#018x} r15={:#018x}", f.r13, f.r14, f.r15);
        let _ = writeln!(s, "cr2={cr2:#018x} cr3={cr3:#018x}");
    });
    cpu::shutdown(abi::kip::KERNEL_FAILURE_STATUS)
}

/// Common handler of all 256 vectors (called from `isr_common` with the frame it saved).
/// Returns the frame to leave by.
#[no_mangle]
#[link_section = ".text.fast.vcpu"]
extern "C" fn arch_trap(f: *mut TrapFrame) -> *mut TrapFrame {
    // SAFETY: `f` is the frame `isr_common` just saved (in the current thread, or on the stack
    // in use for an entry from kernel mode); read before the kernel runs, which may move it.
    let (vector, error, from_user) = unsafe { ((*f).vector as u8, (*f).error, (*f).from_user()) };
    let ev = match vector {
        trap::TIMER_VECTOR => {
            apic::eoi();
            Event::Timer
        }
        // Spurious interrupts need no EOI and carry no work.
        trap::SPURIOUS_VECTOR => return f,
        v if (trap::PIC_BASE..trap::PIC_BASE + 16).contains(&v) => {
            let line = v - trap::PIC_BASE;
            if (line == 7 || line == 15) && !apic::pic_in_service(line) {
                if line == 15 {
                    apic::pic_eoi(2);
                }
                return f;
            }
            apic::pic_mask(line);
            apic::pic_eoi(line);
            Event::Line(line)
        }
        v if (v <= 31 || v as usize == cpu::INT80) && from_user => {
            let addr = if vector == 14 { trap::cr2() } else { 0 };
            Event::Exception { vector, error, addr }
        }
        // SAFETY: as above; nothing has run since.
        0..=31 => kernel_fault(unsafe { &*f }),
        v => {
            log::warn!("unexpected interrupt vector {v}");
            return f;
        }
    };
    // SAFETY: the kernel's handler; user faults never return to the faulting instruction
    // unless the kernel decides so.
    let current = unsafe { kernel_event(ev) };
    if !from_user {
        return f;
    }
    assert!(current != 0, "an event from user mode returns to a thread");
    leave_to_world(current);
    current as *mut TrapFrame
}

/// A thread in a guest world goes back there by the world's way out (`world.rs`), whatever
/// entry it came by.
#[inline(always)]
fn leave_to_world(frame: u64) {
    let world = cpu::world();
    if world != 0 {
        // SAFETY: `frame` is the current thread's, which runs in the world whose root this is.
        unsafe { trap::resume(world, frame, trap::By::World) }
    }
}

/// Handler of the `syscall` instruction (called from `syscall_entry` with the frame it saved
/// in the current thread). Returns the frame to leave by.
#[no_mangle]
#[link_section = ".text.fast.ipc"]
extern "C" fn arch_syscall(f: *const TrapFrame) -> *const TrapFrame {
    use kernel_core::hal::UserRegs;
    // SAFETY: `f` is the frame `syscall_entry` just saved; read before the kernel runs.
    let args = unsafe { (*f).syscall_args() };
    // SAFETY: the kernel's handler.
    let f = unsafe { kernel_syscall(args) } as *const TrapFrame;
    // SAFETY: the current thread's frame, which the kernel has finished with.
    let rip = unsafe { (*f).rip };
    // sysret to a non-canonical address would fault in kernel mode: never return there.
    assert!(rip < abi::kip::USER_END, "syscall return to non-canonical address {rip:#x}");
    leave_to_world(f as u64);
    f
}

/// Waits for the next interrupt with interrupts enabled (the idle loop's body).
pub fn wait_for_interrupt() {
    x86_64::instructions::interrupts::enable_and_hlt();
    x86_64::instructions::interrupts::disable();
}

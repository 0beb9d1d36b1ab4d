//! Per-CPU state, descriptor tables and the control registers the kernel relies on.

use crate::paging;
use crate::trap;
use abi::syscall::REG_WORDS;
use kernel_core::hal::HAND_OFF_WORDS;
use kernel_core::mem::PhysAddr;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags, GsBase, KernelGsBase, LStar, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::structures::gdt::{Descriptor, DescriptorFlags, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

/// Per-CPU data reached through GS in kernel mode. The entry code reads fixed offsets:
/// `gs:8` = the end of the current thread's frame (where `syscall` saves the user registers),
/// `gs:16` = scratch for the user stack pointer. The rest remembers register values last
/// written, so that unchanged ones are not written again (CR0 and MSR writes are slow under
/// TCG).
#[repr(C)]
pub struct PerCpu {
    self_ptr: u64,
    frame_end: u64,
    user_rsp: u64,
    /// CR0.TS is set: the FPU traps.
    fpu_traps: bool,
    /// IA32_FS_BASE and IA32_KERNEL_GS_BASE (user mode's GS base) as last written.
    user_fs: u64,
    user_gs: u64,
    /// CR3 as last written (reading CR3 is a helper call under TCG).
    root: u64,
    /// The world root of the thread resumed next if it runs in a guest world (0: none); `LSTAR`
    /// is then the world's entry (`world::world_syscall_entry`).
    world: u64,
    /// The IPC fast path's message for the thread resumed next (`resume_context` delivers it).
    hand_off: HandOff,
}

/// A message staged by [`stage_hand_off`] and delivered by `resume_context` (trap.rs) once it
/// has switched to the receiver's address space and stack: under TCG each page touched after
/// a switch costs a TLB refill, and the receiver's stack and UTCB are touched there anyway.
#[repr(C)]
pub struct HandOff {
    /// The receiver's user frame; 0: nothing staged.
    frame: u64,
    /// The receiver's UTCB (direct-map address), the number of words, the result registers.
    dst: u64,
    words: u64,
    tag: u64,
    label: u64,
    buf: [u64; HAND_OFF_WORDS],
}

/// Offset into the per-CPU data (GS) of the cached CR3, for `resume_context`.
pub const ROOT_AT: usize = core::mem::offset_of!(PerCpu, root);

/// The page-table root CR3 holds (as [`note_root`] recorded it).
#[inline(always)]
pub fn root() -> u64 {
    // SAFETY: single CPU with interrupts masked in the kernel: a plain read of our own field.
    unsafe { (*tables()).percpu.root }
}

/// Records that CR3 now holds `root` (every write of CR3 but `resume_context`'s, which records
/// it itself).
#[inline(always)]
pub fn note_root(root: u64) {
    // SAFETY: as in `root`; the static is usable before GS is set up (boot's first write).
    unsafe { (*tables()).percpu.root = root };
}

/// Offsets into the per-CPU data (GS) of the staged hand-off, for `resume_context`.
pub const HAND_OFF_FRAME: usize = core::mem::offset_of!(PerCpu, hand_off);
pub const HAND_OFF_DST: usize = HAND_OFF_FRAME + core::mem::offset_of!(HandOff, dst);
pub const HAND_OFF_WORDS_AT: usize = HAND_OFF_FRAME + core::mem::offset_of!(HandOff, words);
pub const HAND_OFF_TAG: usize = HAND_OFF_FRAME + core::mem::offset_of!(HandOff, tag);
pub const HAND_OFF_LABEL: usize = HAND_OFF_FRAME + core::mem::offset_of!(HandOff, label);
pub const HAND_OFF_BUF: usize = HAND_OFF_FRAME + core::mem::offset_of!(HandOff, buf);
const _: () = assert!(core::mem::offset_of!(HandOff, frame) == 0);

/// Stages a message for the thread resumed next: `n` words read now from the UTCB at `src`,
/// written to the one at `dst` with `(tag, label)` into the user frame at `frame` by
/// `resume_context`.
#[inline(always)]
pub fn stage_hand_off(frame: u64, dst: PhysAddr, src: PhysAddr, n: usize, tag: u64, label: u64) {
    assert!(n <= HAND_OFF_WORDS && dst.0 + n as u64 * 8 <= paging::DIRECT_MAP_SIZE);
    // `read_words` checks the source.
    let fill = |buf: &mut [u64; HAND_OFF_WORDS]| paging::read_words(src, &mut buf[..n]);
    stage(frame, paging::phys_to_virt(dst) as u64, n, tag, label, fill);
}

/// [`stage_hand_off`] of a register message: its first `n` words go to the receiver's frame,
/// whose r15, r14, r13, r12 open it.
#[inline(always)]
pub fn stage_regs(frame: u64, words: [u64; REG_WORDS], n: usize, tag: u64, label: u64) {
    let fill = |buf: &mut [u64; HAND_OFF_WORDS]| buf[..REG_WORDS].copy_from_slice(&words);
    stage(frame, frame, n.min(REG_WORDS), tag, label, fill);
}

/// Fills the staging area's buffer with `fill` and records where `resume_context` delivers it.
#[inline(always)]
fn stage(
    frame: u64,
    dst: u64,
    n: usize,
    tag: u64,
    label: u64,
    fill: impl FnOnce(&mut [u64; HAND_OFF_WORDS]),
) {
    // SAFETY: single CPU with interrupts masked in the kernel: nothing else uses the staging
    // area until `resume_context` consumes it.
    let h = unsafe { &mut (*tables()).percpu.hand_off };
    fill(&mut h.buf);
    (h.dst, h.words, h.tag, h.label) = (dst, n as u64, tag, label);
    h.frame = frame;
}

const DOUBLE_FAULT_STACK: usize = 16 * 1024;

/// Bytes of the kernel stack. The kernel has one per CPU (threads have none): every entry
/// from user mode runs on it, and whatever a thread leaves behind when it blocks or is
/// preempted is abandoned (it resumes from its frame).
pub const KERNEL_STACK_SIZE: usize = 30 * 1024;
/// Written at the lowest word of the kernel stack; a different value means it overflowed.
const STACK_CANARY: u64 = 0x5afe_57ac_c0de_ca11;

#[repr(C, align(16))]
pub struct KernelStack([u64; KERNEL_STACK_SIZE / 8]);

/// The kernel stack opens `.data` (`.data.hot.stack`, page aligned) and is 2 KiB short of a
/// page multiple, so its top 2 KiB — all a fast path uses — share the hot data page with the
/// kernel state and the per-CPU tables that follow it: under TCG every page touched after an
/// address-space switch costs a TLB refill.
#[link_section = ".data.hot.stack"]
pub static mut KERNEL_STACK: KernelStack = KernelStack([0; KERNEL_STACK_SIZE / 8]);

/// False if the kernel stack overflowed (its lowest word lost its canary).
pub fn kernel_stack_intact() -> bool {
    // SAFETY: a plain read of the stack's lowest word, far below anything in use unless the
    // stack overflowed (which is what this detects).
    unsafe { (&raw const KERNEL_STACK.0[0]).read_volatile() == STACK_CANARY }
}
use kernel_core::hal::IO_BITMAP_BYTES;
/// The vector user mode may raise with `int`.
pub const INT80: usize = 0x80;
const TSS_SIZE: usize = core::mem::size_of::<TaskStateSegment>();
/// `iomap_base` that lies beyond the TSS limit: no bitmap, every port denied.
pub(crate) const NO_IO_BITMAP: u16 = 0xdfff;

/// One 64-bit interrupt gate. (The x86_64 crate's IDT type only takes handlers of the unstable
/// `x86-interrupt` ABI per exception kind; our stubs are uniform, so a flat table is simpler.)
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attrs: u8,
    offset_mid: u16,
    offset_high: u32,
    _reserved: u32,
}

impl Gate {
    const EMPTY: Gate =
        Gate { offset_low: 0, selector: 0, ist: 0, attrs: 0, offset_mid: 0, offset_high: 0, _reserved: 0 };

    /// Present, DPL 0, 64-bit interrupt gate (interrupts masked on entry).
    fn new(handler: u64, selector: u16, ist: u8) -> Self {
        Gate {
            offset_low: handler as u16,
            selector,
            ist,
            attrs: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            _reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

/// The CPU's tables. Per-CPU data, GDT and TSS come first: every kernel entry and every thread
/// switch touches them, and under TCG each distinct page touched after an address-space switch
/// costs a TLB refill, so they share the hot data page with the kernel state (`.data.hot.1`
/// follows `.data.hot.0` in the linker script). The I/O bitmap must follow the TSS.
#[repr(C, align(64))]
struct Tables {
    percpu: PerCpu,
    gdt: GlobalDescriptorTable<GDT_ENTRIES>,
    tss: TaskStateSegment,
    /// The TSS's I/O permission bitmap (a set bit denies the port) and its mandatory 0xff end.
    iobitmap: [u8; IO_BITMAP_BYTES + 1],
    idt: Idt,
    df_stack: [u8; DOUBLE_FAULT_STACK],
}

#[link_section = ".data.hot.1"]
static mut TABLES: Tables = Tables {
    percpu: PerCpu {
        self_ptr: 0,
        frame_end: 0,
        user_rsp: 0,
        fpu_traps: true,
        user_fs: 0,
        user_gs: 0,
        root: 0,
        world: 0,
        hand_off: HandOff { frame: 0, dst: 0, words: 0, tag: 0, label: 0, buf: [0; HAND_OFF_WORDS] },
    },
    gdt: GlobalDescriptorTable::empty(),
    tss: TaskStateSegment::new(),
    iobitmap: [0xff; IO_BITMAP_BYTES + 1],
    idt: Idt([Gate::EMPTY; 256]),
    df_stack: [0; DOUBLE_FAULT_STACK],
};

fn tables() -> *mut Tables {
    &raw mut TABLES
}

/// Loads GDT, TSS and IDT, and sets up `syscall`, GS and the control registers.
pub fn init() {
    // SAFETY: runs once on the boot CPU before interrupts are enabled; nothing else refers to
    // TABLES yet, and the tables are 'static as the CPU requires.
    unsafe {
        let t = &mut *tables();
        t.tss.interrupt_stack_table[0] = VirtAddr::from_ptr(t.df_stack.as_ptr()) + DOUBLE_FAULT_STACK as u64;
        let kcode = t.gdt.append(Descriptor::kernel_code_segment());
        let kdata = t.gdt.append(Descriptor::kernel_data_segment());
        let udata = t.gdt.append(Descriptor::user_data_segment());
        let ucode = t.gdt.append(Descriptor::user_code_segment());
        t.tss.iomap_base = NO_IO_BITMAP;
        let tss = t.gdt.append(tss_descriptor(&raw const t.tss as u64));
        // A guest kernel's level-1 code and stack segments (guest worlds).
        let gcode = t.gdt.append(Descriptor::UserSegment(DescriptorFlags::KERNEL_CODE64.bits() | DPL_1));
        let gdata = t.gdt.append(Descriptor::UserSegment(DescriptorFlags::KERNEL_DATA.bits() | DPL_1));
        assert_eq!((udata.0, ucode.0), (trap::USER_SS as u16, trap::USER_CS as u16));
        assert_eq!((gcode.0 | 1, gdata.0 | 1), (trap::GUEST_CS as u16, trap::GUEST_SS as u16));
        t.gdt.load_unsafe();
        CS::set_reg(kcode);
        SS::set_reg(kdata);
        DS::set_reg(SegmentSelector(0));
        ES::set_reg(SegmentSelector(0));
        load_tss(tss);

        let stubs = trap::isr_stubs as *const () as usize as u64;
        for (v, gate) in t.idt.0.iter_mut().enumerate() {
            // The double fault runs on its own stack (IST 1): the kernel stack may be the cause.
            *gate = Gate::new(stubs + 16 * v as u64, kcode.0, if v == 8 { 1 } else { 0 });
        }
        t.idt.0[14] = Gate::new(trap::page_fault_entry as *const () as usize as u64, kcode.0, 0);
        t.idt.0[7] = Gate::new(trap::fpu_trap_entry as *const () as usize as u64, kcode.0, 0);
        // `int 0x80` is allowed from user mode (Linux's old system-call gate): it arrives as an
        // exception with that vector. So are `int3` and `into` (#BP, #OF), as on every x86 OS:
        // debuggers' breakpoints must arrive as #BP, not as a #GP for the gate's privilege.
        for v in [3, 4, INT80] {
            t.idt.0[v].attrs |= 0x60;
        }
        x86_64::instructions::tables::lidt(&DescriptorTablePointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: VirtAddr::from_ptr(&raw const t.idt),
        });

        Star::write(ucode, udata, kcode, kdata).expect("GDT order fits sysret");
        LStar::write(VirtAddr::new(trap::syscall_entry as *const () as usize as u64));
        // Entering the kernel masks interrupts, traps, direction and alignment checks.
        SFMask::write(
            RFlags::INTERRUPT_FLAG
                | RFlags::TRAP_FLAG
                | RFlags::DIRECTION_FLAG
                | RFlags::ALIGNMENT_CHECK
                | RFlags::NESTED_TASK
                | RFlags::IOPL_HIGH
                | RFlags::IOPL_LOW,
        );
        Efer::update(|f| *f |= EferFlags::SYSTEM_CALL_EXTENSIONS | EferFlags::NO_EXECUTE_ENABLE);
        // User mode gets x87 and SSE (the kernel itself is built soft-float and never touches
        // them); their state is switched lazily through #NM (CR0.TS).
        Cr0::update(|f| {
            f.remove(Cr0Flags::EMULATE_COPROCESSOR);
            f.insert(
                Cr0Flags::WRITE_PROTECT
                    | Cr0Flags::MONITOR_COPROCESSOR
                    | Cr0Flags::NUMERIC_ERROR
                    | Cr0Flags::TASK_SWITCHED,
            );
        });
        Cr4::update(|f| *f |= Cr4Flags::PAGE_GLOBAL | Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE);

        // The fast paths' stack, the kernel state and these tables share one page.
        let stack = &raw mut KERNEL_STACK;
        (*stack).0[0] = STACK_CANARY;
        let top = stack as u64 + KERNEL_STACK_SIZE as u64;
        let tss_end = (&raw const t.tss) as u64 + TSS_SIZE as u64;
        assert_eq!(
            (top - 2048) >> 12,
            (tss_end - 1) >> 12,
            "the kernel stack's top 2 KiB are not in the hot page"
        );

        t.percpu.self_ptr = (&raw const t.percpu) as u64;
        GsBase::write(VirtAddr::new(t.percpu.self_ptr));
        KernelGsBase::write(VirtAddr::new(0));

        let gdt = &raw const t.gdt as u64;
        crate::world::init(crate::world::Tables {
            gdt: (gdt, core::mem::size_of::<GlobalDescriptorTable<GDT_ENTRIES>>()),
            tss: &raw const t.tss as u64,
            idt: (&raw const t.idt as u64, core::mem::size_of::<Idt>()),
        });
    }
}

/// The hot page's address (`__hot_page`, the linker script): a world shows its shadow there.
pub fn hot_page() -> u64 {
    extern "C" {
        static __hot_page: u8;
    }
    &raw const __hot_page as u64
}

/// GDT entries: null, kernel code and data, user data and code, the TSS (two), guest code and
/// data.
const GDT_ENTRIES: usize = 9;
/// A descriptor's privilege level 1.
const DPL_1: u64 = 1 << 45;

/// The thread resumed next runs in a guest world (`Some`) or not: the trampoline's view of it,
/// and the `syscall` entry. Cheap when nothing changes.
#[inline(always)]
#[link_section = ".text.fast"]
pub fn set_world(w: Option<&kernel_core::hal::WorldExit>) {
    // SAFETY: single CPU with interrupts masked in the kernel: no concurrent access.
    let p = unsafe { &mut (*tables()).percpu };
    match w {
        None if p.world == 0 => {}
        None => {
            p.world = 0;
            LStar::write(VirtAddr::new(trap::syscall_entry as *const () as usize as u64));
        }
        Some(w) => {
            crate::world::configure(w);
            if p.world == 0 {
                LStar::write(VirtAddr::new(crate::world::world_syscall_entry as *const () as usize as u64));
            }
            p.world = w.root;
        }
    }
}

/// The world root of the current thread, if it runs in a guest world (0: it does not).
#[inline(always)]
pub fn world() -> u64 {
    // SAFETY: single CPU with interrupts masked in the kernel: a plain read of our own field.
    unsafe { (*tables()).percpu.world }
}

/// A 64-bit available-TSS descriptor whose limit covers the TSS and the I/O bitmap after it
/// (the x86_64 crate's covers the TSS alone).
fn tss_descriptor(base: u64) -> Descriptor {
    let limit = (TSS_SIZE + IO_BITMAP_BYTES) as u64; // + 1 end byte - 1 for the limit
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, type 9: available 64-bit TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    Descriptor::SystemSegment(low, base >> 32)
}

/// Loads an I/O permission bitmap (a set bit denies the port) for the next user entries.
pub fn io_load(bitmap: &[u8; IO_BITMAP_BYTES]) {
    // SAFETY: single CPU with interrupts masked in the kernel: the CPU reads the bitmap only
    // on user-mode port accesses, which cannot happen while we write it.
    unsafe {
        let t = &mut *tables();
        t.iobitmap[..IO_BITMAP_BYTES].copy_from_slice(bitmap);
        t.tss.iomap_base = TSS_SIZE as u16;
    }
}

/// Denies every port to user mode (no bitmap).
pub fn io_disable() {
    // SAFETY: as in `io_load`.
    unsafe { (*tables()).tss.iomap_base = NO_IO_BITMAP };
}

/// Sets the frame the next entry from user mode saves the user registers into (its end goes
/// to TSS.rsp0 for interrupts and exceptions, to `gs:8` for `syscall`). Cheap when unchanged,
/// as on the way out of most system calls.
#[link_section = ".text.fast"]
pub fn set_entry_frame(frame: u64) {
    let end = frame + core::mem::size_of::<trap::TrapFrame>() as u64;
    debug_assert!(end.is_multiple_of(16), "the CPU would align TSS.rsp0 down");
    // SAFETY: single CPU with interrupts masked in the kernel: no concurrent access; the
    // fields are plain data read by the CPU and the entry code only on the next entry.
    unsafe {
        let t = &mut *tables();
        if t.percpu.frame_end != end {
            // (`new_truncate`: a kernel address, canonical; `new` checks out of line.)
            t.tss.privilege_stack_table[0] = VirtAddr::new_truncate(end);
            t.percpu.frame_end = end;
        }
    }
}

/// Sets the GS base user mode will see after the next `swapgs` on the way out.
#[inline(always)]
#[link_section = ".text.fast"]
pub fn set_user_gs(base: u64) {
    // SAFETY: single CPU with interrupts masked in the kernel: no concurrent access.
    if unsafe { core::mem::replace(&mut (*tables()).percpu.user_gs, base) } == base {
        return;
    }
    // SAFETY: IA32_KERNEL_GS_BASE only takes effect after the next swapgs, on the way to user
    // mode; any user address (or 0) is acceptable there.
    unsafe { wrmsr(0xc000_0102, base) };
}

/// Writes a model-specific register.
///
/// # Safety
/// The caller vouches that writing `value` to `msr` cannot break the kernel.
#[inline(always)]
unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        core::arch::asm!(
            "wrmsr",
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags)
        )
    };
}

/// Makes the next FPU/SSE instruction in user mode trap with #NM (`on`), or lets it run.
#[link_section = ".text.fast"]
pub fn fpu_trap(on: bool) {
    // SAFETY: single CPU with interrupts masked in the kernel: no concurrent access.
    let was = unsafe { core::mem::replace(&mut (*tables()).percpu.fpu_traps, on) };
    if was == on {
        return;
    }
    if on {
        // SAFETY: setting CR0.TS only makes the next FPU instruction trap (#NM), which the
        // kernel handles; no other CR0 bit changes.
        unsafe { Cr0::update(|f| f.insert(Cr0Flags::TASK_SWITCHED)) };
    } else {
        // SAFETY: clts only clears CR0.TS.
        unsafe { core::arch::asm!("clts", options(nostack, nomem, preserves_flags)) };
    }
}

/// Sets the FS base (user TLS) for the next user entries.
#[link_section = ".text.fast"]
pub fn set_user_fs(base: u64) {
    // SAFETY: single CPU with interrupts masked in the kernel: no concurrent access.
    if unsafe { core::mem::replace(&mut (*tables()).percpu.user_fs, base) } == base {
        return;
    }
    // SAFETY: IA32_FS_BASE only matters to user mode (the kernel does not use FS); any
    // canonical value is acceptable, and callers only pass user addresses or 0.
    unsafe { wrmsr(0xc000_0100, base) };
}

/// The time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Powers off through QEMU's isa-debug-exit device; halts forever on real hardware.
pub fn shutdown(status: u32) -> ! {
    // SAFETY: port 0xf4 is the isa-debug-exit device configured by xtask; on machines without
    // it the write is ignored and we halt below.
    unsafe { x86_64::instructions::port::Port::<u32>::new(0xf4).write(status) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

//! Guest worlds (`abi::vcpu`; design: `docs/guest-worlds.md`): a vCPU's guest kernel runs at
//! privilege level 1 in the address space of its user task, whose kernel half is replaced by
//! this trampoline: the pages the CPU needs to enter the kernel and nothing else.
//!
//! ```text
//!   world root:  PML4[0..256)  the user task's user half (its tables, shared), except
//!                              the guest's regions: its tables there, supervisor only (U = 0)
//!                              (a slot shown in part: a PDPT of the world's own)
//!                PML4[511]     TRAMP_PDPT → TRAMP_PD → TRAMP_PT:
//!                                the entry code page and `.text.world`     read, execute
//!                                the hot page's address → SHADOW           read
//!                                  (copies of the GDT and of a TSS whose rsp0 is ENTRY's top)
//!                                the IDT's pages                           read
//!                                CONFIG (what the trampoline needs)        read
//!                                ENTRY (scratch and entry stack)           read, write
//! ```
//!
//! Every entry from a world lands here, on ENTRY: an interrupt or exception (TSS.rsp0 of the
//! shadow TSS), or `syscall` (`LSTAR` is [`world_syscall_entry`] while a world thread runs).
//! Three cases are served without leaving the world: a system call or a page fault of the
//! user task, forwarded to the guest kernel as an upcall (`world_forward`), and a
//! `VcpuResume` of the guest kernel that continues the world's user task (`world_resume`).
//! Everything else loads the task's normal root (CONFIG.kernel_root), copies the registers to
//! the thread's frame and goes on as any entry; the way back copies them to ENTRY, loads the
//! world root and returns by `iretq` (`world_exit`).
//!
//! What the trampoline reads from ENTRY, which the guest can write, it trusts only within the
//! entry that wrote it: the level of the last exit (`mode`, which a `syscall` does not say)
//! decides only between the guest's and its user task's paths, both within the guest's own
//! reach, and selectors are the trampoline's own.

use crate::boot::PageTable;
use crate::paging::image_phys;
use crate::trap::{push_gprs, TrapFrame, GUEST_CS, GUEST_SS, SYSCALL_VECTOR, USER_CS, USER_SS};
use abi::vcpu::{off, state, sticky};
use core::arch::global_asm;
use core::mem::offset_of;
use kernel_core::hal::WorldExit;
use x86_64::structures::tss::TaskStateSegment;

/// The entry page: scratch words and, at its top, the frame every entry from a world saves.
#[repr(C, align(4096))]
pub struct EntryPage {
    /// The caller's stack pointer while `syscall` builds the frame.
    scratch: u64,
    /// The privilege level the last exit to the world went to (1: guest kernel, 3: user).
    mode: u64,
    _free: [u64; (4096 - 16 - FRAME_SIZE) / 8],
    /// A [`TrapFrame`] (only the assembly reads and writes it).
    frame: [u64; FRAME_WORDS],
}

const FRAME_SIZE: usize = core::mem::size_of::<TrapFrame>();
const FRAME_WORDS: usize = FRAME_SIZE / 8;
const _: () = assert!(core::mem::size_of::<EntryPage>() == 4096);

/// What the trampoline knows about the thread in the world (read-only there).
#[repr(C, align(4096))]
struct ConfigPage {
    exit: WorldExit,
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

pub(crate) static mut ENTRY: EntryPage =
    EntryPage { scratch: 0, mode: 0, _free: [0; (4096 - 16 - FRAME_SIZE) / 8], frame: [0; FRAME_WORDS] };
static mut CONFIG: ConfigPage = ConfigPage {
    exit: WorldExit {
        root: 0,
        kernel_root: 0,
        frame: 0,
        state: 0,
        utcb: 0,
        user_fs: 0,
        user_gs: 0,
        resume_rdx: 0,
        resume_user: 0,
    },
};
static mut SHADOW: Page = Page([0; 4096]);
static mut TRAMP_PDPT: PageTable = PageTable([0; 512]);
static mut TRAMP_PD: PageTable = PageTable([0; 512]);
/// Page tables for the image's first 4 MiB (the trampoline's pages all lie there).
static mut TRAMP_PT: [PageTable; 2] = [const { PageTable([0; 512]) }; 2];

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const NO_EXECUTE: u64 = 1 << 63;
const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;
/// The image's PDPT slot in PML4 511 (as in `paging`).
const IMAGE_SLOT: usize = 510;

extern "C" {
    static __world_text_start: u8;
    static __world_text_end: u8;
    static __text_start: u8;
    static __hot_page: u8;
}

/// Where the kernel's tables lie, for the trampoline's copies: the GDT's and TSS's bytes
/// (both in the hot page) and the IDT's.
pub struct Tables {
    pub gdt: (u64, usize),
    pub tss: u64,
    pub idt: (u64, usize),
}

/// Builds the shadow of the hot page and the trampoline's tables. Runs once, after the GDT and
/// TSS are loaded (the TSS descriptor is busy then, as the copy must be).
pub fn init(t: Tables) {
    // SAFETY: runs once at boot on the single CPU, before any world exists; every address
    // taken is a static of the image, mapped at its link address.
    unsafe {
        let hot = &raw const __hot_page as u64;
        let in_hot = |a: u64, n: usize| a >= hot && a + n as u64 <= hot + 4096;
        assert!(in_hot(t.gdt.0, t.gdt.1), "the GDT is not in the hot page");
        assert!(in_hot(t.tss, core::mem::size_of::<TaskStateSegment>()), "the TSS is not in the hot page");
        let shadow = &raw mut SHADOW;
        let src = hot as *const u8;
        for (a, n) in [(t.gdt.0, t.gdt.1), (t.tss, core::mem::size_of::<TaskStateSegment>())] {
            let o = (a - hot) as usize;
            core::ptr::copy_nonoverlapping(src.add(o), (*shadow).0.as_mut_ptr().add(o), n);
        }
        // The shadow TSS: entries from a world save on ENTRY (also a double fault: it is fatal
        // anyway, and there it can still be reported); no I/O bitmap, every port denied.
        let tss = (*shadow).0.as_mut_ptr().add((t.tss - hot) as usize) as *mut TaskStateSegment;
        let top = x86_64::VirtAddr::new_truncate(&raw const ENTRY as u64 + 4096);
        (*tss).privilege_stack_table[0] = top;
        (*tss).interrupt_stack_table[0] = top;
        (*tss).iomap_base = crate::cpu::NO_IO_BITMAP;

        let text = &raw const __text_start as u64;
        let (wt0, wt1) = (&raw const __world_text_start as u64, &raw const __world_text_end as u64);
        map(text, image_phys(text as *const u8).0, false, true);
        let mut a = wt0;
        while a < wt1 {
            map(a, image_phys(a as *const u8).0, false, true);
            a += 4096;
        }
        map(hot, image_phys(shadow as *const Page).0, false, false);
        let mut a = t.idt.0 & !0xfff;
        while a < t.idt.0 + t.idt.1 as u64 {
            map(a, image_phys(a as *const u8).0, false, false);
            a += 4096;
        }
        let config = &raw const CONFIG as u64;
        map(config, image_phys(config as *const u8).0, false, false);
        let entry = &raw const ENTRY as u64;
        map(entry, image_phys(entry as *const u8).0, true, false);

        let pd = &raw mut TRAMP_PD;
        let pts = &raw mut TRAMP_PT;
        for (i, pt) in (*pts).iter().enumerate() {
            (*pd).0[i] = image_phys(pt as *const PageTable).0 | PRESENT | WRITABLE;
        }
        let pdpt = &raw mut TRAMP_PDPT;
        (*pdpt).0[IMAGE_SLOT] = image_phys(pd as *const PageTable).0 | PRESENT | WRITABLE;
    }
}

/// Enters one page of the image into the trampoline's tables (supervisor only).
///
/// # Safety
/// Boot only, single CPU: writes the trampoline's static tables.
unsafe fn map(va: u64, pa: u64, write: bool, exec: bool) {
    let i = ((va - KERNEL_VMA) >> 12) as usize;
    assert!(i < 2 * 512, "a trampoline page beyond the image's first 4 MiB");
    let e = pa | PRESENT | if write { WRITABLE } else { 0 } | if exec { 0 } else { NO_EXECUTE };
    // SAFETY: guaranteed by the caller.
    unsafe {
        let pts = &raw mut TRAMP_PT;
        (*pts)[i / 512].0[i % 512] = e;
    }
}

/// The entry page's address: the one page of the kernel a world may write (self-tests).
pub fn entry_page() -> u64 {
    &raw const ENTRY as u64
}

/// The PML4 entry of a world's kernel half: the trampoline.
pub fn kernel_half() -> u64 {
    image_phys(&raw const TRAMP_PDPT).0 | PRESENT | WRITABLE
}

/// Records what the trampoline needs to know of the thread that runs in a world next.
#[inline(always)]
pub fn configure(w: &WorldExit) {
    // SAFETY: single CPU with interrupts masked in the kernel: the trampoline reads CONFIG
    // only in a world, never while the kernel writes it.
    unsafe {
        let c = &raw mut CONFIG;
        (*c).exit = *w;
    }
}

extern "C" {
    /// `LSTAR` while a thread in a world runs.
    pub fn world_syscall_entry();
}

// Offsets for the assembly.
const F_CS: usize = offset_of!(TrapFrame, cs);
const F_VECTOR: usize = offset_of!(TrapFrame, vector);
const F_ERROR: usize = offset_of!(TrapFrame, error);
const C_ROOT: usize = offset_of!(WorldExit, kernel_root);
const C_FRAME: usize = offset_of!(WorldExit, frame);
const C_STATE: usize = offset_of!(WorldExit, state);
const C_UTCB: usize = offset_of!(WorldExit, utcb);
const C_FS: usize = offset_of!(WorldExit, user_fs);
const C_GS: usize = offset_of!(WorldExit, user_gs);
const C_RESUME_RDX: usize = offset_of!(WorldExit, resume_rdx);
const C_RESUME_USER: usize = offset_of!(WorldExit, resume_user);
const E_SCRATCH: usize = offset_of!(EntryPage, scratch);
const E_MODE: usize = offset_of!(EntryPage, mode);
pub(crate) const E_FRAME: usize = offset_of!(EntryPage, frame);
/// State area word `i` of the context (`VcpuRegs` order: rax rbx rcx rdx rsi rdi rbp r8 ..
/// r15 rip rsp rflags fs gs).
const fn reg(i: usize) -> usize {
    (off::REGS + i) * 8
}
/// The frame's offset of `VcpuRegs` word `i`.
const fn freg(i: usize) -> usize {
    let order = [
        offset_of!(TrapFrame, rax),
        offset_of!(TrapFrame, rbx),
        offset_of!(TrapFrame, rcx),
        offset_of!(TrapFrame, rdx),
        offset_of!(TrapFrame, rsi),
        offset_of!(TrapFrame, rdi),
        offset_of!(TrapFrame, rbp),
        offset_of!(TrapFrame, r8),
        offset_of!(TrapFrame, r9),
        offset_of!(TrapFrame, r10),
        offset_of!(TrapFrame, r11),
        offset_of!(TrapFrame, r12),
        offset_of!(TrapFrame, r13),
        offset_of!(TrapFrame, r14),
        offset_of!(TrapFrame, r15),
        offset_of!(TrapFrame, rip),
        offset_of!(TrapFrame, rsp),
        offset_of!(TrapFrame, rflags),
    ];
    order[i]
}
const RESUME_TAG: u64 = abi::MsgTag::new(abi::proto::thread::LABEL, 1, 0, 0).0;

global_asm!(
    r#"
    .section .text.world, "ax"

    /* syscall in a world: the frame on ENTRY as syscall_entry builds it, at the level of the
       last exit (the guest kernel's or its user task's). */
    .global world_syscall_entry
    .p2align 4
world_syscall_entry:
    mov [rip + {entry} + {e_scratch}], rsp
    lea rsp, [rip + {entry} + {e_frame} + {frame_size}]
    cmp qword ptr [rip + {entry} + {e_mode}], 1
    je 1f
    push {user_ss}
    push qword ptr [rip + {entry} + {e_scratch}]
    push r11
    push {user_cs}
    jmp 2f
1:  push {guest_ss}
    push qword ptr [rip + {entry} + {e_scratch}]
    push r11
    push {guest_cs}
2:  push rcx
    push 0
    push {syscall_vector}
"#,
    push_gprs!(),
    r#"
    cmp qword ptr [rip + {entry} + {e_mode}], 1
    je world_resume

    /* A system call of the user task: the guest kernel's, as an upcall from here. */
    mov r8d, {trap_syscall}
    xor r9d, r9d
    xor r10d, r10d
    lea r11, [rip + world_syscall_kernel]

    /* An event of the user task (frame on ENTRY) taken by the guest kernel as an upcall (as
       Kernel::vcpu_upcall makes one): the context and r8..r10 (trap number, error code,
       fault address) into the state area, the flags, then the entry at level 1. An unusable
       entry is the kernel's to handle: on at r11. */
world_forward:
    mov rdi, [rip + {config} + {c_state}]
    mov rax, [rdi + {o_entry_ip}]
    mov rdx, [rdi + {o_entry_sp}]
    mov rcx, {user_end}
    cmp rax, rcx
    jae 3f
    cmp rdx, rcx
    jae 3f
    mov rcx, [rsp + {f0}]
    mov [rdi + {r0}], rcx
    mov rcx, [rsp + {f1}]
    mov [rdi + {r1}], rcx
    mov rcx, [rsp + {f2}]
    mov [rdi + {r2}], rcx
    mov rcx, [rsp + {f3}]
    mov [rdi + {r3}], rcx
    mov rcx, [rsp + {f4}]
    mov [rdi + {r4}], rcx
    mov rcx, [rsp + {f5}]
    mov [rdi + {r5}], rcx
    mov rcx, [rsp + {f6}]
    mov [rdi + {r6}], rcx
    mov rcx, [rsp + {f7}]
    mov [rdi + {r7}], rcx
    mov rcx, [rsp + {f8}]
    mov [rdi + {r8}], rcx
    mov rcx, [rsp + {f9}]
    mov [rdi + {r9}], rcx
    mov rcx, [rsp + {f10}]
    mov [rdi + {r10}], rcx
    mov rcx, [rsp + {f11}]
    mov [rdi + {r11}], rcx
    mov rcx, [rsp + {f12}]
    mov [rdi + {r12}], rcx
    mov rcx, [rsp + {f13}]
    mov [rdi + {r13}], rcx
    mov rcx, [rsp + {f14}]
    mov [rdi + {r14}], rcx
    mov rcx, [rsp + {f15}]
    mov [rdi + {r15}], rcx
    mov rcx, [rsp + {f16}]
    mov [rdi + {r16}], rcx
    mov rcx, [rsp + {f17}]
    mov [rdi + {r17}], rcx
    mov rcx, [rip + {config} + {c_fs}]
    mov [rdi + {o_fs}], rcx
    mov rcx, [rip + {config} + {c_gs}]
    mov [rdi + {o_gs}], rcx
    mov [rdi + {o_trapno}], r8
    mov [rdi + {o_err}], r9
    mov [rdi + {o_pfa}], r10
    mov rcx, [rdi + {o_state}]
    mov [rdi + {o_saved_state}], rcx
    mov qword ptr [rdi + {o_state}], 0
    mov qword ptr [rip + {entry} + {e_mode}], 1
    lea rsp, [rip + {entry} + {e_frame} + {frame_size}]
    push {guest_ss}
    push rdx
    push 0x202
    push {guest_cs}
    push rax
    mov rcx, rax
    mov r11d, 0x202
    xor eax, eax
    xor ebx, ebx
    xor edx, edx
    xor esi, esi
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    iretq
3:  jmp r11

    /* A system call of the guest kernel: a VcpuResume the kernel checked before (CONFIG's
       resume_rdx and resume_user) that continues the world's user task, without map items
       or a pending interrupt and with its FS/GS bases unchanged, is completed here; rax, rdx
       and r8 still hold the call's tag, selector and timeouts. */
world_resume:
    mov r9, [rip + {config} + {c_resume_rdx}]
    test r9, r9
    jz world_syscall_kernel
    cmp rdx, r9
    jne world_syscall_kernel
    test r8, r8
    jnz world_syscall_kernel
    mov r9, {resume_tag}
    cmp rax, r9
    jne world_syscall_kernel
    mov r9, [rip + {config} + {c_utcb}]
    cmp qword ptr [r9], {resume_op}
    jne world_syscall_kernel
    mov rdi, [rip + {config} + {c_state}]
    mov r9, [rdi + {o_user_task}]
    cmp r9, [rip + {config} + {c_resume_user}]
    jne world_syscall_kernel
    mov r10, [rdi + {o_saved_state}]
    test r10, {user_mode}
    jz world_syscall_kernel
    test qword ptr [rdi + {o_sticky}], {irq_pending}
    jnz world_syscall_kernel
    mov r9, [rdi + {o_fs}]
    cmp r9, [rip + {config} + {c_fs}]
    jne world_syscall_kernel
    mov r9, [rdi + {o_gs}]
    cmp r9, [rip + {config} + {c_gs}]
    jne world_syscall_kernel
    mov rcx, {user_end}
    cmp [rdi + {r15}], rcx
    jae world_syscall_kernel
    cmp [rdi + {r16}], rcx
    jae world_syscall_kernel
    /* Committed: the flags as asked, then the context. */
    mov [rdi + {o_state}], r10
    mov qword ptr [rip + {entry} + {e_mode}], 3
    mov r11, [rdi + {r17}]
    and r11, 0xcd5
    or r11, 0x202
    mov rcx, [rdi + {r15}]
    cmp rcx, [rdi + {r2}]
    jne 2f
    cmp r11, [rdi + {r10}]
    jne 2f
    /* rcx and r11 are ip and flags: sysret restores the context exactly. */
    mov rsp, [rdi + {r16}]
    mov rax, [rdi + {r0}]
    mov rbx, [rdi + {r1}]
    mov rdx, [rdi + {r3}]
    mov rsi, [rdi + {r4}]
    mov rbp, [rdi + {r6}]
    mov r8, [rdi + {r7}]
    mov r9, [rdi + {r8}]
    mov r10, [rdi + {r9}]
    mov r12, [rdi + {r11}]
    mov r13, [rdi + {r12}]
    mov r14, [rdi + {r13}]
    mov r15, [rdi + {r14}]
    mov rdi, [rdi + {r5}]
    sysretq
2:  lea rsp, [rip + {entry} + {e_frame} + {frame_size}]
    push {user_ss}
    push qword ptr [rdi + {r16}]
    push r11
    push {user_cs}
    push rcx
    mov rax, [rdi + {r0}]
    mov rbx, [rdi + {r1}]
    mov rcx, [rdi + {r2}]
    mov rdx, [rdi + {r3}]
    mov rsi, [rdi + {r4}]
    mov rbp, [rdi + {r6}]
    mov r8, [rdi + {r7}]
    mov r9, [rdi + {r8}]
    mov r10, [rdi + {r9}]
    mov r11, [rdi + {r10}]
    mov r12, [rdi + {r11}]
    mov r13, [rdi + {r12}]
    mov r14, [rdi + {r13}]
    mov r15, [rdi + {r14}]
    mov rdi, [rdi + {r5}]
    iretq

    /* Into the kernel from a system call in a world: the task's normal root, the registers
       into the thread's frame, then on as syscall_entry goes on. */
world_syscall_kernel:
    call world_to_kernel
    call arch_syscall
    mov rsp, rax
    jmp syscall_return

    /* An interrupt or exception (isr_common found its frame on ENTRY). A page fault of the
       user task is the guest kernel's: an upcall from here, the address-space switches to the
       kernel and back saved. Anything else goes into the kernel, as a system call does. */
    .global world_trap_entry
world_trap_entry:
    cmp qword ptr [rsp + {f_vector}], 14
    jne world_trap_kernel
    test byte ptr [rsp + {f_cs}], 2
    jz world_trap_kernel
    mov r8d, 14
    mov r9, [rsp + {f_error}]
    mov r10, cr2
    lea r11, [rip + world_trap_kernel]
    jmp world_forward
world_trap_kernel:
    call world_to_kernel
    call arch_trap
    mov rsp, rax
    jmp trap_return

    /* The common part: on return rdi is the frame, rsp the kernel stack (the return address
       taken along), GS the kernel's. */
world_to_kernel:
    pop rbx
    mov rax, [rip + {config} + {c_root}]
    mov cr3, rax
    swapgs
    mov gs:[{root_at}], rax
    cld
    mov rdi, [rip + {config} + {c_frame}]
    lea rsi, [rip + {entry} + {e_frame}]
    mov ecx, {frame_words}
    rep movsq
    mov rdi, [rip + {config} + {c_frame}]
    lea rsp, [rip + {stack} + {stack_size}]
    push rbx
    ret

    /* resume_context's way into a world: rdi = the world's root, rsi = the frame. The frame
       goes to the entry page, then out as trap_return leaves (its page is mapped there). */
    .global world_exit
world_exit:
    mov r8, rdi
    lea rdi, [rip + {entry} + {e_frame}]
    mov ecx, {frame_words}
    rep movsq
    mov rax, [rip + {entry} + {e_frame} + {f_cs}]
    and eax, 3
    mov [rip + {entry} + {e_mode}], rax
    mov cr3, r8
    lea rsp, [rip + {entry} + {e_frame}]
    jmp trap_return
    "#,
    entry = sym ENTRY,
    config = sym CONFIG,
    stack = sym crate::cpu::KERNEL_STACK,
    stack_size = const crate::cpu::KERNEL_STACK_SIZE,
    root_at = const crate::cpu::ROOT_AT,
    e_scratch = const E_SCRATCH,
    e_mode = const E_MODE,
    e_frame = const E_FRAME,
    frame_size = const FRAME_SIZE,
    frame_words = const FRAME_WORDS,
    f_cs = const F_CS,
    f_vector = const F_VECTOR,
    f_error = const F_ERROR,
    c_root = const C_ROOT,
    c_frame = const C_FRAME,
    c_state = const C_STATE,
    c_utcb = const C_UTCB,
    c_fs = const C_FS,
    c_gs = const C_GS,
    c_resume_rdx = const C_RESUME_RDX,
    c_resume_user = const C_RESUME_USER,
    user_ss = const USER_SS,
    user_cs = const USER_CS,
    guest_ss = const GUEST_SS,
    guest_cs = const GUEST_CS,
    syscall_vector = const SYSCALL_VECTOR,
    user_end = const abi::kip::USER_END,
    o_entry_ip = const off::ENTRY_IP * 8,
    o_entry_sp = const off::ENTRY_SP * 8,
    o_state = const off::STATE * 8,
    o_saved_state = const off::SAVED_STATE * 8,
    o_sticky = const off::STICKY * 8,
    o_user_task = const off::USER_TASK * 8,
    o_trapno = const off::TRAPNO * 8,
    o_err = const off::ERR * 8,
    o_pfa = const off::PFA * 8,
    o_fs = const reg(18),
    o_gs = const reg(19),
    trap_syscall = const abi::vcpu::trap::SYSCALL,
    user_mode = const state::USER_MODE,
    irq_pending = const sticky::IRQ_PENDING,
    resume_tag = const RESUME_TAG,
    resume_op = const abi::proto::thread::Op::VcpuResume.code(),
    r0 = const reg(0),
    f0 = const freg(0),
    r1 = const reg(1),
    f1 = const freg(1),
    r2 = const reg(2),
    f2 = const freg(2),
    r3 = const reg(3),
    f3 = const freg(3),
    r4 = const reg(4),
    f4 = const freg(4),
    r5 = const reg(5),
    f5 = const freg(5),
    r6 = const reg(6),
    f6 = const freg(6),
    r7 = const reg(7),
    f7 = const freg(7),
    r8 = const reg(8),
    f8 = const freg(8),
    r9 = const reg(9),
    f9 = const freg(9),
    r10 = const reg(10),
    f10 = const freg(10),
    r11 = const reg(11),
    f11 = const freg(11),
    r12 = const reg(12),
    f12 = const freg(12),
    r13 = const reg(13),
    f13 = const freg(13),
    r14 = const reg(14),
    f14 = const freg(14),
    r15 = const reg(15),
    f15 = const freg(15),
    r16 = const reg(16),
    f16 = const freg(16),
    r17 = const reg(17),
    f17 = const freg(17),
);

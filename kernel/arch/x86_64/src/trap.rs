//! Kernel entry and exit: interrupt/exception stubs, the `syscall` entry, the saved-register
//! frame, and the resumption of a thread from its frame.
//!
//! There are no per-thread kernel stacks. Every entry from user mode saves a [`TrapFrame`]
//! into the current thread's [`Context`] (inside its entry of the thread arena, which the fast
//! paths read anyway: under TCG every page touched after an address-space switch costs a TLB
//! refill) and then runs the kernel on the CPU's one kernel stack, whose top shares the hot
//! data page (`cpu::KERNEL_STACK`). A thread leaves the kernel by returning (the exit matching
//! its entry: `iretq` after an interrupt or exception, `sysretq` after `syscall`) or, when it
//! blocks, is preempted or gets a new context, is resumed later straight from its frame
//! ([`resume`]); the kernel context it leaves behind is abandoned. Only the idle loop, on the
//! boot stack, has a kernel context that is kept ([`switch`]).

use abi::proto::exc_regs;
use abi::syscall::REG_WORDS;
use core::arch::global_asm;
use kernel_core::hal::Message;
use kernel_core::mem::PhysAddr;

/// Vector number recorded in frames built by the `syscall` entry.
pub const SYSCALL_VECTOR: u64 = 0x100;
/// Local APIC timer.
pub const TIMER_VECTOR: u8 = 0x20;
/// Local APIC spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// The legacy PIC is remapped here and masked; only its spurious IRQs 7/15 can arrive.
pub const PIC_BASE: u8 = 0x30;

/// User code and stack selectors (RPL 3), fixed by the GDT order that `sysret` demands.
pub const USER_CS: u64 = 0x23;
pub const USER_SS: u64 = 0x1b;
/// A guest kernel's code and stack selectors in a guest world (RPL 1; `world.rs`).
pub const GUEST_CS: u64 = 0x39;
pub const GUEST_SS: u64 = 0x41;

/// Registers saved on kernel entry, lowest address first. 16-byte aligned, so that its end is
/// too: the CPU aligns the stack pointer it loads from `TSS.rsp0` to 16 bytes before saving.
#[repr(C, align(16))]
#[derive(Clone, Debug, Default)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Interrupt vector, or [`SYSCALL_VECTOR`].
    pub vector: u64,
    /// Hardware error code (0 where the CPU pushes none).
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 176);
// A register message's words (abi::syscall::REG_WORDS: r15, r14, r13, r12) open the frame, in
// order: `resume_context` delivers them with the copy that delivers UTCB words.
const _: () =
    assert!(core::mem::offset_of!(TrapFrame, r15) == 0 && core::mem::offset_of!(TrapFrame, r12) == 24);

impl TrapFrame {
    /// A frame that enters user mode at `ip` with stack `sp` and interrupts enabled.
    pub fn new_user(ip: u64, sp: u64) -> Self {
        TrapFrame { rip: ip, rsp: sp, cs: USER_CS, ss: USER_SS, rflags: 0x202, ..Default::default() }
    }

    /// Saved on an entry from user mode or from a guest kernel (level 1).
    pub fn from_user(&self) -> bool {
        self.cs & 3 != 0
    }
}

impl kernel_core::hal::UserRegs for TrapFrame {
    fn syscall_args(&self) -> [u64; 4] {
        [self.rdx, self.rax, self.rsi, self.r8]
    }

    fn set_syscall_result(&mut self, tag: u64, label: u64) {
        self.rax = tag;
        self.rsi = label;
    }

    #[inline(always)]
    fn reg_words(&self) -> [u64; REG_WORDS] {
        [self.r15, self.r14, self.r13, self.r12]
    }

    fn ip(&self) -> u64 {
        self.rip
    }

    fn sp(&self) -> u64 {
        self.rsp
    }

    fn flags(&self) -> u64 {
        self.rflags
    }

    fn set_ip(&mut self, ip: u64) {
        self.rip = ip;
    }

    fn set_sp(&mut self, sp: u64) {
        self.rsp = sp;
    }

    fn exception_words(&self, trapno: u64, error: u64, addr: u64) -> [u64; exc_regs::WORDS] {
        use exc_regs::*;
        let mut w = [0u64; WORDS];
        (w[TRAPNO], w[ERROR], w[IP], w[SP], w[FLAGS], w[FAULT_ADDR]) =
            (trapno, error, self.rip, self.rsp, self.rflags, addr);
        (w[RAX], w[RBX], w[RCX], w[RDX]) = (self.rax, self.rbx, self.rcx, self.rdx);
        (w[RSI], w[RDI], w[RBP], w[R8]) = (self.rsi, self.rdi, self.rbp, self.r8);
        w
    }

    fn apply_exception_words(&mut self, r: &[u64; exc_regs::WORDS]) {
        use exc_regs::*;
        if r[IP] < abi::kip::USER_END && r[SP] < abi::kip::USER_END {
            (self.rip, self.rsp) = (r[IP], r[SP]);
        }
        // Only the arithmetic flags (CF PF AF ZF SF OF) are the thread's to change.
        self.rflags = (self.rflags & !0x8d5) | (r[FLAGS] & 0x8d5);
        (self.rax, self.rbx, self.rcx, self.rdx) = (r[RAX], r[RBX], r[RCX], r[RDX]);
        (self.rsi, self.rdi, self.rbp, self.r8) = (r[RSI], r[RDI], r[RBP], r[R8]);
    }

    #[inline(always)]
    fn save_context(&self, pa: PhysAddr, tail: [u64; 5]) {
        crate::paging::with_words_mut::<23>(pa, |d| {
            [d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]] =
                [self.rax, self.rbx, self.rcx, self.rdx, self.rsi, self.rdi, self.rbp, self.r8];
            [d[8], d[9], d[10], d[11], d[12], d[13], d[14]] =
                [self.r9, self.r10, self.r11, self.r12, self.r13, self.r14, self.r15];
            [d[15], d[16], d[17]] = [self.rip, self.rsp, self.rflags];
            [d[18], d[19], d[20], d[21], d[22]] = tail;
        })
    }

    #[inline(always)]
    fn set_entry(&mut self, ip: u64, sp: u64, arg: u64, guest: bool) -> bool {
        if ip >= abi::kip::USER_END || sp >= abi::kip::USER_END {
            return false;
        }
        [self.rax, self.rbx, self.rdx, self.rsi, self.rbp, self.r8, self.r9, self.r10] = [0; 8];
        [self.r12, self.r13, self.r14, self.r15] = [0; 4];
        (self.rcx, self.rdi, self.r11) = (ip, arg, 0x202);
        (self.rip, self.rsp, self.rflags) = (ip, sp, 0x202);
        (self.cs, self.ss) = selectors(guest);
        true
    }

    fn guest_mode(&self) -> bool {
        self.cs == GUEST_CS
    }

    #[link_section = ".text.fast.vcpu"]
    fn load_context(&mut self, pa: PhysAddr, guest: bool) -> bool {
        crate::paging::with_words::<18, _>(pa, |c| {
            if c[15] >= abi::kip::USER_END || c[16] >= abi::kip::USER_END {
                return false;
            }
            [self.rax, self.rbx, self.rcx, self.rdx, self.rsi, self.rdi, self.rbp, self.r8] =
                [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
            [self.r9, self.r10, self.r11, self.r12, self.r13, self.r14, self.r15] =
                [c[8], c[9], c[10], c[11], c[12], c[13], c[14]];
            (self.rip, self.rsp) = (c[15], c[16]);
            // Arithmetic flags and DF are the context's; IF stays on, IOPL/TF/NT/AC stay off.
            self.rflags = (c[17] & 0xcd5) | 0x202;
            (self.cs, self.ss) = selectors(guest);
            true
        })
    }

    #[inline(always)]
    fn syscall_exit_exact(&self) -> bool {
        (self.rcx == self.rip) & (self.r11 == self.rflags)
    }
}

/// The code and stack selectors of a user-mode context, or of a guest kernel's.
#[inline(always)]
fn selectors(guest: bool) -> (u64, u64) {
    if guest {
        (GUEST_CS, GUEST_SS)
    } else {
        (USER_CS, USER_SS)
    }
}

/// A thread's registers and FPU area ([`kernel_core::hal::ThreadContext`]).
pub struct Context {
    /// Saved here by every entry from user mode while the thread is current (`TSS.rsp0` and
    /// the `syscall` entry's stack pointer point at its end), loaded from here by every exit.
    regs: TrapFrame,
    /// The x87/SSE state while another thread owns the FPU (FXSAVE layout).
    fpu: alloc::boxed::Box<FxArea>,
}

const FX_SIZE: usize = 512;

#[repr(C, align(16))]
struct FxArea([u8; FX_SIZE]);

impl kernel_core::hal::ThreadContext for Context {
    type Regs = TrapFrame;

    fn new_user() -> Self {
        let mut fpu = alloc::boxed::Box::new(FxArea([0; FX_SIZE]));
        // The state after FNINIT: x87 control word 0x37f, all SSE exceptions masked.
        fpu.0[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        fpu.0[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        Context { regs: TrapFrame::new_user(0, 0), fpu }
    }

    fn regs(&mut self) -> &mut TrapFrame {
        &mut self.regs
    }

    #[inline(always)]
    fn frame(&self) -> u64 {
        &raw const self.regs as u64
    }

    #[inline(always)]
    fn hand_off(&mut self, msg: Message, tag: u64, label: u64) {
        // Only the address is taken here: `resume_context` writes the frame (and the UTCB)
        // after the switch.
        let frame = self.frame();
        match msg {
            Message::Utcb { dst, src, words } => {
                crate::cpu::stage_hand_off(frame, dst, src, words, tag, label)
            }
            Message::Regs { words, n } => crate::cpu::stage_regs(frame, words, n, tag, label),
        }
    }

    fn fpu_save(&mut self) {
        // SAFETY: the area is 512 bytes, 16-byte aligned, owned by this context; the FPU is
        // enabled (CR0.TS clear) whenever the kernel calls this.
        unsafe {
            core::arch::asm!("fxsave64 [{}]", in(reg) self.fpu.0.as_mut_ptr(), options(nostack, preserves_flags))
        };
    }

    fn fpu_restore(&self) {
        // SAFETY: as in `fpu_save`; the area holds a valid FXSAVE image (initialised above or
        // saved by `fpu_save`), so FXRSTOR cannot fault on reserved MXCSR bits.
        unsafe {
            core::arch::asm!("fxrstor64 [{}]", in(reg) self.fpu.0.as_ptr(), options(nostack, preserves_flags))
        };
    }
}

/// Assembly that pushes the general registers in [`TrapFrame`] order (r15 ends up lowest):
/// the one list every entry path uses, here and in the guest-world trampoline (`world.rs`),
/// whose `global_asm!` cannot see this file's assembler macros.
macro_rules! push_gprs {
    () => {
        "push rax; push rbx; push rcx; push rdx; push rsi; push rdi; push rbp; push r8; push r9;
         push r10; push r11; push r12; push r13; push r14; push r15"
    };
}
pub(crate) use push_gprs;

global_asm!(
    ".macro push_gprs",
    push_gprs!(),
    ".endm",
    r#"
    .macro pop_gprs
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    .endm

    /* The stubs are mapped into guest worlds with the trampoline (world.rs). */
    .section .text.world, "ax"
    .p2align 4
    .global isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .p2align 4
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    push 0
    .endif
    push vec
    jmp isr_common
    .set vec, vec + 1
    .endr

    /* The common stub and the way back to user mode sit in .text.fast.0 with the system-call
       entry: a vCPU's user task enters here on every fault, and under TCG each code page
       touched after an address-space switch costs a TLB refill. */
    .section .text.fast.0, "ax"
    /* #PF and #NM have their own copies of the stub here, next to isr_common: every page
       fault of a vCPU's user task (a Linux process) and every lazy FPU switch comes this
       way, and the stub array is a page of its own. */
    .global page_fault_entry
page_fault_entry:
    push 14
    jmp isr_common
    .global fpu_trap_entry
fpu_trap_entry:
    push 0
    push 7
    jmp isr_common
    /* From user mode the CPU saved the frame's top into the current thread's frame
       (TSS.rsp0): finish it there, then run on the kernel stack. From kernel mode (the idle
       loop, or a fault of the kernel) the frame is on the stack in use, which stays. arch_trap
       returns the frame to leave by. */
isr_common:
    test qword ptr [rsp + 24], 3
    jz 3f
    push_gprs
    /* From a guest world the frame is on its entry page (the shadow TSS's rsp0). */
    mov rdi, rsp
    lea rax, [rip + {world_entry} + {world_frame}]
    cmp rdi, rax
    je world_trap_entry
    swapgs
    lea rsp, [rip + {stack} + {stack_size}]
    cld
    call arch_trap
    mov rsp, rax
    .global trap_return
trap_return:
    pop_gprs
    add rsp, 16
    test qword ptr [rsp + 8], 3
    jz 2f
    swapgs
2:  iretq
3:  push_gprs
    mov rdi, rsp
    cld
    call arch_trap
    mov rsp, rax
    jmp trap_return

    /* The system-call path opens .text (.text.fast.0), followed by the Rust fast path
       (.text.fast.ipc): under TCG every code page touched after an address-space switch
       costs a TLB refill, so a fast IPC hand-off runs in one code page. The frame goes into
       the current thread (gs:8 is its end), the kernel runs on the kernel stack; arch_syscall
       returns the frame to leave by. */
    .section .text.fast.0, "ax"
    .global syscall_entry
    .p2align 4
syscall_entry:
    swapgs
    mov gs:[16], rsp
    mov rsp, gs:[8]
    push {user_ss}
    push qword ptr gs:[16]
    push r11
    push {user_cs}
    push rcx
    push 0
    push {syscall_vector}
    push_gprs
    mov rdi, rsp
    lea rsp, [rip + {stack} + {stack_size}]
    cld
    call arch_syscall
    mov rsp, rax
    .global syscall_return
syscall_return:
    pop_gprs
    mov rcx, [rsp + 16]
    mov r11, [rsp + 32]
    mov rsp, [rsp + 40]
    swapgs
    sysretq

    /* switch_context(save_rsp [rdi], cr3 or 0 [rsi], frame [rdx], how [rcx]): saves the
       callee-saved registers on this stack (the idle loop's, the one context kept) and
       resumes a thread through resume_context. */
    .global switch_context
switch_context:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [rdi], rsp
    mov rdi, rsi
    mov rsi, rdx
    mov rdx, rcx

    /* resume_context(cr3 or 0 [rdi], rsp [rsi], how [rdx]): loads an address space (late:
       every page touched after this write costs a TLB refill under TCG), delivers the IPC
       fast path's staged message (cpu::HandOff) and leaves: by sysret (how = 1) or iret
       (2) from the frame at rsp, or into the kernel context saved there (0: the idle loop's,
       by switch_context). Direct jumps, not a `ret` through a pushed address: after a switch
       QEMU looks an indirect branch's target up in its translation-block table (the switch
       flushed its jump cache), while direct jumps within a page stay chained. */
    .global resume_context
resume_context:
    cmp edx, {by_world}
    je world_exit
    test rdi, rdi
    jz 1f
    mov cr3, rdi
    mov gs:[{root}], rdi
1:  mov rsp, rsi
    mov rdi, gs:[{ho_frame}]
    test rdi, rdi
    jnz 3f
2:  cmp edx, {by_sysret}
    je syscall_return
    cmp edx, {by_iret}
    je trap_return
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
3:  mov rax, gs:[{ho_tag}]
    mov [rdi + {frame_rax}], rax
    mov rax, gs:[{ho_label}]
    mov [rdi + {frame_rsi}], rax
    mov qword ptr gs:[{ho_frame}], 0
    mov rdi, gs:[{ho_dst}]
    mov rcx, gs:[{ho_words}]
    mov rsi, gs:[0]
    add rsi, {ho_buf}
    rep movsq
    jmp 2b
    "#,
    user_ss = const USER_SS,
    user_cs = const USER_CS,
    syscall_vector = const SYSCALL_VECTOR,
    stack = sym crate::cpu::KERNEL_STACK,
    stack_size = const crate::cpu::KERNEL_STACK_SIZE,
    by_sysret = const By::Sysret as u32,
    by_iret = const By::Iret as u32,
    by_world = const By::World as u32,
    world_entry = sym crate::world::ENTRY,
    world_frame = const crate::world::E_FRAME,
    root = const crate::cpu::ROOT_AT,
    ho_frame = const crate::cpu::HAND_OFF_FRAME,
    ho_dst = const crate::cpu::HAND_OFF_DST,
    ho_words = const crate::cpu::HAND_OFF_WORDS_AT,
    ho_tag = const crate::cpu::HAND_OFF_TAG,
    ho_label = const crate::cpu::HAND_OFF_LABEL,
    ho_buf = const crate::cpu::HAND_OFF_BUF,
    frame_rax = const core::mem::offset_of!(TrapFrame, rax),
    frame_rsi = const core::mem::offset_of!(TrapFrame, rsi),
);

extern "C" {
    /// First of 256 16-byte entry stubs, one per vector.
    pub fn isr_stubs();
    /// The entries of #PF (vector 14) and #NM (7), beside the common stub.
    pub fn page_fault_entry();
    pub fn fpu_trap_entry();
    pub fn syscall_entry();
    fn switch_context(save_rsp: *mut u64, cr3: u64, frame: u64, how: u32);
    fn resume_context(cr3: u64, rsp: u64, how: u32) -> !;
}

/// How [`resume_context`] leaves (`resume_context`'s `how`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Into the kernel context saved at the stack pointer (the idle loop's).
    Context = 0,
    /// `sysretq` from the frame at the stack pointer.
    Sysret = 1,
    /// `iretq` from the frame at the stack pointer.
    Iret = 2,
    /// Into a guest world (`cr3` is the world's root): `iretq` from the frame, by way of the
    /// world's entry page (`world.rs`).
    World = 3,
}

impl From<kernel_core::hal::Resume> for By {
    #[inline(always)]
    fn from(r: kernel_core::hal::Resume) -> By {
        match r {
            kernel_core::hal::Resume::Syscall => By::Sysret,
            kernel_core::hal::Resume::Exception => By::Iret,
        }
    }
}

/// Abandons the current kernel context and resumes at `rsp` the way `how` says (a thread's
/// frame, or the idle loop's saved context), loading `cr3` first unless it is 0.
///
/// # Safety
/// `rsp` must be the frame of a live thread (to be left by `sysretq` or `iretq`, its fields
/// user-mode values) or the idle context saved by [`switch`]; `cr3` must be 0 or a root
/// sharing the kernel half. Nothing on the current stack may still be needed.
#[link_section = ".text.fast.ipc"]
pub unsafe fn resume(cr3: u64, rsp: u64, how: By) -> ! {
    // SAFETY: guaranteed by the caller.
    unsafe { resume_context(cr3, rsp, how as u32) }
}

/// Saves the current kernel context into `*save_rsp` and resumes a thread from its frame, as
/// [`resume`] does.
///
/// # Safety
/// As for [`resume`]; `save_rsp` must stay valid until the saved context is resumed.
pub unsafe fn switch(save_rsp: *mut u64, cr3: u64, frame: u64, how: By) {
    // SAFETY: the caller guarantees the frame; switch_context follows the C ABI and saves
    // all callee-saved registers on the current stack.
    unsafe { switch_context(save_rsp, cr3, frame, how as u32) }
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}

//! Kernel entry and exit: interrupt/exception stubs, the `syscall` entry, the common saved-register
//! frame, and the kernel-stack switch between threads.
//!
//! Every entry from user mode builds a [`TrapFrame`] at the top of the current thread's kernel
//! stack. A thread leaves the kernel by the exit path matching how it entered (`iretq` after an
//! interrupt or exception, `sysretq` after `syscall`); a new thread starts through `trap_return`.

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

/// Registers saved on kernel entry, lowest address first.
#[repr(C)]
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

    pub fn from_user(&self) -> bool {
        self.cs & 3 == 3
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

    #[link_section = ".text.fast"]
    fn context(&self) -> [u64; 18] {
        [
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.rbp,
            self.r8,
            self.r9,
            self.r10,
            self.r11,
            self.r12,
            self.r13,
            self.r14,
            self.r15,
            self.rip,
            self.rsp,
            self.rflags,
        ]
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
    fn set_entry(&mut self, ip: u64, sp: u64, arg: u64) -> bool {
        if ip >= abi::kip::USER_END || sp >= abi::kip::USER_END {
            return false;
        }
        [self.rax, self.rbx, self.rdx, self.rsi, self.rbp, self.r8, self.r9, self.r10] = [0; 8];
        [self.r12, self.r13, self.r14, self.r15] = [0; 4];
        (self.rcx, self.rdi, self.r11) = (ip, arg, 0x202);
        (self.rip, self.rsp, self.rflags) = (ip, sp, 0x202);
        (self.cs, self.ss) = (USER_CS, USER_SS);
        true
    }

    #[link_section = ".text.fast.vcpu"]
    fn set_context(&mut self, c: &[u64; 18]) -> bool {
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
        (self.cs, self.ss) = (USER_CS, USER_SS);
        true
    }
}

/// Bytes of a thread's kernel stack (including its saved stack pointer).
pub const KSTACK_SIZE: usize = 16 * 1024;

/// A thread's kernel stack: its user registers at the top, and while it is switched out the
/// saved stack pointer just above them. Boxed by the kernel, so its address stays put.
///
/// ```text
///   base                                                           base + 16 KiB
///   | FXSAVE area | canary | ....... stack grows down ... | user frame | saved_rsp, pad |
///   |<--- 512 --->|                                       ^ top (TSS.rsp0)             |
/// ```
/// Page aligned, so the user frame, the saved stack pointer and the frames of a short kernel
/// path lie in one page: under TCG a thread switch then costs one TLB refill for the stack.
#[repr(C, align(4096))]
pub struct KernelStack {
    /// The thread's x87/SSE state while another thread owns the FPU (FXSAVE layout).
    fpu: FxArea,
    stack: [u64; (KSTACK_SIZE - 16 - FX_SIZE) / 8],
    saved_rsp: u64,
    _pad: u64,
}

const FX_SIZE: usize = 512;
/// Written at the lowest word of every kernel stack; a different value means it overflowed.
const STACK_CANARY: u64 = 0x5afe_57ac_c0de_ca11;

#[repr(C, align(16))]
struct FxArea([u8; FX_SIZE]);

const _: () = assert!(core::mem::size_of::<KernelStack>() == KSTACK_SIZE);

impl KernelStack {
    /// Where `switch` saves the stack pointer of the context running on this stack.
    pub fn saved_slot(&mut self) -> *mut u64 {
        &raw mut self.saved_rsp
    }

    fn base(&self) -> u64 {
        self.stack.as_ptr() as u64
    }
}

impl kernel_core::hal::ThreadStack for KernelStack {
    type Regs = TrapFrame;

    fn new_user() -> alloc::boxed::Box<Self> {
        // SAFETY: all-zero bytes are a valid KernelStack (integers only); built in place on
        // the heap because 16 KiB would not fit on the kernel stack that creates it.
        let mut s = unsafe { alloc::boxed::Box::<Self>::new_zeroed().assume_init() };
        let off = init_kernel_stack(&mut s.stack, &TrapFrame::new_user(0, 0));
        s.saved_rsp = s.base() + off as u64;
        s.stack[0] = STACK_CANARY;
        // The state after FNINIT: x87 control word 0x37f, all SSE exceptions masked.
        s.fpu.0[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        s.fpu.0[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        s
    }

    fn fpu_save(&mut self) {
        // SAFETY: the area is 512 bytes, 16-byte aligned, owned by this stack; the FPU is
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

    fn top(&self) -> u64 {
        self.stack.as_ptr_range().end as u64
    }

    fn intact(&self) -> bool {
        self.stack[0] == STACK_CANARY
    }

    fn regs(&mut self) -> &mut TrapFrame {
        user_frame(&mut self.stack)
    }

    fn saved(&self) -> u64 {
        self.saved_rsp
    }

    #[inline(always)]
    fn hand_off(&mut self, msg: Message, tag: u64, label: u64) -> u64 {
        // Only addresses are computed here: the stack's page is first touched by
        // `resume_context`, after the switch. A context prepared for sysret sits right below
        // the frame (`prepare_resume`), so `saved_rsp` need not be read either.
        let frame = self.regs() as *mut TrapFrame as u64;
        debug_assert_eq!(self.saved_rsp, frame - SWITCH_WORDS as u64 * 8);
        match msg {
            Message::Utcb { dst, src, words } => {
                crate::cpu::stage_hand_off(frame, dst, src, words, tag, label)
            }
            Message::Regs { words, n } => crate::cpu::stage_regs(frame, words, n, tag, label),
        }
        frame - SWITCH_WORDS as u64 * 8
    }

    fn prepare_resume(&mut self, how: kernel_core::hal::Resume) {
        let how = match how {
            kernel_core::hal::Resume::Syscall => Resume::Sysret,
            kernel_core::hal::Resume::Exception => Resume::Iret,
        };
        self.saved_rsp = self.base() + prepare_resume(&mut self.stack, how) as u64;
    }
}

global_asm!(
    r#"
    /* The general registers in TrapFrame order (r15 ends up lowest). */
    .macro push_gprs
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    .endm
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

    .section .text
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
isr_common:
    test qword ptr [rsp + 24], 3
    jz 1f
    swapgs
1:  push_gprs
    mov rdi, rsp
    cld
    call arch_trap
    .global trap_return
trap_return:
    pop_gprs
    add rsp, 16
    test qword ptr [rsp + 8], 3
    jz 2f
    swapgs
2:  iretq

    /* The system-call path opens .text (.text.fast.0), followed by the Rust fast path
       (.text.fast.ipc): under TCG every code page touched after an address-space switch
       costs a TLB refill, so a fast IPC hand-off runs in one code page. */
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
    cld
    call arch_syscall
    .global syscall_return
syscall_return:
    pop_gprs
    mov rcx, [rsp + 16]
    mov r11, [rsp + 32]
    mov rsp, [rsp + 40]
    swapgs
    sysretq

    /* switch_context(save_rsp: *mut u64 [rdi], new_rsp: u64 [rsi]): saves the callee-saved
       registers on this stack and falls into resume_context without an address-space load. */
    .global switch_context
switch_context:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [rdi], rsp
    xor edi, edi

    /* resume_context(cr3 [rdi] or 0, rsp [rsi]): load an address space (late: every page
       touched after this write costs a TLB refill under TCG) and resume a saved context,
       delivering the IPC fast path's staged message to it first (cpu::HandOff). */
    .global resume_context
resume_context:
    test rdi, rdi
    jz 1f
    mov cr3, rdi
1:  mov rsp, rsi
    mov rdi, gs:[{ho_frame}]
    test rdi, rdi
    jnz 3f
2:  pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    /* A context prepared to leave for user mode (prepare_resume) returns into syscall_return
       or trap_return: jump there directly. A `ret` is an indirect branch, whose target,
       after an address-space switch, QEMU looks up in its translation-block table (the
       switch flushed its jump cache; ~150 cycles, `switch_indirect_call`); direct jumps
       within a page stay chained. */
    lea rax, [rip + syscall_return]
    cmp [rsp], rax
    je 4f
    lea rax, [rip + trap_return]
    cmp [rsp], rax
    je 5f
    ret
4:  add rsp, 8
    jmp syscall_return
5:  add rsp, 8
    jmp trap_return
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
    fn trap_return();
    fn syscall_return();
    pub fn syscall_entry();
    fn switch_context(save_rsp: *mut u64, new_rsp: u64);
    fn resume_context(cr3: u64, rsp: u64) -> !;
}

/// How a thread whose kernel context was abandoned goes back to user mode from its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// It entered by `syscall`: leave by `sysretq` (the frame's rip/rflags go to rcx/r11).
    Sysret,
    /// It entered by an exception or interrupt (or never ran): leave by `iretq`.
    Iret,
}

/// Words a fresh kernel stack holds below its [`TrapFrame`]: six callee-saved registers
/// and the return address into `trap_return`.
const SWITCH_WORDS: usize = 7;

/// Prepares a fresh kernel stack (16-byte aligned, top at `stack.len()`) so that switching to
/// it enters user mode with `frame`. Returns the stack pointer to switch to, as an offset from
/// the stack base.
pub fn init_kernel_stack(stack: &mut [u64], frame: &TrapFrame) -> usize {
    let words = core::mem::size_of::<TrapFrame>() / 8;
    let top = stack.len();
    let f = top - words;
    let regs = [
        frame.r15,
        frame.r14,
        frame.r13,
        frame.r12,
        frame.r11,
        frame.r10,
        frame.r9,
        frame.r8,
        frame.rbp,
        frame.rdi,
        frame.rsi,
        frame.rdx,
        frame.rcx,
        frame.rbx,
        frame.rax,
        frame.vector,
        frame.error,
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
        frame.ss,
    ];
    stack[f..top].copy_from_slice(&regs);
    prepare_resume(stack, Resume::Iret)
}

/// Builds, just below the user frame at the top of `stack`, a context that returns to user mode
/// the way `how` says. Returns its stack pointer as a byte offset from the stack base. The frame
/// itself is left as it is: whoever wakes the thread writes its results there.
#[link_section = ".text.fast"]
pub fn prepare_resume(stack: &mut [u64], how: Resume) -> usize {
    let f = stack.len() - core::mem::size_of::<TrapFrame>() / 8;
    let sp = f - SWITCH_WORDS;
    stack[sp..f - 1].fill(0);
    stack[f - 1] = match how {
        Resume::Sysret => syscall_return as *const () as usize as u64,
        Resume::Iret => trap_return as *const () as usize as u64,
    };
    sp * 8
}

/// Abandons the current kernel context and resumes the one saved at `rsp`, loading `cr3`
/// first unless it is 0.
///
/// # Safety
/// `rsp` must come from [`prepare_resume`], [`init_kernel_stack`] or an earlier [`switch`] of a
/// context whose stack is alive; `cr3` must be 0 or a root sharing the kernel half. Nothing on
/// the current stack may still be needed.
#[link_section = ".text.fast.ipc"]
pub unsafe fn resume(cr3: u64, rsp: u64) -> ! {
    // SAFETY: guaranteed by the caller.
    unsafe { resume_context(cr3, rsp) }
}

/// Saves the current kernel context into `*save_rsp` and resumes the one at `new_rsp`.
///
/// # Safety
/// `new_rsp` must come from [`init_kernel_stack`] or from an earlier `switch` of a context
/// whose stack is still alive, and `save_rsp` must stay valid until that context is resumed.
pub unsafe fn switch(save_rsp: *mut u64, new_rsp: u64) {
    // SAFETY: the caller guarantees both stacks; switch_context follows the C ABI and saves
    // all callee-saved registers on the old stack.
    unsafe { switch_context(save_rsp, new_rsp) }
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}

/// The user register frame at the top of a kernel stack (built by an entry or by
/// [`init_kernel_stack`]).
#[link_section = ".text.fast"]
pub fn user_frame(stack: &mut [u64]) -> &mut TrapFrame {
    const WORDS: usize = core::mem::size_of::<TrapFrame>() / 8;
    let top = stack.len();
    let words = &mut stack[top - WORDS..];
    // SAFETY: the slice is exactly TrapFrame's size, u64-aligned like TrapFrame (all u64
    // fields, repr(C)), and exclusively borrowed for the returned lifetime.
    unsafe { &mut *(words.as_mut_ptr() as *mut TrapFrame) }
}

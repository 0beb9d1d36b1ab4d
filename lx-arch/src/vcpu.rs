//! The vCPU Linux runs on: its state area, the interrupt flag that UML's `signals_enabled`
//! mirrors, interrupts taken as messages, and resuming either Linux itself (after an interrupt
//! upcall) or one of its processes.
//!
//! The C half owns the control flow (UML's signal emulation, the `userspace()` loop); this half
//! owns the state area's layout (`abi::vcpu`) and the system calls.
//!
//! Running a process is a call that returns with its next event: `lx_vcpu_enter` saves the
//! callee-saved registers on the stack of `userspace()`, points the state area's upcall entry
//! at that stack and at `lx_user_return`, and resumes the process; the upcall for its next
//! event pops them and returns to `userspace()`. Events of Linux itself (interrupts while it
//! runs) enter `lx_upcall_entry` on the interrupt stack instead, which is put back as the
//! entry first thing. Compared with an upcall on the interrupt stack and a longjmp, this
//! touches two stacks, a jump buffer and three code pages less per event, which counts under
//! TCG (costs.md). The hot code of this path sits in `.text.hot.lx`, which Linux's linker
//! script puts first in `.text`, next to `userspace()`.

use abi::cap::well_known as wk;
use abi::kip::BOOT_UTCB_ADDR;
use abi::proto::{self, thread::Op};
use abi::syscall::{timeout, Flags};
use abi::vcpu::{state, sticky, trap, VcpuState};
use abi::{CapSel, MsgTag};
use core::cell::UnsafeCell;
use core::ffi::c_int;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

/// The state area: the second 1 KiB slot of our UTCB area (the first is the thread's UTCB).
const STATE: u64 = BOOT_UTCB_ADDR + 1024;

/// Interrupt sources as bits (`LX_IRQ_*` in lx_arch.h); the Irq label is the bit number + 1.
pub const IRQ_TIMER: u32 = 1 << 0;
pub const IRQ_CONSOLE: u32 = 1 << 1;

/// Events `lx_upcall_kind` and `lx_user_event` report (`LX_EV_*` in lx_arch.h).
const EV_IRQ: c_int = 1;
const EV_USER: c_int = 2;
const EV_FAULT: c_int = 3;
const EV_SYSCALL: c_int = 4;
const EV_GONE: c_int = 5;

/// What every process event touches, in one static: 2 KiB aligned and no larger, so it never
/// spans two pages (each page touched after an address-space switch is a TLB refill under
/// TCG; separate statics land wherever the linker puts them).
#[repr(C, align(2048))]
pub(crate) struct Hot {
    /// os-L4's C variables that every event touches, here so that they share this page:
    /// `signal.c` and UML's code know them by the names the assembler aliases below give them.
    c: CHot,
    /// The FXSAVE image of the process that ran last (see [`Fx`]).
    fx: UnsafeCell<Fx>,
    /// Map items waiting for the next resume ([`crate::task`]).
    pub(crate) batch: UnsafeCell<crate::task::Batch>,
    /// The upcall entry (ip, sp) for events of Linux itself, put back after each process event.
    kernel_entry: [AtomicU64; 2],
    /// `lx.profile`: when the current event came in.
    profile_t0: AtomicU64,
    /// Map items carried by a resume (`lx.profile`).
    pub(crate) on_resume: AtomicU64,
    /// The `regs->fp` whose contents the FPU registers hold (saved there at the process's
    /// last event, not written since), or 0: resuming that process again needs no FXRSTOR.
    fpu_of: AtomicU64,
    /// Set once the thread is a vCPU; before that the interrupt flag is meaningless.
    ready: AtomicBool,
    /// `lx.profile` on the command line: how long Linux takes from a process's upcall to
    /// resuming a process (cycles, summed over events), printed when Linux halts.
    pub(crate) profile: AtomicBool,
}
const _: () = assert!(core::mem::size_of::<Hot>() <= 2048);

/// The C half's per-event variables (`int`s in C; UML is built for one CPU).
#[repr(C)]
struct CHot {
    /// `userspace_pid[NR_CPUS]`: the task slot of the process running.
    userspace_pid: AtomicI32,
    /// `signals_enabled`: UML's interrupt flag.
    signals_enabled: AtomicI32,
    /// `lx_in_upcall`: set while the upcall handler runs.
    in_upcall: AtomicI32,
    /// `lx_soft_pending`: interrupts taken while `signals_enabled` was clear.
    soft_pending: AtomicU32,
}

// The C names of `HOT.c`'s fields (symbols of this object, so the assembler resolves them).
core::arch::global_asm!(
    ".globl userspace_pid, signals_enabled, lx_in_upcall, lx_soft_pending",
    ".set userspace_pid, {hot} + {c} + {pid}",
    ".set signals_enabled, {hot} + {c} + {enabled}",
    ".set lx_in_upcall, {hot} + {c} + {in_upcall}",
    ".set lx_soft_pending, {hot} + {c} + {pending}",
    hot = sym HOT,
    c = const core::mem::offset_of!(Hot, c),
    pid = const core::mem::offset_of!(CHot, userspace_pid),
    enabled = const core::mem::offset_of!(CHot, signals_enabled),
    in_upcall = const core::mem::offset_of!(CHot, in_upcall),
    pending = const core::mem::offset_of!(CHot, soft_pending),
);
// SAFETY: the cells are used only by the vCPU thread, with interrupts off (the resume and
// event paths); the rest are atomics.
unsafe impl Sync for Hot {}
pub(crate) static HOT: Hot = Hot {
    c: CHot {
        userspace_pid: AtomicI32::new(0),
        signals_enabled: AtomicI32::new(0),
        in_upcall: AtomicI32::new(0),
        soft_pending: AtomicU32::new(0),
    },
    fx: UnsafeCell::new(Fx([0; 512])),
    batch: UnsafeCell::new(crate::task::Batch::EMPTY),
    kernel_entry: [const { AtomicU64::new(0) }; 2],
    profile_t0: AtomicU64::new(0),
    on_resume: AtomicU64::new(0),
    fpu_of: AtomicU64::new(0),
    ready: AtomicBool::new(false),
    profile: AtomicBool::new(false),
};

core::arch::global_asm!(
    r#"
    .section .text.hot.lx, "ax"
    .p2align 4
    .globl lx_vcpu_enter
lx_vcpu_enter:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    movabs rax, {entry_sp}
    mov [rax], rsp
    lea rcx, [rip + lx_user_return]
    mov [rax + 8], rcx
    mov rdx, rdi
    mov rax, rsi
    xor esi, esi
    xor r8d, r8d
    syscall
    /* Refused: the result tag is in rax. */
    jmp 1f
    .globl lx_user_return
lx_user_return:
    /* The upcall of the process's next event: rsp is as it was left above. */
    xor eax, eax
1:  mov rcx, [rip + {hot} + {kentry}]
    mov rdx, [rip + {hot} + {kentry} + 8]
    movabs rdi, {entry_sp}
    mov [rdi + 8], rcx
    mov [rdi], rdx
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
    .text
"#,
    entry_sp = const STATE + core::mem::offset_of!(VcpuState, entry_sp) as u64,
    hot = sym HOT,
    kentry = const core::mem::offset_of!(Hot, kernel_entry),
);
const _: () = assert!(
    core::mem::offset_of!(VcpuState, entry_ip) == core::mem::offset_of!(VcpuState, entry_sp) + 8,
    "lx_vcpu_enter writes both entry words through one pointer"
);

extern "C" {
    /// Invokes the kernel with `rdx` and `tag` (a `VcpuResume` into a process) so that the
    /// process's next upcall returns from here with 0; returns the result tag if the kernel
    /// refused. Callee-saved registers are preserved either way.
    fn lx_vcpu_enter(rdx: u64, tag: u64) -> u64;
}

/// Kinds of process events `lx.profile` tells apart: each system call number below
/// [`SYSCALLS`], then page faults, interrupts and everything else.
const SYSCALLS: usize = 512;
const KINDS: usize = SYSCALLS + 3;
/// Per kind: events, and cycles in Linux from the upcall to the next resume.
static PROFILE: [(AtomicU64, AtomicU64); KINDS] = [const { (AtomicU64::new(0), AtomicU64::new(0)) }; KINDS];
/// The kind of the event Linux handles now.
static PROFILE_KIND: AtomicU64 = AtomicU64::new(0);

/// A line of `lx.profile`: a kind ([`Kind`]), its events, its cycles in Linux per event.
pub type ProfileLine = (usize, u64, u64);

/// The profile's result: (events, cycles in Linux per event) in all, and the eight kinds
/// that took the most cycles, most first (0 events: none).
pub fn profile() -> ((u64, u64), [ProfileLine; 8]) {
    let load = |i: usize| (PROFILE[i].0.load(Ordering::Relaxed), PROFILE[i].1.load(Ordering::Relaxed));
    let (n, c) = (0..KINDS).map(load).fold((0, 0), |(n, c), (a, b)| (n + a, c + b));
    let mut top = [(0, 0, 0); 8];
    let mut taken = [false; KINDS];
    for slot in top.iter_mut() {
        let best = (0..KINDS).filter(|i| !taken[*i] && load(*i).0 > 0).max_by_key(|i| load(*i).1);
        let Some(i) = best else { break };
        taken[i] = true;
        let (n, c) = load(i);
        *slot = (i, n, c / n);
    }
    ((n, c / n.max(1)), top)
}

/// Kind `i` of `lx.profile`, printable.
pub struct Kind(pub usize);

impl core::fmt::Display for Kind {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self.0.checked_sub(SYSCALLS) {
            None => write!(f, "system call {}", self.0),
            Some(0) => f.write_str("page fault"),
            Some(1) => f.write_str("interrupt"),
            Some(_) => f.write_str("other exception"),
        }
    }
}

/// The `lx.profile` kind of the event in the state area.
fn event_kind() -> u64 {
    // SAFETY: only field addresses are computed.
    match read(|s| unsafe { &raw mut (*s).regs.trapno }) {
        // SAFETY: as above.
        trap::SYSCALL => read(|s| unsafe { &raw mut (*s).regs.rax }).min(SYSCALLS as u64 + 2),
        14 => SYSCALLS as u64,
        trap::IRQ => SYSCALLS as u64 + 1,
        _ => SYSCALLS as u64 + 2,
    }
}

fn area() -> *mut VcpuState {
    STATE as *mut VcpuState
}

fn read(f: impl FnOnce(*mut VcpuState) -> *mut u64) -> u64 {
    // SAFETY: the state area lies in our UTCB area, mapped read-write for the task's life; the
    // kernel writes it only while this thread is not running, so a volatile read suffices.
    unsafe { f(area()).read_volatile() }
}

fn write(f: impl FnOnce(*mut VcpuState) -> *mut u64, v: u64) {
    // SAFETY: as in `read`.
    unsafe { f(area()).write_volatile(v) }
}

fn state_word(s: *mut VcpuState) -> *mut u64 {
    // SAFETY: only the field's address is computed, inside the area.
    unsafe { &raw mut (*s).state }
}

fn sticky_word(s: *mut VcpuState) -> *mut u64 {
    // SAFETY: as in `state_word`.
    unsafe { &raw mut (*s).sticky }
}

/// Clears the interrupt flag; returns whether it was set.
pub fn disable() -> bool {
    if !HOT.ready.load(Ordering::Relaxed) {
        return false;
    }
    let s = read(state_word);
    write(state_word, s & !state::IRQ);
    s & state::IRQ != 0
}

extern "C" {
    /// C half: UML's `unblock_signals` after `signals_enabled` was cleared, i.e. take what
    /// became pending while the flag was off, then set it again.
    fn lx_irqs_back();
}

/// Runs `f` with interrupts held off (see the crate doc); what arrived meanwhile is handled
/// afterwards, as UML does with signals that came while they were blocked.
pub fn held<R>(f: impl FnOnce() -> R) -> R {
    let was_on = disable();
    let r = f();
    if was_on {
        // SAFETY: a plain C function of the os-L4 half, callable in any context where the
        // flag was on (normal kernel context, not an upcall).
        unsafe { lx_irqs_back() };
    }
    r
}

fn irq_bit(label: u64) -> u32 {
    match label {
        1..=32 => 1 << (label - 1),
        _ => 0,
    }
}

/// Takes every interrupt that is pending as a message (the flag must be off).
fn drain() -> u32 {
    let mut bits = 0;
    while let Ok((_, label)) = l4::ipc::wait(timeout::pack(0, timeout::ZERO)) {
        bits |= irq_bit(label);
    }
    bits
}

/// Linux's guest regions (`abi::vcpu`, guest worlds): the last GiB below 512 GiB, where it is
/// linked and keeps its RAM and vmalloc area (above its processes' `TASK_SIZE`,
/// `linux-patches/0001`'s `Makefile-os-L4`), and slot 255, with the state area, the UTCB, the
/// KIP and the start-up stack.
const REGIONS: [(u64, u32); 2] = [(0x7f_c000_0000, 30), (0x7f80_0000_0000, 39)];

/// `lx_vcpu_init`: makes this thread a vCPU whose upcalls enter `entry` on stack `sp`, its
/// guest (Linux) in guest worlds: a process's system call reaches Linux and Linux's resume of
/// it goes back without an address-space switch.
#[no_mangle]
pub extern "C" fn lx_vcpu_init(entry: u64, sp: u64) -> c_int {
    let region = |(base, order)| proto::fpage::Fpage::memory(base, order, abi::Rights::ALL).0;
    let words = [Op::VcpuControl.code(), STATE, region(REGIONS[0]), region(REGIONS[1])];
    if let Err(e) = l4::sys::call_words(wk::THREAD, proto::thread::LABEL, &words) {
        l4::println!("cannot become a vCPU: {e:?}");
        return -1;
    }
    write(
        // SAFETY: only the field's address is computed.
        |s| unsafe { &raw mut (*s).entry_ip },
        entry,
    );
    // SAFETY: as above.
    write(|s| unsafe { &raw mut (*s).entry_sp }, sp & !15);
    HOT.kernel_entry[0].store(entry, Ordering::Relaxed);
    HOT.kernel_entry[1].store(sp & !15, Ordering::Relaxed);
    write(state_word, 0);
    HOT.ready.store(true, Ordering::Relaxed);
    0
}

/// `lx_irq_disable`: UML's `block_signals`.
#[no_mangle]
#[link_section = ".text.hot.lx"]
pub extern "C" fn lx_irq_disable() {
    disable();
}

/// `lx_irq_enable`: sets the interrupt flag unless interrupts are pending; then it takes them
/// (as messages) and returns their bits with the flag still off, for the caller to handle
/// before it calls again. 0 means the flag is on.
#[no_mangle]
#[link_section = ".text.hot.lx"]
pub extern "C" fn lx_irq_enable() -> u32 {
    if !HOT.ready.load(Ordering::Relaxed) {
        return 0;
    }
    let mut bits = 0;
    loop {
        if read(sticky_word) & sticky::IRQ_PENDING != 0 {
            // Cleared before draining: one that arrives during the drain sets it again.
            write(sticky_word, 0);
            bits |= drain();
            continue;
        }
        if bits != 0 {
            return bits;
        }
        write(state_word, read(state_word) | state::IRQ);
        // One that came between the check and the flag is pending, not delivered.
        if read(sticky_word) & sticky::IRQ_PENDING == 0 {
            return 0;
        }
        write(state_word, read(state_word) & !state::IRQ);
    }
}

/// `lx_idle_wait`: blocks until an interrupt arrives (the flag is off, so it comes as a
/// message) and returns the bits of all that are pending.
#[no_mangle]
pub extern "C" fn lx_idle_wait() -> u32 {
    write(sticky_word, 0);
    let mut bits = match l4::ipc::wait(0) {
        Ok((_, label)) => irq_bit(label),
        Err(_) => 0,
    };
    bits |= drain();
    bits
}

/// `lx_upcall_kind`: what the upcall at Linux's own entry is: `EV_IRQ` with `*bits` (an
/// interrupt of Linux itself), `EV_USER` (an event of a process, which should have come to
/// `lx_user_return`: a bug), or `EV_FAULT` (anything else in Linux's own context: a bug).
///
/// # Safety
/// Called from os-L4's C half with the pointers lx_arch.h describes: valid for the
/// stated sizes, or null where the function checks.
#[no_mangle]
pub unsafe extern "C" fn lx_upcall_kind(bits: *mut u32) -> c_int {
    // SAFETY: only field addresses are computed.
    let saved = read(|s| unsafe { &raw mut (*s).saved_state });
    if saved & state::USER_MODE != 0 {
        return EV_USER;
    }
    // SAFETY: as above.
    let trapno = read(|s| unsafe { &raw mut (*s).regs.trapno });
    if trapno == trap::IRQ {
        // SAFETY: as above.
        let label = read(|s| unsafe { &raw mut (*s).irq_label });
        if !bits.is_null() {
            // SAFETY: the C caller passes a valid pointer (checked non-null).
            unsafe { *bits = irq_bit(label) };
        }
        return EV_IRQ;
    }
    EV_FAULT
}

/// `lx_kernel_context`: the interrupted context of Linux itself (ip, sp) for messages.
///
/// # Safety
/// Called from os-L4's C half with the pointers lx_arch.h describes: valid for the
/// stated sizes, or null where the function checks.
#[no_mangle]
pub unsafe extern "C" fn lx_kernel_context(out: *mut u64) {
    if out.is_null() {
        return;
    }
    // SAFETY: the area is mapped (see `read`); out has room for 5 words (lx_arch.h).
    unsafe {
        let r = &(*area()).regs;
        let v = [r.rip, r.rsp, r.trapno, r.err, r.pfa];
        core::ptr::copy_nonoverlapping(v.as_ptr(), out, v.len());
    }
}

/// The message of a `VcpuResume` (of what is in the state area) with `items` map items
/// (already in MR[1..], into the user task): sets MR[0] and returns the tag.
fn resume_tag(items: u64) -> MsgTag {
    l4::ipc::set_mr(0, Op::VcpuResume.code());
    MsgTag::new(proto::thread::LABEL, 1, items, 0)
}

/// The result of a `VcpuResume` the kernel answered (it refused) as the negative error the
/// C half expects.
fn refused(r: MsgTag) -> c_int {
    -(r.result().err().unwrap_or(abi::Error::Inval) as c_int)
}

/// `lx_resume_kernel`: continues the context of Linux an upcall interrupted.
#[no_mangle]
pub extern "C" fn lx_resume_kernel() -> ! {
    let r = l4::sys::invoke(CapSel::from_idx(wk::THREAD), Flags::CALL, resume_tag(0));
    l4::println!("cannot resume its own context ({})", refused(r));
    lx_fatal()
}

fn lx_fatal() -> ! {
    l4::sys::exit(134)
}

/// Register slots of UML's `regs->gp`, which follows the Linux x86_64 ptrace ABI
/// (`struct user_regs_struct`); the C half checks them against `HOST_*` at compile time.
pub mod gp {
    pub const R15: usize = 0;
    pub const R14: usize = 1;
    pub const R13: usize = 2;
    pub const R12: usize = 3;
    pub const RBP: usize = 4;
    pub const RBX: usize = 5;
    pub const R11: usize = 6;
    pub const R10: usize = 7;
    pub const R9: usize = 8;
    pub const R8: usize = 9;
    pub const RAX: usize = 10;
    pub const RCX: usize = 11;
    pub const RDX: usize = 12;
    pub const RSI: usize = 13;
    pub const RDI: usize = 14;
    pub const ORIG_RAX: usize = 15;
    pub const RIP: usize = 16;
    pub const EFLAGS: usize = 18;
    pub const RSP: usize = 19;
    pub const FS_BASE: usize = 21;
    pub const GS_BASE: usize = 22;
    pub const COUNT: usize = 27;
}

/// User-settable flags (CF PF AF ZF SF TF DF OF, AC, ID); IF is always on in user mode.
const USER_FLAGS: u64 = 0x0025_0dd5;

/// An FXSAVE image, aligned as the instruction needs (UML's `regs->fp` is not).
#[repr(C, align(16))]
struct Fx([u8; 512]);

/// Copies an FXSAVE image with `rep movsq`: one basic block under TCG, where
/// `copy_nonoverlapping` would call Linux's `memcpy` through the GOT (two more pages per
/// event).
///
/// # Safety
/// `dst` and `src` valid for 512 bytes, not overlapping.
#[inline(always)]
unsafe fn copy_fx(dst: *mut u8, src: *const u8) {
    // SAFETY: guaranteed by the caller; DF is clear in Linux's context (C ABI).
    unsafe {
        core::arch::asm!(
            "rep movsq",
            inout("rcx") 512 / 8 => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        )
    };
}

/// `lx_resume_user`: runs process task `task` with registers `gp` (27 words, ptrace order) and
/// FPU image `fp` (FXSAVE layout, 512 bytes) until its next event: returns 0 then (details
/// through `lx_user_event`), or a negative error if the kernel refuses.
///
/// # Safety
/// Called from os-L4's C half with the pointers lx_arch.h describes: valid for the
/// stated sizes, or null where the function checks.
#[no_mangle]
#[link_section = ".text.hot.lx"]
pub unsafe extern "C" fn lx_resume_user(task: c_int, gp: *const u64, fp: *const u8) -> c_int {
    // SAFETY: the C half passes UML's regs->gp (27 words) and regs->fp (>= 512 bytes).
    let g = unsafe { core::slice::from_raw_parts(gp, gp::COUNT) };
    // The FPU registers still hold this image when the process resumes after its own event
    // and nothing wrote its regs->fp since (lx_fpu_forget): no FXRSTOR then.
    if HOT.fpu_of.swap(fp as u64, Ordering::Relaxed) != fp as u64 {
        // SAFETY: HOT.fx is ours alone (see Hot); fp has 512 readable bytes; FXRSTOR loads
        // a 16-byte aligned image, and a corrupt one raises #GP in our own context — the C
        // half only passes images it took with FXSAVE or built from the default state.
        unsafe {
            let fx = &mut *HOT.fx.get();
            copy_fx(fx.0.as_mut_ptr(), fp);
            // MXCSR reserved bits would make FXRSTOR fault: keep the defined ones.
            let mxcsr = u32::from_le_bytes([fx.0[24], fx.0[25], fx.0[26], fx.0[27]]) & 0xffff;
            fx.0[24..28].copy_from_slice(&mxcsr.to_le_bytes());
            core::arch::asm!("fxrstor64 [{}]", in(reg) fx.0.as_ptr(), options(nostack, readonly));
        }
    }
    // SAFETY: the state area is ours while we run (see `read`).
    unsafe {
        let s = area();
        let r = &mut (*s).regs;
        r.rax = g[gp::RAX];
        r.rbx = g[gp::RBX];
        r.rcx = g[gp::RCX];
        r.rdx = g[gp::RDX];
        r.rsi = g[gp::RSI];
        r.rdi = g[gp::RDI];
        r.rbp = g[gp::RBP];
        r.r8 = g[gp::R8];
        r.r9 = g[gp::R9];
        r.r10 = g[gp::R10];
        r.r11 = g[gp::R11];
        r.r12 = g[gp::R12];
        r.r13 = g[gp::R13];
        r.r14 = g[gp::R14];
        r.r15 = g[gp::R15];
        r.rip = g[gp::RIP];
        r.rsp = g[gp::RSP];
        r.rflags = (g[gp::EFLAGS] & USER_FLAGS) | 0x202;
        r.fs_base = g[gp::FS_BASE];
        r.gs_base = g[gp::GS_BASE];
        (&raw mut (*s).user_task).write_volatile(task as u64);
        (&raw mut (*s).saved_state).write_volatile(state::USER_MODE | state::IRQ);
    }
    let t0 = HOT.profile_t0.swap(0, Ordering::Relaxed);
    if t0 != 0 {
        let k = &PROFILE[PROFILE_KIND.load(Ordering::Relaxed) as usize];
        k.0.fetch_add(1, Ordering::Relaxed);
        k.1.fetch_add(l4::sys::cycles() - t0, Ordering::Relaxed);
    }
    // Pages UML's sync just mapped into this process go with the resume.
    let items = match crate::task::items_for_resume(task as u64) {
        Ok(items) => items,
        Err(e) => return e,
    };
    let tag = resume_tag(items);
    let rdx = CapSel::from_idx(wk::THREAD).raw() | Flags::CALL.bits();
    // SAFETY: lx_vcpu_enter follows the C ABI; the state area holds the process's context
    // and the UTCB the message (MR[0] and the items) for the `VcpuResume` it makes.
    let r = unsafe { lx_vcpu_enter(rdx, tag.0) };
    if r != 0 {
        return refused(MsgTag(r));
    }
    if HOT.profile.load(Ordering::Relaxed) {
        PROFILE_KIND.store(event_kind(), Ordering::Relaxed);
        HOT.profile_t0.store(l4::sys::cycles(), Ordering::Relaxed);
    }
    0
}

/// `lx_fpu_forget`: the FPU registers or a process's `regs->fp` were set from elsewhere (exec,
/// a new thread, ptrace): the next resume loads its image.
#[no_mangle]
pub extern "C" fn lx_fpu_forget() {
    HOT.fpu_of.store(0, Ordering::Relaxed);
}

/// `lx_user_event`: after an upcall from a process: its registers into `gp` and `fp`, the trap
/// into `fault` (error code, address, trap number) and the kind of event as result
/// (`EV_SYSCALL`, `EV_FAULT`, `EV_IRQ` with `*bits`, `EV_GONE`).
///
/// # Safety
/// Called from os-L4's C half with the pointers lx_arch.h describes: valid for the
/// stated sizes, or null where the function checks.
#[no_mangle]
#[link_section = ".text.hot.lx"]
pub unsafe extern "C" fn lx_user_event(gp: *mut u64, fp: *mut u8, fault: *mut u64, bits: *mut u32) -> c_int {
    // SAFETY: as in lx_resume_user; `fault` has 3 words, `bits` one (lx_arch.h).
    let (g, f) = unsafe {
        (core::slice::from_raw_parts_mut(gp, gp::COUNT), core::slice::from_raw_parts_mut(fault, 3))
    };
    // SAFETY: HOT.fx is ours (see Hot); FXSAVE stores the process's FPU registers, which are
    // still the vCPU thread's (nothing in Linux or here uses the FPU).
    unsafe {
        let fx = &mut *HOT.fx.get();
        core::arch::asm!("fxsave64 [{}]", in(reg) fx.0.as_mut_ptr(), options(nostack));
        copy_fx(fp, fx.0.as_ptr());
    }
    // SAFETY: the state area is ours while we run.
    let (r, label) = unsafe { ((*area()).regs, (&raw const (*area()).irq_label).read_volatile()) };
    // UML reads regs->fp while it handles the event (signal frames, fork), so it is saved
    // every time; rt_sigreturn writes it, so then the next resume loads it.
    const RT_SIGRETURN: u64 = 15;
    let rewrites = r.trapno == trap::SYSCALL && r.rax == RT_SIGRETURN;
    HOT.fpu_of.store(if rewrites { 0 } else { fp as u64 }, Ordering::Relaxed);
    g[gp::RAX] = r.rax;
    g[gp::RBX] = r.rbx;
    g[gp::RCX] = r.rcx;
    g[gp::RDX] = r.rdx;
    g[gp::RSI] = r.rsi;
    g[gp::RDI] = r.rdi;
    g[gp::RBP] = r.rbp;
    g[gp::R8] = r.r8;
    g[gp::R9] = r.r9;
    g[gp::R10] = r.r10;
    g[gp::R11] = r.r11;
    g[gp::R12] = r.r12;
    g[gp::R13] = r.r13;
    g[gp::R14] = r.r14;
    g[gp::R15] = r.r15;
    g[gp::RIP] = r.rip;
    g[gp::RSP] = r.rsp;
    g[gp::EFLAGS] = r.rflags;
    g[gp::FS_BASE] = r.fs_base;
    g[gp::GS_BASE] = r.gs_base;
    g[gp::ORIG_RAX] = u64::MAX;
    f[0] = r.err;
    f[1] = r.pfa;
    f[2] = r.trapno;
    match r.trapno {
        trap::SYSCALL => {
            g[gp::ORIG_RAX] = r.rax;
            EV_SYSCALL
        }
        trap::IRQ => {
            if !bits.is_null() {
                // SAFETY: checked non-null; the C caller passes a valid pointer.
                unsafe { *bits = irq_bit(label) };
            }
            EV_IRQ
        }
        trap::TASK_GONE => EV_GONE,
        _ => EV_FAULT,
    }
}

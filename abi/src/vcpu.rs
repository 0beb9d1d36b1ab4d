//! The vCPU: a thread that runs a guest kernel (L4Linux) in its own task and switches into user
//! tasks; every event of a user task, and every interrupt, comes back as an *upcall* to the
//! thread's entry point with the interrupted context saved in the shared state area.
//!
//! ```text
//! word  0  version          VERSION
//! word  1  state            flags now in force (IRQ, USER_MODE, ...), cleared on upcall
//! word  2  saved_state      `state` at the last upcall; `VcpuResume` continues the context
//!                           with these flags (and makes them `state`)
//! word  3  sticky           IRQ_PENDING: an interrupt arrived while IRQs were disabled
//! word  4  user_task        capability slot of the task to run when USER_MODE is set
//! word  5  entry_sp         stack pointer of the upcall handler
//! word  6  entry_ip         the upcall handler (rdi = this area's address, rcx = entry_ip,
//!                           r11 = flags, other registers 0)
//! word  7  irq_label        label of the interrupt an IRQ upcall reports
//! word  8  regs             the interrupted context (VcpuRegs), then trap number, error, address
//! ```
//!
//! **Guest worlds** (`VcpuControl` with guest regions): the guest kernel runs at privilege
//! level 1 in the address space of the user task it runs (its *world*), where the regions of
//! the vCPU's task — the guest kernel's code, data, stacks, this area and the UTCB — appear as
//! supervisor memory, out of the user task's reach, and the kernel maps nothing but its
//! entry trampoline. A system call of the user task then reaches the guest's entry without
//! an address-space switch, and a `VcpuResume` that continues the same user task leaves
//! without one. The guest kernel runs with the user task's FS and GS bases (it finds its UTCB
//! and this area by address); user-mode contexts are resumed at level 3, its own at level 1.
//! `VcpuResume` into its own context (no `USER_MODE`) continues it in the vCPU's own task.

/// Layout version, in word 0.
pub const VERSION: u64 = 1;

/// Most regions a guest kernel's task may show in its worlds (`VcpuControl`'s flexpages).
pub const GUEST_REGIONS: usize = 4;
/// Sizes (log2) of a guest region: 1 GiB to 512 GiB (a whole slot of the page tables' top
/// level), aligned to their size.
pub const GUEST_REGION_ORDERS: core::ops::RangeInclusive<u32> = 30..=39;

/// Flags of `state` / `saved_state` (Fiasco's values).
pub mod state {
    /// Interrupts are delivered as upcalls.
    pub const IRQ: u64 = 0x01;
    pub const PAGEFAULT: u64 = 0x02;
    pub const EXCEPTION: u64 = 0x04;
    /// The context runs in `user_task`.
    pub const USER_MODE: u64 = 0x20;
    pub const FPU: u64 = 0x80;
}

/// Flags of `sticky`.
pub mod sticky {
    pub const IRQ_PENDING: u64 = 0x01;
}

/// Trap numbers beyond the CPU's exception vectors.
pub mod trap {
    /// The user task executed `syscall`.
    pub const SYSCALL: u64 = 0x100;
    /// An interrupt (its label in `irq_label`).
    pub const IRQ: u64 = 0x101;
    /// The user task was destroyed while the vCPU ran in it.
    pub const TASK_GONE: u64 = 0x102;
}

/// The saved registers of a context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub trapno: u64,
    pub err: u64,
    pub pfa: u64,
}

/// Registers the kernel saves and restores as a block (rax .. gs_base).
pub const CONTEXT_WORDS: usize = 20;

/// The vCPU state area as user code sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuState {
    pub version: u64,
    pub state: u64,
    pub saved_state: u64,
    pub sticky: u64,
    pub user_task: u64,
    pub entry_sp: u64,
    pub entry_ip: u64,
    pub irq_label: u64,
    pub regs: VcpuRegs,
}

/// Word offsets of the fields the kernel reads and writes.
pub mod off {
    pub const VERSION: usize = 0;
    pub const STATE: usize = 1;
    pub const SAVED_STATE: usize = 2;
    pub const STICKY: usize = 3;
    pub const USER_TASK: usize = 4;
    pub const ENTRY_SP: usize = 5;
    pub const ENTRY_IP: usize = 6;
    pub const IRQ_LABEL: usize = 7;
    pub const REGS: usize = 8;
    pub const TRAPNO: usize = REGS + 20;
    pub const ERR: usize = REGS + 21;
    pub const PFA: usize = REGS + 22;
    /// Words in the area.
    pub const WORDS: usize = REGS + 23;
}

const _: () = assert!(core::mem::size_of::<VcpuState>() == off::WORDS * 8);
const _: () = assert!(core::mem::offset_of!(VcpuState, regs) == off::REGS * 8);
const _: () = assert!(core::mem::offset_of!(VcpuRegs, trapno) == (off::TRAPNO - off::REGS) * 8);
const _: () = assert!(core::mem::offset_of!(VcpuRegs, fs_base) == 18 * 8);

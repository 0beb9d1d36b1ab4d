//! The seam between portable kernel logic and an architecture. The kernel binary chooses the
//! implementation in exactly one place (`kernel/src/main.rs`, `type A = ...`); host tests use a
//! fake one (`kernel::fake`).

use crate::frames::FrameAllocator;
use crate::mem::{Perms, PhysAddr, VirtAddr};
use abi::proto::exc_regs;
use abi::syscall::REG_WORDS;

/// Why a mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// No frame for a page table.
    NoMemory,
    /// Not a user address, or not page aligned.
    BadAddress,
}

/// Bytes of an I/O permission bitmap: one bit per port, a set bit denies it.
pub const IO_BITMAP_BYTES: usize = 65536 / 8;

/// How a thread that left the kernel other than by returning (it blocked, was preempted or
/// had its context replaced) goes back to user mode from its registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// By `sysret` on x86_64 (ip and flags from the frame; rcx and r11 become them): after a
    /// system call, whose result registers are written by whoever wakes it, or into a context
    /// whose rcx and r11 are its ip and flags.
    Syscall,
    /// By `iret`: any context, unchanged (after an exception or interrupt, or never ran).
    Exception,
}

/// What the entry trampoline of a guest world needs to know about the thread that runs there
/// next (`abi::vcpu`, guest worlds; [`Arch::set_world`]). Rewritten before every exit into a
/// world; the trampoline reads it where the guest cannot write it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct WorldExit {
    /// The world's root (loaded on the way out) and the normal root of the same task (loaded
    /// by every entry from the world that needs the kernel).
    pub root: u64,
    pub kernel_root: u64,
    /// The thread's user registers ([`ThreadContext::frame`]), where such entries save them.
    pub frame: u64,
    /// The vCPU state area's and UTCB's user addresses (in the guest slot).
    pub state: u64,
    pub utcb: u64,
    /// The user task's FS and GS bases (saved into the state area by a forwarded upcall).
    pub user_fs: u64,
    pub user_gs: u64,
    /// A `VcpuResume` the trampoline may complete itself, continuing the world's user task:
    /// the caller's `rdx` (selector and flags) and the state area's `user_task` it must carry
    /// (0: none, the kernel checks every resume).
    pub resume_rdx: u64,
    pub resume_user: u64,
}

/// The regions of a guest kernel's task that its guest worlds show (`abi::vcpu`): aligned,
/// each `2^order` bytes with `order` in `abi::vcpu::GUEST_REGION_ORDERS` (1 GiB to 512 GiB,
/// so never across a 512 GiB slot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegions {
    n: usize,
    r: [(u64, u32); abi::vcpu::GUEST_REGIONS],
}

impl GuestRegions {
    /// The regions `(base, order)`, if each is aligned and of an allowed size, in the user
    /// half, disjoint from the others, and there are 1 to `abi::vcpu::GUEST_REGIONS`.
    pub fn new(list: &[(u64, u32)]) -> Option<Self> {
        if list.is_empty() || list.len() > abi::vcpu::GUEST_REGIONS {
            return None;
        }
        let mut g = GuestRegions::default();
        for &(base, order) in list {
            let ok = abi::vcpu::GUEST_REGION_ORDERS.contains(&order)
                && base.is_multiple_of(1 << order)
                && base.checked_add(1 << order).is_some_and(|e| e <= abi::kip::USER_END)
                && !g.iter().any(|(b, o)| base < b + (1 << o) && b < base + (1 << order));
            if !ok {
                return None;
            }
            g.r[g.n] = (base, order);
            g.n += 1;
        }
        Some(g)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.r[..self.n].iter().copied()
    }

    /// `addr` lies in one of the regions.
    pub fn contains(&self, addr: u64) -> bool {
        self.iter().any(|(b, o)| addr >= b && addr - b < 1 << o)
    }
}

/// Untyped words [`ThreadContext::hand_off`] carries (the IPC fast path's longest message).
pub const HAND_OFF_WORDS: usize = 16;

/// The message [`ThreadContext::hand_off`] delivers.
#[derive(Clone, Copy, Debug)]
pub enum Message {
    /// `words` untyped words from the UTCB at `src` into the receiver's UTCB at `dst`.
    Utcb { dst: PhysAddr, src: PhysAddr, words: usize },
    /// A register message (`abi::MsgTag::REGS`): its first `n` words into the receiver's
    /// message registers.
    Regs { words: [u64; REG_WORDS], n: usize },
}

/// Registers of a thread saved on kernel entry from user mode.
pub trait UserRegs {
    /// `(rdx, rax, rsi, r8)` on x86_64: selector|flags, tag, label, timeout.
    fn syscall_args(&self) -> [u64; 4];
    /// Sets the result registers `(tag, label)`.
    fn set_syscall_result(&mut self, tag: u64, label: u64);
    /// The message words of a register message (`abi::syscall::REG_WORDS`).
    fn reg_words(&self) -> [u64; REG_WORDS];
    fn ip(&self) -> u64;
    fn sp(&self) -> u64;
    fn flags(&self) -> u64;
    fn set_ip(&mut self, ip: u64);
    fn set_sp(&mut self, sp: u64);
    /// The message an exception handler receives (`abi::proto::exc_regs` layout).
    fn exception_words(&self, trapno: u64, error: u64, addr: u64) -> [u64; exc_regs::WORDS];
    /// Applies an exception handler's answer (ip/sp only if they are user addresses; only the
    /// arithmetic flags).
    fn apply_exception_words(&mut self, w: &[u64; exc_regs::WORDS]);
    /// Loads a whole context, `abi::vcpu::VcpuRegs` order (rax .. rflags), from the 18 words
    /// at `pa` (8-byte aligned, kernel-owned), read in place: a `VcpuResume`'s load, without a
    /// copy on the way (each word copied is two memory accesses more under TCG). `false`
    /// (nothing changed) if ip or sp is not a user address. Only the arithmetic and direction
    /// flags are taken; interrupts stay enabled. `guest`: the context runs as a guest kernel
    /// in its world (x86_64: at privilege level 1), else in user mode.
    fn load_context(&mut self, pa: PhysAddr, guest: bool) -> bool;
    /// The context runs as a guest kernel (see [`UserRegs::load_context`]).
    fn guest_mode(&self) -> bool;
    /// Whether leaving by [`Resume::Syscall`] restores this context exactly (x86_64: rcx and
    /// r11 hold its ip and flags, as after a `syscall` or at an upcall entry).
    fn syscall_exit_exact(&self) -> bool;
    /// Writes the whole context ([`UserRegs::load_context`]'s order), then `tail`, to physical
    /// memory at `pa` (8-byte aligned, kernel-owned): a vCPU upcall's save, in one pass from
    /// the frame, without copies on the way (each is a memory access more under TCG).
    fn save_context(&self, pa: PhysAddr, tail: [u64; 5]);
    /// The context a vCPU upcall enters: `ip` and `sp`, rdi = `arg`, rcx = `ip` and r11 = the
    /// flags (so that sysret is exact), every other register 0, interrupts enabled; as a guest
    /// kernel if `guest` ([`UserRegs::load_context`]). `false` (nothing changed) if ip or sp
    /// is not a user address.
    fn set_entry(&mut self, ip: u64, sp: u64, arg: u64, guest: bool) -> bool;
}

/// A thread's architecture state, held inside the thread: its user registers, where the CPU
/// saves them on every entry from user mode (so they share the page of the thread arena that
/// the fast paths read anyway), and its FPU/SSE area (out of line: touched only when the FPU
/// changes hands). There are no per-thread kernel stacks: a thread that leaves the kernel
/// other than by returning to user mode is resumed from its registers (see [`Resume`]).
pub trait ThreadContext {
    type Regs: UserRegs;
    /// The context of a thread that has not run: it enters user mode at ip 0 / sp 0 until set.
    fn new_user() -> Self;
    fn regs(&mut self) -> &mut Self::Regs;
    /// The address of the user registers, where the CPU saves them on the next entry and
    /// where a resume loads them from.
    fn frame(&self) -> u64;
    /// Hands this thread, blocked in a system call (to be resumed by [`Resume::Syscall`]), a
    /// short message `msg` (at most [`HAND_OFF_WORDS`] words) and `(tag, label)` as the
    /// call's result.
    ///
    /// The source is read now; the rest may be staged until the next resume, which must be
    /// this thread's (x86_64: after the address-space switch, so that its UTCB is touched only
    /// in its own address space: the IPC fast path's receiver).
    fn hand_off(&mut self, msg: Message, tag: u64, label: u64);
    /// Saves the FPU/SSE registers into this thread's area (the FPU must be enabled).
    fn fpu_save(&mut self);
    /// Loads the FPU/SSE registers from this thread's area (the FPU must be enabled).
    fn fpu_restore(&self);
}

/// What an architecture provides to the kernel.
pub trait Arch: Sized + 'static {
    /// A user address space (its page-table root).
    type Space;
    type Context: ThreadContext;

    /// Scheduling ticks per second.
    const TICK_HZ: u64;

    /// A cycle counter (TSC on x86_64).
    fn cycles() -> u64;
    /// Frequency of [`Arch::cycles`] in Hz, as calibrated at boot.
    fn cycles_hz() -> u64;
    /// Powers the machine off with `status` (QEMU: exits with it).
    fn shutdown(status: u32) -> !;

    /// Runs `f` with the frame allocator. `f` must not allocate from the heap.
    fn with_frames<R>(f: impl FnOnce(&mut FrameAllocator<'static>) -> R) -> R;

    /// An empty user address space sharing the kernel's half.
    fn new_space(fa: &mut FrameAllocator) -> Option<Self::Space>;
    /// Maps one page; replaces an existing mapping of `va` and returns its frame. Page tables
    /// it lacks come from the frame allocator, taken only then ([`Arch::with_frames`]: the
    /// caller must not hold it).
    fn map(s: &mut Self::Space, va: VirtAddr, pa: PhysAddr, p: Perms) -> Result<Option<PhysAddr>, MapError>;
    /// Removes the mapping of `va` (flushing the TLB if the space is active); returns its frame.
    fn unmap(s: &mut Self::Space, va: VirtAddr) -> Option<PhysAddr>;
    /// Frees the page tables of a space (not the frames mapped through it). Takes the frame
    /// allocator itself: the caller must not hold it.
    fn destroy_space(s: Self::Space);
    /// The page-table root of a space, as the CPU loads it.
    fn space_root(s: &Self::Space) -> u64;
    /// The root the CPU uses now.
    fn active_root() -> u64;
    /// Switches to the address space with page-table root `root` now (every root shares the
    /// kernel half), unless it is already active.
    fn load_root(root: u64);

    /// Copies `bytes` into physical memory at `pa` (through the kernel's direct map).
    fn write_phys(pa: PhysAddr, bytes: &[u8]);
    /// Copies physical memory at `pa` into `buf`.
    fn read_phys(pa: PhysAddr, buf: &mut [u8]);
    /// Reads 64-bit words from physical memory at `pa` (8-byte aligned).
    fn read_words(pa: PhysAddr, out: &mut [u64]);
    /// Reads `N` 64-bit words from physical memory at `pa` (8-byte aligned), for the fast
    /// paths: an architecture may fill the array without zeroing it first (a `memset` call
    /// is two more pages to touch under TCG).
    fn read_array<const N: usize>(pa: PhysAddr) -> [u64; N] {
        let mut a = [0; N];
        Self::read_words(pa, &mut a);
        a
    }
    /// Writes 64-bit words to physical memory at `pa` (8-byte aligned).
    fn write_words(pa: PhysAddr, words: &[u64]);
    /// Copies `n` words between two disjoint UTCB-sized areas (the IPC fast path).
    fn copy_words(dst: PhysAddr, src: PhysAddr, n: usize);

    /// Writes to the kernel console (as text: a line end may become the device's).
    fn console_write(bytes: &[u8]);
    /// Writes exactly these bytes to the kernel console (the terminal's output).
    fn console_write_raw(bytes: &[u8]);
    /// The hardware interrupt line of console input, which the kernel keeps for itself (`None`:
    /// the console has no input). Like every line it is masked when it fires; the kernel
    /// unmasks it once it has drained the device.
    const CONSOLE_LINE: Option<u8>;
    /// Moves received console input into `buf`; returns the number of bytes. Fewer than
    /// `buf.len()` means the device has nothing more (its interrupt condition is cleared).
    fn console_read(buf: &mut [u8]) -> usize;
    /// The user registers (a [`ThreadContext::frame`]) the next entry from user mode saves
    /// into: the current thread's.
    fn set_entry_frame(frame: u64);
    /// The thread-pointer base user mode sees (the UTCB on x86_64).
    fn set_user_gs(base: u64);
    /// The TLS base user mode sees (FS on x86_64).
    fn set_user_fs(base: u64);
    /// Makes user FPU use trap (`true`) so its state can be switched lazily, or lets it run.
    fn fpu_trap(on: bool);
    /// Asks for the next timer interrupt at `deadline` (in [`Arch::cycles`]); `u64::MAX`: none.
    fn set_timer(deadline: u64);
    /// Loads an I/O permission bitmap for the next user entries.
    fn io_load(bits: &[u8; IO_BITMAP_BYTES]);
    /// Denies all I/O ports to user mode.
    fn io_disable();

    /// Makes the page tables of a guest's `regions` in its space `s` that its worlds share
    /// (per region the one table under which all of it lies): after this, what `s` maps there
    /// shows in every world of the guest at once. They stay until the space goes.
    fn guest_regions(s: &mut Self::Space, regions: &GuestRegions) -> Result<(), MapError>;
    /// The root of `s`'s world for the guest whose space has root `guest` (prepared by
    /// [`Arch::guest_regions`]): `s`'s user half with the guest's `regions` in place of its
    /// own, supervisor only, and of the kernel only its entry trampoline. Made on first use;
    /// kept in step with `s` until the space goes.
    fn world_root(s: &mut Self::Space, guest: u64, regions: &GuestRegions) -> Result<u64, MapError>;
    /// The thread resumed next runs in a world (`Some`), or not: how it leaves the kernel and
    /// enters it again. Cheap when nothing changes (every switch calls it).
    fn set_world(w: Option<&WorldExit>);
    /// Masks / unmasks a hardware interrupt line.
    fn line_mask(line: u8);
    fn line_unmask(line: u8);
}

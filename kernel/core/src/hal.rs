//! The seam between portable kernel logic and an architecture. The kernel binary chooses the
//! implementation in exactly one place (`kernel/src/main.rs`, `type A = ...`).

use crate::frames::FrameAllocator;
use crate::mem::{Perms, PhysAddr, VirtAddr};

/// Why a mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// No frame for a page table.
    NoMemory,
    /// Not a user address, or not page aligned.
    BadAddress,
}

/// Registers of a thread saved on kernel entry from user mode.
pub trait UserFrame {
    /// `(rdx, rax, rsi, r8)` on x86_64: selector|flags, tag, label, timeout.
    fn syscall_args(&self) -> [u64; 4];
    /// Sets the result registers `(tag, label)`.
    fn set_syscall_result(&mut self, tag: u64, label: u64);
    fn ip(&self) -> u64;
}

/// What an architecture provides to the kernel.
pub trait Arch {
    /// A user address space (its page-table root).
    type Space;

    /// A cycle counter (TSC on x86_64).
    fn cycles() -> u64;
    /// Frequency of [`Arch::cycles`] in Hz, as calibrated at boot.
    fn cycles_hz() -> u64;
    /// Powers the machine off with `status` (QEMU: exits with it).
    fn shutdown(status: u32) -> !;

    /// An empty user address space sharing the kernel's half.
    fn new_space(fa: &mut FrameAllocator) -> Option<Self::Space>;
    /// Maps one page; replaces an existing mapping of `va` and returns its frame.
    fn map(
        s: &mut Self::Space,
        va: VirtAddr,
        pa: PhysAddr,
        p: Perms,
        fa: &mut FrameAllocator,
    ) -> Result<Option<PhysAddr>, MapError>;
    /// Removes the mapping of `va` (flushing the TLB if the space is active); returns its frame.
    fn unmap(s: &mut Self::Space, va: VirtAddr) -> Option<PhysAddr>;
    /// Frees the page tables of a space (not the frames mapped through it).
    fn destroy_space(s: Self::Space, fa: &mut FrameAllocator);

    /// Copies `bytes` into physical memory at `pa` (through the kernel's direct map).
    fn write_phys(pa: PhysAddr, bytes: &[u8]);
    /// Copies `len` bytes between physical addresses (ranges must not overlap).
    fn copy_phys(dst: PhysAddr, src: PhysAddr, len: usize);
    /// Reads little-endian 64-bit words from physical memory at `pa` (8-byte aligned).
    fn read_words(pa: PhysAddr, out: &mut [u64]);
    /// Writes 64-bit words to physical memory at `pa` (8-byte aligned).
    fn write_words(pa: PhysAddr, words: &[u64]);
    /// Copies physical memory at `pa` into `buf`.
    fn read_phys(pa: PhysAddr, buf: &mut [u8]);
}

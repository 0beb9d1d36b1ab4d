//! The kernel info page (KIP) and the start-up contract of tasks the kernel starts itself.
//!
//! Every task has the KIP mapped read-only at [`KIP_ADDR`]. A boot task (a program the boot image
//! marks `START`) begins at its ELF entry point with:
//! ```text
//! [rsp]      user address of its argument string (UTF-8, no terminator)
//! [rsp + 8]  its length in bytes
//! [rsp + 16] KIP_ADDR
//! gs base = its UTCB (BOOT_UTCB_ADDR); the stack lies below BOOT_STACK_TOP
//! ```
//! Programs the runtime loads start the same way (the start-up block is the whole contract).
//! Capabilities: see [`crate::cap::well_known`]. The whole boot image is mapped read-only at
//! [`Kip::boot_image`].

/// User address of the KIP in every task.
pub const KIP_ADDR: u64 = 0x7fff_fff0_0000;
/// User address of a boot task's UTCB area (16 KiB: 16 UTCBs); the first is its first thread's.
pub const BOOT_UTCB_ADDR: u64 = 0x7fff_ffe0_0000;
/// log2 size of a program's UTCB area at [`BOOT_UTCB_ADDR`]: 16 KiB, 16 UTCBs of 1 KiB (the
/// first is the main thread's).
pub const UTCB_AREA_ORDER: u32 = 14;
/// Initial stack pointer of a boot task.
pub const BOOT_STACK_TOP: u64 = 0x7fff_ff00_0000;
/// Bytes of stack mapped for a boot task below [`BOOT_STACK_TOP`].
pub const BOOT_STACK_SIZE: u64 = 64 * 1024;
/// First user address above the canonical user half.
pub const USER_END: u64 = 0x0000_8000_0000_0000;

/// `magic` of a valid KIP: "L4uK".
pub const KIP_MAGIC: u32 = u32::from_le_bytes(*b"L4uK");

/// The KIP layout. Fields are only ever appended; `abi_version` tells what is present.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Kip {
    pub magic: u32,
    pub abi_version: u32,
    /// Frequency of the time-stamp counter (`rdtsc`), in Hz.
    pub tsc_hz: u64,
    /// Frequency of the kernel's scheduling tick, in Hz.
    pub tick_hz: u64,
    /// Number of valid entries in `sigma0_mem`.
    pub sigma0_mem_count: u64,
    /// Memory given to sigma0, as `[start, end)` ranges of its own virtual addresses; the
    /// physical address of a page is its address minus [`SIGMA0_PHYS_OFFSET`].
    pub sigma0_mem: [[u64; 2]; SIGMA0_MEM_RANGES],
    /// User address of the boot image in every boot task (read-only), and its size in bytes;
    /// 0 if none. The root task finds its programs and boot script there.
    pub boot_image: u64,
    pub boot_image_size: u64,
    /// Wall-clock time: nanoseconds since the Unix epoch (UTC, from the machine's real-time
    /// clock, whole seconds) at the moment the time-stamp counter read `wallclock_tsc`; both 0
    /// if the machine has no usable clock.
    pub wallclock_ns: u64,
    pub wallclock_tsc: u64,
}

/// Where boot tasks see the boot image (plus the image's offset within its first page).
pub const BOOT_IMAGE_ADDR: u64 = 0x7ff0_0000_0000;

/// Ranges of memory the KIP can describe for sigma0.
pub const SIGMA0_MEM_RANGES: usize = 32;
/// Sigma0 sees physical memory at this offset (its own image sits at the usual low address).
pub const SIGMA0_PHYS_OFFSET: u64 = 0x100_0000_0000;

/// Guest status the kernel reports to the machine (QEMU's isa-debug-exit) when it dies.
pub const KERNEL_FAILURE_STATUS: u32 = 0x3f;

//! The user thread control block: 1 KiB per thread, shared between the thread and the kernel.
//!
//! ```text
//! word   0 .. 63   MR[0..63]   message registers (untyped words, then typed items)
//! word  64 .. 120  BR[0..56]   buffer registers (receive windows for typed items)
//! word 120 .. 128  TCR[0..8]   thread control registers
//! ```
//! On x86_64 the kernel points the thread's GS base at its UTCB and stores the UTCB's own address
//! in `TCR[TCR_SELF]`, so user code finds it with `mov %gs:TCR_SELF_OFFSET, %reg`.

/// Size of one UTCB in bytes.
pub const UTCB_SIZE: usize = 1024;
/// Number of message registers.
pub const MR_COUNT: usize = 63;
/// Word offset of the first buffer register.
pub const BR_OFFSET: usize = 64;
/// Word offset of the first thread control register.
pub const TCR_OFFSET: usize = 120;
/// TCR holding the error of the last failed IPC.
pub const TCR_ERROR: usize = 0;
/// TCR holding the UTCB's own user address.
pub const TCR_SELF: usize = 7;
/// Byte offset of `TCR[TCR_SELF]` from the UTCB start (the GS-relative address).
pub const TCR_SELF_OFFSET: usize = (TCR_OFFSET + TCR_SELF) * 8;

/// The UTCB as seen by both sides.
#[repr(C, align(1024))]
#[derive(Clone)]
pub struct Utcb {
    pub mr: [u64; MR_COUNT],
    pub _reserved: u64,
    pub br: [u64; TCR_OFFSET - BR_OFFSET],
    pub tcr: [u64; 8],
}

const _: () = assert!(core::mem::size_of::<Utcb>() == UTCB_SIZE);
const _: () = assert!(core::mem::offset_of!(Utcb, tcr) == TCR_OFFSET * 8);

/// Bytes that fit into the message registers after `skip` words.
pub const fn mr_bytes_after(skip: usize) -> usize {
    (MR_COUNT - skip) * 8
}

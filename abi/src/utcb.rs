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

/// Byte strings in message registers (`Log::Write`, `Task::SetName`, namespace names) are a
/// length word followed by the bytes, packed little-endian eight to a word. Packs `bytes` into
/// the start of `words` (which must have room) and returns how many words that took.
pub fn pack_bytes(bytes: &[u8], words: &mut [u64]) -> usize {
    debug_assert!(words.len() * 8 >= bytes.len(), "no room for the bytes");
    for (w, c) in words.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        *w = u64::from_le_bytes(b);
    }
    bytes.len().div_ceil(8)
}

/// Fills `out` with the bytes [`pack_bytes`] put into `words` (which must hold them).
pub fn unpack_bytes(words: &[u64], out: &mut [u8]) {
    debug_assert!(words.len() * 8 >= out.len(), "the words do not hold the bytes");
    for (c, w) in out.chunks_mut(8).zip(words) {
        c.copy_from_slice(&w.to_le_bytes()[..c.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_words() {
        let text = b"hello, message registers";
        let mut words = [0u64; 4];
        assert_eq!(pack_bytes(text, &mut words), 3);
        assert_eq!(words[0], u64::from_le_bytes(*b"hello, m"));
        let mut out = [0u8; 24];
        unpack_bytes(&words, &mut out);
        assert_eq!(&out, text);
        assert_eq!(pack_bytes(b"", &mut words), 0);
    }
}

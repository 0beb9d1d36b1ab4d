//! The single system call, `invoke`, and its register convention on x86_64.
//!
//! ```text
//! instruction: syscall
//! rdx  in : capability selector | Flags      (selector bits 12.., flags bits 0..3)
//! rax  in : message tag (MsgTag)             out: result tag (label < 0: error, see Error)
//! rsi  in : label for open wait / reply      out: label of the received message
//! r8   in : timeouts (see [`timeout`])
//! r15, r14, r13, r12: message words 0..4 of a register message (MsgTag::REGS), in and out
//! rcx, r11: clobbered (hardware)             all other registers preserved
//! ```
//! Message words travel in the caller's UTCB (`utcb::Utcb::mr`), never in pointers the kernel
//! would have to dereference — or, for a short message flagged [`crate::MsgTag::REGS`], in
//! [`REG_WORDS`] registers (see there).

use bitflags::bitflags;

bitflags! {
    /// Operation flags in the low bits of `rdx`, as in Fiasco.
    ///
    /// `SEND` alone is a send, `SEND|RECV` a call, `RECV|OPEN_WAIT` an open wait,
    /// `SEND|RECV|OPEN_WAIT|REPLY` reply-and-wait.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Flags: u64 {
        const SEND = 1;
        const RECV = 2;
        const OPEN_WAIT = 4;
        const REPLY = 8;
        /// A call: send, then receive from the same partner.
        const CALL = Self::SEND.bits() | Self::RECV.bits();
    }
}

/// Mask of the flag bits inside `rdx`.
pub const FLAGS_MASK: u64 = 0xf;

/// Message words a register message ([`crate::MsgTag::REGS`]) carries at most: words 0, 1, 2, 3
/// in r15, r14, r13, r12 — the order in which the kernel saves them, so it moves them with one
/// copy. A sender flags such a message (no typed items); the kernel delivers it in the same
/// registers with the flag set, or in the receiver's UTCB without it: a receiver accepts both.
/// A kernel object invoked with one reads the words as its message registers 0..4.
pub const REG_WORDS: usize = 4;

/// IPC timeouts in `r8`: bits 0..32 the receive phase, bits 32..64 the send phase.
/// Each half: [`timeout::NEVER`] (0) waits forever, [`timeout::ZERO`] never blocks, any other
/// value is a relative timeout in microseconds.
pub mod timeout {
    pub const NEVER: u32 = 0;
    pub const ZERO: u32 = u32::MAX;

    /// Packs send and receive timeouts into `r8`.
    pub const fn pack(send: u32, recv: u32) -> u64 {
        ((send as u64) << 32) | recv as u64
    }

    pub const fn send(r8: u64) -> u32 {
        (r8 >> 32) as u32
    }

    pub const fn recv(r8: u64) -> u32 {
        r8 as u32
    }
}

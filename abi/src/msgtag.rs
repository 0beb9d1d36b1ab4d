//! The message tag (`rax` of `invoke`).
//!
//! ```text
//!  63                    16 15    12 11      6 5       0
//! +------------------------+--------+---------+---------+
//! |   label / protocol     | flags  |  items  |  words  |
//! +------------------------+--------+---------+---------+
//! ```
//! `words` untyped message registers, `items` typed items (two words each) after them. The label
//! is signed: protocols of kernel objects are negative. In a *reply* (and in the result of a
//! kernel-object operation) a negative label is an [`Error`] code, as in L4Re. The flag
//! [`MsgTag::ERROR`] marks a failed IPC operation itself (timeout, canceled, no partner), so a
//! received request with a negative protocol label is never mistaken for a failure. The flag
//! [`MsgTag::REGS`] marks a short message whose words are in registers.

use crate::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgTag(pub u64);

impl MsgTag {
    pub const WORDS_MASK: u64 = 0x3f;
    pub const ITEMS_SHIFT: u32 = 6;
    pub const ITEMS_MASK: u64 = 0x3f;
    pub const FLAGS_SHIFT: u32 = 12;
    pub const LABEL_SHIFT: u32 = 16;

    #[inline]
    pub const fn new(label: i64, words: u64, items: u64, flags: u64) -> Self {
        MsgTag(
            ((label as u64) << Self::LABEL_SHIFT)
                | ((flags & 0xf) << Self::FLAGS_SHIFT)
                | ((items & Self::ITEMS_MASK) << Self::ITEMS_SHIFT)
                | (words & Self::WORDS_MASK),
        )
    }

    /// Flag: the IPC operation failed; the label holds `-Error`.
    pub const ERROR: u64 = 0x8;

    /// Flag: the (at most [`crate::syscall::REG_WORDS`]) untyped words are in registers, not
    /// in the UTCB (see there). Short messages skip the UTCBs: under an emulator every page an
    /// IPC touches after an address-space switch costs a TLB refill.
    pub const REGS: u64 = 0x1;

    /// Whether the words are in registers ([`MsgTag::REGS`]).
    #[inline]
    pub const fn in_regs(self) -> bool {
        self.flags() & Self::REGS != 0
    }

    /// The same tag without [`MsgTag::REGS`] (its words moved to the UTCB).
    #[inline]
    pub const fn without_regs(self) -> MsgTag {
        MsgTag(self.0 & !(Self::REGS << Self::FLAGS_SHIFT))
    }

    /// A result tag carrying an error.
    pub const fn error(e: Error) -> Self {
        Self::new(-e.code(), 0, 0, Self::ERROR)
    }

    #[inline]
    pub const fn label(self) -> i64 {
        (self.0 as i64) >> Self::LABEL_SHIFT
    }

    #[inline]
    pub const fn words(self) -> usize {
        (self.0 & Self::WORDS_MASK) as usize
    }

    #[inline]
    pub const fn items(self) -> usize {
        ((self.0 >> Self::ITEMS_SHIFT) & Self::ITEMS_MASK) as usize
    }

    #[inline]
    pub const fn flags(self) -> u64 {
        (self.0 >> Self::FLAGS_SHIFT) & 0xf
    }

    /// For replies and kernel-object results: `Err` if the operation failed or the label is
    /// negative.
    #[inline]
    pub fn result(self) -> Result<MsgTag, Error> {
        match self.label() {
            l if l < 0 => Err(Error::from_code(-l).unwrap_or(Error::Inval)),
            _ if self.flags() & Self::ERROR != 0 => Err(Error::Inval),
            _ => Ok(self),
        }
    }

    /// For receive operations: `Err` only if the IPC itself failed; the label of a received
    /// message (a protocol, possibly negative) is left to the receiver.
    #[inline]
    pub fn ipc_result(self) -> Result<MsgTag, Error> {
        if self.flags() & Self::ERROR != 0 {
            return Err(Error::from_code(-self.label()).unwrap_or(Error::Inval));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let t = MsgTag::new(-13, 5, 2, 0x3);
        assert_eq!((t.label(), t.words(), t.items(), t.flags()), (-13, 5, 2, 3));
        assert_eq!(MsgTag::error(Error::NoEnt).result(), Err(Error::NoEnt));
        assert_eq!(MsgTag::error(Error::Timeout).ipc_result(), Err(Error::Timeout));
        assert_eq!(MsgTag::new(-6, 2, 0, 0).ipc_result().map(|t| t.label()), Ok(-6));
        assert_eq!(MsgTag::new(-12, 0, 0, 0).result(), Err(Error::NoMem));
        assert_eq!(MsgTag::new(7, 1, 0, 0).result().map(|t| t.label()), Ok(7));
    }
}

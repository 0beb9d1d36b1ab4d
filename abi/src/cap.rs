//! Capability selectors, indices and rights.
//!
//! ```text
//!  63                         12 11      4 3      0
//! +-----------------------------+---------+--------+
//! |       capability index      |    0    | flags  |   = CapSel | syscall::Flags
//! +-----------------------------+---------+--------+
//! ```
//! A selector names a slot in the invoking task's own capability table; there are no global names.

use bitflags::bitflags;

/// Bit position of the capability index inside a selector.
pub const CAP_SHIFT: u32 = 12;

/// An index into a task's capability table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CapIdx(pub u64);

/// A capability selector: a [`CapIdx`] shifted into place, as passed in `rdx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CapSel(u64);

impl CapSel {
    /// The invalid selector (index 0 never holds a capability).
    pub const INVALID: CapSel = CapSel(0);

    pub const fn from_idx(idx: CapIdx) -> Self {
        CapSel(idx.0 << CAP_SHIFT)
    }

    /// Interprets the raw `rdx` value of a system call, ignoring the flag bits.
    pub const fn from_raw(raw: u64) -> Self {
        CapSel(raw & !((1 << CAP_SHIFT) - 1))
    }

    pub const fn idx(self) -> CapIdx {
        CapIdx(self.0 >> CAP_SHIFT)
    }

    pub const fn raw(self) -> u64 {
        self.0
    }
}

bitflags! {
    /// Rights on an object capability (Fiasco's L4_CAP_FPAGE_*).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Rights: u8 {
        /// Write: invoke state-changing operations.
        const W = 1;
        /// Special: object-specific extra right (e.g. map through a task).
        const S = 2;
        /// Read: the right to invoke at all.
        const R = 4;
        /// Delete: destroy the object.
        const D = 8;
        const RW = Self::R.bits() | Self::W.bits();
        const ALL = 0xf;
    }
}

/// Capability slots a task started by the kernel finds filled (L4Re numbering).
pub mod well_known {
    use super::CapIdx;
    /// The task itself.
    pub const TASK: CapIdx = CapIdx(1);
    /// A factory charged against the kernel's memory for boot tasks.
    pub const FACTORY: CapIdx = CapIdx(2);
    /// The task's first thread.
    pub const THREAD: CapIdx = CapIdx(3);
    /// An IPC gate to sigma0 (memory, page faults), if the boot image has one.
    pub const PAGER: CapIdx = CapIdx(4);
    /// The kernel console.
    pub const LOG: CapIdx = CapIdx(5);
    /// The interrupt controller.
    pub const ICU: CapIdx = CapIdx(6);
    /// The scheduler.
    pub const SCHEDULER: CapIdx = CapIdx(7);
    /// Platform control (shutdown).
    pub const PLATFORM_CTL: CapIdx = CapIdx(8);
    /// The program's namespace, in programs the root task starts.
    pub const NAMESPACE: CapIdx = CapIdx(10);
    /// The program's parent (`proto::parent`), in programs the root task starts.
    pub const PARENT: CapIdx = CapIdx(11);
    /// First slot free for the program's own use.
    pub const FIRST_FREE: CapIdx = CapIdx(16);
}

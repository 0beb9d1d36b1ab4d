//! Address newtypes shared by the portable kernel and the architecture layer.

/// Size of the base page (and frame) on every supported architecture.
pub const PAGE_SIZE: u64 = 4096;

/// A physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysAddr(pub u64);

/// A virtual address in some address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtAddr(pub u64);

impl PhysAddr {
    pub const fn is_page_aligned(self) -> bool {
        self.0.is_multiple_of(PAGE_SIZE)
    }
}

impl VirtAddr {
    pub const fn is_page_aligned(self) -> bool {
        self.0.is_multiple_of(PAGE_SIZE)
    }

    pub const fn page_down(self) -> VirtAddr {
        VirtAddr(self.0 & !(PAGE_SIZE - 1))
    }
}

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    pub const fn new(start: u64, end: u64) -> Self {
        PhysRange { start, end }
    }

    pub const fn overlaps(&self, o: &PhysRange) -> bool {
        self.start < o.end && o.start < self.end
    }
}

/// Page permissions of a user mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    pub write: bool,
    pub exec: bool,
}

impl Perms {
    pub const RO: Perms = Perms { write: false, exec: false };
    pub const RW: Perms = Perms { write: true, exec: false };
    pub const RX: Perms = Perms { write: false, exec: true };
    pub const RWX: Perms = Perms { write: true, exec: true };
}

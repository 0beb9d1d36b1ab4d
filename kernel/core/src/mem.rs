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

/// Base pages per large page of the level above (2 MiB = 512 × 4 KiB on x86-64 and on AArch64
/// with a 4 KiB granule).
pub const PAGES_PER_LARGE: usize = 512;
/// Bytes of such a large page.
pub const LARGE_PAGE_SIZE: u64 = PAGES_PER_LARGE as u64 * PAGE_SIZE;

/// Whether the `n` base pages of an aligned block, whose translations `entry(i)` gives as
/// (frame, attribute bits), can be one large page: every one present, the frames contiguous
/// from one aligned to the whole block, the attributes equal. Returns the first frame and the
/// attributes. Stops at the first page that does not fit, so a block with holes costs little.
pub fn uniform_block(n: usize, entry: impl Fn(usize) -> Option<(PhysAddr, u64)>) -> Option<(PhysAddr, u64)> {
    let (base, attrs) = entry(0)?;
    if !base.0.is_multiple_of(n as u64 * PAGE_SIZE) {
        return None;
    }
    (1..n)
        .all(|i| entry(i) == Some((PhysAddr(base.0 + i as u64 * PAGE_SIZE), attrs)))
        .then_some((base, attrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = PAGES_PER_LARGE;
    const BLOCK: u64 = LARGE_PAGE_SIZE;

    fn run(base: u64, attrs: u64) -> impl Fn(usize) -> Option<(PhysAddr, u64)> {
        move |i| Some((PhysAddr(base + i as u64 * PAGE_SIZE), attrs))
    }

    #[test]
    fn a_contiguous_aligned_uniform_block_is_one_large_page() {
        assert_eq!(uniform_block(N, run(3 * BLOCK, 7)), Some((PhysAddr(3 * BLOCK), 7)));
    }

    #[test]
    fn misaligned_holes_gaps_and_mixed_attributes_are_not() {
        assert_eq!(uniform_block(N, run(3 * BLOCK + PAGE_SIZE, 7)), None, "misaligned");
        let hole = |i| (i != 300).then(|| (PhysAddr(BLOCK + i as u64 * PAGE_SIZE), 7));
        assert_eq!(uniform_block(N, hole), None, "a page missing");
        let swapped = |i: usize| {
            let j = match i {
                10 => 11,
                11 => 10,
                j => j,
            };
            Some((PhysAddr(BLOCK + j as u64 * PAGE_SIZE), 7))
        };
        assert_eq!(uniform_block(N, swapped), None, "frames out of order");
        let mixed = |i| Some((PhysAddr(BLOCK + i as u64 * PAGE_SIZE), if i == N - 1 { 5 } else { 7 }));
        assert_eq!(uniform_block(N, mixed), None, "one page with other rights");
    }
}

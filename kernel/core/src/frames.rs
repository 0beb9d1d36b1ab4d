//! The physical frame allocator: a bitmap over the frames of usable RAM.
//!
//! Its storage is handed in by the caller (a static array in the kernel), so it works before any
//! heap exists. One bit per 4 KiB frame; a set bit means "free".

use crate::mem::{PhysAddr, PhysRange, PAGE_SIZE};

pub struct FrameAllocator<'a> {
    bits: &'a mut [u64],
    /// Frames the bitmap covers, starting at physical 0.
    frames: usize,
    free: usize,
    /// Where the next search starts: keeps allocation O(1) amortised for the common case.
    hint: usize,
}

impl<'a> FrameAllocator<'a> {
    /// An allocator with every frame taken; covers `bits.len() * 64` frames from address 0.
    pub fn new(bits: &'a mut [u64]) -> Self {
        bits.fill(0);
        let frames = bits.len() * 64;
        FrameAllocator { bits, frames, free: 0, hint: 0 }
    }

    /// Highest physical address (exclusive) this allocator can manage.
    pub fn limit(&self) -> u64 {
        self.frames as u64 * PAGE_SIZE
    }

    fn is_free(&self, f: usize) -> bool {
        self.bits[f / 64] & (1 << (f % 64)) != 0
    }

    fn set(&mut self, f: usize, free: bool) {
        let was = self.is_free(f);
        if free {
            self.bits[f / 64] |= 1 << (f % 64);
        } else {
            self.bits[f / 64] &= !(1 << (f % 64));
        }
        match (was, free) {
            (false, true) => self.free += 1,
            (true, false) => self.free -= 1,
            _ => {}
        }
    }

    /// Marks the whole frames inside `r` free (partial frames at the edges are skipped).
    /// Returns how many frames beyond [`Self::limit`] had to be ignored.
    pub fn add_range(&mut self, r: PhysRange) -> u64 {
        let first = r.start.div_ceil(PAGE_SIZE);
        let last = r.end / PAGE_SIZE;
        let mut ignored = 0;
        for f in first..last {
            if (f as usize) < self.frames {
                self.set(f as usize, true);
            } else {
                ignored += 1;
            }
        }
        ignored
    }

    /// Marks every frame touching `r` used (kernel image, boot modules, ...).
    pub fn reserve_range(&mut self, r: PhysRange) {
        let first = r.start / PAGE_SIZE;
        let last = r.end.div_ceil(PAGE_SIZE).min(self.frames as u64);
        for f in first..last {
            self.set(f as usize, false);
        }
    }

    pub fn free_frames(&self) -> usize {
        self.free
    }

    /// Allocates `n` physically contiguous frames.
    pub fn alloc_contiguous(&mut self, n: usize) -> Option<PhysAddr> {
        self.alloc_aligned(n, 1)
    }

    /// Allocates `n` physically contiguous frames, the first at a multiple of `align` frames
    /// (a power of two): memory that can be mapped with large pages.
    pub fn alloc_aligned(&mut self, n: usize, align: usize) -> Option<PhysAddr> {
        if n == 0 || n > self.free || !align.is_power_of_two() {
            return None;
        }
        for pass in 0..2 {
            let (from, to) = if pass == 0 { (self.hint, self.frames) } else { (0, self.hint + n) };
            let mut run = 0;
            let mut f = from;
            while f < to.min(self.frames) {
                // A run starts only at an aligned frame.
                if run == 0 && !f.is_multiple_of(align) {
                    f = f.next_multiple_of(align);
                    continue;
                }
                // Skip whole used words quickly.
                if run == 0 && f % 64 == 0 && self.bits[f / 64] == 0 {
                    f += 64;
                    continue;
                }
                if self.is_free(f) {
                    run += 1;
                    if run == n {
                        let start = f + 1 - n;
                        for g in start..=f {
                            self.set(g, false);
                        }
                        self.hint = f + 1;
                        return Some(PhysAddr(start as u64 * PAGE_SIZE));
                    }
                } else {
                    run = 0;
                }
                f += 1;
            }
        }
        None
    }

    pub fn alloc(&mut self) -> Option<PhysAddr> {
        self.alloc_contiguous(1)
    }

    /// Returns `n` frames starting at `addr`. Freeing a frame that is free is a kernel bug and
    /// is refused (returns false) rather than corrupting the count.
    pub fn free_contiguous(&mut self, addr: PhysAddr, n: usize) -> bool {
        let first = (addr.0 / PAGE_SIZE) as usize;
        if !addr.is_page_aligned() || first + n > self.frames || (first..first + n).any(|f| self.is_free(f)) {
            return false;
        }
        for f in first..first + n {
            self.set(f, true);
        }
        true
    }

    pub fn free(&mut self, addr: PhysAddr) -> bool {
        self.free_contiguous(addr, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_and_reserve() {
        let mut bits = [0u64; 4];
        let mut fa = FrameAllocator::new(&mut bits);
        assert_eq!(fa.limit(), 256 * PAGE_SIZE);
        assert_eq!(fa.add_range(PhysRange::new(0x1800, 300 * PAGE_SIZE)), 44);
        assert_eq!(fa.free_frames(), 254);
        fa.reserve_range(PhysRange::new(10 * PAGE_SIZE, 20 * PAGE_SIZE + 1));
        assert_eq!(fa.free_frames(), 243);
        let a = fa.alloc().unwrap();
        assert_eq!(a, PhysAddr(2 * PAGE_SIZE));
        let c = fa.alloc_contiguous(12).unwrap();
        assert!(c.0 >= 21 * PAGE_SIZE, "contiguous run skips the reserved hole");
        assert!(fa.free_contiguous(c, 12));
        assert!(!fa.free(c), "double free refused");
        assert!(fa.free(a));
        assert!(!fa.free(a));
        assert_eq!(fa.free_frames(), 243);
        assert!(fa.alloc_contiguous(1000).is_none());
        let g = fa.alloc_aligned(16, 16).unwrap();
        assert!(
            g.0.is_multiple_of(16 * PAGE_SIZE) && g.0 >= 32 * PAGE_SIZE,
            "aligned past the used frames: {g:?}"
        );
        assert!(fa.free_contiguous(g, 16));
        assert!(fa.alloc_aligned(4, 3).is_none(), "alignment must be a power of two");
    }

    #[test]
    fn exhausts_then_recovers() {
        let mut bits = [0u64; 1];
        let mut fa = FrameAllocator::new(&mut bits);
        fa.add_range(PhysRange::new(0, 64 * PAGE_SIZE));
        let all: Vec<_> = (0..64).map(|_| fa.alloc().unwrap()).collect();
        assert!(fa.alloc().is_none());
        for a in &all {
            assert!(fa.free(*a));
        }
        assert_eq!(fa.free_frames(), 64);
        assert!(fa.alloc_contiguous(64).is_some());
    }
}

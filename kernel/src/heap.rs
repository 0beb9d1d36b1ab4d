//! The kernel heap: power-of-two size classes up to 2 KiB carved from frames, larger blocks as
//! contiguous frames. Everything is reached through the direct map.

use arch_x86_64::frames::with_frames;
use arch_x86_64::paging::phys_to_virt;
use core::alloc::{GlobalAlloc, Layout};
use kernel_core::mem::{PhysAddr, PAGE_SIZE};
use spin::Mutex;

const CLASSES: usize = 8; // 16, 32, ..., 2048 bytes
const MIN_SHIFT: u32 = 4;

/// Heads of the per-class free lists (kernel virtual addresses; 0 = empty). Each free block
/// stores the address of the next one in its first word.
static FREE: Mutex<[usize; CLASSES]> = Mutex::new([0; CLASSES]);

pub struct Heap;

fn class_of(l: &Layout) -> Option<usize> {
    let size = l.size().max(l.align()).max(1 << MIN_SHIFT).next_power_of_two();
    let c = (size.trailing_zeros() - MIN_SHIFT) as usize;
    (c < CLASSES).then_some(c)
}

fn pages_of(l: &Layout) -> usize {
    l.size().div_ceil(PAGE_SIZE as usize)
}

fn virt_to_phys(p: *mut u8) -> PhysAddr {
    PhysAddr(p as u64 - arch_x86_64::paging::DIRECT_BASE)
}

// SAFETY: blocks handed out are disjoint (each is on exactly one free list or in use), sized and
// aligned for the layout (class blocks are naturally aligned within page-aligned frames; large
// blocks are page aligned and larger alignments are refused).
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        match class_of(&l) {
            Some(c) => {
                let mut free = FREE.lock();
                if free[c] == 0 {
                    let Some(page) = with_frames(|f| f.alloc()) else { return core::ptr::null_mut() };
                    let base = phys_to_virt(page) as usize;
                    let size = 1usize << (c as u32 + MIN_SHIFT);
                    for b in (base..base + PAGE_SIZE as usize).step_by(size).rev() {
                        // SAFETY: b is inside the fresh frame, aligned for a usize.
                        unsafe { (b as *mut usize).write(free[c]) };
                        free[c] = b;
                    }
                }
                let b = free[c];
                // SAFETY: b is a free block of this class; its first word holds the next link.
                free[c] = unsafe { (b as *const usize).read() };
                b as *mut u8
            }
            None if l.align() <= PAGE_SIZE as usize => {
                with_frames(|f| f.alloc_contiguous(pages_of(&l))).map_or(core::ptr::null_mut(), phys_to_virt)
            }
            None => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        match class_of(&l) {
            Some(c) => {
                let mut free = FREE.lock();
                // SAFETY: p was allocated from this class and is no longer used by the caller.
                unsafe { (p as *mut usize).write(free[c]) };
                free[c] = p as usize;
            }
            None => {
                let ok = with_frames(|f| f.free_contiguous(virt_to_phys(p), pages_of(&l)));
                debug_assert!(ok, "heap freed frames it did not own");
            }
        }
    }
}

//! The heap of native programs (feature `runtime`): memory comes from sigma0 in 1 MiB chunks
//! mapped at [`HEAP_BASE`] upwards; small blocks in power-of-two classes, larger ones in whole
//! pages, freed pages reused first-fit. Registered as the global allocator.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, Ordering};

/// Where the heap grows from (above any program image, below the stacks and UTCBs).
pub const HEAP_BASE: u64 = 0x10_0000_0000;
const CHUNK_ORDER: u32 = 20;
const PAGE: usize = 4096;
const CLASSES: usize = 8;
const MIN_SHIFT: u32 = 4;

struct State {
    /// Next unused address of the current chunk, and its end.
    next: usize,
    end: usize,
    free: [usize; CLASSES],
    /// Freed page runs: each starts with (next run, pages).
    runs: usize,
}

/// The allocator; one lock around its state (programs may have several threads).
pub struct Heap {
    lock: AtomicBool,
    state: core::cell::UnsafeCell<State>,
}

// SAFETY: the state is only touched with `lock` held.
unsafe impl Sync for Heap {}

impl Heap {
    pub const fn new() -> Self {
        Heap {
            lock: AtomicBool::new(false),
            state: core::cell::UnsafeCell::new(State { next: 0, end: 0, free: [0; CLASSES], runs: 0 }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        while self.lock.swap(true, Ordering::Acquire) {
            core::hint::spin_loop();
        }
        // SAFETY: the lock gives exclusive access to the state.
        let r = f(unsafe { &mut *self.state.get() });
        self.lock.store(false, Ordering::Release);
        r
    }
}

impl Default for Heap {
    fn default() -> Self {
        Self::new()
    }
}

/// One more chunk from sigma0 at the end of the heap.
fn grow(s: &mut State) -> bool {
    let at = if s.end == 0 { HEAP_BASE as usize } else { s.end };
    if crate::ipc::sigma0::any(at as u64, CHUNK_ORDER).is_err() {
        return false;
    }
    if s.end == 0 || s.next == s.end {
        s.next = at;
    }
    s.end = at + (1 << CHUNK_ORDER);
    true
}

/// `pages` contiguous pages: a freed run first, else the current chunk.
fn pages(s: &mut State, pages: usize) -> *mut u8 {
    let mut prev: *mut usize = &mut s.runs;
    // SAFETY: every run on the list is a freed block of ours; its first two words are the link
    // and its length in pages.
    unsafe {
        while *prev != 0 {
            let run = *prev as *mut usize;
            let n = *run.add(1);
            if n >= pages {
                if n == pages {
                    *prev = *run;
                } else {
                    let rest = (run as usize + pages * PAGE) as *mut usize;
                    (*rest, *rest.add(1)) = (*run, n - pages);
                    *prev = rest as usize;
                }
                return run as *mut u8;
            }
            prev = run;
        }
    }
    let size = pages * PAGE;
    let next = s.next.next_multiple_of(PAGE);
    if s.end == 0 || next + size > s.end {
        if size > 1 << CHUNK_ORDER {
            return core::ptr::null_mut();
        }
        // The rest of the old chunk is lost; chunks are large, big blocks rare.
        s.next = s.end;
        if !grow(s) {
            return core::ptr::null_mut();
        }
        return pages_from_chunk(s, size);
    }
    s.next = next;
    pages_from_chunk(s, size)
}

fn pages_from_chunk(s: &mut State, size: usize) -> *mut u8 {
    let p = s.next.next_multiple_of(PAGE);
    s.next = p + size;
    p as *mut u8
}

fn class_of(l: &Layout) -> Option<usize> {
    let size = l.size().max(l.align()).max(1 << MIN_SHIFT).next_power_of_two();
    let c = (size.trailing_zeros() - MIN_SHIFT) as usize;
    (c < CLASSES).then_some(c)
}

// SAFETY: blocks handed out are disjoint (each on at most one free list or in use), sized and
// aligned for their layout (class blocks are carved naturally aligned from whole pages; page
// blocks are page aligned, larger alignments are refused).
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.with(|s| match class_of(&l) {
            Some(c) => {
                if s.free[c] == 0 {
                    let page = pages(s, 1);
                    if page.is_null() {
                        return page;
                    }
                    let size = 1usize << (c as u32 + MIN_SHIFT);
                    for b in (page as usize..page as usize + PAGE).step_by(size).rev() {
                        // SAFETY: b lies in the fresh page, aligned for a usize.
                        unsafe { (b as *mut usize).write(s.free[c]) };
                        s.free[c] = b;
                    }
                }
                let b = s.free[c];
                // SAFETY: b is a free block of this class; its first word links the next.
                s.free[c] = unsafe { (b as *const usize).read() };
                b as *mut u8
            }
            None if l.align() <= PAGE => pages(s, l.size().div_ceil(PAGE)),
            None => core::ptr::null_mut(),
        })
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        self.with(|s| match class_of(&l) {
            Some(c) => {
                // SAFETY: p was a block of this class and is no longer used.
                unsafe { (p as *mut usize).write(s.free[c]) };
                s.free[c] = p as usize;
            }
            None => {
                let run = p as *mut usize;
                // SAFETY: p starts a page run of ours (at least one page, so two words fit).
                unsafe { (*run, *run.add(1)) = (s.runs, l.size().div_ceil(PAGE)) };
                s.runs = p as usize;
            }
        })
    }
}

#[global_allocator]
static HEAP: Heap = Heap::new();

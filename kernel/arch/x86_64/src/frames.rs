//! Physical memory: the one frame allocator, set up from the boot memory map. The kernel heap
//! and the kernel's objects both draw from it.

use crate::paging::DIRECT_MAP_SIZE;
use crate::Boot;
use kernel_core::frames::FrameAllocator;
use kernel_core::mem::{PhysRange, PAGE_SIZE};
use spin::{Mutex, MutexGuard};

const BITMAP_WORDS: usize = (DIRECT_MAP_SIZE / PAGE_SIZE / 64) as usize;

static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

/// Runs `f` with the frame allocator. `f` must not allocate from the heap (the heap takes
/// frames through here, and the lock is not re-entrant).
pub fn with_frames<R>(f: impl FnOnce(&mut FrameAllocator<'static>) -> R) -> R {
    f(FRAMES.lock().as_mut().expect("frame allocator not initialised"))
}

/// Hands all RAM but the first MiB, the kernel image and the boot image to the allocator.
pub fn init(boot: &Boot) {
    static BITMAP: Mutex<[u64; BITMAP_WORDS]> = Mutex::new([0; BITMAP_WORDS]);
    let bits: &'static mut [u64; BITMAP_WORDS] = MutexGuard::leak(BITMAP.lock());
    let mut fa = FrameAllocator::new(bits);
    let mut ignored = 0;
    for r in boot.info.ram() {
        ignored += fa.add_range(*r);
    }
    fa.reserve_range(PhysRange::new(0, 0x10_0000));
    fa.reserve_range(boot.image);
    if let Some(m) = boot.info.module {
        fa.reserve_range(m);
    }
    if ignored > 0 {
        log::warn!("{} MiB of RAM above the direct map are not used", (ignored * PAGE_SIZE) >> 20);
    }
    log::info!("memory: {} MiB free", (fa.free_frames() as u64 * PAGE_SIZE) >> 20);
    *FRAMES.lock() = Some(fa);
}

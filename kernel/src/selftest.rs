//! Boot-time options for testing and measuring the kernel itself (kernel command line).

use crate::A;
use kernel_core::hal::Arch;

/// `selftest=kernel-fault`: touch an unmapped kernel address, to prove that a kernel fault
/// is reported with a register dump and fails the boot.
pub fn kernel_fault() {
    log::info!("selftest: faulting in kernel mode on purpose");
    let bad = 0xffff_c000_0000_0000u64 as *const u64;
    // SAFETY: deliberately invalid: the read faults and the fault handler stops the machine.
    let v = unsafe { bad.read_volatile() };
    log::error!("selftest: read of an unmapped address returned {v}");
}

/// `selftest=large-pages`: an address space that maps a 2 MiB block page by page, from
/// aligned contiguous frames with one set of rights, gets one 2 MiB page; changing, unmapping
/// or re-protecting one page of it gives the 4 KiB pages back with every other translation
/// kept; and the same again promotes it again.
pub fn large_pages() {
    match check_large_pages() {
        Ok(()) => log::info!("selftest: large pages ok"),
        Err(why) => log::error!("selftest: large pages: {why}"),
    }
}

fn check_large_pages() -> Result<(), &'static str> {
    use arch_x86_64::frames::with_frames;
    use arch_x86_64::paging::AddressSpace;
    use kernel_core::mem::{Perms, PhysAddr, VirtAddr, LARGE_PAGE_SIZE as LARGE, PAGES_PER_LARGE, PAGE_SIZE};
    const VA: u64 = 0x4000_0000;
    const N: u64 = PAGES_PER_LARGE as u64;
    let base = with_frames(|fa| fa.alloc_aligned(PAGES_PER_LARGE, PAGES_PER_LARGE)).ok_or("no memory")?;
    let mut s = with_frames(|fa| AddressSpace::new(fa)).ok_or("no memory")?;
    let page = |i: u64| (VirtAddr(VA + i * PAGE_SIZE), PhysAddr(base.0 + i * PAGE_SIZE));
    // Every page translates to its frame, in pages of `size` (`moved`: page 7 maps page 8's).
    let all = |s: &AddressSpace, size: u64, moved: bool, gone: Option<u64>| {
        (0..N).all(|i| {
            let want = page(if moved && i == 7 { 8 } else { i }).1;
            s.lookup(page(i).0) == if gone == Some(i) { None } else { Some((want, size)) }
        })
    };
    let map = |s: &mut AddressSpace, i: u64, frame: u64, p: Perms| {
        s.map(page(i).0, page(frame).1, p).map(|_| ()).map_err(|_| "map failed")
    };
    let r = (|| {
        for i in 0..N {
            map(&mut s, i, i, Perms::RW)?;
            if i + 1 < N && s.lookup(page(i).0) != Some((page(i).1, PAGE_SIZE)) {
                return Err("a block not yet complete is in 4 KiB pages");
            }
        }
        check(all(&s, LARGE, false, None), "the complete block is one 2 MiB page")?;
        map(&mut s, 7, 7, Perms::RW)?;
        check(all(&s, LARGE, false, None), "mapping a page as it is keeps the 2 MiB page")?;
        map(&mut s, 7, 8, Perms::RW)?;
        check(all(&s, PAGE_SIZE, true, None), "another frame for one page: 4 KiB pages, the rest kept")?;
        map(&mut s, 7, 7, Perms::RW)?;
        check(all(&s, LARGE, false, None), "the frame back: one 2 MiB page again")?;
        map(&mut s, 9, 9, Perms::RO)?;
        check(all(&s, PAGE_SIZE, false, None), "other rights for one page: 4 KiB pages")?;
        map(&mut s, 9, 9, Perms::RW)?;
        check(all(&s, LARGE, false, None), "the rights back: one 2 MiB page again")?;
        check(s.unmap(page(3).0) == Some(page(3).1), "unmapping a page of a 2 MiB page")?;
        check(all(&s, PAGE_SIZE, false, Some(3)), "unmapped one page, the rest kept")
    })();
    s.destroy();
    with_frames(|fa| fa.free_contiguous(base, PAGES_PER_LARGE));
    r
}

/// `selftest=worlds`: a guest world (`arch_x86_64::world`) shows its task's user half, the
/// guest's slot for the kernel only, and of the kernel half nothing but the trampoline — the
/// entry code and tables read-only, one entry page writable, the hot page's address showing a
/// shadow — whatever the task maps before or after the world is made.
pub fn worlds() {
    match check_worlds() {
        Ok(n) => log::info!("selftest: worlds ok ({n} trampoline pages)"),
        Err(why) => log::error!("selftest: worlds: {why}"),
    }
}

fn check_worlds() -> Result<usize, &'static str> {
    use arch_x86_64::frames::with_frames;
    use arch_x86_64::paging::{translate, AddressSpace, DIRECT_BASE};
    use kernel_core::hal::GuestRegions;
    use kernel_core::mem::{Perms, PhysAddr, VirtAddr, PAGE_SIZE};
    // The guest shows a whole slot (255) and the last GiB of slot 0, as L4Linux does.
    let regions = GuestRegions::new(&[(0x7f80_0000_0000, 39), (511 << 30, 30)]).ok_or("regions")?;
    let guest_pages = [0x7f80_0000_0000u64, 0x7fc0_0000_0000, 0x7fc0_2000_0000];
    let user_pages = [0x40_0000u64, 0x7fff_0000_0000, 0x7fc0_1000_0000, 3 << 30, 1 << 39];
    let mut frames = [PhysAddr(0); 8];
    for f in frames.iter_mut() {
        *f = with_frames(|fa| fa.alloc()).ok_or("no memory")?;
    }
    let mut guest = with_frames(|fa| AddressSpace::new(fa)).ok_or("no memory")?;
    let mut user = with_frames(|fa| AddressSpace::new(fa)).ok_or("no memory")?;
    let r = (|| {
        let map =
            |s: &mut AddressSpace, va: u64, pa| s.map(VirtAddr(va), pa, Perms::RW).map_err(|_| "map failed");
        guest.guest_regions(&regions).map_err(|_| "no guest tables")?;
        // Some pages before the world is made, some after (the guest's last, the user task's
        // in a new GiB of slot 0 and in a new slot).
        map(&mut guest, guest_pages[0], frames[0])?;
        map(&mut guest, guest_pages[1], frames[1])?;
        for (i, va) in user_pages.iter().take(3).enumerate() {
            map(&mut user, *va, frames[3 + i])?;
        }
        let world = user.world_root(guest.root(), &regions).map_err(|_| "no world")?;
        check(user.world_root(guest.root(), &regions).ok() == Some(world), "one world per guest")?;
        map(&mut guest, guest_pages[2], frames[2])?;
        map(&mut user, user_pages[3], frames[6])?;
        map(&mut user, user_pages[4], frames[7])?;
        let tr = |va| translate(world, va);
        let is = |va, pa, u: bool| tr(va).is_some_and(|t| t.pa == pa && t.user == u && t.write);
        check(is(user_pages[0], frames[3], true), "the user task's pages are there, for user mode")?;
        check(is(user_pages[3], frames[6], true), "a GiB the task fills later is there too")?;
        check(is(user_pages[4], frames[7], true), "a slot the task fills later is there too")?;
        for (va, f) in guest_pages.iter().zip(frames) {
            check(is(*va, f, false), "the guest's regions are there, supervisor only")?;
        }
        check(tr(user_pages[1]).is_none(), "the task's own pages in a guest slot are not")?;
        check(tr(user_pages[2]).is_none(), "the task's own pages in a guest GiB are not")?;
        check(tr(DIRECT_BASE + frames[0].0).is_none(), "no direct map")?;
        // The kernel half: only the trampoline's pages, supervisor, one writable.
        let hot = arch_x86_64::cpu::hot_page();
        let mut pages = 0;
        let mut va = 0xffff_ffff_8000_0000u64;
        while va < 0xffff_ffff_8000_0000 + (64 << 20) {
            if let Some(t) = tr(va) {
                pages += 1;
                check(!t.user, "a trampoline page user mode can reach")?;
                check(
                    t.write == (va == arch_x86_64::world::entry_page()),
                    "a writable page besides the entry page",
                )?;
                check(!(t.write && t.exec), "a writable and executable trampoline page")?;
                let normal = translate(guest.root(), va).ok_or("a trampoline page the kernel lacks")?;
                check((t.pa == normal.pa) != (va == hot), "the hot page's address not showing a shadow")?;
            }
            va += PAGE_SIZE;
        }
        check((4..=16).contains(&pages), "not a handful of trampoline pages")?;
        Ok(pages)
    })();
    guest.destroy();
    user.destroy();
    with_frames(|fa| {
        for f in frames {
            fa.free(f);
        }
    });
    r
}

fn check(ok: bool, what: &'static str) -> Result<(), &'static str> {
    if ok {
        Ok(())
    } else {
        Err(what)
    }
}

/// `bench`: micro-benchmarks that only the kernel can run, printed as `BENCH name value unit`.
pub fn bench() {
    const BATCHES: usize = 31;
    const PER_BATCH: u64 = 64;
    let cr3 = arch_x86_64::paging::active_root();
    let mut samples = [0u64; BATCHES];
    for s in samples.iter_mut() {
        let t0 = A::cycles();
        for _ in 0..PER_BATCH {
            arch_x86_64::paging::reload_cr3(cr3);
        }
        *s = (A::cycles() - t0) / PER_BATCH;
    }
    samples.sort_unstable();
    log::info!("BENCH cr3_write {} cycles", samples[BATCHES / 2]);
    log::info!("BENCH tsc_hz {} hz", A::cycles_hz());
    after_switch();
}

/// Eight small functions, called through pointers: each a distinct indirect-branch target.
macro_rules! multipliers {
    ($($name:ident $k:literal),*) => {
        $(
            #[inline(never)]
            fn $name(x: u64) -> u64 {
                x.wrapping_mul($k)
            }
        )*
    };
}
multipliers!(f0 3, f1 5, f2 7, f3 9, f4 11, f5 13, f6 15, f7 17);

/// Sixteen data pages to touch.
#[repr(C, align(4096))]
struct Pages([[u64; 512]; 16]);
static PAGES: Pages = Pages([[1; 512]; 16]);

/// What the fast paths pay after an address-space switch (`docs/perf.md`), measured as the
/// extra cycles of a `cr3_write` followed by touching 16 distinct data pages
/// (`switch_page_touch`, per page) or by 8 calls through pointers to distinct functions
/// (`switch_indirect_call`, per call: under TCG the switch flushed the jump cache, so each new
/// target is looked up in the translation-block hash table; includes the functions' code page
/// once).
fn after_switch() {
    const N: u64 = 64;
    let cr3 = arch_x86_64::paging::active_root();
    let fs: [fn(u64) -> u64; 8] = core::hint::black_box([f0, f1, f2, f3, f4, f5, f6, f7]);
    let run = |calls: usize, pages: usize| {
        let mut samples = [0u64; 31];
        for s in samples.iter_mut() {
            let mut acc = 1u64;
            let t0 = A::cycles();
            for _ in 0..N {
                arch_x86_64::paging::reload_cr3(cr3);
                for f in fs.iter().take(calls) {
                    acc = f(acc);
                }
                for p in PAGES.0.iter().take(pages) {
                    acc = acc.wrapping_add(*core::hint::black_box(&p[0]));
                }
            }
            *s = (A::cycles() - t0) / N;
            core::hint::black_box(acc);
        }
        samples.sort_unstable();
        samples[samples.len() / 2]
    };
    let base = run(0, 0);
    let pages = run(0, 16).saturating_sub(base) / 16;
    let calls = run(8, 0).saturating_sub(base) / 8;
    log::info!("BENCH switch_page_touch {pages} cycles");
    log::info!("BENCH switch_indirect_call {calls} cycles");
}

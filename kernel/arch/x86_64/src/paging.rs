//! Page tables. The kernel half (PML4 entries 256..512) is shared by every address space:
//!
//! ```text
//! 0xffff_8000_0000_0000  direct map of physical memory (1 GiB or 2 MiB pages, supervisor only)
//! 0xffff_ffff_8000_0000  kernel image: physical 0..1 GiB (one 1 GiB page, or the boot PD)
//! 0x0000_0000_0000_0000 .. 0x0000_8000_0000_0000  user half, one set of tables per task
//! ```

use crate::boot::{PageTable, BOOT_PD, BOOT_PML4};
use kernel_core::frames::FrameAllocator;
use kernel_core::hal::{GuestRegions, MapError};
use kernel_core::mem::{Perms, PhysAddr, VirtAddr};

pub const DIRECT_BASE: u64 = 0xffff_8000_0000_0000;
/// Physical memory reachable through the direct map.
pub const DIRECT_MAP_SIZE: u64 = 16 << 30;
const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const USER: u64 = 4;
const WRITE_THROUGH: u64 = 8;
const NO_CACHE: u64 = 0x10;
const HUGE: u64 = 0x80;
const NO_EXECUTE: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The kernel half's one PDPT, entered from both PML4 slots (256: the direct map, 511: the
/// image), so that a page walk after an address-space switch finds it already in QEMU's TLB
/// of page-table pages (a walk reads its tables through that TLB, and `mov cr3` flushes it:
/// every distinct table page costs a fill). The aliases this creates (the image at
/// `DIRECT_BASE + 510 GiB`, the direct map's first GiBs below the image) are supervisor-only
/// and never used.
static mut KERNEL_PDPT: PageTable = PageTable([0; 512]);
/// 2 MiB tables for the direct map's GiBs that cannot be one 1 GiB page (no `pdpe1gb`, or a
/// GiB with an uncached MMIO region).
static mut DIRECT_PD: [PageTable; 16] = [const { PageTable([0; 512]) }; 16];
/// The image's PDPT slot (`KERNEL_VMA` = PML4 511, PDPT 510).
const IMAGE_SLOT: usize = 510;

/// The kernel-virtual address of physical `pa` in the direct map.
pub fn phys_to_virt(pa: PhysAddr) -> *mut u8 {
    debug_assert!(pa.0 < DIRECT_MAP_SIZE);
    (DIRECT_BASE + pa.0) as *mut u8
}

/// Physical address of a kernel-image symbol.
pub fn image_phys<T>(p: *const T) -> PhysAddr {
    PhysAddr(p as u64 - KERNEL_VMA)
}

fn kernel_pml4() -> PhysAddr {
    image_phys(&raw const BOOT_PML4)
}

/// Whether the CPU maps 1 GiB pages (CPUID 8000_0001h, EDX bit 26).
fn cpu_has_gib_pages() -> bool {
    core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 26) != 0
}

/// Replaces the boot mapping: the direct map and the image through one PDPT, with 1 GiB pages
/// where the CPU has them (fewer table pages per walk, see [`KERNEL_PDPT`]); drops the
/// identity map of the first GiB. `mmio` lists physical 2 MiB regions to map uncached (the
/// local APIC); `allow_gib` false forces 2 MiB pages (the command line's `nogbpages`).
pub fn init(mmio: &[u64], allow_gib: bool) {
    let gib = allow_gib && cpu_has_gib_pages();
    // SAFETY: runs once at boot, single CPU, before anything uses the direct map; the tables
    // are statics of the kernel image, reachable at their link addresses. The image's new
    // entry maps the same physical GiB as the boot tables did.
    unsafe {
        let pdpt = &raw mut KERNEL_PDPT;
        let pds = &raw mut DIRECT_PD;
        for (g, pd) in (*pds).iter_mut().enumerate() {
            let base = (g as u64) << 30;
            let has_mmio = mmio.iter().any(|m| m & !0x3fff_ffff == base);
            (*pdpt).0[g] = if gib && !has_mmio {
                base | PRESENT | WRITABLE | HUGE | NO_EXECUTE
            } else {
                for (i, e) in pd.0.iter_mut().enumerate() {
                    let pa = base | ((i as u64) << 21);
                    let uncached = if mmio.contains(&pa) { NO_CACHE | WRITE_THROUGH } else { 0 };
                    *e = pa | PRESENT | WRITABLE | HUGE | NO_EXECUTE | uncached;
                }
                image_phys(pd as *const PageTable).0 | PRESENT | WRITABLE
            };
        }
        (*pdpt).0[IMAGE_SLOT] = if gib {
            PRESENT | WRITABLE | HUGE
        } else {
            image_phys(&raw const BOOT_PD).0 | PRESENT | WRITABLE
        };
        let pml4 = &raw mut BOOT_PML4;
        let entry = image_phys(pdpt as *const PageTable).0 | PRESENT | WRITABLE;
        (*pml4).0[256] = entry;
        (*pml4).0[511] = entry;
        (*pml4).0[0] = 0;
    }
    write_cr3(kernel_pml4());
    log::info!("paging: kernel half in {} pages", if gib { "1 GiB" } else { "2 MiB" });
}

pub fn write_cr3(pa: PhysAddr) {
    // SAFETY: every root passed here shares the kernel half, so the kernel stays mapped.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) pa.0, options(nostack, preserves_flags)) };
    crate::cpu::note_root(pa.0);
}

/// Loads `pa`, the root CR3 already holds, again (flushing the TLB) without recording it:
/// the `cr3_write` benchmark, a switch's own cost (recording touches the hot data page, one
/// more TLB refill after every write).
pub fn reload_cr3(pa: PhysAddr) {
    debug_assert_eq!(pa, active_root());
    // SAFETY: the root already in CR3.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) pa.0, options(nostack, preserves_flags)) };
}

/// Switches the CPU to the space with page-table root `root` unless it is already active.
#[inline(always)]
pub fn load_cr3(root: PhysAddr) {
    if active_root() != root {
        write_cr3(root);
    }
}

/// The root CR3 holds, as recorded at its last write (reading CR3 itself is a helper call
/// under TCG, on every switch of the fast paths).
#[inline(always)]
pub fn active_root() -> PhysAddr {
    PhysAddr(crate::cpu::root())
}

/// CR3 as the CPU holds it (for reports; the kernel's decisions use [`active_root`]).
pub fn read_cr3() -> PhysAddr {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    PhysAddr(v & ADDR_MASK)
}

/// A page-table page seen through the direct map.
fn table(pa: PhysAddr) -> &'static mut [u64; 512] {
    // SAFETY: callers only pass frames that are page tables owned by an address space (or the
    // kernel root); they are page aligned, in the direct map, and not aliased by Rust references
    // because all page-table access goes through this module with interrupts masked.
    unsafe { &mut *(phys_to_virt(pa) as *mut [u64; 512]) }
}

fn zeroed_frame(fa: &mut FrameAllocator) -> Option<PhysAddr> {
    let f = fa.alloc()?;
    table(f).fill(0);
    Some(f)
}

/// A user address space: its own PML4 whose kernel half points at the shared kernel tables.
///
/// A 2 MiB block whose 512 pages are mapped to one aligned, contiguous 2 MiB of frames with
/// the same rights is *promoted*: its PD entry becomes one 2 MiB page, so a page walk reads
/// three tables instead of four (under TCG each distinct table page a walk reads after an
/// address-space switch costs a TLB fill, `docs/perf.md`). The block's page table stays as it
/// was, kept in `promoted`, and comes back (*demotion*) before any page of the block changes:
/// the mapping database and the kernel above see 4 KiB pages only.
///
/// ```text
///   PD entry, 4 KiB pages:  | NX | ... | page table frame          | ... | U | W | P |
///   PD entry, promoted:     | NX | ... | 2 MiB frame | 0 ... | PS=1 | ... | U | W | P |
/// ```
pub struct AddressSpace {
    pml4: PhysAddr,
    /// The user-half tables below the PML4, as they were added (never removed before the
    /// space goes): freed from this list rather than by scanning 512 entries per table.
    tables: alloc::vec::Vec<PhysAddr>,
    /// The promoted blocks' addresses and page tables (a few hundred at most: L4Linux's RAM).
    promoted: alloc::vec::Vec<(u64, PhysAddr)>,
    /// Guest worlds of this space (`world.rs`), one per guest: the guest's root and regions,
    /// and the world's root (this space's user half but the regions, the trampoline half).
    /// A world's guest never changes, so a root once handed out stays what it was. Its tables
    /// are in `tables`.
    worlds: alloc::vec::Vec<World>,
}

struct World {
    guest: PhysAddr,
    regions: GuestRegions,
    pml4: PhysAddr,
    /// PDPTs of the world's own, for slots a region shows only part of.
    private: alloc::vec::Vec<(usize, PhysAddr)>,
}

/// The PML4 slot of a user address.
fn slot_of(va: u64) -> usize {
    (va >> 39) as usize & 0x1ff
}

/// The PDPT entries (GiBs within its slot) a region of `2^order` bytes at `base` covers.
fn gibs(base: u64, order: u32) -> core::ops::Range<usize> {
    let first = (base >> 30) as usize & 0x1ff;
    first..first + (1usize << (order.min(39) - 30))
}

/// The attribute bits of a user leaf entry that must agree for pages to share a 2 MiB page
/// (accessed and dirty bits do not matter: the kernel never reads them).
const LEAF_ATTRS: u64 = PRESENT | WRITABLE | USER | WRITE_THROUGH | NO_CACHE | NO_EXECUTE;
const LARGE: u64 = kernel_core::mem::LARGE_PAGE_SIZE;

impl AddressSpace {
    pub fn new(fa: &mut FrameAllocator) -> Option<Self> {
        let pml4 = zeroed_frame(fa)?;
        let k = table(kernel_pml4());
        table(pml4)[256..].copy_from_slice(&k[256..]);
        Some(AddressSpace {
            pml4,
            tables: alloc::vec::Vec::new(),
            promoted: alloc::vec::Vec::new(),
            worlds: alloc::vec::Vec::new(),
        })
    }

    /// Makes the tables a guest's `regions` of this space lie under, shared by its worlds:
    /// a whole slot's PDPT, or a part's PDs (`world.rs`).
    pub fn guest_regions(&mut self, regions: &GuestRegions) -> Result<(), MapError> {
        for (base, order) in regions.iter() {
            let slot = slot_of(base);
            let pdpt = self.ensure_slot(slot)?;
            if order < 39 {
                for gib in gibs(base, order) {
                    if table(pdpt)[gib] & PRESENT == 0 {
                        let e = self.new_table()?.0 | PRESENT | WRITABLE | USER;
                        table(pdpt)[gib] = e;
                        self.mirror_gib(slot, gib, e);
                    }
                }
            }
        }
        Ok(())
    }

    /// The PDPT of user slot `slot`, made now if missing.
    fn ensure_slot(&mut self, slot: usize) -> Result<PhysAddr, MapError> {
        let e = table(self.pml4)[slot];
        if e & PRESENT != 0 {
            return Ok(PhysAddr(e & ADDR_MASK));
        }
        let frame = self.new_table()?;
        let e = frame.0 | PRESENT | WRITABLE | USER;
        table(self.pml4)[slot] = e;
        self.mirror_slot(slot, e);
        Ok(frame)
    }

    /// The root of this space's world for the guest whose space has root `guest` and shows
    /// `regions` there (prepared by [`AddressSpace::guest_regions`]), made on first use. A
    /// world never changes its guest, so a root once handed out shows what it showed.
    pub fn world_root(&mut self, guest: PhysAddr, regions: &GuestRegions) -> Result<PhysAddr, MapError> {
        if let Some(w) = self.worlds.iter().find(|w| w.guest == guest && w.regions == *regions) {
            return Ok(w.pml4);
        }
        // A partly shown slot gets a PDPT of the world's own: this space's entries, the
        // guest's PDs in the regions. Made for every such slot first, so that this space's
        // later PDs there can be mirrored into it.
        for (base, _) in regions.iter().filter(|r| r.1 < 39) {
            self.ensure_slot(slot_of(base))?;
        }
        self.worlds.try_reserve(1).map_err(|_| MapError::NoMemory)?;
        let mut w =
            World { guest, regions: *regions, pml4: self.new_table()?, private: alloc::vec::Vec::new() };
        let supervisor = |e: u64| e & !USER;
        let (wt, own, gt) = (table(w.pml4), table(self.pml4), table(guest));
        wt[..256].copy_from_slice(&own[..256]);
        wt[511] = crate::world::kernel_half();
        for (base, order) in regions.iter() {
            let slot = slot_of(base);
            let g = gt[slot];
            if g & PRESENT == 0 {
                return Err(MapError::BadAddress);
            }
            if order == 39 {
                wt[slot] = supervisor(g);
                continue;
            }
            let private = match w.private.iter().find(|p| p.0 == slot) {
                Some(p) => p.1,
                None => {
                    let p = self.new_table()?;
                    table(p).copy_from_slice(table(PhysAddr(own[slot] & ADDR_MASK)));
                    w.private.try_reserve(1).map_err(|_| MapError::NoMemory)?;
                    w.private.push((slot, p));
                    wt[slot] = p.0 | PRESENT | WRITABLE | USER;
                    p
                }
            };
            let gpdpt = table(PhysAddr(g & ADDR_MASK));
            for gib in gibs(base, order) {
                if gpdpt[gib] & PRESENT == 0 {
                    return Err(MapError::BadAddress);
                }
                table(private)[gib] = supervisor(gpdpt[gib]);
            }
        }
        let root = w.pml4;
        self.worlds.push(w);
        Ok(root)
    }

    /// A user-half PML4 entry `slot` was made: the worlds show it too, but where a guest
    /// region covers the slot.
    fn mirror_slot(&self, slot: usize, e: u64) {
        for w in &self.worlds {
            let shown = w.regions.iter().any(|(b, _)| slot_of(b) == slot);
            if !shown {
                table(w.pml4)[slot] = e;
            }
        }
    }

    /// A PDPT entry `gib` of user slot `slot` was made: worlds with a PDPT of their own for the
    /// slot show it too, but where a guest region covers it.
    fn mirror_gib(&self, slot: usize, gib: usize, e: u64) {
        let va = ((slot as u64) << 39) | ((gib as u64) << 30);
        for w in self.worlds.iter().filter(|w| !w.regions.contains(va)) {
            if let Some(&(_, p)) = w.private.iter().find(|p| p.0 == slot) {
                table(p)[gib] = e;
            }
        }
    }

    /// A zeroed page table, noted for freeing with the space.
    fn new_table(&mut self) -> Result<PhysAddr, MapError> {
        let frame = crate::frames::with_frames(|fa| zeroed_frame(fa)).ok_or(MapError::NoMemory)?;
        // (The heap may take the frame allocator's lock: it is free again here.)
        if self.tables.try_reserve(1).is_err() {
            crate::frames::with_frames(|fa| fa.free(frame));
            return Err(MapError::NoMemory);
        }
        self.tables.push(frame);
        Ok(frame)
    }

    pub fn root(&self) -> PhysAddr {
        self.pml4
    }

    fn index(va: u64, level: u32) -> usize {
        ((va >> (12 + 9 * level)) & 0x1ff) as usize
    }

    /// The leaf entry mapping `pa` with `p`.
    #[inline(always)]
    fn leaf(pa: PhysAddr, p: Perms) -> u64 {
        pa.0 | PRESENT | USER | if p.write { WRITABLE } else { 0 } | if p.exec { 0 } else { NO_EXECUTE }
    }

    /// Maps the 4 KiB page at `va` to `pa`; returns the frame it replaced. A missing table is
    /// taken from the frame allocator, which the caller must not hold; its lock is not taken
    /// otherwise. Promotes the page's 2 MiB block when this completes it. (With the kernel's
    /// map path, `.text.fast.map`: every page fault a vCPU's guest resolves comes here.)
    #[link_section = ".text.fast.map"]
    pub fn map(&mut self, va: VirtAddr, pa: PhysAddr, p: Perms) -> Result<Option<PhysAddr>, MapError> {
        if !va.is_page_aligned() || !pa.is_page_aligned() || va.0 >= abi::kip::USER_END {
            return Err(MapError::BadAddress);
        }
        let new = Self::leaf(pa, p);
        let (mut t, mut pd) = (self.pml4, self.pml4);
        for level in (1..=3).rev() {
            let e = &mut table(t)[Self::index(va.0, level)];
            if *e & PRESENT == 0 {
                let frame = self.new_table()?;
                *e = frame.0 | PRESENT | WRITABLE | USER;
                match level {
                    3 => self.mirror_slot(Self::index(va.0, 3), *e),
                    2 => self.mirror_gib(Self::index(va.0, 3), Self::index(va.0, 2), *e),
                    _ => {}
                }
            } else if level == 1 && *e & HUGE != 0 {
                // Already mapped so (a page the block maps the same way again): unchanged.
                if (*e & ADDR_MASK) + (va.0 & (LARGE - 1)) == pa.0 && *e & LEAF_ATTRS == new & LEAF_ATTRS {
                    return Ok(Some(pa));
                }
                self.demote(va, e);
            }
            pd = t;
            t = PhysAddr(*e & ADDR_MASK);
        }
        let pt = table(t);
        let i = Self::index(va.0, 0);
        let old = (pt[i] & PRESENT != 0).then_some(PhysAddr(pt[i] & ADDR_MASK));
        pt[i] = new;
        if old.is_some() && active_root() == self.pml4 {
            x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(va.0));
        }
        // The whole block is compared only when its first page maps the aligned frame this
        // page's place asks for and its last page is mapped too.
        let first = pa.0.wrapping_sub(i as u64 * 4096);
        if first.is_multiple_of(LARGE)
            && pt[0] & (ADDR_MASK | PRESENT) == first | PRESENT
            && pt[511] & PRESENT != 0
        {
            self.promote(va, pd, t);
        }
        Ok(old)
    }

    /// Makes the entry in page directory `pd` of the block holding `va`, whose page table is
    /// `pt`, one 2 MiB page if the table maps the block as one.
    fn promote(&mut self, va: VirtAddr, pd: PhysAddr, pt: PhysAddr) {
        let entries = table(pt);
        let decode = |i: usize| {
            let e = entries[i];
            (e & PRESENT != 0).then_some((PhysAddr(e & ADDR_MASK), e & LEAF_ATTRS))
        };
        let Some((base, attrs)) = kernel_core::mem::uniform_block(kernel_core::mem::PAGES_PER_LARGE, decode)
        else {
            return;
        };
        // No memory for the note: the block simply stays in 4 KiB pages.
        if self.promoted.try_reserve(1).is_err() {
            return;
        }
        self.promoted.push((va.0 & !(LARGE - 1), pt));
        table(pd)[Self::index(va.0, 1)] = base.0 | attrs | HUGE;
        // The TLB may hold the block's 4 KiB translations: the same ones, but mixing page
        // sizes for one address is left undefined by the architecture. Promotion is rare.
        if active_root() == self.pml4 {
            write_cr3(self.pml4);
        }
    }

    /// Puts the page table of the promoted block holding `va` back under its PD entry `e`.
    fn demote(&mut self, va: VirtAddr, e: &mut u64) {
        let block = va.0 & !(LARGE - 1);
        let i =
            self.promoted.iter().position(|p| p.0 == block).expect("a promoted block keeps its page table");
        let (_, pt) = self.promoted.swap_remove(i);
        *e = pt.0 | PRESENT | WRITABLE | USER;
        if active_root() == self.pml4 {
            // (INVLPG drops the translation of the whole 2 MiB page holding the address.)
            x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(block));
        }
    }

    /// The frame `va` translates to and the size of the page holding it (the kernel's own
    /// checks: `selftest=large-pages`).
    pub fn lookup(&self, va: VirtAddr) -> Option<(PhysAddr, u64)> {
        let mut t = self.pml4;
        for level in (1..=3).rev() {
            let e = table(t)[Self::index(va.0, level)];
            if e & PRESENT == 0 {
                return None;
            }
            if level == 1 && e & HUGE != 0 {
                return Some((PhysAddr((e & ADDR_MASK) + (va.0 & (LARGE - 1) & !0xfff)), LARGE));
            }
            t = PhysAddr(e & ADDR_MASK);
        }
        let e = table(t)[Self::index(va.0, 0)];
        (e & PRESENT != 0).then_some((PhysAddr(e & ADDR_MASK), 4096))
    }

    /// Removes the mapping of the page at `va`; returns the frame it mapped.
    pub fn unmap(&mut self, va: VirtAddr) -> Option<PhysAddr> {
        if va.0 >= abi::kip::USER_END {
            return None;
        }
        let mut t = self.pml4;
        for level in (1..=3).rev() {
            let e = &mut table(t)[Self::index(va.0, level)];
            if *e & PRESENT == 0 {
                return None;
            }
            if level == 1 && *e & HUGE != 0 {
                self.demote(va, e);
            }
            t = PhysAddr(*e & ADDR_MASK);
        }
        let e = &mut table(t)[Self::index(va.0, 0)];
        if *e & PRESENT == 0 {
            return None;
        }
        let old = PhysAddr(*e & ADDR_MASK);
        *e = 0;
        if active_root() == self.pml4 {
            x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(va.0 & !0xfff));
        }
        Some(old)
    }

    /// Frees the user-half page tables (not the frames they map). Takes the frame allocator
    /// itself; the space's own vectors go after it is free again (the heap takes its lock to
    /// free a large block).
    pub fn destroy(self) {
        if active_root() == self.pml4 {
            write_cr3(kernel_pml4());
        }
        crate::frames::with_frames(|fa| {
            // (The worlds' roots and PDPTs are among the tables.)
            for t in &self.tables {
                fa.free(*t);
            }
            fa.free(self.pml4);
        });
    }
}

/// What a root translates a virtual address to, with the rights the walk grants (the
/// user/supervisor and write bits of every level, execute unless a level forbids it): the
/// self-tests' view of a page table, large pages included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub pa: PhysAddr,
    pub user: bool,
    pub write: bool,
    pub exec: bool,
}

pub fn translate(root: PhysAddr, va: u64) -> Option<Translation> {
    let (mut t, mut user, mut write, mut exec) = (root, true, true, true);
    for level in (0..=3).rev() {
        let e = table(t)[((va >> (12 + 9 * level)) & 0x1ff) as usize];
        if e & PRESENT == 0 {
            return None;
        }
        (user, write, exec) =
            (user & (e & USER != 0), write & (e & WRITABLE != 0), exec & (e & NO_EXECUTE == 0));
        let size = 1u64 << (12 + 9 * level);
        if level == 0 || (level < 3 && e & HUGE != 0) {
            return Some(Translation {
                pa: PhysAddr((e & ADDR_MASK & !(size - 1)) + (va & (size - 1))),
                user,
                write,
                exec,
            });
        }
        t = PhysAddr(e & ADDR_MASK);
    }
    None
}

/// Copies between kernel buffers and physical memory.
pub fn write_phys(pa: PhysAddr, bytes: &[u8]) {
    assert!(pa.0 + bytes.len() as u64 <= DIRECT_MAP_SIZE);
    // SAFETY: the range is inside the direct map (checked); callers own the frames.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), phys_to_virt(pa), bytes.len()) };
}

/// Copies `n` 64-bit words between physical frames with one `rep movsq` (a single basic block
/// under TCG, whatever `n` is). `n` must be at most a UTCB's worth.
#[inline(always)]
pub fn copy_words(dst: PhysAddr, src: PhysAddr, n: usize) {
    assert!(n <= abi::utcb::UTCB_SIZE / 8);
    let l = n as u64 * 8;
    // Callers pass UTCB frames of two different threads (kernel-allocated RAM): in the direct
    // map and disjoint. Checked in debug builds only: this is the IPC fast path.
    debug_assert!(dst.0 + l <= DIRECT_MAP_SIZE && src.0 + l <= DIRECT_MAP_SIZE);
    debug_assert!(dst.0 + l <= src.0 || src.0 + l <= dst.0, "overlapping physical copy");
    // SAFETY: both ranges are inside the direct map and disjoint (see above).
    unsafe { movsq(phys_to_virt(dst) as *mut u64, phys_to_virt(src) as *const u64, n) };
}

#[inline(always)]
pub fn read_words(pa: PhysAddr, out: &mut [u64]) {
    assert!(pa.0.is_multiple_of(8) && pa.0 + out.len() as u64 * 8 <= DIRECT_MAP_SIZE);
    // SAFETY: aligned (checked), inside the direct map (checked), reading RAM has no side
    // effects; `out` is a distinct kernel buffer of that many words.
    unsafe { movsq(out.as_mut_ptr(), phys_to_virt(pa) as *const u64, out.len()) };
}

/// Runs `f` on the `N` words at `pa` (8-byte aligned, kernel-owned memory such as a UTCB-area
/// frame), read in place: a `VcpuResume` loads a context from there straight into the frame.
#[inline(always)]
pub fn with_words<const N: usize, R>(pa: PhysAddr, f: impl FnOnce(&[u64; N]) -> R) -> R {
    assert!(pa.0.is_multiple_of(8) && pa.0 + N as u64 * 8 <= DIRECT_MAP_SIZE);
    // SAFETY: aligned and inside the direct map (checked above), so the words are readable
    // RAM; nothing writes them while `f` runs (single CPU, interrupts masked in the kernel).
    f(unsafe { &*(phys_to_virt(pa) as *const [u64; N]) })
}

/// Runs `f` on the `N` words at `pa` (8-byte aligned, kernel-owned memory such as a UTCB-area
/// frame), to write them in place: the vCPU upcall stores a context there straight from the
/// frame.
#[inline(always)]
pub fn with_words_mut<const N: usize>(pa: PhysAddr, f: impl FnOnce(&mut [u64; N])) {
    assert!(pa.0.is_multiple_of(8) && pa.0 + N as u64 * 8 <= DIRECT_MAP_SIZE);
    // SAFETY: aligned and inside the direct map (checked above); the frame is the kernel's,
    // reached only through the direct map by raw accesses like this one, and the reference
    // lives only for `f`, on this single CPU with interrupts masked: nothing aliases it.
    f(unsafe { &mut *(phys_to_virt(pa) as *mut [u64; N]) })
}

/// `N` words at `pa`, read without zeroing the array first.
#[inline(always)]
pub fn read_array<const N: usize>(pa: PhysAddr) -> [u64; N] {
    assert!(pa.0.is_multiple_of(8) && pa.0 + N as u64 * 8 <= DIRECT_MAP_SIZE);
    let mut a = core::mem::MaybeUninit::<[u64; N]>::uninit();
    // SAFETY: the source is aligned and inside the direct map (checked); `movsq` writes all
    // N words of the array, so it is initialised afterwards.
    unsafe {
        movsq(a.as_mut_ptr() as *mut u64, phys_to_virt(pa) as *const u64, N);
        a.assume_init()
    }
}

#[inline(always)]
pub fn write_words(pa: PhysAddr, words: &[u64]) {
    assert!(pa.0.is_multiple_of(8) && pa.0 + words.len() as u64 * 8 <= DIRECT_MAP_SIZE);
    // SAFETY: aligned (checked), inside the direct map (checked); callers own the frame, and
    // `words` is a distinct kernel buffer.
    unsafe { movsq(phys_to_virt(pa) as *mut u64, words.as_ptr(), words.len()) };
}

/// Copies `n` words with `rep movsq`: one basic block under TCG, where `copy_nonoverlapping`
/// of more than a few words is a call of `memcpy` (through the GOT): two more pages for the
/// fast paths to touch.
///
/// # Safety
/// As for `copy_nonoverlapping`: both ranges valid for `n` words and disjoint.
#[inline(always)]
unsafe fn movsq(dst: *mut u64, src: *const u64, n: usize) {
    // SAFETY: guaranteed by the caller; the direction flag is clear in the kernel (SFMASK
    // clears DF on entry).
    unsafe {
        core::arch::asm!(
            "rep movsq",
            inout("rcx") n => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        )
    };
}

pub fn read_phys(pa: PhysAddr, buf: &mut [u8]) {
    assert!(pa.0 + buf.len() as u64 <= DIRECT_MAP_SIZE);
    // SAFETY: the range is inside the direct map (checked); reading RAM has no side effects.
    unsafe { core::ptr::copy_nonoverlapping(phys_to_virt(pa), buf.as_mut_ptr(), buf.len()) };
}

/// A physical range the kernel only reads (the boot image) as a byte slice.
pub fn phys_slice(r: kernel_core::mem::PhysRange) -> &'static [u8] {
    assert!(r.start <= r.end && r.end <= DIRECT_MAP_SIZE);
    // SAFETY: the range is inside the direct map (checked); callers pass memory reserved from
    // the frame allocator that nothing writes, so the shared slice is never aliased mutably.
    unsafe { core::slice::from_raw_parts(phys_to_virt(PhysAddr(r.start)), (r.end - r.start) as usize) }
}

//! Starting boot tasks: the programs the boot image flags `START`, loaded from their ELF files
//! into fresh address spaces (see `abi::kip` for the start-up contract), and sigma0's memory.

use crate::{with_kernel, A};
use abi::bootimage::{BootImage, Module, FLAG_SIGMA0, FLAG_START, KIND_PROGRAM};
use abi::cap::well_known as wk;
use abi::kip::{
    BOOT_STACK_SIZE, BOOT_STACK_TOP, BOOT_UTCB_ADDR, KIP_ADDR, SIGMA0_MEM_RANGES, SIGMA0_PHYS_OFFSET,
    USER_END,
};
use abi::Rights;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use arch_x86_64::frames::with_frames;
use goblin::elf::{header, program_header, Elf};
use kernel_core::hal::{Arch, ThreadContext, UserRegs};
use kernel_core::kernel::memory::{MEM_R, MEM_W, MEM_X};
use kernel_core::kernel::Kernel;
use kernel_core::kernel::{Factory, Gate, Obj, ThreadState};
use kernel_core::mem::{PhysAddr, PhysRange, VirtAddr, LARGE_PAGE_SIZE, PAGES_PER_LARGE, PAGE_SIZE};
use kernel_core::slab::Id;

/// Priority of boot tasks; sigma0 runs above them so it waits before anyone asks.
const BOOT_PRIO: u8 = 100;
const SIGMA0_PRIO: u8 = 200;
/// Pages of a boot task's UTCB area (4 UTCBs each).
const BOOT_UTCB_PAGES: u64 = (1 << abi::kip::UTCB_AREA_ORDER) / 4096;
/// Memory the kernel keeps for itself when sigma0 takes the rest (at least this much).
const KERNEL_MIN_RESERVE: u64 = 32 << 20;

struct Started {
    thread: Id,
    sigma0: bool,
}

/// Parses the boot image and starts every program flagged `START`, in table order. A bad
/// module is reported and skipped; the others still start.
pub fn start_boot_tasks(range: PhysRange) {
    let image = match BootImage::parse(arch_x86_64::paging::phys_slice(range)) {
        Ok(i) => i,
        Err(e) => {
            log::error!("boot image rejected: {e}");
            return;
        }
    };
    log::info!("boot image: {} modules", image.len());
    let factory = with_kernel(|k| {
        publish_boot_image(k, range);
        k.factories.insert(Factory { limit: 0, used: 0, parent: None })
    });
    let mut started = Vec::new();
    for m in image.modules() {
        match m {
            Ok(m) if m.kind == KIND_PROGRAM && m.flags & FLAG_START != 0 => {
                log::info!("starting boot task {}", m.name);
                match with_kernel(|k| start_task(k, &m, factory, range)) {
                    Ok(thread) => started.push(Started { thread, sigma0: m.flags & FLAG_SIGMA0 != 0 }),
                    Err(e) => log::error!("boot task {}: {e}", m.name),
                }
            }
            Ok(_) => {}
            Err(e) => log::error!("{e}"),
        }
    }
    with_kernel(|k| {
        let sigma0 = started.iter().find(|s| s.sigma0).map(|s| s.thread);
        if let Some(s0) = sigma0 {
            give_sigma0_memory(k, s0);
            if let Some(t) = k.threads.get(s0).and_then(|t| t.task).and_then(|t| k.tasks.get_mut(t)) {
                t.io_root = true;
            }
            let gate = k.gates.insert(Gate { thread: Some(s0), label: 0, factory: None, watch: None });
            for s in started.iter().filter(|s| !s.sigma0) {
                let Some(task) = k.threads.get(s.thread).and_then(|t| t.task) else { continue };
                if k.install_cap(task, wk::PAGER, Obj::Gate(gate), Rights::RW | Rights::S).is_ok() {
                    if let Some(t) = k.threads.get_mut(s.thread) {
                        t.pager = wk::PAGER;
                    }
                }
            }
        }
        let free = with_frames(|fa| fa.free_frames() as u64 * PAGE_SIZE);
        if let Some(f) = k.factories.get_mut(factory) {
            // Keep an eighth for the kernel's own bookkeeping of what boot tasks create.
            f.limit = free - free / 8;
        }
        for s in &started {
            let prio = if s.sigma0 { SIGMA0_PRIO } else { BOOT_PRIO };
            if let Some(t) = k.threads.get_mut(s.thread) {
                t.prio = prio;
                t.state = ThreadState::Ready;
            }
            k.make_ready(s.thread, prio, false);
        }
    });
}

/// Moves all memory the kernel does not keep into sigma0's space, at physical address plus
/// `SIGMA0_PHYS_OFFSET`, as roots of the mapping database, and describes it in the KIP.
fn give_sigma0_memory(k: &mut Kernel<A>, thread: Id) {
    let Some(task) = k.threads.get(thread).and_then(|t| t.task) else { return };
    let t0 = A::cycles();
    let free = with_frames(|fa| fa.free_frames() as u64 * PAGE_SIZE);
    let keep = (free / 2).max(KERNEL_MIN_RESERVE).min(free);
    let mut ranges: Vec<[u64; 2]> = Vec::new();
    let mut given = 0;
    let mut run = 4096u64;
    // Take memory in large contiguous runs first, so that few KIP ranges describe it.
    while given < free - keep && ranges.len() < SIGMA0_MEM_RANGES {
        run = run.min((free - keep - given) / PAGE_SIZE);
        if run == 0 {
            break;
        }
        let Some(pa) = with_frames(|fa| fa.alloc_contiguous(run as usize)) else {
            run /= 2;
            continue;
        };
        let va = SIGMA0_PHYS_OFFSET + pa.0;
        // Mapped block by block when sigma0 first touches or maps it (`Kernel::materialize`).
        k.add_lazy(task, va, pa, run * PAGE_SIZE);
        given += run * PAGE_SIZE;
        match ranges.last_mut() {
            Some(r) if r[1] == va => r[1] += run * PAGE_SIZE,
            _ => ranges.push([va, va + run * PAGE_SIZE]),
        }
    }
    let mut kip = [0u8; 8 + SIGMA0_MEM_RANGES * 16];
    kip[..8].copy_from_slice(&(ranges.len() as u64).to_le_bytes());
    for (i, r) in ranges.iter().enumerate() {
        kip[8 + i * 16..16 + i * 16].copy_from_slice(&r[0].to_le_bytes());
        kip[16 + i * 16..24 + i * 16].copy_from_slice(&r[1].to_le_bytes());
    }
    A::write_phys(PhysAddr(k.kip.0 + 24), &kip);
    // Once a large part of booting (one mapping-database root per page), now lazy.
    let us = (A::cycles() - t0) * 1_000_000 / A::cycles_hz().max(1);
    log::info!(
        "sigma0: {} MiB in {} range(s), mapped on first use ({} us); kernel keeps {} MiB",
        given >> 20,
        ranges.len(),
        us,
        keep >> 20
    );
}

fn rights_of(flags: u32) -> u8 {
    let mut r = MEM_R;
    if flags & program_header::PF_W != 0 {
        r |= MEM_W;
    }
    if flags & program_header::PF_X != 0 {
        r |= MEM_X;
    }
    r
}

/// Pages of the program image: user page address → (frame, rights). Frames go to `owned`.
/// A 2 MiB block the image fills with pages of one set of rights gets 2 MiB of contiguous,
/// aligned frames, so that the kernel maps it as one large page (`paging::AddressSpace`).
fn load_segments(
    elf: &Elf,
    data: &[u8],
    owned: &mut Vec<PhysAddr>,
) -> Result<BTreeMap<u64, (PhysAddr, u8)>, String> {
    let loads = || elf.program_headers.iter().filter(|p| p.p_type == program_header::PT_LOAD);
    // The pages and their rights (a page two segments share gets both).
    let mut rights: BTreeMap<u64, u8> = BTreeMap::new();
    for ph in loads() {
        let end = ph.p_vaddr.checked_add(ph.p_memsz).filter(|e| *e <= BOOT_UTCB_ADDR);
        let file_end = ph.p_offset.checked_add(ph.p_filesz).filter(|e| *e <= data.len() as u64);
        let (Some(end), Some(_)) = (end, file_end) else {
            return Err(format!("segment at {:#x} lies outside the file or the program area", ph.p_vaddr));
        };
        if ph.p_filesz > ph.p_memsz {
            return Err(format!("segment at {:#x} has more file than memory bytes", ph.p_vaddr));
        }
        let mut page = VirtAddr(ph.p_vaddr).page_down().0;
        while page < end {
            *rights.entry(page).or_insert(0) |= rights_of(ph.p_flags);
            page += PAGE_SIZE;
        }
    }
    if rights.is_empty() {
        return Err("no loadable segments".to_string());
    }
    let mut pages: BTreeMap<u64, (PhysAddr, u8)> = BTreeMap::new();
    for (&page, &r) in &rights {
        if pages.contains_key(&page) {
            continue;
        }
        if page.is_multiple_of(LARGE_PAGE_SIZE) {
            let same = rights.range(page..page + LARGE_PAGE_SIZE).filter(|(_, b)| **b == r).count();
            if same == PAGES_PER_LARGE {
                if let Some(base) = with_frames(|fa| fa.alloc_aligned(PAGES_PER_LARGE, PAGES_PER_LARGE)) {
                    for i in 0..PAGES_PER_LARGE as u64 {
                        let f = PhysAddr(base.0 + i * PAGE_SIZE);
                        A::write_phys(f, &[0; PAGE_SIZE as usize]);
                        owned.push(f);
                        pages.insert(page + i * PAGE_SIZE, (f, r));
                    }
                    continue;
                }
            }
        }
        pages.insert(page, (new_frame(owned)?, r));
    }
    for ph in loads() {
        let mut va = ph.p_vaddr;
        while va < ph.p_vaddr + ph.p_filesz {
            let page = VirtAddr(va).page_down().0;
            let hi = (page + PAGE_SIZE).min(ph.p_vaddr + ph.p_filesz);
            let off = (ph.p_offset + (va - ph.p_vaddr)) as usize;
            A::write_phys(PhysAddr(pages[&page].0 .0 + (va - page)), &data[off..off + (hi - va) as usize]);
            va = hi;
        }
    }
    Ok(pages)
}

fn new_frame(owned: &mut Vec<PhysAddr>) -> Result<PhysAddr, String> {
    let f = with_frames(|fa| fa.alloc()).ok_or("out of memory")?;
    A::write_phys(f, &[0; PAGE_SIZE as usize]);
    owned.push(f);
    Ok(f)
}

/// Loads one boot task and creates its (inactive) first thread.
fn start_task(k: &mut Kernel<A>, m: &Module, factory: Id, image: PhysRange) -> Result<Id, String> {
    let elf = Elf::parse(m.data).map_err(|e| format!("not a valid ELF file: {e}"))?;
    if !elf.is_64 || elf.header.e_machine != header::EM_X86_64 || elf.header.e_type != header::ET_EXEC {
        return Err("not a static x86_64 executable".to_string());
    }
    if elf.entry >= USER_END {
        return Err(format!("entry point {:#x} outside the user half", elf.entry));
    }
    if m.args.len() as u64 > PAGE_SIZE / 2 {
        return Err("argument string longer than 2 KiB".to_string());
    }
    let mut owned = Vec::new();
    let pages = match load_segments(&elf, m.data, &mut owned) {
        Ok(p) => p,
        Err(e) => {
            with_frames(|fa| owned.iter().for_each(|f| _ = fa.free(*f)));
            return Err(e);
        }
    };
    let task = k
        .new_task(BOOT_UTCB_ADDR, BOOT_UTCB_PAGES, None)
        .map_err(|e| format!("cannot create the task: {e:?}"))?;
    let r = fill_task(k, task, m, elf.entry, pages, &mut owned)
        .and_then(|v| map_boot_image(k, task, image).map(|_| v));
    if let Some(t) = k.tasks.get_mut(task) {
        t.name = String::from(m.name);
        t.frames.append(&mut owned);
    }
    let sp = match r {
        Ok(v) => v,
        Err(e) => {
            k.destroy_task(task);
            return Err(e);
        }
    };
    let thread = k.new_thread(None);
    let utcb = k.tasks.get(task).and_then(|t| t.utcb_frame(BOOT_UTCB_ADDR)).ok_or("no UTCB")?;
    A::write_phys(PhysAddr(utcb.0 + abi::utcb::TCR_SELF_OFFSET as u64), &BOOT_UTCB_ADDR.to_le_bytes());
    let root = A::space_root(&k.tasks.get(task).ok_or("task vanished")?.space);
    let t = k.threads.get_mut(thread).ok_or("thread vanished")?;
    t.task = Some(task);
    t.root = root;
    t.utcb_frame = Some(utcb);
    t.utcb_user = BOOT_UTCB_ADDR;
    t.gs_base = BOOT_UTCB_ADDR;
    let f = t.ctx.regs();
    f.set_ip(elf.entry);
    f.set_sp(sp);
    if let Some(tk) = k.tasks.get_mut(task) {
        tk.threads.push(thread);
    }
    let caps = [
        (wk::TASK, Obj::Task(task), Rights::ALL),
        (wk::FACTORY, Obj::Factory(factory), Rights::RW | Rights::S),
        (wk::THREAD, Obj::Thread(thread), Rights::ALL),
        (wk::LOG, Obj::Log, Rights::RW),
        (wk::ICU, Obj::Icu, Rights::RW),
        (wk::SCHEDULER, Obj::Scheduler, Rights::RW),
        (wk::PLATFORM_CTL, Obj::PlatformCtl, Rights::RW),
    ];
    for (idx, obj, rights) in caps {
        k.install_cap(task, idx, obj, rights).map_err(|e| format!("cannot install capability: {e:?}"))?;
    }
    Ok(thread)
}

/// Maps the boot image read-only at `BOOT_IMAGE_ADDR` (its frames stay the kernel's).
fn map_boot_image(k: &mut Kernel<A>, task: Id, image: PhysRange) -> Result<(), String> {
    let first = image.start & !(PAGE_SIZE - 1);
    let mut pa = first;
    while pa < image.end {
        let va = abi::kip::BOOT_IMAGE_ADDR + (pa - first);
        k.map_root(task, va, PhysAddr(pa), MEM_R).map_err(|e| format!("cannot map the boot image: {e:?}"))?;
        pa += PAGE_SIZE;
    }
    Ok(())
}

/// Records the boot image's user address and size in the KIP.
fn publish_boot_image(k: &Kernel<A>, image: PhysRange) {
    let addr = abi::kip::BOOT_IMAGE_ADDR + (image.start & (PAGE_SIZE - 1));
    let off = core::mem::offset_of!(abi::kip::Kip, boot_image) as u64;
    A::write_words(PhysAddr(k.kip.0 + off), &[addr, image.end - image.start]);
}

/// Maps image and stack, writes the argument string and the start-up block. Returns the stack
/// pointer.
fn fill_task(
    k: &mut Kernel<A>,
    task: Id,
    m: &Module,
    entry: u64,
    pages: BTreeMap<u64, (PhysAddr, u8)>,
    owned: &mut Vec<PhysAddr>,
) -> Result<u64, String> {
    let err = |va: u64| move |e| format!("cannot map {va:#x}: {e:?}");
    for (va, (pa, r)) in pages {
        k.map_root(task, va, pa, r).map_err(err(va))?;
    }
    let mut top_frame = PhysAddr(0);
    for i in 0..BOOT_STACK_SIZE / PAGE_SIZE {
        let f = new_frame(owned)?;
        let va = BOOT_STACK_TOP - (i + 1) * PAGE_SIZE;
        k.map_root(task, va, f, MEM_R | MEM_W).map_err(err(va))?;
        if i == 0 {
            top_frame = f;
        }
    }
    // The start-up block, argv and auxv (abi::startup), the same for every program; boot
    // tasks have no environment.
    let mut page = alloc::vec![0u8; PAGE_SIZE as usize];
    let sp = abi::startup::layout(&mut page, BOOT_STACK_TOP, m.args, &[], entry, KIP_ADDR)
        .ok_or_else(|| format!("arguments of {} do not fit in a page", m.name))?;
    A::write_phys(top_frame, &page);
    Ok(sp)
}

//! Starting a program from its ELF image in a new task (feature `runtime`): what a root task
//! does for each program of the boot script. Pages come from a `PageSource` (from sigma0
//! through a scratch window and granted, or lent by the caller and kept); the program starts
//! with the same start-up block the kernel gives boot tasks (`abi::kip`).

use crate::ipc::{factory, scheduler, task, thread};
use abi::cap::well_known as wk;
use abi::kip::{BOOT_STACK_SIZE, BOOT_STACK_TOP, BOOT_UTCB_ADDR, KIP_ADDR, USER_END, UTCB_AREA_ORDER};
use abi::proto::{fpage::Fpage, map, thread_control as tc};
use abi::{CapIdx, Error, Rights};
use alloc::collections::BTreeMap;
use goblin::elf::{header, program_header, Elf};

/// Where `Sigma0Pages` fills pages before they are granted away.
const SCRATCH: u64 = 0x20_0000_0000;
const PAGE: u64 = 4096;

/// Why a program could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// The image is not a static x86_64 executable, or its segments make no sense.
    BadElf(&'static str),
    /// A kernel or sigma0 operation failed.
    Kernel(Error),
}

impl From<Error> for LoadError {
    fn from(e: Error) -> Self {
        LoadError::Kernel(e)
    }
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::BadElf(why) => write!(f, "bad ELF image: {why}"),
            LoadError::Kernel(e) => write!(f, "kernel refused: {e:?}"),
        }
    }
}

/// Capability slots (in the caller's table) the new task and its thread take.
#[derive(Clone, Copy, Debug)]
pub struct Slots {
    pub task: CapIdx,
    pub thread: CapIdx,
    /// Ours to give as the program's pager (its page faults and sigma0-protocol requests).
    pub pager: CapIdx,
}

/// Where the loader's pages come from.
pub trait PageSource {
    /// A zeroed page, writable at the returned address in our space.
    fn page(&mut self) -> Result<u64, LoadError>;
    /// True if we keep the pages (the program gets mappings, so they can come back when it
    /// ends); false if they are granted away.
    fn keeps(&self) -> bool;
}

/// Pages straight from our pager (sigma0) through one scratch window, granted away.
pub struct Sigma0Pages;

impl PageSource for Sigma0Pages {
    fn page(&mut self) -> Result<u64, LoadError> {
        crate::ipc::sigma0::any(SCRATCH, 12)?;
        Ok(SCRATCH)
    }

    fn keeps(&self) -> bool {
        false
    }
}

/// Hands our page at `at` to `child` at `va` with memory rights `rights` (R=4, W=2, X=1).
fn give(child: CapIdx, at: u64, va: u64, rights: u8, keep: bool) -> Result<(), LoadError> {
    let fp = Fpage::memory(at, 12, Rights::from_bits_truncate(rights));
    task::map(child, wk::TASK, fp, va | if keep { 0 } else { map::GRANT })?;
    Ok(())
}

/// What a program starts with: its argument string (also split into argv) and its environment
/// (`KEY=VALUE` strings); see `abi::startup`.
#[derive(Clone, Copy)]
pub struct Args<'a> {
    pub line: &'a str,
    pub env: &'a [&'a str],
}

/// Loads `elf` into a new task called `name` (its prefix on the console) and starts it at
/// priority `prio` with `args`. The task gets its own task and thread
/// capabilities (slots 1 and 3), `slots.pager` as pager (slot 4), and `caps`: (our slot,
/// its slot, rights). Its exceptions go to whatever `caps` puts in its parent slot (11); with
/// none there, the kernel ends it.
pub fn spawn(
    elf: &[u8],
    name: &str,
    args: Args,
    slots: Slots,
    caps: &[(CapIdx, CapIdx, Rights)],
    prio: u8,
    src: &mut dyn PageSource,
) -> Result<(), LoadError> {
    let e = Elf::parse(elf).map_err(|_| LoadError::BadElf("not an ELF file"))?;
    if !e.is_64 || e.header.e_machine != header::EM_X86_64 || e.header.e_type != header::ET_EXEC {
        return Err(LoadError::BadElf("not a static x86_64 executable"));
    }
    if e.entry >= USER_END || args.line.len() > 2048 {
        return Err(LoadError::BadElf("entry point or arguments out of range"));
    }
    // Pages of the image with the union of their segments' rights.
    let mut pages: BTreeMap<u64, u8> = BTreeMap::new();
    for ph in e.program_headers.iter().filter(|p| p.p_type == program_header::PT_LOAD) {
        let end = ph.p_vaddr.checked_add(ph.p_memsz).filter(|x| *x <= BOOT_UTCB_ADDR);
        let file = ph.p_offset.checked_add(ph.p_filesz).filter(|x| *x <= elf.len() as u64);
        if end.is_none() || file.is_none() || ph.p_filesz > ph.p_memsz {
            return Err(LoadError::BadElf("segment outside the file or the program area"));
        }
        let rights = 4
            | if ph.p_flags & program_header::PF_W != 0 { 2 } else { 0 }
            | if ph.p_flags & program_header::PF_X != 0 { 1 } else { 0 };
        let mut p = ph.p_vaddr & !(PAGE - 1);
        while p < ph.p_vaddr + ph.p_memsz {
            *pages.entry(p).or_insert(0) |= rights;
            p += PAGE;
        }
    }
    if pages.is_empty() {
        return Err(LoadError::BadElf("no loadable segments"));
    }
    factory::task(wk::FACTORY, slots.task, Fpage::memory(BOOT_UTCB_ADDR, UTCB_AREA_ORDER, Rights::ALL))?;
    let r = task::set_name(slots.task, name)
        .map_err(LoadError::from)
        .and_then(|()| load_image(&e, elf, &pages, slots.task, src))
        .and_then(|()| start(e.entry, args, slots, caps, prio, src));
    if r.is_err() {
        // Deleting the task frees everything granted to it (what `src` keeps, it keeps).
        let _ = task::unmap(
            wk::TASK,
            abi::proto::fpage::unmap_mask::DELETE_OBJ,
            &[Fpage::object(slots.task, 0, Rights::ALL)],
        );
    }
    r
}

/// Fills the image's pages from `elf` and hands them to `child`.
fn load_image(
    e: &Elf,
    elf: &[u8],
    pages: &BTreeMap<u64, u8>,
    child: CapIdx,
    src: &mut dyn PageSource,
) -> Result<(), LoadError> {
    for (&page, &rights) in pages {
        let at = src.page()?;
        let dst = at as *mut u8;
        for ph in e.program_headers.iter().filter(|p| p.p_type == program_header::PT_LOAD) {
            let lo = page.max(ph.p_vaddr);
            let hi = (page + PAGE).min(ph.p_vaddr + ph.p_filesz);
            if lo < hi {
                let off = (ph.p_offset + (lo - ph.p_vaddr)) as usize;
                let bytes = &elf[off..off + (hi - lo) as usize];
                // SAFETY: the page is ours, mapped writable (`PageSource::page`), and
                // [lo-page, hi-page) lies inside it; `bytes` is a different (immutable) buffer.
                unsafe {
                    core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.add((lo - page) as usize), bytes.len())
                };
            }
        }
        give(child, at, page, rights, src.keeps())?;
    }
    Ok(())
}

/// The stack (its top page carries the arguments and the start-up block), the capabilities
/// and the first thread, started at `entry`.
fn start(
    entry: u64,
    args: Args,
    slots: Slots,
    caps: &[(CapIdx, CapIdx, Rights)],
    prio: u8,
    src: &mut dyn PageSource,
) -> Result<(), LoadError> {
    let mut sp = 0;
    for i in 0..BOOT_STACK_SIZE / PAGE {
        let va = BOOT_STACK_TOP - (i + 1) * PAGE;
        let at = src.page()?;
        if i == 0 {
            // SAFETY: the page is ours, writable and PAGE bytes long; nobody else uses it yet.
            let page = unsafe { core::slice::from_raw_parts_mut(at as *mut u8, PAGE as usize) };
            sp = abi::startup::layout(page, BOOT_STACK_TOP, args.line, args.env, entry, KIP_ADDR)
                .ok_or(LoadError::BadElf("arguments and environment do not fit in a page"))?;
        }
        give(slots.task, at, va, 6, src.keeps())?;
    }
    let own = [(slots.task, wk::TASK, Rights::ALL), (slots.pager, wk::PAGER, Rights::RW | Rights::S)];
    for (ours, theirs, rights) in own.iter().chain(caps) {
        task::map(slots.task, wk::TASK, Fpage::object(*ours, 0, *rights), theirs.0 << 12)?;
    }
    factory::thread(wk::FACTORY, slots.thread)?;
    task::map(slots.task, wk::TASK, Fpage::object(slots.thread, 0, Rights::ALL), wk::THREAD.0 << 12)?;
    thread::control(
        slots.thread,
        tc::BIND_TASK | tc::SET_PAGER | tc::SET_EXC_HANDLER,
        wk::PAGER,
        wk::PARENT,
        slots.task,
        BOOT_UTCB_ADDR,
    )?;
    thread::ex_regs(slots.thread, entry, sp, 0)?;
    scheduler::run_thread(wk::SCHEDULER, slots.thread, prio, 1, 0)?;
    Ok(())
}

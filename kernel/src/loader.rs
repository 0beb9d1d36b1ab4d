//! Starting boot tasks: the programs the boot image flags `START`, loaded from their ELF files
//! into fresh address spaces (see `abi::kip` for the start-up contract).

use crate::mem::with_frames;
use crate::objects::{with_kernel, KernelStack, Obj, Task, Thread, ThreadState, BOOT_CAPS};
use crate::sched::QUANTUM;
use crate::A;
use abi::bootimage::{BootImage, Module, FLAG_START, KIND_PROGRAM};
use abi::kip::{BOOT_STACK_SIZE, BOOT_STACK_TOP, BOOT_UTCB_ADDR, KIP_ADDR, USER_END};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use arch_x86_64::{trap, TrapFrame};
use goblin::elf::{header, program_header, Elf};
use kernel_core::captable::{Cap, CapTable};
use kernel_core::hal::Arch;
use kernel_core::mem::{Perms, PhysAddr, PhysRange, VirtAddr, PAGE_SIZE};

/// Priority of boot tasks.
const BOOT_PRIO: u8 = 100;

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
    for m in image.modules() {
        match m {
            Ok(m) if m.kind == KIND_PROGRAM && m.flags & FLAG_START != 0 => {
                log::info!("starting boot task {}", m.name);
                if let Err(e) = start_task(&m) {
                    log::error!("boot task {}: {e}", m.name);
                }
            }
            Ok(_) => {}
            Err(e) => log::error!("{e}"),
        }
    }
}

fn perms_of(flags: u32) -> Perms {
    Perms { write: flags & program_header::PF_W != 0, exec: flags & program_header::PF_X != 0 }
}

fn new_frame(owned: &mut Vec<PhysAddr>) -> Result<PhysAddr, String> {
    let f = with_frames(|fa| fa.alloc()).ok_or("out of memory")?;
    A::write_phys(f, &[0; PAGE_SIZE as usize]);
    owned.push(f);
    Ok(f)
}

/// Pages of the program image: user page address → (frame, permissions).
fn load_segments(
    elf: &Elf,
    data: &[u8],
    owned: &mut Vec<PhysAddr>,
) -> Result<BTreeMap<u64, (PhysAddr, Perms)>, String> {
    let mut pages: BTreeMap<u64, (PhysAddr, Perms)> = BTreeMap::new();
    for ph in elf.program_headers.iter().filter(|p| p.p_type == program_header::PT_LOAD) {
        let end = ph.p_vaddr.checked_add(ph.p_memsz).filter(|e| *e <= USER_END);
        let file_end = ph.p_offset.checked_add(ph.p_filesz).filter(|e| *e <= data.len() as u64);
        let (Some(end), Some(_)) = (end, file_end) else {
            return Err(format!("segment at {:#x} lies outside the file or the user half", ph.p_vaddr));
        };
        if ph.p_filesz > ph.p_memsz {
            return Err(format!("segment at {:#x} has more file than memory bytes", ph.p_vaddr));
        }
        let perms = perms_of(ph.p_flags);
        let mut page = VirtAddr(ph.p_vaddr).page_down().0;
        while page < end {
            let frame = match pages.get_mut(&page) {
                Some((f, p)) => {
                    *p = Perms { write: p.write || perms.write, exec: p.exec || perms.exec };
                    *f
                }
                None => {
                    let f = new_frame(owned)?;
                    pages.insert(page, (f, perms));
                    f
                }
            };
            // The part of the file image that falls into this page.
            let lo = page.max(ph.p_vaddr);
            let hi = (page + PAGE_SIZE).min(ph.p_vaddr + ph.p_filesz);
            if lo < hi {
                let off = (ph.p_offset + (lo - ph.p_vaddr)) as usize;
                A::write_phys(PhysAddr(frame.0 + (lo - page)), &data[off..off + (hi - lo) as usize]);
            }
            page += PAGE_SIZE;
        }
    }
    if pages.is_empty() {
        return Err("no loadable segments".to_string());
    }
    Ok(pages)
}

fn start_task(m: &Module) -> Result<(), String> {
    let elf = Elf::parse(m.data).map_err(|e| format!("not a valid ELF file: {e}"))?;
    if !elf.is_64 || elf.header.e_machine != header::EM_X86_64 || elf.header.e_type != header::ET_EXEC {
        return Err("not a static x86_64 executable".to_string());
    }
    if elf.entry >= USER_END {
        return Err(format!("entry point {:#x} outside the user half", elf.entry));
    }
    let mut owned = Vec::new();
    let mut space = with_frames(|fa| A::new_space(fa)).ok_or("out of memory")?;
    let r = build_task(&elf, m, &mut owned, &mut space);
    match r {
        Ok((sp, args_addr, utcb_frame)) => {
            let name = String::from(m.name);
            let args_len = m.args.len() as u64;
            spawn(name, space, owned, elf.entry, sp, [args_addr, args_len, KIP_ADDR], utcb_frame);
            Ok(())
        }
        Err(e) => {
            with_frames(|fa| {
                A::destroy_space(space, fa);
                for f in owned {
                    fa.free(f);
                }
            });
            Err(e)
        }
    }
}

/// Fills the address space: image, stack with the argument string, UTCB, KIP.
/// Returns (stack pointer, argument address, UTCB frame).
fn build_task(
    elf: &Elf,
    m: &Module,
    owned: &mut Vec<PhysAddr>,
    space: &mut <A as Arch>::Space,
) -> Result<(u64, u64, PhysAddr), String> {
    let mut map = |va: u64, pa: PhysAddr, p: Perms| {
        with_frames(|fa| A::map(space, VirtAddr(va), pa, p, fa))
            .map(|_| ())
            .map_err(|e| format!("cannot map {va:#x}: {e:?}"))
    };
    for (va, (pa, p)) in load_segments(elf, m.data, owned)? {
        map(va, pa, p)?;
    }
    if m.args.len() as u64 > PAGE_SIZE / 2 {
        return Err("argument string longer than 2 KiB".to_string());
    }
    let mut top_frame = PhysAddr(0);
    for i in 0..BOOT_STACK_SIZE / PAGE_SIZE {
        let f = new_frame(owned)?;
        map(BOOT_STACK_TOP - (i + 1) * PAGE_SIZE, f, Perms::RW)?;
        if i == 0 {
            top_frame = f;
        }
    }
    let args_addr = (BOOT_STACK_TOP - m.args.len() as u64) & !15;
    A::write_phys(PhysAddr(top_frame.0 + (args_addr - (BOOT_STACK_TOP - PAGE_SIZE))), m.args.as_bytes());
    let utcb = new_frame(owned)?;
    A::write_phys(PhysAddr(utcb.0 + abi::utcb::TCR_SELF_OFFSET as u64), &BOOT_UTCB_ADDR.to_le_bytes());
    map(BOOT_UTCB_ADDR, utcb, Perms::RW)?;
    let kip = with_kernel(|k| k.kip);
    map(KIP_ADDR, kip, Perms::RO)?;
    Ok((args_addr - 16, args_addr, utcb))
}

fn spawn(
    name: String,
    space: <A as Arch>::Space,
    frames: Vec<PhysAddr>,
    entry: u64,
    sp: u64,
    args: [u64; 3],
    utcb: PhysAddr,
) {
    let mut kstack = KernelStack::new();
    let frame = TrapFrame { rdi: args[0], rsi: args[1], rdx: args[2], ..TrapFrame::new_user(entry, sp) };
    let off = trap::init_kernel_stack(&mut kstack.stack, &frame);
    kstack.saved_rsp = kstack.stack.as_ptr() as u64 + off as u64;
    with_kernel(|k| {
        let task = k.tasks.insert(Task {
            name,
            space,
            caps: CapTable::new(),
            frames,
            threads: Vec::new(),
            log_at_line_start: true,
        });
        let thread = k.threads.insert(Thread {
            task,
            state: ThreadState::Ready,
            prio: BOOT_PRIO,
            quantum: QUANTUM,
            kstack,
            utcb_user: BOOT_UTCB_ADDR,
            utcb_frame: utcb,
        });
        let t = k.tasks.get_mut(task).expect("just inserted");
        t.threads.push(thread);
        for (idx, rights) in BOOT_CAPS {
            let obj = match idx {
                abi::cap::well_known::TASK => Obj::Task(task),
                abi::cap::well_known::LOG => Obj::Log,
                _ => Obj::PlatformCtl,
            };
            t.caps.set(idx, Cap { obj, rights }).expect("well-known slots are valid");
        }
        k.ready.enqueue(thread, BOOT_PRIO);
    });
}

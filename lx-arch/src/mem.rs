//! Linux's "physical" memory and its own mappings.
//!
//! UML keeps its RAM in a file mapped right after the kernel image (`uml_physmem` + physical
//! address = virtual address). Here the RAM is ordinary memory of this task, lent by our pager
//! (moe, sigma0 protocol) within the boot script's `quota=`, and a physical page *is* the page at
//! that address: mapping a page into a process is `Task::Map` from there, and Linux's own
//! second mappings of a page (vmalloc) are `Task::Map` from our own space into our own space.

use crate::vcpu::held;
use abi::cap::well_known as wk;
use abi::proto::fpage::{mem_rights, unmap_mask, Fpage};
use abi::Rights;
use core::ffi::c_int;

const PAGE: u64 = 4096;

/// `UM_PROT_*` bits (os.h: read 1, write 2, exec 4) as memory flexpage rights; x86 pages that
/// can be written or executed can also be read.
pub fn rights(prot: c_int) -> Rights {
    let mut r = 0;
    if prot & 7 != 0 {
        r |= mem_rights::R;
    }
    if prot & 2 != 0 {
        r |= mem_rights::W;
    }
    if prot & 4 != 0 {
        r |= mem_rights::X;
    }
    Rights::from_bits_truncate(r)
}

/// The largest power-of-two chunk that starts at `a` (aligned) and fits below `end`, capped at
/// 2^`max`; also aligned at `b` if given (both ends of a mapping must agree).
pub fn chunk_order(a: u64, b: u64, end: u64, max: u32) -> u32 {
    let mut o = 12;
    while o < max {
        let size = 2u64 << o;
        if !a.is_multiple_of(size) || !b.is_multiple_of(size) || a + size > end {
            break;
        }
        o += 1;
    }
    o
}

/// `lx_ram_back`: `[start, end)` (page aligned) becomes Linux's RAM: charged to our quota now,
/// backed by our pager with zeroed memory where Linux first touches it (`REQ_RESERVE`), so
/// that RAM Linux never uses costs no memory and no time. Returns 0 or a negative error after
/// saying why.
#[no_mangle]
pub extern "C" fn lx_ram_back(start: u64, end: u64) -> c_int {
    if !start.is_multiple_of(PAGE) || !end.is_multiple_of(PAGE) || end < start {
        return -22;
    }
    match held(|| l4::ipc::sigma0::reserve(start, end)) {
        Ok(()) => 0,
        Err(e) => {
            l4::println!(
                "cannot reserve {} MiB for Linux's RAM ({e:?}): raise quota= in the boot script",
                (end - start) >> 20
            );
            -12
        }
    }
}

/// Reads a byte of each page of `[src, src+len)`, so that every page of ours the kernel is
/// about to map on is backed: a map skips pages we lack (RAM not touched yet), and the
/// mapping would fault for ever. For second mappings (vmalloc), whose pages Linux may map
/// before it writes them; process mappings need it not (`lx_task_map`).
pub fn touch(src: u64, len: u64) {
    for p in (src..src + len).step_by(PAGE as usize) {
        // SAFETY: Linux maps on only its own pages (RAM or image), mapped readable in our
        // space; a read changes nothing, and our pager backs an untouched RAM page first.
        unsafe { core::ptr::read_volatile(p as *const u8) };
    }
}

/// `lx_alias`: maps our pages `[src, src+len)` a second time at `dst` with `prot`.
#[no_mangle]
pub extern "C" fn lx_alias(dst: u64, src: u64, len: u64, prot: c_int) -> c_int {
    map_range(wk::TASK, dst, src, len, prot)
}

/// Maps `[src, src+len)` of our space into `task` at `dst`, in the largest aligned chunks.
pub fn map_range(task: abi::CapIdx, dst: u64, src: u64, len: u64, prot: c_int) -> c_int {
    if !dst.is_multiple_of(PAGE) || !src.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return -22;
    }
    if prot & 7 == 0 {
        return unmap_range(task, dst, len, true);
    }
    let r = rights(prot);
    touch(src, len);
    held(|| {
        let mut off = 0;
        while off < len {
            let o = chunk_order(dst + off, src + off, dst + len, 22);
            if let Err(e) = l4::ipc::task::map(task, wk::TASK, Fpage::memory(src + off, o, r), dst + off) {
                return -(e as c_int);
            }
            off += 1 << o;
        }
        0
    })
}

/// Removes `[addr, addr+len)` from `task` (ours too with `own`).
pub fn unmap_range(task: abi::CapIdx, addr: u64, len: u64, own: bool) -> c_int {
    let mask = if own { unmap_mask::ALL_SPACES } else { unmap_mask::OTHER_SPACES };
    held(|| {
        let mut off = 0;
        let mut batch = [Fpage(0); 8];
        let mut n = 0;
        while off < len {
            let o = chunk_order(addr + off, addr + off, addr + len, 47);
            batch[n] = Fpage::memory(addr + off, o, rights(7));
            n += 1;
            off += 1 << o;
            if n == batch.len() || off >= len {
                if let Err(e) = l4::ipc::task::unmap(task, mask, &batch[..n]) {
                    return -(e as c_int);
                }
                n = 0;
            }
        }
        0
    })
}

/// `lx_unmap_own`: removes a mapping of our own (vmalloc area) at `[addr, addr+len)`.
#[no_mangle]
pub extern "C" fn lx_unmap_own(addr: u64, len: u64) -> c_int {
    if !addr.is_multiple_of(PAGE) {
        return -22;
    }
    unmap_range(wk::TASK, addr, len.next_multiple_of(PAGE), true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunks_follow_alignment() {
        use super::chunk_order;
        assert_eq!(chunk_order(0x1000, 0x1000, 0x10_0000, 22), 12);
        assert_eq!(chunk_order(0x40_0000, 0x40_0000, 0x100_0000, 22), 22);
        assert_eq!(chunk_order(0x40_0000, 0x1000, 0x100_0000, 22), 12);
        assert_eq!(chunk_order(0x20_0000, 0x20_0000, 0x30_0000, 22), 20);
    }
}

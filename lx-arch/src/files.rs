//! Boot modules as read-only files: `initrd=NAME` names a module the boot script lets Linux
//! read (`file NAME`); UML reads it through `os_file_size`/`os_open_file`/`os_read_file`. Our
//! parent (moe) copies it into memory it lends us, 4 MiB at a time, into a window of our own
//! far above everything Linux uses.

use crate::vcpu::held;
use abi::cap::well_known as wk;
use core::ffi::{c_char, c_int, CStr};
use core::sync::atomic::{AtomicU64, Ordering};

/// Where files land: 1 GiB each, above Linux's top address (0x7fc0002000) and below the
/// program's stack, UTCB area and KIP.
const FILES_BASE: u64 = 0x7e00_0000_0000;
const SLOT: u64 = 1 << 30;
const CHUNK_ORDER: u32 = 22;
const MAX_FILES: usize = 8;

/// Files fetched so far: the hash of the name, and the size (0: free).
static NAMES: [AtomicU64; MAX_FILES] = [const { AtomicU64::new(0) }; MAX_FILES];
static SIZES: [AtomicU64; MAX_FILES] = [const { AtomicU64::new(0) }; MAX_FILES];

fn hash(s: &str) -> u64 {
    // FNV-1a: names are short and few; 0 is reserved for "free".
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)) | 1
}

fn fetch(name: &str) -> Result<(u64, u64), c_int> {
    let h = hash(name);
    if let Some(i) = NAMES.iter().position(|n| n.load(Ordering::Relaxed) == h) {
        return Ok((FILES_BASE + i as u64 * SLOT, SIZES[i].load(Ordering::Relaxed)));
    }
    let i = NAMES.iter().position(|n| n.load(Ordering::Relaxed) == 0).ok_or(-24)?;
    let base = FILES_BASE + i as u64 * SLOT;
    held(|| {
        let size = l4::ipc::namespace::file(wk::NAMESPACE, name, 0, None).map_err(|e| {
            l4::println!(
                "cannot read `{name}` ({e:?}): is it a boot module, with `file {name}` in the script?"
            );
            -2
        })?;
        if size > SLOT {
            l4::println!("`{name}` is larger than 1 GiB");
            return Err(-27);
        }
        let mut off = 0;
        while off < size {
            l4::ipc::namespace::file(wk::NAMESPACE, name, off, Some((base + off, CHUNK_ORDER))).map_err(
                |e| {
                    l4::println!("reading `{name}` failed at {} MiB ({e:?}): raise quota=", off >> 20);
                    -12
                },
            )?;
            off += 1 << CHUNK_ORDER;
        }
        NAMES[i].store(h, Ordering::Relaxed);
        SIZES[i].store(size, Ordering::Relaxed);
        Ok((base, size))
    })
}

/// `lx_module`: the address and size of readable module `name`; 0, or a negative error.
///
/// # Safety
/// Called from os-L4's C half with the pointers lx_arch.h describes: valid for the
/// stated sizes, or null where the function checks.
#[no_mangle]
pub unsafe extern "C" fn lx_module(name: *const c_char, addr: *mut u64, size: *mut u64) -> c_int {
    if name.is_null() || addr.is_null() || size.is_null() {
        return -22;
    }
    // SAFETY: the C half passes a NUL-terminated kernel string.
    let Ok(name) = unsafe { CStr::from_ptr(name) }.to_str() else { return -2 };
    match fetch(name.trim_start_matches('/')) {
        Ok((a, s)) => {
            // SAFETY: checked non-null; the C half passes valid pointers.
            unsafe {
                *addr = a;
                *size = s;
            }
            0
        }
        Err(e) => e,
    }
}

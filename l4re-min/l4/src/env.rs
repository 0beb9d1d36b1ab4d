//! The program's arguments, environment and auxiliary vector (`abi::startup`): programs the
//! runtime's loader starts get all three; boot tasks only their argument string, which
//! [`args`] then splits the same way.

use abi::startup::{split_args, BLOCK_WORDS, EXT_MAGIC};
use core::sync::atomic::{AtomicPtr, Ordering};

/// The start-up block, as `_start` found it (its memory stays for the program's life).
static BLOCK: AtomicPtr<u64> = AtomicPtr::new(core::ptr::null_mut());

pub(crate) fn init(block: *const u64) {
    BLOCK.store(block.cast_mut(), Ordering::Relaxed);
}

/// The block's words, if it is the extended one.
fn ext() -> Option<[u64; BLOCK_WORDS]> {
    let b = BLOCK.load(Ordering::Relaxed);
    if b.is_null() {
        return None;
    }
    let mut w = [0u64; BLOCK_WORDS];
    // SAFETY: `_start` passed the initial stack pointer: 3 words at least, all in the mapped
    // top stack page; words 3.. are read only if word 3 says they exist, and the loader wrote
    // them in the same page.
    unsafe {
        w[..4].copy_from_slice(core::slice::from_raw_parts(b, 4));
        if w[3] != EXT_MAGIC {
            return None;
        }
        w.copy_from_slice(core::slice::from_raw_parts(b, BLOCK_WORDS));
    }
    Some(w)
}

/// The NUL-terminated strings of a null-terminated pointer array at `list`.
fn strings(list: u64) -> impl Iterator<Item = &'static str> {
    (0..).map_while(move |i| {
        // SAFETY: the loader wrote the array and its strings in the top stack page, which
        // stays mapped and unchanged; the array ends with a null pointer.
        let p = unsafe { *((list + i * 8) as *const u64) };
        (p != 0).then(|| {
            // SAFETY: as above: a NUL-terminated string the loader wrote.
            let s = unsafe { core::ffi::CStr::from_ptr(p as *const core::ffi::c_char) };
            s.to_str().unwrap_or("")
        })
    })
}

/// The argument string of a boot task (block words 0 and 1).
fn whole_args() -> Option<&'static str> {
    let b = BLOCK.load(Ordering::Relaxed);
    if b.is_null() {
        return None;
    }
    // SAFETY: see `ext`: words 0 and 1 are the argument string's address and length, which
    // the kernel placed in the stack page for the program's life.
    unsafe { crate::sys::start_str(*b as *const u8, *b.add(1) as usize) }
}

/// The argument string's words (argv).
pub fn args() -> impl Iterator<Item = &'static str> {
    let (argv, whole) = match ext() {
        Some(w) => (Some(w[5]), None),
        None => (None, whole_args()),
    };
    argv.into_iter().flat_map(strings).chain(whole.into_iter().flat_map(split_args))
}

/// The environment's `KEY=VALUE` strings.
pub fn vars() -> impl Iterator<Item = &'static str> {
    ext().into_iter().flat_map(|w| strings(w[6]))
}

/// The value of environment variable `key`.
pub fn var(key: &str) -> Option<&'static str> {
    vars().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The auxiliary vector's value for `tag` (`abi::startup::at`).
pub fn aux(tag: u64) -> Option<u64> {
    let auxv = ext()?[7];
    for i in 0.. {
        // SAFETY: as for the arrays above; the vector ends with AT_NULL, where we stop.
        let (t, v) = unsafe { (*((auxv + i * 16) as *const u64), *((auxv + i * 16 + 8) as *const u64)) };
        if t == abi::startup::at::NULL {
            return None;
        }
        if t == tag {
            return Some(v);
        }
    }
    None
}

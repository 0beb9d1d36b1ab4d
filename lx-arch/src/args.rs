//! Linux's command line: the program's argument string (from the boot script) split at
//! whitespace into a C `argv`, with the program name first as UML expects.

use core::ffi::{c_char, c_int};

const MAX_ARGS: usize = 64;
const MAX_BYTES: usize = 4096;

struct Argv {
    bytes: [u8; MAX_BYTES],
    ptrs: [*mut c_char; MAX_ARGS + 1],
}

/// Static storage: Linux keeps pointers into argv for its whole life.
struct Cell(core::cell::UnsafeCell<Argv>);
// SAFETY: written once by `argv` before Linux starts (one thread), only read afterwards.
unsafe impl Sync for Cell {}

static ARGV: Cell = Cell(core::cell::UnsafeCell::new(Argv {
    bytes: [0; MAX_BYTES],
    ptrs: [core::ptr::null_mut(); MAX_ARGS + 1],
}));

/// Builds `argv` from `args`; arguments beyond the storage are dropped with a warning.
pub fn argv(args: &str) -> (c_int, *mut *mut c_char) {
    // SAFETY: called once, before Linux runs and before any other access (see Cell).
    let a = unsafe { &mut *ARGV.0.get() };
    let mut at = 0;
    let mut n = 0;
    for word in core::iter::once("linux").chain(args.split_ascii_whitespace()) {
        if n == MAX_ARGS || at + word.len() + 1 > MAX_BYTES {
            l4::println!("command line too long, `{word}` and the rest dropped");
            break;
        }
        a.bytes[at..at + word.len()].copy_from_slice(word.as_bytes());
        a.bytes[at + word.len()] = 0;
        a.ptrs[n] = a.bytes[at..].as_mut_ptr().cast();
        at += word.len() + 1;
        n += 1;
    }
    a.ptrs[n] = core::ptr::null_mut();
    (n as c_int, a.ptrs.as_mut_ptr())
}

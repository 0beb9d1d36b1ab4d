//! The user library of native programs: start-up, `invoke` stubs built from the abi tables,
//! console output (also as the `log` backend), exit and panic.
//!
//! A program is `#![no_std] #![no_main]` and names its main function with [`entry!`]:
//! ```ignore
//! l4::entry!(main);
//! fn main(args: &str) -> i32 { l4::println!("hello {args}"); 0 }
//! ```
#![no_std]

#[cfg(feature = "runtime")]
extern crate alloc;

pub mod env;
#[cfg(feature = "runtime")]
pub mod heap;
pub mod io;
pub mod ipc;
#[cfg(feature = "runtime")]
pub mod loader;
#[cfg(feature = "runtime")]
pub mod rm;
pub mod sys;
#[cfg(feature = "runtime")]
pub mod thread;

pub use sys::{invoke, kip, shutdown};

/// Defines the program's entry point: `fn(&str) -> i32` receives the argument string.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        extern "Rust" fn l4_main(args: &str) -> i32 {
            let f: fn(&str) -> i32 = $main;
            f(args)
        }
    };
}

extern "Rust" {
    fn l4_main(args: &str) -> i32;
}

core::arch::global_asm!(
    r#"
    .section .text._start, "ax"
    .global _start
_start:
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    mov rdx, [rsp + 16]
    mov rcx, rsp
    and rsp, -16
    xor ebp, ebp
    call l4_start
    ud2
    "#
);

/// Rust-level start: the start-up block gave the argument string and the KIP address.
#[no_mangle]
extern "C" fn l4_start(args: *const u8, len: usize, kip: u64, block: *const u64) -> ! {
    io::init_logger();
    env::init(block);
    // SAFETY: the kernel copied the argument string to the top of our stack, which stays
    // mapped and untouched above the initial stack pointer for the program's life.
    let args = unsafe { sys::start_str(args, len) }.unwrap_or("");
    if kip != abi::kip::KIP_ADDR || sys::kip().magic != abi::kip::KIP_MAGIC {
        println!("bad start-up state: no kernel info page");
        sys::exit(127);
    }
    // SAFETY: l4_main is defined by the program through `entry!` with this signature.
    let status = unsafe { l4_main(args) };
    sys::exit(status)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("panic: {info}");
    sys::exit(101)
}

//! `ktest spawn`: starts the boot image's `hello` module from user space (ELF loader, heap,
//! memory from sigma0), the way the root task will start every program; a broken image is
//! refused with a clear error.

use crate::objects::{check, R};
use abi::cap::well_known as wk;
use abi::{CapIdx, Rights};
use alloc::vec::Vec;
use l4::loader::{spawn, Args, LoadError, Sigma0Pages, Slots};
use l4::println;

pub fn run() -> R {
    let img = l4::sys::boot_image().ok_or("no boot image")?;
    let hello = img.modules().flatten().find(|m| m.name == "hello").ok_or("no hello module")?;
    // The heap works: a copy of the image, then a corrupted one that must be refused.
    let mut broken: Vec<u8> = hello.data.to_vec();
    check(broken.len() == hello.data.len(), "heap copy")?;
    broken[18] ^= 0xff; // e_machine
    let r = spawn(
        &broken,
        "broken",
        Args { line: "", env: &[] },
        Slots { task: CapIdx(90), thread: CapIdx(91), pager: wk::PAGER },
        &[],
        100,
        &mut Sigma0Pages,
    );
    println!("broken image: {}", r.map_or_else(|e| alloc::format!("{e}"), |_| "started?!".into()));
    check(matches!(r, Err(LoadError::BadElf(_))), "a corrupt ELF image is refused")?;
    let caps = [(wk::LOG, wk::LOG, Rights::RW), (wk::PLATFORM_CTL, wk::PLATFORM_CTL, Rights::RW)];
    let r = spawn(
        hello.data,
        "hello",
        Args { line: "spawned by ktest", env: &[] },
        Slots { task: CapIdx(92), thread: CapIdx(93), pager: wk::PAGER },
        &caps,
        // Below ours (100): hello runs once we wait, so our line comes first whatever the time
        // slices do (at equal priority a slice ending right after the spawn let hello greet
        // and power off first).
        99,
        &mut Sigma0Pages,
    );
    if let Err(e) = r {
        println!("spawn failed: {e}");
        return Err("spawn hello");
    }
    println!("hello started from user space");
    // hello greets and powers the machine off; nothing left for us to do.
    loop {
        let _ = l4::ipc::wait(0);
    }
}

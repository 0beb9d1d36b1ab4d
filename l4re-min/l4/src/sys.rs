//! System-call stubs. Every kernel object operation is one `invoke` with the protocol label and
//! opcode from `abi::proto`, arguments in the UTCB's message registers.

use abi::cap::well_known;
use abi::proto::{fpage, platform_ctl, task};
use abi::syscall::{Flags, REG_WORDS};
use abi::utcb::Utcb;
use abi::{CapIdx, CapSel, Error, MsgTag, Rights};

/// The raw system call with timeouts (`abi::syscall::timeout`) and the message words of a
/// register message (`MsgTag::REGS`) in and out. Returns the result tag, the label of a
/// received message and the words of one received in registers.
#[inline(always)]
pub fn invoke_regs(
    sel: CapSel,
    flags: Flags,
    tag: MsgTag,
    timeouts: u64,
    w: [u64; REG_WORDS],
) -> (MsgTag, u64, [u64; REG_WORDS]) {
    let (rax, rsi): (u64, u64);
    let mut o = [0u64; REG_WORDS];
    // SAFETY: the kernel's `invoke` reads only registers and this thread's UTCB, and preserves
    // all registers but rax, rsi (results), r15..r12 (words of a message received in
    // registers) and rcx, r11 (clobbered by `syscall`).
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") tag.0 => rax,
            in("rdx") sel.raw() | flags.bits(),
            inlateout("rsi") 0u64 => rsi,
            in("r8") timeouts,
            inlateout("r15") w[0] => o[0],
            inlateout("r14") w[1] => o[1],
            inlateout("r13") w[2] => o[2],
            inlateout("r12") w[3] => o[3],
            out("rcx") _,
            out("r11") _,
            options(nostack),
        );
    }
    (MsgTag(rax), rsi, o)
}

/// The raw system call with timeouts (`abi::syscall::timeout`). Returns the result tag and the
/// label of a received message, whose words are in the UTCB: one that came in registers is put
/// there (and its tag loses `MsgTag::REGS`).
#[inline(always)]
pub fn invoke_full(sel: CapSel, flags: Flags, tag: MsgTag, timeouts: u64) -> (MsgTag, u64) {
    let (t, label, w) = invoke_regs(sel, flags, tag, timeouts, [0; REG_WORDS]);
    if !t.in_regs() {
        return (t, label);
    }
    let u = utcb();
    for (i, &w) in w.iter().enumerate().take(t.words()) {
        // SAFETY: this thread's UTCB, mapped read-write; i < REG_WORDS < MR_COUNT.
        unsafe { (*u).mr[i] = w };
    }
    (t.without_regs(), label)
}

/// The raw system call without timeouts. Returns the result tag.
#[inline(always)]
pub fn invoke(sel: CapSel, flags: Flags, tag: MsgTag) -> MsgTag {
    invoke_full(sel, flags, tag, 0).0
}

/// This thread's UTCB.
#[cfg(not(feature = "boot-utcb"))]
pub fn utcb() -> *mut Utcb {
    let p: u64;
    // SAFETY: the kernel points GS at the UTCB and stores its address at TCR_SELF_OFFSET.
    unsafe {
        core::arch::asm!(
            "mov {}, gs:[{off}]",
            out(reg) p,
            off = const abi::utcb::TCR_SELF_OFFSET,
            options(nostack, readonly)
        )
    };
    p as *mut Utcb
}

/// This thread's UTCB: the main thread's (feature `boot-utcb`).
#[cfg(feature = "boot-utcb")]
pub fn utcb() -> *mut Utcb {
    abi::kip::BOOT_UTCB_ADDR as *mut Utcb
}

/// Stores `words` into MR[0..] and invokes `cap` with `label`.
pub fn call_words(cap: CapIdx, label: i64, words: &[u64]) -> Result<MsgTag, Error> {
    let u = utcb();
    for (i, w) in words.iter().enumerate() {
        // SAFETY: the UTCB is this thread's, mapped read-write; i < MR_COUNT by the slice bound
        // the callers respect (checked below).
        unsafe { (*u).mr[i] = *w };
    }
    assert!(words.len() <= abi::utcb::MR_COUNT);
    invoke(CapSel::from_idx(cap), Flags::CALL, MsgTag::new(label, words.len() as u64, 0, 0)).result()
}

/// The boot image, if the kernel mapped one into this task (boot tasks only).
pub fn boot_image() -> Option<abi::bootimage::BootImage<'static>> {
    let k = kip();
    if k.boot_image == 0 || k.boot_image_size == 0 {
        return None;
    }
    // SAFETY: the kernel maps the whole boot image read-only at that address for the task's
    // lifetime and publishes its size; nothing writes it.
    let bytes = unsafe { core::slice::from_raw_parts(k.boot_image as *const u8, k.boot_image_size as usize) };
    abi::bootimage::BootImage::parse(bytes).ok()
}

/// The kernel info page.
pub fn kip() -> &'static abi::kip::Kip {
    // SAFETY: the kernel maps the KIP read-only at KIP_ADDR in every task for its lifetime.
    unsafe { &*(abi::kip::KIP_ADDR as *const abi::kip::Kip) }
}

/// A string the kernel placed in our memory at start-up.
///
/// # Safety
/// `p` must point at `len` readable bytes that live for the rest of the program.
pub(crate) unsafe fn start_str(p: *const u8, len: usize) -> Option<&'static str> {
    if p.is_null() || len > 4096 {
        return None;
    }
    // SAFETY: guaranteed by the caller.
    core::str::from_utf8(unsafe { core::slice::from_raw_parts(p, len) }).ok()
}

/// Powers the machine off with `status` (needs the platform-control capability).
pub fn shutdown(status: u64) -> Error {
    match call_words(
        well_known::PLATFORM_CTL,
        platform_ctl::LABEL,
        &[platform_ctl::Op::Shutdown.code(), status],
    ) {
        Ok(_) => Error::Inval,
        Err(e) => e,
    }
}

/// Ends the program: tells its parent (if it has one) the status, then deletes its own task.
pub fn exit(status: i32) -> ! {
    if status != 0 {
        crate::println!("exit status {status}");
    }
    if matches!(crate::ipc::task::cap_info(well_known::TASK, well_known::PARENT), Ok((l, _)) if l != 0) {
        use abi::proto::parent;
        crate::ipc::set_mr(0, parent::SIGNAL);
        crate::ipc::set_mr(1, parent::EXIT);
        crate::ipc::set_mr(2, status as u64);
        // Waits until the parent listens: it made us and can delete us anyway, and a lost exit
        // notice would leak the task. A dead parent's gate fails at once.
        let _ = crate::ipc::send(well_known::PARENT, MsgTag::new(parent::LABEL, 3, 0, 0), 0);
    }
    let me = fpage::Fpage::object(well_known::TASK, 0, Rights::D);
    let _ = call_words(
        well_known::TASK,
        task::LABEL,
        &[task::Op::Unmap.code(), fpage::unmap_mask::DELETE_OBJ, me.0],
    );
    // Only reached if the task capability is gone: nothing left to do but wait.
    loop {
        core::hint::spin_loop();
    }
}

/// The cycle counter.
pub fn cycles() -> u64 {
    // SAFETY: rdtsc only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

//! A fake architecture for host tests: physical memory is a byte vector, address spaces are
//! maps, thread contexts are plain structs, the clock advances only when a test says so. Every
//! test thread has its own machine.

use crate::frames::FrameAllocator;
use crate::hal::{
    Arch, GuestRegions, MapError, Message, ThreadContext, UserRegs, WorldExit, IO_BITMAP_BYTES,
};
use crate::mem::{Perms, PhysAddr, PhysRange, VirtAddr, PAGE_SIZE};
use abi::proto::exc_regs;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use std::cell::{Cell, RefCell};

/// Bytes of fake RAM.
pub const RAM: usize = 16 << 20;

thread_local! {
    static PHYS: RefCell<Vec<u8>> = RefCell::new(alloc::vec![0; RAM]);
    static FRAMES: RefCell<FrameAllocator<'static>> = RefCell::new(fresh_frames());
    static CLOCK: Cell<u64> = const { Cell::new(1) };
    static ACTIVE: Cell<u64> = const { Cell::new(0) };
    static NEXT_ROOT: Cell<u64> = const { Cell::new(1) };
    static NEXT_CONTEXT: Cell<u64> = const { Cell::new(1) };
    /// The frame the next entry from user mode saves into (`Arch::set_entry_frame`).
    pub static ENTRY_FRAME: Cell<u64> = const { Cell::new(0) };
    /// FPU saves and restores, in order, by context id.
    pub static FPU_OPS: RefCell<Vec<(&'static str, u64)>> = const { RefCell::new(Vec::new()) };
    pub static FPU_TRAPS: Cell<bool> = const { Cell::new(true) };
    /// The timer deadline last asked for.
    pub static TIMER: Cell<u64> = const { Cell::new(0) };
    /// Everything written to the console.
    pub static CONSOLE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// What went to the console raw (`console_write_raw`), also in `CONSOLE`.
    pub static RAW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Console input the device holds, not yet read by the kernel.
    pub static CONSOLE_IN: RefCell<VecDeque<u8>> = const { RefCell::new(VecDeque::new()) };
    /// Lines unmasked, in order.
    pub static UNMASKED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The guest world the thread resumed last runs in (`Arch::set_world`).
    pub static WORLD: Cell<Option<WorldExit>> = const { Cell::new(None) };
}

fn fresh_frames() -> FrameAllocator<'static> {
    let bits: &'static mut [u64] = Box::leak(alloc::vec![0u64; RAM / 4096 / 64].into_boxed_slice());
    let mut fa = FrameAllocator::new(bits);
    fa.add_range(PhysRange::new(PAGE_SIZE, RAM as u64));
    fa
}

/// A fresh machine for this test thread: all RAM free and zeroed.
pub fn reset() {
    FRAMES.with(|f| *f.borrow_mut() = fresh_frames());
    PHYS.with(|m| m.borrow_mut().fill(0));
    RAW.with(|r| r.borrow_mut().clear());
    CONSOLE_IN.with(|c| c.borrow_mut().clear());
    UNMASKED.with(|u| u.borrow_mut().clear());
}

/// Bytes arrive at the console device (the kernel takes them when its line fires).
pub fn type_input(bytes: &[u8]) {
    CONSOLE_IN.with(|c| c.borrow_mut().extend(bytes));
}

/// Everything written raw so far.
pub fn raw() -> String {
    RAW.with(|r| String::from_utf8_lossy(&r.borrow()).into_owned())
}

/// Lines unmasked so far, in order.
pub fn unmasked() -> Vec<u8> {
    UNMASKED.with(|u| u.borrow().clone())
}

/// Advances the fake cycle counter.
pub fn advance(cycles: u64) {
    CLOCK.with(|c| c.set(c.get() + cycles));
}

/// Everything written to the console so far.
pub fn console() -> String {
    CONSOLE.with(|c| String::from_utf8_lossy(&c.borrow()).into_owned())
}

pub fn free_frames() -> usize {
    FRAMES.with(|f| f.borrow().free_frames())
}

pub struct Fake;

pub struct FakeSpace {
    pub root: u64,
    pub pages: BTreeMap<u64, (PhysAddr, Perms)>,
    /// A page-table frame, so that spaces cost memory like real ones.
    table: PhysAddr,
    /// The guest regions prepared in this space, and the world root with the guest (root)
    /// and regions it shows.
    pub guest: Option<GuestRegions>,
    pub world: Option<(u64, u64, GuestRegions)>,
}

fn next_root() -> u64 {
    NEXT_ROOT.with(|n| {
        n.set(n.get() + 1);
        n.get() << 12
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeRegs {
    pub ip: u64,
    pub sp: u64,
    pub flags: u64,
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, r8
    pub gpr: [u64; 8],
    /// r11 (with rcx, what decides whether sysret resumes a context exactly).
    pub r11: u64,
    /// Runs as a guest kernel (`UserRegs::guest_mode`).
    pub guest: bool,
    /// The message registers of a register message.
    pub words: [u64; abi::syscall::REG_WORDS],
}

impl FakeRegs {
    /// The whole context in `abi::vcpu::VcpuRegs` order (what the upcall saves).
    fn context(&self) -> [u64; 18] {
        let mut c = [0; 18];
        c[..8].copy_from_slice(&self.gpr);
        (c[10], c[15], c[16], c[17]) = (self.r11, self.ip, self.sp, self.flags);
        c
    }

    /// Loads a whole context (ip and sp user addresses, or nothing changes).
    fn set_context(&mut self, c: &[u64; 18]) -> bool {
        if c[15] >= abi::kip::USER_END || c[16] >= abi::kip::USER_END {
            return false;
        }
        self.gpr.copy_from_slice(&c[..8]);
        self.r11 = c[10];
        (self.ip, self.sp, self.flags) = (c[15], c[16], (c[17] & 0xcd5) | 0x202);
        true
    }
}

impl UserRegs for FakeRegs {
    fn syscall_args(&self) -> [u64; 4] {
        [self.gpr[3], self.gpr[0], self.gpr[4], self.gpr[7]]
    }

    fn set_syscall_result(&mut self, tag: u64, label: u64) {
        self.gpr[0] = tag;
        self.gpr[4] = label;
    }

    fn reg_words(&self) -> [u64; abi::syscall::REG_WORDS] {
        self.words
    }

    fn ip(&self) -> u64 {
        self.ip
    }

    fn sp(&self) -> u64 {
        self.sp
    }

    fn flags(&self) -> u64 {
        self.flags
    }

    fn set_ip(&mut self, ip: u64) {
        self.ip = ip;
    }

    fn set_sp(&mut self, sp: u64) {
        self.sp = sp;
    }

    fn exception_words(&self, trapno: u64, error: u64, addr: u64) -> [u64; exc_regs::WORDS] {
        let mut w = [0; exc_regs::WORDS];
        (w[exc_regs::TRAPNO], w[exc_regs::ERROR], w[exc_regs::IP], w[exc_regs::SP]) =
            (trapno, error, self.ip, self.sp);
        (w[exc_regs::FLAGS], w[exc_regs::FAULT_ADDR]) = (self.flags, addr);
        w[exc_regs::RAX..=exc_regs::R8].copy_from_slice(&self.gpr);
        w
    }

    fn apply_exception_words(&mut self, w: &[u64; exc_regs::WORDS]) {
        (self.ip, self.sp) = (w[exc_regs::IP], w[exc_regs::SP]);
        self.gpr.copy_from_slice(&w[exc_regs::RAX..=exc_regs::R8]);
    }

    fn load_context(&mut self, pa: PhysAddr, guest: bool) -> bool {
        let c: [u64; 18] = Fake::read_array(pa);
        let ok = self.set_context(&c);
        if ok {
            self.guest = guest;
        }
        ok
    }

    fn guest_mode(&self) -> bool {
        self.guest
    }

    fn syscall_exit_exact(&self) -> bool {
        (self.gpr[2] == self.ip) & (self.r11 == self.flags)
    }

    fn save_context(&self, pa: PhysAddr, tail: [u64; 5]) {
        let mut w = self.context().to_vec();
        w.extend_from_slice(&tail);
        Fake::write_words(pa, &w);
    }

    fn set_entry(&mut self, ip: u64, sp: u64, arg: u64, guest: bool) -> bool {
        let mut c = [0u64; 18];
        (c[2], c[5], c[10], c[15], c[16], c[17]) = (ip, arg, 0x202, ip, sp, 0x202);
        let ok = self.set_context(&c);
        if ok {
            self.guest = guest;
        }
        ok
    }
}

pub struct FakeContext {
    pub regs: FakeRegs,
    id: u64,
}

impl ThreadContext for FakeContext {
    type Regs = FakeRegs;

    fn new_user() -> Self {
        let id = NEXT_CONTEXT.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        FakeContext { regs: FakeRegs::default(), id }
    }

    fn regs(&mut self) -> &mut FakeRegs {
        &mut self.regs
    }

    fn frame(&self) -> u64 {
        self.id << 16
    }

    fn hand_off(&mut self, msg: Message, tag: u64, label: u64) {
        match msg {
            Message::Utcb { dst, src, words } => {
                assert!(words <= crate::hal::HAND_OFF_WORDS);
                Fake::copy_words(dst, src, words);
            }
            Message::Regs { words, n } => self.regs.words[..n].copy_from_slice(&words[..n]),
        }
        self.regs.set_syscall_result(tag, label);
    }

    fn fpu_save(&mut self) {
        FPU_OPS.with(|f| f.borrow_mut().push(("save", self.id)));
    }

    fn fpu_restore(&self) {
        FPU_OPS.with(|f| f.borrow_mut().push(("restore", self.id)));
    }
}

fn check_range(pa: PhysAddr, len: usize) -> usize {
    let start = pa.0 as usize;
    assert!(start + len <= RAM, "fake physical access out of range");
    start
}

impl Arch for Fake {
    type Space = FakeSpace;
    type Context = FakeContext;
    const TICK_HZ: u64 = 1000;

    fn cycles() -> u64 {
        CLOCK.with(|c| c.get())
    }

    fn cycles_hz() -> u64 {
        1_000_000_000
    }

    fn shutdown(status: u32) -> ! {
        panic!("shutdown({status})")
    }

    fn with_frames<R>(f: impl FnOnce(&mut FrameAllocator<'static>) -> R) -> R {
        FRAMES.with(|fa| f(&mut fa.borrow_mut()))
    }

    fn new_space(fa: &mut FrameAllocator) -> Option<FakeSpace> {
        let table = fa.alloc()?;
        Some(FakeSpace { root: next_root(), pages: BTreeMap::new(), table, guest: None, world: None })
    }

    fn map(s: &mut FakeSpace, va: VirtAddr, pa: PhysAddr, p: Perms) -> Result<Option<PhysAddr>, MapError> {
        if !va.is_page_aligned() || va.0 >= abi::kip::USER_END {
            return Err(MapError::BadAddress);
        }
        Ok(s.pages.insert(va.0, (pa, p)).map(|(old, _)| old))
    }

    fn unmap(s: &mut FakeSpace, va: VirtAddr) -> Option<PhysAddr> {
        s.pages.remove(&va.0).map(|(pa, _)| pa)
    }

    fn destroy_space(s: FakeSpace) {
        Self::with_frames(|fa| fa.free(s.table));
    }

    fn space_root(s: &FakeSpace) -> u64 {
        s.root
    }

    fn active_root() -> u64 {
        ACTIVE.with(|a| a.get())
    }

    fn load_root(root: u64) {
        ACTIVE.with(|a| a.set(root))
    }

    fn write_phys(pa: PhysAddr, bytes: &[u8]) {
        let s = check_range(pa, bytes.len());
        PHYS.with(|m| m.borrow_mut()[s..s + bytes.len()].copy_from_slice(bytes));
    }

    fn read_phys(pa: PhysAddr, buf: &mut [u8]) {
        let s = check_range(pa, buf.len());
        PHYS.with(|m| buf.copy_from_slice(&m.borrow()[s..s + buf.len()]));
    }

    fn read_words(pa: PhysAddr, out: &mut [u64]) {
        let mut b = alloc::vec![0u8; out.len() * 8];
        Self::read_phys(pa, &mut b);
        for (w, c) in out.iter_mut().zip(b.chunks_exact(8)) {
            *w = u64::from_le_bytes(c.try_into().unwrap());
        }
    }

    fn write_words(pa: PhysAddr, words: &[u64]) {
        let b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        Self::write_phys(pa, &b);
    }

    fn copy_words(dst: PhysAddr, src: PhysAddr, n: usize) {
        let mut w = alloc::vec![0u64; n];
        Self::read_words(src, &mut w);
        Self::write_words(dst, &w);
    }

    fn console_write(bytes: &[u8]) {
        CONSOLE.with(|c| c.borrow_mut().extend_from_slice(bytes));
    }

    fn console_write_raw(bytes: &[u8]) {
        CONSOLE.with(|c| c.borrow_mut().extend_from_slice(bytes));
        RAW.with(|r| r.borrow_mut().extend_from_slice(bytes));
    }

    const CONSOLE_LINE: Option<u8> = Some(4);

    fn console_read(buf: &mut [u8]) -> usize {
        CONSOLE_IN.with(|c| {
            let mut c = c.borrow_mut();
            let n = buf.len().min(c.len());
            for (b, x) in buf.iter_mut().zip(c.drain(..n)) {
                *b = x;
            }
            n
        })
    }

    fn set_entry_frame(frame: u64) {
        ENTRY_FRAME.with(|f| f.set(frame));
    }

    fn set_user_gs(_: u64) {}

    fn set_user_fs(_: u64) {}

    fn set_timer(deadline: u64) {
        TIMER.with(|t| t.set(deadline));
    }

    fn fpu_trap(on: bool) {
        FPU_TRAPS.with(|f| f.set(on));
    }

    fn io_load(_: &[u8; IO_BITMAP_BYTES]) {}

    fn io_disable() {}

    fn guest_regions(s: &mut FakeSpace, regions: &GuestRegions) -> Result<(), MapError> {
        s.guest = Some(*regions);
        Ok(())
    }

    fn world_root(s: &mut FakeSpace, guest: u64, regions: &GuestRegions) -> Result<u64, MapError> {
        let root = s.world.map_or_else(next_root, |w| w.0);
        s.world = Some((root, guest, *regions));
        Ok(root)
    }

    fn set_world(w: Option<&WorldExit>) {
        WORLD.with(|c| c.set(w.copied()));
    }

    fn line_mask(_: u8) {}

    fn line_unmask(line: u8) {
        UNMASKED.with(|u| u.borrow_mut().push(line));
    }
}

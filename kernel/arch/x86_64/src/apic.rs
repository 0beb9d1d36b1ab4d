//! Interrupt hardware: the legacy PIC (remapped and masked), the local APIC and its timer,
//! calibrated against the PIT, which also gives us the TSC frequency.

use crate::paging::phys_to_virt;
use crate::trap::{PIC_BASE, SPURIOUS_VECTOR, TIMER_VECTOR};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel_core::mem::PhysAddr;
use x86_64::instructions::port::Port;

pub const APIC_PHYS: u64 = 0xfee0_0000;

const REG_EOI: usize = 0xb0;
const REG_SPURIOUS: usize = 0xf0;
const REG_LVT_TIMER: usize = 0x320;
const REG_LVT_LINT0: usize = 0x350;
/// LVT delivery mode ExtINT: the interrupt's vector comes from the PIC (virtual-wire mode).
const DELIVERY_EXTINT: u32 = 0b111 << 8;
const REG_TIMER_INIT: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3e0;
const MASKED: u32 = 1 << 16;

fn reg(off: usize) -> *mut u32 {
    phys_to_virt(PhysAddr(APIC_PHYS + off as u64)) as *mut u32
}

fn read(off: usize) -> u32 {
    // SAFETY: the APIC page is mapped uncached in the direct map; registers are 32-bit aligned.
    unsafe { reg(off).read_volatile() }
}

fn write(off: usize, v: u32) {
    // SAFETY: as in `read`; writes to APIC registers only affect interrupt delivery.
    unsafe { reg(off).write_volatile(v) }
}

fn outb(port: u16, v: u8) {
    // SAFETY: the PIC and PIT ports are owned by this module; writes program those chips only.
    unsafe { Port::<u8>::new(port).write(v) }
}

fn inb(port: u16) -> u8 {
    // SAFETY: as in `outb`.
    unsafe { Port::<u8>::new(port).read() }
}

/// Moves the PIC's vectors away from the exceptions and masks every line.
fn disable_pic() {
    for (cmd, data, base, cascade) in [(0x20, 0x21, PIC_BASE, 4), (0xa0, 0xa1, PIC_BASE + 8, 2)] {
        outb(cmd, 0x11);
        outb(data, base);
        outb(data, cascade);
        outb(data, 0x01);
        outb(data, 0xff);
    }
}

/// Counts TSC cycles and APIC timer ticks across 10 ms of PIT channel 2.
fn calibrate() -> (u64, u64) {
    const PIT_HZ: u64 = 1_193_182;
    const MS: u64 = 10;
    let count = (PIT_HZ * MS / 1000) as u16;
    // Gate channel 2 on, speaker off; mode 0 (interrupt on terminal count), binary.
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0b1011_0000);
    outb(0x42, count as u8);
    outb(0x42, (count >> 8) as u8);
    write(REG_TIMER_DIVIDE, 0b1011); // divide by 1
    write(REG_LVT_TIMER, MASKED);
    // Restart the count by toggling the gate, then start both clocks.
    let g = inb(0x61) & !0x01;
    outb(0x61, g);
    outb(0x61, g | 0x01);
    write(REG_TIMER_INIT, u32::MAX);
    let t0 = crate::cpu::rdtsc();
    while inb(0x61) & 0x20 == 0 {}
    let t1 = crate::cpu::rdtsc();
    let ticks = u32::MAX - read(REG_TIMER_CURRENT);
    write(REG_TIMER_INIT, 0);
    ((t1 - t0) * 1000 / MS, ticks as u64 * 1000 / MS)
}

/// Frequencies found at boot.
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    pub tsc_hz: u64,
    pub apic_hz: u64,
}

static TSC_HZ: AtomicU64 = AtomicU64::new(1);
static APIC_HZ: AtomicU64 = AtomicU64::new(1);

/// Enables the local APIC with its timer in one-shot mode; the first interrupt comes after
/// one tick (`tick_hz`), later ones when the kernel asks ([`set_deadline`]). The PIC's lines
/// (all masked until unmasked one by one) reach the CPU through LINT0 in virtual-wire mode.
pub fn init(tick_hz: u64) -> Clocks {
    disable_pic();
    write(REG_SPURIOUS, 0x100 | SPURIOUS_VECTOR as u32);
    write(REG_LVT_LINT0, DELIVERY_EXTINT);
    let (tsc_hz, apic_hz) = calibrate();
    TSC_HZ.store(tsc_hz.max(1), Ordering::Relaxed);
    APIC_HZ.store(apic_hz.max(1), Ordering::Relaxed);
    write(REG_TIMER_DIVIDE, 0b1011);
    write(REG_LVT_TIMER, TIMER_VECTOR as u32);
    write(REG_TIMER_INIT, (apic_hz / tick_hz).max(1) as u32);
    Clocks { tsc_hz, apic_hz }
}

/// Programs the next timer interrupt for TSC time `deadline` (at once if it has passed;
/// `u64::MAX`: none).
pub fn set_deadline(deadline: u64) {
    if deadline == u64::MAX {
        // Nothing due: a one-shot count of 0 stops the timer.
        write(REG_TIMER_INIT, 0);
        return;
    }
    let delta = deadline.saturating_sub(crate::cpu::rdtsc()) as u128;
    let ticks = delta * APIC_HZ.load(Ordering::Relaxed) as u128 / TSC_HZ.load(Ordering::Relaxed) as u128;
    write(REG_TIMER_INIT, ticks.clamp(1, u32::MAX as u128) as u32);
}

/// Signals end of interrupt to the local APIC.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Masks legacy interrupt line `line` (0..16) at the PIC.
pub fn pic_mask(line: u8) {
    let port = if line < 8 { 0x21 } else { 0xa1 };
    outb(port, inb(port) | 1 << (line % 8));
}

/// Unmasks legacy interrupt line `line` at the PIC (and the cascade for lines 8..16).
pub fn pic_unmask(line: u8) {
    if line >= 8 {
        outb(0x21, inb(0x21) & !(1 << 2));
    }
    let port = if line < 8 { 0x21 } else { 0xa1 };
    outb(port, inb(port) & !(1 << (line % 8)));
}

/// Ends an interrupt of legacy line `line` at the PIC(s).
pub fn pic_eoi(line: u8) {
    if line >= 8 {
        outb(0xa0, 0x20);
    }
    outb(0x20, 0x20);
}

/// True if the PIC really has `line` in service (false: a spurious IRQ 7 or 15).
pub fn pic_in_service(line: u8) -> bool {
    let (cmd, bit) = if line < 8 { (0x20, line) } else { (0xa0, line - 8) };
    outb(cmd, 0x0b); // read ISR
    inb(cmd) & (1 << bit) != 0
}

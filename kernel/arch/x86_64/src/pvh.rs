//! The PVH boot information (`struct hvm_start_info`, Xen's public ABI), read through the boot
//! identity map before the final page tables replace it.

use kernel_core::mem::PhysRange;

const START_MAGIC: u32 = 0x336e_c578;
const MEMMAP_RAM: u32 = 1;
pub const MAX_RAM_RANGES: usize = 32;
pub const CMDLINE_MAX: usize = 512;

/// What the boot loader told us, copied out of its memory.
pub struct BootInfo {
    pub ram: [PhysRange; MAX_RAM_RANGES],
    pub ram_count: usize,
    /// The boot image (first PVH module), physical.
    pub module: Option<PhysRange>,
    pub cmdline: [u8; CMDLINE_MAX],
    pub cmdline_len: usize,
}

impl BootInfo {
    pub fn ram(&self) -> &[PhysRange] {
        &self.ram[..self.ram_count]
    }

    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }
}

/// Reads `T` at a physical address below 1 GiB (identity mapped during boot).
fn read<T: Copy>(pa: u64) -> T {
    assert!(pa < (1 << 30), "boot information above the identity-mapped GiB");
    // SAFETY: the boot page tables identity-map the first GiB, and the loader placed the
    // start info there; unaligned reads are used since the loader guarantees nothing more.
    unsafe { (pa as *const T).read_unaligned() }
}

/// Parses the start info at physical `start`. Panics (the kernel cannot go on) if it is not one.
pub fn parse(start: u64) -> BootInfo {
    let magic: u32 = read(start);
    assert_eq!(magic, START_MAGIC, "not booted through PVH (bad start-info magic)");
    let version: u32 = read(start + 4);
    let nr_modules: u32 = read(start + 12);
    let modlist: u64 = read(start + 16);
    let cmdline: u64 = read(start + 24);
    let mut info = BootInfo {
        ram: [PhysRange::new(0, 0); MAX_RAM_RANGES],
        ram_count: 0,
        module: None,
        cmdline: [0; CMDLINE_MAX],
        cmdline_len: 0,
    };
    if nr_modules > 0 {
        let (addr, size): (u64, u64) = (read(modlist), read(modlist + 8));
        info.module = Some(PhysRange::new(addr, addr + size));
    }
    if cmdline != 0 {
        while info.cmdline_len < CMDLINE_MAX {
            let c: u8 = read(cmdline + info.cmdline_len as u64);
            if c == 0 {
                break;
            }
            info.cmdline[info.cmdline_len] = c;
            info.cmdline_len += 1;
        }
    }
    assert!(version >= 1, "PVH start info v{version} has no memory map");
    let (memmap, entries): (u64, u32) = (read(start + 40), read(start + 48));
    for i in 0..entries as u64 {
        let e = memmap + i * 24;
        let (addr, size, typ): (u64, u64, u32) = (read(e), read(e + 8), read(e + 16));
        if typ == MEMMAP_RAM && info.ram_count < MAX_RAM_RANGES {
            info.ram[info.ram_count] = PhysRange::new(addr, addr + size);
            info.ram_count += 1;
        }
    }
    info
}

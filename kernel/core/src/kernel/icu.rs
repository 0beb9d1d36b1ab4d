//! The interrupt controller object: legacy PIC lines 0..16 bound to Irq objects. A line is
//! masked when it fires and unmasked again by `Irq::Unmask`. The console's input line
//! (`Arch::CONSOLE_LINE`) is the kernel's: it cannot be bound, and the kernel unmasks it itself
//! after draining the device (`console.rs`).

use crate::hal::Arch;
use crate::kernel::Kernel;

pub const LINES: usize = 16;
/// Lines the kernel keeps for itself: the PIT (0) and the cascade (2).
const RESERVED: [u8; 2] = [0, 2];

pub fn valid_line(line: u64) -> Option<u8> {
    (line < LINES as u64 && !RESERVED.contains(&(line as u8))).then_some(line as u8)
}

impl<A: Arch> Kernel<A> {
    /// A hardware line fired: raise its Irq (it stays masked until unmasked), or take console
    /// input.
    pub fn line_fired(&mut self, line: u8) {
        if Some(line) == A::CONSOLE_LINE {
            self.console_input();
            return;
        }
        match self.lines[line as usize] {
            Some(irq) => {
                let _ = self.trigger_irq(irq);
            }
            None => log::warn!("interrupt on unbound line {line}"),
        }
    }
}

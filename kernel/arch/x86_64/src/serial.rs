//! The 16550 UART on COM1: the kernel console, and the `log` backend. Output is polled; input
//! raises the UART's receive interrupt on PIC line [`LINE`], which the kernel drains with
//! [`Serial::read_bytes`] (`Arch::console_read`).

use spin::Mutex;
use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;
/// COM1's legacy interrupt line.
pub const LINE: u8 = 4;
/// Line status: received data ready.
const LSR_DATA_READY: u8 = 0x01;
/// Line status: transmit holding register empty.
const LSR_THR_EMPTY: u8 = 0x20;
/// Interrupt identification: both bits set while the FIFOs are on.
const IIR_FIFOS_ON: u8 = 0xc0;

pub struct Serial {
    data: Port<u8>,
    line_status: Port<u8>,
}

impl Serial {
    const fn new() -> Self {
        Serial { data: Port::new(COM1), line_status: Port::new(COM1 + 5) }
    }

    fn init(&mut self) {
        // Input may be waiting already (QEMU delivers its serial input from the start); it
        // stays: nothing here clears the receiver. Switching the FIFOs on or off would (and the
        // one byte QEMU holds while they are off would go), so they stay as the firmware left
        // them: with them on, the receive interrupt comes at every byte; with them off
        // (QEMU's qboot), one byte at a time is held and the next waits in QEMU.
        // SAFETY: reading IIR of COM1 only reports (and acknowledges) a transmit interrupt.
        let fifos_on = unsafe { Port::<u8>::new(COM1 + 2).read() } & IIR_FIFOS_ON == IIR_FIFOS_ON;
        // FIFOs as they were (trigger level 1), nothing cleared.
        let fcr = if fifos_on { 0x01 } else { 0x00 };
        let regs: [(u16, u8); 7] = [
            (1, 0x00), // no UART interrupts until `enable_input`
            (3, 0x80), // divisor latch access
            (0, 0x01), // 115200 baud
            (1, 0x00),
            (3, 0x03), // 8N1
            (2, fcr),
            (4, 0x0b), // DTR, RTS, OUT2: OUT2 gates the UART's interrupt onto its line
        ];
        for (off, val) in regs {
            // SAFETY: COM1's registers are owned by this driver; writes configure the UART only.
            unsafe { Port::<u8>::new(COM1 + off).write(val) };
        }
    }

    /// Enables the receive interrupt (output stays polled). Called once its PIC line is set up:
    /// with input already waiting, the line rises now, an edge the (initialised) PIC sees.
    fn enable_input(&mut self) {
        // SAFETY: writing IER of COM1 only selects which UART conditions interrupt.
        unsafe { Port::<u8>::new(COM1 + 1).write(0x01) };
    }

    fn data_ready(&mut self) -> bool {
        // SAFETY: reading LSR of COM1 has no effect beyond the UART.
        unsafe { self.line_status.read() & LSR_DATA_READY != 0 }
    }

    /// Moves received bytes into `buf`, until it is full or the UART has no more (which clears
    /// its receive interrupt); returns how many.
    pub fn read_bytes(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() && self.data_ready() {
            // SAFETY: reading RBR of COM1 takes one received byte; no effect beyond the UART.
            buf[n] = unsafe { self.data.read() };
            n += 1;
        }
        n
    }

    pub fn write_byte(&mut self, b: u8) {
        // SAFETY: reading LSR and writing THR of COM1 have no effect beyond the UART.
        unsafe {
            while self.line_status.read() & LSR_THR_EMPTY == 0 {}
            self.data.write(b);
        }
    }

    /// Writes text: `\n` goes out as `\r\n`.
    pub fn write_bytes(&mut self, s: &[u8]) {
        for &b in s {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
    }

    /// Writes exactly these bytes.
    pub fn write_raw(&mut self, s: &[u8]) {
        for &b in s {
            self.write_byte(b);
        }
    }
}

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

pub static SERIAL: Mutex<Serial> = Mutex::new(Serial::new());

/// Runs `f` with the console. In a fault path the lock may be held by the code that faulted;
/// then we take it anyway, since a garbled line beats a silent death.
pub fn with_console<R>(f: impl FnOnce(&mut Serial) -> R) -> R {
    if let Some(mut s) = SERIAL.try_lock() {
        return f(&mut s);
    }
    // SAFETY: only reached when the lock is held on this (single) CPU by code that cannot run
    // again until we return, i.e. a fault inside the console path; the UART tolerates it.
    unsafe { SERIAL.force_unlock() };
    f(&mut SERIAL.lock())
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, r: &log::Record) {
        use core::fmt::Write;
        let level = match r.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            log::Level::Info => "",
            log::Level::Debug | log::Level::Trace => "[debug] ",
        };
        with_console(|s| {
            let _ = writeln!(s, "kernel: {level}{}", r.args());
        });
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Enables console input: the UART's receive interrupt on [`LINE`], which must be unmasked.
pub fn enable_input() {
    SERIAL.lock().enable_input();
}

/// Brings up the UART for output (input comes with [`enable_input`]) and installs the logger.
pub fn init(max_level: log::LevelFilter) {
    SERIAL.lock().init();
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(max_level);
}

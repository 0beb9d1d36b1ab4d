//! The 16550 UART on COM1: the kernel console, and the `log` backend.

use spin::Mutex;
use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;

pub struct Serial {
    data: Port<u8>,
    line_status: Port<u8>,
}

impl Serial {
    const fn new() -> Self {
        Serial { data: Port::new(COM1), line_status: Port::new(COM1 + 5) }
    }

    fn init(&mut self) {
        let regs: [(u16, u8); 6] = [
            (1, 0x00), // no UART interrupts: the console is polled
            (3, 0x80), // divisor latch access
            (0, 0x01), // 115200 baud
            (1, 0x00),
            (3, 0x03), // 8N1
            (2, 0xc7), // FIFOs on, cleared
        ];
        for (off, val) in regs {
            // SAFETY: COM1's registers are owned by this driver; writes configure the UART only.
            unsafe { Port::<u8>::new(COM1 + off).write(val) };
        }
    }

    pub fn write_byte(&mut self, b: u8) {
        // SAFETY: reading LSR and writing THR of COM1 have no effect beyond the UART.
        unsafe {
            while self.line_status.read() & 0x20 == 0 {}
            self.data.write(b);
        }
    }

    pub fn write_bytes(&mut self, s: &[u8]) {
        for &b in s {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
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

/// Brings up the UART and installs the logger.
pub fn init(max_level: log::LevelFilter) {
    SERIAL.lock().init();
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(max_level);
}

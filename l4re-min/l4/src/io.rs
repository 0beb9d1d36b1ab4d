//! The console through the kernel's Log object: output (`print!`, `println!`, a `log` backend)
//! and, for the one terminal task, input ([`terminal`], [`read`]).

use abi::cap::well_known;
use abi::proto::log as vlog;
use abi::utcb::MR_COUNT;
use abi::CapIdx;
use core::fmt::Write;

/// Bytes one Log::Write carries: MR[2..].
const CHUNK: usize = (MR_COUNT - 2) * 8;

/// Writes bytes to the console (lines get our task name as prefix from the kernel, unless we are
/// the terminal: then they go out exactly as given).
pub fn write(bytes: &[u8]) -> Result<(), abi::Error> {
    for chunk in bytes.chunks(CHUNK) {
        let mut words = [0u64; MR_COUNT];
        words[0] = vlog::Op::Write.code();
        words[1] = chunk.len() as u64;
        let n = abi::utcb::pack_bytes(chunk, &mut words[2..]);
        crate::sys::call_words(well_known::LOG, vlog::LABEL, &words[..2 + n])?;
    }
    Ok(())
}

/// Makes our task the console's terminal (`Log::Terminal`): our output goes out raw, and `irq`
/// (an Irq capability of ours) is triggered whenever input arrives — at once if some is waiting.
/// Calling again changes the Irq. `Error::Exists` while another task is the terminal.
pub fn terminal(irq: Option<CapIdx>) -> Result<(), abi::Error> {
    let arg = irq.map_or(0, |c| c.0);
    crate::sys::call_words(well_known::LOG, vlog::LABEL, &[vlog::Op::Terminal.code(), arg]).map(|_| ())
}

/// Gives up the terminal role (`Log::Terminal` with `TERMINAL_RELEASE`).
pub fn release_terminal() -> Result<(), abi::Error> {
    let words = [vlog::Op::Terminal.code(), abi::proto::TERMINAL_RELEASE];
    crate::sys::call_words(well_known::LOG, vlog::LABEL, &words).map(|_| ())
}

/// Takes waiting console input into `buf` (`Log::Read`, terminal only, never blocks); returns
/// the number of bytes, 0 if none are waiting. At most `abi::proto::LOG_READ_MAX` per call; no
/// byte is lost to a short `buf`.
pub fn read(buf: &mut [u8]) -> Result<usize, abi::Error> {
    let want = buf.len().min(abi::proto::LOG_READ_MAX);
    crate::sys::call_words(well_known::LOG, vlog::LABEL, &[vlog::Op::Read.code(), want as u64])?;
    let n = (crate::ipc::mr(0) as usize).min(want);
    let mut words = [0u64; MR_COUNT - 1];
    for (i, w) in words.iter_mut().enumerate().take(n.div_ceil(8)) {
        *w = crate::ipc::mr(1 + i);
    }
    abi::utcb::unpack_bytes(&words, &mut buf[..n]);
    Ok(n)
}

pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write(s.as_bytes()).map_err(|_| core::fmt::Error)
    }
}

/// Formats into a line buffer first so that a line leaves in as few system calls as possible.
pub fn print_fmt(args: core::fmt::Arguments) {
    struct Buf {
        b: [u8; 512],
        n: usize,
    }
    impl Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for &c in s.as_bytes() {
                if self.n == self.b.len() {
                    let _ = write(&self.b);
                    self.n = 0;
                }
                self.b[self.n] = c;
                self.n += 1;
            }
            Ok(())
        }
    }
    let mut b = Buf { b: [0; 512], n: 0 };
    let _ = b.write_fmt(args);
    let _ = write(&b.b[..b.n]);
}

#[macro_export]
macro_rules! print {
    ($($a:tt)*) => { $crate::io::print_fmt(format_args!($($a)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($a:tt)*) => { $crate::io::print_fmt(format_args!("{}\n", format_args!($($a)*))) };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, r: &log::Record) {
        crate::println!("[{}] {}", r.level(), r.args());
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

pub fn init_logger() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

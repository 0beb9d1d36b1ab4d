//! The console's terminal (`Log::Terminal`, `Log::Read`), end to end: a line typed before we
//! take the role waits in the kernel and its Irq comes with `Terminal`; a line typed after our
//! ready marker comes through the serial interrupt. Each is printed back as `echo: LINE`,
//! unprefixed (the terminal's output is raw); after releasing the role our lines carry our name
//! again.

use crate::objects::{check, expect_err, ok, R};
use abi::cap::well_known as wk;
use abi::syscall::timeout;
use abi::{CapIdx, Error};
use l4::ipc::{self, factory, irq};
use l4::{io, println};

const IRQ: CapIdx = CapIdx(20);
const LABEL: u64 = 0x7e;
/// How long to wait for typed input.
const INPUT_WAIT_US: u32 = 30_000_000;

pub fn run() -> R {
    let mut buf = [0u8; 64];
    expect_err(io::read(&mut buf), Error::Perm, "read before Terminal")?;
    println!("terminal: read before Terminal -> Perm ok");
    ok(factory::irq(wk::FACTORY, IRQ), "create the irq")?;
    ok(irq::attach(IRQ, wk::THREAD, LABEL), "attach the irq")?;
    // The scenario types its first line at boot: give it time to reach the kernel's buffer.
    crate::spin_for_ms(300);
    ok(io::terminal(Some(IRQ)), "Terminal")?;
    // Raw from here on: no name prefix.
    match ipc::receive(IRQ, timeout::pack(0, timeout::ZERO)) {
        Ok((_, label)) => {
            check(label == LABEL, "the irq's label")?;
            println!("input was waiting: the Irq came with Terminal");
        }
        Err(Error::Timeout) => println!("no input waiting at Terminal; type a line"),
        Err(_) => return Err("receive from the irq failed"),
    }
    let mut input = Input { buf: [0; 16], at: 0, len: 0 };
    let mut line = [0u8; 128];
    let n = input.line(&mut line)?;
    println!("echo: {}", core::str::from_utf8(&line[..n]).unwrap_or("(not UTF-8)"));
    println!("terminal ready");
    let n = input.line(&mut line)?;
    println!("echo: {}", core::str::from_utf8(&line[..n]).unwrap_or("(not UTF-8)"));
    // Another task could take the role now; we are prefixed again.
    ok(io::release_terminal(), "release the terminal")?;
    expect_err(io::read(&mut buf), Error::Perm, "read after releasing")?;
    println!("terminal released");
    Ok(())
}

/// Console input, read in small pieces (so that lines span reads).
struct Input {
    buf: [u8; 16],
    at: usize,
    len: usize,
}

impl Input {
    /// The next byte; waits for the Irq whenever nothing is buffered.
    fn byte(&mut self) -> Result<u8, &'static str> {
        while self.at == self.len {
            self.len = ok(io::read(&mut self.buf), "Read")?;
            self.at = 0;
            if self.len == 0 {
                match ipc::receive(IRQ, timeout::pack(0, INPUT_WAIT_US)) {
                    Ok(_) => {}
                    Err(Error::Timeout) => return Err("no console input arrived"),
                    Err(_) => return Err("receive from the irq failed"),
                }
            }
        }
        self.at += 1;
        Ok(self.buf[self.at - 1])
    }

    /// A non-empty line into `out` (its end, `\n` or `\r`, not stored); returns its length.
    fn line(&mut self, out: &mut [u8]) -> Result<usize, &'static str> {
        let mut n = 0;
        loop {
            match self.byte()? {
                b'\n' | b'\r' if n > 0 => return Ok(n),
                b'\n' | b'\r' => {}
                _ if n == out.len() => return Err("input line too long"),
                b => {
                    out[n] = b;
                    n += 1;
                }
            }
        }
    }
}

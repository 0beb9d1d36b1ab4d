//! The kernel console's input side (Fiasco's vcon): the console's interrupt line belongs to the
//! kernel, which drains the device into a bounded buffer and tells the console's *terminal* task
//! through its Irq. The terminal reads the buffer with `Log::Read`; its `Log::Write` output goes
//! out raw. The rules are in `docs/abi.md` ("Console input"); the operations are in `invoke.rs`.

use crate::hal::Arch;
use crate::kernel::Kernel;
use crate::slab::Id;
use abi::proto::CONSOLE_INPUT_BUFFER;
use alloc::collections::VecDeque;

/// The task that owns console input, and the Irq that tells it of new input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Terminal {
    pub task: Id,
    pub irq: Option<Id>,
}

/// Console input waiting for the terminal, and who the terminal is.
pub struct Console {
    input: VecDeque<u8>,
    /// Bytes dropped because the buffer was full (the newest ones), since boot.
    pub dropped: u64,
    /// A drop was reported since the terminal last read (one console line per episode).
    reported: bool,
    pub terminal: Option<Terminal>,
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Console {
    pub const fn new() -> Self {
        Console { input: VecDeque::new(), dropped: 0, reported: false, terminal: None }
    }

    /// Buffers `bytes` as far as there is room; returns how many were dropped.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let room = CONSOLE_INPUT_BUFFER - self.input.len();
        let take = bytes.len().min(room);
        self.input.extend(&bytes[..take]);
        let lost = bytes.len() - take;
        self.dropped += lost as u64;
        lost
    }

    /// Moves the oldest waiting bytes into `out`; returns how many.
    pub fn take(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.input.len());
        for (o, b) in out.iter_mut().zip(self.input.drain(..n)) {
            *o = b;
        }
        self.reported = false;
        n
    }

    /// Bytes waiting.
    pub fn waiting(&self) -> usize {
        self.input.len()
    }

    /// The terminal's task, if there is a terminal.
    pub fn terminal_task(&self) -> Option<Id> {
        self.terminal.map(|t| t.task)
    }
}

impl<A: Arch> Kernel<A> {
    /// The console's line fired: drains the device into the buffer (all of it: the line only
    /// fires again once the device's interrupt condition was cleared), re-enables the line and
    /// triggers the terminal's Irq if anything came.
    pub fn console_input(&mut self) {
        let Some(line) = A::CONSOLE_LINE else { return };
        let mut chunk = [0u8; 64];
        let (mut got, mut lost) = (0, 0);
        loop {
            let n = A::console_read(&mut chunk);
            got += n;
            lost += self.console.push(&chunk[..n]);
            if n < chunk.len() {
                break;
            }
        }
        A::line_unmask(line);
        if lost > 0 && !self.console.reported {
            self.console.reported = true;
            log::warn!(
                "console input buffer full ({CONSOLE_INPUT_BUFFER} bytes unread): input dropped ({} bytes so far)",
                self.console.dropped
            );
        }
        if got > 0 {
            self.console_notify();
        }
    }

    /// Triggers the terminal's Irq, if it has one.
    pub(crate) fn console_notify(&mut self) {
        if let Some(Terminal { irq: Some(i), .. }) = self.console.terminal {
            let _ = self.trigger_irq(i);
        }
    }

    /// A task is being deleted: if it was the terminal, the console has none any more.
    pub(crate) fn console_task_gone(&mut self, task: Id) {
        if self.console.terminal_task() == Some(task) {
            self.console.terminal = None;
        }
    }

    /// An Irq is being deleted: the terminal keeps its role without it.
    pub(crate) fn console_irq_gone(&mut self, irq: Id) {
        if let Some(t) = self.console.terminal.as_mut() {
            if t.irq == Some(irq) {
                t.irq = None;
            }
        }
    }
}

//! Booting things in QEMU: the machine definition shared by every scenario, an interactive runner,
//! and the test harness (serial markers in order, a time limit, the guest's exit status).
//!
//! Exit status protocol: the guest writes a status `v` to the isa-debug-exit port (0xf4) and QEMU
//! exits with `(v << 1) | 1`. A guest status of 0 means success. QEMU exiting by itself (code 0)
//! means the guest never reported.

use crate::util::{err, root, step, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What to boot.
#[derive(Clone, Debug)]
pub struct Machine {
    /// The kernel image passed as `-kernel` (PVH ELF or bzImage).
    pub kernel: PathBuf,
    /// Passed as `-initrd` (our boot image, or a Linux initramfs).
    pub initrd: Option<PathBuf>,
    /// Kernel command line (`-append`).
    pub append: String,
    pub memory_mib: u32,
    /// Extra QEMU arguments, appended last.
    pub extra: Vec<String>,
}

impl Machine {
    pub fn new(kernel: PathBuf) -> Self {
        Machine { kernel, initrd: None, append: String::new(), memory_mib: 256, extra: Vec::new() }
    }

    /// The QEMU command for this machine; the serial line goes to stdio.
    pub fn command(&self, interactive: bool) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        // TCG only (see docs/environment): the default CPU model is the fastest under TCG; with
        // 1 GiB pages, which TCG emulates and every x86-64 CPU since ~2010 has, page walks read
        // fewer table pages (kernel/arch/x86_64/src/paging.rs).
        c.args(["-accel", "tcg", "-machine", "pc", "-smp", "1", "-cpu", "qemu64,+pdpe1gb"]);
        c.args(["-no-reboot", "-display", "none"]);
        c.args(["-m", &format!("{}M", self.memory_mib)]);
        c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        let qboot = "/usr/share/qemu/qboot.rom";
        if std::path::Path::new(qboot).exists() {
            c.args(["-bios", qboot]);
        }
        if interactive {
            // mon:stdio multiplexes the monitor: Ctrl-A X quits, Ctrl-A C opens the monitor.
            c.args(["-serial", "mon:stdio"]);
        } else {
            c.args(["-serial", "stdio", "-monitor", "none"]);
        }
        c.arg("-kernel").arg(&self.kernel);
        if let Some(i) = &self.initrd {
            c.arg("-initrd").arg(i);
        }
        if !self.append.is_empty() {
            c.args(["-append", &self.append]);
        }
        c.args(&self.extra);
        c
    }
}

/// Maps QEMU's process exit code to the guest's reported status, if it reported one.
pub fn guest_status(qemu_code: i32) -> Option<i32> {
    (qemu_code & 1 == 1).then_some(qemu_code >> 1)
}

/// Boots `m` with the serial console on the terminal; returns the guest's status.
pub fn run_interactive(m: &Machine, gdb: bool) -> Result<i32> {
    let mut cmd = m.command(true);
    if gdb {
        cmd.args(["-s", "-S"]);
        step("QEMU waits for a debugger: gdb -ex 'target remote :1234' target/kernel/x86_64-unknown-none/release/kernel");
    }
    step("booting (Ctrl-A X quits QEMU)");
    let status = cmd.status().map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let code = status.code().unwrap_or(-1);
    match guest_status(code) {
        Some(s) => Ok(s),
        None if code == 0 => Ok(0),
        None => err(format!("QEMU failed ({status})")),
    }
}

/// A boot judged by its serial output and exit status.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub machine: Machine,
    /// Substrings that must appear on the serial line, in this order.
    pub markers: Vec<String>,
    /// Substrings that must not appear anywhere.
    pub forbidden: Vec<String>,
    /// Guest status expected at exit (isa-debug-exit); `None`: stop QEMU once all markers are seen.
    pub expect_status: Option<i32>,
    pub timeout: Duration,
    /// Written to the guest's serial input once QEMU has started.
    pub input: Option<String>,
    /// `(marker, text)`: `text` is written to the guest's serial input once `marker` appeared
    /// on the serial line (in this order), for input that must come after the guest is ready.
    pub input_after: Vec<(String, String)>,
}

impl Scenario {
    pub fn new(name: impl Into<String>, machine: Machine) -> Self {
        Scenario {
            name: name.into(),
            machine,
            markers: Vec::new(),
            forbidden: Vec::new(),
            expect_status: Some(0),
            timeout: Duration::from_secs(60),
            input: None,
            input_after: Vec::new(),
        }
    }
}

/// What a scenario run produced.
#[derive(Debug)]
pub struct Outcome {
    /// `None` if everything matched, else why not.
    pub failure: Option<String>,
    /// The whole serial log.
    pub log: String,
    pub elapsed: Duration,
    /// When each marker was first seen, counted from QEMU's start (host time).
    pub marker_times: Vec<Duration>,
    /// Where the log was saved.
    pub log_path: PathBuf,
}

impl Outcome {
    /// The last `n` lines of the log, for failure reports.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<_> = self.log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Boots a scenario and judges it. Never hangs: QEMU is killed at the time limit.
pub fn run_scenario(s: &Scenario) -> Result<Outcome> {
    let start = Instant::now();
    let mut cmd = s.machine.command(false);
    let typed = s.input.is_some() || !s.input_after.is_empty();
    cmd.stdin(if typed { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    // The guest's serial input: a writer keeps stdin open (closing it would end the guest's
    // console input) until this function returns and drops `input_tx`.
    let (input_tx, input_rx) = mpsc::channel::<String>();
    if let Some(mut stdin) = child.stdin.take() {
        std::thread::spawn(move || {
            for text in input_rx {
                if stdin.write_all(text.as_bytes()).and_then(|_| stdin.flush()).is_err() {
                    break;
                }
            }
        });
    }
    if let Some(input) = &s.input {
        let _ = input_tx.send(input.clone());
    }
    let mut next_input = 0;
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf).replace('\r', "");
                if tx.send(line).is_err() {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);

    let mut log = String::new();
    let mut next_marker = 0;
    let mut marker_times = Vec::new();
    let mut failure = None;
    let deadline = start + s.timeout;
    let mut exit_code = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            failure = Some(format!("time limit of {:?} reached", s.timeout));
            break;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
            Ok(line) => {
                log.push_str(&line);
                if let Some(bad) = s.forbidden.iter().find(|f| line.contains(f.as_str())) {
                    failure = Some(format!("forbidden output `{bad}`"));
                    break;
                }
                while next_marker < s.markers.len() && log.contains(s.markers[next_marker].as_str()) {
                    marker_times.push(start.elapsed());
                    next_marker += 1;
                }
                while let Some((marker, text)) = s.input_after.get(next_input) {
                    if !log.contains(marker.as_str()) {
                        break;
                    }
                    let _ = input_tx.send(text.clone());
                    next_input += 1;
                }
                if s.expect_status.is_none() && next_marker == s.markers.len() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(st) = child.try_wait()? {
                    exit_code = Some(st.code().unwrap_or(-1));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                exit_code = Some(child.wait()?.code().unwrap_or(-1));
                break;
            }
        }
        if exit_code.is_some() {
            // Drain what is still buffered.
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                log.push_str(&line);
            }
            break;
        }
    }
    if exit_code.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    if failure.is_none() {
        failure = judge(s, &log, exit_code);
    }
    let dir = root().join("target/qemu-logs");
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.join(format!("{}.log", s.name.replace(['/', ' '], "_")));
    std::fs::write(&log_path, &log)?;
    Ok(Outcome { failure, log, elapsed: start.elapsed(), marker_times, log_path })
}

/// Checks markers (in order) and the exit status against the expectation.
fn judge(s: &Scenario, log: &str, exit_code: Option<i32>) -> Option<String> {
    let mut pos = 0;
    for m in &s.markers {
        match log[pos..].find(m.as_str()) {
            Some(i) => pos += i + m.len(),
            None if log.contains(m.as_str()) => return Some(format!("marker `{m}` appeared out of order")),
            None => return Some(format!("marker `{m}` not seen")),
        }
    }
    let expected = s.expect_status?;
    match exit_code.map(|c| (c, guest_status(c))) {
        None => Some("QEMU did not exit".into()),
        Some((_, Some(st))) if st == expected => None,
        Some((_, Some(st))) => Some(format!("guest exited with status {st}, expected {expected}")),
        Some((c, None)) => Some(format!("QEMU exited with code {c} without a guest status")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(markers: &[&str], status: Option<i32>) -> Scenario {
        let mut s = Scenario::new("t", Machine::new(PathBuf::from("k")));
        s.markers = markers.iter().map(|m| m.to_string()).collect();
        s.expect_status = status;
        s
    }

    #[test]
    fn judge_checks_order_and_status() {
        let s = scenario(&["a", "b"], Some(0));
        assert_eq!(judge(&s, "a\nb\n", Some(1)), None);
        assert!(judge(&s, "b\na\n", Some(1)).unwrap().contains("out of order"));
        assert!(judge(&s, "a\n", Some(1)).unwrap().contains("not seen"));
        assert!(judge(&s, "a\nb\n", Some(5)).unwrap().contains("status 2"));
        assert!(judge(&s, "a\nb\n", Some(0)).unwrap().contains("without a guest status"));
        assert!(judge(&s, "a\nb\n", None).unwrap().contains("did not exit"));
        assert_eq!(judge(&scenario(&["a"], None), "a", None), None);
    }

    #[test]
    fn exit_code_mapping() {
        assert_eq!(guest_status(1), Some(0));
        assert_eq!(guest_status(7), Some(3));
        assert_eq!(guest_status(0), None);
    }
}

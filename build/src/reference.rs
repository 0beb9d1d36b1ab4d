//! The reference guest: Linux built from the pinned source ([`crate::linux`]) booted directly in
//! QEMU with the initramfs of [`crate::rootfs`]. Used by `run --reference`, `test` (the ABI suite,
//! `linux-ref/...`) and `bench` (system `linux-ref`).

use crate::bench::{median, Metric};
use crate::qemu::{self, Machine, Scenario};
use crate::report::Report;
use crate::rootfs::{self, Spec};
use crate::util::{err, step, Args, Result};
use std::time::Duration;

/// The first line /init prints: boot_to_shell is measured up to it.
const INIT_MARKER: &str = "l4rs-init: start";
/// Output that means the guest kernel died.
const PANIC: &str = "Kernel panic";
/// Guest memory: enough for python3 and the page-touch benchmark with room to spare.
const MEMORY_MIB: u32 = 1024;
/// Boots per benchmark run; each benchmark already takes a median inside the guest.
const BENCH_BOOTS: usize = 3;

/// The machine for `mode` (`shell`, `test`, `bench` or `exec`).
fn machine(kernel: &crate::linux::Kernel, image: &rootfs::Image, mode: &str) -> Machine {
    let mut m = Machine::new(kernel.image.clone());
    m.initrd = Some(image.initrd.clone());
    m.memory_mib = MEMORY_MIB;
    // quiet: the kernel's boot log over the emulated UART costs boot time. (No `mitigations=off`:
    // the kernel is built without them, see build/linux-configs/reference.config.) panic=-1
    // reboots at once on a panic, which ends QEMU (-no-reboot) instead of waiting for the timeout.
    m.append = format!("console=ttyS0 quiet panic=-1 l4rs.mode={mode}");
    m
}

/// `cargo xtask run --reference [--exec CMD] [--overlay DIR]... [--deb NAME]... [--rootfs CPIO]`.
pub fn cmd_run(mut a: Args) -> Result<i32> {
    let exec = a.value("--exec")?;
    let spec = rootfs::spec_from_args(&mut a)?;
    let mut extra = a.values("--qemu-arg")?;
    extra.extend(a.rest());
    a.finish()?;
    crate::setup::ensure()?;
    let kernel = crate::linux::build(&crate::linux::REFERENCE)?;
    let image = rootfs::assemble(&spec, "run")?;
    let Some(cmd) = exec else {
        let mut m = machine(&kernel, &image, "shell");
        m.extra = extra;
        return qemu::run_interactive(&m, false);
    };
    let image = rootfs::with_exec(&image, &cmd, "run-exec")?;
    let mut m = machine(&kernel, &image, "exec");
    m.extra = extra;
    step(format!("booting the reference guest to run: {cmd}"));
    // The serial line streams to our stdout as the command runs; QEMU's exit code carries the
    // command's status (isa-debug-exit), so no log parsing is needed.
    let status = m
        .command(false)
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    match status.code().and_then(qemu::guest_status) {
        Some(st) => Ok(st),
        None => err(format!("the guest did not report the command's status (QEMU: {status})")),
    }
}

/// One result line of the ABI suite.
#[derive(Debug, PartialEq)]
struct AbiResult {
    name: String,
    /// `None`: passed; else the failure reason.
    failure: Option<String>,
}

/// `PASS name` / `FAIL name: why` lines, in order of first appearance; the first failure of a
/// name stands (a later line for it, pass or fail, cannot hide it).
fn parse_abi(log: &str) -> Vec<AbiResult> {
    let mut out: Vec<AbiResult> = Vec::new();
    for line in log.lines().map(str::trim) {
        let r = if let Some(name) = line.strip_prefix("PASS ") {
            AbiResult { name: name.trim().to_string(), failure: None }
        } else if let Some(rest) = line.strip_prefix("FAIL ") {
            let (name, why) = rest.split_once(':').unwrap_or((rest, "failed"));
            AbiResult { name: name.trim().to_string(), failure: Some(why.trim().to_string()) }
        } else {
            continue;
        };
        match out.iter_mut().find(|o| o.name == r.name) {
            // A failure is never overwritten by a later pass of the same name.
            Some(o) => {
                if o.failure.is_none() {
                    *o = r;
                }
            }
            None => out.push(r),
        }
    }
    out
}

/// The runner's `N passed, N failed` line.
fn parse_summary(log: &str) -> Option<(usize, usize)> {
    log.lines().rev().find_map(|l| {
        let (p, f) = l.trim().split_once(" passed, ")?;
        Some((p.parse().ok()?, f.strip_suffix(" failed")?.parse().ok()?))
    })
}

/// Judges the suite against the tests put into the image: one verdict per expected test, plus
/// unexpected names and a summary that disagrees with the lines.
fn judge_abi(expected: &[String], log: &str) -> Vec<(String, Option<String>)> {
    let results = parse_abi(log);
    let mut v = Vec::new();
    for name in expected {
        let verdict = match results.iter().find(|r| &r.name == name) {
            Some(r) => r.failure.clone(),
            None => Some("no result line".to_string()),
        };
        v.push((name.clone(), verdict));
    }
    for r in results.iter().filter(|r| !expected.contains(&r.name)) {
        v.push((r.name.clone(), Some(format!("unexpected test in the output: {:?}", r.failure))));
    }
    let passed = results.iter().filter(|r| r.failure.is_none()).count();
    let summary = match parse_summary(log) {
        None => Some("no `N passed, N failed` line".to_string()),
        Some((p, f)) if p != passed || p + f != results.len() => Some(format!(
            "runner says {p} passed, {f} failed; the result lines say {passed} of {}",
            results.len()
        )),
        Some(_) => None,
    };
    v.push(("runner".to_string(), summary));
    v
}

/// `cargo xtask test`'s part: boots the reference guest in test mode and records each ABI test as
/// `linux-ref/abi/<name>`, plus an exec-mode boot checking that a status reaches the host.
pub fn run_tests(report: &mut Report, wanted: &dyn Fn(&str) -> bool) {
    // Also when the filter names one test (`--filter linux-ref/abi/memory`).
    let names = rootfs::abi_test_names().unwrap_or_default();
    let abi_wanted = |n: &str| wanted(&format!("linux-ref/abi/{n}"));
    let abi = wanted("linux-ref/abi") || names.iter().any(|n| abi_wanted(n));
    let exec = wanted("linux-ref/exec-status");
    if !abi && !exec {
        return;
    }
    step("reference guest: Linux kernel, rootfs, ABI suite");
    let kernel = match crate::linux::build(&crate::linux::REFERENCE) {
        Ok(k) => k,
        Err(e) => {
            report.fail("linux-ref/build-kernel", &e.to_string());
            return report.skip("linux-ref/abi", "the kernel did not build");
        }
    };
    let image = match rootfs::assemble(&Spec::default(), "test") {
        Ok(i) => i,
        Err(e) => return report.fail("linux-ref/rootfs", &e.to_string()),
    };
    if abi {
        abi_boot(report, &kernel, &image, &abi_wanted);
    }
    if exec {
        match rootfs::with_exec(&image, "echo exec-ok; exit 3", "test-exec") {
            Err(e) => report.fail("linux-ref/rootfs", &e.to_string()),
            Ok(image) => {
                let mut s = Scenario::new("linux-ref/exec-status", machine(&kernel, &image, "exec"));
                s.markers = vec![INIT_MARKER.into(), "exec-ok".into(), "l4rs-init: exit 3".into()];
                s.expect_status = Some(3);
                s.forbidden = vec![PANIC.into()];
                s.timeout = Duration::from_secs(120);
                match qemu::run_scenario(&s) {
                    Ok(o) => report.scenario("linux-ref/exec-status", &o),
                    Err(e) => report.fail("linux-ref/exec-status", &e.to_string()),
                }
            }
        }
    }
}

fn abi_boot(
    report: &mut Report,
    kernel: &crate::linux::Kernel,
    image: &rootfs::Image,
    wanted: &dyn Fn(&str) -> bool,
) {
    let mut s = Scenario::new("linux-ref/abi", machine(kernel, image, "test"));
    s.markers = vec![INIT_MARKER.into(), " passed, ".into()];
    s.forbidden = vec![PANIC.into()];
    s.timeout = Duration::from_secs(600);
    let o = match qemu::run_scenario(&s) {
        Ok(o) => o,
        Err(e) => return report.fail("linux-ref/abi/boot", &e.to_string()),
    };
    if let Some(why) = &o.failure {
        // The suite's own failures show below; this line says whether the boot itself went wrong.
        println!("linux-ref/abi boot: {why} (log {})", o.log_path.display());
    }
    let mut any_failed = false;
    for (name, verdict) in judge_abi(&image.abi_tests, &o.log) {
        if !wanted(&name) {
            continue;
        }
        let full = format!("linux-ref/abi/{name}");
        match verdict {
            None => report.pass(&full, ""),
            Some(why) => {
                any_failed = true;
                report.fail(&full, &why);
            }
        }
    }
    if any_failed {
        println!("---- last lines of {} ----\n{}\n----", o.log_path.display(), o.tail(30));
    }
}

/// `BENCH name value ns` lines.
fn parse_bench(log: &str) -> Vec<(String, f64)> {
    log.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next().and_then(|v| v.parse::<f64>().ok()), w.next()) {
                (Some("BENCH"), Some(n), Some(v), Some("ns")) => Some((n.to_string(), v)),
                _ => None,
            }
        })
        .collect()
}

/// `cargo xtask bench`'s part: [`BENCH_BOOTS`] boots in bench mode; medians across boots, and
/// boot_to_shell from QEMU's start to /init's first line.
pub fn metrics() -> Result<Vec<Metric>> {
    let kernel = crate::linux::build(&crate::linux::REFERENCE)?;
    let image = rootfs::assemble(&Spec::default(), "bench")?;
    let mut samples: Vec<(String, Vec<f64>)> = Vec::new();
    let mut add = |name: &str, v: f64| match samples.iter_mut().find(|(n, _)| n == name) {
        Some((_, vs)) => vs.push(v),
        None => samples.push((name.to_string(), vec![v])),
    };
    for boot in 1..=BENCH_BOOTS {
        step(format!("linux-ref: benchmark boot {boot}/{BENCH_BOOTS}"));
        let mut s = Scenario::new(format!("linux-ref-bench-{boot}"), machine(&kernel, &image, "bench"));
        s.markers = vec![INIT_MARKER.into()];
        s.forbidden = vec![PANIC.into()];
        s.timeout = Duration::from_secs(900);
        let o = qemu::run_scenario(&s)?;
        if let Some(why) = &o.failure {
            return err(format!("linux-ref benchmark boot {boot}: {why}\n{}", o.tail(20)));
        }
        for (name, v) in parse_bench(&o.log) {
            add(&name, v);
        }
        if let Some(t) = o.marker_times.first() {
            add("boot_to_shell", t.as_secs_f64() * 1000.0);
        }
    }
    let mut out = Vec::new();
    for w in crate::bench::LINUX_WORKLOADS {
        let Some((_, vs)) = samples.iter_mut().find(|(n, _)| n == w) else {
            return err(format!("linux-ref: no result for benchmark {w}"));
        };
        let unit = if *w == "boot_to_shell" { "ms" } else { "ns" };
        out.push(Metric::new(w, "linux-ref", median(vs).expect("at least one sample"), unit));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const LOG: &str = "l4rs-init: start\nPASS pipes\nFAIL memory: write did not fault [memory.c:40]\n\
                       FAIL memory: exit status 1 without a FAIL line\nPASS time\n2 passed, 1 failed\n";

    #[test]
    fn abi_lines() {
        let r = parse_abi(LOG);
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[1],
            AbiResult { name: "memory".into(), failure: Some("write did not fault [memory.c:40]".into()) }
        );
        assert_eq!(parse_summary(LOG), Some((2, 1)));
        assert_eq!(parse_summary("nothing"), None);
    }

    #[test]
    fn judging_catches_missing_failed_and_unexpected_tests() {
        let v = judge_abi(&names(&["pipes", "memory", "time", "signals"]), LOG);
        let get = |n: &str| v.iter().find(|(name, _)| name == n).unwrap().1.clone();
        assert_eq!(get("pipes"), None);
        assert!(get("memory").unwrap().contains("did not fault"));
        // A wrong expectation: `signals` was expected but never reported.
        assert_eq!(get("signals").as_deref(), Some("no result line"));
        assert_eq!(get("runner"), None);
        let v = judge_abi(&names(&["pipes"]), LOG);
        assert!(v.iter().any(|(n, why)| n == "time" && why.as_deref().unwrap().contains("unexpected")));
    }

    #[test]
    fn judging_catches_a_lying_summary() {
        let v = judge_abi(&names(&["a"]), "PASS a\n0 passed, 0 failed\n");
        assert!(v.iter().any(|(n, why)| n == "runner" && why.is_some()));
        let v = judge_abi(&names(&["a"]), "PASS a\n");
        assert!(v
            .iter()
            .any(|(n, why)| n == "runner" && why.as_deref() == Some("no `N passed, N failed` line")));
    }

    #[test]
    fn bench_lines() {
        let b = parse_bench("x\nBENCH getpid 314.5 ns\nBENCH bad x ns\nBENCH fork_exit 9e5 ns\n");
        assert_eq!(b, vec![("getpid".to_string(), 314.5), ("fork_exit".to_string(), 900000.0)]);
    }
}

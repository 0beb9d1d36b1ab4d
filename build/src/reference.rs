//! The reference guest: Linux built from the pinned source ([`crate::linux`]) booted directly in
//! QEMU with the initramfs of [`crate::rootfs`]; and upstream User-Mode Linux ([`System::Uml`])
//! run as a program inside that guest, with the same initramfs as UML's root. Used by
//! `run --reference [--uml]`, `test` (the ABI suite, `linux-ref/...` and `uml/...`) and `bench`
//! (systems `linux-ref` and `uml`).

use crate::bench::{median, Metric};
use crate::linux::Kernel;
use crate::qemu::{self, Machine, Scenario};
use crate::report::Report;
use crate::rootfs::{self, Image, Spec};
use crate::util::{err, step, Args, Result};
use std::time::Duration;

/// The first line /init prints: boot_to_shell is measured up to it.
const INIT_MARKER: &str = "l4rs-init: start";
/// What /init prints just before it starts UML, and UML's /init's first line.
const UML_START: &str = "l4rs-uml: starting";
const UML_INIT_MARKER: &str = "l4rs-init: start in uml";
/// Output that means the guest kernel (or UML's) died.
const PANIC: &str = "Kernel panic";
/// Guest memory: enough for python3 and the page-touch benchmark with room to spare, or for UML's
/// 384 MiB (`rootfs/init`) next to the guest's own root.
const MEMORY_MIB: u32 = 1024;
/// Boots per benchmark run; each benchmark already takes a median inside the guest.
const BENCH_BOOTS: usize = 3;
/// The host's time limit beyond the in-guest limit on UML (`l4rs.uml=`): the reference guest's
/// own boot and power-off.
const UML_MARGIN: Duration = Duration::from_secs(60);

/// Where a workload runs: in the reference guest, or in UML inside it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum System {
    Reference,
    Uml,
}

impl System {
    /// The system's name in test names and metrics.
    pub fn name(self) -> &'static str {
        match self {
            System::Reference => "linux-ref",
            System::Uml => "uml",
        }
    }
}

/// A bootable reference guest for one system: the kernel and the image.
struct Guest {
    kernel: Kernel,
    image: Image,
    system: System,
}

impl Guest {
    /// Builds (or finds) what `system` needs: the reference kernel, and from `base` (assembled as
    /// `name`) the image, with `exec` as its `--exec` command; for UML also UML itself, and the
    /// image goes in twice: as the guest's root and as UML's (only UML's carries the command).
    fn prepare(system: System, base: &Image, name: &str, exec: Option<&str>) -> Result<Guest> {
        let kernel = crate::linux::build(&crate::linux::REFERENCE)?;
        let with_cmd = exec.map(|cmd| rootfs::with_exec(base, cmd, &format!("{name}-exec"))).transpose()?;
        let inner = with_cmd.as_ref().unwrap_or(base);
        let image = match system {
            System::Reference => inner.clone(),
            System::Uml => {
                let uml = crate::linux::build(&crate::linux::UML)?;
                rootfs::with_uml(base, &uml.image, inner, &format!("{name}-uml"))?
            }
        };
        Ok(Guest { kernel, image, system })
    }

    /// The machine for `mode` (`shell`, `test`, `bench` or `exec`); UML is given `uml_limit`.
    fn machine(&self, mode: &str, uml_limit: Duration) -> Machine {
        let mut m = Machine::new(self.kernel.image.clone());
        m.initrd = Some(self.image.initrd.clone());
        m.memory_mib = MEMORY_MIB;
        // quiet: the kernel's boot log over the emulated UART costs boot time. (No `mitigations=off`:
        // the kernel is built without them, see build/linux-configs/reference.config.) panic=-1
        // reboots at once on a panic, which ends QEMU (-no-reboot) instead of waiting for the timeout.
        m.append = format!("console=ttyS0 quiet panic=-1 l4rs.mode={mode}");
        if self.system == System::Uml {
            m.append.push_str(&format!(" l4rs.uml={}", uml_limit.as_secs()));
        }
        m
    }

    /// A scenario for `mode`: boot markers of the system, a panic forbidden, and a host time limit
    /// of `limit` (plus [`UML_MARGIN`] for UML, whose in-guest limit is `limit`).
    fn scenario(&self, name: &str, mode: &str, limit: Duration) -> Scenario {
        let mut s = Scenario::new(name, self.machine(mode, limit));
        s.markers = vec![INIT_MARKER.into()];
        if self.system == System::Uml {
            s.markers.extend([UML_START.into(), UML_INIT_MARKER.into()]);
        }
        s.forbidden = vec![PANIC.into()];
        s.timeout = if self.system == System::Uml { limit + UML_MARGIN } else { limit };
        s
    }
}

/// `cargo xtask run --reference [--uml] [--exec CMD] [--overlay DIR]... [--deb NAME]... [--rootfs CPIO]`.
pub fn cmd_run(mut a: Args) -> Result<i32> {
    let system = if a.flag("--uml") { System::Uml } else { System::Reference };
    let exec = a.value("--exec")?;
    let spec = rootfs::spec_from_args(&mut a)?;
    let mut extra = a.values("--qemu-arg")?;
    extra.extend(a.rest());
    a.finish()?;
    crate::setup::ensure()?;
    let base = rootfs::assemble(&spec, "run")?;
    let guest = Guest::prepare(system, &base, "run", exec.as_deref())?;
    // Interactive use: UML may run for a day.
    let limit = Duration::from_secs(86_400);
    let Some(cmd) = exec else {
        let mut m = guest.machine("shell", limit);
        m.extra = extra;
        return qemu::run_interactive(&m, false);
    };
    let mut m = guest.machine("exec", limit);
    m.extra = extra;
    step(format!(
        "booting the reference guest to run{}: {cmd}",
        if system == System::Uml { " in UML" } else { "" }
    ));
    // The serial line streams to our stdout as the command runs; QEMU's exit code carries the
    // command's status (isa-debug-exit; from UML via its exit status), so no log parsing is needed.
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

/// One verdict per expected test from its `PASS`/`FAIL` line (`None`: passed), and a failure for
/// a test without one.
pub(crate) fn verdicts(expected: &[String], log: &str) -> Vec<(String, Option<String>)> {
    let results = parse_abi(log);
    expected
        .iter()
        .map(|name| match results.iter().find(|r| &r.name == name) {
            Some(r) => (name.clone(), r.failure.clone()),
            None => (name.clone(), Some("no result line".to_string())),
        })
        .collect()
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
    let mut v = verdicts(expected, log);
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

/// `cargo xtask test`'s part: for each system, boots the reference guest in test mode (running
/// the suite itself, or UML running it) and records each ABI test as `<system>/abi/<name>`; plus,
/// for the reference guest, an exec-mode boot checking that a status reaches the host.
pub fn run_tests(report: &mut Report, wanted: &dyn Fn(&str) -> bool) {
    // Also when the filter names one test (`--filter linux-ref/abi/memory`).
    let names = rootfs::abi_test_names().unwrap_or_default();
    let abi_wanted = |system: System, n: &str| wanted(&format!("{}/abi/{n}", system.name()));
    let abi = |system: System| {
        wanted(&format!("{}/abi", system.name())) || names.iter().any(|n| abi_wanted(system, n))
    };
    let exec = wanted("linux-ref/exec-status");
    if !abi(System::Reference) && !abi(System::Uml) && !exec {
        return;
    }
    // One image for both systems.
    let base = match rootfs::assemble(&Spec::default(), "test") {
        Ok(i) => i,
        Err(e) => return report.fail("linux-ref/rootfs", &e.to_string()),
    };
    for system in [System::Reference, System::Uml] {
        let p = system.name();
        let abi = abi(system);
        let exec = system == System::Reference && exec;
        if !abi && !exec {
            continue;
        }
        step(match system {
            System::Reference => "reference guest: Linux kernel, ABI suite",
            System::Uml => "User-Mode Linux in the reference guest: UML build, ABI suite",
        });
        let guest = match Guest::prepare(system, &base, "test", None) {
            Ok(g) => g,
            Err(e) => {
                report.fail(&format!("{p}/build"), &e.to_string());
                return report.skip(&format!("{p}/abi"), "the kernel or the image did not build");
            }
        };
        if abi {
            abi_boot(report, &guest, &|n| abi_wanted(system, n));
        }
        if exec {
            match rootfs::with_exec(&guest.image, "echo exec-ok; exit 3", "test-exec") {
                Err(e) => report.fail("linux-ref/rootfs", &e.to_string()),
                Ok(image) => {
                    let guest = Guest { image, ..guest };
                    let mut s = guest.scenario("linux-ref/exec-status", "exec", Duration::from_secs(120));
                    s.markers.extend(["exec-ok".into(), "l4rs-init: exit 3".into()]);
                    s.expect_status = Some(3);
                    match qemu::run_scenario(&s) {
                        Ok(o) => report.scenario("linux-ref/exec-status", &o),
                        Err(e) => report.fail("linux-ref/exec-status", &e.to_string()),
                    }
                }
            }
        }
    }
}

fn abi_boot(report: &mut Report, guest: &Guest, wanted: &dyn Fn(&str) -> bool) {
    let p = guest.system.name();
    // Generous: each test also has its own 120 s limit inside the guest (tests/linux-abi/run).
    let mut s = guest.scenario(&format!("{p}/abi"), "test", Duration::from_secs(600));
    s.markers.push(" passed, ".into());
    let o = match qemu::run_scenario(&s) {
        Ok(o) => o,
        Err(e) => return report.fail(&format!("{p}/abi/boot"), &e.to_string()),
    };
    if guest.system == System::Uml && !o.log.contains(UML_INIT_MARKER) {
        // Nothing ran: one clear failure with UML's console output, not a list of missing tests.
        let why = o.failure.as_deref().unwrap_or("no `l4rs-init: start in uml` line");
        report.fail("uml/boot", &format!("User-Mode Linux did not reach its /init: {why}"));
        println!("---- last lines of {} ----\n{}\n----", o.log_path.display(), o.tail(40));
        return report.skip("uml/abi", "UML did not boot");
    }
    if let Some(why) = &o.failure {
        // The suite's own failures show below; this line says whether the boot itself went wrong.
        println!("{p}/abi boot: {why} (log {})", o.log_path.display());
    }
    report_abi(report, p, &guest.image.abi_tests, &o.log, &o, wanted);
}

/// Records the ABI suite's verdicts in `log` (the guest's console) as `<system>/abi/<name>`, the
/// `wanted` ones; after a failure shows the end of the boot's log.
pub(crate) fn report_abi(
    report: &mut Report,
    system: &str,
    expected: &[String],
    log: &str,
    o: &qemu::Outcome,
    wanted: &dyn Fn(&str) -> bool,
) {
    let verdicts = judge_abi(expected, log).into_iter().filter(|(name, _)| wanted(name));
    report_verdicts(report, &format!("{system}/abi"), verdicts, o);
}

/// Records `(name, verdict)` pairs as `<prefix>/<name>` (`None`: passed); after a failure shows
/// the end of the boot's log.
pub(crate) fn report_verdicts(
    report: &mut Report,
    prefix: &str,
    verdicts: impl IntoIterator<Item = (String, Option<String>)>,
    o: &qemu::Outcome,
) {
    let mut any_failed = false;
    for (name, verdict) in verdicts {
        let full = format!("{prefix}/{name}");
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
pub(crate) fn parse_bench(log: &str) -> Vec<(String, f64)> {
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

/// `cargo xtask bench`'s part for `system`: [`BENCH_BOOTS`] boots in bench mode; medians across
/// boots, and boot_to_shell from QEMU's start to /init's first line (reference), or from the
/// reference guest's starting UML to UML's /init's first line (UML).
/// `base` is the image (`rootfs::assemble`d as `bench`).
pub fn metrics(system: System, base: &Image) -> Result<Vec<Metric>> {
    let guest = Guest::prepare(system, base, "bench", None)?;
    let p = system.name();
    let mut samples: Vec<(String, Vec<f64>)> = Vec::new();
    let mut add = |name: &str, v: f64| match samples.iter_mut().find(|(n, _)| n == name) {
        Some((_, vs)) => vs.push(v),
        None => samples.push((name.to_string(), vec![v])),
    };
    for boot in 1..=BENCH_BOOTS {
        step(format!("{p}: benchmark boot {boot}/{BENCH_BOOTS}"));
        let s = guest.scenario(&format!("{p}-bench-{boot}"), "bench", Duration::from_secs(900));
        let o = qemu::run_scenario(&s)?;
        if let Some(why) = &o.failure {
            return err(format!("{p} benchmark boot {boot}: {why}\n{}", o.tail(20)));
        }
        for (name, v) in parse_bench(&o.log) {
            add(&name, v);
        }
        if let Some(ms) = boot_ms(system, &o.marker_times) {
            add("boot_to_shell", ms);
        }
    }
    let mut out = Vec::new();
    for w in crate::bench::LINUX_WORKLOADS {
        let Some((_, vs)) = samples.iter_mut().find(|(n, _)| n == w) else {
            return err(format!("{p}: no result for benchmark {w}"));
        };
        let unit = if *w == "boot_to_shell" { "ms" } else { "ns" };
        out.push(Metric::new(w, p, median(vs).expect("at least one sample"), unit));
    }
    Ok(out)
}

/// boot_to_shell in ms from the times of [`Guest::scenario`]'s markers: QEMU start → /init, or
/// (UML) the guest's `starting` line → UML's /init.
fn boot_ms(system: System, t: &[Duration]) -> Option<f64> {
    let d = match system {
        System::Reference => *t.first()?,
        System::Uml => t.get(2)?.checked_sub(*t.get(1)?)?,
    };
    Some(d.as_secs_f64() * 1000.0)
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
    fn boot_times_per_system() {
        let t = [Duration::from_millis(3000), Duration::from_millis(3100), Duration::from_millis(8100)];
        assert_eq!(boot_ms(System::Reference, &t), Some(3000.0));
        assert_eq!(boot_ms(System::Uml, &t), Some(5000.0));
        assert_eq!(boot_ms(System::Uml, &t[..2]), None);
        assert_eq!(boot_ms(System::Reference, &[]), None);
    }

    #[test]
    fn bench_lines() {
        let b = parse_bench("x\nBENCH getpid 314.5 ns\nBENCH bad x ns\nBENCH fork_exit 9e5 ns\n");
        assert_eq!(b, vec![("getpid".to_string(), 314.5), ("fork_exit".to_string(), 900000.0)]);
    }
}

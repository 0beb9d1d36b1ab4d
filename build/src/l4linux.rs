//! L4Linux: Linux 6.12 `ARCH=um` with the os-L4 host layer ([`crate::linux::L4LINUX`]) as a
//! program of our runtime: moe starts it from the boot script with its memory, command line and
//! initramfs (the same image [`crate::rootfs`] builds for the reference guest), on our kernel,
//! in QEMU. Used by `run` (the default: a shell), `run --exec`, and `test` (`l4linux/...`).

use crate::bench::{median, Metric};
use crate::kbuild::{Artifacts, BootProgram};
use crate::qemu::{Machine, Scenario};
use crate::report::Report;
use crate::rootfs::{Image, Spec};
use crate::util::{step, Result};
use std::time::Duration;

/// The first line /init prints inside L4Linux (`L4RS_SYSTEM=l4linux` on Linux's command line).
pub const INIT_MARKER: &str = "l4rs-init: start in l4linux";
/// Linux's first line.
pub const BANNER: &str = "Linux version 6.12";
/// QEMU's memory: our kernel keeps half for itself; the other half holds Linux's RAM
/// ([`LINUX_MIB`]), its copy of the initramfs and the runtime.
const MEMORY_MIB: u32 = 1024;
/// Linux's RAM (`mem=`), as the reference guest's processes need it.
const LINUX_MIB: u32 = 384;

/// The boot script: Linux with its RAM within its quota (plus its copy of the initramfs), a
/// factory for its processes' tasks and its timer, and the platform to power off with its
/// status.
fn boot_cfg(mode: &str, initrd_mib: u64) -> String {
    boot_cfg_with(mode, initrd_mib, "")
}

/// [`boot_cfg`] with `append` added to Linux's command line.
fn boot_cfg_with(mode: &str, initrd_mib: u64, append: &str) -> String {
    let extra = if append.is_empty() { String::new() } else { format!(" {append}") };
    let quota = LINUX_MIB as u64 + initrd_mib + 8;
    format!(
        "start linux quota={quota}M\n    \
         args \"mem={LINUX_MIB}M initrd=rootfs.cpio.gz console=ttyL0 l4rs.mode={mode} L4RS_SYSTEM=l4linux{extra}\"\n    \
         cap factory = @factory\n    \
         cap platform = @platform\n    \
         file rootfs.cpio.gz\n"
    )
}

/// The machine booting L4Linux in `mode` (`shell`, `test`, `bench`, `exec`) on `image`.
pub fn machine(art: &Artifacts, image: &Image, mode: &str) -> Result<Machine> {
    machine_appending(art, image, mode, "")
}

/// [`machine`] with `append` added to Linux's command line.
fn machine_appending(art: &Artifacts, image: &Image, mode: &str, append: &str) -> Result<Machine> {
    let script = |initrd_mib| boot_cfg_with(mode, initrd_mib, append);
    machine_with(art, image, &format!("l4linux-{mode}"), script, &[])
}

/// A machine with L4Linux, `image` and `extra` programs as modules, and the boot script
/// `script(initrd MiB)`.
fn machine_with(
    art: &Artifacts,
    image: &Image,
    name: &str,
    script: impl Fn(u64) -> String,
    extra: &[BootProgram],
) -> Result<Machine> {
    let linux = crate::linux::build(&crate::linux::L4LINUX)?;
    let initrd_mib = std::fs::metadata(&image.initrd)?.len().div_ceil(1 << 20);
    let mut programs = vec![
        BootProgram::sigma0(),
        BootProgram::start("moe", ""),
        BootProgram::from_file("linux", &linux.image, true),
        BootProgram::from_file("rootfs.cpio.gz", &image.initrd, false),
        BootProgram::data("boot.cfg", &script(initrd_mib)),
    ];
    programs.extend_from_slice(extra);
    let mut m = art.machine(name, &programs, "")?;
    m.memory_mib = MEMORY_MIB;
    Ok(m)
}

/// The interactive shell on the console: a typed command runs (its output appears, computed by
/// the shell, not echoed), a child runs and ends, Ctrl-C interrupts a foreground `sleep`, the
/// shell goes on, and its exit status powers the machine off.
fn shell_scenario(m: Machine) -> Scenario {
    let mut s = scenario("l4linux/shell-input", m, Duration::from_secs(120));
    s.input_after = vec![
        ("l4rs-init: shell".into(), "echo typed-$((6*7))\n".into()),
        ("typed-42".into(), "sleep 1; echo slept-$?\n".into()),
        ("slept-0".into(), "echo start-$((3*3)); sleep 100; echo not-$((2+3))-interrupted\n".into()),
        // Typed once the shell runs the line (its output, not the echo of the typing).
        ("start-9".into(), "\x03".into()),
        // ash drops the rest of a command line whose job died of SIGINT; the shell goes on.
        ("^C".into(), "echo alive-$((1+1))\n".into()),
        ("alive-2".into(), "exit 5\n".into()),
    ];
    s.markers.extend([
        "typed-42".into(),
        "slept-0".into(),
        "^C".into(),
        "alive-2".into(),
        "l4rs-init: exit 5".into(),
    ]);
    s.forbidden.push("not-5-interrupted".into());
    s.expect_status = Some(5);
    s
}

/// Boot scripts with a mistake, and what the user is told.
type Mistake = (&'static str, fn(String) -> String, &'static str);
const MISTAKES: &[Mistake] = &[
    (
        "l4linux/error-quota",
        |s| {
            s.lines()
                .map(|l| {
                    if l.starts_with("start linux") {
                        "start linux quota=64M\n".into()
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect()
        },
        "raise quota= in the boot script",
    ),
    (
        "l4linux/error-no-initramfs",
        |s| s.replace("    file rootfs.cpio.gz\n", ""),
        "cannot read `rootfs.cpio.gz`",
    ),
];

/// Linux panics (no init: `rdinit=` and `init=` name nothing) while a native program runs
/// beside it: the runtime reports Linux's end, and the other program goes on.
fn panic_scenario(art: &Artifacts, image: &Image) -> Result<Scenario> {
    let script = |initrd_mib| {
        boot_cfg("shell", initrd_mib).replace("L4RS_SYSTEM=l4linux", "rdinit=/none init=/none")
            + "start ktest prio=90 name=beside\n    args \"outlive 8000\"\n    cap platform = @platform\n"
    };
    let m = machine_with(art, image, "l4linux-panic", script, &[BootProgram::module("ktest", "")])?;
    let mut s = Scenario::new("l4linux/panic-reported", m);
    s.markers = vec![
        BANNER.into(),
        "Kernel panic".into(),
        "os-L4: the Linux kernel stopped".into(),
        "moe: linux exited with status 134".into(),
        "beside: still running after 8000 ms".into(),
    ];
    s.timeout = Duration::from_secs(120);
    Ok(s)
}

/// A scenario: L4Linux boots and /init starts; Linux must not panic.
pub fn scenario(name: &str, m: Machine, limit: Duration) -> Scenario {
    let mut s = Scenario::new(name, m);
    s.markers = vec![BANNER.into(), INIT_MARKER.into()];
    s.forbidden = vec!["Kernel panic".into(), "os-L4: the Linux kernel stopped".into()];
    s.timeout = limit;
    s
}

/// `cargo xtask run [--exec CMD] [--overlay DIR]... [--deb NAME]... [--rootfs CPIO]`: L4Linux
/// to a shell on the terminal, or running CMD and ending with its status.
pub fn cmd_run(mut a: crate::util::Args, gdb: bool) -> Result<i32> {
    let exec = a.value("--exec")?;
    let append = a.value("--append")?.unwrap_or_default();
    let spec = crate::rootfs::spec_from_args(&mut a)?;
    let mut extra = a.values("--qemu-arg")?;
    extra.extend(a.rest());
    a.finish()?;
    crate::setup::ensure()?;
    let art = crate::kbuild::build_all()?;
    let base = crate::rootfs::assemble(&spec, "l4linux")?;
    let image = match &exec {
        Some(cmd) => crate::rootfs::with_exec(&base, cmd, "l4linux-exec")?,
        None => base,
    };
    let mut m = machine_appending(&art, &image, if exec.is_some() { "exec" } else { "shell" }, &append)?;
    m.extra = extra;
    crate::qemu::run_interactive(&m, gdb)
}

/// `cargo xtask test`'s part: L4Linux boots and runs the ABI suite (`l4linux/abi/<name>`, the same
/// tests and verdicts as the reference guest's), its own tests (`l4linux/<name>` for each
/// `tests/l4linux/<name>.c`), and a command's status reaches the host (`l4linux/exec-status`).
pub fn run_tests(art: &Artifacts, report: &mut Report, wanted: &dyn Fn(&str) -> bool) {
    let names = crate::rootfs::abi_test_names().unwrap_or_default();
    let abi_wanted = |n: &str| wanted(&format!("l4linux/abi/{n}"));
    let abi = wanted("l4linux/abi") || names.iter().any(|n| abi_wanted(n));
    let own: Vec<String> = crate::rootfs::l4linux_test_names()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| wanted(&format!("l4linux/{n}")))
        .collect();
    let exec = wanted("l4linux/exec-status");
    let shell = wanted("l4linux/shell-input");
    let panic = wanted("l4linux/panic-reported");
    let mistakes = MISTAKES.iter().any(|(n, ..)| wanted(n));
    if !abi && own.is_empty() && !exec && !shell && !panic && !mistakes {
        return;
    }
    step("L4Linux: build, ABI suite, exit status");
    let base = match crate::rootfs::assemble(&Spec::default(), "test") {
        Ok(i) => i,
        Err(e) => return report.fail("l4linux/rootfs", &e.to_string()),
    };
    if let Err(e) = crate::linux::build(&crate::linux::L4LINUX) {
        report.fail("l4linux/build", &e.to_string());
        return report.skip("l4linux/abi", "L4Linux did not build");
    }
    if abi {
        abi_boot(art, report, &base, &abi_wanted);
    }
    if !own.is_empty() {
        own_tests(art, report, &base, &own);
    }
    for (name, broken, said) in MISTAKES {
        if !wanted(name) {
            continue;
        }
        let script = |initrd_mib| broken(boot_cfg("shell", initrd_mib));
        let r = machine_with(art, &base, &name.replace('/', "-"), script, &[]).and_then(|m| {
            let mut s = Scenario::new(*name, m);
            s.markers = vec![said.to_string()];
            s.expect_status = None;
            s.timeout = Duration::from_secs(60);
            crate::qemu::run_scenario(&s)
        });
        match r {
            Ok(o) => report.scenario(name, &o),
            Err(e) => report.fail(name, &e.to_string()),
        }
    }
    if shell {
        match machine(art, &base, "shell").and_then(|m| crate::qemu::run_scenario(&shell_scenario(m))) {
            Ok(o) => report.scenario("l4linux/shell-input", &o),
            Err(e) => report.fail("l4linux/shell-input", &e.to_string()),
        }
    }
    if panic {
        match panic_scenario(art, &base).and_then(|s| crate::qemu::run_scenario(&s)) {
            Ok(o) => report.scenario("l4linux/panic-reported", &o),
            Err(e) => report.fail("l4linux/panic-reported", &e.to_string()),
        }
    }
    if exec {
        let r = crate::rootfs::with_exec(&base, "echo exec-ok; exit 3", "l4linux-exec")
            .and_then(|image| machine(art, &image, "exec"));
        match r {
            Err(e) => report.fail("l4linux/exec-status", &e.to_string()),
            Ok(m) => {
                let mut s = scenario("l4linux/exec-status", m, Duration::from_secs(120));
                s.markers.extend(["exec-ok".into(), "l4rs-init: exit 3".into()]);
                s.expect_status = Some(3);
                match crate::qemu::run_scenario(&s) {
                    Ok(o) => report.scenario("l4linux/exec-status", &o),
                    Err(e) => report.fail("l4linux/exec-status", &e.to_string()),
                }
            }
        }
    }
}

/// Runs the tests of L4Linux's own behaviour (`tests/l4linux`) in one boot, each judged by its
/// `PASS`/`FAIL` line.
fn own_tests(art: &Artifacts, report: &mut Report, base: &Image, names: &[String]) {
    let dir = crate::rootfs::L4LINUX_TESTS;
    let cmd = format!("s=0; for t in {}; do /{dir}/$t || s=1; done; exit $s", names.join(" "));
    let r =
        crate::rootfs::with_exec(base, &cmd, "l4linux-own").and_then(|image| machine(art, &image, "exec"));
    let o = match r.and_then(|m| {
        let mut s = scenario("l4linux/own", m, Duration::from_secs(300));
        // The verdicts come from the result lines; the status only says whether all passed.
        s.markers.push("l4rs-init: exit".into());
        s.expect_status = None;
        crate::qemu::run_scenario(&s)
    }) {
        Ok(o) => o,
        Err(e) => return names.iter().for_each(|n| report.fail(&format!("l4linux/{n}"), &e.to_string())),
    };
    // A boot that went wrong (no exit, a panic) fails every test that has no line of its own.
    let verdicts = crate::reference::verdicts(names, &console(&o.log))
        .into_iter()
        .map(|(name, verdict)| (name, verdict.or_else(|| o.failure.clone())));
    crate::reference::report_verdicts(report, "l4linux", verdicts, &o);
}

fn abi_boot(art: &Artifacts, report: &mut Report, image: &Image, wanted: &dyn Fn(&str) -> bool) {
    let m = match machine(art, image, "test") {
        Ok(m) => m,
        Err(e) => return report.fail("l4linux/abi/boot", &e.to_string()),
    };
    let mut s = scenario("l4linux/abi", m, Duration::from_secs(600));
    s.markers.push(" passed, ".into());
    let o = match crate::qemu::run_scenario(&s) {
        Ok(o) => o,
        Err(e) => return report.fail("l4linux/abi/boot", &e.to_string()),
    };
    if !o.log.contains(INIT_MARKER) {
        let why = o.failure.as_deref().unwrap_or("no /init line");
        report.fail("l4linux/boot", &format!("L4Linux did not reach its /init: {why}"));
        println!("---- last lines of {} ----\n{}\n----", o.log_path.display(), o.tail(40));
        return report.skip("l4linux/abi", "L4Linux did not boot");
    }
    if let Some(why) = &o.failure {
        println!("l4linux/abi boot: {why} (log {})", o.log_path.display());
    }
    crate::reference::report_abi(report, "l4linux", &image.abi_tests, &console(&o.log), &o, wanted);
}

/// Linux's console output from the serial log. Linux is the console's terminal, so its lines
/// come unprefixed; should it not get the terminal (another program holds it), the kernel
/// prefixes them with `linux: `, which is dropped here so the verdicts stay the same.
fn console(log: &str) -> String {
    log.lines().map(|l| format!("{}\n", l.strip_prefix("linux: ").unwrap_or(l))).collect()
}

/// Boots per benchmark run, as for the reference guest.
const BENCH_BOOTS: usize = 3;

/// `cargo xtask bench`'s part for L4Linux (system `l4linux`): the reference guest's workloads
/// in [`BENCH_BOOTS`] boots, medians across boots; boot_to_shell from QEMU's start to /init's
/// first line, as for the reference guest.
pub fn metrics(art: &Artifacts, base: &Image) -> Result<Vec<Metric>> {
    let mut samples: Vec<(String, Vec<f64>)> = Vec::new();
    let mut add = |name: &str, v: f64| match samples.iter_mut().find(|(n, _)| n == name) {
        Some((_, vs)) => vs.push(v),
        None => samples.push((name.to_string(), vec![v])),
    };
    for boot in 1..=BENCH_BOOTS {
        step(format!("l4linux: benchmark boot {boot}/{BENCH_BOOTS}"));
        let s = scenario(
            &format!("l4linux-bench-{boot}"),
            machine(art, base, "bench")?,
            Duration::from_secs(1800),
        );
        let o = crate::qemu::run_scenario(&s)?;
        if let Some(why) = &o.failure {
            return crate::util::err(format!("l4linux benchmark boot {boot}: {why}\n{}", o.tail(20)));
        }
        for (name, v) in crate::reference::parse_bench(&console(&o.log)) {
            add(&name, v);
        }
        if let Some(t) = o.marker_times.get(1) {
            add("boot_to_shell", t.as_secs_f64() * 1000.0);
        }
    }
    let mut out = Vec::new();
    for w in crate::bench::LINUX_WORKLOADS {
        let Some((_, vs)) = samples.iter_mut().find(|(n, _)| n == w) else {
            return crate::util::err(format!("l4linux: no result for benchmark {w}"));
        };
        let unit = if *w == "boot_to_shell" { "ms" } else { "ns" };
        out.push(Metric::new(w, "l4linux", median(vs).expect("at least one sample"), unit));
    }
    Ok(out)
}

//! `cargo xtask`: the one entry point for setting up, building, running, testing and benchmarking.
//! See `cargo xtask help`.

mod bench;
mod kbuild;
mod ktests;
mod l4linux;
mod linux;
mod qemu;
mod reference;
mod report;
mod rootfs;
mod setup;
mod util;

use std::process::{Command, ExitCode};
use util::{err, root, run, step, Args, Result};

const HELP: &str = "\
cargo xtask <command> [options]

  setup            install what is missing (QEMU, Debian packages, Rust targets); idempotent
  build            build the kernel and the user programs
  run              build and boot L4Linux on the microkernel in QEMU to a busybox shell, serial
                   console on the terminal (Ctrl-A X quits QEMU)
      --exec CMD        run CMD in L4Linux instead, print its output, exit with its status
      --overlay DIR     add a directory tree on top of the rootfs (repeatable)
      --deb NAME        add a Debian package and its library dependencies (repeatable)
      --rootfs CPIO     use your own (Buildroot) rootfs.cpio[.gz] instead of busybox + debs
      --append TEXT     add TEXT to Linux's command line (e.g. `lx.profile`: os-L4's time per
                        process event, printed at power-off)
      --scenario NAME   boot a microkernel scenario instead (see `cargo xtask run --list`)
      --list            list the scenarios
      --gdb             wait for a debugger on :1234 before starting
      --qemu-arg ARG    extra QEMU argument (repeatable); or put them after `--`
      --reference       boot the reference Linux guest to a shell instead (see rootfs/README.md)
        --uml             and in it upstream User-Mode Linux (same image as UML's root); --exec runs in UML
        --exec CMD        run CMD in it, print its output, exit with its status
        --overlay DIR     add a directory tree on top of the rootfs (repeatable)
        --deb NAME        add a Debian package and its library dependencies (repeatable)
        --rootfs CPIO     use your own (Buildroot) rootfs.cpio[.gz] instead of busybox + debs
  linux            build (or find cached) the reference Linux kernel; prints the bzImage path
      --uml             build upstream User-Mode Linux (ARCH=um) instead; prints the `linux` path
      --l4              build L4Linux (ARCH=um, linux-patches/, os-L4 + lx-arch, freestanding);
                        prints the `linux` path and `upstream lines changed: N`
  rootfs           assemble the guest initramfs; takes --overlay/--deb/--rootfs like run
  test             lint, host tests and QEMU tests; ends with `N passed, N failed`
      --filter TEXT     only tests whose name contains TEXT
      --no-lint         skip rustfmt and clippy
  miri             the host tests of abi, kernel-core and bootscript under Miri (installs the
                   nightly toolchain's miri if missing; ~4 minutes)
  fuzz             the long kernel fuzz run (10^7 random invocations by a hostile task)
      --count N         invocations (default 10000000)
      --seed S          replay a seed (also L4RS_FUZZ_SEED for `test`)
  bench            run the benchmarks, print the table, write target/bench/latest.json
      --only SYSTEMS    only these, comma-separated: `kernel`, `linux-ref`, `uml` (User-Mode
                        Linux inside the reference guest), `l4linux`
  help             this text
";

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    let cmd = if argv.is_empty() { "help".to_string() } else { argv.remove(0) };
    let r = match cmd.as_str() {
        "setup" => Args::new(argv).finish().and_then(|_| setup::setup()).map(|_| 0),
        "build" => Args::new(argv)
            .finish()
            .and_then(|_| setup::ensure())
            .and_then(|_| kbuild::build_all())
            .map(|_| 0),
        "run" => cmd_run(Args::new(argv)),
        "test" => cmd_test(Args::new(argv)),
        "bench" => cmd_bench(Args::new(argv)),
        "linux" => linux::cmd_linux(Args::new(argv)),
        "rootfs" => rootfs::cmd_rootfs(Args::new(argv)),
        "fuzz" => cmd_fuzz(Args::new(argv)),
        "miri" => Args::new(argv).finish().and_then(|_| cmd_miri()),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(0)
        }
        other => err(format!("unknown command `{other}`\n\n{HELP}")),
    };
    match r {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_run(mut a: Args) -> Result<i32> {
    if a.flag("--reference") {
        return reference::cmd_run(a);
    }
    if a.flag("--list") {
        a.finish()?;
        let list = ktests::scenario_list();
        let width = list.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        for (name, what) in list {
            println!("{name:width$}  {what}");
        }
        return Ok(0);
    }
    let gdb = a.flag("--gdb");
    // The default: L4Linux to a shell (or `--exec`).
    let Some(scenario) = a.value("--scenario")? else {
        return l4linux::cmd_run(a, gdb);
    };
    let mut extra = a.values("--qemu-arg")?;
    extra.extend(a.rest());
    a.finish()?;
    setup::ensure()?;
    let art = kbuild::build_all()?;
    let mut m = ktests::machine_for(&art, &scenario)?;
    m.extra.extend(extra);
    let status = qemu::run_interactive(&m, gdb)?;
    if status != 0 {
        step(format!("guest exited with status {status}"));
    }
    Ok(status)
}

fn lint(report: &mut report::Report) {
    let cargo = || {
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(root()).env_remove("CARGO_ENCODED_RUSTFLAGS");
        c
    };
    report.check("lint/rustfmt", run(cargo().args(["fmt", "--all", "--check"])));
    report.check(
        "lint/clippy-host",
        run(cargo().env_remove("RUSTFLAGS").args(["clippy", "--all-targets", "--", "-D", "warnings"])),
    );
    let groups = [
        ("lint/clippy-kernel", "kernel", kbuild::kernel_rustflags(), &["kernel", "arch-x86_64"][..]),
        ("lint/clippy-user", "user", kbuild::user_rustflags(), kbuild::USER_PROGRAMS),
        ("lint/clippy-lx-arch", "lx-arch", linux::LX_ARCH_RUSTFLAGS.to_string(), &["lx-arch"][..]),
    ];
    for (name, dir, flags, pkgs) in groups {
        let mut c = cargo();
        c.env("RUSTFLAGS", flags).args(["clippy", "--release", "--target", kbuild::TARGET, "--target-dir"]);
        c.arg(root().join("target").join(dir));
        for p in pkgs {
            c.args(["-p", p]);
        }
        report.check(name, run(c.args(["--", "-D", "warnings"])));
    }
}

fn cmd_test(mut a: Args) -> Result<i32> {
    let filter = a.value("--filter")?;
    let no_lint = a.flag("--no-lint");
    a.finish()?;
    setup::ensure()?;
    let mut report = report::Report::default();
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if !no_lint && wanted("lint") {
        step("lint: rustfmt and clippy");
        lint(&mut report);
    }
    if wanted("host") {
        step("host tests: cargo test of the host crates");
        let r = run(Command::new(env!("CARGO")).current_dir(root()).env_remove("RUSTFLAGS").arg("test"));
        report.check("host/cargo-test", r);
    }
    let art = match kbuild::build_all() {
        Ok(art) => {
            ktests::run_all(&art, &mut report, &wanted);
            Some(art)
        }
        Err(e) => {
            report.fail("build/kernel", &e.to_string());
            None
        }
    };
    reference::run_tests(&mut report, &wanted);
    match &art {
        Some(art) => l4linux::run_tests(art, &mut report, &wanted),
        None => report.skip("l4linux", "the kernel did not build"),
    }
    println!("{}", report.summary());
    Ok(if report.failed() == 0 { 0 } else { 1 })
}

/// `cargo xtask miri`: the host tests of the crates that run on the host (the ABI, the
/// portable kernel, the boot-script parser) under Miri, which checks every memory access for
/// undefined behaviour. Needs the nightly toolchain's `miri`, installed here if missing (not
/// part of `test`: ~4 minutes, and a toolchain the rest of the build does not use).
fn cmd_miri() -> Result<i32> {
    let has = Command::new("cargo")
        .args(["+nightly", "miri", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        step("rustup: installing the nightly toolchain's miri");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "miri,rust-src",
        ]))?;
    }
    step("miri: host tests of abi, kernel-core and bootscript");
    // Isolation off: proptest reads the working directory. Leaks ignored: the fake machine of
    // kernel-core's tests leaks its frame bitmap at each reset on purpose (the allocator
    // borrows it for 'static, as the kernel does the bitmap in boot memory). Few proptest
    // cases: each is an interpreted run.
    let r = run(Command::new("cargo")
        .current_dir(root())
        .env_remove("RUSTFLAGS")
        .env("MIRIFLAGS", "-Zmiri-disable-isolation -Zmiri-ignore-leaks")
        .env("PROPTEST_CASES", "4")
        .args(["+nightly", "miri", "test", "-p", "abi", "-p", "kernel-core", "-p", "bootscript"]));
    Ok(if r.is_ok() { 0 } else { 1 })
}

fn cmd_fuzz(mut a: Args) -> Result<i32> {
    let count = a.value("--count")?.map(|c| c.parse()).transpose().map_err(|_| "--count needs a number")?;
    let seed = a.value("--seed")?.map(|c| c.parse()).transpose().map_err(|_| "--seed needs a number")?;
    a.finish()?;
    setup::ensure()?;
    let art = kbuild::build_all()?;
    ktests::fuzz(&art, count.unwrap_or(10_000_000), seed)?;
    Ok(0)
}

fn cmd_bench(mut a: Args) -> Result<i32> {
    let only = a.value("--only")?;
    a.finish()?;
    let only = only.map(|o| bench::parse_systems(&o)).transpose()?;
    let want = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
    setup::ensure()?;
    let mut metrics = Vec::new();
    if want("kernel") {
        let art = kbuild::build_all()?;
        // Five boots: a row moves by up to ±5 % from boot to boot (QEMU sizes its TLB by recent
        // use, the host is shared), and a boot takes seconds.
        metrics.extend(ktests::kernel_metrics(&art, 5)?);
    }
    // One image for all Linux systems.
    let image = (want("linux-ref") || want("uml") || want("l4linux"))
        .then(|| rootfs::assemble(&rootfs::Spec::default(), "bench"))
        .transpose()?;
    if let Some(image) = &image {
        if want("linux-ref") {
            metrics.extend(reference::metrics(reference::System::Reference, image)?);
        }
        if want("uml") {
            match reference::metrics(reference::System::Uml, image) {
                Ok(m) => metrics.extend(m),
                // The other systems' results stay useful; asked for alone, UML's failure is the result.
                Err(e) if only.is_none() => step(format!("uml: not available: {e}")),
                Err(e) => return Err(e),
            }
        }
        if want("l4linux") {
            let art = kbuild::build_all()?;
            match l4linux::metrics(&art, image) {
                Ok(m) => metrics.extend(m),
                Err(e) if only.is_none() => step(format!("l4linux: not available: {e}")),
                Err(e) => return Err(e),
            }
        }
    }
    bench::print_table(&metrics);
    bench::write(&metrics)?;
    step("wrote target/bench/latest.json");
    Ok(0)
}

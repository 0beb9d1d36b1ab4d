//! The microkernel's QEMU scenarios: what `cargo xtask run --scenario` boots and what
//! `cargo xtask test` judges, plus the kernel micro-benchmarks of `cargo xtask bench`.

use crate::bench::{self, Metric};
use crate::kbuild::{Artifacts, BootProgram};
use crate::qemu::{run_scenario, Machine, Scenario};
use crate::report::Report;
use crate::util::{err, step, Result};
use std::time::Duration;

/// The guest status the kernel reports when it dies (`kernel/src/panic.rs`).
const KERNEL_FAILURE_STATUS: i32 = abi::kip::KERNEL_FAILURE_STATUS as i32;

/// A scenario definition: the boot image, the command line and what to expect.
struct Def {
    name: &'static str,
    what: &'static str,
    programs: Vec<BootProgram>,
    append: &'static str,
    /// `(test name, marker)`: each marker is reported as its own test, in order.
    checks: Vec<(&'static str, String)>,
    /// Text that must not appear on the serial line.
    forbidden: &'static [&'static str],
    /// Guest exit status; `None`: the scenario never powers off and ends once all checks passed.
    status: Option<i32>,
    /// `(after, text)`: serial input, typed at once if `after` is empty, else once the serial
    /// line showed `after`.
    input: &'static [(&'static str, &'static str)],
}

/// A boot image whose root task moe starts `modules` as `script` says.
fn under_moe(modules: &[&str], script: &str) -> Vec<BootProgram> {
    let mut v = vec![BootProgram::sigma0(), BootProgram::start("moe", "")];
    v.extend(modules.iter().map(|m| BootProgram::module(m, "")));
    v.push(BootProgram::data("boot.cfg", script));
    v
}

/// The boot script of the `bootscript` scenario: a server and a client wired by name.
const BOOT_CFG: &str = r#"# two programs and the gate between them
gate hello

start ktest prio=120 name=server
    args "ns-server"
    cap hello = hello server
start ktest name=client
    args "ns-client"
    cap hello = hello
    cap platform = @platform
"#;

/// A session server and its client, wired by the script's gate `hello`.
const BOOT_CFG_SESSION: &str = r#"gate hello
start ktest prio=120 name=server
    args "session-server"
    cap hello = hello server
    cap factory = @factory
    cap platform = @platform
start ktest name=client
    args "session-client"
    cap hello = hello
"#;

/// The session pair with a dataspace shared through the session.
const BOOT_CFG_DATASPACE: &str = r#"gate hello
start ktest prio=120 name=server
    args "session-server"
    cap hello = hello server
    cap factory = @factory
    cap scheduler = @scheduler
    cap platform = @platform
start ktest name=client
    args "ds-client"
    cap hello = hello
    cap factory = @factory
    cap scheduler = @scheduler
"#;

/// argv, environment and auxiliary vector.
const BOOT_CFG_ARGV: &str = r#"start ktest name=argv
    args "argv one \"two words\" three"
    env "GREETING=hi there"
    env OTHER=1
"#;

/// A name registered at run time: the consumer asks before the provider has registered it.
const BOOT_CFG_REGISTRY: &str = r#"start ktest prio=100 name=provider
    args "provider"
    provides svc
    cap factory = @factory
start ktest prio=120 name=consumer
    args "consumer"
    cap svc = svc
    cap platform = @platform
"#;

/// Threads: one program may make them (factory and scheduler granted), one may not.
const BOOT_CFG_THREADS: &str = r#"start ktest prio=110 name=denied
    args "threads-denied"
start ktest name=threads
    args "threads"
    cap factory = @factory
    cap scheduler = @scheduler
    cap platform = @platform
"#;

/// A program that ends: moe hears of it and deletes its task.
const BOOT_CFG_EXIT: &str = r#"start hello
    args "as a child of moe"
"#;

/// Programs that crash or panic while another runs on: each reported and deleted by moe.
const BOOT_CFG_CRASH: &str = r#"start ktest prio=150 name=crasher
    args "fault ud"
start ktest prio=140 name=panicker
    args "panic"
start hello prio=130 name=survivor
    args "still running"
"#;

/// A log proxy stands in for a program's kernel log and filters it.
const BOOT_CFG_PROXY: &str = r#"gate logs
start ktest prio=150 name=logproxy
    args "log-proxy"
    cap logs = logs server
start hello prio=50
    args "the secret is 42"
    log = logs
"#;

/// A program that hits its memory quota, a second one that gets the first one's memory back,
/// one that touches memory nobody lent it, and one that runs after them all; below moe's
/// priority, the later ones run one after the other.
const BOOT_CFG_QUOTA: &str = r#"start ktest prio=150 name=hog quota=2M
    args "hog"
start ktest prio=60 name=hog2 quota=2M
    args "hog"
start ktest prio=50 name=wild
    args "fault page"
start ktest prio=45 name=reserver quota=2M
    args "reserve"
start hello prio=40 name=survivor
    args "still running"
"#;

/// A script naming a module the boot image lacks: the rest still starts.
const BOOT_CFG_MISSING: &str = r#"gate hello
start nosuch
start ktest prio=120 name=server
    args "ns-server"
    cap hello = hello server
"#;

fn defs() -> Vec<Def> {
    let fault =
        |kind: &str| BootProgram::start("ktest", &format!("fault {kind}")).named(&format!("fault-{kind}"));
    let report = |task: &str, what: &str| format!("user fault: task {task}: {what}");
    vec![
        Def {
            name: "hello",
            what: "the kernel starts a root task that greets from ring 3",
            programs: vec![BootProgram::start("hello", "from the boot image")],
            append: "",
            forbidden: &[],
            checks: vec![
                ("gib-pages", "kernel: paging: kernel half in 1 GiB pages".into()),
                ("boot-banner", "kernel: booting".into()),
                ("boot-task-started", "kernel: starting boot task hello".into()),
                ("ring3-syscall-print", "hello: Hello from ring 3 (args: from the boot image)".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "nogbpages",
            what: "the kernel half in 2 MiB pages, as on a CPU without 1 GiB pages",
            programs: vec![BootProgram::start("hello", "with 2 MiB pages")],
            append: "nogbpages",
            forbidden: &[],
            checks: vec![
                ("mib-pages", "kernel: paging: kernel half in 2 MiB pages".into()),
                ("ring3-syscall-print", "hello: Hello from ring 3 (args: with 2 MiB pages)".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "syscall",
            what: "system-call round trip, error returns and the console object",
            programs: vec![BootProgram::start("ktest", "syscall")],
            append: "",
            forbidden: &[],
            checks: vec![
                ("null-syscall-error", "ktest: invalid selector -> NoEnt ok".into()),
                ("bad-opcode", "ktest: bad opcode -> NoSys ok".into()),
                ("bad-protocol", "ktest: wrong protocol -> BadProto ok".into()),
                ("bad-length", "ktest: oversized log write -> Inval ok".into()),
                ("round-trip", "ktest: syscall round trip".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "user-faults",
            what: "each user fault is reported and only the faulting task dies",
            programs: vec![
                fault("page"),
                fault("kernel-read"),
                fault("ud"),
                fault("gp"),
                fault("div"),
                BootProgram::start("ktest", "survivor"),
            ],
            append: "",
            forbidden: &[],
            checks: vec![
                ("page-fault", report("fault-page", "page fault (#PF) ip=")),
                ("page-fault-addr", "addr=0xdead0000 err=0x4".into()),
                ("kernel-read", report("fault-kernel-read", "page fault (#PF) ip=")),
                ("invalid-opcode", report("fault-ud", "invalid opcode (#UD) ip=")),
                ("general-protection", report("fault-gp", "general protection (#GP) ip=")),
                ("divide-error", report("fault-div", "divide error (#DE) ip=")),
                ("kernel-survives", "ktest: survivor still running after the faults".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "vcpu-doomed",
            what: "a vCPU whose upcall entry is unusable loses its task at a timer interrupt; the rest runs on",
            programs: vec![
                BootProgram::start("ktest", "vcpu-doomed").named("vcpu-doomed"),
                BootProgram::start("ktest", "survivor"),
            ],
            append: "",
            forbidden: &[],
            checks: vec![
                ("armed", "vcpu-doomed: armed".into()),
                ("task-destroyed", "vcpu of task vcpu-doomed: entry ip/sp 0x800000000000/".into()),
                ("kernel-survives", "ktest: survivor still running after the faults".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "preempt",
            what: "the timer preempts a task spinning without system calls",
            programs: vec![
                BootProgram::start("ktest", "spin").named("spinner"),
                BootProgram::start("ktest", "preempt"),
            ],
            append: "",
            forbidden: &[],
            checks: vec![
                ("spinner-started", "spinner: spinning without system calls".into()),
                ("preempted", "ktest: ran while the spinner spins".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "objects",
            what: "every kernel object and opcode, success and error paths, with sigma0",
            programs: vec![BootProgram::sigma0(), BootProgram::start("ktest", "objects")],
            append: "",
            forbidden: &[],
            checks: vec![
                ("sigma0", "ktest: sigma0 and page faults ok".into()),
                ("large-pages", "ktest: 2 MiB pages ok".into()),
                ("boot-image", "ktest: boot image visible ok (2 modules)".into()),
                ("factory-caps", "ktest: factory, quotas, capability rights and revocation ok".into()),
                ("semaphore-timeouts", "ktest: semaphore and timeouts ok".into()),
                ("ipc-intra", "ktest: intra-task IPC, gates, errors ok".into()),
                ("irq-icu", "ktest: irq and icu ok".into()),
                ("exceptions", "ktest: exception IPC ok".into()),
                ("deletion", "ktest: deletion wakes partners ok".into()),
                ("fpu", "ktest: FPU/SSE state per thread ok".into()),
                ("ipc-inter", "ktest: inter-task IPC, pager of a created task, task deletion ok".into()),
                ("io-ports", "ktest: I/O ports from sigma0, enforcement and revocation ok".into()),
                ("all", "ktest: all kernel object checks passed".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "vcpu",
            what: "a mini-OS on a vCPU runs three user tasks: system calls, page faults, exceptions, timer",
            programs: vec![BootProgram::sigma0(), BootProgram::start("ktest", "vcpu")],
            append: "",
            forbidden: &[],
            checks: vec![("mini-os", "ktest: vcpu mini-OS ok".into())],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "spawn",
            what: "a program started from user space: ELF loader, heap, memory from sigma0",
            programs: vec![BootProgram::sigma0(), BootProgram::start("ktest", "spawn"), BootProgram::module("hello", "")],
            append: "",
            forbidden: &[],
            checks: vec![
                ("corrupt-elf", "ktest: broken image: bad ELF image: not a static x86_64 executable".into()),
                ("started", "ktest: hello started from user space".into()),
                ("runs", "hello: Hello from ring 3 (args: spawned by ktest)".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "terminal",
            what: "console input: ktest becomes the terminal, echoes a line typed at boot and one typed later, unprefixed",
            programs: vec![BootProgram::start("ktest", "terminal")],
            append: "",
            // A prefixed echo would mean the terminal's output was not raw.
            forbidden: &["ktest: echo", "ktest: terminal ready", "FAILED"],
            checks: vec![
                ("read-needs-terminal", "ktest: terminal: read before Terminal -> Perm ok".into()),
                // Unprefixed: each starts its line.
                ("irq-at-terminal", "\ninput was waiting: the Irq came with Terminal".into()),
                ("echo-early-input", "\necho: early line typed at boot".into()),
                ("ready", "\nterminal ready".into()),
                ("echo-later-input", "\necho: late line typed after the ready marker\n".into()),
                ("prefixed-after-release", "ktest: terminal released".into()),
            ],
            status: Some(0),
            input: &[
                ("", "early line typed at boot\n"),
                ("terminal ready", "late line typed after the ready marker\r"),
            ],
        },
        Def {
            name: "bootscript",
            what: "the root task moe runs a boot script: gates, programs, capabilities by name",
            programs: under_moe(&["ktest"], BOOT_CFG),
            append: "",
            forbidden: &[],
            checks: vec![
                ("parsed", "moe: starting 2 programs".into()),
                ("started", "moe: 2 of 2 programs started".into()),
                ("server-bound", "server: serving `hello`".into()),
                ("client-called", "client: hello answered 42".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "session",
            what: "a client opens a session with a server; when it ends the server hears of it (IpcGate::Watch) and frees it",
            programs: under_moe(&["ktest"], BOOT_CFG_SESSION),
            append: "",
            forbidden: &["FAILED"],
            checks: vec![
                ("opened", "server: session opened".into()),
                ("used", "client: session answered 42; leaving".into()),
                ("server-told", "server: session closed: its client is gone; freeing it".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "dataspace",
            what: "a client allocates a dataspace, writes it through its region manager, shares it read-only through a session; the server reads it; moe frees it when nobody holds it",
            programs: under_moe(&["ktest"], BOOT_CFG_DATASPACE),
            append: "",
            forbidden: &["FAILED", "rm: "],
            checks: vec![
                ("copied", "client: copied a dataspace".into()),
                ("server-read", "server: read from the shared dataspace: \"written by the client into a dataspace\"".into()),
                ("client-done", "client: the server read our dataspace; leaving".into()),
                ("session-freed", "server: session closed: its client is gone; freeing it".into()),
                ("freed", "moe: dataspace 0 of client freed (8 KiB): no program holds it".into()),
                ("copy-freed", "moe: dataspace 1 of client freed (8 KiB): no program holds it".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "argv",
            what: "a program moe starts gets argv (quoted words kept together), its env lines and an auxiliary vector",
            programs: under_moe(&["ktest"], BOOT_CFG_ARGV),
            append: "",
            forbidden: &["FAILED"],
            checks: vec![
                ("argv", "argv: 4 arguments: argv|one|two words|three".into()),
                ("env", "argv: GREETING=hi there".into()),
                ("auxv", "argv: page size 4096".into()),
                ("ends", "moe: argv exited with status 0".into()),
            ],
            status: None,
            input: &[],
        },
        Def {
            name: "registry",
            what: "a program registers a capability under a name it provides; another finds it by that name once it is there",
            programs: under_moe(&["ktest"], BOOT_CFG_REGISTRY),
            append: "",
            forbidden: &["FAILED"],
            checks: vec![
                ("not-yet", "consumer: `svc` is not registered yet".into()),
                ("registered", "moe: provider registered `svc`".into()),
                ("answered", "consumer: `svc` answered 42".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "threads",
            what: "l4::thread in programs moe starts: with @factory and @scheduler threads run and join; without, NoEnt",
            programs: under_moe(&["ktest"], BOOT_CFG_THREADS),
            append: "",
            forbidden: &["FAILED"],
            checks: vec![
                ("denied", "denied: threads denied".into()),
                ("results", "threads: threads returned [499500, 999000, 1498500], counter 3000".into()),
                ("all-slots", "threads: threads ok".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "bootscript-exit",
            what: "a program moe started exits: its parent hears the status and deletes the task",
            programs: under_moe(&["hello"], BOOT_CFG_EXIT),
            append: "",
            forbidden: &[],
            checks: vec![
                ("memory-reported", "moe: hello: ".into()),
                ("runs", "hello: Hello from ring 3 (args: as a child of moe)".into()),
                ("no-platform", "hello: shutdown refused".into()),
                ("exit-reported", "moe: hello exited with status 1".into()),
            ],
            status: None,
            input: &[],
        },
        Def {
            name: "bootscript-crash",
            what: "programs that crash or panic are reported to moe and deleted; the others run on",
            programs: under_moe(&["ktest", "hello"], BOOT_CFG_CRASH),
            append: "",
            forbidden: &[],
            checks: vec![
                ("panic-message", "panicker: panic: ".into()),
                ("others-run", "survivor: Hello from ring 3 (args: still running)".into()),
                ("all-started", "moe: 3 of 3 programs started".into()),
                ("crash-reported", "moe: crasher crashed: exception 6 at ip 0x".into()),
                ("panic-reported", "moe: panicker exited with status 101".into()),
                ("exit-reported", "moe: survivor exited with status 1".into()),
            ],
            status: None,
            input: &[],
        },
        Def {
            name: "bootscript-proxy",
            what: "a log proxy stands in for a program's log (interposition) and filters a line",
            programs: under_moe(&["ktest", "hello"], BOOT_CFG_PROXY),
            append: "",
            forbidden: &["secret is 42"],
            checks: vec![
                ("proxy-bound", "logproxy: standing in for the log".into()),
                ("filtered", "logproxy: dropped a line of [client] (it mentions a secret)".into()),
                ("forwarded", format!("logproxy: [client] kernel ABI v{}", abi::ABI_VERSION)),
                ("client-unaware", "logproxy: [client] exit status 1".into()),
                ("exit-reported", "moe: hello exited with status 1".into()),
            ],
            status: None,
            input: &[],
        },
        Def {
            name: "bootscript-quota",
            what: "memory within quotas: a hog is refused, a wild access is a crash, a reserved range is backed on first touch, the rest runs on",
            programs: under_moe(&["ktest", "hello"], BOOT_CFG_QUOTA),
            append: "",
            forbidden: &["FAILED"],
            checks: vec![
                ("refused", "hog: allocation refused after 1".into()),
                ("hog-exits", "moe: hog exited with status 0; memory back: 2048 KiB lent, ".into()),
                ("memory-reused", "KiB image and stack, 2048 KiB of it reused".into()),
                ("wild-crash", "moe: wild crashed: page fault at 0xdead0000".into()),
                ("reserve", "reserver: reserve ok: 1 MiB backed on first touch".into()),
                ("reserver-exits", "moe: reserver exited with status 0".into()),
                ("others-run", "survivor: Hello from ring 3 (args: still running)".into()),
                ("survivor-exits", "moe: survivor exited with status 1".into()),
            ],
            status: None,
            input: &[],
        },
        Def {
            name: "bootscript-missing",
            what: "a boot script naming a missing module: a clear message, the other programs start",
            programs: under_moe(&["ktest"], BOOT_CFG_MISSING),
            append: "",
            forbidden: &[],
            checks: vec![
                ("message", "moe: boot.cfg: line 2: no module `nosuch` in the boot image".into()),
                ("others-start", "moe: 1 of 2 programs started".into()),
                ("server-bound", "server: serving `hello`".into()),
            ],
            status: None,
            input: &[],
        },
        Def {
            name: "fuzz",
            what: "a hostile task makes 10^5 random invocations; the kernel survives its self-check",
            programs: vec![BootProgram::sigma0(), BootProgram::start("ktest", &format!("fuzz {} 100000", fuzz_seed()))],
            append: "",
            forbidden: &[],
            checks: vec![("survived", "kernel self-check passed".into())],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "ipc-trace",
            what: "a few inter-task round trips between two calls of ktest's trace_mark (profile with `-- -d exec,nochain -D FILE`)",
            programs: vec![BootProgram::sigma0(), BootProgram::start("ktest", "trace")],
            append: "",
            forbidden: &[],
            checks: vec![],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "vcpu-bench",
            what: "the vCPU benchmarks alone (profile with `-- -d exec,nochain -D FILE`)",
            programs: vec![BootProgram::sigma0(), BootProgram::start("ktest", "vcpu-bench")],
            append: "",
            forbidden: &[],
            checks: vec![("reflect", "BENCH vcpu_syscall_reflect_classic".into())],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "world-bench",
            what: "system-call and page-fault reflection with the guest kernel in a guest world (level 1 in the user task's address space)",
            programs: vec![BootProgram::sigma0(), BootProgram::start("ktest", "world-bench")],
            append: "",
            forbidden: &[],
            checks: vec![
                ("reflect", "BENCH vcpu_syscall_reflect ".into()),
                ("fault", "BENCH vcpu_pagefault_reflect ".into()),
            ],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "world",
            what: "in a guest world the user task cannot reach the guest kernel's slot, and the guest kernel cannot reach the kernel's memory or run privileged instructions",
            programs: vec![BootProgram::sigma0(), BootProgram::start("ktest", "world")],
            append: "",
            forbidden: &[],
            checks: vec![("isolation", "ktest: guest world isolation ok".into())],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "worlds",
            what: "a guest world maps its task's user half, the guest's slot supervisor-only, and of the kernel only the trampoline",
            programs: vec![BootProgram::start("hello", "")],
            append: "selftest=worlds",
            forbidden: &["selftest: worlds:"],
            checks: vec![("selftest", "selftest: worlds ok".into())],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "large-pages",
            what: "a user address space gets 2 MiB pages for complete blocks and 4 KiB pages back when one page changes",
            programs: vec![BootProgram::start("hello", "")],
            append: "selftest=large-pages",
            forbidden: &["selftest: large pages:"],
            checks: vec![("selftest", "selftest: large pages ok".into())],
            status: Some(0),
            input: &[],
        },
        Def {
            name: "kernel-fault",
            what: "a kernel fault prints a register dump and fails the boot",
            programs: vec![BootProgram::start("hello", "")],
            append: "selftest=kernel-fault",
            forbidden: &[],
            checks: vec![
                ("fault-banner", "KERNEL FAULT: page fault (#PF)".into()),
                ("register-dump", "rax=".into()),
                ("fault-address", "cr2=0x".into()),
            ],
            status: Some(KERNEL_FAILURE_STATUS),
            input: &[],
        },
    ]
}

/// The fuzz seed: `L4RS_FUZZ_SEED` if set (to replay a run), else different every run.
fn fuzz_seed() -> u64 {
    std::env::var("L4RS_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
    })
}

/// `cargo xtask fuzz [--count N] [--seed S]`: the long fuzz run.
pub fn fuzz(art: &Artifacts, count: u64, seed: Option<u64>) -> Result {
    let seed = seed.unwrap_or_else(fuzz_seed);
    let m = art.machine(
        "fuzz-long",
        &[BootProgram::sigma0(), BootProgram::start("ktest", &format!("fuzz {seed} {count}"))],
        "",
    )?;
    let mut s = Scenario::new("fuzz-long", m);
    s.markers = vec!["kernel self-check passed".into()];
    s.timeout = Duration::from_secs(60 + count / 2000);
    let o = run_scenario(&s)?;
    match &o.failure {
        None => {
            step(format!(
                "fuzz: {count} invocations with seed {seed} survived ({:.0} s)",
                o.elapsed.as_secs_f64()
            ));
            Ok(())
        }
        Some(f) => err(format!("fuzz failed with seed {seed}: {f}\n{}", o.tail(40))),
    }
}

/// Scenario names and descriptions for `cargo xtask run --list`.
pub fn scenario_list() -> Vec<(&'static str, &'static str)> {
    defs().into_iter().map(|d| (d.name, d.what)).collect()
}

/// The machine of a named scenario, for `cargo xtask run`.
pub fn machine_for(art: &Artifacts, name: &str) -> Result<Machine> {
    let Some(d) = defs().into_iter().find(|d| d.name == name) else {
        let names: Vec<_> = defs().iter().map(|d| d.name).collect();
        return err(format!("no scenario `{name}`; there are: {}", names.join(", ")));
    };
    art.machine(d.name, &d.programs, d.append)
}

/// Boots every scenario the filter selects and records one result per check.
pub fn run_all(art: &Artifacts, report: &mut Report, wanted: &dyn Fn(&str) -> bool) {
    for d in defs() {
        let prefix = format!("qemu/{}", d.name);
        if !wanted(&prefix) && !d.checks.iter().any(|(c, _)| wanted(&format!("{prefix}/{c}"))) {
            continue;
        }
        step(format!("QEMU scenario {}: {}", d.name, d.what));
        let machine = match art.machine(d.name, &d.programs, d.append) {
            Ok(m) => m,
            Err(e) => {
                report.fail(&prefix, &e.to_string());
                continue;
            }
        };
        let mut s = Scenario::new(d.name, machine);
        s.markers = d.checks.iter().map(|(_, m)| m.clone()).collect();
        s.expect_status = d.status;
        s.forbidden = d.forbidden.iter().map(|f| f.to_string()).collect();
        s.timeout = Duration::from_secs(60);
        for (after, text) in d.input {
            match *after {
                "" => s.input.get_or_insert_with(String::new).push_str(text),
                after => s.input_after.push((after.to_string(), text.to_string())),
            }
        }
        match run_scenario(&s) {
            Ok(o) => {
                for (check, marker) in &d.checks {
                    let name = format!("{prefix}/{check}");
                    if o.log.contains(marker.as_str()) {
                        report.pass(&name, "");
                    } else {
                        report.fail(&name, &format!("`{marker}` not on the serial line"));
                    }
                }
                report.scenario(&format!("{prefix}/exit"), &o);
            }
            Err(e) => report.fail(&prefix, &e.to_string()),
        }
    }
}

/// Parses `BENCH <name> <value> <unit>` lines printed by the guest.
pub fn parse_bench(log: &str, system: &str) -> Vec<Metric> {
    log.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace().skip_while(|w| *w != "BENCH").skip(1);
            let (name, value, unit) = (it.next()?, it.next()?.parse().ok()?, it.next()?);
            Some(Metric::new(name, system, value, unit))
        })
        .collect()
}

/// Boots the benchmark scenario `runs` times and returns the median of each metric.
pub fn kernel_metrics(art: &Artifacts, runs: usize) -> Result<Vec<Metric>> {
    let machine =
        art.machine("bench", &[BootProgram::sigma0(), BootProgram::start("ktest", "bench")], "bench")?;
    let mut all: Vec<Vec<Metric>> = Vec::new();
    for i in 0..runs {
        step(format!("kernel micro-benchmarks, boot {}/{runs}", i + 1));
        let mut s = Scenario::new("bench", machine.clone());
        s.timeout = Duration::from_secs(120);
        let o = run_scenario(&s)?;
        if let Some(f) = &o.failure {
            return err(format!("benchmark boot failed: {f}\n{}", o.tail(20)));
        }
        all.push(parse_bench(&o.log, "kernel"));
    }
    // Boot time: QEMU start to the first line of a boot task, and of the first program the root
    // task starts from its boot script.
    let boots = [
        (
            "boot_to_user",
            art.machine("hello", &[BootProgram::start("hello", "")], "")?,
            "hello: Hello from ring 3",
        ),
        (
            "boot_to_script_program",
            art.machine("bootscript", &under_moe(&["ktest"], BOOT_CFG), "")?,
            "server: serving",
        ),
    ];
    for (i, run) in all.iter_mut().enumerate() {
        step(format!("boot to the first program line, boot {}/{runs}", i + 1));
        for (metric, machine, marker) in &boots {
            let mut s = Scenario::new("boot-time", machine.clone());
            s.markers = vec![marker.to_string()];
            s.expect_status = None;
            let o = run_scenario(&s)?;
            match (&o.failure, o.marker_times.first()) {
                (None, Some(t)) => run.push(Metric::new(metric, "kernel", t.as_secs_f64() * 1e3, "ms")),
                _ => return err(format!("boot-time run failed: {:?}\n{}", o.failure, o.tail(20))),
            }
        }
    }
    let mut out: Vec<Metric> = Vec::new();
    for m in all.first().cloned().unwrap_or_default() {
        let mut vals: Vec<f64> =
            all.iter().filter_map(|run| run.iter().find(|x| x.name == m.name).map(|x| x.value)).collect();
        if let Some(v) = bench::median(&mut vals) {
            out.push(Metric { value: v, ..m });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_parse() {
        let m = parse_bench("junk\nktest: BENCH syscall_roundtrip 140 cycles\nBENCH bad x y\n", "kernel");
        assert_eq!(m, vec![Metric::new("syscall_roundtrip", "kernel", 140.0, "cycles")]);
    }

    #[test]
    fn scenario_names_unique() {
        let names: Vec<_> = defs().iter().map(|d| d.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names.len(), sorted.len());
    }
}

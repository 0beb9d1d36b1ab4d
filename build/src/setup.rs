//! `cargo xtask setup`: installs what the build and the tests need, idempotently.
//!
//! Everything a fresh machine lacks is listed here and nowhere else. `run`, `test` and `bench`
//! call [`ensure`] first, which only does work when something is missing.

use crate::util::{output, run, step, Result};
use std::process::Command;

/// A Debian package the project needs.
struct AptPkg {
    name: &'static str,
    /// Installed from bookworm-backports (QEMU 10 instead of bookworm's 7.2).
    backports: bool,
    /// The exact version to install, where the build is pinned to one.
    version: Option<&'static str>,
}

const fn pkg(name: &'static str) -> AptPkg {
    AptPkg { name, backports: false, version: None }
}

const APT: &[AptPkg] = &[
    AptPkg { name: "qemu-system-x86", backports: true, version: None },
    // The reference guest, UML and L4Linux are all built from this one source package, pinned
    // (`cargo xtask linux` checks version and tarball digest again).
    AptPkg { name: crate::linux::DEB_PACKAGE, backports: false, version: Some(crate::linux::DEB_VERSION) },
    pkg("flex"),
    pkg("bison"),
    pkg("bc"),
    pkg("libelf-dev"),
    pkg("libssl-dev"),
    pkg("cpio"),
    pkg("xz-utils"),
    pkg("make"),
    pkg("gcc"),
    pkg("busybox-static"),
    // The reference guest (cargo xtask linux/rootfs): patch for linux-patches/, gzip for the
    // initramfs (apt-get download and dpkg-deb come with every Debian system).
    pkg("patch"),
    pkg("gzip"),
];

const RUST_TARGETS: &[&str] = &["x86_64-unknown-none", "aarch64-unknown-none"];
const RUST_COMPONENTS: &[&str] = &["rust-src", "llvm-tools", "clippy", "rustfmt"];
const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/bookworm-backports.list";

fn apt_installed(p: &AptPkg) -> bool {
    Command::new("dpkg-query").args(["-W", "-f=${Status} ${Version}", p.name]).output().is_ok_and(|o| {
        let out = String::from_utf8_lossy(&o.stdout);
        out.contains("install ok installed") && p.version.is_none_or(|v| out.ends_with(&format!(" {v}")))
    })
}

fn has_backports() -> bool {
    let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") else { return false };
    dir.flatten().any(|e| std::fs::read_to_string(e.path()).is_ok_and(|s| s.contains("bookworm-backports")))
        || std::fs::read_to_string("/etc/apt/sources.list").is_ok_and(|s| s.contains("bookworm-backports"))
}

fn missing_apt() -> Vec<&'static AptPkg> {
    APT.iter().filter(|p| !apt_installed(p)).collect()
}

fn missing_rust() -> Result<(Vec<&'static str>, Vec<&'static str>)> {
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    let comps = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    let t = RUST_TARGETS.iter().copied().filter(|t| !targets.lines().any(|l| l.trim() == *t)).collect();
    let c = RUST_COMPONENTS
        .iter()
        .copied()
        .filter(|c| !comps.lines().any(|l| l.starts_with(&format!("{c}-")) || l.trim() == *c))
        .collect();
    Ok((t, c))
}

/// Installs whatever is missing; prints what it does. Cheap when nothing is.
pub fn ensure() -> Result {
    let (targets, comps) = missing_rust()?;
    if !targets.is_empty() {
        step(format!("rustup: adding targets {}", targets.join(" ")));
        run(Command::new("rustup").args(["target", "add"]).args(&targets))?;
    }
    if !comps.is_empty() {
        step(format!("rustup: adding components {}", comps.join(" ")));
        run(Command::new("rustup").args(["component", "add"]).args(&comps))?;
    }
    let missing = missing_apt();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<_> = missing.iter().map(|p| p.name).collect();
    step(format!("apt: installing {}", names.join(" ")));
    if missing.iter().any(|p| p.backports) && !has_backports() {
        step(format!("apt: enabling bookworm-backports in {BACKPORTS_LIST}"));
        std::fs::write(BACKPORTS_LIST, "deb http://deb.debian.org/debian bookworm-backports main\n")
            .map_err(|e| format!("cannot write {BACKPORTS_LIST} (run as root?): {e}"))?;
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    for (bpo, group) in [(true, "backports"), (false, "main")] {
        let pkgs: Vec<_> = missing
            .iter()
            .filter(|p| p.backports == bpo)
            .map(|p| p.version.map_or(p.name.to_string(), |v| format!("{}={v}", p.name)))
            .collect();
        if pkgs.is_empty() {
            continue;
        }
        step(format!("apt: installing from {group}: {}", pkgs.join(" ")));
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "-q", "--no-install-recommends"]);
        if bpo {
            cmd.args(["-t", "bookworm-backports"]);
        }
        run(cmd.args(&pkgs))?;
    }
    Ok(())
}

/// `cargo xtask setup`: like [`ensure`], and says so when all is present.
pub fn setup() -> Result {
    ensure()?;
    step("setup complete: Rust targets, components and Debian packages are installed");
    Ok(())
}

//! `cargo xtask linux [--uml]`: builds a Linux kernel from Debian's pinned `linux-source-6.12`,
//! with the quilt-style series in `linux-patches/` applied and a small configuration
//! (`make tinyconfig` + a fragment in `build/linux-configs/`). Two flavours share everything
//! but the architecture, the fragment and the artefact ([`Flavor`]): the reference guest's x86
//! kernel ([`REFERENCE`], `bzImage`) and upstream User-Mode Linux ([`UML`], `ARCH=um`, the
//! `linux` program, stock os-Linux host layer).
//!
//! The result is cached under `~/.cache/l4rs/linux/<key>/<artefact>`, where the key hashes every
//! input (tarball, architecture, fragment, patches, compiler, [`FORMAT`]); an unchanged kernel is
//! never rebuilt. The unpacked tree lives in `~/.cache/l4rs/linux/work/`, reused while the source
//! (tarball + patches) stays the same, with one object directory per flavour, so a fragment change
//! only rebuilds what make decides to.

use crate::util::{cache_dir, err, output, root, run, step, succeeds, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The Debian package the source comes from, and the exact version the hash below belongs to.
pub const DEB_PACKAGE: &str = "linux-source-6.12";
pub const DEB_VERSION: &str = "6.12.117-1~deb12u1";
const TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
const TARBALL_SHA256: &str = "585a4a074597aefa2b1a68ada83a3184ba351c127544dea80618bbcceaa3961f";
/// Top directory inside the tarball.
const TARBALL_DIR: &str = "linux-source-6.12";
/// Bump when the way the kernel is built changes in a way the inputs do not show.
const FORMAT: u32 = 1;

/// What differs between the kernels built from the one source tree.
pub struct Flavor {
    /// For messages and the object directory (`work/obj` for the reference, `work/obj-<name>`).
    name: &'static str,
    /// Kbuild `ARCH=`.
    arch: &'static str,
    /// The config fragment, relative to the workspace root.
    fragment: &'static str,
    /// The make target, and where it leaves the artefact inside the object directory.
    target: &'static str,
    built: &'static str,
    /// The artefact's file name in the cache.
    artefact: &'static str,
}

/// The reference guest's kernel.
pub const REFERENCE: Flavor = Flavor {
    name: "reference",
    arch: "x86",
    fragment: "build/linux-configs/reference.config",
    target: "bzImage",
    built: "arch/x86/boot/bzImage",
    artefact: "bzImage",
};

/// Upstream User-Mode Linux: a dynamically linked Linux program run inside the reference guest.
pub const UML: Flavor = Flavor {
    name: "uml",
    arch: "um",
    fragment: "build/linux-configs/uml.config",
    target: "linux",
    built: "linux",
    artefact: "linux",
};

/// A built kernel: `bzImage` for [`REFERENCE`], the `linux` program for [`UML`].
pub struct Kernel {
    pub image: PathBuf,
}

/// SHA-256 of a file, via `sha256sum` (no hashing crate needed for a few files).
pub fn sha256_file(path: &Path) -> Result<String> {
    let out = output(Command::new("sha256sum").arg(path))?;
    parse_sha256sum(&out).ok_or_else(|| format!("unexpected sha256sum output for {}", path.display()).into())
}

/// SHA-256 of a string, via `sha256sum` reading stdin.
pub fn sha256_str(s: &str) -> Result<String> {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    child.stdin.take().expect("piped").write_all(s.as_bytes())?;
    let out = child.wait_with_output()?;
    parse_sha256sum(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| "sha256sum failed".into())
}

/// The digest in one line of `sha256sum` output.
fn parse_sha256sum(out: &str) -> Option<String> {
    let d = out.split_whitespace().next()?;
    (d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())).then(|| d.to_ascii_lowercase())
}

/// Patch file names in a quilt `series` file: one per line, `#` comments, options after the name
/// (quilt's `-p1`) ignored because we always apply with `-p1`.
fn parse_series(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The hunks `patch` reported as failed, e.g. `Hunk #2 FAILED at 120.`, with the file they were in.
fn failed_hunks(patch_output: &str) -> Vec<String> {
    let mut file = String::new();
    let mut out = Vec::new();
    for line in patch_output.lines() {
        if let Some(f) = line.strip_prefix("patching file ") {
            file = f.trim().to_string();
        } else if line.starts_with("Hunk #") && line.contains("FAILED") {
            out.push(format!("{file}: {}", line.trim()));
        }
    }
    out
}

/// Lines of the fragment that must hold in the final `.config`, as (symbol, wanted value);
/// `None` means "is not set".
fn fragment_settings(fragment: &str) -> Vec<(String, Option<String>)> {
    let mut v = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(sym) = rest.strip_suffix(" is not set") {
                v.push((sym.to_string(), None));
            }
        } else if let Some((sym, val)) = line.split_once('=') {
            if sym.starts_with("CONFIG_") {
                v.push((sym.to_string(), Some(val.to_string())));
            }
        }
    }
    v
}

/// Fragment settings that the final `.config` does not honour (Kconfig drops what it cannot satisfy).
fn config_mismatches(fragment: &str, config: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for (sym, want) in fragment_settings(fragment) {
        let have = config.lines().find_map(|l| l.strip_prefix(&format!("{sym}="))).map(str::to_string);
        let ok = match (&want, &have) {
            (None, None) => true,
            (None, Some(h)) => h == "n",
            (Some(w), Some(h)) => w == h,
            (Some(_), None) => false,
        };
        if !ok {
            bad.push(format!(
                "{sym}: wanted {}, got {}",
                want.as_deref().unwrap_or("unset"),
                have.as_deref().unwrap_or("unset")
            ));
        }
    }
    bad
}

/// The patches of `linux-patches/series`, as (name, path).
fn patches() -> Result<Vec<(String, PathBuf)>> {
    let dir = root().join("linux-patches");
    let series =
        std::fs::read_to_string(dir.join("series")).map_err(|e| format!("linux-patches/series: {e}"))?;
    let list = parse_series(&series);
    let mut v = Vec::new();
    for name in list {
        let p = dir.join(&name);
        if !p.is_file() {
            return err(format!("linux-patches/series names {name}, which does not exist"));
        }
        v.push((name, p));
    }
    Ok(v)
}

/// Checks the installed Debian package version and the tarball's digest.
fn check_source() -> Result {
    let v = Command::new("dpkg-query").args(["-W", "-f=${Version}", DEB_PACKAGE]).output();
    let v = v.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    check_version(v.as_deref())?;
    check_tarball(Path::new(TARBALL), TARBALL_SHA256)
}

/// The installed version (`None`: not installed) must be the pinned one.
fn check_version(installed: Option<&str>) -> Result {
    match installed {
        None => err(format!("{DEB_PACKAGE} is not installed: run `cargo xtask setup`")),
        Some(v) if v != DEB_VERSION => err(format!(
            "{DEB_PACKAGE} {v} is installed but the build is pinned to {DEB_VERSION}: install that version \
             (apt-get install {DEB_PACKAGE}={DEB_VERSION}) or update DEB_VERSION and TARBALL_SHA256 in \
             build/src/linux.rs"
        )),
        Some(_) => Ok(()),
    }
}

/// The tarball must exist and have the pinned digest.
fn check_tarball(path: &Path, want: &str) -> Result {
    if !path.is_file() {
        return err(format!(
            "{} is missing although {DEB_PACKAGE} is installed: reinstall it",
            path.display()
        ));
    }
    let got = sha256_file(path)?;
    if got != want {
        return err(format!(
            "{} is corrupt or not the pinned one: sha256 {got}, expected {want} \
             (apt-get install --reinstall {DEB_PACKAGE}={DEB_VERSION})",
            path.display()
        ));
    }
    Ok(())
}

/// The text every cache key is computed from; one `name value` line per input.
fn key_material(arch: &str, fragment_sha: &str, patches: &[(String, String)], gcc: &str) -> String {
    let mut s = format!(
        "format {FORMAT}\ntarball {TARBALL_SHA256}\narch {arch}\nfragment {fragment_sha}\ngcc {gcc}\n"
    );
    for (name, sha) in patches {
        s.push_str(&format!("patch {name} {sha}\n"));
    }
    s
}

/// Hashes the inputs that decide the source tree (tarball + patches): the work tree is reused while
/// this stays the same.
fn source_material(patches: &[(String, String)]) -> String {
    let mut s = format!("format {FORMAT}\ntarball {TARBALL_SHA256}\n");
    for (name, sha) in patches {
        s.push_str(&format!("patch {name} {sha}\n"));
    }
    s
}

/// Builds (or finds in the cache) the kernel of flavour `f`.
pub fn build(f: &Flavor) -> Result<Kernel> {
    check_source()?;
    let patch_list = patches()?;
    let mut patch_shas = Vec::new();
    for (name, p) in &patch_list {
        patch_shas.push((name.clone(), sha256_file(p)?));
    }
    let fragment_path = root().join(f.fragment);
    let fragment = std::fs::read_to_string(&fragment_path).map_err(|e| format!("{}: {e}", f.fragment))?;
    let gcc = output(Command::new("gcc").arg("--version"))?.lines().next().unwrap_or("").to_string();
    let material = key_material(f.arch, &sha256_str(&fragment)?, &patch_shas, &gcc);
    let key = sha256_str(&material)?[..16].to_string();
    let out_dir = cache_dir().join("linux").join(&key);
    let image = out_dir.join(f.artefact);
    let name = f.name;
    if image.is_file() {
        step(format!("linux ({name}): cached {}", image.display()));
        return Ok(Kernel { image });
    }
    step(format!("linux ({name}): building {key} (inputs changed or first build)"));
    let start = Instant::now();
    let work = cache_dir().join("linux/work");
    let src = work.join(TARBALL_DIR);
    let obj = if f.name == REFERENCE.name { work.join("obj") } else { work.join(format!("obj-{name}")) };
    prepare_source(&work, &src, &patch_list, &sha256_str(&source_material(&patch_shas))?)?;

    step(format!("linux ({name}): configuring ARCH={} (tinyconfig + {})", f.arch, f.fragment));
    let make = || {
        let mut c = Command::new("make");
        c.arg("-C").arg(&src).arg(format!("O={}", obj.display())).arg(format!("ARCH={}", f.arch));
        c
    };
    std::fs::create_dir_all(&obj)?;
    run(make().args(["-s", "tinyconfig"]).stdout(Stdio::null()))?;
    run(Command::new(src.join("scripts/kconfig/merge_config.sh"))
        .args(["-m", "-O"])
        .arg(&obj)
        .arg(obj.join(".config"))
        .arg(&fragment_path)
        .env("ARCH", f.arch)
        .stdout(Stdio::null()))?;
    run(make().args(["-s", "olddefconfig"]))?;
    let config = std::fs::read_to_string(obj.join(".config"))?;
    let bad = config_mismatches(&fragment, &config);
    if !bad.is_empty() {
        return err(format!("{}: Kconfig did not honour:\n  {}", f.fragment, bad.join("\n  ")));
    }

    step(format!("linux ({name}): make ARCH={} -j2 {}", f.arch, f.target));
    make_with_progress(make().args(["-j2", f.target]))?;
    let secs = start.elapsed().as_secs();
    std::fs::create_dir_all(&out_dir)?;
    let tmp = out_dir.join(format!("{}.tmp", f.artefact));
    std::fs::copy(obj.join(f.built), &tmp)?;
    std::fs::copy(obj.join(".config"), out_dir.join("config"))?;
    let info = format!("{material}build_seconds {secs}\ndebian {DEB_PACKAGE} {DEB_VERSION}\n");
    std::fs::write(out_dir.join("build-info.txt"), info)?;
    // Renamed last: an artefact in the cache is always complete.
    std::fs::rename(&tmp, &image)?;
    step(format!("linux ({name}): built {} in {}m{:02}s", image.display(), secs / 60, secs % 60));
    Ok(Kernel { image })
}

/// Unpacks the tarball and applies the series into `work`, unless `work` already holds that source.
fn prepare_source(work: &Path, src: &Path, patches: &[(String, PathBuf)], source_key: &str) -> Result {
    let stamp = work.join("source.key");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == source_key) && src.is_dir() {
        return Ok(());
    }
    if !patches.is_empty() && !succeeds(Command::new("patch").arg("--version")) {
        return err("`patch` is not installed: run `cargo xtask setup`");
    }
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    std::fs::create_dir_all(work)?;
    step(format!("linux: unpacking {TARBALL}"));
    run(Command::new("tar").arg("-xJf").arg(TARBALL).arg("-C").arg(work))?;
    for (name, path) in patches {
        step(format!("linux: applying {name}"));
        let out = Command::new("patch")
            .args(["-p1", "--forward", "--batch", "-i"])
            .arg(path)
            .current_dir(src)
            .output()
            .map_err(|e| format!("cannot run patch: {e}"))?;
        if !out.status.success() {
            let text =
                String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            let hunks = failed_hunks(&text);
            let what = if hunks.is_empty() { text.trim().to_string() } else { hunks.join("\n  ") };
            // Leave no half-patched tree behind as if it were good.
            std::fs::remove_dir_all(work)?;
            return err(format!("linux-patches/{name} does not apply:\n  {what}"));
        }
    }
    std::fs::write(&stamp, source_key)?;
    Ok(())
}

/// Runs make, printing each Kbuild line with a running count; on failure shows the last lines.
fn make_with_progress(cmd: &mut Command) -> Result {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(stderr).lines().map_while(std::result::Result::ok) {
            eprintln!("{l}");
            lines.push(l);
        }
        lines
    });
    let mut n = 0usize;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines().map_while(std::result::Result::ok)
    {
        n += 1;
        eprintln!("[{n:5}] {line}");
    }
    let status = child.wait()?;
    let errs = errors.join().unwrap_or_default();
    if !status.success() {
        let tail = errs[errs.len().saturating_sub(20)..].join("\n");
        return err(format!("kernel build failed ({status}):\n{tail}"));
    }
    Ok(())
}

/// `cargo xtask linux [--uml]`: prints the path of the (cached or freshly built) kernel.
pub fn cmd_linux(mut a: crate::util::Args) -> Result<i32> {
    let f = if a.flag("--uml") { &UML } else { &REFERENCE };
    a.finish()?;
    crate::setup::ensure()?;
    let k = build(f)?;
    println!("{}", k.image.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_source_checks() {
        assert!(check_version(Some(DEB_VERSION)).is_ok());
        assert!(check_version(Some("6.12.999-1")).unwrap_err().to_string().contains("pinned to"));
        assert!(check_version(None).unwrap_err().to_string().contains("not installed"));
        let f = std::env::temp_dir().join(format!("l4rs-tarball-test-{}", std::process::id()));
        std::fs::write(&f, "abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(check_tarball(&f, abc).is_ok());
        assert!(check_tarball(&f, TARBALL_SHA256).unwrap_err().to_string().contains("corrupt"));
        std::fs::remove_file(&f).unwrap();
        assert!(check_tarball(&f, abc).unwrap_err().to_string().contains("missing"));
    }

    #[test]
    fn series_parsing() {
        let s = "# comment\n\n0001-a.patch\n0002-b.patch -p1 # why\n   \n";
        assert_eq!(parse_series(s), vec!["0001-a.patch", "0002-b.patch"]);
        assert!(parse_series("").is_empty());
    }

    #[test]
    fn sha256sum_output() {
        let d = "585a4a074597aefa2b1a68ada83a3184ba351c127544dea80618bbcceaa3961f";
        assert_eq!(parse_sha256sum(&format!("{d}  /x\n")).as_deref(), Some(d));
        assert_eq!(parse_sha256sum("abc  -\n"), None);
        assert_eq!(parse_sha256sum(""), None);
    }

    #[test]
    fn sha256_of_known_string() {
        // echo -n abc | sha256sum
        assert_eq!(
            sha256_str("abc").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hunk_failures_name_file_and_hunk() {
        let out = "patching file kernel/fork.c\nHunk #1 succeeded at 10.\nHunk #2 FAILED at 120.\n\
                   1 out of 2 hunks FAILED -- saving rejects to file kernel/fork.c.rej\n";
        assert_eq!(failed_hunks(out), vec!["kernel/fork.c: Hunk #2 FAILED at 120."]);
    }

    #[test]
    fn fragment_checked_against_config() {
        let frag = "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n";
        assert!(config_mismatches(frag, "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n").is_empty());
        let bad = config_mismatches(frag, "CONFIG_B=y\nCONFIG_C=\"y\"\n");
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].starts_with("CONFIG_A: wanted y, got unset"));
    }

    #[test]
    fn key_changes_with_every_input() {
        let p = vec![("a.patch".to_string(), "11".to_string())];
        let base = key_material("x86", "f", &p, "gcc 12");
        assert_ne!(base, key_material("x86", "g", &p, "gcc 12"));
        assert_ne!(base, key_material("x86", "f", &[], "gcc 12"));
        assert_ne!(base, key_material("x86", "f", &p, "gcc 13"));
        assert_ne!(base, key_material("um", "f", &p, "gcc 12"));
        assert_eq!(base, key_material("x86", "f", &p, "gcc 12"));
        assert!(base.contains(TARBALL_SHA256));
    }
}

//! `cargo xtask linux [--uml | --l4]`: builds a Linux kernel from Debian's pinned
//! `linux-source-6.12` with a small configuration (`make tinyconfig` + a fragment in
//! `build/linux-configs/`). Three flavours ([`Flavor`]):
//!
//! - [`REFERENCE`]: the reference guest's x86 kernel (`bzImage`), pristine source;
//! - [`UML`]: upstream User-Mode Linux (`ARCH=um`, the `linux` program, stock os-Linux host
//!   layer), pristine source;
//! - [`L4LINUX`]: L4Linux, `ARCH=um` with the quilt-style series in `linux-patches/` applied (the
//!   host-layer switch `UML_HOST_L4`), our os-L4 sources copied in from `lx-arch/os-L4` and
//!   `lx-arch/os-L4-x86`, and linked freestanding with the `lx-arch` Rust staticlib
//!   (`make LX_ARCH_LIB=...`). It prints `upstream lines changed: N`, the lines the series adds
//!   or removes in files of the tarball ([`upstream_lines_changed`]).
//!
//! The result is cached under `~/.cache/l4rs/linux/<key>/<artefact>`, where the key hashes every
//! input (tarball, architecture, fragment, patches, compiler, [`FORMAT`]; for L4Linux also the
//! os-L4 sources and the staticlib's bytes); an unchanged kernel is never rebuilt. The pristine
//! tree lives in `~/.cache/l4rs/linux/work/` (object directories `obj`, `obj-uml`), the patched one
//! in `~/.cache/l4rs/linux/work-l4/` (object directory `obj`). Each is reused while its source
//! (tarball + patches) stays the same and re-created, objects included, when it changes; otherwise
//! a changed key only means an incremental make (a new staticlib: a relink, seconds).

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
    /// L4Linux: the patch series, os-L4 and the `lx-arch` staticlib, in its own tree (`work-l4`).
    /// The other flavours build the pristine tarball.
    l4: bool,
}

/// The reference guest's kernel.
pub const REFERENCE: Flavor = Flavor {
    name: "reference",
    arch: "x86",
    fragment: "build/linux-configs/reference.config",
    target: "bzImage",
    built: "arch/x86/boot/bzImage",
    artefact: "bzImage",
    l4: false,
};

/// Upstream User-Mode Linux: a dynamically linked Linux program run inside the reference guest.
pub const UML: Flavor = Flavor {
    name: "uml",
    arch: "um",
    fragment: "build/linux-configs/uml.config",
    target: "linux",
    built: "linux",
    artefact: "linux",
    l4: false,
};

/// L4Linux: User-Mode Linux with the os-L4 host layer, a freestanding ELF program for our kernel.
pub const L4LINUX: Flavor = Flavor {
    name: "l4linux",
    arch: "um",
    fragment: "build/linux-configs/l4linux.config",
    target: "linux",
    built: "linux",
    artefact: "linux",
    l4: true,
};

/// The os-L4 sources (workspace-relative) and where they go in the Linux tree.
const OS_L4_DIRS: [(&str, &str); 3] = [
    ("lx-arch/os-L4", "arch/um/os-L4"),
    ("lx-stubs", "arch/um/os-L4/stubs"),
    ("lx-arch/os-L4-x86", "arch/x86/um/os-L4"),
];

/// The `lx-arch` staticlib's target directory (workspace-relative) and file inside it.
const LX_ARCH_TARGET_DIR: &str = "target/lx-arch";
const LX_ARCH_LIB: &str = "x86_64-unknown-none/release/liblx_arch.a";

/// A built kernel: `bzImage` for [`REFERENCE`], the `linux` program for [`UML`] and [`L4LINUX`].
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

/// Lines a patch adds or removes in files that exist in the pristine tarball: files whose `---`
/// side is `/dev/null` are new and do not count. Hunks are read by their `@@` line counts, so a
/// removed line that looks like a `---` header is still a removed line.
pub fn upstream_lines_changed(patch: &str) -> usize {
    let mut lines = patch.lines().peekable();
    let (mut n, mut new_file) = (0, false);
    while let Some(line) = lines.next() {
        if let Some(old) = line.strip_prefix("--- ") {
            if lines.peek().is_some_and(|l| l.starts_with("+++ ")) {
                new_file = old.split('\t').next().unwrap_or("").trim() == "/dev/null";
                lines.next();
            }
        } else if let Some((mut old, mut new)) = hunk_counts(line) {
            while old + new > 0 {
                let Some(l) = lines.next() else { break };
                match l.as_bytes().first() {
                    Some(b'-') => old = old.saturating_sub(1),
                    Some(b'+') => new = new.saturating_sub(1),
                    Some(b'\\') => continue,
                    _ => {
                        old = old.saturating_sub(1);
                        new = new.saturating_sub(1);
                        continue;
                    }
                }
                if !new_file {
                    n += 1;
                }
            }
        }
    }
    n
}

/// The old and new line counts of a hunk header `@@ -a[,b] +c[,d] @@` (a missing count is 1).
fn hunk_counts(line: &str) -> Option<(usize, usize)> {
    let mut it = line.strip_prefix("@@ -")?.split_whitespace();
    let count = |r: &str| r.split_once(',').map_or(Some(1), |(_, c)| c.parse().ok());
    let old = count(it.next()?)?;
    let new = count(it.next()?.strip_prefix('+')?)?;
    Some((old, new))
}

/// The symbols of the linker's `undefined reference to `sym'` lines, sorted, each once.
fn undefined_symbols(log: &[String]) -> Vec<String> {
    let mut v: Vec<String> = log
        .iter()
        .filter_map(|l| {
            l.split_once("undefined reference to `")?.1.split_once('\'').map(|(s, _)| s.to_string())
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What a failed make printed on stderr, cut to what explains it: the first compiler errors (when
/// the tail no longer shows them), the last 20 lines, and the undefined symbols of a failed link,
/// each once (ld prints a line per reference, which would push everything else out of view).
fn failure_report(stderr: &[String]) -> String {
    let other: Vec<&str> = stderr.iter().filter(|l| !is_undefined_noise(l)).map(String::as_str).collect();
    let tail = &other[other.len().saturating_sub(20)..];
    let first: Vec<&str> = other
        .iter()
        .copied()
        .filter(|l| l.contains(": error: ") || l.contains(": fatal error: "))
        .take(10)
        .collect();
    let mut s = String::new();
    if first.iter().any(|l| !tail.contains(l)) {
        s.push_str(&format!("first errors:\n{}\n...\n", first.join("\n")));
    }
    s.push_str(&tail.join("\n"));
    let undefined = undefined_symbols(stderr);
    if !undefined.is_empty() {
        s.push_str(&format!(
            "\nthe link left {} symbols undefined:\n  {}",
            undefined.len(),
            undefined.join(" ")
        ));
    }
    s
}

/// The linker's per-reference lines (`undefined reference to`, `in function`, `more undefined
/// references`), which [`undefined_symbols`] summarises.
fn is_undefined_noise(line: &str) -> bool {
    line.contains("undefined reference to `")
        || line.contains("more undefined references to `")
        || line.contains(": in function `")
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

/// The files under `dir`, as paths relative to it, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result {
        for e in std::fs::read_dir(base.join(rel))? {
            let e = e?;
            let r = rel.join(e.file_name());
            if e.path().is_dir() {
                walk(base, &r, out)?;
            } else {
                out.push(r);
            }
        }
        Ok(())
    }
    let mut v = Vec::new();
    walk(dir, Path::new(""), &mut v)?;
    v.sort();
    Ok(v)
}

/// One `path sha256` line per file under `dir` (what the cache key needs of a source directory).
fn dir_material(dir: &Path) -> Result<String> {
    let mut s = String::new();
    for f in files_under(dir)? {
        s.push_str(&format!("{} {}\n", f.display(), sha256_file(&dir.join(&f))?));
    }
    Ok(s)
}

/// Makes `to` a copy of `from`: files `from` lacks are removed (except the entries named in
/// `keep`, filled from elsewhere), changed files rewritten. Unchanged files keep their time
/// stamps, so make recompiles only what changed.
fn sync_dir(from: &Path, to: &Path, keep: &[&str]) -> Result {
    if to.is_file() || to.is_symlink() {
        std::fs::remove_file(to)?;
    }
    std::fs::create_dir_all(to)?;
    let want: std::collections::BTreeSet<_> =
        std::fs::read_dir(from)?.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<_>>()?;
    for e in std::fs::read_dir(to)? {
        let e = e?;
        if !want.contains(&e.file_name()) && !keep.iter().any(|k| e.file_name() == *k) {
            if e.path().is_dir() && !e.path().is_symlink() {
                std::fs::remove_dir_all(e.path())?;
            } else {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    for name in want {
        let (f, t) = (from.join(&name), to.join(&name));
        if f.is_dir() {
            sync_dir(&f, &t, &[])?;
            continue;
        }
        if t.is_dir() && !t.is_symlink() {
            std::fs::remove_dir_all(&t)?;
        }
        let bytes = std::fs::read(&f)?;
        if std::fs::read(&t).ok().as_deref() != Some(&bytes[..]) {
            if t.is_symlink() {
                std::fs::remove_file(&t)?;
            }
            std::fs::write(&t, bytes)?;
        }
    }
    Ok(())
}

/// Flags of the `lx-arch` staticlib: linked into Linux at 0x7f_c000_0000 (above its processes,
/// `linux-patches/0001`'s `Makefile-os-L4`), so the large code model.
pub const LX_ARCH_RUSTFLAGS: &str = "-C relocation-model=static -C code-model=large";

/// Builds the `lx-arch` staticlib for the freestanding link and returns its path. Flags are set
/// explicitly (as in `kbuild`). `core` and `alloc` are built along (`-Z build-std`, which a
/// stable toolchain allows with `RUSTC_BOOTSTRAP=1`, as Linux's own Rust support does): the
/// prebuilt ones for `x86_64-unknown-none` hold absolute 32-bit relocations and link only
/// below 4 GiB. LTO stays off (it would pull the whole of `core` through LLVM again).
fn build_lx_arch() -> Result<PathBuf> {
    step("linux (l4linux): building the lx-arch staticlib");
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(root())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", LX_ARCH_RUSTFLAGS)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .args(["build", "--release", "-p", "lx-arch", "--target", crate::kbuild::TARGET])
        .args(["-Z", "build-std=core,alloc,compiler_builtins", "--target-dir"])
        .arg(root().join(LX_ARCH_TARGET_DIR));
    run(&mut c)?;
    let lib = root().join(LX_ARCH_TARGET_DIR).join(LX_ARCH_LIB);
    if !lib.is_file() {
        return err(format!("cargo built lx-arch but {} is missing", lib.display()));
    }
    Ok(lib)
}

/// The L4Linux inputs beyond [`key_material`]'s: the os-L4 sources and the staticlib.
fn l4_material(os_dirs: &[(&str, String)], lib_sha: &str) -> String {
    let mut s = String::new();
    for (dir, material) in os_dirs {
        s.push_str(&format!("os-dir {dir} {material}\n"));
    }
    s.push_str(&format!("lx-arch-lib {lib_sha}\n"));
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
    // Only L4Linux is patched: the others keep the pristine tree and their cache keys.
    let patch_list = if f.l4 { patches()? } else { Vec::new() };
    let mut patch_shas = Vec::new();
    let mut upstream_lines = 0;
    for (name, p) in &patch_list {
        patch_shas.push((name.clone(), sha256_file(p)?));
        let text = std::fs::read_to_string(p).map_err(|e| format!("linux-patches/{name}: {e}"))?;
        upstream_lines += upstream_lines_changed(&text);
    }
    if f.l4 {
        eprintln!("upstream lines changed: {upstream_lines}");
    }
    let fragment_path = root().join(f.fragment);
    let fragment = std::fs::read_to_string(&fragment_path).map_err(|e| format!("{}: {e}", f.fragment))?;
    let gcc = output(Command::new("gcc").arg("--version"))?.lines().next().unwrap_or("").to_string();
    let mut material = key_material(f.arch, &sha256_str(&fragment)?, &patch_shas, &gcc);
    let lx_arch_lib = if f.l4 {
        let lib = build_lx_arch()?;
        let mut dirs = Vec::new();
        for (from, _) in OS_L4_DIRS {
            let dir = root().join(from);
            if !dir.is_dir() {
                return err(format!(
                    "{from} does not exist: it holds the os-L4 sources L4Linux is built with"
                ));
            }
            dirs.push((from, sha256_str(&dir_material(&dir)?)?));
        }
        material.push_str(&l4_material(&dirs, &sha256_file(&lib)?));
        Some(lib)
    } else {
        None
    };
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
    let work = cache_dir().join(if f.l4 { "linux/work-l4" } else { "linux/work" });
    let src = work.join(TARBALL_DIR);
    let obj =
        if f.name == REFERENCE.name || f.l4 { work.join("obj") } else { work.join(format!("obj-{name}")) };
    prepare_source(&work, &src, &patch_list, &sha256_str(&source_material(&patch_shas))?)?;
    if f.l4 {
        for (from, to) in OS_L4_DIRS {
            // Directories synced into this one (lx-stubs into os-L4) are left to their own entry.
            let nested: Vec<&str> =
                OS_L4_DIRS.iter().filter_map(|(_, t)| t.strip_prefix(to)?.strip_prefix('/')).collect();
            sync_dir(&root().join(from), &src.join(to), &nested)?;
        }
    }

    step(format!("linux ({name}): configuring ARCH={} (tinyconfig + {})", f.arch, f.fragment));
    let make = || {
        let mut c = Command::new("make");
        c.arg("-C").arg(&src).arg(format!("O={}", obj.display())).arg(format!("ARCH={}", f.arch));
        if let Some(lib) = &lx_arch_lib {
            c.arg(format!("LX_ARCH_LIB={}", lib.display()));
        }
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

    if f.l4 {
        // The final link does not depend on the staticlib in make's eyes: force it.
        for stale in ["vmlinux", "linux"] {
            let p = obj.join(stale);
            if p.exists() {
                std::fs::remove_file(p)?;
            }
        }
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
        return err(format!("kernel build failed ({status}):\n{}", failure_report(&errs)));
    }
    Ok(())
}

/// `cargo xtask linux [--uml | --l4]`: prints the path of the (cached or freshly built) kernel.
pub fn cmd_linux(mut a: crate::util::Args) -> Result<i32> {
    let (uml, l4) = (a.flag("--uml"), a.flag("--l4"));
    let f = match (uml, l4) {
        (true, true) => return err("--uml and --l4 exclude each other"),
        (true, false) => &UML,
        (false, true) => &L4LINUX,
        (false, false) => &REFERENCE,
    };
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
    fn upstream_line_count_skips_new_files() {
        let patch = "Subject: x\n---\n a | 2 +-\n\n\
diff --git a/a b/a\n--- a/a\n+++ b/a\n@@ -1,3 +1,3 @@\n ctx\n-old\n+new\n ctx\n\
diff --git a/new b/new\nnew file mode 100644\n--- /dev/null\n+++ b/new\n@@ -0,0 +1,2 @@\n+x\n+y\n\
--- a/b\t2024-01-01\n+++ b/b\t2024-01-02\n@@ -1 +1,2 @@\n--- looks like a header\n+++ and so does this\n+z\n\
\\ No newline at end of file\n@@ -10,2 +11,0 @@\n-gone\n-gone too\n";
        // a: 2; new: none; b: 3 in the first hunk, 2 in the second.
        assert_eq!(upstream_lines_changed(patch), 7);
        assert_eq!(upstream_lines_changed(""), 0);
        assert_eq!(hunk_counts("@@ -1 +1,2 @@ fn x"), Some((1, 2)));
        assert_eq!(hunk_counts("@@ -0,0 +1 @@"), Some((0, 1)));
        assert_eq!(hunk_counts("@@ bogus"), None);
    }

    #[test]
    fn the_series_counts_its_upstream_lines() {
        let mut n = 0;
        for (_, p) in patches().unwrap() {
            n += upstream_lines_changed(&std::fs::read_to_string(p).unwrap());
        }
        assert!(n > 0 && n < 100, "the host-layer switch should stay small: {n} lines");
    }

    #[test]
    fn undefined_symbols_sorted_once() {
        let log: Vec<String> = [
            "/usr/bin/ld: init/main.o: in function `start_kernel':",
            "main.c:(.init.text+0x648): undefined reference to `block_signals'",
            "/usr/bin/ld: main.c:(.init.text+0xbd9): undefined reference to `signals_enabled'",
            "irq.c:(.text+0x4b): undefined reference to `block_signals'",
            "collect2: error: ld returned 1 exit status",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(undefined_symbols(&log), vec!["block_signals", "signals_enabled"]);
        assert!(is_undefined_noise(&log[0]) && is_undefined_noise(&log[1]) && !is_undefined_noise(&log[4]));
    }

    #[test]
    fn failure_report_shows_first_errors_and_undefined_symbols() {
        let mut log = vec!["a.c:1:2: error: 'X' undeclared".to_string()];
        log.extend((0..30).map(|i| format!("note {i}")));
        let r = failure_report(&log);
        assert!(r.starts_with("first errors:\na.c:1:2: error: 'X' undeclared\n...\nnote 10\n"), "{r}");
        assert!(r.ends_with("note 29") && !r.contains("note 9\n"), "{r}");
        let link = [
            "ld: x.o: in function `f':",
            "x.c:(.text+0x1): undefined reference to `os_getpid'",
            "collect2: error",
        ];
        let r = failure_report(&link.map(String::from));
        assert_eq!(r, "collect2: error\nthe link left 1 symbols undefined:\n  os_getpid");
    }

    #[test]
    fn sync_dir_mirrors_and_keeps_unchanged_files() {
        let base = std::env::temp_dir().join(format!("l4rs-sync-test-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::write(from.join("a.c"), "a").unwrap();
        std::fs::write(from.join("sub/b.c"), "b").unwrap();
        std::fs::create_dir_all(to.join("stale-dir")).unwrap();
        std::fs::write(to.join("stale.c"), "old").unwrap();
        std::fs::write(to.join("sub"), "a file where a directory belongs").unwrap();
        sync_dir(&from, &to, &[]).unwrap();
        assert_eq!(files_under(&to).unwrap(), vec![PathBuf::from("a.c"), PathBuf::from("sub/b.c")]);
        assert_eq!(std::fs::read_to_string(to.join("sub/b.c")).unwrap(), "b");
        let before = std::fs::metadata(to.join("a.c")).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(from.join("sub/b.c"), "b2").unwrap();
        sync_dir(&from, &to, &[]).unwrap();
        assert_eq!(std::fs::metadata(to.join("a.c")).unwrap().modified().unwrap(), before);
        assert_eq!(std::fs::read_to_string(to.join("sub/b.c")).unwrap(), "b2");
        let m = dir_material(&from).unwrap();
        assert!(m.starts_with("a.c ") && m.contains("\nsub/b.c "), "{m}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn pristine_flavours_keep_their_keys() {
        // What `build` hashes for the reference and uml kernels: no patches, no L4 inputs.
        const { assert!(!REFERENCE.l4 && !UML.l4 && L4LINUX.l4) };
        let base = key_material("um", "f", &[], "gcc 12");
        assert_eq!(
            base,
            format!("format {FORMAT}\ntarball {TARBALL_SHA256}\narch um\nfragment f\ngcc gcc 12\n")
        );
        let l4 = l4_material(&[("lx-arch/os-L4", "d1".into())], "lib");
        assert_eq!(l4, "os-dir lx-arch/os-L4 d1\nlx-arch-lib lib\n");
        assert_ne!(l4_material(&[("lx-arch/os-L4", "d2".into())], "lib"), l4);
        assert_ne!(l4_material(&[("lx-arch/os-L4", "d1".into())], "lib2"), l4);
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

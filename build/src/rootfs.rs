//! `cargo xtask rootfs`: assembles the guest's initramfs (gzip-compressed newc cpio).
//!
//! Contents: busybox-static as `/bin/busybox` with a symlink per applet, Debian packages unpacked
//! with `dpkg-deb -x` together with their library dependencies (downloads cached in
//! `~/.cache/l4rs/debs`), `rootfs/init`, the exit helper, the ABI tests and the benchmarks, then
//! any overlay directories, then the `--exec` command. With a user rootfs (`--rootfs`), that
//! archive comes first and ours is appended: Linux unpacks concatenated archives in order.
//!
//! Reusable: the reference guest and L4Linux boot the same image.

use crate::util::{cache_dir, err, output, root, run, step, Result};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Packages always included: the smallest usable CPython.
pub const DEFAULT_DEBS: &[&str] = &["python3.11-minimal"];

/// Dependencies never unpacked: packaging and configuration machinery, data we do not need, or
/// pure documentation packages. Everything else a package depends on is included.
const SKIP_DEBS: &[&str] = &[
    "debconf",
    "dpkg",
    "perl-base",
    "tzdata",
    "media-types",
    "install-info",
    "gcc-12-base",
    "readline-common",
];

/// ABI tests also built dynamically (as `<name>-dyn`) against the glibc unpacked into the image.
const DYNAMIC_TESTS: &[&str] = &["threads", "procfs"];

/// What to put into the image.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    /// A user-supplied cpio (plain or gzip-compressed newc) used instead of busybox + debs.
    pub user_rootfs: Option<PathBuf>,
    /// Extra Debian packages (besides [`DEFAULT_DEBS`]); refused with a user rootfs.
    pub debs: Vec<String>,
    /// Directories copied on top, in order.
    pub overlays: Vec<PathBuf>,
}

/// The packages named in `apt-cache depends` output that a package needs at run time: `Depends`
/// and `PreDepends`, taking the first real (non-virtual) package of each `|` alternative group.
fn parse_depends(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // True while inside an alternative group whose choice is already made.
    let mut group_done = false;
    let mut in_group = false;
    for line in text.lines() {
        // Dependency lines are indented by two spaces, or by ` |` for "this or the next".
        let Some(rest) = line.strip_prefix("  ").or_else(|| line.strip_prefix(" |")) else {
            continue;
        };
        let alt = line.starts_with(" |");
        let Some((kind, name)) = rest.split_once(':') else { continue };
        if kind != "Depends" && kind != "PreDepends" {
            in_group = false;
            continue;
        }
        let name = name.trim();
        if !in_group {
            group_done = false;
        }
        if !group_done && !name.starts_with('<') && !name.is_empty() {
            out.push(name.to_string());
            group_done = true;
        }
        in_group = alt;
    }
    out
}

/// All packages to unpack for `wanted`: the closure over run-time dependencies, minus [`SKIP_DEBS`].
fn resolve(wanted: &[String]) -> Result<Vec<String>> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut level: Vec<String> = wanted.to_vec();
    // One apt-cache call per level of the dependency tree: each call loads the whole cache (~0.7 s).
    while !level.is_empty() {
        level.retain(|p| !SKIP_DEBS.contains(&p.as_str()) && seen.insert(p.clone()));
        if level.is_empty() {
            break;
        }
        let text = output(Command::new("apt-cache").arg("depends").args(&level))
            .map_err(|e| format!("cannot resolve Debian packages {}: {e}", level.join(" ")))?;
        level = parse_depends(&text);
    }
    Ok(seen.into_iter().collect())
}

/// The file name `apt-get download` gives a package: `name_version_arch.deb`, epoch colon escaped.
fn deb_file_name(name: &str, version: &str, arch: &str) -> String {
    format!("{name}_{}_{arch}.deb", version.replace(':', "%3a"))
}

/// (Package, Version, Architecture) of each stanza of `apt-cache show` output.
fn parse_show(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field =
            |f: &str| stanza.lines().find_map(|l| l.strip_prefix(&format!("{f}: "))).map(str::to_string);
        if let (Some(p), Some(v), Some(a)) = (field("Package"), field("Version"), field("Architecture")) {
            out.push((p, v, a));
        }
    }
    out
}

/// The cached .debs of the candidate versions of `names`, downloading what is missing.
fn fetch_debs(names: &[String]) -> Result<Vec<PathBuf>> {
    let dir = cache_dir().join("debs");
    std::fs::create_dir_all(&dir)?;
    let show =
        parse_show(&output(Command::new("apt-cache").args(["show", "--no-all-versions"]).args(names))?);
    names.iter().map(|name| fetch_deb(&dir, name, &show)).collect()
}

fn fetch_deb(dir: &Path, name: &str, show: &[(String, String, String)]) -> Result<PathBuf> {
    let Some((_, version, arch)) = show.iter().find(|(p, _, _)| p == name) else {
        return err(format!("apt-cache show {name}: no Version/Architecture (is it a real package?)"));
    };
    let path = dir.join(deb_file_name(name, version, arch));
    if !path.is_file() {
        step(format!("rootfs: apt-get download {name} {version}"));
        // Sandbox user root: the _apt user cannot write into our cache directory.
        run(Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", name])
            .current_dir(dir))?;
        if !path.is_file() {
            return err(format!("apt-get download {name} did not produce {}", path.display()));
        }
    }
    Ok(path)
}

/// Checks that `head` (the first bytes of a file) starts a newc cpio archive, or a gzip stream,
/// and says which; `decompressed` gives the first bytes inside the gzip stream.
fn check_cpio(head: &[u8], decompressed: impl FnOnce() -> Result<Vec<u8>>) -> Result<&'static str> {
    let newc = |b: &[u8]| b.starts_with(b"070701") || b.starts_with(b"070702");
    if newc(head) {
        return Ok("newc cpio");
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        let inner = decompressed()?;
        if newc(&inner) {
            return Ok("gzip-compressed newc cpio");
        }
        return err(
            "it is gzip-compressed but not a newc cpio archive inside (Buildroot: BR2_TARGET_ROOTFS_CPIO)",
        );
    }
    err("it is neither a newc cpio archive nor a gzip-compressed one (expected magic 070701 or 1f 8b)")
}

/// Validates a user rootfs.
fn validate_user_rootfs(path: &Path) -> Result {
    let mut head = [0u8; 6];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("--rootfs {}: {e}", path.display()))?;
    let kind = check_cpio(&head[..n], || {
        let mut child =
            Command::new("gzip").arg("-dc").arg(path).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let mut b = vec![0u8; 6];
        let got = child.stdout.take().expect("piped").read(&mut b)?;
        let _ = child.kill();
        let _ = child.wait();
        b.truncate(got);
        Ok(b)
    })
    .map_err(|e| format!("--rootfs {}: {e}", path.display()))?;
    step(format!("rootfs: using {} ({kind})", path.display()));
    Ok(())
}

/// The newest modification time among `paths` (files), for rebuild decisions.
fn newest(paths: &[PathBuf]) -> Option<std::time::SystemTime> {
    paths.iter().filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).max()
}

/// Compiles `src` (plus the shared headers `deps`) into `out` unless `out` is newer than all of them.
fn cc(src: &Path, deps: &[PathBuf], out: &Path, args: &[&str]) -> Result {
    let mut inputs = deps.to_vec();
    inputs.push(src.to_path_buf());
    let built = std::fs::metadata(out).and_then(|m| m.modified()).ok();
    if built.is_some() && built >= newest(&inputs) {
        return Ok(());
    }
    run(Command::new("gcc")
        .args(["-O2", "-s", "-Wall", "-Wextra", "-Werror"])
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(src))
}

fn c_files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    Ok(v)
}

/// Builds the guest programs into `dest` (`opt/l4rs/{bin,abi,bench,l4linux}`).
fn build_programs(dest: &Path) -> Result {
    let r = root();
    let bin = dest.join("opt/l4rs/bin");
    let abi = dest.join("opt/l4rs/abi");
    let bench = dest.join("opt/l4rs/bench");
    let l4linux = dest.join(L4LINUX_TESTS);
    for d in [&bin, &abi, &bench, &l4linux] {
        std::fs::create_dir_all(d)?;
    }
    let objs = r.join("target/linux-guest/programs");
    std::fs::create_dir_all(&objs)?;
    let built = |name: &str| objs.join(name);

    cc(&r.join("rootfs/src/l4rs-exit.c"), &[], &built("l4rs-exit"), &["-static"])?;
    std::fs::copy(built("l4rs-exit"), bin.join("l4rs-exit"))?;

    let abi_src = r.join("tests/linux-abi");
    let headers = c_files(&abi_src, "h")?;
    for src in c_files(&abi_src, "c")? {
        let name = stem(&src)?;
        cc(&src, &headers, &built(&name), &["-static", "-pthread"])?;
        std::fs::copy(built(&name), abi.join(&name))?;
        if DYNAMIC_TESTS.contains(&name.as_str()) {
            let dyn_name = format!("{name}-dyn");
            cc(&src, &headers, &built(&dyn_name), &["-pthread"])?;
            std::fs::copy(built(&dyn_name), abi.join(&dyn_name))?;
        }
    }
    for py in c_files(&abi_src, "py")? {
        let name = py.file_name().and_then(|s| s.to_str()).ok_or("bad file name")?;
        std::fs::copy(&py, abi.join(name))?;
    }
    std::fs::copy(abi_src.join("run"), abi.join("run"))?;

    let bench_src = r.join("tests/bench");
    let headers = c_files(&bench_src, "h")?;
    for src in c_files(&bench_src, "c")? {
        let name = stem(&src)?;
        // `tiny` has no libc at all, so fork_exec measures the kernel's exec, not libc start-up.
        let args: &[&str] = if name == "tiny" { &["-static", "-nostdlib"] } else { &["-static"] };
        cc(&src, &headers, &built(&format!("bench-{name}")), args)?;
        std::fs::copy(built(&format!("bench-{name}")), bench.join(&name))?;
    }
    std::fs::copy(bench_src.join("run"), bench.join("run"))?;

    for name in l4linux_test_names()? {
        let src = r.join("tests/l4linux").join(format!("{name}.c"));
        let out = built(&format!("l4linux-{name}"));
        cc(&src, &[abi_src.join("t.h")], &out, &["-static"])?;
        std::fs::copy(&out, l4linux.join(&name))?;
    }
    Ok(())
}

/// Where the image carries the tests of L4Linux's own behaviour (`tests/l4linux`).
pub const L4LINUX_TESTS: &str = "opt/l4rs/l4linux";

/// The tests of L4Linux's own behaviour: every `tests/l4linux/*.c`, by file stem.
pub fn l4linux_test_names() -> Result<Vec<String>> {
    c_files(&root().join("tests/l4linux"), "c")?.iter().map(|p| stem(p)).collect()
}

/// A program's name: its source file's name without the extension.
fn stem(p: &Path) -> Result<String> {
    Ok(p.file_stem().and_then(|s| s.to_str()).ok_or("bad file name")?.to_string())
}

/// The names of the ABI tests the image carries (what each prints as `PASS <name>`): every
/// `tests/linux-abi/*.c`, `<name>-dyn` for [`DYNAMIC_TESTS`], every `*.py` without its extension.
pub fn abi_test_names() -> Result<Vec<String>> {
    let dir = root().join("tests/linux-abi");
    let mut names = Vec::new();
    for p in c_files(&dir, "c")?.into_iter().chain(c_files(&dir, "py")?) {
        let name = stem(&p)?;
        if DYNAMIC_TESTS.contains(&name.as_str()) {
            names.push(format!("{name}-dyn"));
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Busybox and one symlink per applet (done here, not at boot, to keep boot time down).
fn install_busybox(dest: &Path) -> Result {
    let bb = Path::new("/bin/busybox");
    if !bb.is_file() {
        return err("/bin/busybox is missing: run `cargo xtask setup` (package busybox-static)");
    }
    std::fs::create_dir_all(dest.join("bin"))?;
    std::fs::copy(bb, dest.join("bin/busybox"))?;
    for applet in output(Command::new(bb).arg("--list-full"))?.lines() {
        let link = dest.join(applet);
        if applet.is_empty() || link.symlink_metadata().is_ok() {
            continue;
        }
        std::fs::create_dir_all(link.parent().expect("applet paths have a directory"))?;
        std::os::unix::fs::symlink("/bin/busybox", &link)?;
    }
    Ok(())
}

/// Copies `src` into `dest` (contents merged, later wins), keeping modes and symlinks.
fn copy_tree(src: &Path, dest: &Path) -> Result {
    if !src.is_dir() {
        return err(format!("overlay {} is not a directory", src.display()));
    }
    let mut from = src.as_os_str().to_owned();
    from.push("/.");
    run(Command::new("cp").arg("-a").arg(from).arg(dest))
}

/// Writes a gzip-compressed newc cpio of `dir` (owned by root) to `out`.
fn pack(dir: &Path, out: &Path) -> Result {
    run(Command::new("sh")
        .args([
            "-c",
            "cd \"$1\" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -6 > \"$2\"",
            "sh",
        ])
        .arg(dir)
        .arg(out))
}

/// The assembled image: its path and the ABI tests it carries.
#[derive(Clone, Debug)]
pub struct Image {
    pub initrd: PathBuf,
    pub abi_tests: Vec<String>,
}

/// Assembles the initramfs for `spec` into `target/linux-guest/<name>.cpio.gz`.
pub fn assemble(spec: &Spec, name: &str) -> Result<Image> {
    let start = std::time::Instant::now();
    let out_dir = root().join("target/linux-guest");
    let staging = out_dir.join(format!("{name}.root"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    if let Some(user) = &spec.user_rootfs {
        if !spec.debs.is_empty() {
            return err("--deb cannot be combined with --rootfs: Debian packages need Debian's glibc");
        }
        validate_user_rootfs(user)?;
    } else {
        install_busybox(&staging)?;
        let mut wanted: Vec<String> = DEFAULT_DEBS.iter().map(|s| s.to_string()).collect();
        wanted.extend(spec.debs.iter().cloned());
        let pkgs = resolve(&wanted)?;
        step(format!("rootfs: Debian packages {}", pkgs.join(" ")));
        for deb in fetch_debs(&pkgs)? {
            run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&staging))?;
        }
        // python3.11-minimal ships only python3.11; python3-minimal (the link) drags in dpkg.
        let py = staging.join("usr/bin/python3");
        if staging.join("usr/bin/python3.11").is_file() && py.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("python3.11", &py)?;
        }
        // Docs and manuals are the bulk of some packages and nothing in the guest reads them; glibc
        // charset converters (gconv, 8 MiB) are only loaded for iconv to non-UTF-8 charsets.
        for d in ["usr/share/doc", "usr/share/man", "usr/share/lintian", "usr/lib/x86_64-linux-gnu/gconv"] {
            let p = staging.join(d);
            if p.exists() {
                std::fs::remove_dir_all(p)?;
            }
        }
    }
    for d in ["proc", "sys", "dev", "tmp", "etc/l4rs", "root"] {
        std::fs::create_dir_all(staging.join(d))?;
    }
    std::fs::copy(root().join("rootfs/init"), staging.join("init"))?;
    build_programs(&staging)?;
    let abi_tests = abi_test_names()?;
    for o in &spec.overlays {
        step(format!("rootfs: overlay {}", o.display()));
        copy_tree(o, &staging)?;
    }
    let ours = out_dir.join(format!("{name}.l4rs.cpio.gz"));
    pack(&staging, &ours)?;
    let initrd = out_dir.join(format!("{name}.cpio.gz"));
    match &spec.user_rootfs {
        None => std::fs::rename(&ours, &initrd)?,
        Some(user) => {
            // The kernel unpacks concatenated archives one after the other; ours wins on conflicts.
            let mut all = std::fs::read(user)?;
            all.extend(std::fs::read(&ours)?);
            std::fs::write(&initrd, all)?;
        }
    }
    let size = std::fs::metadata(&initrd)?.len();
    step(format!(
        "rootfs: {} ({:.1} MiB) in {:.1} s",
        initrd.display(),
        size as f64 / (1 << 20) as f64,
        start.elapsed().as_secs_f64()
    ));
    Ok(Image { initrd, abi_tests })
}

/// `image` plus `/etc/l4rs/exec` holding `cmd` (for `l4rs.mode=exec`), as `<name>.cpio.gz`. The
/// command travels in a small cpio appended to the image, so the big image is built once and
/// the command line has no length limit.
pub fn with_exec(image: &Image, cmd: &str, name: &str) -> Result<Image> {
    append(image, &[("etc/l4rs/exec", Content::Text(format!("{cmd}\n")))], name)
}

/// Where the reference guest's image carries User-Mode Linux (`rootfs/init`, `l4rs.uml=`).
pub const UML_PROGRAM: &str = "opt/l4rs/uml/linux";
pub const UML_ROOT: &str = "opt/l4rs/uml/root.cpio.gz";

/// `image` plus the UML program `uml` at [`UML_PROGRAM`] and `inner` (UML's own initramfs) at
/// [`UML_ROOT`], as `<name>.cpio.gz`: the reference guest can then boot UML with `inner`.
pub fn with_uml(image: &Image, uml: &Path, inner: &Image, name: &str) -> Result<Image> {
    let files = [(UML_PROGRAM, Content::File(uml)), (UML_ROOT, Content::File(&inner.initrd))];
    let mut out = append(image, &files, name)?;
    // What runs (and is judged) is the suite inside UML.
    out.abi_tests.clone_from(&inner.abi_tests);
    Ok(out)
}

/// A file to add to an image.
enum Content<'a> {
    Text(String),
    File(&'a Path),
}

/// `image` with `files` (path inside the image, contents) in a small cpio appended to it, as
/// `<name>.cpio.gz`; Linux unpacks concatenated archives in order, so these win.
fn append(image: &Image, files: &[(&str, Content)], name: &str) -> Result<Image> {
    let out_dir = root().join("target/linux-guest");
    let dir = out_dir.join(format!("{name}.extra"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    for (path, content) in files {
        let dest = dir.join(path);
        std::fs::create_dir_all(dest.parent().expect("paths inside the image have a directory"))?;
        match content {
            Content::Text(t) => std::fs::write(&dest, t)?,
            Content::File(f) => {
                std::fs::copy(f, &dest)?;
            }
        }
    }
    let small = out_dir.join(format!("{name}.extra.cpio.gz"));
    pack(&dir, &small)?;
    let mut all = std::fs::read(&image.initrd)?;
    all.extend(std::fs::read(&small)?);
    let initrd = out_dir.join(format!("{name}.cpio.gz"));
    std::fs::write(&initrd, all)?;
    Ok(Image { initrd, abi_tests: image.abi_tests.clone() })
}

/// Parses the options shared by `rootfs` and `run --reference`.
pub fn spec_from_args(a: &mut crate::util::Args) -> Result<Spec> {
    Ok(Spec {
        user_rootfs: a.value("--rootfs")?.map(PathBuf::from),
        debs: a.values("--deb")?,
        overlays: a.values("--overlay")?.into_iter().map(PathBuf::from).collect(),
    })
}

/// `cargo xtask rootfs [--rootfs CPIO] [--deb NAME]... [--overlay DIR]...`.
pub fn cmd_rootfs(mut a: crate::util::Args) -> Result<i32> {
    let spec = spec_from_args(&mut a)?;
    a.finish()?;
    crate::setup::ensure()?;
    let img = assemble(&spec, "rootfs")?;
    println!("{}", img.initrd.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_takes_runtime_deps_and_first_real_alternative() {
        let text = "python3.11-minimal\n  PreDepends: libc6\n  Depends: libexpat1\n |Depends: <virt>\n  \
                    Depends: realpkg\n    provider-of-virt\n |Depends: first\n  Depends: second\n  \
                    Recommends: python3.11\n  Suggests: binfmt-support\n  Breaks: busybox\n";
        assert_eq!(parse_depends(text), vec!["libc6", "libexpat1", "realpkg", "first"]);
    }

    #[test]
    fn depends_of_real_apt_output_shape() {
        let text =
            "libc6\n  Depends: libgcc-s1\n  Breaks: aide\n  Recommends: libidn2-0\n |Suggests: debconf\n  \
                    Suggests: <debconf-2.0>\n";
        assert_eq!(parse_depends(text), vec!["libgcc-s1"]);
    }

    #[test]
    fn deb_names() {
        assert_eq!(deb_file_name("busybox", "1:1.35.0-4", "amd64"), "busybox_1%3a1.35.0-4_amd64.deb");
        let show =
            "Package: zlib1g\nVersion: 1:1.2.13\nArchitecture: amd64\n\nPackage: libc6\nVersion: 2\n\n\
                    Package: x\nArchitecture: all\nVersion: 3\n";
        let s = |p: &str, v: &str, a: &str| (p.to_string(), v.to_string(), a.to_string());
        assert_eq!(parse_show(show), vec![s("zlib1g", "1:1.2.13", "amd64"), s("x", "3", "all")]);
    }

    #[test]
    fn cpio_detection() {
        let never = || -> Result<Vec<u8>> { panic!("not gzip") };
        assert_eq!(check_cpio(b"070701", never).unwrap(), "newc cpio");
        assert!(check_cpio(b"070707", never).is_err(), "old binary/odc cpio is not newc");
        assert!(check_cpio(b"\x7fELF", never).is_err());
        assert_eq!(
            check_cpio(&[0x1f, 0x8b, 8], || Ok(b"070701".to_vec())).unwrap(),
            "gzip-compressed newc cpio"
        );
        assert!(check_cpio(&[0x1f, 0x8b, 8], || Ok(b"ustar".to_vec()))
            .unwrap_err()
            .to_string()
            .contains("gzip"));
    }
}

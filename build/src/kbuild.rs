//! Building the microkernel, the native user programs and boot images.
//!
//! The kernel and user programs are `x86_64-unknown-none` binaries with different code models, so
//! each group gets its own target directory and its flags are set here explicitly (an environment
//! RUSTFLAGS would otherwise override `.cargo/config.toml`).

use crate::util::{err, root, run, step, Result};
use abi::bootimage::{self, builder::Entry};
use std::path::PathBuf;
use std::process::Command;

pub const TARGET: &str = "x86_64-unknown-none";

/// User programs (package names) built for every scenario.
pub const USER_PROGRAMS: &[&str] = &["ktest", "hello", "sigma0", "moe"];

/// Everything a scenario needs from the build.
pub struct Artifacts {
    pub kernel: PathBuf,
    user_dir: PathBuf,
}

fn cargo(target_dir: &str, rustflags: &str) -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(root());
    c.env_remove("CARGO_ENCODED_RUSTFLAGS");
    c.env("RUSTFLAGS", rustflags);
    c.args(["build", "--release", "--target", TARGET, "--target-dir"]);
    c.arg(root().join("target").join(target_dir));
    c
}

/// Flags of kernel builds: higher-half image, linked with the arch crate's script.
pub fn kernel_rustflags() -> String {
    let ld = root().join("kernel/arch/x86_64/kernel.ld");
    format!("-C relocation-model=static -C code-model=kernel -C link-arg=-T{}", ld.display())
}

/// Flags of user builds: static executables at the address the runtime's script gives.
pub fn user_rustflags() -> String {
    let ld = root().join("l4re-min/l4/user.ld");
    format!("-C relocation-model=static -C link-arg=-T{}", ld.display())
}

/// Builds the kernel and all user programs.
pub fn build_all() -> Result<Artifacts> {
    step("building the kernel");
    run(cargo("kernel", &kernel_rustflags()).args(["-p", "kernel"]))?;
    step(format!("building user programs: {}", USER_PROGRAMS.join(", ")));
    let mut c = cargo("user", &user_rustflags());
    for p in USER_PROGRAMS {
        c.args(["-p", p]);
    }
    run(&mut c)?;
    let a = Artifacts {
        kernel: root().join("target/kernel").join(TARGET).join("release/kernel"),
        user_dir: root().join("target/user").join(TARGET).join("release"),
    };
    let size = std::fs::metadata(&a.kernel)?.len();
    step(format!("kernel image: {} ({} KiB)", a.kernel.display(), size / 1024));
    Ok(a)
}

/// One module of a boot image: a program, or data (`text`) such as a boot script.
#[derive(Clone, Debug)]
pub struct BootProgram {
    /// Module name (defaults to the program name).
    pub name: String,
    pub program: String,
    /// The contents of a data module (then `program` is unused).
    pub text: Option<String>,
    /// A module read from this file (an ELF program if `program_file`, else data).
    pub file: Option<PathBuf>,
    pub program_file: bool,
    pub args: String,
    /// Started by the kernel.
    pub start: bool,
    /// Receives the memory the kernel does not keep, and pages the other boot tasks.
    pub sigma0: bool,
}

impl BootProgram {
    pub fn start(program: &str, args: &str) -> Self {
        BootProgram {
            name: program.into(),
            program: program.into(),
            text: None,
            file: None,
            program_file: false,
            args: args.into(),
            start: true,
            sigma0: false,
        }
    }

    /// A data module called `name` holding `text`.
    pub fn data(name: &str, text: &str) -> Self {
        BootProgram { text: Some(text.into()), ..Self::module(name, "") }
    }

    /// A program module the kernel does not start (the runtime loads it).
    pub fn module(program: &str, args: &str) -> Self {
        BootProgram { start: false, ..Self::start(program, args) }
    }

    /// A module called `name` read from `path`: an ELF program the runtime loads
    /// (`program`), or data.
    pub fn from_file(name: &str, path: &std::path::Path, program: bool) -> Self {
        BootProgram { file: Some(path.to_path_buf()), program_file: program, ..Self::module(name, "") }
    }

    /// The sigma0 program.
    pub fn sigma0() -> Self {
        BootProgram { sigma0: true, ..Self::start("sigma0", "") }
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }
}

impl Artifacts {
    pub fn program(&self, name: &str) -> Result<PathBuf> {
        let p = self.user_dir.join(name);
        if !p.exists() {
            return err(format!("user program `{name}` was not built (expected {})", p.display()));
        }
        Ok(p)
    }

    /// Writes a boot image holding `programs` to `target/boot/<name>.img`.
    pub fn boot_image(&self, name: &str, programs: &[BootProgram]) -> Result<PathBuf> {
        let mut entries = Vec::new();
        for p in programs {
            let (kind, data) = match (&p.text, &p.file) {
                (Some(t), _) => (bootimage::KIND_DATA, t.clone().into_bytes()),
                (None, Some(f)) => (
                    if p.program_file { bootimage::KIND_PROGRAM } else { bootimage::KIND_DATA },
                    std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?,
                ),
                (None, None) => (bootimage::KIND_PROGRAM, std::fs::read(self.program(&p.program)?)?),
            };
            entries.push(Entry {
                name: p.name.clone(),
                kind,
                flags: if p.start { bootimage::FLAG_START } else { 0 }
                    | if p.sigma0 { bootimage::FLAG_SIGMA0 } else { 0 },
                args: p.args.clone(),
                data,
            });
        }
        let bytes = bootimage::builder::build(&entries)?;
        let dir = root().join("target/boot");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.img"));
        std::fs::write(&path, bytes)?;
        Ok(path)
    }

    /// A QEMU machine booting our kernel with a boot image of `programs`.
    pub fn machine(
        &self,
        name: &str,
        programs: &[BootProgram],
        append: &str,
    ) -> Result<crate::qemu::Machine> {
        let mut m = crate::qemu::Machine::new(self.kernel.clone());
        m.initrd = Some(self.boot_image(name, programs)?);
        m.append = append.to_string();
        Ok(m)
    }
}

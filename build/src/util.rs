//! Small helpers shared by every subcommand: errors, paths, running commands, argument parsing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Builds an error from a message.
pub fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(msg.into().into())
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("build/ has a parent").to_path_buf()
}

/// Cache directory for expensive artefacts that survive clean clones (`~/.cache/l4rs`).
pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or(home.join(".cache")).join("l4rs")
}

/// Prints a progress line, prefixed so it stands out from tool output.
pub fn step(msg: impl AsRef<str>) {
    eprintln!("==> {}", msg.as_ref());
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio; a non-zero exit is an error naming the command.
pub fn run(cmd: &mut Command) -> Result {
    let status = cmd.status().map_err(|e| format!("cannot start `{}`: {e}", describe(cmd)))?;
    if !status.success() {
        return err(format!("`{}` failed with {status}", describe(cmd)));
    }
    Ok(())
}

/// Runs a command and returns its stdout; stderr is passed through.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start `{}`: {e}", describe(cmd)))?;
    if !out.status.success() {
        return err(format!("`{}` failed with {}", describe(cmd), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True if the command runs and exits successfully (output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// A minimal command-line parser: flags, options with values, and everything after `--`.
pub struct Args {
    args: Vec<String>,
    rest: Vec<String>,
}

impl Args {
    pub fn new(mut args: Vec<String>) -> Self {
        let rest = match args.iter().position(|a| a == "--") {
            Some(i) => {
                let r = args.split_off(i);
                r[1..].to_vec()
            }
            None => Vec::new(),
        };
        Args { args, rest }
    }

    /// Removes and reports a boolean flag.
    pub fn flag(&mut self, name: &str) -> bool {
        let before = self.args.len();
        self.args.retain(|a| a != name);
        before != self.args.len()
    }

    /// Removes every `name VALUE` (or `name=VALUE`) and returns the values in order.
    pub fn values(&mut self, name: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.args.len() {
            if self.args[i] == name {
                if i + 1 >= self.args.len() {
                    return err(format!("{name} needs a value"));
                }
                out.push(self.args.remove(i + 1));
                self.args.remove(i);
            } else if let Some(v) = self.args[i].strip_prefix(&format!("{name}=")) {
                out.push(v.to_string());
                self.args.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(out)
    }

    /// Like [`Args::values`] but at most one occurrence.
    pub fn value(&mut self, name: &str) -> Result<Option<String>> {
        let mut v = self.values(name)?;
        if v.len() > 1 {
            return err(format!("{name} given more than once"));
        }
        Ok(v.pop())
    }

    /// Arguments after `--`.
    pub fn rest(&mut self) -> Vec<String> {
        std::mem::take(&mut self.rest)
    }

    /// Fails on anything not consumed.
    pub fn finish(self) -> Result {
        match self.args.first() {
            Some(a) => err(format!("unknown argument `{a}` (see `cargo xtask help`)")),
            None => Ok(()),
        }
    }
}

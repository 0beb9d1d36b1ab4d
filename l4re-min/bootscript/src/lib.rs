//! The boot script: a small line-oriented language saying which programs the root task starts
//! and which capabilities each finds under which name. See README.md for the format.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// Kernel objects a script may hand out by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Log,
    Platform,
    Scheduler,
    Icu,
    /// A factory of the program's own (moe makes one per program, with a kernel-memory quota).
    Factory,
}

/// What a named capability refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A gate the script declared (index into `Script::gates`), with the rights to bind it.
    Gate {
        gate: usize,
        server: bool,
    },
    Kernel(Kernel),
    /// A name a program registers at run time (index into `Script::provided`).
    Provided(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cap {
    pub name: String,
    pub target: Target,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// Module name in the boot image.
    pub module: String,
    /// The program's name on the console (default: the module's).
    pub name: String,
    pub args: String,
    pub prio: u8,
    /// Memory it may draw through its pager beyond image and stack, in bytes.
    pub quota: u64,
    pub caps: Vec<Cap>,
    /// Its environment (`env KEY=VALUE` lines).
    pub env: Vec<String>,
    /// Boot modules it may read (`file MODULE`): copied into memory it asks for, within its
    /// quota.
    pub files: Vec<String>,
    /// A gate (index into `Script::gates`) that stands in for the kernel log (interposition).
    pub log: Option<usize>,
    /// Line of its `start`, for messages.
    pub line: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script {
    pub gates: Vec<String>,
    pub programs: Vec<Program>,
    /// Names programs register at run time (`provides NAME`): the name and its provider.
    pub provided: Vec<(String, usize)>,
}

/// A parse error: line (1-based) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub line: usize,
    pub what: String,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

pub const DEFAULT_PRIO: u8 = 100;
pub const DEFAULT_QUOTA: u64 = 16 << 20;

fn err<T>(line: usize, what: impl Into<String>) -> Result<T, Error> {
    Err(Error { line, what: what.into() })
}

/// Splits a line into words; a double-quoted word may contain spaces (`\"` and `\\` escape).
fn words(line: &str, n: usize) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            None | Some('#') => return Ok(out),
            Some('"') => {
                chars.next();
                let mut w = String::new();
                loop {
                    match chars.next() {
                        None => return err(n, "unterminated string"),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            _ => return err(n, "only \\\" and \\\\ are escapes"),
                        },
                        Some(c) => w.push(c),
                    }
                }
                out.push(w);
            }
            Some(_) => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == '#' {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(w);
            }
        }
    }
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// `4M`, `512K`, `1G` or plain bytes.
fn size(s: &str, n: usize) -> Result<u64, Error> {
    let (num, mul) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    match num.parse::<u64>().ok().and_then(|v| v.checked_mul(mul)) {
        Some(v) => Ok(v),
        None => err(n, format!("`{s}` is not a size (like 4M)")),
    }
}

/// Parses a whole script.
pub fn parse(text: &str) -> Result<Script, Error> {
    let mut s = Script::default();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let w = words(raw, n)?;
        let Some(first) = w.first() else { continue };
        let indented = raw.starts_with(' ') || raw.starts_with('\t');
        match (first.as_str(), indented) {
            ("gate", false) => {
                if w.len() != 2 || !name_ok(&w[1]) {
                    return err(n, "expected `gate NAME`");
                }
                if s.gates.contains(&w[1]) {
                    return err(n, format!("gate `{}` declared twice", w[1]));
                }
                s.gates.push(w[1].clone());
            }
            ("start", false) => {
                if w.len() < 2 || !name_ok(&w[1]) {
                    return err(n, "expected `start MODULE [prio=N] [name=NAME] [quota=SIZE]`");
                }
                let mut p = Program {
                    module: w[1].clone(),
                    name: w[1].clone(),
                    quota: DEFAULT_QUOTA,
                    args: String::new(),
                    prio: DEFAULT_PRIO,
                    caps: Vec::new(),
                    files: Vec::new(),
                    env: Vec::new(),
                    log: None,
                    line: n,
                };
                for kv in &w[2..] {
                    match kv.split_once('=') {
                        Some(("prio", v)) => {
                            p.prio =
                                v.parse().or_else(|_| err(n, format!("priority `{v}` is not 0..=255")))?;
                        }
                        Some(("name", v)) if name_ok(v) => p.name = v.into(),
                        Some(("name", v)) => {
                            return err(n, format!("`{v}` is not a name (1-32 of A-Z a-z 0-9 _ - .)"))
                        }
                        Some(("quota", v)) => p.quota = size(v, n)?,
                        _ => {
                            return err(n, format!("unknown setting `{kv}` (prio=N, name=NAME, quota=SIZE)"))
                        }
                    }
                }
                s.programs.push(p);
            }
            (_, true) => {
                let Some(p) = s.programs.last_mut() else {
                    return err(n, "indented line outside a `start` block");
                };
                match first.as_str() {
                    "args" if w.len() == 2 => p.args = w[1].clone(),
                    "args" => return err(n, "expected `args \"...\"`"),
                    "log" => match (w.len(), w.get(1).map(String::as_str)) {
                        (3, Some("=")) => match s.gates.iter().position(|g| *g == w[2]) {
                            Some(g) => p.log = Some(g),
                            None => {
                                return err(
                                    n,
                                    format!(
                                        "unknown gate `{}` (declare it with `gate {}` first)",
                                        w[2], w[2]
                                    ),
                                )
                            }
                        },
                        _ => return err(n, "expected `log = GATE`"),
                    },
                    "cap" => {
                        if w.len() < 4 || w[2] != "=" || !name_ok(&w[1]) {
                            return err(
                                n,
                                "expected `cap NAME = GATE [server]` or `cap NAME = @kernel-object`",
                            );
                        }
                        if p.caps.iter().any(|c| c.name == w[1]) {
                            return err(n, format!("capability name `{}` used twice", w[1]));
                        }
                        let target = match w[3].strip_prefix('@') {
                            Some(k) => Target::Kernel(match (k, w.len()) {
                                ("log", 4) => Kernel::Log,
                                ("platform", 4) => Kernel::Platform,
                                ("scheduler", 4) => Kernel::Scheduler,
                                ("icu", 4) => Kernel::Icu,
                                ("factory", 4) => Kernel::Factory,
                                _ => {
                                    return err(
                                        n,
                                        format!(
                                            "unknown kernel object `@{k}` (@log @platform @scheduler @icu @factory)"
                                        ),
                                    )
                                }
                            }),
                            None => {
                                if let Some(k) = s.provided.iter().position(|(p, _)| *p == w[3]) {
                                    if w.len() != 4 {
                                        return err(n, format!("unexpected `{}` after a provided name", w[4]));
                                    }
                                    p.caps.push(Cap { name: w[1].clone(), target: Target::Provided(k) });
                                    continue;
                                }
                                let Some(gate) = s.gates.iter().position(|g| *g == w[3]) else {
                                    return err(
                                        n,
                                        format!(
                                            "unknown gate `{}` (declare it with `gate {}` first)",
                                            w[3], w[3]
                                        ),
                                    );
                                };
                                let server = match w.get(4).map(String::as_str) {
                                    None => false,
                                    Some("server") if w.len() == 5 => true,
                                    Some(x) => return err(n, format!("unexpected `{x}` after the gate")),
                                };
                                Target::Gate { gate, server }
                            }
                        };
                        p.caps.push(Cap { name: w[1].clone(), target });
                    }
                    "env" if w.len() == 2 && w[1].split_once('=').is_some_and(|(k, _)| !k.is_empty()) => {
                        p.env.push(w[1].clone())
                    }
                    "env" => return err(n, "expected `env KEY=VALUE`"),
                    "provides" if w.len() == 2 && name_ok(&w[1]) => {
                        if s.gates.contains(&w[1]) || s.provided.iter().any(|(p, _)| *p == w[1]) {
                            return err(n, format!("`{}` is already a gate or provided", w[1]));
                        }
                        let me = s.programs.len() - 1;
                        s.provided.push((w[1].clone(), me));
                    }
                    "provides" => return err(n, "expected `provides NAME`"),
                    "file" if w.len() == 2 && name_ok(&w[1]) => {
                        if !p.files.contains(&w[1]) {
                            p.files.push(w[1].clone());
                        }
                    }
                    "file" => return err(n, "expected `file MODULE`"),
                    other => {
                        return err(
                            n,
                            format!("unknown setting `{other}` (args, env, cap, log, file, provides)"),
                        )
                    }
                }
            }
            (other, false) => return err(n, format!("unknown command `{other}` (gate, start)")),
        }
    }
    if s.programs.is_empty() {
        return err(text.lines().count().max(1), "the script starts no program".to_string());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
# a server and a client
gate hello

start ktest prio=120 name=server quota=2M   # the server
    args "ns-server"
    cap hello = hello server
start ktest
    args "ns-client \"quoted\""
    cap hello = hello
    cap platform = @platform
    cap factory = @factory
    file rootfs.cpio
    env GREETING=hi
    log = hello
"#;

    #[test]
    fn parses_a_script() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.gates, vec!["hello"]);
        assert_eq!(s.programs.len(), 2);
        let (a, b) = (&s.programs[0], &s.programs[1]);
        assert_eq!(
            (a.module.as_str(), a.name.as_str(), a.prio, a.args.as_str(), a.line),
            ("ktest", "server", 120, "ns-server", 5)
        );
        assert_eq!(
            a.caps,
            vec![Cap { name: "hello".into(), target: Target::Gate { gate: 0, server: true } }]
        );
        assert_eq!(
            (b.name.as_str(), b.prio, b.args.as_str()),
            ("ktest", DEFAULT_PRIO, "ns-client \"quoted\"")
        );
        assert_eq!(b.caps[1].target, Target::Kernel(Kernel::Platform));
        assert_eq!(b.caps[2].target, Target::Kernel(Kernel::Factory));
        assert_eq!((a.files.len(), b.files.as_slice()), (0, ["rootfs.cpio".to_string()].as_slice()));
        assert_eq!(b.env, ["GREETING=hi"]);
        assert_eq!((a.log, b.log), (None, Some(0)));
        assert_eq!((a.quota, b.quota), (2 << 20, DEFAULT_QUOTA));
    }

    #[test]
    fn provided_names() {
        let s = parse("start ktest name=srv\n    provides svc\nstart ktest\n    cap s = svc\n").unwrap();
        assert_eq!(s.provided, vec![("svc".to_string(), 0)]);
        assert_eq!(s.programs[1].caps[0].target, Target::Provided(0));
        let e = parse("gate svc\nstart x\n    provides svc\n").unwrap_err();
        assert_eq!((e.line, e.what.contains("already a gate")), (3, true));
        assert!(parse("start x\n    cap s = svc\n").unwrap_err().what.contains("unknown gate `svc`"));
    }

    #[test]
    fn errors_name_line_and_problem() {
        let cases = [
            ("start x\n    cap a = nogate\n", 2, "unknown gate `nogate`"),
            ("gate g\ngate g\nstart x\n", 2, "declared twice"),
            ("start x\n    file\n", 2, "expected `file MODULE`"),
            ("start x prio=300\n", 1, "priority `300`"),
            ("start x quota=lots\n", 1, "`lots` is not a size"),
            ("start x mem=4M\n", 1, "unknown setting `mem=4M`"),
            ("start x name=a/b\n", 1, "`a/b` is not a name"),
            ("start x\n    log = nogate\n", 2, "unknown gate `nogate`"),
            ("gate g\nstart x\n    log g\n", 3, "expected `log = GATE`"),
            ("    args \"x\"\n", 1, "outside a `start` block"),
            ("start x\n    args \"open\n", 2, "unterminated string"),
            ("run x\n", 1, "unknown command `run`"),
            ("start x\n    cap a = @disk\n", 2, "unknown kernel object `@disk`"),
            ("gate g\nstart x\n    cap a = g client\n", 3, "unexpected `client`"),
            ("# nothing\n", 1, "starts no program"),
        ];
        for (text, line, what) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.what.contains(what), "{text:?}: {e}");
        }
    }
}

//! `cargo xtask bench`: collects metrics from every system measured in one run, prints the table
//! and writes `target/bench/latest.json` as
//! `{"metrics": [{"name": "...", "system": "...", "value": 1.0, "unit": "ns"}, ...]}`.
//!
//! Systems: `kernel` (microkernel micro-benchmarks, cycles), `linux-ref` (Linux booted directly),
//! `uml` (upstream User-Mode Linux inside the reference guest), `l4linux`.

use crate::util::{root, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: String,
    pub system: String,
    pub value: f64,
    pub unit: String,
}

impl Metric {
    pub fn new(name: &str, system: &str, value: f64, unit: &str) -> Self {
        Metric { name: name.into(), system: system.into(), value, unit: unit.into() }
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The JSON document for `metrics`.
pub fn to_json(metrics: &[Metric]) -> String {
    let items: Vec<String> = metrics
        .iter()
        .map(|m| {
            format!(
                "    {{\"name\": {}, \"system\": {}, \"value\": {}, \"unit\": {}}}",
                json_str(&m.name),
                json_str(&m.system),
                if m.value.is_finite() { format!("{:.3}", m.value) } else { "null".into() },
                json_str(&m.unit)
            )
        })
        .collect();
    format!("{{\"metrics\": [\n{}\n]}}\n", items.join(",\n"))
}

/// Writes `target/bench/latest.json`.
pub fn write(metrics: &[Metric]) -> Result {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("latest.json"), to_json(metrics))?;
    Ok(())
}

/// Linux workloads, in table order (names are part of the result format).
pub const LINUX_WORKLOADS: &[&str] = &[
    "getpid",
    "pipe_pingpong",
    "fork_exit",
    "fork_exec",
    "page_touch",
    "sched_yield",
    "macro_tar_gzip",
    "python_startup",
    "boot_to_shell",
];

/// Linux systems compared, in column order.
pub const LINUX_SYSTEMS: &[&str] = &["linux-ref", "uml", "l4linux"];

/// Every system `cargo xtask bench` measures, for `--only`.
pub const SYSTEMS: &[&str] = &["kernel", "linux-ref", "uml", "l4linux"];

/// The systems of `--only a,b`: each must be one of [`SYSTEMS`].
pub fn parse_systems(list: &str) -> Result<Vec<String>> {
    let v: Vec<String> = list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    match v.iter().find(|s| !SYSTEMS.contains(&s.as_str())) {
        Some(bad) => Err(format!("--only: unknown system `{bad}` (known: {})", SYSTEMS.join(", ")).into()),
        None if v.is_empty() => Err("--only needs at least one system".into()),
        None => Ok(v),
    }
}

fn find<'a>(metrics: &'a [Metric], name: &str, system: &str) -> Option<&'a Metric> {
    metrics.iter().find(|m| m.name == name && m.system == system)
}

/// Prints the kernel micro-benchmarks and the Linux comparison table with ratio columns.
pub fn print_table(metrics: &[Metric]) {
    let kernel: Vec<_> = metrics.iter().filter(|m| m.system == "kernel").collect();
    if !kernel.is_empty() {
        println!("\n{:<40} {:>14}  unit", "kernel micro-benchmark", "median");
        for m in kernel {
            println!("{:<40} {:>14.1}  {}", m.name, m.value, m.unit);
        }
    }
    if !metrics.iter().any(|m| LINUX_SYSTEMS.contains(&m.system.as_str())) {
        return;
    }
    print!("\n{:<16} {:>6}", "workload", "unit");
    for s in LINUX_SYSTEMS {
        print!(" {s:>12}");
    }
    println!(" {:>10} {:>14} {:>12}", "uml/ref", "l4linux/ref", "l4linux/uml");
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_string(),
    };
    for w in LINUX_WORKLOADS {
        let v = |s: &str| find(metrics, w, s).map(|m| m.value);
        let unit = LINUX_SYSTEMS.iter().find_map(|s| find(metrics, w, s)).map_or("", |m| m.unit.as_str());
        print!("{w:<16} {unit:>6}");
        for s in LINUX_SYSTEMS {
            print!(" {:>12}", cell(v(s)));
        }
        let (r, u, l) = (v("linux-ref"), v("uml"), v("l4linux"));
        println!(" {:>10} {:>14} {:>12}", ratio(u, r), ratio(l, r), ratio(l, u));
    }
}

/// The median of `v` (mean of the middle two for even lengths); `None` if empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let j = to_json(&[Metric::new("getpid", "linux-ref", 314.0, "ns")]);
        assert!(j.contains(
            "{\"name\": \"getpid\", \"system\": \"linux-ref\", \"value\": 314.000, \"unit\": \"ns\"}"
        ));
        assert!(j.starts_with("{\"metrics\": ["));
    }

    #[test]
    fn only_lists() {
        assert_eq!(parse_systems("uml").unwrap(), vec!["uml"]);
        assert_eq!(parse_systems("linux-ref, uml").unwrap(), vec!["linux-ref", "uml"]);
        assert!(parse_systems("umll").unwrap_err().to_string().contains("unknown system `umll`"));
        assert!(parse_systems(",").is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}

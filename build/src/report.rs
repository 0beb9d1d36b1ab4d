//! Test bookkeeping for `cargo xtask test`: every check records an outcome here, and the run ends
//! with the one summary line `N passed, N failed[, N skipped]`.

use crate::qemu::Outcome;

#[derive(Default)]
pub struct Report {
    passed: usize,
    failed: Vec<String>,
    skipped: usize,
}

impl Report {
    pub fn pass(&mut self, name: &str, detail: &str) {
        self.passed += 1;
        println!(
            "test {name} ... ok{}",
            if detail.is_empty() { String::new() } else { format!(" ({detail})") }
        );
    }

    pub fn fail(&mut self, name: &str, why: &str) {
        println!("test {name} ... FAILED: {why}");
        self.failed.push(name.to_string());
    }

    pub fn skip(&mut self, name: &str, why: &str) {
        self.skipped += 1;
        println!("test {name} ... skipped: {why}");
    }

    /// Records a check that is a plain result.
    pub fn check(&mut self, name: &str, r: crate::util::Result) {
        match r {
            Ok(()) => self.pass(name, ""),
            Err(e) => self.fail(name, &e.to_string()),
        }
    }

    /// Records a QEMU scenario; on failure prints the tail of its serial log.
    pub fn scenario(&mut self, name: &str, o: &Outcome) {
        match &o.failure {
            None => self.pass(name, &format!("{:.1} s", o.elapsed.as_secs_f64())),
            Some(why) => {
                self.fail(name, why);
                println!("---- last lines of {} ----\n{}\n----", o.log_path.display(), o.tail(30));
            }
        }
    }

    pub fn failed(&self) -> usize {
        self.failed.len()
    }

    /// The closing summary line (and the names of failures above it).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        if !self.failed.is_empty() {
            s.push_str(&format!("failures: {}\n", self.failed.join(", ")));
        }
        s.push_str(&format!("{} passed, {} failed", self.passed, self.failed.len()));
        if self.skipped > 0 {
            s.push_str(&format!(", {} skipped", self.skipped));
        }
        s
    }
}

//! CPU and memory of a process, from `/proc/<pid>` (Linux). The parsers are
//! pure; [`Sampler`] reads the files every interval and keeps the totals.

use serde::Serialize;
use std::time::{Duration, Instant};

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat`: USER_HZ,
/// which Linux fixes at 100 on every architecture it exports to user space
/// (ARM included), whatever the kernel's internal HZ.
pub const CLOCK_TICKS_PER_SEC: u64 = 100;

/// User plus system CPU time in clock ticks, from the text of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself, so the fields are counted from the last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state (field 3) ... utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size in KiB, from the text of `/proc/<pid>/status` (`VmRSS:`).
pub fn rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub cpu_ticks: u64,
    pub rss_kib: u64,
}

/// Reads `/proc/<pid>`; `None` if the process is gone (or this is not Linux).
pub fn read(pid: u32) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Reading {
        cpu_ticks: cpu_ticks(&stat)?,
        rss_kib: rss_kib(&status)?,
    })
}

/// The command name of a process (`/proc/<pid>/comm`).
pub fn name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// What a process used over a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    pub pid: u32,
    /// Its command name.
    pub name: String,
    /// CPU time over the run's wall time, in percent of one core (200 is two cores busy).
    pub cpu_pct: f64,
    /// The busiest sampling interval, same unit.
    pub cpu_pct_max: f64,
    /// CPU seconds used during the run.
    pub cpu_s: f64,
    pub rss_kib_start: u64,
    pub rss_kib_max: u64,
    pub rss_kib_end: u64,
    /// Readings taken.
    pub samples: u32,
}

/// Running totals for one process.
#[derive(Debug, Clone)]
pub struct Sampler {
    usage: Usage,
    first: Option<(Instant, Reading)>,
    last: Option<(Instant, Reading)>,
}

impl Sampler {
    pub fn new(pid: u32) -> Self {
        Self {
            usage: Usage {
                pid,
                name: name(pid).unwrap_or_default(),
                ..Usage::default()
            },
            first: None,
            last: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.usage.pid
    }

    /// Reads the process now; a process that is gone leaves the totals as they were.
    pub fn sample(&mut self) {
        if let Some(reading) = read(self.usage.pid) {
            self.add(Instant::now(), reading);
        }
    }

    /// Adds a reading taken at `at`.
    pub fn add(&mut self, at: Instant, reading: Reading) {
        let u = &mut self.usage;
        u.samples += 1;
        u.rss_kib_max = u.rss_kib_max.max(reading.rss_kib);
        u.rss_kib_end = reading.rss_kib;
        match (self.first, self.last) {
            (None, _) | (_, None) => {
                u.rss_kib_start = reading.rss_kib;
                self.first = Some((at, reading));
            }
            (Some((t0, r0)), Some((t1, r1))) => {
                u.cpu_pct_max = u.cpu_pct_max.max(cpu_pct(r1, reading, at - t1));
                u.cpu_pct = cpu_pct(r0, reading, at - t0);
                u.cpu_s = reading.cpu_ticks.saturating_sub(r0.cpu_ticks) as f64
                    / CLOCK_TICKS_PER_SEC as f64;
            }
        }
        self.last = Some((at, reading));
    }

    pub fn usage(&self) -> Usage {
        self.usage.clone()
    }
}

fn cpu_pct(from: Reading, to: Reading, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    let cpu = to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / CLOCK_TICKS_PER_SEC as f64;
    100.0 * cpu / secs
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line, with a command name that has a space and a parenthesis.
    const STAT: &str = "4242 (wasm gate) x) S 1 4242 4242 0 -1 4194560 1200 0 3 0 \
                        731 269 0 0 20 0 5 0 1234567 123456789 2048 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17664 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn cpu_time_is_user_plus_system_ticks_counted_after_the_name() {
        assert_eq!(cpu_ticks(STAT), Some(731 + 269));
        assert_eq!(cpu_ticks("4242 (short"), None);
        assert_eq!(cpu_ticks("4242 (x) S 1 2"), None);
    }

    #[test]
    fn rss_is_read_from_the_vmrss_line() {
        let status =
            "Name:\twasmgate\nVmPeak:\t  99999 kB\nVmRSS:\t    7316 kB\nRssAnon:\t 3000 kB\n";
        assert_eq!(rss_kib(status), Some(7316));
        assert_eq!(rss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn usage_is_cpu_over_the_run_and_the_busiest_interval() {
        let mut sampler = Sampler::new(0);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let reading = |cpu_ticks, rss_kib| Reading { cpu_ticks, rss_kib };
        sampler.add(at(0), reading(1000, 5000));
        sampler.add(at(1000), reading(1050, 9000)); // half a core
        sampler.add(at(2000), reading(1200, 8000)); // one and a half cores
        let usage = sampler.usage();
        assert!((usage.cpu_pct - 100.0).abs() < 1e-9, "{usage:?}");
        assert!((usage.cpu_pct_max - 150.0).abs() < 1e-9, "{usage:?}");
        assert!((usage.cpu_s - 2.0).abs() < 1e-9);
        assert_eq!(
            (
                usage.rss_kib_start,
                usage.rss_kib_max,
                usage.rss_kib_end,
                usage.samples
            ),
            (5000, 9000, 8000, 3)
        );
    }

    #[test]
    fn this_process_can_be_read() {
        let reading = read(std::process::id()).expect("/proc/self readable on Linux");
        assert!(reading.rss_kib > 0);
    }
}

//! A function's log lines per second, bounded: a function that logs on
//! every message of a flood would otherwise fill the journal and the log
//! ring with one line per message, and push every other function's lines
//! out of the ring. Over its rate, lines are dropped and counted (in
//! `/metrics`), with one warning now and then saying how many: the
//! pipeline never waits for a log.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the "lines dropped" warning may repeat.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How often a function's refused effects and metric names are logged:
/// a function that emits outside its grants (or names a metric wrongly)
/// on every message would otherwise write an error line per message. All
/// are counted in `/metrics` regardless.
const REFUSALS_EVERY: Duration = Duration::from_secs(1);

/// A token bucket shared by a function's workers.
#[derive(Debug)]
pub struct LogGate {
    /// Lines a second; the bucket holds one second of them.
    rate: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled: Instant,
    /// Dropped since the last warning.
    dropped: u64,
    warned: Option<Instant>,
    /// Invocations whose refusals were not logged since the last that were.
    refusals_unlogged: u64,
    refusals_logged: Option<Instant>,
}

/// What [`LogGate::admit`] decided for an invocation's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The first this many lines are kept.
    pub lines: usize,
    /// Time to warn of this many dropped lines (since the last warning).
    pub warn: Option<u64>,
}

impl LogGate {
    /// `rate` lines a second (0: no limit).
    pub fn new(rate: u32) -> LogGate {
        Self::at(rate, Instant::now())
    }

    fn at(rate: u32, now: Instant) -> LogGate {
        LogGate {
            rate: f64::from(rate),
            state: Mutex::new(State {
                tokens: f64::from(rate),
                refilled: now,
                dropped: 0,
                warned: None,
                refusals_unlogged: 0,
                refusals_logged: None,
            }),
        }
    }

    /// How many of an invocation's `n` lines may be kept.
    pub fn admit(&self, n: usize) -> Admitted {
        self.admit_at(n, Instant::now())
    }

    fn admit_at(&self, n: usize, now: Instant) -> Admitted {
        if self.rate == 0.0 || n == 0 {
            return Admitted {
                lines: n,
                warn: None,
            };
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.rate);
        s.refilled = now;
        let lines = (s.tokens.floor() as usize).min(n);
        s.tokens -= lines as f64;
        s.dropped += (n - lines) as u64;
        let due = s.dropped > 0
            && s.warned
                .is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
        let warn = due.then(|| {
            s.warned = Some(now);
            std::mem::take(&mut s.dropped)
        });
        Admitted { lines, warn }
    }

    /// Whether an invocation's refusals may be logged now: `Some(n)`, with
    /// the invocations whose refusals were only counted since the last
    /// logged; `None`: count them, say nothing.
    pub fn refusals(&self) -> Option<u64> {
        self.refusals_at(Instant::now())
    }

    fn refusals_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.refusals_logged
            .is_some_and(|at| now.saturating_duration_since(at) < REFUSALS_EVERY)
        {
            s.refusals_unlogged += 1;
            return None;
        }
        s.refusals_logged = Some(now);
        Some(std::mem::take(&mut s.refusals_unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_passes_then_the_rate() {
        let t0 = Instant::now();
        let gate = LogGate::at(10, t0);
        assert_eq!(gate.admit_at(4, t0).lines, 4);
        let over = gate.admit_at(10, t0);
        assert_eq!(over.lines, 6);
        // The first drop warns at once, with its count.
        assert_eq!(over.warn, Some(4));
        // Half a second refills five.
        let later = gate.admit_at(8, t0 + Duration::from_millis(500));
        assert_eq!(later.lines, 5);
        // Within ten seconds of the last warning: counted, not warned.
        assert_eq!(later.warn, None);
        let quiet = gate.admit_at(100, t0 + Duration::from_secs(11));
        assert_eq!(quiet.lines, 10);
        assert_eq!(quiet.warn, Some(3 + 90));
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second_with_what_was_not() {
        let t0 = Instant::now();
        let gate = LogGate::at(0, t0);
        assert_eq!(gate.refusals_at(t0), Some(0));
        assert_eq!(gate.refusals_at(t0 + Duration::from_millis(10)), None);
        assert_eq!(gate.refusals_at(t0 + Duration::from_millis(900)), None);
        assert_eq!(gate.refusals_at(t0 + Duration::from_millis(1_000)), Some(2));
        assert_eq!(gate.refusals_at(t0 + Duration::from_millis(3_000)), Some(0));
    }

    #[test]
    fn a_rate_of_zero_keeps_every_line() {
        let gate = LogGate::new(0);
        assert_eq!(
            gate.admit(1_000),
            Admitted {
                lines: 1_000,
                warn: None
            }
        );
    }

    #[test]
    fn the_bucket_holds_no_more_than_a_second() {
        let t0 = Instant::now();
        let gate = LogGate::at(5, t0);
        assert_eq!(gate.admit_at(100, t0 + Duration::from_secs(3_600)).lines, 5);
    }
}

//! When a failed invocation runs again, and how a wait between attempts is
//! cut short by a shutdown.
//!
//! Pure logic: [`RetryPolicy`] decides from the failure kind and the attempt
//! number, and computes the wait from a random number it is given, so its
//! tests need no clock and no randomness. [`Stop`] is the one piece with a
//! clock: a sleep that a shutdown interrupts.

use crate::config::RetryConfig;
use crate::runtime::FailureKind;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A function's retry settings, as the dispatcher applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per event, the first included; at least 1.
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// 0 to 100: how much of each wait may be randomly cut off.
    pub jitter_percent: u8,
    pub retry_on: Vec<FailureKind>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::from(&RetryConfig::default())
    }
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(config: &RetryConfig) -> Self {
        RetryPolicy {
            attempts: config.attempts.max(1),
            initial_backoff: Duration::from_millis(config.initial_backoff_ms),
            max_backoff: Duration::from_millis(config.max_backoff_ms),
            jitter_percent: config.jitter_percent.min(100),
            retry_on: config.retry_on.clone(),
        }
    }
}

impl RetryPolicy {
    /// No retries: every failure goes to the dead-letter queue at once.
    pub fn never() -> Self {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Whether an event whose attempt number `attempt` (1-based) failed with
    /// `kind` gets another attempt.
    pub fn retries(&self, kind: FailureKind, attempt: u32) -> bool {
        attempt < self.attempts && self.retry_on.contains(&kind)
    }

    /// The wait after failed attempt number `attempt` (1-based):
    /// `initial * 2^(attempt-1)`, capped at `max`, then shortened by up to
    /// `jitter_percent` according to `random` (any u64, uniformly spread).
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        // Integer microseconds throughout: no float rounding past a cap,
        // and no overflow for any attempt number or configured wait.
        let doublings = attempt.saturating_sub(1).min(40);
        let exponential = self.initial_backoff.as_micros() << doublings;
        let capped = exponential
            .min(self.max_backoff.as_micros())
            .min(u128::from(u64::MAX));
        // The cut, in millionths of the wait: 0 ..= jitter_percent * 10^4.
        let span = u64::from(self.jitter_percent.min(100)) * 10_000;
        let cut = u128::from(random % (span + 1));
        let kept = capped * (1_000_000 - cut) / 1_000_000;
        Duration::from_micros(kept as u64)
    }
}

/// A small, fast generator for jitter (xorshift64*); not for secrets.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        // xorshift never leaves zero.
        Jitter(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A stop signal that threads can sleep on: a worker waiting between
/// attempts wakes at once when the gateway shuts down, rather than holding
/// the shutdown for a whole backoff.
#[derive(Debug, Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl Stop {
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps for `duration` unless stopped first; `true` if it slept the
    /// whole time, `false` if stopped (before or during the sleep).
    pub fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        while !*stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            stopped = self
                .changed
                .wait_timeout(stopped, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn policy(attempts: u32, jitter_percent: u8) -> RetryPolicy {
        RetryPolicy {
            attempts,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1_000),
            jitter_percent,
            retry_on: vec![FailureKind::Trap, FailureKind::Deadline],
        }
    }

    #[test]
    fn waits_double_from_the_initial_one_up_to_the_cap() {
        let p = policy(10, 0);
        let waits: Vec<u64> = (1..=6)
            .map(|attempt| p.delay(attempt, 12345).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn jitter_only_ever_shortens_a_wait_and_by_at_most_its_percent() {
        let p = policy(10, 50);
        let mut rng = Jitter::new(7);
        let mut shortest = Duration::MAX;
        for _ in 0..10_000 {
            let d = p.delay(2, rng.next());
            assert!(d <= Duration::from_millis(200), "{d:?}");
            assert!(d >= Duration::from_millis(100), "{d:?}");
            shortest = shortest.min(d);
        }
        assert!(shortest < Duration::from_millis(110), "{shortest:?}");
        // The extremes of the random number give the extremes of the wait.
        assert_eq!(p.delay(1, 0), Duration::from_millis(100));
        assert_eq!(p.delay(1, 500_000), Duration::from_millis(50));
    }

    #[test]
    fn huge_attempt_numbers_and_backoffs_do_not_overflow() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_secs(u64::MAX / 4),
            max_backoff: Duration::MAX,
            ..policy(100, 100)
        };
        let _ = p.delay(u32::MAX, u64::MAX);
        assert_eq!(policy(100, 0).delay(u32::MAX, 0), Duration::from_secs(1));
    }

    #[test]
    fn only_listed_failures_are_retried_and_only_until_the_last_attempt() {
        let p = policy(3, 0);
        assert!(p.retries(FailureKind::Trap, 1));
        assert!(p.retries(FailureKind::Deadline, 2));
        assert!(
            !p.retries(FailureKind::Trap, 3),
            "the third attempt is the last"
        );
        assert!(!p.retries(FailureKind::Abi, 1), "ABI misuse is a bug");
        assert!(!RetryPolicy::never().retries(FailureKind::Trap, 1));
    }

    #[test]
    fn the_default_policy_is_the_documented_one() {
        let p = RetryPolicy::default();
        assert_eq!(p.attempts, 3);
        assert_eq!(p.initial_backoff, Duration::from_millis(100));
        for kind in [
            FailureKind::Trap,
            FailureKind::Deadline,
            FailureKind::OutOfFuel,
        ] {
            assert!(p.retries(kind, 1), "{kind:?}");
        }
        for kind in [
            FailureKind::Abi,
            FailureKind::MemoryLimit,
            FailureKind::Failed,
        ] {
            assert!(!p.retries(kind, 1), "{kind:?}");
        }
    }

    #[test]
    fn a_stop_wakes_a_sleeper_and_later_sleeps_return_at_once() {
        let stop = Arc::new(Stop::default());
        let sleeper = {
            let stop = stop.clone();
            std::thread::spawn(move || stop.sleep(Duration::from_secs(3_600)))
        };
        stop.stop();
        assert!(!sleeper.join().unwrap(), "woken by the stop, not the hour");
        assert!(!stop.sleep(Duration::from_secs(3_600)));
        assert!(stop.is_stopped());
    }

    #[test]
    fn an_unstopped_sleep_runs_its_course() {
        assert!(Stop::default().sleep(Duration::from_millis(1)));
    }
}

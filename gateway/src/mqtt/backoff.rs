//! Reconnect delays: exponential, capped, with jitter so that a fleet of
//! gateways does not reconnect to a restarted cloud broker in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
            seed: seed | 1,
        }
    }

    /// The delay before the next attempt: `base * 2^attempt`, capped, then
    /// scaled by a factor in [0.5, 1.0).
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        let capped = exp.min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: deterministic per seed, good enough for jitter.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = 0.5 + (self.seed % 1_000) as f64 / 2_000.0;
        capped.mul_f64(jitter)
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 42);
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] < Duration::from_millis(100));
        assert!(delays[3] >= Duration::from_millis(400), "{delays:?}");
        assert!(
            delays.iter().all(|d| *d < Duration::from_secs(5)),
            "{delays:?}"
        );
        assert!(delays[11] >= Duration::from_millis(2_500), "{delays:?}");
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 7);
        for _ in 0..8 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(100));
    }
}

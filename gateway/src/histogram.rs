//! A lock-free histogram of durations (or counts) in power-of-two
//! buckets: cheap enough to record on every message from any thread, and
//! a percentile from it is exact to within a factor of two.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets: powers of two in microseconds (1 µs .. ~34 s), so a
/// percentile is exact to within a factor of two and needs no locking.
pub const BUCKETS: usize = 26;

/// A lock-free histogram of durations.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    /// Every value recorded, added up (µs for durations): Prometheus's `_sum`.
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        self.record_count(d.as_micros().max(1) as u64);
    }

    /// Records a count (messages in a transaction, fuel) rather than a
    /// duration: the same power-of-two buckets, read by
    /// [`Histogram::prometheus_counts`].
    pub fn record_count(&self, n: u64) {
        let n = n.max(1);
        let bucket = (63 - n.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(n, Ordering::Relaxed);
    }

    /// Every value recorded, added up (µs for durations).
    pub fn sum(&self) -> u64 {
        self.sum_micros.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }

    /// The histogram as `prometheus-client` encodes one: the sum in
    /// seconds, the count, and each bucket's upper bound in seconds with
    /// its own count (the encoder makes them cumulative). Bucket `i` holds
    /// durations in [2^i, 2^(i+1)) µs.
    pub fn prometheus(&self) -> (f64, u64, Vec<(f64, u64)>) {
        self.encoded(|i| (1u64 << (i + 1)) as f64 / 1e6, 1e-6)
    }

    /// [`Histogram::prometheus`] for [`Histogram::record_count`]: bucket
    /// `i` holds the whole numbers up to 2^(i+1) - 1.
    pub fn prometheus_counts(&self) -> (f64, u64, Vec<(f64, u64)>) {
        self.encoded(|i| ((1u64 << (i + 1)) - 1) as f64, 1.0)
    }

    fn encoded(&self, upper: impl Fn(usize) -> f64, scale: f64) -> (f64, u64, Vec<(f64, u64)>) {
        let snapshot = self.snapshot();
        let buckets = snapshot
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let upper = if i == BUCKETS - 1 {
                    f64::INFINITY
                } else {
                    upper(i)
                };
                (upper, n)
            })
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 * scale;
        (sum, snapshot.count(), buckets)
    }
}

/// A copy of a histogram's counts, for percentiles and deltas between reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramSnapshot {
    buckets: [u64; BUCKETS],
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot {
            buckets: [0; BUCKETS],
        }
    }
}

impl HistogramSnapshot {
    /// Counts as stored elsewhere (`store::usage`), bucket by bucket.
    pub fn from_buckets(counts: &[u64]) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| counts.get(i).copied().unwrap_or(0)),
        }
    }

    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Counts recorded since `earlier`.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
        }
    }

    /// The upper bound of the bucket holding the `q` quantile (0.0..=1.0);
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(2u64 << i));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_land_in_the_right_power_of_two_bucket() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(5));
        h.record(Duration::from_millis(40));
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        // 100 µs lies in [64, 128) µs.
        assert_eq!(s.quantile(0.5), Some(Duration::from_micros(128)));
        assert_eq!(s.quantile(0.99), Some(Duration::from_micros(8192)));
        assert_eq!(s.quantile(1.0), Some(Duration::from_micros(65536)));
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        assert_eq!(Histogram::default().snapshot().quantile(0.5), None);
    }

    #[test]
    fn deltas_between_snapshots_cover_only_new_samples() {
        let h = Histogram::default();
        h.record(Duration::from_secs(1));
        let before = h.snapshot();
        h.record(Duration::from_micros(3));
        let delta = h.snapshot().since(&before);
        assert_eq!(delta.count(), 1);
        assert_eq!(delta.quantile(0.5), Some(Duration::from_micros(4)));
    }

    #[test]
    fn extreme_durations_are_clamped_not_lost() {
        let h = Histogram::default();
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(3600));
        assert_eq!(h.snapshot().count(), 2);
    }
}

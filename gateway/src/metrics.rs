//! Counters and latency histograms per function, cheap enough to update on
//! every message from any thread.

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

/// What one version's invocations used, recorded as each ends (a few
/// atomic adds): what `wasmgate cost` and right-sizing read.
#[derive(Debug, Default)]
pub struct VersionUsage {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Fuel per invocation (guest instructions and host-call charges).
    pub fuel: Histogram,
    /// The guest's own time, from taking an instance to the handler's end
    /// (not the queueing before it, which the function's latency holds).
    pub duration: Histogram,
    /// The largest linear memory any invocation ended with (it never shrinks).
    pub peak_memory_bytes: AtomicU64,
    /// The most fuel, and the longest run, of one invocation.
    pub max_fuel: AtomicU64,
    pub max_duration_us: AtomicU64,
}

impl VersionUsage {
    pub fn record(&self, ok: bool, fuel: u64, memory_bytes: u64, duration: Duration) {
        inc(if ok { &self.ok } else { &self.failed });
        self.fuel.record_count(fuel);
        self.duration.record(duration);
        self.peak_memory_bytes
            .fetch_max(memory_bytes, Ordering::Relaxed);
        self.max_fuel.fetch_max(fuel, Ordering::Relaxed);
        self.max_duration_us
            .fetch_max(duration.as_micros() as u64, Ordering::Relaxed);
    }
}

/// What happened to one function's events.
#[derive(Debug, Default)]
pub struct FunctionMetrics {
    /// Events taken from the broker (or another trigger) for this function.
    pub received: AtomicU64,
    /// Invocations that succeeded and whose effects were handed on.
    pub succeeded: AtomicU64,
    /// Invocations that failed (trap, limits, error code).
    pub failed: AtomicU64,
    /// The same by kind, in the order of `FailureKind::ALL`.
    pub failed_by_kind: [AtomicU64; crate::runtime::FailureKind::ALL.len()],
    /// Its HTTP routes' responses by status class: 1xx to 5xx.
    pub http_responses: [AtomicU64; 5],
    /// Messages emitted by successful invocations.
    pub emitted: AtomicU64,
    /// Messages acknowledged to the broker after processing.
    pub acked: AtomicU64,
    /// QoS 0 events dropped because the queue was full (QoS 1 waits instead).
    pub dropped: AtomicU64,
    /// Messages acknowledged without running because their dedup id was seen.
    pub duplicates: AtomicU64,
    /// Attempts run again after a retryable failure.
    pub retries: AtomicU64,
    /// Events that failed every attempt and went to the dead-letter queue.
    pub dead_letters: AtomicU64,
    /// Events that found the function's queue full and waited for room
    /// (while they wait, the ingress reads no more and the broker holds the rest).
    pub throttled: AtomicU64,
    /// Emits and invokes the host refused (bad topics, outside the grants).
    pub refused: AtomicU64,
    /// Jobs in its queues, not yet taken by a worker (signed: a worker may
    /// take a job before its sender counts it).
    pub queued: std::sync::atomic::AtomicI64,
    /// Its log lines kept (the journal and the log ring), and dropped:
    /// over `logs.rate`, or past the lines one invocation may write.
    pub log_lines: AtomicU64,
    pub log_lines_dropped: AtomicU64,
    /// What its invocations report themselves (`metric`).
    pub custom: crate::custom_metrics::CustomMetrics,
    /// From arrival at the gateway to the end of the invocation.
    pub latency: Histogram,
}

impl FunctionMetrics {
    /// Counts an HTTP response of one of its routes, by class.
    pub fn count_http(&self, status: u16) {
        if let Some(class) = (status / 100).checked_sub(1).filter(|c| *c < 5) {
            inc(&self.http_responses[class as usize]);
        }
    }

    /// Counts a failed invocation, and its kind.
    pub fn fail(&self, kind: crate::runtime::FailureKind) {
        inc(&self.failed);
        if let Some(i) = crate::runtime::FailureKind::ALL
            .iter()
            .position(|k| *k == kind)
        {
            inc(&self.failed_by_kind[i]);
        }
    }

    pub fn snapshot(&self) -> FunctionSnapshot {
        FunctionSnapshot {
            received: self.received.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            emitted: self.emitted.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            latency: self.latency.snapshot(),
        }
    }
}

/// A copy of one function's metrics at a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionSnapshot {
    pub received: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub emitted: u64,
    pub acked: u64,
    pub dropped: u64,
    pub duplicates: u64,
    pub retries: u64,
    pub dead_letters: u64,
    pub throttled: u64,
    pub refused: u64,
    pub latency: HistogramSnapshot,
}

pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod failure_kind_tests {
    use super::*;

    #[test]
    fn a_failure_is_counted_once_in_total_and_once_by_its_kind() {
        let m = FunctionMetrics::default();
        m.fail(crate::runtime::FailureKind::Deadline);
        m.fail(crate::runtime::FailureKind::Deadline);
        m.fail(crate::runtime::FailureKind::Trap);
        assert_eq!(m.failed.load(Ordering::Relaxed), 3);
        let by: Vec<u64> = m
            .failed_by_kind
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(by, [1, 0, 0, 2, 0, 0, 0]);
    }
}

/// The embedded broker's counts, as its process reports them each second
/// (`broker.rs`), for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerCounts {
    /// Connections each listener holds now (`devices`, `devices-tls`,
    /// `gateway`: the gateway's own sessions).
    pub connections: std::collections::BTreeMap<String, u64>,
    /// Connections closed at once: their listener was at its cap.
    pub connections_refused: u64,
    pub retained: u64,
    pub retained_bytes: u64,
    pub retained_refused: u64,
    /// Times the broker process died and was started again (the
    /// gateway's count, not the process's).
    #[serde(default)]
    pub restarts: u64,
}

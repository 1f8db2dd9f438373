//! Counters and latency histograms per function, cheap enough to update on
//! every message from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::histogram::{Histogram, HistogramSnapshot, BUCKETS};

/// An outbox drain's connection to its broker, as `/metrics` and the
/// dashboard show it.
#[derive(Debug, Default)]
pub struct Link {
    pub connected: std::sync::atomic::AtomicBool,
    /// Connections made (the broker's CONNACK); all but the first are reconnects.
    pub connects: AtomicU64,
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
    /// Events in its queues (and batch windows), not yet taken by a
    /// worker (signed: a worker may take one before its sender counts it).
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

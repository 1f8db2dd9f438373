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
    /// The same events by the trigger they came through.
    pub triggers: Triggers,
    /// From arrival at the gateway to the end of the invocation.
    pub latency: Histogram,
}

/// An HTTP status's class, as an index of `http_responses`: 1xx is 0.
fn status_class(status: u16) -> Option<usize> {
    (status / 100)
        .checked_sub(1)
        .filter(|c| *c < 5)
        .map(usize::from)
}

/// What came in through one trigger of a function. Kept beside the
/// function's own totals (which every source counts) so that a function
/// with a schedule and an MQTT filter shows which of them is busy.
#[derive(Debug, Default)]
pub struct TriggerMetrics {
    /// Events taken through it (offered to the function's queues, or
    /// dropped before).
    pub events: AtomicU64,
    /// QoS 0 messages dropped because the function's queue was full.
    pub dropped: AtomicU64,
    /// An HTTP or WebSocket route's responses by status class: 1xx to 5xx.
    pub http_responses: [AtomicU64; 5],
}

impl TriggerMetrics {
    pub fn count_http(&self, status: u16) {
        if let Some(class) = status_class(status) {
            inc(&self.http_responses[class]);
        }
    }
}

/// A function's triggers by label (`TriggerConfig::label`). Entries stay
/// when `apply` takes a trigger away, so a scraper's counters never go
/// back; a function has as many as its configs ever had, which is bounded
/// by what an operator writes, not by traffic. Looked up once per source,
/// never per event.
#[derive(Debug, Default)]
pub struct Triggers(std::sync::Mutex<Vec<(String, std::sync::Arc<TriggerMetrics>)>>);

impl Triggers {
    /// The counters of the trigger `label`, made on first use.
    pub fn get(&self, label: &str) -> std::sync::Arc<TriggerMetrics> {
        let mut all = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, m)) = all.iter().find(|(l, _)| l == label) {
            return m.clone();
        }
        let m = std::sync::Arc::<TriggerMetrics>::default();
        all.push((label.to_owned(), m.clone()));
        m
    }

    /// Every trigger so far, in the order first used.
    pub fn all(&self) -> Vec<(String, std::sync::Arc<TriggerMetrics>)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl FunctionMetrics {
    /// Counts an HTTP response of one of its routes, by class.
    pub fn count_http(&self, status: u16) {
        if let Some(class) = status_class(status) {
            inc(&self.http_responses[class]);
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

    #[test]
    fn a_trigger_label_names_one_set_of_counters() {
        let m = FunctionMetrics::default();
        let a = m.triggers.get("mqtt:a/#");
        inc(&a.events);
        inc(&m.triggers.get("mqtt:a/#").events);
        m.triggers.get("http:GET /x").count_http(404);
        m.triggers.get("http:GET /x").count_http(99);
        m.triggers.get("http:GET /x").count_http(600);
        let all = m.triggers.all();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, "mqtt:a/#");
        assert_eq!(all[0].1.events.load(Ordering::Relaxed), 2);
        let classes: Vec<u64> = all[1]
            .1
            .http_responses
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        assert_eq!(classes, [0, 0, 0, 1, 0]);
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

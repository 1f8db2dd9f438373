//! What one version's invocations used, recorded as each ends.

use crate::histogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// Events whose last attempt ran on this version and went to the
    /// dead-letter queue: what a rollout's dead-letter alarm reads.
    pub dead_letters: AtomicU64,
    /// The same three peaks since the last [`VersionUsage::take_window`]:
    /// an hourly usage row holds the peaks of its own hour, not of every
    /// hour before it.
    window: [AtomicU64; 3],
}

/// The peaks of one usage window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Peaks {
    pub memory_bytes: u64,
    pub fuel: u64,
    pub duration_us: u64,
}

impl VersionUsage {
    pub fn record(&self, ok: bool, fuel: u64, memory_bytes: u64, duration: Duration) {
        (if ok { &self.ok } else { &self.failed }).fetch_add(1, Ordering::Relaxed);
        self.fuel.record_count(fuel);
        self.duration.record(duration);
        self.peak_memory_bytes
            .fetch_max(memory_bytes, Ordering::Relaxed);
        self.max_fuel.fetch_max(fuel, Ordering::Relaxed);
        let duration_us = duration.as_micros() as u64;
        self.max_duration_us
            .fetch_max(duration_us, Ordering::Relaxed);
        for (peak, value) in self.window.iter().zip([memory_bytes, fuel, duration_us]) {
            peak.fetch_max(value, Ordering::Relaxed);
        }
    }

    /// The peaks since the last call, starting a new window. An invocation
    /// ending during the call lands in one window or the next, never none.
    pub fn take_window(&self) -> Peaks {
        let [memory_bytes, fuel, duration_us] =
            self.window.each_ref().map(|p| p.swap(0, Ordering::Relaxed));
        Peaks {
            memory_bytes,
            fuel,
            duration_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_holds_only_the_peaks_since_the_last_one() {
        let u = VersionUsage::default();
        u.record(true, 900, 2 << 20, Duration::from_millis(30));
        u.record(true, 100, 1 << 20, Duration::from_millis(1));
        let first = u.take_window();
        assert_eq!(
            first,
            Peaks {
                memory_bytes: 2 << 20,
                fuel: 900,
                duration_us: 30_000
            }
        );
        u.record(false, 50, 1 << 20, Duration::from_millis(2));
        let second = u.take_window();
        assert_eq!(
            second,
            Peaks {
                memory_bytes: 1 << 20,
                fuel: 50,
                duration_us: 2_000
            }
        );
        assert_eq!(u.take_window(), Peaks::default());
        // The lifetime peaks stay for /metrics.
        assert_eq!(u.max_fuel.load(Ordering::Relaxed), 900);
        assert_eq!(u.peak_memory_bytes.load(Ordering::Relaxed), 2 << 20);
    }
}

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
}

impl VersionUsage {
    pub fn record(&self, ok: bool, fuel: u64, memory_bytes: u64, duration: Duration) {
        (if ok { &self.ok } else { &self.failed }).fetch_add(1, Ordering::Relaxed);
        self.fuel.record_count(fuel);
        self.duration.record(duration);
        self.peak_memory_bytes
            .fetch_max(memory_bytes, Ordering::Relaxed);
        self.max_fuel.fetch_max(fuel, Ordering::Relaxed);
        self.max_duration_us
            .fetch_max(duration.as_micros() as u64, Ordering::Relaxed);
    }
}

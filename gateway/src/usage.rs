//! Moves what each version's invocations used (`runtime::VersionUsage`,
//! counters since the start) into the store's hourly rows
//! (`store::usage`), as the difference since the last flush: every few
//! seconds, when `/v1/cost` asks (so it is current), and at shutdown.
//!
//! A version that stops running (a deploy moved `live`) is flushed once
//! more and forgotten, so nothing it did between two flushes is lost.

use crate::runtime::Function;
use crate::scrape::Sources;
use crate::store::usage::{UsageRow, HOUR_MS};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// How often usage is written while nobody asks.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// What was flushed already, per version.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Flushed {
    invocations: u64,
    failed: u64,
    duration_us: u64,
    fuel: u64,
    buckets: Vec<u64>,
}

impl Flushed {
    fn of(f: &Function) -> Flushed {
        let u = f.usage();
        Flushed {
            invocations: u.ok.load(Ordering::Relaxed) + u.failed.load(Ordering::Relaxed),
            failed: u.failed.load(Ordering::Relaxed),
            duration_us: u.duration.sum(),
            fuel: u.fuel.sum(),
            buckets: u.duration.snapshot().buckets().to_vec(),
        }
    }
}

/// Each deployed version seen running, by function and the `Function`'s
/// address (a change of limits alone builds a new `Function` of the same
/// version, with counters of its own), with what of it was flushed. The
/// map holds the `Arc`, so an address is not reused while it is a key.
type Seen = HashMap<(String, usize), (Arc<Function>, Flushed)>;

#[derive(Debug)]
pub struct UsageFlusher {
    sources: Arc<Sources>,
    seen: Mutex<Seen>,
}

impl UsageFlusher {
    pub fn new(sources: Arc<Sources>) -> UsageFlusher {
        UsageFlusher {
            sources,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Hands the store what was used since the last flush.
    pub fn flush(&self) {
        self.flush_then(None);
    }

    /// [`UsageFlusher::flush`], and waits (up to `timeout`) until it is
    /// committed: `/v1/cost` then reads it.
    pub fn flush_and_wait(&self, timeout: std::time::Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.flush_then(Some(tx));
        let _ = rx.recv_timeout(timeout);
    }

    fn flush_then(&self, done: Option<std::sync::mpsc::Sender<()>>) {
        let now = crate::store::now_ms();
        let hour_ms = now - now.rem_euclid(HOUR_MS);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut running: Vec<(String, Arc<Function>)> = Vec::new();
        for source in self.sources.functions() {
            let routing = source.live.routing();
            running.push((source.name.clone(), routing.primary.clone()));
            if let Some((other, _)) = routing.secondary {
                running.push((source.name.clone(), other));
            }
        }
        for (name, f) in &running {
            seen.entry((name.clone(), Arc::as_ptr(f) as usize))
                .or_insert_with(|| (f.clone(), Flushed::default()));
        }
        let mut rows = Vec::new();
        for ((name, _), (f, before)) in seen.iter_mut() {
            let version = f.version();
            let now = Flushed::of(f);
            if now.invocations > before.invocations {
                let peaks = f.usage().take_window();
                rows.push(UsageRow {
                    function: name.clone(),
                    version: version.to_owned(),
                    hour_ms,
                    invocations: now.invocations - before.invocations,
                    failed: now.failed.saturating_sub(before.failed),
                    duration_us: now.duration_us.saturating_sub(before.duration_us),
                    max_duration_us: peaks.duration_us,
                    fuel: now.fuel.saturating_sub(before.fuel),
                    max_fuel: peaks.fuel,
                    peak_memory_bytes: peaks.memory_bytes,
                    memory_limit_bytes: f.limits().memory_bytes as u64,
                    fuel_limit: f.limits().fuel,
                    duration_buckets: now
                        .buckets
                        .iter()
                        .zip(before.buckets.iter().chain(std::iter::repeat(&0)))
                        .map(|(a, b)| a.saturating_sub(*b))
                        .collect(),
                });
            }
            *before = now;
        }
        // Versions no longer running have been flushed a last time.
        seen.retain(|(name, address), _| {
            running
                .iter()
                .any(|(n, f)| n == name && Arc::as_ptr(f) as usize == *address)
        });
        self.sources.store().record_usage(rows, done);
    }
}

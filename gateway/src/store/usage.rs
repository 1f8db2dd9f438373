//! What each function version's invocations used, per hour, kept in the
//! database so that `wasmgate cost --since 24h` covers restarts: the
//! counters in memory start from zero at each start.
//!
//! The gateway adds what was used since its last flush every few seconds
//! (`pipeline::usage`), one row per version and hour, upserted in the
//! store's next transaction.

use super::{lock, Request, Store, StoreError};
use crate::histogram::BUCKETS;
use rusqlite::{params, OptionalExtension, Transaction};

/// What one version used in one hour (or, added up, over a window).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsageRow {
    pub function: String,
    pub version: String,
    /// The hour's start, Unix ms.
    pub hour_ms: i64,
    pub invocations: u64,
    pub failed: u64,
    /// The guest's own time, added up (µs).
    pub duration_us: u64,
    pub max_duration_us: u64,
    pub fuel: u64,
    pub max_fuel: u64,
    pub peak_memory_bytes: u64,
    /// The limits it ran under, as last seen.
    pub memory_limit_bytes: u64,
    pub fuel_limit: u64,
    /// The run-time histogram's buckets (`metrics::Histogram`): where
    /// percentiles come from.
    pub duration_buckets: Vec<u64>,
}

pub const HOUR_MS: i64 = 3_600_000;

impl Store {
    /// Adds usage to its hours' rows, in the next transaction; `done` hears
    /// once it is committed (and is dropped if it never will be).
    pub fn record_usage(&self, rows: Vec<UsageRow>, done: Option<std::sync::mpsc::Sender<()>>) {
        if rows.is_empty() {
            if let Some(done) = done {
                let _ = done.send(());
            }
            return;
        }
        if let Some(tx) = &lock(&self.inner.submitter).tx {
            let _ = tx.send(Request::Usage { rows, done });
        }
    }

    /// Every row of an hour that ends after `since_ms`.
    pub fn usage(&self, since_ms: i64) -> Result<Vec<UsageRow>, StoreError> {
        self.with_reader(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT function, version, hour_ms, invocations, failed, duration_us, max_duration_us,
                        fuel, max_fuel, peak_memory, memory_limit, fuel_limit, duration_buckets
                 FROM usage WHERE hour_ms + ?2 > ?1 ORDER BY function, version, hour_ms",
            )?;
            let rows = statement.query_map(params![since_ms, HOUR_MS], |r| {
                let n = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
                Ok(UsageRow {
                    function: r.get(0)?,
                    version: r.get(1)?,
                    hour_ms: r.get(2)?,
                    invocations: n(3)?,
                    failed: n(4)?,
                    duration_us: n(5)?,
                    max_duration_us: n(6)?,
                    fuel: n(7)?,
                    max_fuel: n(8)?,
                    peak_memory_bytes: n(9)?,
                    memory_limit_bytes: n(10)?,
                    fuel_limit: n(11)?,
                    duration_buckets: decode(&r.get::<_, Vec<u8>>(12)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}

fn encode(buckets: &[u64]) -> Vec<u8> {
    buckets.iter().flat_map(|b| b.to_le_bytes()).collect()
}

fn decode(bytes: &[u8]) -> Vec<u64> {
    let mut buckets: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    buckets.resize(BUCKETS, 0);
    buckets
}

/// Adds each row to its hour's (creating it).
pub(super) fn write(tx: &Transaction<'_>, rows: &[UsageRow]) -> rusqlite::Result<()> {
    let mut get = tx.prepare_cached(
        "SELECT duration_buckets FROM usage WHERE function = ?1 AND version = ?2 AND hour_ms = ?3",
    )?;
    let mut put = tx.prepare_cached(
        "INSERT INTO usage (function, version, hour_ms, invocations, failed, duration_us, max_duration_us,
                            fuel, max_fuel, peak_memory, memory_limit, fuel_limit, duration_buckets)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (function, version, hour_ms) DO UPDATE SET
            invocations = invocations + excluded.invocations,
            failed = failed + excluded.failed,
            duration_us = duration_us + excluded.duration_us,
            max_duration_us = max(max_duration_us, excluded.max_duration_us),
            fuel = fuel + excluded.fuel,
            max_fuel = max(max_fuel, excluded.max_fuel),
            peak_memory = max(peak_memory, excluded.peak_memory),
            memory_limit = excluded.memory_limit,
            fuel_limit = excluded.fuel_limit,
            duration_buckets = excluded.duration_buckets",
    )?;
    for row in rows {
        let before = get
            .query_row(params![row.function, row.version, row.hour_ms], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()?
            .map(|b| decode(&b))
            .unwrap_or_else(|| vec![0; BUCKETS]);
        let merged: Vec<u64> = before
            .iter()
            .zip(row.duration_buckets.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a + b)
            .collect();
        let i = |v: u64| v.min(i64::MAX as u64) as i64;
        put.execute(params![
            row.function,
            row.version,
            row.hour_ms,
            i(row.invocations),
            i(row.failed),
            i(row.duration_us),
            i(row.max_duration_us),
            i(row.fuel),
            i(row.max_fuel),
            i(row.peak_memory_bytes),
            i(row.memory_limit_bytes),
            i(row.fuel_limit),
            encode(&merged)
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn row(hour_ms: i64, invocations: u64, max_fuel: u64) -> UsageRow {
        let mut buckets = vec![0; BUCKETS];
        buckets[10] = invocations;
        UsageRow {
            function: "f".into(),
            version: "v1".into(),
            hour_ms,
            invocations,
            failed: 1,
            duration_us: 1_000 * invocations,
            max_duration_us: 2_000,
            fuel: 10 * invocations,
            max_fuel,
            peak_memory_bytes: 65_536,
            memory_limit_bytes: 16 << 20,
            fuel_limit: 50_000_000,
            duration_buckets: buckets,
        }
    }

    #[test]
    fn usage_adds_up_per_hour_and_is_read_by_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreOptions::new(dir.path().join("wasmgate.db"))).expect("opens");
        let hour = 1_000 * HOUR_MS;
        store.record_usage(vec![row(hour, 3, 40)], None);
        store.record_usage(vec![row(hour, 2, 90), row(hour + HOUR_MS, 7, 10)], None);
        let mut rows = Vec::new();
        for _ in 0..500 {
            rows = store.usage(0).expect("reads");
            if rows.len() == 2 && rows[0].invocations == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(rows.len(), 2, "{rows:?}");
        let first = &rows[0];
        assert_eq!(
            (
                first.invocations,
                first.failed,
                first.duration_us,
                first.max_fuel
            ),
            (5, 2, 5_000, 90)
        );
        assert_eq!(first.duration_buckets[10], 5);
        assert_eq!(first.duration_buckets.len(), BUCKETS);
        // A window that starts inside the second hour leaves the first out.
        let later = store.usage(hour + HOUR_MS + 1).expect("reads");
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].invocations, 7);
        store.close();
    }
}

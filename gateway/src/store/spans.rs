//! Spans waiting for the OTLP collector (`[tracing]`): a queue in the
//! database, so that traces survive the collector, the link or the power
//! going. Spans are written as log lines are: buffered (bounded) and put in
//! the store's next group commit, with no fsync of their own; the exporter
//! (`pipeline/spans.rs`) reads them in id order and, once the collector has
//! them, says up to which id they may go. Only the newest `keep` are held.
//!
//! Not rows of the message outbox: that one's budget and `when_full`
//! policies are for devices' messages, which spans must never push out.

use super::{lock, Request, Store, StoreError};
use rusqlite::{params, Transaction};

/// Spans waiting for the store thread, at most: past it (the disk stalled)
/// they are dropped and counted.
const MAX_BUFFERED: usize = 4_096;

/// What the store thread takes in its next transaction.
#[derive(Debug, Default)]
pub(super) struct Buffer {
    /// Encoded OTLP `Span` messages.
    pub spans: Vec<Vec<u8>>,
    /// The collector has every span up to this id.
    pub exported: Option<i64>,
}

impl Buffer {
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.exported.is_none()
    }
}

impl Store {
    /// Keeps a finished span for the exporter. Never blocks.
    pub fn span(&self, span: Vec<u8>) {
        if self.inner.span_keep == 0 {
            return;
        }
        let wake = {
            let mut buffer = lock(&self.inner.spans);
            let was_empty = buffer.is_empty();
            if buffer.spans.len() >= MAX_BUFFERED {
                self.inner
                    .stats
                    .spans_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                buffer.spans.push(span);
            }
            was_empty
        };
        if wake {
            self.wake();
        }
    }

    /// The collector took every span up to `id`: they go in the next
    /// transaction (a crash before sends them again, which a collector
    /// takes as the same span ids).
    pub fn spans_exported(&self, id: i64) {
        let wake = {
            let mut buffer = lock(&self.inner.spans);
            let was_empty = buffer.is_empty();
            buffer.exported = Some(buffer.exported.map_or(id, |e| e.max(id)));
            was_empty
        };
        if wake {
            self.wake();
        }
    }

    /// Up to `limit` spans after id `after`, oldest first.
    pub fn spans_after(&self, after: i64, limit: usize) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.with_reader(|conn| {
            let mut select = conn
                .prepare_cached("SELECT id, body FROM spans WHERE id > ?1 ORDER BY id LIMIT ?2")?;
            let rows = select
                .query_map(params![after, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Spans waiting for the collector.
    pub fn spans_waiting(&self) -> Result<u64, StoreError> {
        self.with_reader(|conn| {
            let n: i64 = conn.query_row(
                "SELECT COALESCE(MAX(id) - MIN(id) + 1, 0) FROM spans",
                [],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        })
    }

    fn wake(&self) {
        if let Some(tx) = &lock(&self.inner.submitter).tx {
            let _ = tx.send(Request::Logs);
        }
    }
}

/// Writes the buffered spans, deletes the exported, and drops the oldest
/// past `keep` (counted). Returns how many were dropped.
pub(super) fn write(tx: &Transaction<'_>, buffer: &Buffer, keep: u32) -> rusqlite::Result<u64> {
    if let Some(id) = buffer.exported {
        tx.execute("DELETE FROM spans WHERE id <= ?1", [id])?;
    }
    if buffer.spans.is_empty() {
        return Ok(0);
    }
    let mut insert = tx.prepare_cached("INSERT INTO spans (body) VALUES (?1)")?;
    for span in &buffer.spans {
        insert.execute([span])?;
    }
    // Ids only grow and the newest is never deleted, so the ring is the
    // last `keep` ids (the exported are gone already).
    let newest = tx.last_insert_rowid();
    let dropped = tx.execute(
        "DELETE FROM spans WHERE id <= ?1",
        [newest - i64::from(keep)],
    )?;
    Ok(dropped as u64)
}

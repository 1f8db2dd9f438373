//! Spans waiting for the OTLP collector (`[tracing]`): a queue in the
//! database, so that traces survive the collector, the link or the power
//! going. Spans are buffered (bounded) as log lines are and written in the
//! store's next group commit, with no fsync of their own: one row per
//! transaction, holding its spans already framed as OTLP `ScopeSpans.spans`
//! fields, so the exporter (`pipeline/spans.rs`) sends a row's bytes as they
//! are. A row per span cost SQLite more than the rest of tracing did.
//! The exporter reads rows in id order and, once the collector has them,
//! says up to which id they may go. Only the newest `keep` spans are held.
//!
//! Not rows of the message outbox: that one's budget and `when_full`
//! policies are for devices' messages, which spans must never push out.

use super::{lock, Request, Store, StoreError};
use rusqlite::{params, Transaction};

/// Spans waiting for the store thread, at most: past it (the disk stalled)
/// they are dropped and counted.
const MAX_BUFFERED: usize = 4_096;

/// Spans in one row, at most: a transaction with more writes several, so
/// that one export request (which reads whole rows) stays near the
/// exporter's batch and below a collector's request size limit.
pub const ROW_SPANS: usize = 512;

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

    /// Whole rows after id `after`, oldest first, as many as hold at most
    /// `limit` spans (always the first row, even a larger one); `None` when
    /// nothing waits.
    pub fn spans_after(&self, after: i64, limit: usize) -> Result<Option<Waiting>, StoreError> {
        self.with_reader(|conn| {
            let mut select = conn.prepare_cached(
                "SELECT id, count, body FROM span_batches WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = select.query(params![after, limit as i64])?;
            let mut waiting: Option<Waiting> = None;
            while let Some(row) = rows.next()? {
                let (id, count, body): (i64, i64, Vec<u8>) =
                    (row.get(0)?, row.get(1)?, row.get(2)?);
                let spans = count.max(1) as u64;
                if waiting
                    .as_ref()
                    .is_some_and(|w| w.count + spans > limit as u64)
                {
                    break;
                }
                let w = waiting.get_or_insert_with(Waiting::default);
                w.last = id;
                if count == 0 {
                    // A row of schema 9: one span, not framed.
                    crate::trace::frame_span(&mut w.framed, &body);
                    w.count += 1;
                } else {
                    w.framed.extend_from_slice(&body);
                    w.count += count as u64;
                }
                if w.count >= limit as u64 {
                    break;
                }
            }
            Ok(waiting)
        })
    }

    /// Spans waiting for the collector.
    pub fn spans_waiting(&self) -> Result<u64, StoreError> {
        self.with_reader(|conn| {
            let n: i64 = conn.query_row(SUM_WAITING, [], |r| r.get(0))?;
            Ok(n as u64)
        })
    }

    fn wake(&self) {
        if let Some(tx) = &lock(&self.inner.submitter).tx {
            let _ = tx.send(Request::Logs);
        }
    }
}

/// Spans ready for the collector, as [`Store::spans_after`] reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waiting {
    /// The newest row's id: once exported, every row up to it goes.
    pub last: i64,
    pub count: u64,
    /// The spans, each framed as a `ScopeSpans.spans` field.
    pub framed: Vec<u8>,
}

/// Spans in the table (a schema 9 row, `count` 0, is one). `count` comes
/// before `body` in a row, so this reads no blob pages.
const SUM_WAITING: &str = "SELECT COALESCE(SUM(MAX(count, 1)), 0) FROM span_batches";

/// Writes the buffered spans as rows of at most [`ROW_SPANS`], deletes the
/// exported, and drops the oldest past `keep` (whole rows, so the table may
/// hold up to a row fewer than `keep`; of a buffer larger than `keep`, only
/// its newest go in). `waiting`: the spans in the table before, if the
/// store thread knows (it reads them once). Returns the spans dropped and
/// the spans waiting after.
pub(super) fn write(
    tx: &Transaction<'_>,
    buffer: &Buffer,
    keep: u32,
    waiting: Option<u64>,
) -> rusqlite::Result<(u64, u64)> {
    let keep = u64::from(keep.max(1));
    let mut waiting = match waiting {
        Some(n) => n,
        None => tx.query_row(SUM_WAITING, [], |r| r.get::<_, i64>(0))? as u64,
    };
    if let Some(id) = buffer.exported {
        let gone: i64 = tx.query_row(
            "SELECT COALESCE(SUM(MAX(count, 1)), 0) FROM span_batches WHERE id <= ?1",
            [id],
            |r| r.get(0),
        )?;
        tx.execute("DELETE FROM span_batches WHERE id <= ?1", [id])?;
        waiting = waiting.saturating_sub(gone as u64);
    }
    let mut dropped = 0;
    if !buffer.spans.is_empty() {
        let skip = buffer.spans.len().saturating_sub(keep as usize);
        let kept = &buffer.spans[skip..];
        let mut insert =
            tx.prepare_cached("INSERT INTO span_batches (count, body) VALUES (?1, ?2)")?;
        for row in kept.chunks(ROW_SPANS) {
            let mut body = Vec::with_capacity(row.iter().map(|s| s.len() + 3).sum());
            for span in row {
                crate::trace::frame_span(&mut body, span);
            }
            insert.execute(params![row.len() as i64, body])?;
        }
        dropped += skip as u64;
        waiting += kept.len() as u64;
    }
    // Past `keep`: the oldest rows go (those just written hold `keep` at
    // most, so some row older than the newest always goes first).
    while waiting > keep {
        let oldest: Vec<(i64, u64)> = tx
            .prepare_cached("SELECT id, MAX(count, 1) FROM span_batches ORDER BY id LIMIT 64")?
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut upto = None;
        for (id, n) in oldest {
            if waiting <= keep {
                break;
            }
            waiting -= n;
            dropped += n;
            upto = Some(id);
        }
        match upto {
            Some(id) => {
                tx.execute("DELETE FROM span_batches WHERE id <= ?1", [id])?;
            }
            None => break,
        }
    }
    Ok((dropped, waiting))
}

//! Committed outbox rows handed to a destination's drainer in memory.
//!
//! The store thread has every outbox row in hand when it commits it; reading
//! it back with a SELECT a moment later (a blocking-pool hop and a reader
//! transaction per refill) was the second-biggest cost per message. So after
//! each commit the store thread appends the rows it just wrote to the feed of
//! their destination, and the drainer takes them from there.
//!
//! The table stays the truth; the feed is only a shortcut, and the drainer
//! may use it only while the feed is known to hold *every* row it has not
//! read. That holds from a start of the feed onwards, given the order:
//!
//! 1. the drainer [`Feed::start`]s the feed (clearing it), then
//! 2. reads the table up to the end (a SELECT that came back short).
//!
//! A row committed before (1) was in the table at (2); one committed after
//! (1) is appended to the feed, because the store thread appends after the
//! commit and under the same lock as (1). Rows in both are skipped by id.
//! Whenever the feed cannot keep that promise it stops (it overflowed its
//! bounds while nobody took from it, or a `drop-oldest` deleted rows that
//! may be in it), and the drainer falls back to the table and starts the
//! feed again.

use super::OutboxRow;
use std::collections::VecDeque;

/// Bounds of one feed: past them it stops, and the drainer reads the table.
/// Enough for a window of batched messages; small against the store's
/// other buffers, and it bounds memory while a link is down.
const MAX_ROWS: usize = 4_096;
const MAX_BYTES: usize = 4 << 20;

#[derive(Debug, Default)]
pub struct Feed {
    /// Whether rows are being kept, for the consumer of `generation`.
    on: bool,
    /// Bumped by every start, so that a consumer that was superseded (a
    /// second drainer of the same destination) gets `None` and reads the
    /// table rather than missing the rows another consumer took.
    generation: u64,
    rows: VecDeque<OutboxRow>,
    bytes: usize,
}

impl Feed {
    /// Starts keeping rows committed from now on, for a new consumer.
    pub fn start(&mut self) -> u64 {
        self.generation += 1;
        self.on = true;
        self.rows.clear();
        self.bytes = 0;
        self.generation
    }

    #[cfg(test)]
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Stops keeping rows: the consumer must read the table from now on.
    pub fn stop(&mut self) {
        self.on = false;
        self.rows = VecDeque::new();
        self.bytes = 0;
    }

    /// Appends one transaction's rows (in id order), or stops when they do
    /// not fit.
    pub fn push(&mut self, rows: Vec<OutboxRow>) {
        if !self.on {
            return;
        }
        let bytes: usize = rows.iter().map(row_bytes).sum();
        if self.rows.len() + rows.len() > MAX_ROWS || self.bytes + bytes > MAX_BYTES {
            self.stop();
            return;
        }
        self.bytes += bytes;
        self.rows.extend(rows);
    }

    /// Up to `limit` rows with ids above `after`, in id order; `None` when
    /// the consumer of `generation` must read the table instead.
    ///
    /// Rows up to `after` are forgotten (the consumer has scanned them);
    /// the ones returned are copies, kept until a later `after` passes
    /// them, because the consumer may use fewer than it asked for (like a
    /// SELECT it may stop reading early).
    pub fn take(&mut self, generation: u64, after: i64, limit: usize) -> Option<Vec<OutboxRow>> {
        if !self.on || generation != self.generation {
            return None;
        }
        while self.rows.front().is_some_and(|r| r.id <= after) {
            let row = self.rows.pop_front().expect("front exists");
            self.bytes -= row_bytes(&row);
        }
        Some(self.rows.iter().take(limit).cloned().collect())
    }
}

fn row_bytes(row: &OutboxRow) -> usize {
    row.topic.len() + row.payload.len() + row.function.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OutboxDestination;

    fn row(id: i64) -> OutboxRow {
        OutboxRow {
            id,
            destination: OutboxDestination::Local,
            topic: "t".into(),
            payload: vec![0; 8],
            qos: 1,
            retain: false,
            function: "f".into(),
            trace: None,
        }
    }

    fn ids(rows: &[OutboxRow]) -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    }

    #[test]
    fn a_feed_that_was_never_started_sends_the_reader_to_the_table() {
        let mut feed = Feed::default();
        feed.push(vec![row(1)]);
        assert_eq!(feed.take(0, 0, 10), None);
        assert!(!feed.is_on());
    }

    #[test]
    fn rows_come_out_in_order_up_to_the_limit_skipping_those_already_read() {
        let mut feed = Feed::default();
        let g = feed.start();
        feed.push(vec![row(3), row(4)]);
        feed.push(vec![row(7), row(9)]);
        // 3 and 4 were also in the table read that followed the start.
        assert_eq!(ids(&feed.take(g, 4, 1).unwrap()), [7]);
        // A row handed out but not scanned comes again.
        assert_eq!(ids(&feed.take(g, 4, 10).unwrap()), [7, 9]);
        assert_eq!(ids(&feed.take(g, 7, 10).unwrap()), [9]);
        assert_eq!(feed.take(g, 9, 10).unwrap(), []);
        assert_eq!(feed.bytes, 0);
    }

    #[test]
    fn a_feed_that_overflows_stops_and_keeps_nothing() {
        let mut feed = Feed::default();
        let g = feed.start();
        feed.push((1..=MAX_ROWS as i64).map(row).collect());
        feed.push(vec![row(MAX_ROWS as i64 + 1)]);
        assert!(!feed.is_on());
        assert_eq!(feed.take(g, 0, 10), None);
        assert!(feed.rows.is_empty());
    }

    #[test]
    fn a_superseded_consumer_reads_the_table_instead_of_losing_rows() {
        let mut feed = Feed::default();
        let first = feed.start();
        let second = feed.start();
        feed.push(vec![row(1)]);
        assert_eq!(feed.take(first, 0, 10), None);
        assert_eq!(ids(&feed.take(second, 0, 10).unwrap()), [1]);
    }
}

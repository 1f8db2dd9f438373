//! The KV change stream as a source (DynamoDB Streams' NEW_AND_OLD_IMAGES):
//! `triggers = [{ kv_change = "vending", keys = "vm-*/stock" }]` runs the
//! function on each committed write of the `vending` function's KV whose key
//! matches: an INSERT (a new key), a MODIFY, or a REMOVE, with the value
//! before and after.
//!
//! The store keeps the writes of every watched namespace in `kv_changes`, in
//! commit order, in the same transaction as the writes. Each trigger reads
//! from its own cursor, one change at a time, and its cursor moves in the
//! transaction that commits the change's invocation (or its dead letter)
//! ([`Settle::Advance`]): at least once, in order, never skipped, across
//! restarts. A new trigger starts at the newest change (what was written
//! before it existed is not replayed). Changes every consumer of a
//! namespace has passed are deleted.
//!
//! [`Settle::Advance`]: super::Settle::Advance

use super::{Advance, Intake, Job, Settle};
use crate::event::OwnedEvent;
use crate::runtime::Effects;
use crate::store::{Commit, Cursor, KvChangeRow, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmgate_abi::KvOp;

/// How often an idle stream looks for new changes.
const POLL: Duration = Duration::from_millis(100);

/// One `kv_change` trigger.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// The function the trigger runs.
    pub function: String,
    /// Names the trigger's cursor: `<function>/<index of the trigger>`.
    pub consumer: String,
    /// The KV namespace (a function's name) it watches.
    pub namespace: String,
    /// The keys it takes (`*` and `?`); `None`: every key.
    pub keys: Option<String>,
    /// Changes handed over together, if the trigger batches.
    pub batch: Option<super::batch::Window>,
}

/// Follows one namespace's changes until the workers are gone or the
/// gateway drains.
pub async fn run(spec: StreamSpec, store: Store, intake: Intake, draining: Arc<AtomicBool>) {
    let reader = store.clone();
    let (consumer, namespace) = (spec.consumer.clone(), spec.namespace.clone());
    let position =
        tokio::task::spawn_blocking(move || reader.kv_cursor(&consumer, &namespace)).await;
    let mut cursor = match position {
        Ok(Ok((Some(cursor), _))) => cursor,
        Ok(Ok((None, newest))) => {
            // A new consumer: it starts at the newest change, and says so in
            // the store so that changes from now on are kept for it.
            store.submit(Commit {
                function: spec.function.clone(),
                effects: Effects::default(),
                dedup: Vec::new(),
                cursors: vec![stream_cursor(&spec, newest)],
                trace: None,
                done: Box::new(|_| {}),
            });
            newest
        }
        Ok(Err(e)) => {
            tracing::error!(function = %spec.function, namespace = %spec.namespace, error = %e, "cannot read the change stream's cursor; the trigger is off until a restart");
            return;
        }
        Err(_) => return,
    };
    let take = spec.batch.map_or(64, |w| w.size);
    loop {
        if draining.load(Ordering::SeqCst) {
            return;
        }
        let reader = store.clone();
        let namespace = spec.namespace.clone();
        let rows =
            tokio::task::spawn_blocking(move || reader.kv_changes_after(&namespace, cursor, take))
                .await;
        let rows = match rows {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::error!(namespace = %spec.namespace, error = %e, "cannot read the change stream; retrying");
                Vec::new()
            }
            Err(_) => return,
        };
        if rows.is_empty() {
            tokio::time::sleep(POLL).await;
            continue;
        }
        if let Some(window) = spec.batch {
            match deliver_batch(&spec, &store, rows, window, &intake, &draining).await {
                Some(next) => cursor = next,
                None => return,
            }
            continue;
        }
        for row in rows {
            let wanted = spec
                .keys
                .as_deref()
                .is_none_or(|keys| super::pattern::glob(keys.as_bytes(), row.key.as_bytes()));
            if wanted && !deliver(&spec, &row, &intake, &draining).await {
                return;
            }
            // A change it does not take moves the cursor in memory only:
            // after a restart it is read and passed over again.
            cursor = row.seq;
        }
    }
}

fn stream_cursor(spec: &StreamSpec, seq: i64) -> Cursor {
    Cursor::KvStream {
        consumer: spec.consumer.clone(),
        namespace: spec.namespace.clone(),
        seq,
    }
}

/// The change as its event.
fn event(spec: &StreamSpec, row: &KvChangeRow) -> OwnedEvent {
    OwnedEvent::KvChange {
        namespace: spec.namespace.clone(),
        key: row.key.clone(),
        op: if row.new.is_some() {
            KvOp::Put
        } else {
            KvOp::Delete
        },
        value: row.new.clone(),
        old: row.old.clone(),
    }
}

/// Runs the changes read (at most a batch's size) as one batch, once more
/// have come or the window has passed, and waits until each is settled.
/// Each change's cursor is written with its commit (see the worker for
/// how a failed item keeps the cursors after it back). Returns where the
/// stream goes on from; `None` when it is to stop. A batch left unsettled
/// (a store that gave up) is read again from the stored cursor.
async fn deliver_batch(
    spec: &StreamSpec,
    store: &Store,
    mut rows: Vec<KvChangeRow>,
    window: super::batch::Window,
    intake: &Intake,
    draining: &AtomicBool,
) -> Option<i64> {
    if rows.len() < window.size && !window.wait.is_zero() {
        tokio::time::sleep(window.wait).await;
        let reader = store.clone();
        let (namespace, after, size) = (spec.namespace.clone(), rows[0].seq - 1, window.size);
        if let Ok(Ok(more)) =
            tokio::task::spawn_blocking(move || reader.kv_changes_after(&namespace, after, size))
                .await
        {
            rows = more;
        }
    }
    let last = rows.last().map(|r| r.seq)?;
    let mut heard = Vec::new();
    let items: Vec<Job> = rows
        .iter()
        .filter(|row| {
            spec.keys
                .as_deref()
                .is_none_or(|keys| super::pattern::glob(keys.as_bytes(), row.key.as_bytes()))
        })
        .map(|row| {
            let (advance, told) = Advance::new(stream_cursor(spec, row.seq));
            heard.push(told);
            Job {
                event: event(spec, row),
                arrived: Instant::now(),
                settle: Settle::Advance(advance),
                dedup: None,
                trace: None,
            }
        })
        .collect();
    if items.is_empty() {
        // Nothing it takes: the cursor moves in memory only, as one by one.
        return Some(last);
    }
    if !intake.send_batch(&spec.namespace, items).await {
        return None;
    }
    let mut settled = true;
    for told in heard {
        settled &= told.await == Ok(true);
    }
    if settled {
        return Some(last);
    }
    if draining.load(Ordering::SeqCst) {
        return None;
    }
    tracing::warn!(function = %spec.function, namespace = %spec.namespace, "a batch of changes was not settled; reading it again");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reader = store.clone();
    let (consumer, namespace) = (spec.consumer.clone(), spec.namespace.clone());
    match tokio::task::spawn_blocking(move || reader.kv_cursor(&consumer, &namespace)).await {
        Ok(Ok((Some(stored), _))) => Some(stored),
        _ => Some(rows[0].seq - 1),
    }
}

/// Runs one change until it is settled; `false` when the stream is to stop.
async fn deliver(
    spec: &StreamSpec,
    row: &KvChangeRow,
    intake: &Intake,
    draining: &AtomicBool,
) -> bool {
    let make = || {
        let (advance, heard) = Advance::new(stream_cursor(spec, row.seq));
        let job = Job {
            event: event(spec, row),
            arrived: Instant::now(),
            settle: Settle::Advance(advance),
            dedup: None,
            trace: None,
        };
        (job, heard)
    };
    let what = format!(
        "function {} change {} of {}",
        spec.function, row.seq, spec.namespace
    );
    super::deliver_settled(make, intake, draining, &what).await
}

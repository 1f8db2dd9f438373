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
    loop {
        if draining.load(Ordering::SeqCst) {
            return;
        }
        let reader = store.clone();
        let namespace = spec.namespace.clone();
        let rows =
            tokio::task::spawn_blocking(move || reader.kv_changes_after(&namespace, cursor, 64))
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
            event: OwnedEvent::KvChange {
                namespace: spec.namespace.clone(),
                key: row.key.clone(),
                op: if row.new.is_some() {
                    KvOp::Put
                } else {
                    KvOp::Delete
                },
                value: row.new.clone(),
                old: row.old.clone(),
            },
            arrived: Instant::now(),
            settle: Settle::Advance(advance),
            dedup: None,
        };
        (job, heard)
    };
    let what = format!(
        "function {} change {} of {}",
        spec.function, row.seq, spec.namespace
    );
    super::deliver_settled(make, intake, draining, &what).await
}

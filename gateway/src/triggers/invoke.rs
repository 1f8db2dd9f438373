//! Fan-out invokes as a source: an invocation's `invoke` effects are outbox
//! rows (committed with the rest of its effects), and this drain feeds each
//! row to its target function's intake. The row is deleted in the
//! transaction that commits the target's invocation or its dead letter
//! ([`Settle::Outbox`]), so a crash in between runs it again, never loses it.
//! HTTP requests taken with `invocation = "event"` wait here the same way.

use super::{Intake, Job, Settle};
use crate::event::OwnedEvent;
use crate::store::{OutboxDestination, Store};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Every function's intake by name, for invokes to find their target.
/// Filled once all exist, and emptied at shutdown: intakes kept here would
/// otherwise keep every worker waiting for more jobs forever.
#[derive(Debug, Default)]
pub struct Intakes(RwLock<HashMap<String, Intake>>);

impl Intakes {
    fn get(&self, function: &str) -> Option<Intake> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(function)
            .cloned()
    }

    pub fn set(&self, intakes: HashMap<String, Intake>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = intakes;
    }
}

/// Feeds fan-out invokes from the outbox to their functions until the
/// workers are gone; `wake` is notified when invokes are committed.
pub async fn drain(store: Store, intakes: Arc<Intakes>, wake: Arc<Notify>) {
    let mut last = 0;
    loop {
        let reader = store.clone();
        let rows = tokio::task::spawn_blocking(move || {
            reader.outbox_after(OutboxDestination::Invoke, last, 64)
        })
        .await;
        let rows = match rows {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read fan-out invokes from the outbox");
                Vec::new()
            }
            Err(_) => return,
        };
        if rows.is_empty() {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        for row in rows {
            last = row.id;
            let Some(intake) = intakes.get(&row.topic) else {
                tracing::warn!(function = %row.function, target = %row.topic, "invoke of a function that is not deployed; dropped");
                store.delete_outbox(vec![row.id]);
                continue;
            };
            // A whole event (an HTTP request taken with `invocation =
            // "event"`), or the payload of an invoke.
            let event = if row.retain {
                match crate::dlq::decode_event(&row.payload) {
                    Ok(event) => OwnedEvent::from_abi(&event),
                    Err(e) => {
                        tracing::error!(target = %row.topic, error = %e, "a queued event does not decode (written by another version of wasmgate?); dropped");
                        store.delete_outbox(vec![row.id]);
                        continue;
                    }
                }
            } else {
                OwnedEvent::Invoke {
                    from: row.function,
                    payload: row.payload,
                }
            };
            let job = Job {
                event,
                arrived: Instant::now(),
                settle: Settle::Outbox { id: row.id },
                dedup: None,
            };
            if !intake.send(job).await {
                return;
            }
        }
    }
}

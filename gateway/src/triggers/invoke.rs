//! Fan-out invokes as a source: an invocation's `invoke` effects are outbox
//! rows (committed with the rest of its effects), and this drain feeds each
//! row to its target function's intake. The row is deleted in the
//! transaction that commits the target's invocation or its dead letter
//! ([`Settle::Outbox`]), so a crash in between runs it again, never loses it.
//! HTTP requests taken with `invocation = "event"` wait here the same way.

use super::{Intake, Job, Settle};
use crate::event::OwnedEvent;
use crate::store::{OutboxDestination, Store};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Every function's intake by name, for invokes to find their target.
/// Filled once all exist, and emptied at shutdown: intakes kept here would
/// otherwise keep every worker waiting for more jobs forever.
#[derive(Debug, Default)]
pub struct Intakes(RwLock<Targets>);

#[derive(Debug, Default)]
struct Targets {
    intakes: HashMap<String, Intake>,
    /// Functions `apply` took out: their queued invokes stay queued.
    removed: HashSet<String>,
    /// Bumped at each change, so that the drain reads the queue again
    /// from its start (invokes it passed over may have a target now).
    generation: u64,
}

/// What became of an invoke's target.
enum Target {
    Intake(Intake),
    /// Taken out by `apply`: the row waits.
    Removed,
    /// Not deployed at all: the row is dropped.
    Unknown,
}

impl Intakes {
    fn get(&self, function: &str) -> Target {
        let targets = self.0.read().unwrap_or_else(PoisonError::into_inner);
        match targets.intakes.get(function) {
            Some(intake) => Target::Intake(intake.clone()),
            None if targets.removed.contains(function) => Target::Removed,
            None => Target::Unknown,
        }
    }

    fn generation(&self) -> u64 {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    pub fn set(&self, intakes: HashMap<String, Intake>) {
        self.set_removed(intakes, &[]);
    }

    /// The intakes from now on, and functions just taken out (whose queued
    /// invokes wait for them to come back, as their MQTT messages do).
    pub fn set_removed(&self, intakes: HashMap<String, Intake>, removed: &[String]) {
        let mut targets = self.0.write().unwrap_or_else(PoisonError::into_inner);
        targets.removed.extend(removed.iter().cloned());
        targets.removed.retain(|f| !intakes.contains_key(f));
        targets.intakes = intakes;
        targets.generation += 1;
    }
}

/// Feeds fan-out invokes from the outbox to their functions until the
/// workers are gone; `wake` is notified when invokes are committed.
pub async fn drain(store: Store, intakes: Arc<Intakes>, wake: Arc<Notify>) {
    let mut last = 0;
    let mut generation = intakes.generation();
    // Rows passed over because `apply` took their target out: offered
    // again when the intakes change (rows past `last` are read anyway; the
    // others in between are in flight, and must not be sent twice).
    let mut parked: std::collections::BTreeSet<i64> = std::collections::BTreeSet::new();
    loop {
        if intakes.generation() != generation {
            generation = intakes.generation();
            if let Some(&first) = parked.first() {
                let mut after = first - 1;
                'revisit: loop {
                    let Some(rows) = read(&store, after).await else {
                        return;
                    };
                    if rows.is_empty() {
                        break;
                    }
                    for row in rows {
                        after = row.id;
                        if row.id > last {
                            break 'revisit;
                        }
                        if parked.remove(&row.id)
                            && !offer(row, &store, &intakes, &mut parked).await
                        {
                            return;
                        }
                    }
                }
            }
        }
        let Some(rows) = read(&store, last).await else {
            return;
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
            if !offer(row, &store, &intakes, &mut parked).await {
                return;
            }
        }
    }
}

/// The next queued invokes after `after`; `None` once the runtime is gone.
async fn read(store: &Store, after: i64) -> Option<Vec<crate::store::OutboxRow>> {
    let reader = store.clone();
    let rows = tokio::task::spawn_blocking(move || {
        reader.outbox_after(OutboxDestination::Invoke, after, 64)
    })
    .await;
    match rows {
        Ok(Ok(rows)) => Some(rows),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read fan-out invokes from the outbox");
            Some(Vec::new())
        }
        Err(_) => None,
    }
}

/// Sends one queued invoke to its function; false once the workers are gone.
async fn offer(
    row: crate::store::OutboxRow,
    store: &Store,
    intakes: &Intakes,
    parked: &mut std::collections::BTreeSet<i64>,
) -> bool {
    let intake = match intakes.get(&row.topic) {
        Target::Intake(intake) => intake,
        Target::Removed => {
            parked.insert(row.id);
            return true;
        }
        Target::Unknown => {
            tracing::warn!(function = %row.function, target = %row.topic, "invoke of a function that is not deployed; dropped");
            store.delete_outbox(vec![row.id]);
            return true;
        }
    };
    // A whole event (an HTTP request taken with `invocation = "event"`), or
    // the payload of an invoke.
    let (event, intake) = if row.retain {
        match crate::dlq::decode_event(&row.payload) {
            // Its HTTP trigger counted it when it was queued.
            Ok(event) => (OwnedEvent::from_abi(&event), intake.untriggered()),
            Err(e) => {
                tracing::error!(target = %row.topic, error = %e, "a queued event does not decode (written by another version of wasmgate?); dropped");
                store.delete_outbox(vec![row.id]);
                return true;
            }
        }
    } else {
        let event = OwnedEvent::Invoke {
            from: row.function,
            payload: row.payload,
        };
        (event, intake)
    };
    let job = Job {
        event,
        arrived: Instant::now(),
        settle: Settle::Outbox { id: row.id },
        dedup: None,
        // The invoking function's span: this invocation is its child.
        trace: row
            .trace
            .as_deref()
            .and_then(crate::trace::TraceContext::from_stored),
    };
    intake.send(job).await
}

//! The trigger seam: every event source hands events to a function the same
//! way and learns their fate the same way.
//!
//! A source (an MQTT session, the fan-out invoke drain, a schedule) makes a
//! [`Job`] with the [`Settle`] that says how to tell the source the event is
//! done, and offers it to the function's [`Intake`]. The intake is bounded:
//! `send` waits while the event's shard is full, so the source stops taking
//! and whatever holds its events keeps them (the broker, the outbox, the
//! schedule's durable cursor). Once a worker has run the event, the store
//! commits its effects (or its dead letter) and only then is the job's
//! `Settle` resolved: an MQTT message acknowledged, a consumed outbox row or
//! a schedule's cursor written in that same transaction ([`Settle::cursor`]).
//! Settling happens in [`Settle::resolve`] and nowhere else, so a new source
//! cannot acknowledge early: it only chooses its variant.
//!
//! In the style of vector's `SourceContext { out, shutdown, acknowledgements }`:
//! the framework owns intake, settling and shutdown; a source only produces.

pub mod answer;
pub mod batch;
pub mod expression;
pub mod file;
pub mod http;
pub mod invoke;
pub mod kv_change;
pub mod mqtt;
pub mod pattern;
pub mod route;
pub mod schedule;
pub mod websocket;

use crate::event::OwnedEvent;
use crate::metrics::{inc, FunctionMetrics, TriggerMetrics};
use crate::store::Cursor;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// One event on its way to one function.
#[derive(Debug)]
pub struct Job {
    pub event: OwnedEvent,
    /// When the gateway received it; latency is measured from here.
    pub arrived: Instant,
    /// How the source learns the event is done.
    pub settle: Settle,
    /// The device-provided message id, when the trigger has a `dedup_key`
    /// or a `dedup_property`.
    pub dedup: Option<String>,
    /// The span it continues, where the source knows it (a fan-out invoke:
    /// the invoking function's); otherwise read from the event itself
    /// (`traceparent` in its user properties or headers).
    pub trace: Option<crate::trace::TraceContext>,
}

/// How an event's source is told that the event's outcome (its effects, or
/// its dead letter) is durable.
#[derive(Debug)]
pub enum Settle {
    /// Nothing to tell: a QoS 0 message.
    Nothing,
    /// An MQTT message: PUBACK it, in arrival order.
    Mqtt(mqtt::AckHandle),
    /// A fan-out invoke waiting in the outbox: its row is deleted in the
    /// transaction that commits the invocation (or its dead letter).
    Outbox { id: i64 },
    /// A source with a cursor of its own (a schedule's last tick, a change
    /// stream's position): the cursor is written in the transaction that
    /// commits the event, and the source hears whether that happened.
    Advance(Advance),
    /// An HTTP request: answered with what the invocation said, once that
    /// is durable.
    Http(http::Pending),
    /// A file: moved to `done/` (or `failed/`, or deleted) once durable.
    File(file::Pending),
    /// A batch ([`batch`]): each of its events is settled on its own, by
    /// the commit (or dead letter) that holds it.
    Batch(Vec<Job>),
}

impl Settle {
    /// What the commit of this event's outcome must record in its own
    /// transaction, so that the source is settled exactly when the outcome
    /// is kept (and a crash before cannot settle it, nor after run it again).
    pub fn cursor(&self) -> Option<Cursor> {
        match self {
            Settle::Outbox { id } => Some(Cursor::OutboxRow(*id)),
            Settle::Advance(advance) => Some(advance.cursor.clone()),
            Settle::Nothing
            | Settle::Mqtt(_)
            | Settle::Http(_)
            | Settle::File(_)
            | Settle::Batch(_) => None,
        }
    }

    /// What the invocation ended with, for a source that answers (HTTP);
    /// it is passed on only once the outcome is durable.
    pub fn tell(&mut self, answer: http::Answer) {
        match self {
            Settle::Http(pending) => pending.tell(answer),
            Settle::File(pending) => pending.tell(&answer),
            _ => {}
        }
    }

    /// Tells the source. `durable`: the outcome is committed, settle it;
    /// otherwise (a shutdown, a store that gave up) leave the event with its
    /// source for the next start: unacknowledged at the broker, in the
    /// outbox, or due again on the schedule. Returns whether an MQTT
    /// acknowledgement was given.
    pub fn resolve(self, durable: bool) -> bool {
        match self {
            Settle::Mqtt(handle) if durable => handle.ack(),
            // Settled already, in the commit itself.
            Settle::Outbox { .. } => durable,
            Settle::Advance(advance) => {
                // The source may be gone (shutting down): then the stored
                // cursor says where to start.
                let _ = advance.told.send(durable);
                durable
            }
            Settle::Http(pending) => {
                pending.resolve(durable);
                durable
            }
            Settle::File(pending) => {
                pending.resolve(durable);
                durable
            }
            Settle::Batch(items) => items
                .into_iter()
                .fold(false, |acked, item| item.settle.resolve(durable) | acked),
            Settle::Mqtt(_) | Settle::Nothing => false,
        }
    }
}

/// A cursor to write with an event's outcome, and who waits to hear of it.
#[derive(Debug)]
pub struct Advance {
    cursor: Cursor,
    told: tokio::sync::oneshot::Sender<bool>,
}

impl Advance {
    /// The settle, and where the source hears `true` (durable) or `false`
    /// (left: due again).
    pub fn new(cursor: Cursor) -> (Advance, tokio::sync::oneshot::Receiver<bool>) {
        let (told, heard) = tokio::sync::oneshot::channel();
        (Advance { cursor, told }, heard)
    }
}

/// Offers the job `make` builds until its outcome is durable, for a source
/// that moves a cursor ([`Settle::Advance`]) and so takes one event at a
/// time: a job left unsettled (a store that gave up, a shutdown) is made
/// and offered again after a backoff. `false` when the source is to stop:
/// the gateway drains, or the workers are gone.
pub async fn deliver_settled(
    mut make: impl FnMut() -> (Job, tokio::sync::oneshot::Receiver<bool>),
    intake: &Intake,
    draining: &std::sync::atomic::AtomicBool,
    what: &str,
) -> bool {
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        if draining.load(Ordering::SeqCst) {
            return false;
        }
        let (job, heard) = make();
        if !intake.send(job).await {
            return false;
        }
        if heard.await == Ok(true) {
            return true;
        }
        if draining.load(Ordering::SeqCst) {
            return false;
        }
        tracing::warn!(retry_in = ?delay, "{what}: not settled; running it again");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
}

/// Why [`Intake::try_send`] did not take a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The shard's queue is full.
    Full,
    /// The workers are gone.
    Closed,
}

/// Which shard serves events with this ordering key.
pub fn shard_for(key: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

/// The key that orders an event: its topic, or what stands in for one.
pub fn ordering_key(event: &OwnedEvent) -> &str {
    match event {
        OwnedEvent::Mqtt { topic, .. } => topic,
        OwnedEvent::Http { path, .. } => path,
        OwnedEvent::File { path, .. } => path,
        OwnedEvent::Schedule { schedule, .. } => schedule,
        OwnedEvent::KvChange { key, .. } => key,
        OwnedEvent::Invoke { from, .. } => from,
        OwnedEvent::Batch(_) => "",
        // A connection's events run in the order it sent them.
        OwnedEvent::WebSocket { connection_id, .. } => connection_id,
    }
}

/// The way into one function: its shards' bounded queues. Events with one
/// ordering key go to one shard, so they run in arrival order.
#[derive(Debug, Clone)]
pub struct Intake {
    shards: Vec<mpsc::Sender<Job>>,
    /// Jobs sent and not yet finished (settled or left), for a clean shutdown.
    pub in_flight: Arc<AtomicUsize>,
    /// Where a full queue is counted (`throttled`).
    metrics: Arc<FunctionMetrics>,
    /// The trigger whose events this intake takes, counted by it too: a
    /// source takes its intake through [`Intake::for_trigger`].
    trigger: Option<Arc<TriggerMetrics>>,
}

impl Intake {
    /// The function's counters.
    pub fn metrics(&self) -> &FunctionMetrics {
        &self.metrics
    }

    /// Its trigger's counters, if it is one trigger's way in.
    pub fn trigger(&self) -> Option<&TriggerMetrics> {
        self.trigger.as_deref()
    }

    pub(crate) fn trigger_arc(&self) -> Option<Arc<TriggerMetrics>> {
        self.trigger.clone()
    }

    pub fn new(
        shards: Vec<mpsc::Sender<Job>>,
        in_flight: Arc<AtomicUsize>,
        metrics: Arc<FunctionMetrics>,
    ) -> Intake {
        Intake {
            shards,
            in_flight,
            metrics,
            trigger: None,
        }
    }

    /// The same way in, for the trigger `label` (`TriggerConfig::label`):
    /// what it takes is counted for that trigger as well.
    pub fn for_trigger(&self, label: &str) -> Intake {
        Intake {
            trigger: Some(self.metrics.triggers.get(label)),
            ..self.clone()
        }
    }

    /// The same way in, counted for no trigger (an event whose trigger
    /// counted it already: an HTTP request queued with `invocation = "event"`).
    pub fn untriggered(self) -> Intake {
        Intake {
            trigger: None,
            ..self
        }
    }

    fn count_in(&self, n: u64) {
        self.metrics.received.fetch_add(n, Ordering::Relaxed);
        if let Some(trigger) = &self.trigger {
            trigger.events.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn shard(&self, event: &OwnedEvent) -> &mpsc::Sender<Job> {
        &self.shards[shard_for(ordering_key(event), self.shards.len())]
    }

    /// Waits for room: the source stops taking while a shard is full, and
    /// whatever holds its events keeps them; each job that has to wait is
    /// counted as throttled. `false` if the workers are gone.
    #[must_use]
    pub async fn send(&self, job: Job) -> bool {
        self.count_in(1);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.metrics.queued.fetch_add(1, Ordering::Relaxed);
        let shard = self.shard(&job.event).clone();
        let job = match shard.try_send(job) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(job)) => return self.refused(job),
            Err(mpsc::error::TrySendError::Full(job)) => job,
        };
        inc(&self.metrics.throttled);
        match shard.send(job).await {
            Ok(()) => true,
            Err(mpsc::error::SendError(job)) => self.refused(job),
        }
    }

    /// Offers events a source gathered into one batch itself (a change
    /// stream's), to the shard `key` hashes to; each is counted as `send`
    /// counts one. `false` if the workers are gone (each event then stays
    /// with its source).
    pub async fn send_batch(&self, key: &str, items: Vec<Job>) -> bool {
        let n = items.len();
        self.count_in(n as u64);
        self.in_flight.fetch_add(n, Ordering::SeqCst);
        self.metrics.queued.fetch_add(n as i64, Ordering::Relaxed);
        let shard = self.shards[shard_for(key, self.shards.len())].clone();
        match shard.send(batch::batch(items)).await {
            Ok(()) => true,
            Err(mpsc::error::SendError(job)) => {
                self.metrics.queued.fetch_sub(n as i64, Ordering::Relaxed);
                job.settle.resolve(false);
                self.in_flight.fetch_sub(n, Ordering::SeqCst);
                false
            }
        }
    }

    /// Takes the job only if its shard has room now: for a source whose
    /// caller can hold the event and come back (an HTTP client gets 429).
    pub fn try_send(&self, job: Job) -> Result<(), Refused> {
        let shard = self.shard(&job.event).clone();
        self.count_in(1);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.metrics.queued.fetch_add(1, Ordering::Relaxed);
        match shard.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => {
                inc(&self.metrics.throttled);
                self.refused(job);
                Err(Refused::Full)
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                self.refused(job);
                Err(Refused::Closed)
            }
        }
    }

    /// The workers are gone (shutting down): the event stays with its source.
    fn refused(&self, job: Job) -> bool {
        self.metrics.queued.fetch_sub(1, Ordering::Relaxed);
        job.settle.resolve(false);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_topic_always_lands_on_one_shard() {
        for topic in ["a/b", "vending/vm-1/telemetry", ""] {
            let first = shard_for(topic, 4);
            assert!(first < 4);
            assert!((0..10).all(|_| shard_for(topic, 4) == first));
        }
        assert_eq!(shard_for("anything", 1), 0);
        assert_eq!(shard_for("anything", 0), 0);
    }

    #[test]
    fn many_topics_spread_over_the_shards() {
        let mut counts = [0usize; 4];
        for i in 0..1_000 {
            counts[shard_for(&format!("vending/vm-{i}/telemetry"), 4)] += 1;
        }
        assert!(counts.iter().all(|&n| n > 150), "{counts:?}");
    }

    #[test]
    fn a_job_the_workers_cannot_take_stays_with_its_source() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let intake = Intake::new(
            vec![tx],
            Arc::new(AtomicUsize::new(0)),
            Arc::new(FunctionMetrics::default()),
        );
        let (tick, mut told) = Advance::new(Cursor::Schedule {
            function: "f".into(),
            schedule: "every-minute".into(),
            scheduled_ms: 60_000,
        });
        let job = Job {
            event: OwnedEvent::Schedule {
                schedule: "every-minute".into(),
                scheduled_ms: 60_000,
                fired_ms: 60_000,
                catch_up: false,
            },
            arrived: Instant::now(),
            settle: Settle::Advance(tick),
            dedup: None,
            trace: None,
        };
        let sent = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(intake.send(job));
        assert!(!sent);
        assert_eq!(intake.in_flight.load(Ordering::SeqCst), 0);
        assert_eq!(told.try_recv(), Ok(false), "the tick is due again");
    }
}

//! Per-function bounded queues and the worker threads that run invocations.
//!
//! A function with `concurrency = n` gets `n` shards, each a bounded queue
//! served by one OS thread. An event goes to the shard its topic hashes to,
//! so events on one topic are handled in arrival order while different
//! topics run in parallel. Invocations are CPU-bound wasmi calls and never
//! run on the async reactor.
//!
//! A failed invocation is retried by its worker, in place, after a backoff
//! (see [`RetryPolicy`]): the events behind it in its shard wait, so order
//! per topic holds even through failures. That is the honest trade: a
//! failing event holds up its topic (and the others hashed to its shard)
//! for at most its attempts and backoffs; then it is written to the
//! dead-letter queue, acknowledged once that write is durable, and the
//! stream moves on. Other functions never wait for it: each has its own
//! shards, threads and MQTT session. A shutdown cuts a backoff short and
//! leaves that event unacknowledged, for the broker to redeliver.

use super::ingress::AckHandle;
use super::retry::{Jitter, RetryPolicy, Stop};
use crate::event::OwnedEvent;
use crate::metrics::{inc, FunctionMetrics};
use crate::runtime::{Function, KvRead};
use crate::store::{Attempt, Commit, NewDeadLetter, OutboxDestination, Seen, Store};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::mpsc;
use wasmgate_abi::LogLevel;

/// Virtual size of a worker thread's stack; untouched pages cost no memory.
const WORKER_STACK_BYTES: usize = 8 << 20;

/// One event on its way to one function.
#[derive(Debug)]
pub struct Job {
    pub event: OwnedEvent,
    /// When the gateway received it; latency is measured from here.
    pub arrived: Instant,
    /// What to acknowledge once the job's effects are durable; `None` for
    /// QoS 0 messages.
    pub ack: Option<Ack>,
    /// The device-provided message id, when the trigger has a `dedup_key`
    /// or a `dedup_property`.
    pub dedup: Option<String>,
}

/// Where a job came from, to be told it is done.
#[derive(Debug)]
pub enum Ack {
    /// An MQTT message: PUBACK it.
    Mqtt(AckHandle),
    /// A fan-out invoke waiting in the outbox: its row is deleted in the
    /// transaction that commits the invocation (or its dead letter).
    Outbox { id: i64 },
}

impl Ack {
    /// Returns whether an acknowledgement was given.
    fn ack(self) -> bool {
        match self {
            Ack::Mqtt(handle) => handle.ack(),
            // Settled already, in the commit itself.
            Ack::Outbox { .. } => true,
        }
    }

    /// The outbox row this event consumes, if it came from one.
    fn outbox_row(&self) -> Option<i64> {
        match self {
            Ack::Outbox { id } => Some(*id),
            Ack::Mqtt(_) => None,
        }
    }
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
    }
}

/// The sending side of one function's shards.
#[derive(Debug, Clone)]
pub struct Queues {
    shards: Vec<mpsc::Sender<Job>>,
    /// Jobs enqueued and not yet finished (acked or failed), for a clean shutdown.
    pub in_flight: Arc<AtomicUsize>,
    /// Where a full queue is counted (`throttled`).
    metrics: Arc<FunctionMetrics>,
}

impl Queues {
    fn shard(&self, event: &OwnedEvent) -> &mpsc::Sender<Job> {
        &self.shards[shard_for(ordering_key(event), self.shards.len())]
    }

    /// Waits for room: the caller (ingress) stops reading while a shard is
    /// full, and the broker holds what comes next; each job that has to
    /// wait is counted as throttled. `false` if the workers are gone.
    #[must_use]
    pub async fn send(&self, job: Job) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let shard = self.shard(&job.event).clone();
        let job = match shard.try_send(job) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return self.queued(false),
            Err(mpsc::error::TrySendError::Full(job)) => job,
        };
        inc(&self.metrics.throttled);
        self.queued(shard.send(job).await.is_ok())
    }

    fn queued(&self, ok: bool) -> bool {
        if !ok {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        ok
    }
}

/// Where a worker hands a successful invocation's effects.
#[derive(Debug)]
pub struct Sinks {
    pub store: Store,
    /// Every function's queues by name, for fan-out invokes. Filled once all
    /// exist, and emptied at shutdown: the invoke drainer holds `Sinks`, so
    /// queues kept here would otherwise keep every worker waiting forever.
    pub functions: RwLock<HashMap<String, Queues>>,
}

impl Sinks {
    fn queues(&self, function: &str) -> Option<Queues> {
        self.functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(function)
            .cloned()
    }

    pub fn set_functions(&self, functions: HashMap<String, Queues>) {
        *self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner) = functions;
    }
}

/// What happens to a function's failed invocations.
#[derive(Debug, Clone, Default)]
pub struct FailurePolicy {
    pub retry: RetryPolicy,
    /// Dead letters kept for the function (the oldest go first).
    pub keep: u32,
    /// Also publish dead letters to this local topic.
    pub topic: Option<String>,
}

/// A deployed function with its queues and workers.
#[derive(Debug)]
pub struct Dispatcher {
    pub function: Arc<Function>,
    pub queues: Queues,
    pub metrics: Arc<FunctionMetrics>,
    workers: Vec<JoinHandle<()>>,
}

impl Dispatcher {
    /// Starts `concurrency` worker threads, each behind a queue of
    /// `queue / concurrency` (at least 1) jobs. `stop` cuts backoffs short
    /// at shutdown.
    pub fn start(
        function: Arc<Function>,
        concurrency: usize,
        queue: usize,
        sinks: Arc<Sinks>,
        metrics: Arc<FunctionMetrics>,
        failures: FailurePolicy,
        stop: Arc<Stop>,
    ) -> std::io::Result<Self> {
        let concurrency = concurrency.max(1);
        let per_shard = (queue / concurrency).max(1);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let request_ids = Arc::new(AtomicU64::new(1));
        let mut shards = Vec::with_capacity(concurrency);
        let mut workers = Vec::with_capacity(concurrency);
        for shard in 0..concurrency {
            let (tx, rx) = mpsc::channel(per_shard);
            shards.push(tx);
            let worker = Worker {
                function: function.clone(),
                kv: Arc::new(sinks.store.clone()),
                sinks: sinks.clone(),
                metrics: metrics.clone(),
                in_flight: in_flight.clone(),
                request_ids: request_ids.clone(),
                failures: failures.clone(),
                stop: stop.clone(),
                jitter: Jitter::new(
                    (shard as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        ^ crate::dlq::now_ms() as u64,
                ),
            };
            workers.push(
                std::thread::Builder::new()
                    .name(format!("fn-{}-{shard}", function.name()))
                    // wasmi's Wasm stack is on the heap, but compiling a
                    // function on first call recurses natively; 2 MiB was
                    // seen to overflow on unoptimised builds.
                    .stack_size(WORKER_STACK_BYTES)
                    .spawn(move || worker.run(rx))?,
            );
        }
        Ok(Dispatcher {
            function,
            queues: Queues {
                shards,
                in_flight,
                metrics: metrics.clone(),
            },
            metrics,
            workers,
        })
    }

    /// Waits for the worker threads; they end once every sender is gone.
    pub fn join(self) {
        let name = self.function.name().to_owned();
        drop(self.queues);
        for worker in self.workers {
            if worker.join().is_err() {
                tracing::error!(function = %name, "worker thread panicked");
            }
        }
    }
}

struct Worker {
    function: Arc<Function>,
    kv: Arc<dyn KvRead>,
    sinks: Arc<Sinks>,
    metrics: Arc<FunctionMetrics>,
    in_flight: Arc<AtomicUsize>,
    request_ids: Arc<AtomicU64>,
    failures: FailurePolicy,
    stop: Arc<Stop>,
    jitter: Jitter,
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.blocking_recv() {
            self.handle(job);
        }
    }

    /// Runs one job, retrying it as its policy says. A success is handed to
    /// the store and finished (acked, counted) when its transaction commits;
    /// the worker does not wait for that, so one fsync serves many
    /// invocations. An event that fails its last attempt is finished the same
    /// way once its dead letter commits.
    fn handle(&mut self, job: Job) {
        let f = self.function.clone();
        let settles = job.ack.as_ref().and_then(Ack::outbox_row);
        let done = Done {
            metrics: self.metrics.clone(),
            in_flight: self.in_flight.clone(),
            ack: job.ack,
            arrived: job.arrived,
        };
        let done = match &job.dedup {
            Some(id) => match self.check_dedup(id, done) {
                Some(done) => done,
                None => return,
            },
            None => done,
        };
        let request_id = self.request_ids.fetch_add(1, Ordering::Relaxed);
        let event = job.event.as_event();
        let topic = ordering_key(&job.event);
        let mut attempts = Vec::new();
        let mut attempt = 1;
        loop {
            let report = f.invoke(request_id, attempt, &event, Some(self.kv.clone()));
            for line in &report.logs {
                log_guest_line(&f, request_id, topic, line.level, &line.message);
            }
            // An output the function meant to send is lost: an error.
            for reason in &report.refused {
                tracing::error!(
                    function = f.name(),
                    version = f.version(),
                    request_id,
                    trigger = topic,
                    "{reason}"
                );
            }
            if report.refused_count > report.refused.len() {
                tracing::warn!(
                    function = f.name(),
                    more = report.refused_count - report.refused.len(),
                    "more emits or invokes refused in this invocation"
                );
            }
            self.metrics
                .refused
                .fetch_add(report.refused_count as u64, Ordering::Relaxed);
            let error = match report.outcome {
                Ok(effects) => {
                    inc(&self.metrics.succeeded);
                    self.metrics
                        .emitted
                        .fetch_add(effects.emits.len() as u64, Ordering::Relaxed);
                    self.sinks.store.submit(Commit {
                        function: f.name().to_owned(),
                        effects,
                        dedup: job.dedup,
                        settles,
                        done: Box::new(move |committed| done.finish(committed.is_ok())),
                    });
                    return;
                }
                Err(error) => error,
            };
            inc(&self.metrics.failed);
            attempts.push(Attempt {
                attempt,
                at_ms: crate::dlq::now_ms(),
                kind: error.kind().to_owned(),
                error: error.to_string(),
                version: f.version().to_owned(),
                logs: crate::dlq::attempt_logs(&report.logs),
            });
            if !self.failures.retry.retries(error.failure(), attempt) {
                tracing::warn!(
                    function = f.name(),
                    version = f.version(),
                    request_id,
                    kind = error.kind(),
                    topic,
                    attempts = attempt,
                    "invocation failed: {error}; the event goes to the dead-letter queue"
                );
                break;
            }
            let delay = self.failures.retry.delay(attempt, self.jitter.next());
            tracing::debug!(
                function = f.name(),
                version = f.version(),
                kind = error.kind(),
                topic,
                attempt,
                retry_in = ?delay,
                "attempt failed; retrying: {error}"
            );
            if !self.stop.sleep(delay) {
                tracing::info!(
                    function = f.name(),
                    topic,
                    attempt,
                    "shutting down between attempts; the message stays unacknowledged for redelivery"
                );
                done.finish(false);
                return;
            }
            inc(&self.metrics.retries);
            attempt += 1;
        }
        self.dead_letter(
            job.event.as_event(),
            topic,
            request_id,
            (job.dedup, settles),
            attempts,
            done,
        );
    }

    /// Looks up a message's dedup id; gives `done` back if the message is
    /// to run. A copy of a message already committed is acknowledged now;
    /// a copy of one still committing is acknowledged when that commit
    /// lands, and never before (the process could die in between, and the
    /// copy is then what the broker redelivers). A read that fails (a
    /// locked or failing disk) is retried, as commits are: giving up would
    /// leave the message unacknowledged in the middle of its session's
    /// acks, holding up every ack behind it.
    fn check_dedup(&mut self, id: &str, done: Done) -> Option<Done> {
        let f = self.function.clone();
        let mut done = Some(done);
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            let wait = || -> crate::store::PendingWaiter {
                let copy = done.take();
                Box::new(move |committed| {
                    if let Some(copy) = copy {
                        copy.finish(committed);
                    }
                })
            };
            match self.sinks.store.seen(f.name(), id, wait) {
                Ok(Seen::New) => return done,
                Ok(Seen::Committed) => {
                    // A redelivery after a crash, or a device resending.
                    inc(&self.metrics.duplicates);
                    if let Some(done) = done {
                        done.finish(true);
                    }
                    return None;
                }
                Ok(Seen::Pending) => {
                    inc(&self.metrics.duplicates);
                    return None;
                }
                Err(e) => {
                    tracing::error!(function = f.name(), error = %e, retry_in = ?delay, "cannot check the dedup id; retrying (the message stays unacknowledged meanwhile)");
                    if !self.stop.sleep(delay) {
                        if let Some(done) = done {
                            done.finish(false);
                        }
                        return None;
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    /// Hands an event that failed for good to the dead-letter queue; its
    /// message is acknowledged once the dead letter is durable, and only then.
    fn dead_letter(
        &self,
        event: wasmgate_abi::Event<'_>,
        topic: &str,
        request_id: u64,
        (dedup, settles): (Option<String>, Option<i64>),
        attempts: Vec<Attempt>,
        done: Done,
    ) {
        let f = &self.function;
        let received_ms = crate::dlq::now_ms() - done.arrived.elapsed().as_millis() as i64;
        let letter = NewDeadLetter {
            function: f.name().to_owned(),
            request_id,
            version: f.version().to_owned(),
            topic: topic.to_owned(),
            event_kind: event.kind().to_owned(),
            event: crate::dlq::encode_event(&event),
            dedup,
            attempts,
            received_ms,
            keep: self.failures.keep,
            publish_to: self.failures.topic.clone(),
            settles,
        };
        let metrics = self.metrics.clone();
        let (function, topic) = (f.name().to_owned(), topic.to_owned());
        self.sinks.store.dead_letter(letter, move |result| match result {
            Ok(id) => {
                inc(&metrics.dead_letters);
                tracing::warn!(id, function, topic, "event moved to the dead-letter queue (`wasmgate dlq show {id}`)");
                done.finish(true);
            }
            Err(e) => {
                tracing::error!(function, topic, error = %e, "cannot write the dead letter; the message stays unacknowledged");
                done.finish(false);
            }
        });
    }
}

/// What is left to do for a job once its outcome is settled.
struct Done {
    metrics: Arc<FunctionMetrics>,
    in_flight: Arc<AtomicUsize>,
    ack: Option<Ack>,
    arrived: Instant,
}

impl Done {
    /// `acknowledge = false` leaves the message for the broker to redeliver.
    fn finish(self, acknowledge: bool) {
        self.metrics.latency.record(self.arrived.elapsed());
        if acknowledge {
            if let Some(ack) = self.ack {
                if ack.ack() {
                    inc(&self.metrics.acked);
                }
            }
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Feeds fan-out invokes from the outbox into their functions' queues; each
/// row is deleted once the invocation it started has committed.
pub async fn drain_invokes(sinks: Arc<Sinks>, wake: Arc<tokio::sync::Notify>) {
    let mut last = 0;
    loop {
        let store = sinks.store.clone();
        let rows = tokio::task::spawn_blocking(move || {
            store.outbox_after(OutboxDestination::Invoke, last, 64)
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
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
            continue;
        }
        for row in rows {
            last = row.id;
            let Some(queues) = sinks.queues(&row.topic) else {
                tracing::warn!(function = %row.function, target = %row.topic, "invoke of a function that is not deployed; dropped");
                sinks.store.delete_outbox(vec![row.id]);
                continue;
            };
            let job = Job {
                event: OwnedEvent::Invoke {
                    from: row.function,
                    payload: row.payload,
                },
                arrived: Instant::now(),
                ack: Some(Ack::Outbox { id: row.id }),
                dedup: None,
            };
            if !queues.send(job).await {
                return;
            }
        }
    }
}

/// A function's log line, with what finds it again in a log shipper: the
/// function, its version, the request id (also in its dead letter) and the
/// trigger that started it (the MQTT topic, or the name of the function
/// that invoked it).
fn log_guest_line(f: &Function, request_id: u64, trigger: &str, level: LogLevel, message: &str) {
    let (name, version) = (f.name(), f.version());
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(target: "wasmgate::guest", function = name, version, request_id, trigger, "{message}")
        };
    }
    match level {
        LogLevel::Error => line!(error),
        LogLevel::Warn => line!(warn),
        LogLevel::Info => line!(info),
        LogLevel::Debug => line!(debug),
        LogLevel::Trace => line!(trace),
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
}

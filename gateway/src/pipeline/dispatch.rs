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

use super::log_gate::LogGate;
use super::retry::{Jitter, RetryPolicy, Stop};
use crate::event::OwnedEvent;
use crate::metrics::{inc, FunctionMetrics};
use crate::runtime::{Function, KvRead};
use crate::store::{Attempt, Commit, Cursor, NewDeadLetter, Seen, Store};
use crate::trace::TraceContext;
use crate::triggers::http::Answer;
use crate::triggers::{ordering_key, Intake, Job, Settle};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::mpsc;
use wasmgate_abi::LogLevel;

/// Virtual size of a worker thread's stack; untouched pages cost no memory.
const WORKER_STACK_BYTES: usize = 8 << 20;

/// Where a worker hands a successful invocation's effects.
#[derive(Debug)]
pub struct Sinks {
    pub store: Store,
    /// Open WebSocket connections: where a committed invocation's posts go.
    pub connections: Arc<crate::triggers::websocket::Connections>,
    /// The next request id, for every function: an id names one invocation
    /// on this gateway, across restarts too (`Store::first_request_id`).
    pub request_ids: Arc<AtomicU64>,
    /// Log lines a second each function may keep (`logs.rate`; 0: all).
    pub log_rate: u32,
    /// `[tracing]` is on: each invocation is a span.
    pub tracing: bool,
}

impl Sinks {
    /// A commit's `done` that first sends the invocation's posts, if the
    /// commit is durable (a failed one sends nothing, as it emits nothing).
    fn posting(
        &self,
        function: &str,
        posts: Vec<crate::runtime::Post>,
        then: impl FnOnce(bool) + Send + 'static,
    ) -> Box<dyn FnOnce(Result<(), crate::store::StoreError>) + Send> {
        if posts.is_empty() {
            return Box::new(move |committed| then(committed.is_ok()));
        }
        let (connections, function) = (self.connections.clone(), function.to_owned());
        Box::new(move |committed| {
            if committed.is_ok() {
                connections.deliver(&function, posts);
            }
            then(committed.is_ok());
        })
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
    /// The version its triggers run: moved by a deploy.
    pub live: Arc<crate::registry::Live>,
    pub intake: Intake,
    pub metrics: Arc<FunctionMetrics>,
    workers: Vec<JoinHandle<()>>,
}

impl Dispatcher {
    /// Starts `concurrency` worker threads, each behind a queue of
    /// `queue / concurrency` (at least 1) jobs. `stop` cuts backoffs short
    /// at shutdown.
    pub fn start(
        live: Arc<crate::registry::Live>,
        concurrency: usize,
        queue: usize,
        sinks: Arc<Sinks>,
        metrics: Arc<FunctionMetrics>,
        failures: FailurePolicy,
        stop: Arc<Stop>,
    ) -> std::io::Result<Self> {
        let concurrency = concurrency.max(1);
        let per_shard = (queue / concurrency).max(1);
        let function = live.current();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let log_gate = Arc::new(LogGate::new(sinks.log_rate));
        let mut shards = Vec::with_capacity(concurrency);
        let mut workers = Vec::with_capacity(concurrency);
        for shard in 0..concurrency {
            let (tx, rx) = mpsc::channel(per_shard);
            shards.push(tx);
            let worker = Worker {
                function: function.clone(),
                live: live.clone(),
                kv: Arc::new(sinks.store.clone()),
                sinks: sinks.clone(),
                metrics: metrics.clone(),
                in_flight: in_flight.clone(),
                request_ids: sinks.request_ids.clone(),
                log_gate: log_gate.clone(),
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
            live,
            intake: Intake::new(shards, in_flight, metrics.clone()),
            metrics,
            workers,
        })
    }

    /// Waits for the worker threads; they end once every sender is gone.
    pub fn join(self) {
        let name = self.live.current().name().to_owned();
        drop(self.intake);
        for worker in self.workers {
            if worker.join().is_err() {
                tracing::error!(function = %name, "worker thread panicked");
            }
        }
    }
}

struct Worker {
    /// The version this event runs on: `live`'s, read as each event starts,
    /// so one in flight finishes on the version it began with.
    function: Arc<Function>,
    live: Arc<crate::registry::Live>,
    kv: Arc<dyn KvRead>,
    sinks: Arc<Sinks>,
    metrics: Arc<FunctionMetrics>,
    in_flight: Arc<AtomicUsize>,
    request_ids: Arc<AtomicU64>,
    log_gate: Arc<LogGate>,
    failures: FailurePolicy,
    stop: Arc<Stop>,
    jitter: Jitter,
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.blocking_recv() {
            // A batch job holds several events, each counted as it came.
            let events = match &job.settle {
                Settle::Batch(items) => items.len(),
                _ => 1,
            };
            self.metrics
                .queued
                .fetch_sub(events as i64, Ordering::Relaxed);
            self.handle(job);
        }
    }

    /// Runs one job, retrying it as its policy says. A success is handed to
    /// the store and finished (acked, counted) when its transaction commits;
    /// the worker does not wait for that, so one fsync serves many
    /// invocations. An event that fails its last attempt is finished the same
    /// way once its dead letter commits.
    fn handle(&mut self, mut job: Job) {
        // `self.function` is the last event's version until the pick below:
        // the dedup check needs only its name, which every version shares.
        let settle = match job.settle {
            Settle::Batch(items) => return self.handle_batch(items),
            settle => settle,
        };
        let settles = settle.cursor();
        let done = self.done(settle, job.arrived);
        let done = match &job.dedup {
            Some(id) => match self.check_dedup(id, done) {
                Some(done) => done,
                None => return,
            },
            None => done,
        };
        let request_id = self.request_ids.fetch_add(1, Ordering::Relaxed);
        // Which version: by the event's dedup id, else its request id, so
        // its retries (and its redeliveries, with an id) run on one version.
        let key = job
            .dedup
            .as_deref()
            .map_or(request_id, crate::registry::key_of);
        self.function = self.live.pick(key);
        let f = self.function.clone();
        let event = job.event.as_event();
        let topic = ordering_key(&job.event);
        let mut span = self.sinks.tracing.then(|| {
            let parent = job
                .trace
                .take()
                .or_else(|| TraceContext::from_event(&job.event));
            Traced::start(&self.sinks.store, &f, request_id, &job.event, parent)
        });
        let mut attempts = Vec::new();
        let mut attempt = 1;
        loop {
            let report = f.invoke(request_id, attempt, &event, Some(self.kv.clone()));
            self.log_report(request_id, topic, &report);
            let error = match report.outcome {
                Ok(mut effects) => {
                    inc(&self.metrics.succeeded);
                    let custom = self.custom_updates(report.metrics);
                    self.metrics
                        .emitted
                        .fetch_add(effects.emits.len() as u64, Ordering::Relaxed);
                    let mut done = done;
                    done.settle.tell(Answer::Ran {
                        request_id,
                        response: effects.response.take(),
                        trace: span.as_ref().map(Traced::traceparent),
                    });
                    if let Some(span) = &mut span {
                        span.attempts = attempt;
                    }
                    let posts = std::mem::take(&mut effects.posts);
                    // A client holding its connection for the answer.
                    let waited_for = matches!(done.settle, Settle::Http(_));
                    let commit = Commit {
                        function: f.name().to_owned(),
                        effects,
                        dedup: job.dedup.into_iter().collect(),
                        cursors: settles.into_iter().collect(),
                        trace: span.as_ref().map(Traced::stored),
                        done: self.sinks.posting(f.name(), posts, move |durable| {
                            custom(durable);
                            done.finish(durable);
                        }),
                    };
                    if waited_for {
                        self.sinks.store.submit_urgent(commit);
                    } else {
                        self.sinks.store.submit(commit);
                    }
                    return;
                }
                Err(error) => error,
            };
            self.metrics.fail(error.failure());
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
                request_id,
                kind = error.kind(),
                topic,
                attempt,
                retry_in = ?delay,
                "attempt failed; retrying: {error}"
            );
            if !self.stop.sleep(delay) {
                tracing::info!(
                    function = f.name(),
                    version = f.version(),
                    request_id,
                    topic,
                    attempt,
                    "stopping between attempts; the message stays unacknowledged for redelivery"
                );
                // It runs again after the restart, as a span of its own.
                if let Some(span) = span.take() {
                    span.abandon();
                }
                done.finish(false);
                return;
            }
            inc(&self.metrics.retries);
            attempt += 1;
        }
        if let Some(span) = &mut span {
            span.attempts = attempt;
            span.error = attempts.last().map(|a| format!("{}: {}", a.kind, a.error));
        }
        self.dead_letter(
            job.event.as_event(),
            topic,
            request_id,
            (job.dedup, settles),
            attempts,
            (done, span.as_ref().map(Traced::traceparent)),
        );
    }

    fn done(&self, settle: Settle, arrived: Instant) -> Done {
        Done {
            metrics: self.metrics.clone(),
            in_flight: self.in_flight.clone(),
            settle,
            arrived,
            copies: Vec::new(),
        }
    }

    /// A successful invocation's own metrics (`metric`), applied once its
    /// commit is durable: an invocation whose transaction is lost runs
    /// again on redelivery, and would count twice. The first time the
    /// function's bounds refuse some, a warning says so; after that they
    /// are counted in `/metrics` only.
    fn custom_updates(
        &self,
        updates: Vec<crate::custom_metrics::MetricUpdate>,
    ) -> impl FnOnce(bool) + Send + 'static {
        // Most invocations report none: then nothing is taken along.
        let pending = (!updates.is_empty()).then(|| {
            (
                self.metrics.clone(),
                self.function.name().to_owned(),
                updates,
            )
        });
        move |durable| {
            let Some((metrics, function, updates)) = pending.filter(|_| durable) else {
                return;
            };
            let (refused, before) = metrics.custom.apply(&updates);
            if refused > 0 && before == 0 {
                tracing::warn!(
                    function,
                    refused,
                    max_names = crate::custom_metrics::MAX_NAMES,
                    max_series = crate::custom_metrics::MAX_SERIES,
                    "custom metrics refused: the function has as many names or label sets as it may (a device id in a label?); further refusals are only counted"
                );
            }
        }
    }

    /// What the operator must hear of an attempt: the function's log lines,
    /// and the outputs it meant to send that were refused (lost: an error).
    fn log_report(&self, request_id: u64, topic: &str, report: &crate::runtime::Report) {
        let f = &self.function;
        let admitted = self.log_gate.admit(report.logs.len());
        let kept = &report.logs[..admitted.lines];
        for line in kept {
            log_guest_line(f, request_id, topic, line.level, &line.message);
        }
        self.sinks.store.log(kept.iter().map(|line| {
            crate::store::logs::line(
                f.name(),
                f.version(),
                request_id,
                line.level,
                topic,
                &line.message,
            )
        }));
        self.metrics
            .log_lines
            .fetch_add(kept.len() as u64, Ordering::Relaxed);
        let dropped = report.logs.len() - kept.len() + report.logs_dropped;
        self.metrics
            .log_lines_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        if let Some(n) = admitted.warn {
            tracing::warn!(
                function = f.name(),
                dropped = n,
                "log lines dropped: the function logs faster than logs.rate allows"
            );
        }
        let unlogged = match report.refused_count {
            0 => None,
            _ => self.log_gate.refusals(),
        };
        let Some(unlogged) = unlogged else {
            self.metrics
                .refused
                .fetch_add(report.refused_count as u64, Ordering::Relaxed);
            return;
        };
        if unlogged > 0 {
            tracing::warn!(
                function = f.name(),
                invocations = unlogged,
                "invocations with refused emits, invokes or metric names since the last logged (counted, not logged: at most one a second)"
            );
        }
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
    }

    /// Runs a batch ([`crate::triggers::batch`]) as one invocation, retrying
    /// as a single event is retried. Items the function reports failed
    /// (`item_failed`) are run again as a smaller batch, and at their last
    /// attempt each goes to the dead-letter queue on its own (so `dlq
    /// replay` replays the one event); the others commit with the
    /// invocation's effects, their dedup ids and cursors in that same
    /// transaction, and are settled once it is durable. A failed invocation
    /// fails every item, as in Lambda without `ReportBatchItemFailures`.
    fn handle_batch(&mut self, jobs: Vec<Job>) {
        let mut items: Vec<Item> = Vec::with_capacity(jobs.len());
        for job in jobs {
            let cursor = job.settle.cursor();
            let done = self.done(job.settle, job.arrived);
            // A copy of an item already in this batch (a resend while the
            // first waited in the window): the store has not seen the id
            // yet, so it is caught here, and settled with the first.
            let first = job.dedup.as_ref().and_then(|id| {
                items
                    .iter_mut()
                    .find(|item| item.dedup.as_ref() == Some(id))
            });
            if let Some(first) = first {
                inc(&self.metrics.duplicates);
                first.done.copies.push(done);
                continue;
            }
            let done = match &job.dedup {
                Some(id) => match self.check_dedup(id, done) {
                    Some(done) => done,
                    None => continue,
                },
                None => done,
            };
            items.push(Item {
                event: job.event,
                dedup: job.dedup,
                cursor,
                done,
                attempts: Vec::new(),
            });
        }
        if items.is_empty() {
            return;
        }
        let request_id = self.request_ids.fetch_add(1, Ordering::Relaxed);
        self.function = self.live.pick(request_id);
        let f = self.function.clone();
        // One span for the batch, the child of its first item that brought
        // a context (OTLP span links to the others are not made).
        let mut span = self.sinks.tracing.then(|| {
            let parent = items
                .iter()
                .find_map(|item| TraceContext::from_event(&item.event));
            let batch = OwnedEvent::Batch(Vec::new());
            let mut span = Traced::start(&self.sinks.store, &f, request_id, &batch, parent);
            span.batch = items.len();
            span
        });
        // A change stream's cursor is one position, and the store keeps the
        // highest written: the cursor of an item that ran after one that
        // failed would skip the failed one across a crash. Such cursors wait
        // here, and are written once every item before them is settled.
        let mut deferred: Vec<Cursor> = Vec::new();
        let mut attempt = 1;
        loop {
            let batch = OwnedEvent::batch_of(items.iter().map(|item| &item.event));
            let topic = ordering_key(&items[0].event).to_owned();
            let report = f.invoke(
                request_id,
                attempt,
                &batch.as_event(),
                Some(self.kv.clone()),
            );
            drop(batch);
            self.log_report(request_id, &topic, &report);
            let logs = crate::dlq::attempt_logs(&report.logs);
            let (failure, error) = match report.outcome {
                Ok(mut effects) => {
                    inc(&self.metrics.succeeded);
                    let custom = self.custom_updates(report.metrics);
                    let failed = std::mem::take(&mut effects.failed_items);
                    let (bad, good): (Vec<_>, Vec<_>) = items
                        .into_iter()
                        .enumerate()
                        .partition(|(i, _)| failed.contains(&(*i as u32)));
                    let first_bad = bad.first().map(|(i, _)| *i);
                    items = bad.into_iter().map(|(_, item)| item).collect();
                    let good: Vec<Item> = good
                        .into_iter()
                        .map(|(i, mut item)| {
                            let stream = matches!(item.cursor, Some(Cursor::KvStream { .. }));
                            if stream && first_bad.is_some_and(|bad| i > bad) {
                                deferred.extend(item.cursor.take());
                            }
                            item
                        })
                        .collect();
                    // Once nothing is left to retry, every cursor can go.
                    let settled = if items.is_empty() {
                        std::mem::take(&mut deferred)
                    } else {
                        Vec::new()
                    };
                    if good.is_empty() {
                        // Every item failed: as a failed invocation, its
                        // effects are not kept (a retry would repeat them).
                        tracing::debug!(
                            function = f.name(),
                            request_id,
                            "every item of the batch failed; its effects are dropped"
                        );
                    } else {
                        let trace = span.as_ref().map(Traced::stored);
                        self.commit_items(request_id, effects, good, settled, trace, custom);
                    }
                    if items.is_empty() {
                        return;
                    }
                    (
                        crate::runtime::FailureKind::Failed,
                        "the function reported this item of its batch failed (item_failed)"
                            .to_owned(),
                    )
                }
                Err(error) => {
                    self.metrics.fail(error.failure());
                    (error.failure(), error.to_string())
                }
            };
            for item in &mut items {
                item.attempts.push(Attempt {
                    attempt,
                    at_ms: crate::dlq::now_ms(),
                    kind: failure.as_str().to_owned(),
                    error: error.clone(),
                    version: f.version().to_owned(),
                    logs: logs.clone(),
                });
            }
            if !self.failures.retry.retries(failure, attempt) {
                tracing::warn!(
                    function = f.name(),
                    version = f.version(),
                    request_id,
                    kind = failure.as_str(),
                    items = items.len(),
                    attempts = attempt,
                    "batch items failed: {error}; each goes to the dead-letter queue"
                );
                if let Some(span) = &mut span {
                    span.attempts = attempt;
                    span.error = Some(format!("{}: {error}", failure.as_str()));
                }
                for item in items {
                    let topic = ordering_key(&item.event).to_owned();
                    self.dead_letter(
                        item.event.as_event(),
                        &topic,
                        request_id,
                        (item.dedup, item.cursor),
                        item.attempts,
                        (item.done, span.as_ref().map(Traced::traceparent)),
                    );
                }
                if !deferred.is_empty() {
                    // After the dead letters: the store keeps the order.
                    self.sinks.store.submit(Commit {
                        function: f.name().to_owned(),
                        effects: crate::runtime::Effects::default(),
                        dedup: Vec::new(),
                        cursors: deferred,
                        trace: None,
                        done: Box::new(|_| {}),
                    });
                }
                return;
            }
            let delay = self.failures.retry.delay(attempt, self.jitter.next());
            tracing::debug!(
                function = f.name(),
                kind = failure.as_str(),
                items = items.len(),
                attempt,
                retry_in = ?delay,
                "batch attempt failed; retrying its failed items: {error}"
            );
            if !self.stop.sleep(delay) {
                for item in items {
                    item.done.finish(false);
                }
                return;
            }
            inc(&self.metrics.retries);
            attempt += 1;
        }
    }

    /// Commits a batch's effects with the items that did not fail; each is
    /// settled once that transaction is durable.
    fn commit_items(
        &self,
        request_id: u64,
        mut effects: crate::runtime::Effects,
        items: Vec<Item>,
        settled: Vec<Cursor>,
        trace: Option<String>,
        custom: impl FnOnce(bool) + Send + 'static,
    ) {
        self.metrics
            .emitted
            .fetch_add(effects.emits.len() as u64, Ordering::Relaxed);
        let dedup = items.iter().filter_map(|item| item.dedup.clone()).collect();
        let cursors = items
            .iter()
            .filter_map(|item| item.cursor.clone())
            .chain(settled)
            .collect();
        let dones: Vec<Done> = items
            .into_iter()
            .map(|mut item| {
                item.done.settle.tell(Answer::Ran {
                    request_id,
                    response: None,
                    trace: None,
                });
                item.done
            })
            .collect();
        let posts = std::mem::take(&mut effects.posts);
        self.sinks.store.submit(Commit {
            function: self.function.name().to_owned(),
            effects,
            dedup,
            cursors,
            trace,
            done: self
                .sinks
                .posting(self.function.name(), posts, move |durable| {
                    custom(durable);
                    for done in dones {
                        done.finish(durable);
                    }
                }),
        });
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
        (dedup, settles): (Option<String>, Option<Cursor>),
        attempts: Vec<Attempt>,
        (done, trace): (Done, Option<String>),
    ) {
        let f = &self.function;
        f.usage().dead_letters.fetch_add(1, Ordering::Relaxed);
        let mut done = done;
        if let Some(last) = attempts.last() {
            if let Some(failure) = crate::runtime::FailureKind::parse(&last.kind) {
                done.settle.tell(Answer::Failed {
                    request_id,
                    failure,
                    trace,
                });
            }
        }
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
            cursor: settles,
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

/// One event of a batch, until it is committed or dead-lettered.
struct Item {
    event: OwnedEvent,
    dedup: Option<String>,
    cursor: Option<Cursor>,
    done: Done,
    attempts: Vec<Attempt>,
}

/// What is left to do for a job once its outcome is settled. Only the
/// store's callbacks call [`Done::finish`]: after a commit, a dead letter,
/// or a dedup lookup that found the outcome committed already.
struct Done {
    metrics: Arc<FunctionMetrics>,
    in_flight: Arc<AtomicUsize>,
    settle: Settle,
    arrived: Instant,
    /// Copies of this event (its dedup id) that came in the same batch:
    /// settled with it, never before it is durable, and not run.
    copies: Vec<Done>,
}

impl Done {
    /// `durable = false` leaves the event with its source for the next start.
    fn finish(self, durable: bool) {
        self.metrics.latency.record(self.arrived.elapsed());
        if self.settle.resolve(durable) {
            inc(&self.metrics.acked);
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        for copy in self.copies {
            copy.finish(durable);
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

/// An invocation's span while it runs. Dropped, it is finished and handed
/// to the store for the exporter (if its trace is sampled); a span cut
/// short by a shutdown is [`Traced::abandon`]ed, as its event runs again.
struct Traced {
    store: Store,
    context: TraceContext,
    parent: Option<[u8; 8]>,
    kind: crate::trace::SpanKind,
    start_ns: u64,
    /// Its name and version, read when the span ends.
    function: Arc<Function>,
    request_id: u64,
    /// OpenTelemetry's `faas.trigger`: `pubsub`, `http`, `timer`, `datasource`, `other`.
    trigger: &'static str,
    /// What its event came on: a topic, a path, a schedule.
    source: String,
    attempts: u32,
    /// Items, for a batch.
    batch: usize,
    error: Option<String>,
}

impl Traced {
    fn start(
        store: &Store,
        f: &Arc<Function>,
        request_id: u64,
        event: &OwnedEvent,
        parent: Option<TraceContext>,
    ) -> Traced {
        let (context, parent) = match parent {
            Some(parent) => (parent.child(), Some(parent.span_id)),
            None => (TraceContext::root(), None),
        };
        let trigger = match event {
            OwnedEvent::Mqtt { .. } | OwnedEvent::Invoke { .. } | OwnedEvent::Batch(_) => "pubsub",
            OwnedEvent::Http { .. } | OwnedEvent::WebSocket { .. } => "http",
            OwnedEvent::Schedule { .. } => "timer",
            OwnedEvent::File { .. } | OwnedEvent::KvChange { .. } => "datasource",
        };
        Traced {
            store: store.clone(),
            context,
            parent,
            kind: crate::trace::SpanKind::of(event),
            start_ns: crate::trace::unix_nanos(),
            function: f.clone(),
            request_id,
            trigger,
            source: ordering_key(event).to_owned(),
            attempts: 1,
            batch: 0,
            error: None,
        }
    }

    fn traceparent(&self) -> String {
        self.context.traceparent()
    }

    fn stored(&self) -> String {
        self.context.stored()
    }

    fn abandon(mut self) {
        self.context.sampled = false;
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        use crate::trace::{Span, Value};
        if !self.context.sampled {
            return;
        }
        let request_id = self.request_id.to_string();
        let f = &self.function;
        let attributes = [
            ("faas.invocation_id", Value::Str(&request_id)),
            ("faas.trigger", Value::Str(self.trigger)),
            ("faas.name", Value::Str(f.name())),
            ("faas.version", Value::Str(f.version())),
            ("wasmgate.source", Value::Str(&self.source)),
            ("wasmgate.attempts", Value::Int(i64::from(self.attempts))),
            ("wasmgate.batch.size", Value::Int(self.batch as i64)),
        ];
        // The batch size only for a batch.
        let kept = if self.batch > 0 { 7 } else { 6 };
        let span = Span {
            context: &self.context,
            parent: self.parent,
            name: f.name(),
            kind: self.kind,
            start_ns: self.start_ns,
            end_ns: crate::trace::unix_nanos(),
            attributes: &attributes[..kept],
            error: self.error.take(),
        };
        self.store.span(span.encode());
    }
}

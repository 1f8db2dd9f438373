//! One function's running parts: its workers, and the trigger sources that
//! feed them (its MQTT session, schedules, file watchers, KV change
//! streams, HTTP routes). The gateway holds one per function, so that
//! `apply` can start, stop or restart a function without touching the
//! others.

use super::dispatch::Dispatcher;
use super::retry::Stop;
use crate::config::{FunctionConfig, TriggerConfig};
use crate::mqtt::Endpoint;
use crate::store::Store;
use crate::triggers::mqtt::{self as ingress, IngressSpec, Session, Trigger};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Each schedule's last settled tick, by (function, schedule).
pub(super) type LastTicks = HashMap<(String, String), i64>;

/// The name of a `kv_change` trigger's cursor: `<function>/<index>`.
fn consumer(function: &str, index: usize) -> String {
    format!("{function}/{index}")
}

/// What every function's triggers are wired to.
pub(super) struct Wiring<'a> {
    pub endpoint: &'a Endpoint,
    pub client_id: &'a str,
    pub store: &'a Store,
    pub last_ticks: &'a LastTicks,
}

/// A function's MQTT session and its tasks.
#[derive(Debug)]
struct Ingress {
    session: Arc<Session>,
    reader: JoinHandle<()>,
    forwarder: JoinHandle<()>,
}

/// One function, running.
#[derive(Debug)]
pub(super) struct Unit {
    pub config: FunctionConfig,
    pub dispatcher: Dispatcher,
    /// Cuts its workers' backoffs short once it drains.
    stop: Arc<Stop>,
    /// True once this function takes no more events (shutdown, or `apply`
    /// removing or restarting it); its sources stop reading, and what they
    /// read after is left at its source (unacknowledged, not moved, due).
    draining: Arc<AtomicBool>,
    ingress: Option<Ingress>,
    /// When its session's subscriptions were last acknowledged.
    subscribed: Option<watch::Receiver<Option<Instant>>>,
    /// Schedules, file watchers and KV change streams.
    tasks: Vec<JoinHandle<()>>,
}

impl Unit {
    pub fn new(config: FunctionConfig, dispatcher: Dispatcher, stop: Arc<Stop>) -> Unit {
        Unit {
            config,
            dispatcher,
            stop,
            draining: Arc::new(AtomicBool::new(false)),
            ingress: None,
            subscribed: None,
            tasks: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Starts every trigger source but HTTP routes (see [`Unit::routes`]).
    /// `unsubscribe`: filters its session had before that it has no more.
    pub fn start_triggers(&mut self, wiring: &Wiring<'_>, unsubscribe: Vec<String>) {
        self.start_session(wiring, unsubscribe);
        let f = &self.config;
        for (i, t) in f.triggers.iter().enumerate() {
            let task = if t.schedule.is_some() {
                self.schedule(wiring, t)
            } else if t.file.is_some() {
                self.file(wiring.store, t)
            } else if t.kv_change.is_some() {
                self.stream(wiring.store, i, t)
            } else {
                None
            };
            self.tasks.extend(task);
        }
    }

    /// The subscriptions' acknowledgement, if it has a session.
    pub fn subscribed(&self) -> Option<watch::Receiver<Option<Instant>>> {
        self.subscribed.clone()
    }

    /// Its `kv_change` triggers' cursors, by name.
    pub fn stream_consumers(config: &FunctionConfig) -> Vec<String> {
        config
            .triggers
            .iter()
            .enumerate()
            .filter(|(_, t)| t.kv_change.is_some())
            .map(|(i, _)| consumer(&config.name, i))
            .collect()
    }

    /// Its MQTT triggers' filters.
    pub fn filters(config: &FunctionConfig) -> Vec<String> {
        config
            .triggers
            .iter()
            .filter_map(TriggerConfig::subscription)
            .collect()
    }

    fn start_session(&mut self, wiring: &Wiring<'_>, unsubscribe: Vec<String>) {
        let f = &self.config;
        let triggers: Vec<Trigger> = f
            .triggers
            .iter()
            .filter_map(|t| {
                Some(Trigger {
                    filter: t.mqtt.clone()?,
                    qos: t.qos,
                    dedup: match (&t.dedup_key, &t.dedup_property) {
                        (Some(key), _) => Some(ingress::Dedup::JsonField(key.clone())),
                        (None, Some(name)) => Some(ingress::Dedup::Property(name.clone())),
                        (None, None) => None,
                    },
                    batch: t.batch.map(Into::into),
                    drop_qos0: t.qos0_when_full == Some(crate::config::Qos0WhenFull::Drop),
                    share: t.share.clone(),
                })
            })
            .collect();
        // A function run only by schedules needs no session.
        if triggers.is_empty() {
            return;
        }
        let spec = IngressSpec {
            function: f.name.clone(),
            client_id: format!("{}-{}", wiring.client_id, f.name),
            triggers,
            queue: f.limits.queue as usize,
            unsubscribe,
        };
        let started = ingress::start(
            wiring.endpoint,
            spec,
            self.dispatcher.intake.clone(),
            self.dispatcher.metrics.clone(),
            self.draining.clone(),
        );
        self.subscribed = Some(started.subscribed);
        self.ingress = Some(Ingress {
            session: started.session,
            reader: tokio::spawn(started.reader),
            forwarder: tokio::spawn(started.forwarder),
        });
    }

    fn schedule(&self, wiring: &Wiring<'_>, t: &TriggerConfig) -> Option<JoinHandle<()>> {
        use crate::triggers::schedule::{self, Expression, ScheduleSpec};
        let f = &self.config;
        let name = t.schedule.as_ref()?;
        // Validation has parsed it already.
        let expression = Expression::parse_in(name, t.timezone.as_deref()).ok()?;
        let spec = ScheduleSpec {
            function: f.name.clone(),
            name: name.clone(),
            expression,
            missed: t.missed.unwrap_or_default(),
        };
        let last = wiring
            .last_ticks
            .get(&(f.name.clone(), name.clone()))
            .copied();
        Some(tokio::spawn(schedule::run(
            spec,
            last,
            wiring.store.clone(),
            self.dispatcher.intake.for_trigger(&t.label()),
            self.draining.clone(),
        )))
    }

    fn file(&self, store: &Store, t: &TriggerConfig) -> Option<JoinHandle<()>> {
        use crate::triggers::file::{self, FileSpec, Pattern};
        let f = &self.config;
        // Validation has parsed it already.
        let pattern = Pattern::parse(t.file.as_deref()?).ok()?;
        let spec = FileSpec {
            function: f.name.clone(),
            version: self.dispatcher.live.current().version().to_owned(),
            pattern,
            after: t.after.unwrap_or_default(),
            max_file_bytes: t
                .max_file_bytes
                .unwrap_or(crate::config::DEFAULT_MAX_FILE_BYTES)
                .into(),
            keep: f.dead_letters.keep,
        };
        let intake = self.dispatcher.intake.for_trigger(&t.label());
        let intake = match t.batch {
            Some(window) => {
                crate::triggers::batch::batched(&intake, window.into(), self.draining.clone())
            }
            None => intake,
        };
        Some(tokio::spawn(file::run(
            spec,
            store.clone(),
            intake,
            self.draining.clone(),
        )))
    }

    fn stream(&self, store: &Store, index: usize, t: &TriggerConfig) -> Option<JoinHandle<()>> {
        use crate::triggers::kv_change::{self, StreamSpec};
        let f = &self.config;
        let spec = StreamSpec {
            function: f.name.clone(),
            consumer: consumer(&f.name, index),
            namespace: t.kv_change.clone()?,
            keys: t.keys.clone(),
            batch: t.batch.map(Into::into),
        };
        Some(tokio::spawn(kv_change::run(
            spec,
            store.clone(),
            self.dispatcher.intake.for_trigger(&t.label()),
            self.draining.clone(),
        )))
    }

    /// Its HTTP and WebSocket routes, for the listener's table.
    pub fn routes(
        &self,
        store: &Store,
    ) -> Vec<(crate::triggers::route::Route, crate::triggers::http::Target)> {
        use crate::triggers::http::{Queue, Target};
        use crate::triggers::route::{Invocation, Route};
        let f = &self.config;
        f.triggers
            .iter()
            .filter_map(|t| {
                // Validation has parsed it already.
                let route = Route::parse(&t.route()?).ok()?;
                let websocket = t.websocket.as_ref().map(|path| {
                    Arc::new(crate::triggers::websocket::Settings {
                        route: path.clone(),
                        max_connections: t
                            .max_connections
                            .unwrap_or(crate::config::DEFAULT_WS_CONNECTIONS)
                            as usize,
                        idle: Duration::from_millis(
                            t.idle_timeout_ms
                                .unwrap_or(crate::config::DEFAULT_WS_IDLE_MS),
                        ),
                        max_message: t
                            .max_message_bytes
                            .unwrap_or(crate::config::DEFAULT_WS_MESSAGE_BYTES)
                            as usize,
                        open: Default::default(),
                    })
                });
                let target = Target {
                    intake: self.dispatcher.intake.for_trigger(&t.label()),
                    api_keys: t.auth.as_ref().map(crate::config::RouteAuth::keys),
                    queue: (t.invocation == Some(Invocation::Event)).then(|| Queue {
                        store: store.clone(),
                        function: f.name.clone(),
                    }),
                    websocket,
                };
                Some((route, target))
            })
            .collect()
    }

    /// Events taken and not yet settled.
    pub fn in_flight(&self) -> usize {
        self.dispatcher.intake.in_flight.load(Ordering::SeqCst)
    }

    /// Takes no more events: sources stop reading, a tick or file in hand
    /// is left for the next start, and a worker in a backoff gives that
    /// event up (unacknowledged: it stays at the broker).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.stop.stop();
    }

    /// After [`Unit::drain`] and once its events in flight have settled
    /// (or the grace ran out): its session disconnects, after the acks its
    /// last commits queued, and its tasks end. Returns the dispatcher,
    /// whose workers end once every intake sender is gone.
    pub async fn stop_sources(mut self) -> Dispatcher {
        if let Some(ingress) = self.ingress.take() {
            ingress.session.disconnect().await;
            let mut reader = ingress.reader;
            if tokio::time::timeout(Duration::from_secs(2), &mut reader)
                .await
                .is_err()
            {
                // Its queue senders must go, or the workers never stop.
                reader.abort();
            }
            ingress.forwarder.abort();
        }
        for task in self.tasks.drain(..) {
            // A tick or file in flight is settled (or left) by its worker.
            task.abort();
        }
        self.dispatcher
    }

    /// Drains, waits for what is in flight, and stops; its workers are
    /// joined on a thread of their own (a WebSocket connection still open
    /// holds them until it closes). For `apply`. The wait is `grace`, or
    /// longer for a function whose invocations may run longer: an event
    /// still running when its session disconnects would commit with its
    /// ack lost, and run again on the new session.
    pub async fn retire(self, grace: Duration) {
        self.drain();
        let grace = grace.max(self.config.limits.timeout() * 2 + Duration::from_secs(5));
        let deadline = tokio::time::Instant::now() + grace;
        while self.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left = self.in_flight();
        let name = self.name().to_owned();
        if left > 0 {
            tracing::warn!(function = %name, left, "grace ran out with events in flight: they stay at the broker, and any that commits still will run again");
        }
        let dispatcher = self.stop_sources().await;
        let _ = std::thread::Builder::new()
            .name(format!("retire-{name}"))
            .spawn(move || dispatcher.join());
    }
}

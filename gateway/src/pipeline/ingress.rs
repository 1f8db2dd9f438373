//! One MQTT session per function: subscribe to its triggers, hand messages to
//! its queue, acknowledge each one only after its invocation is done.
//!
//! Why a session per function rather than one for the gateway: MQTT's flow
//! control (the broker's in-flight window) is per session. With one shared
//! session, a slow function's unacknowledged messages would fill the window
//! and starve every other function. With one each, a slow function's backlog
//! waits in *its* session at the broker, and the others keep flowing, like
//! one event-source mapping per Lambda function.
//!
//! The task that owns the event loop never waits for the function's queue:
//! it must keep reading so that keep-alive replies are seen in time. What it
//! reads goes to a forwarder task that does wait for room. That buffer is
//! bounded by the broker's in-flight window (mosquitto's
//! `max_inflight_messages`, rumqttd's `max_inflight_count`): the broker sends
//! no more unacknowledged QoS 1 messages than that, which is where the
//! backpressure lives.

use super::acks::AckQueue;
use super::backoff::Backoff;
use super::dispatch::{Ack, Job, Queues};
use super::Endpoint;
use crate::event::OwnedEvent;
use crate::metrics::{inc, FunctionMetrics};
use crate::router::Router;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, Publish, QoS, SubscribeFilter};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// One trigger of a function: a filter and the QoS it is subscribed with.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub filter: String,
    pub qos: u8,
    /// JSON field (dot path) holding a device-provided message id.
    pub dedup_key: Option<String>,
}

/// The id at `path` (`"id"`, `"meta.id"`) in a JSON payload, as a string;
/// `None` if the payload is not JSON or has no such string or number.
pub fn dedup_id(payload: &[u8], path: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let field = path.split('.').try_fold(&value, |v, key| v.get(key))?;
    match field {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The client half of a session, shared with the workers that acknowledge.
#[derive(Debug)]
pub struct Session {
    client: AsyncClient,
    /// Messages of the current connection awaiting their ack, in arrival
    /// order. Reset when the connection drops: the broker redelivers those,
    /// and a packet id from the old connection may name another message now.
    acks: Mutex<AckQueue>,
}

impl Session {
    fn acks(&self) -> MutexGuard<'_, AckQueue> {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the session cleanly once everything in flight is acked.
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}

/// What a worker needs to acknowledge one message.
#[derive(Debug)]
pub struct AckHandle {
    session: Arc<Session>,
    ticket: u64,
}

impl AckHandle {
    /// Marks the message done and sends the acks this releases (this one and
    /// later ones that finished first), in arrival order.
    pub fn ack(self) -> bool {
        let mut acks = self.session.acks();
        for pkid in acks.done(self.ticket) {
            // Only the packet id matters for an ack (QoS 1 throughout).
            let mut publish = Publish::new("", QoS::AtLeastOnce, Vec::new());
            publish.pkid = pkid;
            // The request channel has room for every packet id there is,
            // so this fails only when the event loop is gone, and then the
            // broker redelivers anyway.
            let _ = self.session.client.try_ack(&publish);
        }
        true
    }
}

/// Room in the client's request channel: one ack per packet id MQTT can
/// have in flight, plus subscriptions. (The channel allocates as it fills.)
const REQUEST_CAPACITY: usize = u16::MAX as usize + 64;

/// Settings for one function's ingress.
#[derive(Debug)]
pub struct IngressSpec {
    pub function: String,
    pub client_id: String,
    pub triggers: Vec<Trigger>,
    pub queue: usize,
}

/// A started ingress: its session, the tasks to spawn, and a signal that
/// turns true once its subscriptions are acknowledged.
pub struct Started {
    pub session: Arc<Session>,
    pub reader: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    pub forwarder: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    pub subscribed: watch::Receiver<bool>,
}

/// Starts the session; the reader owns the event loop and ends after
/// `Session::disconnect`, the forwarder when the reader is gone.
pub fn start(
    endpoint: &Endpoint,
    spec: IngressSpec,
    queues: Queues,
    metrics: Arc<FunctionMetrics>,
    draining: Arc<AtomicBool>,
) -> Started {
    let mut options = endpoint.options(spec.client_id.clone());
    // A persistent session: what devices publish while the gateway is down
    // or busy waits at the broker.
    options.set_clean_session(false);
    options.set_manual_acks(true);
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let session = Arc::new(Session {
        client,
        acks: Mutex::new(AckQueue::default()),
    });
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = watch::channel(false);
    let backlog = Arc::new(AtomicUsize::new(0));
    let reader = Reader {
        session: session.clone(),
        spec,
        metrics,
        draining: draining.clone(),
        jobs: jobs_tx,
        backlog: backlog.clone(),
        subscribed: subscribed_tx,
    };
    Started {
        session,
        reader: Box::pin(reader.run(eventloop)),
        forwarder: Box::pin(forward(jobs_rx, queues, draining, backlog)),
        subscribed,
    }
}

/// Moves jobs into the function's bounded queue, waiting for room.
async fn forward(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    queues: Queues,
    draining: Arc<AtomicBool>,
    backlog: Arc<AtomicUsize>,
) {
    while let Some(job) = jobs.recv().await {
        backlog.fetch_sub(1, Ordering::SeqCst);
        if draining.load(Ordering::SeqCst) {
            // Shutting down: not acked, so the broker keeps it for the next start.
            continue;
        }
        if !queues.send(job).await {
            return;
        }
    }
}

struct Reader {
    session: Arc<Session>,
    spec: IngressSpec,
    metrics: Arc<FunctionMetrics>,
    draining: Arc<AtomicBool>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Jobs read but not yet in the queue.
    backlog: Arc<AtomicUsize>,
    subscribed: watch::Sender<bool>,
}

impl Reader {
    async fn run(self, mut eventloop: EventLoop) {
        let function = self.spec.function.as_str();
        // The broker routed the message to this session; the router says
        // which trigger it came through (its dedup settings), and guards
        // against a broker delivering something no trigger asked for.
        let mut router = Router::new();
        for (i, trigger) in self.spec.triggers.iter().enumerate() {
            if let Err(e) = router.add(&trigger.filter, i) {
                tracing::error!(function, filter = %trigger.filter, "invalid trigger filter: {e}");
            }
        }
        let mut matched = Vec::new();
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            function.len() as u64,
        );
        let mut connected_once = false;

        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(connack))) => {
                    backoff.reset();
                    let filters = self
                        .spec
                        .triggers
                        .iter()
                        .map(|t| SubscribeFilter::new(t.filter.clone(), qos(t.qos)));
                    if let Err(e) = self.session.client.try_subscribe_many(filters) {
                        tracing::error!(function, "cannot subscribe: {e}");
                    }
                    if connected_once {
                        tracing::info!(
                            function,
                            session_present = connack.session_present,
                            "reconnected to the local broker"
                        );
                    }
                    connected_once = true;
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    self.subscribed.send_replace(true);
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    self.on_publish(publish, &router, &mut matched);
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(rumqttc::ConnectionError::RequestsDone) => return,
                Err(e) => {
                    {
                        let mut acks = self.session.acks();
                        acks.reset();
                        // Drop acks queued for the old connection since the
                        // event loop last cleaned up (see `Session::acks`).
                        eventloop.clean();
                    }
                    if self.draining.load(Ordering::SeqCst) {
                        return;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(function, error = %e, retry_in = ?delay, "local broker connection lost");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn on_publish(&self, publish: Publish, router: &Router, matched: &mut Vec<usize>) {
        let function = self.spec.function.as_str();
        if self.draining.load(Ordering::SeqCst) {
            // Not acked: the broker keeps it for the next start.
            return;
        }
        let ticket =
            (publish.qos != QoS::AtMostOnce).then(|| self.session.acks().arrive(publish.pkid));
        let ack = ticket.map(|ticket| {
            Ack::Mqtt(AckHandle {
                session: self.session.clone(),
                ticket,
            })
        });
        router.route_into(&publish.topic, matched);
        let Some(&trigger) = matched.first() else {
            tracing::warn!(function, topic = %publish.topic, "message matches no trigger; acknowledged and ignored");
            if let Some(Ack::Mqtt(handle)) = ack {
                handle.ack();
            }
            return;
        };
        inc(&self.metrics.received);
        let dedup = self.spec.triggers[trigger]
            .dedup_key
            .as_deref()
            .and_then(|path| dedup_id(&publish.payload, path));
        let qos0 = ack.is_none();
        let job = Job {
            event: OwnedEvent::mqtt(
                publish.topic,
                publish.payload.to_vec(),
                publish.qos as u8,
                publish.retain,
            ),
            arrived: Instant::now(),
            ack,
            dedup,
        };
        // QoS 0 promised at most once: past a queue's worth of backlog,
        // keeping memory bounded wins. QoS 1 is bounded by the broker's window.
        if qos0 && self.backlog.load(Ordering::SeqCst) >= self.spec.queue {
            inc(&self.metrics.dropped);
            return;
        }
        self.backlog.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(job).is_err() {
            self.backlog.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_ids_come_from_top_level_or_nested_fields() {
        assert_eq!(dedup_id(br#"{"id":"a-1"}"#, "id").as_deref(), Some("a-1"));
        assert_eq!(
            dedup_id(br#"{"meta":{"seq":42}}"#, "meta.seq").as_deref(),
            Some("42")
        );
    }

    #[test]
    fn messages_without_a_usable_id_are_not_deduplicated() {
        assert_eq!(dedup_id(b"not json", "id"), None);
        assert_eq!(dedup_id(br#"{"other":1}"#, "id"), None);
        assert_eq!(dedup_id(br#"{"id":{"nested":true}}"#, "id"), None);
    }
}

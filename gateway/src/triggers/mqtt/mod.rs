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
//! `max_inflight_messages`, rumqttd's `max_inflight_count`, MQTT 5's Receive
//! Maximum, which the gateway sets to the queue): the broker sends no more
//! unacknowledged QoS 1 messages than that, which is where the backpressure
//! lives. Not every broker keeps to its window (mosquitto 2 was seen to send
//! thousands unacknowledged with `max_inflight_messages 1000`), so the
//! buffer is bounded too: [`FORWARD_SLACK`] messages beyond the queue, and
//! [`MAX_BUFFERED_BYTES`]. While it is full the task stops polling, TCP's
//! flow control stops the broker, and the broker holds the rest. The bound
//! is generous on purpose: polling is also what sends the acknowledgements,
//! so while the task waits, messages already committed stay unacknowledged
//! (and a crash then runs them again). It waits only until the function has
//! taken more events, so keep-alives still go out unless that takes longer
//! than the keep-alive (30 s); then the broker drops the connection and
//! redelivers what was not acknowledged, as after any disconnect.

mod acks;

use super::{Intake, Job, Settle};
use crate::event::OwnedEvent;
use crate::metrics::{inc, FunctionMetrics, TriggerMetrics};
use crate::mqtt::{self, Backoff, Client, Endpoint, EventLoop, Message, PollError, Polled};
use crate::router::Router;
use acks::AckQueue;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// One trigger of a function: a filter and the QoS it is subscribed with.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub filter: String,
    pub qos: u8,
    /// Where a device-provided message id is, if the trigger deduplicates.
    pub dedup: Option<Dedup>,
    /// Its batching window, if it hands the function batches.
    pub batch: Option<super::batch::Window>,
    /// `qos0_when_full = "drop"`: a QoS 0 message that finds a queue's
    /// worth waiting is dropped (and counted). Otherwise it waits like a
    /// QoS 1 one, and the session is not read meanwhile.
    pub drop_qos0: bool,
    /// The shared subscription group (`share`), if several gateways split
    /// this trigger's messages.
    pub share: Option<String>,
}

impl Trigger {
    /// The filter as subscribed: a shared subscription's is
    /// `$share/<group>/<filter>`, though the messages come with their own
    /// topics, which the plain filter matches.
    pub fn subscription(&self) -> String {
        match &self.share {
            Some(group) => format!("$share/{group}/{}", self.filter),
            None => self.filter.clone(),
        }
    }
}

/// Where a trigger finds a message's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dedup {
    /// A JSON field (dot path) of the payload.
    JsonField(String),
    /// An MQTT 5 user property of this name.
    Property(String),
}

impl Dedup {
    /// The message's id; `None` (so no deduplication) when it has none.
    pub fn id(&self, message: &Message) -> Option<String> {
        match self {
            Dedup::JsonField(path) => dedup_id(&message.payload, path),
            Dedup::Property(name) => {
                mqtt::property(&message.user_properties, name).map(str::to_owned)
            }
        }
    }
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
    client: Client,
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
            // The request channel has room for every packet id there is,
            // so this fails only when the event loop is gone, and then the
            // broker redelivers anyway.
            let _ = self.session.client.try_ack(pkid);
        }
        true
    }
}

/// Messages the buffer between a session and its queue holds beyond the
/// queue's own capacity.
pub const FORWARD_SLACK: usize = 4_096;

/// Bytes of payload and topic that buffer holds at most.
pub const MAX_BUFFERED_BYTES: usize = 16 << 20;

/// What is in the buffer between a session and its queue.
#[derive(Debug, Default)]
struct Backlog {
    messages: AtomicUsize,
    bytes: AtomicUsize,
    /// Signalled whenever the forwarder takes a message out.
    taken: tokio::sync::Notify,
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
    /// Filters the session had before (`apply` removed their triggers):
    /// unsubscribed at each connect, as the broker keeps a persistent
    /// session's subscriptions.
    pub unsubscribe: Vec<String>,
}

/// A started ingress: its session, the tasks to spawn, and a signal that
/// turns true once its subscriptions are acknowledged.
pub struct Started {
    pub session: Arc<Session>,
    pub reader: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    pub forwarder: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    /// When the broker last acknowledged the subscriptions (`None` before
    /// the first time).
    pub subscribed: watch::Receiver<Option<Instant>>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// Starts the session; the reader owns the event loop and ends after
/// `Session::disconnect`, the forwarder when the reader is gone.
pub fn start(
    endpoint: &Endpoint,
    spec: IngressSpec,
    intake: Intake,
    metrics: Arc<FunctionMetrics>,
    draining: Arc<AtomicBool>,
) -> Started {
    let settings = mqtt::Settings {
        client_id: spec.client_id.clone(),
        // A persistent session: what devices publish while the gateway is
        // down or busy waits at the broker.
        persistent: true,
        manual_acks: true,
        // The session publishes nothing, and rumqttc preallocates a slot per
        // in-flight publish (~7 KB per session at its default of 100).
        outgoing_window: 1,
        // MQTT 5 lets the gateway bound what the broker sends ahead of the
        // acks itself: a queue's worth, so the forwarder's buffer stays
        // within one queue (3.1.1 leaves this to the broker's config).
        incoming_window: Some(u16::try_from(spec.queue.max(1)).unwrap_or(u16::MAX)),
        capacity: REQUEST_CAPACITY,
    };
    let (client, eventloop) = Client::new(endpoint, &settings);
    let session = Arc::new(Session {
        client,
        acks: Mutex::new(AckQueue::default()),
    });
    // Each trigger's way in: the function's intake, or a batching one.
    let intakes: Vec<Intake> = spec
        .triggers
        .iter()
        .map(|trigger| {
            let intake = intake.for_trigger(&format!("mqtt:{}", trigger.filter));
            match trigger.batch {
                Some(window) => super::batch::batched(&intake, window, draining.clone()),
                None => intake,
            }
        })
        .collect();
    let triggers = intakes.iter().map(|intake| intake.trigger_arc()).collect();
    let (jobs_tx, jobs_rx) = mpsc::channel(spec.queue.max(1) + FORWARD_SLACK);
    let (subscribed_tx, subscribed) = watch::channel(None);
    let backlog = Arc::new(Backlog::default());
    let reader = Reader {
        session: session.clone(),
        spec,
        metrics,
        triggers,
        draining: draining.clone(),
        jobs: jobs_tx,
        backlog: backlog.clone(),
        subscribed: subscribed_tx,
    };
    Started {
        session,
        reader: Box::pin(reader.run(eventloop)),
        forwarder: Box::pin(forward(jobs_rx, intakes, draining, backlog)),
        subscribed,
    }
}

/// Moves jobs into the function's bounded queue (through their trigger's
/// intake, by index), waiting for room.
async fn forward(
    mut jobs: mpsc::Receiver<(usize, Job)>,
    intakes: Vec<Intake>,
    draining: Arc<AtomicBool>,
    backlog: Arc<Backlog>,
) {
    while let Some((trigger, job)) = jobs.recv().await {
        let intake = &intakes[trigger];
        backlog.messages.fetch_sub(1, Ordering::SeqCst);
        backlog.bytes.fetch_sub(job.event.size(), Ordering::SeqCst);
        backlog.taken.notify_one();
        if draining.load(Ordering::SeqCst) {
            // Shutting down: not acked, so the broker keeps it for the next start.
            continue;
        }
        if !intake.send(job).await {
            return;
        }
    }
}

struct Reader {
    session: Arc<Session>,
    spec: IngressSpec,
    metrics: Arc<FunctionMetrics>,
    /// Each trigger's counters, by its index in `spec.triggers`.
    triggers: Vec<Option<Arc<TriggerMetrics>>>,
    draining: Arc<AtomicBool>,
    jobs: mpsc::Sender<(usize, Job)>,
    /// Jobs read but not yet in the queue.
    backlog: Arc<Backlog>,
    subscribed: watch::Sender<Option<Instant>>,
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

        let filters: Vec<(String, u8)> = self
            .spec
            .triggers
            .iter()
            .map(|t| (t.subscription(), t.qos))
            .collect();
        // Room for the next message in the buffer to the queue, taken
        // before reading it: while there is none, nothing is read.
        let mut room = None;
        loop {
            if room.is_none() {
                match self.jobs.clone().reserve_owned().await {
                    Ok(permit) => room = Some(permit),
                    // The forwarder is gone: shutting down.
                    Err(_) => return,
                }
            }
            loop {
                // Registered before the check, so a take in between wakes it.
                let taken = self.backlog.taken.notified();
                if self.backlog.bytes.load(Ordering::SeqCst) < MAX_BUFFERED_BYTES {
                    break;
                }
                taken.await;
            }
            match eventloop.poll().await {
                Ok(Polled::ConnAck {
                    session_present, ..
                }) => {
                    backoff.reset();
                    for filter in &self.spec.unsubscribe {
                        if let Err(e) = self.session.client.try_unsubscribe(filter) {
                            tracing::warn!(function, filter, "cannot unsubscribe: {e}");
                        }
                    }
                    if let Err(e) = self.session.client.try_subscribe_many(&filters) {
                        tracing::error!(function, "cannot subscribe: {e}");
                    }
                    if connected_once {
                        tracing::info!(
                            function,
                            session_present,
                            "reconnected to the local broker"
                        );
                    }
                    connected_once = true;
                }
                Ok(Polled::SubAck) => {
                    self.subscribed.send_replace(Some(Instant::now()));
                }
                Ok(Polled::Publish(message)) => {
                    self.on_publish(message, &router, &mut matched, &mut room);
                }
                Ok(Polled::Disconnected) => return,
                Ok(_) => {}
                Err(PollError::RequestsDone) => return,
                Err(PollError::Connection(e)) => {
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

    /// Takes one message into the room reserved for it (which it uses up
    /// unless the message is ignored or dropped).
    fn on_publish(
        &self,
        message: Message,
        router: &Router,
        matched: &mut Vec<usize>,
        room: &mut Option<mpsc::OwnedPermit<(usize, Job)>>,
    ) {
        let function = self.spec.function.as_str();
        if self.draining.load(Ordering::SeqCst) {
            // Not acked: the broker keeps it for the next start.
            return;
        }
        let settle = match message.qos {
            0 => Settle::Nothing,
            _ => Settle::Mqtt(AckHandle {
                session: self.session.clone(),
                ticket: self.session.acks().arrive(message.pkid),
            }),
        };
        router.route_into(&message.topic, matched);
        let Some(&trigger) = matched.first() else {
            tracing::warn!(function, topic = %message.topic, "message matches no trigger; acknowledged and ignored");
            settle.resolve(true);
            return;
        };
        let dedup = self.spec.triggers[trigger]
            .dedup
            .as_ref()
            .and_then(|dedup| dedup.id(&message));
        let qos0 = matches!(settle, Settle::Nothing);
        let job = Job {
            event: OwnedEvent::mqtt_with_properties(
                message.topic,
                message.payload,
                message.qos,
                message.retain,
                &message.user_properties,
            ),
            arrived: Instant::now(),
            settle,
            dedup,
            trace: None,
        };
        // QoS 0 promised at most once: a trigger that says so drops past a
        // queue's worth of backlog rather than slow its reading. Otherwise
        // a QoS 0 message takes its room as a QoS 1 one does, and while
        // there is none the session is not read: the broker holds the rest.
        if qos0
            && self.spec.triggers[trigger].drop_qos0
            && self.backlog.messages.load(Ordering::SeqCst) >= self.spec.queue
        {
            // Received, but not to be offered to the function's intake
            // (which counts the rest).
            inc(&self.metrics.received);
            inc(&self.metrics.dropped);
            if let Some(Some(t)) = self.triggers.get(trigger) {
                inc(&t.events);
                inc(&t.dropped);
            }
            return;
        }
        if let Some(permit) = room.take() {
            self.backlog.messages.fetch_add(1, Ordering::SeqCst);
            self.backlog
                .bytes
                .fetch_add(job.event.size(), Ordering::SeqCst);
            permit.send((trigger, job));
        }
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

    fn message(payload: &[u8], properties: &[(&str, &str)]) -> Message {
        Message {
            topic: "a/b".into(),
            payload: payload.to_vec(),
            qos: 1,
            retain: false,
            pkid: 1,
            user_properties: properties
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn a_trigger_takes_its_id_from_the_payload_or_a_user_property() {
        let m = message(br#"{"id":"from-json"}"#, &[("msg-id", "from-property")]);
        assert_eq!(
            Dedup::JsonField("id".into()).id(&m).as_deref(),
            Some("from-json")
        );
        assert_eq!(
            Dedup::Property("msg-id".into()).id(&m).as_deref(),
            Some("from-property")
        );
        let bare = message(b"not json", &[]);
        assert_eq!(Dedup::Property("msg-id".into()).id(&bare), None);
    }

    #[test]
    fn messages_without_a_usable_id_are_not_deduplicated() {
        assert_eq!(dedup_id(b"not json", "id"), None);
        assert_eq!(dedup_id(br#"{"other":1}"#, "id"), None);
        assert_eq!(dedup_id(br#"{"id":{"nested":true}}"#, "id"), None);
    }
}

//! One MQTT session per function: subscribe to its triggers, hand messages to
//! its queue, acknowledge each one only after its invocation is done.
//!
//! Why a session per function rather than one for the gateway: MQTT's flow
//! control (the broker's in-flight window) is per session. With one shared
//! session, a slow function's unacknowledged messages would fill the window
//! and starve every other function. With one each, a slow function's backlog
//! waits in *its* session at the broker, and the others keep flowing, like
//! one event-source mapping per Lambda function.

use super::backoff::Backoff;
use super::dispatch::{Ack, Job, Queues};
use super::Endpoint;
use crate::event::OwnedEvent;
use crate::metrics::{inc, FunctionMetrics};
use crate::router::Router;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, Publish, QoS, SubscribeFilter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One trigger of a function: a filter and the QoS it is subscribed with.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub filter: String,
    pub qos: u8,
}

/// The client half of a session, shared with the workers that acknowledge.
#[derive(Debug)]
pub struct Session {
    client: AsyncClient,
    /// Bumped whenever the connection drops or is re-established. A message
    /// is acked only on the connection it arrived on: after a reconnect the
    /// broker redelivers it, and its packet id may already name another one.
    epoch: Mutex<u64>,
}

impl Session {
    fn epoch(&self) -> std::sync::MutexGuard<'_, u64> {
        self.epoch.lock().unwrap_or_else(PoisonError::into_inner)
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
    epoch: u64,
    pkid: u16,
    qos: QoS,
}

impl AckHandle {
    /// Acknowledges the message if its connection is still the current one;
    /// returns whether an ack was sent.
    pub fn ack(self) -> bool {
        let epoch = self.session.epoch();
        if *epoch != self.epoch {
            return false;
        }
        // Only the packet id and QoS matter for an ack; no need to keep the payload twice.
        let mut publish = Publish::new("", self.qos, Vec::new());
        publish.pkid = self.pkid;
        // The request channel has room for every message this session can
        // have in flight (see `request_capacity`), so this only fails when
        // the event loop is gone, and then the broker redelivers anyway.
        self.session.client.try_ack(&publish).is_ok()
    }
}

/// Room in the client's request channel for an ack per message the
/// function can hold (queue + one per worker), plus subscriptions.
pub fn request_capacity(queue: usize, concurrency: usize) -> usize {
    queue + concurrency + 64
}

/// Settings for one function's ingress.
#[derive(Debug)]
pub struct IngressSpec {
    pub function: String,
    pub client_id: String,
    pub triggers: Vec<Trigger>,
    pub queue: usize,
    pub concurrency: usize,
}

/// Starts the session; the returned future owns the event loop and ends
/// after `Session::disconnect`.
pub fn start(
    endpoint: &Endpoint,
    spec: IngressSpec,
    queues: Queues,
    metrics: Arc<FunctionMetrics>,
    draining: Arc<AtomicBool>,
) -> (Arc<Session>, impl std::future::Future<Output = ()>) {
    let mut options = endpoint.options(spec.client_id.clone());
    // A persistent session: what devices publish while the gateway is down
    // or busy waits at the broker.
    options.set_clean_session(false);
    options.set_manual_acks(true);
    let (client, eventloop) =
        AsyncClient::new(options, request_capacity(spec.queue, spec.concurrency));
    let session = Arc::new(Session {
        client,
        epoch: Mutex::new(0),
    });
    let task = drive(eventloop, session.clone(), spec, queues, metrics, draining);
    (session, task)
}

async fn drive(
    mut eventloop: EventLoop,
    session: Arc<Session>,
    spec: IngressSpec,
    queues: Queues,
    metrics: Arc<FunctionMetrics>,
    draining: Arc<AtomicBool>,
) {
    let function = spec.function.as_str();
    // The broker routed the message to this session; the router says which
    // trigger it came through (and so its QoS), and guards against a broker
    // that delivers something no trigger asked for.
    let mut router = Router::new();
    for (i, trigger) in spec.triggers.iter().enumerate() {
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
        let event = eventloop.poll().await;
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(connack))) => {
                *session.epoch() += 1;
                backoff.reset();
                let filters = spec
                    .triggers
                    .iter()
                    .map(|t| SubscribeFilter::new(t.filter.clone(), qos(t.qos)));
                if let Err(e) = session.client.try_subscribe_many(filters) {
                    tracing::error!(function, "cannot subscribe: {e}");
                }
                if connected_once {
                    tracing::info!(
                        function,
                        session_present = connack.session_present,
                        "reconnected to the local broker"
                    );
                } else {
                    tracing::debug!(
                        function,
                        session_present = connack.session_present,
                        "connected to the local broker"
                    );
                }
                connected_once = true;
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                if draining.load(Ordering::SeqCst) {
                    // Not acked: the broker keeps it for the next start.
                    continue;
                }
                router.route_into(&publish.topic, &mut matched);
                if matched.is_empty() {
                    tracing::warn!(function, topic = %publish.topic, "message matches no trigger; acknowledged and ignored");
                    let _ = session.client.try_ack(&publish);
                    continue;
                }
                inc(&metrics.received);
                let epoch = *session.epoch();
                let ack = (publish.qos != QoS::AtMostOnce).then(|| {
                    Ack::Mqtt(AckHandle {
                        session: session.clone(),
                        epoch,
                        pkid: publish.pkid,
                        qos: publish.qos,
                    })
                });
                let job = Job {
                    event: OwnedEvent::mqtt(
                        publish.topic,
                        publish.payload.to_vec(),
                        publish.qos as u8,
                        publish.retain,
                    ),
                    arrived: Instant::now(),
                    ack,
                };
                if job.ack.is_some() {
                    // Waiting here is the backpressure: no more reads until
                    // the queue has room, and the broker holds the rest.
                    if !queues.send(job).await {
                        return;
                    }
                } else if !queues.try_send(job) {
                    // QoS 0 promised at most once; keeping memory bounded wins.
                    inc(&metrics.dropped);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                {
                    let mut epoch = session.epoch();
                    *epoch += 1;
                    // Drop acks queued for the old connection since the
                    // event loop last cleaned up (see `Session::epoch`).
                    eventloop.clean();
                }
                if draining.load(Ordering::SeqCst) {
                    return;
                }
                let delay = backoff.next_delay();
                tracing::warn!(function, error = %e, retry_in = ?delay, "local broker connection lost");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}

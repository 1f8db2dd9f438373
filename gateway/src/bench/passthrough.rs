//! `wasmgate bench passthrough`: the baseline a gateway is measured against.
//! Subscribes to `--from` and republishes each message, payload untouched,
//! to `--to`; no function, no database. It does the MQTT work wasmgate does
//! per message: a persistent QoS 1 session with manual acks on the way in, a
//! second connection publishing at QoS 1 on the way out, and the incoming
//! message acked only once the broker has acked the republished one.
//!
//! The ingress task hands each message to the egress client and remembers its
//! packet id in a queue; the egress task takes the queue in order as its
//! publishes go out (rumqttc writes requests in the order they are made, and
//! names each with a packet id then) and acks the incoming message when the
//! broker's PUBACK for the outgoing one arrives. Made for benchmarks: if a
//! connection drops, it stops with an error rather than re-pairing packet ids.

use super::{connect, qos, BenchError};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS,
};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Where to take messages from and where to put them.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
    /// The filter subscribed to.
    pub from: String,
    /// The topic republished to; `{name}` placeholders take, in order, the
    /// levels that the `+` (and `#`) wildcards of `from` matched.
    pub to: String,
    /// QoS of the subscription and of the republish.
    pub qos: u8,
    /// The persistent session's client id (the egress connection adds `-out`).
    pub client_id: String,
    /// Republished messages in flight, waiting for their PUBACK.
    pub inflight: u16,
    /// Stop after forwarding this many.
    pub count: Option<u64>,
}

impl Options {
    pub const DEFAULT_CLIENT_ID: &'static str = "wasmgate-passthrough";

    pub fn broker(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn validate(&self) -> Result<(), BenchError> {
        let mut problems = Vec::new();
        if let Err(e) = crate::router::validate_filter(&self.from) {
            problems.push(format!("--from {:?} is not a topic filter: {e}", self.from));
        } else if let Err(e) = check_template(&self.from, &self.to) {
            problems.push(e);
        }
        if self.qos > 1 {
            problems.push(format!("qos must be 0 or 1, not {}", self.qos));
        }
        if self.inflight == 0 {
            problems.push("inflight must be at least 1".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BenchError::Invalid(problems.join("\n")))
        }
    }

    fn mqtt_options(&self, id: String) -> MqttOptions {
        let mut options = MqttOptions::new(id, self.host.clone(), self.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(self.inflight)
            .set_max_packet_size(4 << 20, 4 << 20);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        options
    }
}

/// The placeholders of a `--to` template, in order: `{machine}` -> `machine`.
fn placeholders(to: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = to;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    out
}

fn wildcards(from: &str) -> usize {
    from.split('/').filter(|l| *l == "+" || *l == "#").count()
}

/// `to` has no more placeholders than `from` has wildcards, and is a topic name otherwise.
pub fn check_template(from: &str, to: &str) -> Result<(), String> {
    let names = placeholders(to);
    if names.len() > wildcards(from) {
        return Err(format!(
            "--to {to:?} has {} placeholders but --from {from:?} only {} wildcards to fill them",
            names.len(),
            wildcards(from)
        ));
    }
    let mut sample = to.to_owned();
    for name in names {
        sample = sample.replacen(&format!("{{{name}}}"), "x", 1);
    }
    crate::router::validate_topic_name(&sample)
        .map_err(|e| format!("--to {to:?} is not a topic name: {e}"))
}

/// The topic to republish `topic` (which matched `from`) to; `None` if it
/// does not match `from`.
pub fn target_topic(from: &str, to: &str, topic: &str) -> Option<String> {
    let mut captured = Vec::new();
    let mut levels = topic.split('/');
    for filter_level in from.split('/') {
        match filter_level {
            "#" => {
                let rest: Vec<&str> = levels.by_ref().collect();
                captured.push(rest.join("/"));
            }
            "+" => captured.push(levels.next()?.to_owned()),
            literal => {
                if levels.next()? != literal {
                    return None;
                }
            }
        }
    }
    if levels.next().is_some() {
        return None;
    }
    let mut out = String::with_capacity(to.len() + 16);
    let mut rest = to;
    let mut captured = captured.into_iter();
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&captured.next()?);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// What a pass-through did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub received: u64,
    pub forwarded: u64,
    /// Incoming messages acked (after their republish was acked).
    pub acked: u64,
    /// Messages on topics `--to` cannot be made from (acked and dropped).
    pub skipped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    acked: AtomicU64,
    skipped: AtomicU64,
}

/// The packet id and QoS of an incoming message: all an ack needs.
#[derive(Debug, Clone, Copy)]
struct ToAck {
    pkid: u16,
    qos: QoS,
}

/// Runs until `shutdown` (or `count` forwarded), then disconnects both sessions.
pub async fn run(
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, BenchError> {
    options.validate()?;
    let broker = options.broker();
    let mut ingress_options = options.mqtt_options(options.client_id.clone());
    ingress_options
        .set_clean_session(false)
        .set_manual_acks(true);
    // Acks queue here; at most one per message in hand, which the egress
    // inflight window and request queue bound.
    let ack_capacity = 2 * usize::from(options.inflight) + 1024;
    let (ingress, ingress_loop) = connect(
        ingress_options,
        &broker,
        "pass-through ingress",
        ack_capacity,
    )
    .await?;
    ingress
        .subscribe(options.from.clone(), qos(options.qos))
        .await
        .map_err(|_| BenchError::SubscribeRefused {
            broker: broker.clone(),
            filter: options.from.clone(),
        })?;
    let mut egress_options = options.mqtt_options(format!("{}-out", options.client_id));
    egress_options.set_clean_session(true);
    let (egress, egress_loop) = connect(egress_options, &broker, "pass-through egress", 16).await?;

    let pending = Arc::new(Mutex::new(VecDeque::<Option<ToAck>>::new()));
    let counters = Arc::new(Counters::default());
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<ConnectionError>(2);
    let ingress_task = tokio::spawn(take(
        ingress_loop,
        ingress.clone(),
        egress.clone(),
        options.clone(),
        pending.clone(),
        counters.clone(),
        failed_tx.clone(),
    ));
    let egress_task = tokio::spawn(give(
        egress_loop,
        ingress.clone(),
        qos(options.qos),
        pending,
        counters.clone(),
        failed_tx,
    ));
    tracing::info!(broker = %broker, from = %options.from, to = %options.to, "pass-through running");

    let done = async {
        loop {
            if options
                .count
                .is_some_and(|count| counters.acked.load(Ordering::Relaxed) >= count)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let failure = tokio::select! {
        () = shutdown => None,
        () = done => None,
        error = failed_rx.recv() => error,
    };
    let _ = ingress.disconnect().await;
    let _ = egress.disconnect().await;
    for mut task in [ingress_task, egress_task] {
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    if let Some(error) = failure {
        return Err(BenchError::Connect {
            role: "pass-through",
            broker,
            error: Box::new(error),
        });
    }
    Ok(Summary {
        received: counters.received.load(Ordering::Relaxed),
        forwarded: counters.forwarded.load(Ordering::Relaxed),
        acked: counters.acked.load(Ordering::Relaxed),
        skipped: counters.skipped.load(Ordering::Relaxed),
    })
}

/// The ingress: every message is handed to the egress client, in order.
async fn take(
    mut eventloop: EventLoop,
    ingress: AsyncClient,
    egress: AsyncClient,
    options: Options,
    pending: Arc<Mutex<VecDeque<Option<ToAck>>>>,
    counters: Arc<Counters>,
    failed: tokio::sync::mpsc::Sender<ConnectionError>,
) {
    let out_qos = qos(options.qos);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                counters.received.fetch_add(1, Ordering::Relaxed);
                let to_ack = (publish.qos != QoS::AtMostOnce).then_some(ToAck {
                    pkid: publish.pkid,
                    qos: publish.qos,
                });
                let Some(topic) = target_topic(&options.from, &options.to, &publish.topic) else {
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                    let _ = ingress.try_ack(&publish);
                    continue;
                };
                pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_back(to_ack);
                // Waiting here is the backpressure: no reads while the egress is full.
                if egress
                    .publish_bytes(topic, out_qos, false, publish.payload)
                    .await
                    .is_err()
                {
                    return;
                }
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(ConnectionError::RequestsDone) => {
                return
            }
            Ok(_) => {}
            Err(error) => {
                let _ = failed.try_send(error);
                return;
            }
        }
    }
}

/// The egress: pairs each outgoing packet id with the incoming message it
/// carries, and acks that message when the broker acks the outgoing one.
async fn give(
    mut eventloop: EventLoop,
    ingress: AsyncClient,
    out_qos: QoS,
    pending: Arc<Mutex<VecDeque<Option<ToAck>>>>,
    counters: Arc<Counters>,
    failed: tokio::sync::mpsc::Sender<ConnectionError>,
) {
    let mut in_flight: HashMap<u16, Option<ToAck>> = HashMap::new();
    // Acks the ingress client has no room for yet, oldest first. Its event
    // loop drains requests slowly while publishes pour in, and an ack dropped
    // here would leave the message in flight at the broker until the next
    // reconnect (mosquitto then works harder on every message); so they wait,
    // in order, and are retried.
    let mut unsent: VecDeque<Publish> = VecDeque::new();
    let ack = |to_ack: Option<ToAck>, unsent: &mut VecDeque<Publish>| {
        counters.acked.fetch_add(1, Ordering::Relaxed);
        if let Some(to_ack) = to_ack {
            let mut publish = Publish::new("", to_ack.qos, Vec::new());
            publish.pkid = to_ack.pkid;
            unsent.push_back(publish);
        }
    };
    loop {
        while let Some(publish) = unsent.front() {
            if ingress.try_ack(publish).is_err() {
                break;
            }
            unsent.pop_front();
        }
        let event = if unsent.is_empty() {
            eventloop.poll().await
        } else {
            tokio::select! {
                event = eventloop.poll() => event,
                () = tokio::time::sleep(Duration::from_millis(1)) => continue,
            }
        };
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let to_ack = pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front()
                    .flatten();
                if out_qos == QoS::AtMostOnce {
                    ack(to_ack, &mut unsent);
                } else {
                    in_flight.insert(pkid, to_ack);
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(puback))) => {
                if let Some(to_ack) = in_flight.remove(&puback.pkid) {
                    ack(to_ack, &mut unsent);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(ConnectionError::RequestsDone) => {
                return
            }
            Ok(_) => {}
            Err(error) => {
                let _ = failed.try_send(error);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: &str = "vending/+/telemetry";
    const TO: &str = "telemetry/vending/{machine}";

    #[test]
    fn placeholders_take_the_wildcard_levels_in_order() {
        assert_eq!(
            target_topic(FROM, TO, "vending/vm-7/telemetry").as_deref(),
            Some("telemetry/vending/vm-7")
        );
        assert_eq!(
            target_topic("+/+/telemetry", "out/{b}/{a}", "robots/r-1/telemetry").as_deref(),
            Some("out/robots/r-1")
        );
        assert_eq!(
            target_topic("site/#", "copy/{rest}", "site/a/b/c").as_deref(),
            Some("copy/a/b/c")
        );
        assert_eq!(
            target_topic(FROM, "all/here", "vending/x/telemetry").as_deref(),
            Some("all/here")
        );
    }

    #[test]
    fn topics_the_filter_does_not_match_have_no_target() {
        for topic in [
            "vending/vm-7/alert",
            "vending/vm-7",
            "vending/vm-7/telemetry/x",
            "robots/r-1/telemetry",
        ] {
            assert_eq!(target_topic(FROM, TO, topic), None, "{topic}");
        }
    }

    #[test]
    fn a_template_needs_a_wildcard_per_placeholder_and_must_make_a_topic_name() {
        assert!(check_template(FROM, TO).is_ok());
        assert!(check_template(FROM, "a/{x}/{y}")
            .unwrap_err()
            .contains("2 placeholders"));
        assert!(check_template(FROM, "out/#")
            .unwrap_err()
            .contains("not a topic name"));
    }
}

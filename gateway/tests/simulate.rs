//! `wasmgate simulate` against a real mosquitto: what the fleet publishes is
//! what a subscriber gets, in order per device, and the simulator rides out
//! a broker restart.

// The harness lives with the end-to-end tests in the top-level tests/.
#[path = "../../tests/support/mod.rs"]
mod support;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use support::mosquitto::Mosquitto;
use tokio::sync::mpsc;
use wasmgate::simulate::{self, Options, SimulateError};

/// Options for a quick run against `broker`: as fast as possible, quiet.
fn options(broker: &Mosquitto) -> Options {
    let mut options = Options::new("127.0.0.1", broker.port());
    options.rate = 0.0;
    options.progress_every = Duration::from_secs(3600);
    options.drain_timeout = Duration::from_secs(20);
    options
}

/// Subscribes to `#` at QoS 1 and forwards every message; returns once the
/// subscription is acknowledged, so nothing published afterwards is missed.
async fn subscribe_all(broker: &Mosquitto, id: &str) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let mut mqtt = MqttOptions::new(id, "127.0.0.1", broker.port());
    mqtt.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(mqtt, 100);
    client.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client; // dropping it would end the event loop
        let mut subscribed = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = subscribed.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic, p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .expect("subscribed within 10 s")
        .unwrap();
    rx
}

/// Receives `n` messages, or fails after `within`.
async fn receive(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    n: usize,
    within: Duration,
) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(message)) => got.push(message),
            _ => panic!("received {} of {n} messages within {within:?}", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_once_and_in_order_per_device_at_qos_1() {
    // Unlimited queue for the subscriber: mosquitto drops beyond 1000 by default.
    let broker = Mosquitto::start_with("max_queued_messages 0\n");
    let mut rx = subscribe_all(&broker, "test-subscriber").await;

    const COUNT: u64 = 3_000;
    let mut opts = options(&broker);
    opts.fleet.devices = 12;
    opts.fleet.seed = 7;
    opts.count = Some(COUNT);
    opts.qos = 1;
    opts.connections = 2;
    let summary = simulate::run(opts, std::future::pending()).await.unwrap();
    assert_eq!(
        (
            summary.messages,
            summary.sent,
            summary.acked,
            summary.errors
        ),
        (COUNT, COUNT, COUNT, 0),
        "{summary}"
    );

    let received = receive(&mut rx, COUNT as usize, Duration::from_secs(30)).await;
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (topic, payload) in &received {
        let json: Value = serde_json::from_slice(payload).unwrap_or_else(|e| {
            panic!(
                "{topic}: invalid JSON ({e}): {}",
                String::from_utf8_lossy(payload)
            )
        });
        let (kind, id, _) = match topic.split('/').collect::<Vec<_>>()[..] {
            [kind, id, "telemetry"] => (kind, id, ()),
            _ => panic!("unexpected topic {topic}"),
        };
        let field = if kind == "vending" {
            "machine"
        } else {
            "robot"
        };
        assert_eq!(json[field], id, "{topic}: {json}");
        seqs.entry(id.to_owned())
            .or_default()
            .push(json["seq"].as_u64().expect("a seq number"));
    }
    assert_eq!(seqs.len(), 12, "devices: {:?}", seqs.keys());
    for (device, seq) in &seqs {
        let expected: Vec<u64> = (1..=COUNT / 12).collect();
        assert_eq!(seq, &expected, "{device}: lost, duplicated or reordered");
    }
    // And no more than that.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err(), "more messages than published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_sends_every_message_with_no_acks() {
    let broker = Mosquitto::start();
    let mut opts = options(&broker);
    opts.qos = 0;
    opts.count = Some(500);
    let summary = simulate::run(opts, std::future::pending()).await.unwrap();
    assert_eq!(
        (summary.messages, summary.sent, summary.acked),
        (500, 500, 0),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_keeps_publishing_across_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let mut opts = options(&broker);
    opts.rate = 200.0;
    opts.duration = Some(Duration::from_secs(4));
    opts.drain_timeout = Duration::from_secs(2);
    let run = tokio::spawn(simulate::run(opts, std::future::pending()));

    tokio::time::sleep(Duration::from_secs(1)).await;
    let broker = tokio::task::spawn_blocking(move || {
        broker.restart();
        broker
    })
    .await
    .unwrap();
    // Messages flow again through the restarted broker.
    let mut rx = subscribe_all(&broker, "test-after-restart").await;
    receive(&mut rx, 10, Duration::from_secs(5)).await;

    let summary = run.await.unwrap().unwrap();
    assert!(summary.reconnects >= 1, "{summary}");
    assert!(
        summary.errors >= 1,
        "the lost connection is counted: {summary}"
    );
    // ~800 at 200/s for 4 s; a restart costs well under a second.
    assert!(summary.acked >= 500, "{summary}");
}

#[tokio::test]
async fn a_broker_that_refuses_the_client_is_a_clear_error() {
    // The later line wins over the harness's `allow_anonymous true`.
    let broker = Mosquitto::start_with("allow_anonymous false\n");
    let error = simulate::run(options(&broker), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(error, SimulateError::Rejected { .. }), "{error:?}");
    assert!(error.to_string().contains("--username"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_an_endless_run_with_a_summary() {
    let broker = Mosquitto::start();
    let mut opts = options(&broker);
    opts.rate = 20.0; // no --duration, no --count: until shut down
    let started = std::time::Instant::now();
    let summary = simulate::run(opts, tokio::time::sleep(Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!((5..=15).contains(&summary.acked), "{summary}");
    assert_eq!(summary.acked, summary.messages, "{summary}");
}

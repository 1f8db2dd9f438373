//! MQTT 5, end to end: the real `wasmgate` binary between real mosquittos
//! (which speak MQTT 5 and 3.1.1 on one port).
//!
//! - Upstream over MQTT 5: everything drains, through a broker restart too,
//!   and a message the cloud refuses (a PUBACK with a failure reason code)
//!   stays in the outbox until the cloud takes it.
//! - The local broker over MQTT 5: a trigger's `dedup_property` makes a
//!   device's redelivery (same user property id) run once, and a function
//!   sees the user properties of its message.

mod support;

use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::gateway::{wasmgate, BrokerMode, GatewayConfig, GatewayProcess};
use support::mosquitto::{Mosquitto, GATEWAY_SETTINGS};
use support::mqtt::{unique_id, wait_until, MqttClient};
use support::rig::{telemetry_topic, Summaries};

/// Longest a stream of results may pause before a test calls it a stall.
const STALL: Duration = Duration::from_secs(60);
const PERSISTENT: &str = "persistence true\npersistence_location {dir}/\n";

/// Telemetry with one sale (the vending example counts sales in KV).
fn vend(seq: u64) -> String {
    format!(
        r#"{{"ts":{seq},"temp_c":5.0,"stock":[{{"slot":"A1","count":9}}],"sale":{{"slot":"A1","price_cents":{}}}}}"#,
        100 + seq
    )
}

/// A gateway between a local mosquitto and an upstream one it reaches over
/// MQTT 5; the test's subscriber on the upstream one.
struct Setup {
    local: Mosquitto,
    cloud: Mosquitto,
    gateway: GatewayProcess,
    summaries: MqttClient,
    cloud_client_id: String,
}

impl Setup {
    #[track_caller]
    fn start(cloud_extra: &str) -> Setup {
        let local = Mosquitto::start_for_gateway();
        let cloud = Mosquitto::start_with(&format!("{GATEWAY_SETTINGS}{cloud_extra}"));
        let cloud_client_id = unique_id("gw-up");
        let mut config = GatewayConfig::vending(BrokerMode::External { port: local.port() });
        config.upstream = Some(format!(
            "host = \"127.0.0.1\"\nport = {}\nclient_id = {cloud_client_id:?}\nprotocol = \"5\"",
            cloud.port()
        ));
        // A persistent session: what the gateway sends while the subscriber
        // reconnects after a broker restart is queued for it.
        let summaries = MqttClient::connect_persistent(cloud.port(), &unique_id("cloud-sub"));
        summaries.subscribe("telemetry/vending/+");
        let gateway = GatewayProcess::start(&config);
        Setup {
            local,
            cloud,
            gateway,
            summaries,
            cloud_client_id,
        }
    }

    fn device(&self) -> MqttClient {
        MqttClient::connect(self.local.port(), "device")
    }

    fn diagnostics(&self) -> String {
        support::diagnostics(
            &self.gateway,
            &[("local", &self.local), ("upstream", &self.cloud)],
        )
    }

    /// Records summaries until `done`; fails the test on a stall.
    #[track_caller]
    fn collect(&self, summaries: &mut Summaries, done: impl FnMut(&Summaries) -> bool) {
        summaries.collect_from(&self.summaries, STALL, done, || self.diagnostics());
    }

    /// Whether the upstream mosquitto logged the gateway connecting with
    /// MQTT 5 (its connect line says `p5`; 3.1.1 is `p4`).
    fn gateway_spoke_mqtt_5(&self) -> bool {
        self.cloud.log().lines().any(|line| {
            line.contains("New client connected")
                && line.contains(&format!(" as {} (p5,", self.cloud_client_id))
        })
    }
}

#[test]
fn upstream_over_mqtt_5_delivers_every_result() {
    const N: u64 = 300;
    let setup = Setup::start("");
    let device = setup.device();
    for seq in 1..=N {
        device.publish(&telemetry_topic("vm-1"), vend(seq));
    }
    let mut summaries = Summaries::default();
    setup.collect(&mut summaries, |s| s.unique() as u64 == N);
    assert_eq!(summaries.of("vm-1"), (1..=N).collect());
    assert!(
        setup.gateway_spoke_mqtt_5(),
        "the gateway did not connect upstream with MQTT 5\n{}",
        setup.diagnostics()
    );
}

#[test]
fn upstream_over_mqtt_5_loses_nothing_when_the_broker_restarts_mid_stream() {
    const N: u64 = 3_000;
    let mut setup = Setup::start(PERSISTENT);
    let device = setup.device();
    let publisher = std::thread::spawn(move || {
        for seq in 1..=N {
            device.publish(&telemetry_topic("vm-1"), vend(seq));
        }
        device.wait_acked(Duration::from_secs(300));
    });
    let mut summaries = Summaries::default();
    setup.collect(&mut summaries, |s| s.unique() >= 300);
    // A clean stop: the persistent broker keeps the subscriber's session
    // and what is queued for it; the gateway's rows wait in its outbox.
    setup.cloud.restart();
    publisher.join().expect("the device");
    setup.collect(&mut summaries, |s| s.unique() as u64 == N);
    assert_eq!(summaries.of("vm-1"), (1..=N).collect(), "nothing lost");
    assert!(
        !setup
            .gateway
            .log_lines_with(&["upstream", "messages wait in the outbox"])
            .is_empty(),
        "the gateway never noticed the upstream broker going away\n{}",
        setup.diagnostics()
    );
    assert!(setup.gateway_spoke_mqtt_5(), "{}", setup.diagnostics());
}

/// The upstream ACL: anyone may subscribe, the gateway may publish only
/// vm-1's summaries at first.
const ACL_VM1_ONLY: &str = "topic read #\ntopic write telemetry/vending/vm-1\n";
const ACL_ALL: &str = "topic read #\ntopic write telemetry/vending/#\n";

/// An MQTT 5 broker that refuses a message says why in its PUBACK (here
/// mosquitto's ACL: "not authorized"). The gateway keeps each refused row,
/// logs and counts the refusal, and retries it with backoff; once the cloud
/// takes the topic (the ACL fixed and reloaded, no reconnect) the rows
/// arrive. Over 3.1.1 the same PUBACK would say nothing and the rows would
/// be gone.
#[test]
fn upstream_mqtt_5_refusals_keep_the_rows_until_the_broker_takes_them() {
    const N: u64 = 20;
    // mosquitto refuses to start without its ACL file, so it is written first.
    let acl_dir = tempfile::tempdir().expect("temp dir");
    let acl = acl_dir.path().join("acl");
    std::fs::write(&acl, ACL_VM1_ONLY).expect("write the ACL");
    let setup = Setup::start(&format!("acl_file {}\n", acl.display()));
    let device = setup.device();
    let mut summaries = Summaries::default();
    for seq in 1..=N {
        device.publish(&telemetry_topic("vm-2"), vend(seq));
        device.publish(&telemetry_topic("vm-1"), vend(seq));
    }
    setup.collect(&mut summaries, |s| s.of("vm-1").len() as u64 == N);
    let refused = |setup: &Setup| {
        setup
            .gateway
            .log_lines_with(&["broker refused a message", "not authorized (0x87)"])
    };
    assert!(
        wait_until(STALL, || refused(&setup).len() as u64 >= N),
        "{} refusals logged, expected at least {N}\n{}",
        refused(&setup).len(),
        setup.diagnostics()
    );
    assert!(summaries.of("vm-2").is_empty(), "the ACL let vm-2 through");
    // Each refused row comes back after its own, growing, delay: some are
    // refused again before the ACL changes.
    assert!(
        wait_until(STALL, || !setup
            .gateway
            .log_lines_with(&["broker refused a message", "refusals=2"])
            .is_empty()),
        "no row was retried\n{}",
        setup.diagnostics()
    );

    std::fs::write(&acl, ACL_ALL).expect("write the ACL");
    setup.cloud.reload();
    setup.collect(&mut summaries, |s| s.of("vm-2").len() as u64 == N);
    assert_eq!(summaries.of("vm-2"), (1..=N).collect(), "nothing lost");

    let mut setup = setup;
    let status = setup.gateway.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let totals = setup.gateway.log_lines_with(&["outbox totals"]);
    let counted: u64 = totals
        .last()
        .and_then(|line| line.split("refused=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refused count at shutdown: {totals:?}"));
    assert!(
        counted > N,
        "{counted} refusals counted; {N} rows were refused, some twice"
    );
}

/// A device speaking MQTT 5: publishes QoS 1 messages with user properties.
struct Device5 {
    client: rumqttc::v5::Client,
    published: AtomicUsize,
    acked: Arc<AtomicUsize>,
}

impl Device5 {
    #[track_caller]
    fn connect(port: u16) -> Device5 {
        let options = rumqttc::v5::MqttOptions::new(unique_id("device5"), "127.0.0.1", port);
        let (client, mut connection) = rumqttc::v5::Client::new(options, 1_000);
        let acked = Arc::new(AtomicUsize::new(0));
        let connected = Arc::new(AtomicUsize::new(0));
        std::thread::spawn({
            let (acked, connected) = (acked.clone(), connected.clone());
            move || {
                use rumqttc::v5::{Event, Incoming};
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                            connected.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Event::Incoming(Incoming::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
        });
        assert!(
            wait_until(Duration::from_secs(10), || connected.load(Ordering::SeqCst)
                > 0),
            "the MQTT 5 device could not connect"
        );
        Device5 {
            client,
            published: AtomicUsize::new(0),
            acked,
        }
    }

    fn publish(&self, topic: &str, payload: String, properties: &[(&str, &str)]) {
        let properties = PublishProperties {
            user_properties: properties
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        };
        self.published.fetch_add(1, Ordering::SeqCst);
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .expect("queue the publish");
    }

    #[track_caller]
    fn wait_acked(&self) {
        let published = self.published.load(Ordering::SeqCst);
        assert!(
            wait_until(Duration::from_secs(30), || self
                .acked
                .load(Ordering::SeqCst)
                >= published),
            "the broker did not acknowledge every publish"
        );
    }
}

impl Drop for Device5 {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
    }
}

/// The vending function's counters, as an operator reads them.
#[track_caller]
fn kv_totals(gateway: &GatewayProcess) -> BTreeMap<String, i64> {
    let config = gateway.config_path().display().to_string();
    let out = wasmgate(
        &["kv", "list", "vending", "--config", &config],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "kv list: {}", out.stderr);
    out.stdout
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .filter(|(key, _)| key.starts_with("vm-1/"))
        .filter_map(|(key, value)| {
            let number = value.split_whitespace().next()?.parse().ok()?;
            Some((key.to_owned(), number))
        })
        .collect()
}

/// `dedup_property`: a device that resends a message (same `msg-id` user
/// property) gets one result and one KV increment; messages without the
/// property are not deduplicated at all.
#[test]
fn a_dedup_property_runs_a_resent_message_once() {
    let local = Mosquitto::start_for_gateway();
    let mut config = GatewayConfig::vending(BrokerMode::External { port: local.port() });
    config.broker_protocol = Some("5".into());
    config.dedup_property = Some("msg-id".into());
    let mut gateway = GatewayProcess::start(&config);
    // No [upstream]: summaries come out on the local broker.
    let summaries = MqttClient::connect(local.port(), "summaries");
    summaries.subscribe("telemetry/vending/vm-1");
    let device = Device5::connect(local.port());
    let topic = telemetry_topic("vm-1");
    device.publish(&topic, vend(1), &[("msg-id", "m-1")]);
    device.publish(&topic, vend(1), &[("msg-id", "m-1"), ("retry", "1")]);
    device.publish(&topic, vend(2), &[("source", "vm-1"), ("msg-id", "m-2")]);
    device.publish(&topic, vend(3), &[]);
    device.publish(&topic, vend(3), &[("other", "x")]);
    device.publish(&topic, vend(4), &[("msg-id", "m-4")]);
    device.publish(&topic, vend(2), &[("msg-id", "m-2")]);
    device.publish(&topic, vend(5), &[("msg-id", "m-5")]);
    device.wait_acked();

    // One function worker runs messages in arrival order: once ts 5 is out,
    // everything before it has been handled.
    let mut seen = Summaries::default();
    let finished = summaries.collect_until(STALL, |message| {
        seen.record(&message);
        seen.by_machine.get("vm-1").is_some_and(|v| v.contains(&5))
    });
    assert!(finished, "no summary for ts 5\n{}", gateway.logs());
    assert_eq!(
        seen.by_machine["vm-1"],
        [1, 2, 3, 3, 4, 5],
        "one result per id"
    );

    let status = gateway.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let vends = 6; // ts 1, 2, 3 twice (no id), 4, 5
    let cents: i64 = [1, 2, 3, 3, 4, 5].iter().map(|ts| 100 + ts).sum();
    assert_eq!(
        kv_totals(&gateway),
        BTreeMap::from([
            ("vm-1/sales_cents".to_owned(), cents),
            ("vm-1/vends".to_owned(), vends),
        ])
    );
}

/// A function that publishes its whole event envelope, as it read it, on
/// `echo/envelope`: the test decodes it the way any guest would.
const ECHO_WAT: &str = r#"
(module
  (import "wasmgate" "event_read" (func $event_read (param i32 i32) (result i32)))
  (import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "echo/envelope")
  (func (export "wasmgate_abi_version") (result i32) (i32.const 1))
  (func (export "wasmgate_handle") (param $len i32) (result i32)
    (drop (call $event_read (i32.const 1024) (i32.const 65536)))
    ;; flags 1: QoS 1, local broker
    (call $emit (i32.const 0) (i32.const 13) (i32.const 1024) (local.get $len) (i32.const 1))))
"#;

/// Over MQTT 5 a function sees its message's user properties, in order,
/// repeated names included.
#[test]
fn a_function_sees_the_user_properties_of_its_message() {
    let local = Mosquitto::start_for_gateway();
    let port = local.port();
    let gateway = GatewayProcess::start_toml(|dir| {
        let wasm = dir.join("echo.wasm");
        std::fs::write(&wasm, wat::parse_str(ECHO_WAT).expect("valid WAT")).expect("write wasm");
        format!(
            r#"gateway_id = "e2e"
data_dir = {data:?}

[broker]
mode = "external"
host = "127.0.0.1"
port = {port}
client_id = {client_id:?}
protocol = "5"

[[functions]]
name = "echo"
wasm = {wasm:?}
triggers = [{{ mqtt = "sensors/#" }}]

[functions.grants]
local = ["echo/#"]
"#,
            data = dir.join("data").display().to_string(),
            client_id = unique_id("gw"),
            wasm = wasm.display().to_string(),
        )
    });
    let echoes = MqttClient::connect(port, "echoes");
    echoes.subscribe("echo/envelope");
    let device = Device5::connect(port);
    device.publish(
        "sensors/t1",
        "21.5".into(),
        &[("unit", "celsius"), ("msg-id", "s-1"), ("unit", "si")],
    );
    let echo = echoes
        .next_message(STALL)
        .unwrap_or_else(|| panic!("no echo\n{}", gateway.logs()));
    let envelope = wasmgate_abi::Envelope::decode(&echo.payload).expect("an envelope");
    let wasmgate_abi::Event::Mqtt(message) = envelope.event else {
        panic!("not an MQTT event: {:?}", envelope.event)
    };
    assert_eq!(
        (message.topic, message.payload),
        ("sensors/t1", &b"21.5"[..])
    );
    let properties: Vec<(&str, &str)> = message
        .user_properties
        .iter()
        .map(|pair| pair.map(|p| (p.name, p.value)))
        .collect::<Result<_, _>>()
        .expect("well-formed properties");
    assert_eq!(
        properties,
        [("unit", "celsius"), ("msg-id", "s-1"), ("unit", "si")]
    );
}

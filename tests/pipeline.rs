//! The gateway as a user runs it: the real `wasmgate` binary with a config
//! file, devices publishing telemetry to a real broker (the embedded one, or
//! mosquitto), and the alerts and summaries the vending example emits read
//! back from that broker. Nothing is mocked.
//!
//! Most scenarios run against both brokers (`<scenario>::embedded`,
//! `<scenario>::mosquitto`). Those about restarts need mosquitto: the
//! embedded broker lives in the gateway's process and dies with it.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;
use support::gateway::{example_wasm, wasmgate, BrokerMode, GatewayConfig, GatewayProcess};
use support::mqtt::{free_port, wait_until, MqttClient};
use support::rig::{alert_topic, telemetry, telemetry_topic, Broker, Rig, Summaries};

/// For one message to make it through (debug build, busy CI machine).
const ONE: Duration = Duration::from_secs(30);
/// Longest a stream of results may pause before a test calls it a stall.
const STALL: Duration = Duration::from_secs(60);

/// Runs a scenario against each local broker, one test each; an attribute
/// (`#[ignore = ".."]`) may be given for either.
macro_rules! on_both_brokers {
    ($scenario:ident $(, embedded: #[$embedded:meta])? $(, mosquitto: #[$mosquitto:meta])?) => {
        mod $scenario {
            #[test]
            $(#[$embedded])?
            fn embedded() {
                super::$scenario(super::Broker::Embedded)
            }
            #[test]
            $(#[$mosquitto])?
            fn mosquitto() {
                super::$scenario(super::Broker::Mosquitto)
            }
        }
    };
}

on_both_brokers!(vending_telemetry_in_alerts_out);
on_both_brokers!(order_is_kept_per_topic);
on_both_brokers!(ten_thousand_messages_none_lost);
on_both_brokers!(bad_payloads_fail_visibly_and_gateway_keeps_going);
on_both_brokers!(sigterm_finishes_in_flight_work_and_exits_zero);

fn machines(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("vm-{i}")).collect()
}

/// Records summaries from `cloud` until `done` holds; `false` if they stop
/// coming for `idle` first.
#[track_caller]
fn collect_summaries(
    cloud: &MqttClient,
    idle: Duration,
    summaries: &mut Summaries,
    mut done: impl FnMut(&Summaries) -> bool,
) -> bool {
    if done(summaries) {
        return true;
    }
    cloud.collect_until(idle, |message| {
        summaries.record(&message);
        done(summaries)
    })
}

fn vending_telemetry_in_alerts_out(broker: Broker) {
    let rig = Rig::start(broker);
    let ops = rig.client("ops");
    ops.subscribe("vending/+/alert");
    let device = rig.client("vm-7");
    let topic = telemetry_topic("vm-7");

    device.publish(&topic, telemetry(1, 5.0));
    device.publish(&topic, telemetry(2, 9.5));
    // Alerts for one machine come out in order, so had the normal reading
    // (ts 1) raised one, it would come first.
    let alert = ops
        .next_message(ONE)
        .expect("an alert for the warm machine");
    assert_eq!(alert.topic, alert_topic("vm-7"));
    let json = alert.json();
    assert_eq!(json["machine"], "vm-7", "{json}");
    assert_eq!(json["ts"], 2, "the alert is for the warm reading: {json}");
    assert_eq!(json["temp_c"], 9.5, "{json}");
    assert_eq!(json["max_temp_c"], 8.0, "{json}");
    assert_eq!(json["too_warm"], true, "{json}");
    assert_eq!(json["door_open"], false, "{json}");
    assert_eq!(json["low_stock"], serde_json::json!([]), "{json}");

    device.publish(&topic, telemetry(3, 4.0));
    device.publish(
        &topic,
        r#"{"ts":4,"temp_c":4.0,"door_open":true,"stock":[{"slot":"A1","count":1},{"slot":"B2","count":7}]}"#,
    );
    let alert = ops.next_message(ONE).expect("an alert for the low slot");
    let json = alert.json();
    assert_eq!(json["ts"], 4, "normal telemetry raises no alert: {json}");
    assert_eq!(json["too_warm"], false, "{json}");
    assert_eq!(json["door_open"], true, "{json}");
    assert_eq!(json["low_stock"], serde_json::json!(["A1"]), "{json}");
}

/// Two workers, so topics run in parallel while each topic stays in order.
///
/// Against the embedded broker this finds a bug: the workers finish (and
/// ack) in a different order than the messages arrived, but MQTT 3.1.1
/// §4.6 requires PUBACKs in arrival order, and rumqttd enforces it ("out of
/// order ack", then it drops the connection and redelivers everything
/// unacked, again out of order). mosquitto tolerates it.
fn order_is_kept_per_topic(broker: Broker) {
    let rig = Rig::start_with(broker, |config| config.concurrency = Some(2));
    let cloud = rig.client("cloud");
    cloud.subscribe("telemetry/vending/+");
    let machines = machines(4);
    const PER_MACHINE: u64 = 250;
    let device = rig.client("fleet");
    // Interleaved, so the gateway's workers have several topics to run in parallel.
    for ts in 1..=PER_MACHINE {
        for machine in &machines {
            device.publish(&telemetry_topic(machine), telemetry(ts, 5.0));
        }
    }
    device.wait_acked(ONE);

    let mut summaries = Summaries::default();
    let total = machines.len() * PER_MACHINE as usize;
    let all = collect_summaries(&cloud, STALL, &mut summaries, |s| s.unique() == total);
    assert!(
        all,
        "{} of {total} summaries arrived; missing: {:?}\n{}",
        summaries.unique(),
        summaries.missing(&machines, 1..=PER_MACHINE),
        rig.diagnostics()
    );
    let in_order: Vec<u64> = (1..=PER_MACHINE).collect();
    for machine in &machines {
        assert_eq!(
            summaries.by_machine[machine], in_order,
            "summaries of {machine} out of order"
        );
    }
}

fn ten_thousand_messages_none_lost(broker: Broker) {
    let rig = Rig::start(broker);
    let cloud = rig.client("cloud");
    cloud.subscribe("telemetry/vending/+");
    let machines = machines(10);
    const PER_MACHINE: u64 = 1_000;
    // A device per machine, publishing at once.
    std::thread::scope(|scope| {
        for machine in &machines {
            let device = rig.client(machine);
            scope.spawn(move || {
                for ts in 1..=PER_MACHINE {
                    device.publish(&telemetry_topic(machine), telemetry(ts, 5.0));
                }
                device.wait_acked(STALL);
            });
        }
    });

    let mut summaries = Summaries::default();
    let total = machines.len() * PER_MACHINE as usize;
    let all = collect_summaries(&cloud, STALL, &mut summaries, |s| s.unique() == total);
    assert!(
        all,
        "{} of {total} summaries arrived; missing: {:?}\n{}",
        summaries.unique(),
        summaries.missing(&machines, 1..=PER_MACHINE),
        rig.diagnostics()
    );
    // At-least-once allows duplicates; in a calm run there should be none,
    // and never more than one broker in-flight window's worth.
    let duplicates = summaries.duplicates();
    eprintln!("{broker:?}: {total} messages, {duplicates} duplicate summaries");
    assert!(duplicates <= 100, "{duplicates} duplicate summaries");
}

/// Sequence numbers 1..=n as a set, to compare with what was seen.
fn seqs(n: u64) -> BTreeSet<u64> {
    (1..=n).collect()
}

/// A device that publishes `vending/vm-<1..=3>/telemetry` with a global
/// sequence number as `ts`, about 50 messages a second (well within what
/// even a debug build keeps up with), until stopped.
struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    published: std::thread::JoinHandle<u64>,
}

const STREAM_MACHINES: [&str; 3] = ["vm-1", "vm-2", "vm-3"];

impl Stream {
    fn start(device: MqttClient) -> Stream {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let published = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut seq = 0;
                while !stop.load(Ordering::SeqCst) {
                    seq += 1;
                    let machine = STREAM_MACHINES[seq as usize % STREAM_MACHINES.len()];
                    device.publish(&telemetry_topic(machine), telemetry(seq, 5.0));
                    std::thread::sleep(Duration::from_millis(20));
                }
                device.wait_acked(STALL);
                seq
            }
        });
        Stream { stop, published }
    }

    /// Stops publishing once the broker has acknowledged everything; returns
    /// how many messages were published.
    fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.published.join().expect("the publishing device")
    }
}

/// Records summaries until `more` new ones have arrived.
#[track_caller]
fn wait_for_more(rig: &Rig, cloud: &MqttClient, summaries: &mut Summaries, more: usize) {
    let at_least = summaries.unique() + more;
    let flowing = collect_summaries(cloud, STALL, summaries, |s| s.unique() >= at_least);
    assert!(
        flowing,
        "only {} summaries arrived\n{}",
        summaries.unique(),
        rig.diagnostics()
    );
}

/// The embedded broker keeps its sessions in the gateway's memory, so what
/// devices publish while the gateway is down is gone: only an external
/// broker (mosquitto, with `max_queued_messages 0`) can hold it.
#[test]
fn gateway_restart_while_devices_publish_loses_nothing() {
    let mut rig = Rig::start(Broker::Mosquitto);
    let cloud = rig.client("cloud");
    cloud.subscribe("telemetry/vending/+");
    let stream = Stream::start(rig.client("fleet"));
    let mut summaries = Summaries::default();

    wait_for_more(&rig, &cloud, &mut summaries, 100);
    let status = rig.gateway.stop();
    assert!(
        status.success(),
        "SIGTERM: {status}\n{}",
        rig.gateway.logs()
    );
    rig.gateway.restart();

    wait_for_more(&rig, &cloud, &mut summaries, 150);
    rig.gateway.kill();
    rig.gateway.restart();

    wait_for_more(&rig, &cloud, &mut summaries, 150);
    let published = stream.finish();
    let all = collect_summaries(&cloud, STALL, &mut summaries, |s| {
        s.unique() == published as usize
    });
    let missing: Vec<u64> = seqs(published)
        .difference(&summaries.seqs())
        .copied()
        .collect();
    assert!(
        all && missing.is_empty(),
        "{} of {published} messages lost across the restarts: {:?}...\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        rig.diagnostics()
    );
    // The SIGKILL may redeliver what was processed but not yet acked: at
    // most the broker's in-flight window (max_inflight_messages).
    let duplicates = summaries.duplicates();
    eprintln!("{published} messages across a SIGTERM and a SIGKILL; {duplicates} duplicates");
    assert!(duplicates <= 1_000, "{duplicates} duplicates");
}

/// With persistence off, a restarted mosquitto has forgotten every session
/// and subscription; what devices publish while it is down fails at the
/// device. What matters: the gateway reconnects, subscribes again, and new
/// messages are processed.
#[test]
fn broker_restart_gateway_reconnects_and_resumes() {
    let mut rig = Rig::start(Broker::Mosquitto);
    let stream = Stream::start(rig.client("fleet"));
    let cloud = rig.client("cloud");
    cloud.subscribe("telemetry/vending/+");
    let mut summaries = Summaries::default();
    let flowing = collect_summaries(&cloud, STALL, &mut summaries, |s| s.unique() >= 50);
    assert!(flowing, "only {} summaries arrived", summaries.unique());

    rig.mosquitto.as_mut().expect("mosquitto").restart();
    let reconnected = wait_until(ONE, || {
        !rig.gateway
            .log_lines_with(&["reconnected to the local broker", "vending"])
            .is_empty()
    });
    assert!(
        reconnected,
        "the gateway did not reconnect:\n{}",
        rig.gateway.logs()
    );
    let _ = stream.finish();
    rig.wait_until_flowing();

    let device = rig.client("vm-after");
    const AFTER: u64 = 200;
    for ts in 1..=AFTER {
        device.publish(&telemetry_topic("vm-after"), telemetry(ts, 5.0));
    }
    device.wait_acked(ONE);
    let mut after = Summaries::default();
    let machines = vec!["vm-after".to_owned()];
    let all = collect_summaries(&cloud, STALL, &mut after, |s| {
        s.by_machine
            .get("vm-after")
            .is_some_and(|seen| seen.iter().collect::<BTreeSet<_>>().len() == AFTER as usize)
    });
    assert!(
        all,
        "after the broker restart: {:?}\n{}",
        after.missing(&machines, 1..=AFTER),
        rig.gateway.logs()
    );
}

fn bad_payloads_fail_visibly_and_gateway_keeps_going(broker: Broker) {
    let mut rig = Rig::start(broker);
    let ops = rig.client("ops");
    ops.subscribe(&alert_topic("vm-bad"));
    let device = rig.client("vm-bad");
    let topic = telemetry_topic("vm-bad");

    device.publish(&topic, "the fridge is on fire");
    device.publish(&topic, vec![0xff, 0x00, 0xfe, 0x80, 0x7b, 0x22, 0x00]);
    // Valid JSON, warm enough to alert, but 1 MB.
    let huge = format!(
        r#"{{"ts":3,"temp_c":9.5,"note":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    device.publish(&topic, huge);
    device.publish(&topic, telemetry(4, 9.5));
    device.wait_acked(ONE);

    let alert = ops
        .next_message(ONE)
        .expect("the good message still alerts");
    assert_eq!(
        alert.json()["ts"],
        4,
        "only the good message alerts: {}",
        String::from_utf8_lossy(&alert.payload)
    );
    let failures = || {
        rig.gateway
            .log_lines_with(&["invocation failed", "vending", &topic])
    };
    assert!(
        wait_until(ONE, || failures().len() >= 3),
        "each bad payload logs a failure naming the function and topic:\n{}",
        rig.gateway.logs()
    );
    assert_eq!(failures().len(), 3, "{:#?}", failures());
    assert!(
        rig.gateway.is_running(),
        "the gateway exited:\n{}",
        rig.gateway.logs()
    );
}

fn sigterm_finishes_in_flight_work_and_exits_zero(broker: Broker) {
    // A queue a debug build works through well within the shutdown grace
    // (10 s); with the default 1024 the grace may run out, and then the
    // rest is left at the broker, which is right but not this test.
    let mut rig = Rig::start_with(broker, |config| config.queue = Some(50));
    let cloud = rig.client("cloud");
    cloud.subscribe("telemetry/vending/+");
    let machines = machines(4);
    const PER_MACHINE: u64 = 250;
    let device = rig.client("fleet");
    for ts in 1..=PER_MACHINE {
        for machine in &machines {
            device.publish(&telemetry_topic(machine), telemetry(ts, 5.0));
        }
    }
    device.wait_acked(STALL);
    let mut summaries = Summaries::default();
    let busy = collect_summaries(&cloud, STALL, &mut summaries, |s| s.unique() > 0);
    assert!(busy, "no summary arrived");

    let status = rig.gateway.stop();
    assert!(
        status.success(),
        "SIGTERM: {status}\n{}",
        rig.gateway.logs()
    );
    let log = rig.gateway.run_log();
    assert!(log.contains("gateway stopped"), "{log}");
    assert!(!log.contains("grace ran out"), "{log}");
    assert!(
        !log.contains("not acknowledged"),
        "emits left unacked:\n{log}"
    );
    // What it finished, it emitted: per machine, the summaries seen are a
    // gap-free prefix of what the device sent.
    summaries.record_all(cloud.drain_for(Duration::from_millis(200)));
    for (machine, seen) in &summaries.by_machine {
        let prefix: Vec<u64> = (1..=seen.len() as u64).collect();
        assert_eq!(seen, &prefix, "summaries of {machine}");
    }

    if broker == Broker::Mosquitto {
        // mosquitto held the rest; a clean stop acked exactly what was
        // done, so nothing comes twice either.
        rig.gateway.restart();
        let total = machines.len() * PER_MACHINE as usize;
        let all = collect_summaries(&cloud, STALL, &mut summaries, |s| s.unique() == total);
        assert!(
            all,
            "{} of {total} after the restart; missing: {:?}",
            summaries.unique(),
            summaries.missing(&machines, 1..=PER_MACHINE)
        );
        assert_eq!(summaries.duplicates(), 0, "a clean stop redelivers nothing");
    }
}

/// The enrichment example (the function `bench/compare.sh` races against
/// Node-RED): each device's object goes upstream as sent, with the site,
/// the time received and the temperature in Fahrenheit added; what is not a
/// JSON object fails visibly and the stream goes on.
#[test]
fn telemetry_enrich_forwards_each_object_upstream_with_fields_added() {
    let port = free_port();
    let gateway = GatewayProcess::start_toml(|dir| {
        format!(
            r#"gateway_id = "e2e"
data_dir = {data:?}

[broker]
mode = "embedded"
listen = "127.0.0.1:{port}"

[[functions]]
name = "enrich"
wasm = {wasm:?}
triggers = [{{ mqtt = "+/+/telemetry", qos = 1 }}]
[functions.grants]
upstream = ["telemetry/#"]
[functions.config]
site = "plant-7"
"#,
            data = dir.join("data").display().to_string(),
            wasm = example_wasm("telemetry_enrich.wasm").display().to_string(),
        )
    });
    let cloud = MqttClient::connect(port, "cloud");
    cloud.subscribe("telemetry/#");
    let device = MqttClient::connect(port, "vm-7");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    device.publish("vending/vm-7/telemetry", "[1, 2]");
    device.publish(
        "vending/vm-7/telemetry",
        r#"{"machine":"vm-7","seq":2,"temp_c":9.5,"stock":[{"slot":"A1","count":1}]}"#,
    );
    device.publish("robots/r-2/telemetry", r#"{"robot":"r-2","seq":3}"#);

    let first = cloud
        .next_message(ONE)
        .unwrap_or_else(|| panic!("no enriched message; log:\n{}", gateway.logs()));
    assert_eq!(first.topic, "telemetry/vending/vm-7");
    let json = first.json();
    assert_eq!(json["seq"], 2, "the array was not forwarded: {json}");
    assert_eq!(json["machine"], "vm-7", "{json}");
    assert_eq!(json["stock"][0]["slot"], "A1", "{json}");
    assert_eq!(json["site"], "plant-7", "{json}");
    assert_eq!(json["temp_f"], 49.1, "{json}");
    let received = json["received_ms"].as_u64().expect("received_ms");
    assert!(received >= before, "received_ms {received} < {before}");

    let second = cloud.next_message(ONE).expect("the robot's message");
    assert_eq!(second.topic, "telemetry/robots/r-2");
    let json = second.json();
    assert_eq!(json["robot"], "r-2", "{json}");
    assert!(json.get("temp_f").is_none(), "no temp_c, no temp_f: {json}");
    // The guest says why; the gateway keeps the event as a dead letter.
    let refused = wait_until(ONE, || {
        !gateway
            .log_lines_with(&["ERROR", "telemetry is not a JSON object", "vending/vm-7"])
            .is_empty()
            && !gateway
                .log_lines_with(&["moved to the dead-letter queue", "enrich"])
                .is_empty()
    });
    assert!(
        refused,
        "the array's failure is not logged:\n{}",
        gateway.logs()
    );
}

/// The test config, with `broker_extra` added to `[broker]`, and the given module and filter.
fn config_with(broker_extra: &str, wasm: &str, filter: &str) -> String {
    format!(
        r#"gateway_id = "e2e"

[broker]
mode = "embedded"
listen = "127.0.0.1:1"
{broker_extra}

[[functions]]
name = "vending"
wasm = "{wasm}"
triggers = [{{ mqtt = "{filter}" }}]
"#
    )
}

fn vending_wasm() -> String {
    support::gateway::example_wasm("vending_telemetry.wasm")
        .display()
        .to_string()
}

/// The line of `text` that contains `needle`, 1-based.
#[track_caller]
fn line_of(text: &str, needle: &str) -> usize {
    1 + text
        .lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the config"))
}

/// Runs `config check` and `run` on `text`; each must exit 2 and report
/// every `(text on the line, words in the message)` as `FILE:LINE: ...`.
#[track_caller]
fn assert_config_rejected(text: &str, problems: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("write config");
    let file = path.to_str().expect("utf-8 path");
    for args in [["config", "check", file], ["run", "--config", file]] {
        let out = wasmgate(&args, ONE);
        let command = format!("wasmgate {}", args.join(" "));
        assert_eq!(out.code, Some(2), "{command}: {}", out.stderr);
        for (on_line, says) in problems {
            let prefix = format!("{file}:{}:", line_of(text, on_line));
            assert!(
                out.stderr
                    .lines()
                    .any(|l| l.starts_with(&prefix) && l.contains(says)),
                "{command}: `{says}` not reported at {prefix}; stderr:\n{}",
                out.stderr
            );
        }
        let count = match problems.len() {
            1 => "1 problem".to_owned(),
            n => format!("{n} problems"),
        };
        assert!(
            out.stderr.contains(&format!("{file}: {count}")),
            "{command}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("gateway running"),
            "{command} started anyway: {}",
            out.stderr
        );
    }
}

#[test]
fn bad_config_gives_a_clear_message_and_exit_code_2() {
    let wasm = vending_wasm();
    // A typo'd setting.
    assert_config_rejected(
        &config_with("colour = \"blue\"", &wasm, "vending/+/telemetry"),
        &[("colour", "unknown field `colour`")],
    );
    // A topic filter MQTT does not allow.
    assert_config_rejected(
        &config_with("", &wasm, "vending/#/telemetry"),
        &[("vending/#/telemetry", "invalid topic filter")],
    );
    // A module that is not there.
    assert_config_rejected(
        &config_with("", "/nonexistent/vending.wasm", "vending/+/telemetry"),
        &[(
            "/nonexistent/vending.wasm",
            "cannot read /nonexistent/vending.wasm",
        )],
    );
}

#[test]
fn every_problem_in_a_config_is_reported_at_once() {
    assert_config_rejected(
        &config_with("", "/nonexistent/vending.wasm", "vending/#/telemetry"),
        &[
            ("vending/#/telemetry", "invalid topic filter"),
            (
                "/nonexistent/vending.wasm",
                "cannot read /nonexistent/vending.wasm",
            ),
        ],
    );
}

/// The example config the tests use is itself valid: `config check` says ok.
#[test]
fn the_test_config_passes_config_check() {
    let config = GatewayConfig::vending(BrokerMode::Embedded { port: 1883 });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config.to_toml(&dir.path().join("data"))).expect("write config");
    let out = wasmgate(
        &["config", "check", path.to_str().expect("utf-8 path")],
        ONE,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("ok (1 function)"), "{}", out.stdout);
}

#[test]
fn a_board_profile_is_checked_and_an_unknown_board_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        config_with("", &vending_wasm(), "vending/+/telemetry"),
    )
    .expect("write config");
    let file = path.to_str().expect("utf-8 path");

    let out = wasmgate(&["config", "check", file, "--board", "rpi3-32"], ONE);
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    let out = wasmgate(&["config", "check", file, "--board", "pi9"], ONE);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown board \"pi9\"") && out.stderr.contains("rpi4-64"),
        "the error lists the known boards: {}",
        out.stderr
    );
}

/// A config with 22 mistakes of every sort (unknown fields at three depths,
/// wrong types, values out of range, bad filters, a duplicate name, missing
/// files, options of the other broker mode) needed three runs of `config
/// check` to show them all (5, then 1, then 11): schema errors hid the
/// checks of everything else. One run reports every one, each on its line.
#[test]
fn twenty_two_mistakes_are_reported_in_one_run() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/support/many-mistakes.toml");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::copy(&config, &path).expect("copy the config");
    let out = wasmgate(&["config", "check", path.to_str().unwrap()], ONE);
    assert_eq!(out.code, Some(2), "{out:?}");
    let expected: &[(usize, &str)] = &[
        (1, "gateway_id: invalid value \"bad id!\""),
        (3, "colour: unknown field"),
        (7, "broker.listen: invalid listen address"),
        (8, "broker.port: `port` has no effect"),
        (9, "broker.max_retained: invalid type"),
        (12, "store.group_commit_ms: 50000 is out of range"),
        (13, "store.synchronous: unknown variant `sometimes`"),
        (16, "functions[0].name: invalid value \"Vending\""),
        (17, "functions[0].wasm: cannot read "),
        (18, "functions[0].triggers[0].mqtt: invalid topic filter"),
        (18, "functions[0].triggers[0].qos: 2 is out of range"),
        (19, "functions[0].timeout: unknown field `timeout`"),
        (22, "functions[0].limits.fuel: invalid type"),
        (23, "functions[0].limits.memory_mb: 99999 is out of range"),
        (24, "functions[0].limits.concurrency: 0 is out of range"),
        (27, "functions[0].grants.local[0]: invalid topic filter"),
        (31, "functions[1].wasm: cannot read "),
        (
            32,
            "functions[1].triggers: a function needs at least one trigger",
        ),
        (34, "functions[1].retry.attempts: 1000 is out of range"),
        (35, "functions[1].retry.bogus: unknown field `bogus`"),
        (38, "functions[2].name: duplicate function name \"robot\""),
        (39, "functions[2].wasm: cannot read "),
    ];
    let lines: Vec<&str> = out.stderr.lines().collect();
    for (line, text) in expected {
        let at = format!("gateway.toml:{line}: {text}");
        assert!(
            lines.iter().any(|l| l.contains(&at)),
            "missing {at:?} in:\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.contains(&format!("{} problems", expected.len())),
        "{}",
        out.stderr
    );
}

/// The default config ran vending-telemetry, which emits upstream, without
/// `grants.upstream`: `config check` said ok and every message went to the
/// dead letters. And it named the example module by a path inside the
/// repository, so outside it the config did not even check. Now `config
/// init` in an empty directory writes a config and the module it names,
/// and both run the example cleanly: alert and summary out, no dead letter.
#[test]
fn the_default_config_runs_its_example_cleanly_in_an_empty_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    let file = path.to_str().expect("utf-8 path");
    let out = wasmgate(&["config", "init", file], ONE);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(dir
        .path()
        .join("functions/vending_telemetry.wasm")
        .is_file());
    let out = wasmgate(&["config", "check", file], ONE);
    assert_eq!(out.code, Some(0), "{out:?}");

    // The test needs a port of its own; everything else is as written.
    let port = free_port();
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "mode = \"embedded\"",
        &format!("mode = \"embedded\"\nlisten = \"127.0.0.1:{port}\""),
        1,
    );
    let mut gateway = GatewayProcess::start_toml(|gateway_dir| {
        std::fs::create_dir_all(gateway_dir.join("functions")).unwrap();
        std::fs::copy(
            dir.path().join("functions/vending_telemetry.wasm"),
            gateway_dir.join("functions/vending_telemetry.wasm"),
        )
        .unwrap();
        text.replace(
            "data_dir = \"./wasmgate-data\"",
            &format!(
                "data_dir = {:?}",
                gateway_dir.join("data").display().to_string()
            ),
        )
    });
    let watcher = MqttClient::connect(port, "watcher");
    watcher.subscribe("vending/+/alert");
    watcher.subscribe("telemetry/vending/+");
    let device = MqttClient::connect(port, "vm-17");
    device.publish(&telemetry_topic("vm-17"), telemetry(1, 9.4));
    let mut topics = BTreeSet::new();
    let both = watcher.collect_until(ONE, |m| {
        topics.insert(m.topic.clone());
        topics.len() == 2
    });
    assert!(both, "got {topics:?}:\n{}", gateway.logs());
    assert!(gateway.stop().success());
    let totals = gateway.log_lines_with(&["function totals", "vending"]);
    assert!(
        totals
            .iter()
            .any(|l| l.contains("succeeded=1") && l.contains("dead_letters=0")),
        "{totals:?}"
    );
}

/// A denied emit was a warning that did not say what to do; it is an error
/// that names the grant to add.
#[test]
fn a_denied_emit_is_an_error_that_names_the_grant_to_add() {
    let port = free_port();
    let gateway = GatewayProcess::start_toml(|dir| vending_on(dir, port, false));
    let device = MqttClient::connect(port, "vm-1");
    device.publish(&telemetry_topic("vm-1"), telemetry(1, 5.0));
    let named = wait_until(ONE, || {
        gateway
            .log_lines_with(&["ERROR", "denied", "grants.upstream = [\"telemetry/#\"]"])
            .len()
            == 1
    });
    assert!(named, "{}", gateway.logs());
}

/// The config of a gateway on `port` running the vending example, with the
/// upstream grant when `granted`, else without it (every emit denied).
fn vending_on(dir: &std::path::Path, port: u16, granted: bool) -> String {
    format!(
        r#"data_dir = {data:?}
[broker]
listen = "127.0.0.1:{port}"
[[functions]]
name = "vending"
wasm = {wasm:?}
triggers = [{{ mqtt = "vending/+/telemetry" }}]
{grants}
"#,
        data = dir.join("data").display().to_string(),
        wasm = vending_wasm(),
        grants = if granted {
            r#"grants = { local = ["vending/+/alert"], upstream = ["telemetry/#"] }"#
        } else {
            ""
        },
    )
}

/// SIGHUP (`systemctl reload`) killed the daemon at once, with no totals;
/// it applies the config file again (unchanged here: no changes) and goes
/// on (tests/apply.rs has it change things). Its log, written to a file
/// with colour allowed (NO_COLOR empty), has no colour codes in it.
#[test]
fn sighup_applies_the_config_again_and_the_gateway_goes_on() {
    let port = free_port();
    let mut gateway = GatewayProcess::start_toml_with(&[], &[("NO_COLOR", "")], |dir| {
        vending_on(dir, port, true)
    });
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gateway.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let said = wait_until(ONE, || {
        !gateway
            .log_lines_with(&["INFO", "SIGHUP: config applied", "no changes"])
            .is_empty()
    });
    assert!(said, "{}", gateway.logs());
    assert!(gateway.is_running(), "{}", gateway.logs());

    let watcher = MqttClient::connect(port, "watcher");
    watcher.subscribe("telemetry/#");
    let device = MqttClient::connect(port, "vm-3");
    device.publish(&telemetry_topic("vm-3"), telemetry(1, 9.4));
    assert!(
        watcher.collect_until(ONE, |_| true),
        "the gateway still runs its functions after SIGHUP:\n{}",
        gateway.logs()
    );
    assert!(gateway.stop().success());
    assert!(
        !gateway
            .log_lines_with(&["function totals", "succeeded=1"])
            .is_empty(),
        "{}",
        gateway.logs()
    );
    let log = gateway.logs();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
}

/// `--log-format json`: every line the gateway and its broker process print
/// is one JSON object, and a function's lines carry what finds them again.
#[test]
fn json_logs_are_one_object_per_line_with_function_version_request_and_trigger() {
    let port = free_port();
    let mut gateway = GatewayProcess::start_toml_with(&["--log-format", "json"], &[], |dir| {
        vending_on(dir, port, false)
    });
    let device = MqttClient::connect(port, "vm-4");
    device.publish(&telemetry_topic("vm-4"), telemetry(1, 5.0));
    let denied = wait_until(ONE, || {
        !gateway.log_lines_with(&["denied", "ERROR"]).is_empty()
    });
    assert!(denied, "{}", gateway.logs());
    assert!(gateway.stop().success());
    let log = gateway.run_log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}\n{log}"))
        })
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["message"].is_string()));
    assert!(
        lines.iter().any(|l| l["message"] == "gateway running"),
        "{log}"
    );
    let denied = lines
        .iter()
        .find(|l| {
            l["level"] == "ERROR" && l["message"].as_str().is_some_and(|m| m.contains("denied"))
        })
        .expect("the denied emit's line");
    assert_eq!(denied["function"], "vending", "{denied}");
    assert!(
        denied["version"].as_str().is_some_and(|v| v.len() == 12),
        "{denied}"
    );
    assert!(denied["request_id"].as_u64().is_some(), "{denied}");
    assert_eq!(denied["trigger"], telemetry_topic("vm-4"), "{denied}");
}

//! Hostile input and field faults against the real binary: nothing a device,
//! a function or a fault does may take the gateway down, lose a message it
//! acknowledged, or grow its memory without bound. Each test here was first
//! seen failing on the build before its fix.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::gateway::{wasmgate, BrokerMode, GatewayConfig, GatewayProcess};
use support::mosquitto::{Mosquitto, GATEWAY_SETTINGS};
use support::mqtt::{free_port, wait_until, MqttClient};
use support::rig::{telemetry, telemetry_topic};
use support::tls::{device_tls, Ca};

/// For one message to make it through (debug build, busy CI machine).
const ONE: Duration = Duration::from_secs(30);

/// An MQTT 3.1.1 CONNECT for `client_id` (keep-alive 60 s).
fn connect_packet(client_id: &str, clean: bool) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        if clean { 0x02 } else { 0 },
        0,
        60,
    ];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Closes `stream` with a TCP reset rather than a FIN, as a device does
/// whose Wi-Fi dropped and whose stack gave up.
fn reset(stream: TcpStream) {
    let socket = socket2::Socket::from(stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(socket);
}

/// The embedded broker's process id, from the gateway's log.
fn broker_pids(gateway: &GatewayProcess) -> Vec<u32> {
    gateway
        .log_lines_with(&["embedded broker"])
        .iter()
        .filter(|l| l.contains("listening") || l.contains("running again"))
        .filter_map(|l| {
            l.split("pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[track_caller]
fn assert_message_flows(port: u16, gateway: &GatewayProcess, ts: u64) {
    let cloud = MqttClient::connect(port, "cloud");
    cloud.subscribe("telemetry/vending/+");
    let device = MqttClient::connect(port, "device");
    device.publish(&telemetry_topic("vm-1"), telemetry(ts, 5.0));
    let got = cloud.collect_until(ONE, |m| m.json()["ts"].as_u64() == Some(ts));
    assert!(
        got,
        "message {ts} did not come through; gateway log:\n{}",
        gateway.logs()
    );
}

/// The bug: rumqttd 0.20 kept a will-message sender per client id and
/// `unwrap`ped a send on it when the same id connected again; a connection
/// that ended before its CONNACK left a sender with no receiver, so the
/// next connect with that id panicked, and with `panic = "abort"` the
/// broker (then the whole gateway) died.
#[test]
fn a_device_that_reconnects_with_its_own_id_never_takes_the_broker_down() {
    let port = free_port();
    let gateway = GatewayProcess::start(&GatewayConfig::vending(BrokerMode::Embedded { port }));
    let first = broker_pids(&gateway);
    assert_eq!(first.len(), 1, "{}", gateway.logs());
    for round in 0..150 {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            // The broker is gone (the bug) or busy restarting: the asserts below say which.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = stream.write_all(&connect_packet("flaky-device", round % 3 == 0));
        if round % 2 == 0 {
            // Reset before the broker's CONNACK can be written...
            reset(stream);
        } else {
            // ...or right after it.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut connack = [0u8; 4];
            let _ = stream.read_exact(&mut connack);
            reset(stream);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        gateway
            .log_lines_with(&["embedded broker exited"])
            .is_empty(),
        "the broker died during the reconnects:\n{}",
        gateway.logs()
    );
    assert_eq!(broker_pids(&gateway), first);
    assert_message_flows(port, &gateway, 42);
}

/// Whatever the next bug in the broker is, it takes only the broker down:
/// it runs in a process of its own, which the gateway starts again, and the
/// pipeline carries on as it would after an external broker's restart.
#[test]
fn the_gateway_outlives_its_broker_killed_under_load() {
    let port = free_port();
    let mut gateway = GatewayProcess::start(&GatewayConfig::vending(BrokerMode::Embedded { port }));
    let publishing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let publishing = publishing.clone();
        std::thread::spawn(move || {
            let device = MqttClient::connect(port, "busy-device");
            let mut ts = 1_000;
            while publishing.load(std::sync::atomic::Ordering::SeqCst) {
                device.publish(&telemetry_topic("vm-2"), telemetry(ts, 5.0));
                ts += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    for kill in 1..=3 {
        std::thread::sleep(Duration::from_millis(700));
        let pid = *broker_pids(&gateway).last().expect("a broker pid");
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let restarted = wait_until(ONE, || broker_pids(&gateway).len() > kill);
        assert!(
            restarted,
            "no restart after kill {kill}:\n{}",
            gateway.logs()
        );
        assert!(gateway.is_running(), "the gateway died with its broker");
    }
    publishing.store(false, std::sync::atomic::Ordering::SeqCst);
    load.join().expect("the load thread");
    assert_message_flows(port, &gateway, 7);
    let status = gateway.stop();
    assert!(status.success(), "{status}: {}", gateway.logs());
    let totals = gateway.log_lines_with(&["function totals", "vending"]);
    assert!(!totals.is_empty(), "{}", gateway.logs());
}

/// `concurrency = 100000` passed `config check`, then `run` panicked
/// creating threads. Every limit now has a maximum that `config check`
/// names, all in one pass.
#[test]
fn absurd_limits_are_refused_by_config_check_with_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = support::gateway::example_wasm("vending_telemetry.wasm");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[store]
group_commit_max = 0

[[functions]]
name = "vending"
wasm = {wasm:?}
triggers = [{{ mqtt = "vending/+/telemetry" }}]

[functions.limits]
concurrency = 100000
queue = 4000000
warm_instances = 1000
timeout_ms = 86400000
max_emit_bytes = 4194304
"#
        ),
    )
    .unwrap();
    let out = wasmgate(&["config", "check", path.to_str().unwrap()], ONE);
    assert_eq!(out.code, Some(2), "{out:?}");
    for field in [
        "concurrency",
        "queue",
        "warm_instances",
        "timeout_ms",
        "max_emit_bytes",
        "group_commit_max",
    ] {
        assert!(
            out.stderr.contains(field),
            "{field} not named:\n{}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("6 problems"), "{}", out.stderr);
}

/// With a dedup key, a copy of a message redelivered while the original's
/// effects wait for their group commit used to be acknowledged at once; a
/// crash before that commit then lost the message and its effects (1,999
/// of 6,000 in the report). Slow commits stand in for a slow SD card.
#[test]
fn a_redelivered_copy_is_not_acknowledged_before_its_original_commits() {
    let mut local = Mosquitto::start_with(&format!(
        "{GATEWAY_SETTINGS}persistence true\npersistence_location {{dir}}/\n"
    ));
    let mut config = GatewayConfig::vending(BrokerMode::External { port: local.port() });
    config.dedup_key = Some("ts".into());
    config.store = Some("group_commit_ms = 4000\ngroup_commit_max = 100000".into());
    let mut gateway = GatewayProcess::start(&config);
    let device = MqttClient::connect(local.port(), "device");
    let started = Instant::now();
    device.publish(&telemetry_topic("vm-9"), telemetry(99, 12.5));
    device.wait_acked(ONE);
    // The function has run; its commit waits out the 4 s window. The broker
    // restarts (it keeps the unacknowledged message), and redelivers it to
    // the reconnecting session: the copy.
    std::thread::sleep(Duration::from_millis(300));
    local.restart();
    let reconnected = wait_until(ONE, || {
        !gateway
            .log_lines_with(&["reconnected to the local broker"])
            .is_empty()
    });
    assert!(reconnected, "{}", gateway.logs());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        started.elapsed() < Duration::from_millis(3_500),
        "too slow to land inside the commit window ({:?}); the test proves nothing",
        started.elapsed()
    );
    // Power loss before the original commit.
    gateway.kill();
    gateway.restart();
    // The copy was not acknowledged, so the broker delivers it again and
    // its effects are kept this time.
    let kept = wait_until(ONE, || {
        let out = wasmgate(
            &[
                "kv",
                "--config",
                gateway.config_path().to_str().unwrap(),
                "get",
                "vending",
                "vm-9/last_temp_c",
            ],
            ONE,
        );
        out.code == Some(0)
    });
    assert!(kept, "the message's effects were lost:\n{}", gateway.logs());
}

/// A guest that logs a newline and a forged gateway line after it, then
/// terminal escapes (clear screen, red, BEL), and emits a payload and a KV
/// key with the same.
const FORGER: &str = r#"(module
  (import "wasmgate" "log" (func $log (param i32 i32 i32)))
  (import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "kv_put" (func $kv_put (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "ok\n2026-12-02T00:00:00.000000Z  INFO wasmgate::pipeline: FORGED gateway stopped\1b[2J\1b[31m\07")
  (data (i32.const 200) "out/forger")
  (func (export "wasmgate_abi_version") (result i32) i32.const 1)
  (func (export "wasmgate_handle") (param i32) (result i32)
    (call $log (i32.const 0) (i32.const 0) (i32.const 91))
    (drop (call $emit (i32.const 200) (i32.const 10) (i32.const 0) (i32.const 91) (i32.const 1)))
    (drop (call $kv_put (i32.const 0) (i32.const 91) (i32.const 0) (i32.const 3)))
    (i32.const 0)))"#;

#[test]
fn a_guest_cannot_forge_log_lines_or_drive_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("forger.wasm");
    std::fs::write(&wasm, wat::parse_str(FORGER).unwrap()).unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"mqtt": {"topic": "in/forger", "payload": "x"}}"#,
    )
    .unwrap();
    let clean = |text: &str, what: &str| {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{what} has raw terminal controls: {text:?}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("2026-12-02T00:00:00")),
            "{what} has a forged line: {text}"
        );
    };
    let out = wasmgate(
        &[
            "invoke",
            wasm.to_str().unwrap(),
            "--event",
            event.to_str().unwrap(),
        ],
        ONE,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    clean(&out.stdout, "invoke's report");
    clean(&out.stderr, "invoke's stderr");
    assert!(out.stdout.contains("ok\\n2026-12-02"), "{}", out.stdout);
    assert!(out.stdout.contains("\\u{1b}[2J"), "{}", out.stdout);

    // And in the daemon's log.
    let port = free_port();
    let gateway = GatewayProcess::start_toml(|dir| {
        format!(
            r#"data_dir = {data:?}
[broker]
listen = "127.0.0.1:{port}"
[[functions]]
name = "forger"
wasm = {wasm:?}
triggers = [{{ mqtt = "in/forger" }}]
"#,
            data = dir.join("data").display().to_string(),
            wasm = wasm.display().to_string(),
        )
    });
    let device = MqttClient::connect(port, "device");
    device.publish("in/forger", "x");
    let logged = wait_until(ONE, || !gateway.log_lines_with(&["FORGED"]).is_empty());
    assert!(logged, "{}", gateway.logs());
    clean(&gateway.logs(), "the gateway's log");
}

/// `invoke --event /dev/zero` read until memory ran out, and so did a
/// module path naming a device. Neither is a regular file: refused at once.
#[test]
fn files_that_never_end_are_refused_not_read() {
    let wasm = support::gateway::example_wasm("vending_telemetry.wasm");
    let event = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../functions/examples/vending-telemetry/event-hot.json");
    for (module, event, named) in [
        (
            wasm.to_str().unwrap(),
            "/dev/zero",
            "/dev/zero is not a regular file",
        ),
        (
            "/dev/zero",
            event.to_str().unwrap(),
            "/dev/zero is not a regular file",
        ),
    ] {
        let out = wasmgate(&["invoke", module, "--event", event], ONE);
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains(named), "{}", out.stderr);
    }
    // A config naming a device as a function's module fails config check.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[[functions]]\nname = \"f\"\nwasm = \"/dev/zero\"\ntriggers = [{ mqtt = \"a/b\" }]\n",
    )
    .unwrap();
    let out = wasmgate(&["config", "check", path.to_str().unwrap()], ONE);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("/dev/zero"), "{}", out.stderr);
    // And a config that is itself a device.
    let out = wasmgate(&["config", "check", "/dev/zero"], ONE);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
}

/// Emits a 150,000-byte message to `big/out` on every event.
const BIG_EMITTER: &str = r#"(module
  (import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  (data (i32.const 0) "big/out")
  (func (export "wasmgate_abi_version") (result i32) i32.const 1)
  (func (export "wasmgate_handle") (param i32) (result i32)
    (drop (call $emit (i32.const 0) (i32.const 7) (i32.const 1024) (i32.const 150000) (i32.const 1)))
    (i32.const 0)))"#;

/// One emit a broker refuses for good (over its packet size) used to stop
/// all local delivery: the outbox sent it first on every connection, the
/// broker hung up each time, and the healthy function's alerts waited
/// forever. It now goes to the dead-letter queue with the reason, and the
/// rows behind it go on. Over MQTT 5 the broker's CONNACK says its limit
/// and the row is moved at once; over 3.1.1 it is moved after the broker
/// hung up on it alone five times running.
#[test]
fn a_message_the_broker_never_takes_is_dead_lettered_and_the_rest_flow() {
    for protocol in ["5", "3.1.1"] {
        let local = Mosquitto::start_with(&format!("{GATEWAY_SETTINGS}max_packet_size 100000\n"));
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.wasm");
        std::fs::write(&big, wat::parse_str(BIG_EMITTER).unwrap()).unwrap();
        let vending = support::gateway::example_wasm("vending_telemetry.wasm");
        let port = local.port();
        let mut gateway = GatewayProcess::start_toml(|dir| {
            format!(
                r#"data_dir = {data:?}
[broker]
mode = "external"
host = "127.0.0.1"
port = {port}
protocol = "{protocol}"

[[functions]]
name = "big"
wasm = {big:?}
triggers = [{{ mqtt = "in/big" }}]

[[functions]]
name = "vending"
wasm = {vending:?}
triggers = [{{ mqtt = "vending/+/telemetry" }}]
[functions.grants]
upstream = ["telemetry/#"]
[functions.config]
max_temp_c = "8"
"#,
                data = dir.join("data").display().to_string(),
                big = big.display().to_string(),
                vending = vending.display().to_string(),
            )
        });
        let watcher = MqttClient::connect(port, "watcher");
        watcher.subscribe("vending/+/alert");
        let device = MqttClient::connect(port, "device");
        device.publish("in/big", "go");
        std::thread::sleep(Duration::from_millis(200));
        device.publish(&telemetry_topic("vm-3"), telemetry(5, 12.0));
        let alerted = watcher.collect_until(ONE, |m| m.topic.contains("vm-3"));
        assert!(
            alerted,
            "MQTT {protocol}: the alert behind the oversized message never came:\n{}",
            gateway.logs()
        );
        let out = wasmgate(
            &[
                "dlq",
                "--config",
                gateway.config_path().to_str().unwrap(),
                "list",
            ],
            ONE,
        );
        assert!(
            out.stdout.contains("big") && out.stdout.contains("undeliverable"),
            "MQTT {protocol}: {out:?}"
        );
        let status = gateway.stop();
        assert!(status.success());
        assert!(
            !gateway
                .log_lines_with(&["outbox totals", "undeliverable=1"])
                .is_empty(),
            "{}",
            gateway.logs()
        );
    }
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// 150 retained messages of 1.9 MB took the gateway to 436 MiB, never
/// freed. Retained state is bounded now (`broker.max_retained_mb`): past it
/// a retained message is delivered but not kept, and counted.
#[test]
fn retained_messages_cannot_pile_up_in_the_embedded_broker() {
    let port = free_port();
    let gateway = GatewayProcess::start_toml(|dir| {
        let wasm = support::gateway::example_wasm("vending_telemetry.wasm");
        format!(
            r#"data_dir = {data:?}
[broker]
listen = "127.0.0.1:{port}"
max_retained_mb = 8
[[functions]]
name = "vending"
wasm = {wasm:?}
triggers = [{{ mqtt = "vending/+/telemetry" }}]
[functions.grants]
upstream = ["telemetry/#"]
"#,
            data = dir.join("data").display().to_string(),
            wasm = wasm.display().to_string(),
        )
    });
    let broker = *broker_pids(&gateway).last().expect("a broker pid");
    let before = rss_kib(broker);
    let device = MqttClient::connect(port, "camera");
    let still = vec![b'j'; 1_900_000];
    for i in 0..60 {
        device.publish_retained(&format!("cameras/cam-{i}/still"), still.clone());
        if i % 10 == 9 {
            device.wait_acked(ONE);
        }
    }
    device.wait_acked(ONE);
    let after = rss_kib(broker);
    let viewer = MqttClient::connect(port, "viewer");
    viewer.subscribe("cameras/+/still");
    let kept = viewer.drain_for(Duration::from_secs(3)).len();
    eprintln!("retained: {kept} kept of 60; broker RSS {before} -> {after} KiB");
    assert!((1..=4).contains(&kept), "{kept} retained messages kept");
    // 60 x 1.9 MB would be 109 MiB retained, twice that with read buffers.
    assert!(
        after < before + 48 * 1024,
        "the broker grew from {before} to {after} KiB"
    );
    assert_eq!(
        broker_pids(&gateway).last(),
        Some(&broker),
        "{}",
        gateway.logs()
    );
}

/// After a failed read of the dedup table, the message was left without
/// an ack and its ticket never done, so every later ack of its session
/// waited for a reconnect. The read is retried now, as a commit is, and the
/// stream goes on once the database answers again. The failure here: the
/// table is dropped under the running gateway, then made again.
#[test]
fn a_failed_dedup_read_holds_up_nothing_once_the_database_answers() {
    let port = free_port();
    let mut config = GatewayConfig::vending(BrokerMode::Embedded { port });
    config.dedup_key = Some("ts".into());
    let mut gateway = GatewayProcess::start(&config);
    let db = gateway.dir().join("data/wasmgate.db");
    let sqlite = |sql: &str| {
        let out = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg(".timeout 5000")
            .arg(sql)
            .output()
            .expect("run sqlite3");
        assert!(out.status.success(), "{sql}: {out:?}");
    };
    let cloud = MqttClient::connect(port, "cloud");
    cloud.subscribe("telemetry/vending/+");
    let device = MqttClient::connect(port, "device");
    device.publish(&telemetry_topic("vm-5"), telemetry(1, 5.0));
    assert!(cloud.collect_until(ONE, |m| m.json()["ts"].as_u64() == Some(1)));

    sqlite("DROP TABLE dedup;");
    device.publish(&telemetry_topic("vm-5"), telemetry(2, 5.0));
    let failing = wait_until(ONE, || {
        !gateway
            .log_lines_with(&["cannot check the dedup id"])
            .is_empty()
    });
    assert!(failing, "{}", gateway.logs());
    sqlite(
        "CREATE TABLE dedup (function TEXT NOT NULL, key TEXT NOT NULL, seen_ms INTEGER NOT NULL, \
         PRIMARY KEY (function, key)) WITHOUT ROWID; CREATE INDEX dedup_by_age ON dedup (seen_ms);",
    );
    device.publish(&telemetry_topic("vm-5"), telemetry(3, 5.0));
    let mut seen = BTreeSet::new();
    let both = cloud.collect_until(ONE, |m| {
        seen.extend(m.json()["ts"].as_u64());
        seen.contains(&2) && seen.contains(&3)
    });
    assert!(both, "got {seen:?}:\n{}", gateway.logs());
    let status = gateway.stop();
    assert!(status.success());
    let totals = gateway.log_lines_with(&["function totals", "received=3"]);
    assert!(
        totals.iter().any(|l| l.contains("acked=3")),
        "every message acknowledged: {totals:?}\n{}",
        gateway.logs()
    );
}

/// Spins about 200,000 loop turns per event (a few ms): a slow function.
const SLOW: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "wasmgate_abi_version") (result i32) i32.const 1)
  (func (export "wasmgate_handle") (param i32) (result i32) (local i32)
    (local.set 1 (i32.const 200000))
    (loop (local.set 1 (i32.sub (local.get 1) (i32.const 1))) (br_if 0 (local.get 1)))
    (i32.const 0)))"#;

/// The buffer between a session and its function's queue was unbounded, on
/// the belief that the broker keeps to its in-flight window; a broker that
/// does not (mosquitto with `max_inflight_messages 0`) pushed everything at
/// a slow function and the gateway held it all in memory. Now the session
/// stops reading when the buffer is full, and TCP holds the broker back.
#[test]
fn a_broker_that_ignores_its_window_cannot_fill_the_gateways_memory() {
    let local = Mosquitto::start_with("max_queued_messages 0\nmax_inflight_messages 0\n");
    let port = local.port();
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("slow.wasm");
    std::fs::write(&slow, wat::parse_str(SLOW).unwrap()).unwrap();
    let mut gateway = GatewayProcess::start_toml(|dir| {
        format!(
            r#"data_dir = {data:?}
[broker]
mode = "external"
host = "127.0.0.1"
port = {port}
[[functions]]
name = "slow"
wasm = {slow:?}
triggers = [{{ mqtt = "flood/+" }}]
[functions.limits]
queue = 256
"#,
            data = dir.join("data").display().to_string(),
            slow = slow.display().to_string(),
        )
    });
    let pid = gateway.pid();
    let before = rss_kib(pid);
    let device = MqttClient::connect(port, "flooder");
    let payload = vec![b'x'; 10_000];
    for i in 0..20_000 {
        device.publish(&format!("flood/{}", i % 8), payload.clone());
    }
    device.wait_acked(Duration::from_secs(120));
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("flood of 200 MB at a slow function: gateway RSS {before} -> at most {peak} KiB");
    // Two queues' worth of 10 KB messages is 5 MB; 200 MB were sent.
    assert!(
        peak < before + 40 * 1024,
        "the gateway grew from {before} to {peak} KiB"
    );
    assert!(gateway.is_running());
    gateway.kill();
}

/// Connections from the LAN that never send CONNECT were held 60 s, with
/// 65,536 file descriptors allowed: a connect flood could exhaust them and
/// take the room the gateway's own sessions needed. Now a silent connection
/// is closed after 5 s, the device listener has a cap of its own
/// (`broker.max_connections`, 50 here), and the gateway's sessions use a
/// listener of their own: the pipeline carries on through the flood.
#[test]
fn a_connect_flood_from_the_lan_leaves_the_pipeline_running() {
    let port = free_port();
    let gateway = GatewayProcess::start_toml(|dir| {
        let wasm = support::gateway::example_wasm("vending_telemetry.wasm");
        format!(
            r#"data_dir = {data:?}
[broker]
listen = "127.0.0.1:{port}"
max_connections = 50
[[functions]]
name = "vending"
wasm = {wasm:?}
triggers = [{{ mqtt = "vending/+/telemetry" }}]
[functions.grants]
upstream = ["telemetry/#"]
"#,
            data = dir.join("data").display().to_string(),
            wasm = wasm.display().to_string(),
        )
    });
    let broker = *broker_pids(&gateway).last().expect("a broker pid");
    let cloud = MqttClient::connect(port, "cloud");
    cloud.subscribe("telemetry/vending/+");
    let device = MqttClient::connect(port, "device");
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let fds = std::fs::read_dir(format!("/proc/{broker}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(fds < 150, "the broker holds {fds} file descriptors");
    // The devices already connected, and the gateway's own sessions, work.
    device.publish(&telemetry_topic("vm-6"), telemetry(61, 5.0));
    assert!(
        cloud.collect_until(ONE, |m| m.json()["ts"].as_u64() == Some(61)),
        "{}",
        gateway.logs()
    );
    // Silent connections are closed after the CONNECT timeout (5 s).
    let closed = wait_until(Duration::from_secs(15), || {
        let fds = std::fs::read_dir(format!("/proc/{broker}/fd"))
            .map(|d| d.count())
            .unwrap_or(usize::MAX);
        fds < 60
    });
    assert!(closed, "the flood's connections were not closed");
    drop(flood);
    let late = MqttClient::connect(port, "late-device");
    late.publish(&telemetry_topic("vm-6"), telemetry(62, 5.0));
    assert!(cloud.collect_until(ONE, |m| m.json()["ts"].as_u64() == Some(62)));
}

/// What a device gets when it connects with these credentials: the
/// CONNACK's return code, or `None` if the connection closed without one.
fn connack_code(
    port: u16,
    id: &str,
    login: Option<(&str, &str)>,
) -> Option<rumqttc::ConnectReturnCode> {
    let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    let (_client, mut connection) = rumqttc::Client::new(options, 10);
    for event in connection.iter().take(3) {
        match event {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => return Some(ack.code),
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Some(code),
            Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

/// The embedded broker accepted anyone, while the packaged config listened
/// on 0.0.0.0. A broker other machines can reach now needs a passwords file
/// (or `allow_anonymous = true`, said knowingly): a device with the wrong
/// password, or none, is refused with "bad user name or password" and
/// logged; the right one works.
#[test]
fn devices_on_the_network_must_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwords");
    let out = std::process::Command::new(support::gateway::WASMGATE)
        .args(["passwd", passwords.to_str().unwrap(), "vm-1"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(b"right horse battery\n")?;
            child.wait()
        })
        .expect("wasmgate passwd");
    assert!(out.success());
    let text = std::fs::read_to_string(&passwords).unwrap();
    assert!(
        !text.contains("horse"),
        "the file holds only a hash: {text}"
    );

    let port = free_port();
    let config = |auth: &str, data: &std::path::Path| {
        let wasm = support::gateway::example_wasm("vending_telemetry.wasm");
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"0.0.0.0:{port}\"\n{auth}\n[[functions]]\nname = \"vending\"\nwasm = {wasm:?}\ntriggers = [{{ mqtt = \"vending/+/telemetry\" }}]\n[functions.grants]\nupstream = [\"telemetry/#\"]\n",
            wasm = wasm.display().to_string(),
            data = data.display().to_string(),
        )
    };
    // Open to the network without passwords: config check says why not.
    let path = dir.path().join("open.toml");
    std::fs::write(&path, config("", &dir.path().join("data"))).unwrap();
    let out = wasmgate(&["config", "check", path.to_str().unwrap()], ONE);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("broker.listen") && out.stderr.contains("passwords"),
        "{}",
        out.stderr
    );

    let auth = format!("passwords = {:?}", passwords.display().to_string());
    let gateway =
        GatewayProcess::start_toml(|gateway_dir| config(&auth, &gateway_dir.join("data")));
    use rumqttc::ConnectReturnCode::{BadUserNamePassword, Success};
    assert_eq!(
        connack_code(port, "vm-1", Some(("vm-1", "wrong"))),
        Some(BadUserNamePassword)
    );
    assert_eq!(
        connack_code(port, "vm-x", Some(("vm-x", "right horse battery"))),
        Some(BadUserNamePassword)
    );
    assert_eq!(connack_code(port, "vm-1", None), Some(BadUserNamePassword));
    assert_eq!(
        connack_code(port, "vm-1", Some(("vm-1", "right horse battery"))),
        Some(Success)
    );
    let refused = wait_until(ONE, || {
        gateway.log_lines_with(&["device refused"]).len() >= 3
    });
    assert!(refused, "{}", gateway.logs());
    assert!(
        !gateway.logs().contains("horse"),
        "a password reached the log"
    );
    // And the gateway's own sessions, on their listener, still serve.
    let mut options = rumqttc::MqttOptions::new("vm-1", "127.0.0.1", port);
    options.set_credentials("vm-1", "right horse battery");
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    client
        .publish(
            telemetry_topic("vm-1"),
            rumqttc::QoS::AtLeastOnce,
            false,
            telemetry(3, 5.0),
        )
        .unwrap();
    let acked = connection
        .iter()
        .take(20)
        .any(|e| matches!(e, Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))));
    assert!(acked);
    let processed = wait_until(ONE, || {
        let out = wasmgate(
            &[
                "kv",
                "--config",
                gateway.config_path().to_str().unwrap(),
                "get",
                "vending",
                "vm-1/last_temp_c",
            ],
            ONE,
        );
        out.code == Some(0)
    });
    assert!(processed, "{}", gateway.logs());
}

/// A device on the TLS listener: connects, publishes one telemetry message
/// with QoS 1, and says whether the broker acknowledged it.
fn publish_over_tls(
    port: u16,
    id: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    seq: u64,
) -> bool {
    let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ));
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    client
        .publish(
            telemetry_topic(id),
            rumqttc::QoS::AtLeastOnce,
            false,
            telemetry(seq, 5.0),
        )
        .unwrap();
    for event in connection.iter().take(20) {
        match event {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => return true,
            Err(_) => return false,
            Ok(_) => {}
        }
    }
    false
}

/// The embedded broker's TLS listener, as devices that carry certificates
/// use it: with `client_ca` a device must present a certificate the devices'
/// CA signed. One from another CA, or none, is refused in the handshake and
/// logged; the right one is served, with no password. A peer that opens TCP
/// and stalls the handshake holds no one else up (rumqttd ran handshakes in
/// its accept loop, without a time limit), and is closed after the CONNECT
/// timeout.
#[test]
fn tls_devices_must_present_a_certificate_from_the_devices_ca() {
    let dir = tempfile::tempdir().unwrap();
    let devices_ca = Ca::new("devices CA");
    let other_ca = Ca::new("someone else's CA");
    let (server_cert, server_key) = devices_ca.sign("127.0.0.1");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let cert = write("server.crt", &server_cert);
    let key = write("server.key", &server_key);
    let ca = write("devices-ca.crt", &devices_ca.pem);
    let (port, tls_port) = (free_port(), free_port());
    let config = |client_ca: &str, data: &std::path::Path| {
        let wasm = support::gateway::example_wasm("vending_telemetry.wasm");
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{port}\"\ntls_listener = {{ listen = \"0.0.0.0:{tls_port}\", cert = {cert:?}, key = {key:?}{client_ca} }}\n[[functions]]\nname = \"vending\"\nwasm = {wasm:?}\ntriggers = [{{ mqtt = \"vending/+/telemetry\" }}]\n[functions.grants]\nupstream = [\"telemetry/#\"]\n",
            wasm = wasm.display().to_string(),
            data = data.display().to_string(),
        )
    };
    // Open to the network with neither device certificates nor passwords:
    // config check says why not.
    let path = dir.path().join("open.toml");
    std::fs::write(&path, config("", &dir.path().join("data"))).unwrap();
    let out = wasmgate(&["config", "check", path.to_str().unwrap()], ONE);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("broker.tls_listener.listen") && out.stderr.contains("client_ca"),
        "{}",
        out.stderr
    );

    let client_ca = format!(", client_ca = {ca:?}");
    let gateway =
        GatewayProcess::start_toml(|gateway_dir| config(&client_ca, &gateway_dir.join("data")));

    // A peer that opens TCP and never finishes its handshake.
    let mut stalled = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).unwrap();

    let vm1 = devices_ca.sign("vm-1");
    assert!(
        publish_over_tls(tls_port, "vm-1", device_tls(&devices_ca, Some(&vm1)), 1),
        "a device with the devices' CA certificate was not served\n{}",
        gateway.logs()
    );
    let intruder = other_ca.sign("vm-2");
    assert!(!publish_over_tls(
        tls_port,
        "vm-2",
        device_tls(&devices_ca, Some(&intruder)),
        2
    ));
    assert!(!publish_over_tls(
        tls_port,
        "vm-3",
        device_tls(&devices_ca, None),
        3
    ));
    let refused = wait_until(ONE, || {
        gateway
            .log_lines_with(&["device refused", "TLS handshake failed"])
            .len()
            >= 2
    });
    assert!(refused, "{}", gateway.logs());
    let lines = gateway.log_lines_with(&["device refused", "TLS handshake failed"]);
    assert!(
        lines.iter().any(|l| l.contains("UnknownIssuer"))
            && lines.iter().any(|l| l.contains("no certificates")),
        "the refusals do not say why: {lines:#?}"
    );

    // The right device's message went through the function.
    let processed = wait_until(ONE, || {
        let out = wasmgate(
            &[
                "kv",
                "--config",
                gateway.config_path().to_str().unwrap(),
                "get",
                "vending",
                "vm-1/last_temp_c",
            ],
            ONE,
        );
        out.code == Some(0)
    });
    assert!(processed, "{}", gateway.logs());

    // The stalled peer is closed once the CONNECT timeout (5 s) has passed.
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut byte = [0u8; 1];
    let read = stalled.read(&mut byte);
    let closed = match &read {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    assert!(closed, "the stalled handshake was not closed: {read:?}");
}

/// `/etc/default/wasmgate` sets `RUST_LOG=info`, which turned on an
/// `ERROR ... Error while handling MQTT connect packet` from the embedded
/// broker on every ordinary connect and disconnect. A device coming and
/// going is not an error: nothing of it shows at info.
#[test]
fn devices_coming_and_going_log_no_errors_at_info() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = dir.path().join("gateway.toml");
    let wasm = support::gateway::example_wasm("vending_telemetry.wasm");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[broker]\nlisten = \"127.0.0.1:{port}\"\n[[functions]]\nname = \"vending\"\nwasm = {:?}\ntriggers = [{{ mqtt = \"vending/+/telemetry\" }}]\n[functions.grants]\nupstream = [\"telemetry/#\"]\n",
            dir.path().join("data").display().to_string(),
            wasm.display().to_string()
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr");
    let mut gateway = std::process::Command::new(support::gateway::WASMGATE)
        .args(["run", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(ONE, || read().contains("gateway running")),
        "{}",
        read()
    );
    for i in 0..5 {
        let device = MqttClient::connect(port, &format!("comer-{i}"));
        device.publish(&telemetry_topic("vm-8"), telemetry(i, 5.0));
        device.wait_acked(ONE);
        drop(device);
        // And one that connects and leaves without a word.
        drop(TcpStream::connect(("127.0.0.1", port)));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status();
    let _ = gateway.wait();
    let text = read();
    assert!(text.contains("gateway stopped"), "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "errors at info: {errors:#?}");
    let rumqttd: Vec<&str> = text.lines().filter(|l| l.contains("rumqttd")).collect();
    assert!(rumqttd.is_empty(), "rumqttd's chatter: {rumqttd:#?}");
}

/// Reads its secret `api-key`, logs it (as a careless function might) and
/// traps, every time: so the secret is in front of every place a gateway
/// prints something about a function.
const LEAKY: &str = r#"(module
  (import "wasmgate" "secret_get" (func $secret_get (param i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "api-key")
  (func (export "wasmgate_abi_version") (result i32) i32.const 1)
  (func (export "wasmgate_handle") (param i32) (result i32) (local i32)
    (local.set 1 (call $secret_get (i32.const 0) (i32.const 7) (i32.const 64) (i32.const 64)))
    (call $log (i32.const 0) (i32.const 64) (local.get 1))
    unreachable))"#;

/// A secret never appears in a log line, an error, `config check` output or
/// a dead letter, even when the function that holds it logs it and fails.
#[test]
fn a_secret_appears_nowhere_the_gateway_prints() {
    const SECRET: &str = "sk-4f9a0c3e7b21d85a";
    let port = free_port();
    let gateway = GatewayProcess::start_toml(|dir| {
        std::fs::write(dir.join("leaky.wasm"), wat::parse_str(LEAKY).unwrap()).unwrap();
        std::fs::write(dir.join("api-key"), format!("{SECRET}\n")).unwrap();
        format!(
            r#"data_dir = {data:?}
[broker]
listen = "127.0.0.1:{port}"
[[functions]]
name = "leaky"
wasm = "leaky.wasm"
triggers = [{{ mqtt = "in/leaky" }}]
[functions.retry]
attempts = 2
initial_backoff_ms = 10
[functions.grants]
secrets = ["api-key"]
[functions.secrets]
api-key = {{ file = "api-key" }}
"#,
            data = dir.join("data").display().to_string(),
        )
    });
    let config = gateway.config_path().to_str().unwrap().to_owned();
    let device = MqttClient::connect(port, "device");
    device.publish("in/leaky", "x");
    let lettered = wait_until(ONE, || {
        !gateway
            .log_lines_with(&["moved to the dead-letter queue"])
            .is_empty()
    });
    assert!(lettered, "{}", gateway.logs());
    assert!(
        gateway.logs().contains("***"),
        "the logged secret shows as ***:\n{}",
        gateway.logs()
    );
    let mut printed = vec![("the gateway's log", gateway.logs())];
    for args in [
        vec!["dlq", "--config", &config, "list"],
        vec!["dlq", "--config", &config, "show", "1"],
        vec!["config", "check", &config],
    ] {
        let out = wasmgate(&args, ONE);
        printed.push((
            "a command's output",
            format!("{}{}", out.stdout, out.stderr),
        ));
    }
    for (what, text) in printed {
        assert!(!text.contains(SECRET), "the secret is in {what}:\n{text}");
        assert!(
            !text.contains(&SECRET[..10]),
            "part of the secret is in {what}:\n{text}"
        );
    }
}

/// A broker process that cannot run (an ARM binary under qemu without
/// binfmt, a missing loader) was reported as "cannot configure it: Broken
/// pipe"; the gateway says that the broker process exited, and which.
#[test]
fn a_broker_process_that_cannot_run_is_named_in_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let embedded = GatewayConfig::vending(BrokerMode::Embedded { port: free_port() });
    std::fs::write(&config, embedded.to_toml(&dir.path().join("data"))).unwrap();
    let out = std::process::Command::new(support::gateway::WASMGATE)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("WASMGATE_EXE", "/bin/false")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("broker process") && stderr.contains("exited"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

//! Functions' log lines against the real binary: kept in the gateway's
//! database with their request id, level, version and trigger, read by
//! `wasmgate logs` through the running gateway (filters, `--json`,
//! `--follow`) and from the database once it stopped; a function that logs
//! faster than `[logs] rate` has the rest dropped and counted, and the ring
//! keeps `[logs] keep` lines.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::gateway::{wasmgate, GatewayProcess, WASMGATE};
use support::mqtt::{free_port, unique_id, wait_until, MqttClient};

const ONE: Duration = Duration::from_secs(60);

/// Logs each MQTT payload `"<level digit> <text>"` at that level
/// (0 error .. 4 trace), then succeeds with no output.
fn talker() -> Vec<u8> {
    support::guest::mqtt_guest(
        r#"(import "wasmgate" "log" (func $log (param i32 i32 i32)))"#,
        "",
        r#"(call $log
      (i32.sub (i32.load8_u (local.get $payload)) (i32.const 48))
      (i32.add (local.get $payload) (i32.const 2))
      (i32.sub (local.get $payload_len) (i32.const 2)))
    (i32.const 0)"#,
    )
}

fn start(logs: &str) -> (GatewayProcess, u16, u16) {
    let (broker, metrics) = (free_port(), free_port());
    let logs = logs.to_owned();
    let gateway = GatewayProcess::start_toml(move |dir| {
        std::fs::write(dir.join("talker.wasm"), talker()).unwrap();
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[logs]\n{logs}\n\
             [[functions]]\nname = \"talker\"\nwasm = \"talker.wasm\"\ntriggers = [{{ mqtt = \"talk/#\" }}]\n",
            data = dir.join("data").display().to_string(),
        )
    });
    (gateway, broker, metrics)
}

fn logs(gateway: &GatewayProcess, args: &[&str]) -> Vec<Value> {
    let config = gateway.config_path().display().to_string();
    let mut all = vec!["logs", "--config", &config, "--json"];
    all.extend_from_slice(args);
    let out = wasmgate(&all, ONE);
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn messages(lines: &[Value]) -> Vec<&str> {
    lines.iter().filter_map(|l| l["message"].as_str()).collect()
}

#[test]
fn log_lines_are_kept_with_their_request_and_read_while_running_and_after() {
    let (mut gateway, broker, _) = start("");
    let device = MqttClient::connect(broker, &unique_id("talk"));
    device.publish("talk/a", "0 boom");
    device.publish("talk/b", "1 careful");
    for i in 0..5 {
        device.publish("talk/c", format!("2 hello {i}"));
    }
    device.wait_acked(ONE);
    assert!(
        wait_until(ONE, || logs(&gateway, &["talker"]).len() == 7),
        "{:?}\n{}",
        logs(&gateway, &["talker"]),
        gateway.logs()
    );

    let lines = logs(&gateway, &["talker"]);
    assert_eq!(
        messages(&lines),
        ["boom", "careful", "hello 0", "hello 1", "hello 2", "hello 3", "hello 4"]
    );
    let boom = &lines[0];
    assert_eq!(boom["level"], "error");
    assert_eq!(boom["function"], "talker");
    assert_eq!(boom["trigger"], "talk/a");
    assert_eq!(boom["version"].as_str().map(str::len), Some(12), "{boom}");
    let request = boom["request_id"].as_u64().expect("a request id");
    // Each invocation has its own id.
    assert_ne!(lines[1]["request_id"].as_u64(), Some(request));
    // The same id is in the gateway's own log line for it.
    assert!(
        gateway
            .logs()
            .lines()
            .any(|l| l.contains("boom") && l.contains(&format!("request_id={request}"))),
        "{}",
        gateway.logs()
    );

    // Filters: level and more severe; one request; the newest n; after an id.
    assert_eq!(
        messages(&logs(&gateway, &["talker", "--level", "warn"])),
        ["boom", "careful"]
    );
    let one = logs(&gateway, &["talker", "--request", &request.to_string()]);
    assert_eq!(messages(&one), ["boom"]);
    assert_eq!(
        messages(&logs(&gateway, &["talker", "-n", "2"])),
        ["hello 3", "hello 4"]
    );
    assert_eq!(logs(&gateway, &["talker", "--since", "1h"]).len(), 7);
    assert!(logs(&gateway, &["nobody"]).is_empty());

    // Text: time, level, version, request id, trigger, message.
    let config = gateway.config_path().display().to_string();
    let text = wasmgate(&["logs", "--config", &config, "--level", "error"], ONE);
    assert_eq!(text.code, Some(0), "{text:?}");
    assert!(
        text.stdout.contains("ERROR")
            && text.stdout.contains(&format!("request={request}"))
            && text.stdout.contains("talker@")
            && text.stdout.contains("[talk/a] boom"),
        "{}",
        text.stdout
    );
    let bad = wasmgate(&["logs", "--config", &config, "--since", "10 minutes"], ONE);
    assert_ne!(bad.code, Some(0), "{bad:?}");
    assert!(bad.stderr.contains("unit"), "{}", bad.stderr);

    // --follow prints the lines that come after it started.
    let (mut follow, rx) =
        following(&["logs", "talker", "--config", &config, "--follow", "-n", "1"]);
    let first = rx.recv_timeout(ONE).expect("the newest line");
    assert!(first.contains("hello 4"), "{first}");
    device.publish("talk/d", "3 later on");
    device.wait_acked(ONE);
    let next = rx.recv_timeout(ONE).expect("the new line");
    assert!(
        next.contains("DEBUG") && next.contains("later on"),
        "{next}"
    );
    let _ = follow.kill();
    let _ = follow.wait();

    // Stopped: the lines are still there, read from the database.
    gateway.stop();
    let after = logs(&gateway, &["talker"]);
    assert_eq!(after.len(), 8, "{after:?}");
    assert_eq!(after[7]["message"], "later on");
}

#[test]
fn a_flood_of_log_lines_is_rate_limited_counted_and_the_ring_keeps_its_size() {
    let (gateway, broker, metrics) = start("rate = 5\nkeep = 8");
    let device = MqttClient::connect(broker, &unique_id("flood"));
    for i in 0..60 {
        device.publish("talk/flood", format!("2 flood {i}"));
    }
    device.wait_acked(ONE);
    let scrape = || support::http::request(metrics, "GET", "/metrics", "", "").1;
    let sample = |body: &str, series: &str| -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    };
    let kept = "wasmgate_function_log_lines_total{function=\"talker\"}";
    let dropped = "wasmgate_function_log_lines_dropped_total{function=\"talker\"}";
    // Every message ran: its lines were kept or dropped, and most dropped.
    assert!(
        wait_until(ONE, || {
            let body = scrape();
            let (k, d) = (sample(&body, kept), sample(&body, dropped));
            k.zip(d).is_some_and(|(k, d)| k + d == 60.0)
        }),
        "{}",
        scrape()
    );
    let body = scrape();
    let (k, d) = (
        sample(&body, kept).unwrap_or_default(),
        sample(&body, dropped).unwrap_or_default(),
    );
    assert!(k >= 5.0 && d >= 30.0, "kept {k}, dropped {d}");
    // One warning says so, not one per line.
    let warnings = gateway.log_lines_with(&["log lines dropped"]);
    assert!(
        !warnings.is_empty() && warnings.len() < 10,
        "{warnings:?}\n{}",
        gateway.logs()
    );
    // The ring holds the newest 8 at most; the last kept line is there.
    assert!(
        wait_until(ONE, || sample(
            &scrape(),
            "wasmgate_log_lines_written_total"
        ) == Some(k)),
        "{}",
        scrape()
    );
    let ring = logs(&gateway, &["talker", "-n", "1000"]);
    assert!(!ring.is_empty() && ring.len() <= 8, "{ring:?}");
    assert!(
        ring.windows(2)
            .all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()),
        "{ring:?}"
    );
}

/// Logs its MQTT payload 100 times (the most one invocation may), at info.
fn chatty() -> Vec<u8> {
    support::guest::mqtt_guest(
        r#"(import "wasmgate" "log" (func $log (param i32 i32 i32)))"#,
        "",
        r#"(local.set $attempt (i32.const 100))
    (loop $again
      (call $log (i32.const 2) (local.get $payload) (local.get $payload_len))
      (local.set $attempt (i32.sub (local.get $attempt) (i32.const 1)))
      (br_if $again (local.get $attempt)))
    (i32.const 0)"#,
    )
}

#[test]
fn follow_prints_every_line_of_a_burst_larger_than_one_read() {
    let broker = free_port();
    let gateway = GatewayProcess::start_toml(move |dir| {
        std::fs::write(dir.join("chatty.wasm"), chatty()).unwrap();
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n[logs]\nrate = 0\nkeep = 100000\n\
             [[functions]]\nname = \"chatty\"\nwasm = \"chatty.wasm\"\ntriggers = [{{ mqtt = \"chat/#\" }}]\n",
            data = dir.join("data").display().to_string(),
        )
    });
    let config = gateway.config_path().display().to_string();
    let device = MqttClient::connect(broker, &unique_id("d"));
    device.publish("chat/d", "first");
    device.wait_acked(ONE);
    let (mut follow, rx) = following(&[
        "logs", "chatty", "--config", &config, "--follow", "--json", "-n", "1",
    ]);
    let first = rx.recv_timeout(ONE).expect("the newest line");
    assert!(first.contains("first"), "{first}");
    // 15,000 lines in a quarter of a second: more than one read of the
    // ring takes (10,000) between two of the follower's. In waves, so that
    // the store's buffer (4,096 lines between commits) keeps them all.
    for wave in 0..5 {
        for i in 0..30 {
            device.publish("chat/d", format!("burst {:03}", wave * 30 + i));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    device.wait_acked(ONE);
    let mut got = Vec::new();
    while got.len() < 15_000 {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => got.push(serde_json::from_str::<Value>(&line).expect("a JSON line")),
            Err(_) => break,
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    // Every line after the follower's first, in order, none skipped (ids
    // are the ring's, one per line kept).
    let first_id = serde_json::from_str::<Value>(&first).unwrap()["id"]
        .as_i64()
        .unwrap();
    let ids: Vec<i64> = got
        .iter()
        .map(|l| l["id"].as_i64().expect("an id"))
        .collect();
    assert_eq!(ids.first(), Some(&(first_id + 1)), "{}", gateway.logs());
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, none skipped"
    );
    assert_eq!(got.len(), 15_000, "{}", gateway.logs());
    assert_eq!(got[0]["message"], "burst 000");
    assert_eq!(got[14_999]["message"], "burst 149");
}

/// `wasmgate ARGS` (a `logs --follow`) running, and its lines as they come.
fn following(args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut follow = Command::new(WASMGATE)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (follow, rx)
}

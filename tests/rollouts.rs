//! Rollouts end to end, against the real binary: `wasmgate deploy
//! --strategy` gives the new version a share of the events and judges it.
//! A version that fails its share is rolled back within the window (live
//! back on the old version, the reason and figures kept, the failed
//! version kept for inspection); a healthy one takes every event at the
//! window's end; a gateway killed during a canary rolls it back at its next
//! start, because it cannot judge a window it did not see.

mod support;

use std::time::{Duration, Instant};
use support::gateway::{wasmgate, GatewayProcess};
use support::mqtt::{free_port, unique_id, MqttClient};

const ONE: Duration = Duration::from_secs(60);

/// Emits its payload to `out/<name>` and succeeds.
fn good(name: &str) -> Vec<u8> {
    support::guest::mqtt_guest(
        r#"(import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))"#,
        &format!(r#"(data (i32.const 65000) "out/{name}")"#),
        &format!(
            "(drop (call $emit (i32.const 65000) (i32.const {}) (local.get $payload) (local.get $payload_len) (i32.const 1)))
    (i32.const 0)",
            4 + name.len()
        ),
    )
}

/// Fails every event (returns 1).
fn bad() -> Vec<u8> {
    support::guest::mqtt_guest("", "", "(i32.const 1)")
}

/// `f` (v1) on `in/#`, and two functions for traffic hooks: `check-ok`
/// succeeds, `check-fails` fails.
fn gateway(broker: u16) -> GatewayProcess {
    GatewayProcess::start_toml(|dir| {
        std::fs::write(dir.join("v1.wasm"), good("v1")).unwrap();
        std::fs::write(dir.join("v2.wasm"), good("v2")).unwrap();
        std::fs::write(dir.join("bad.wasm"), bad()).unwrap();
        std::fs::write(dir.join("hook.wasm"), good("hook")).unwrap();
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n\
             [[functions]]\nname = \"f\"\nwasm = \"v1.wasm\"\ntriggers = [{{ mqtt = \"in/#\" }}]\n\
             [functions.grants]\nlocal = [\"out/#\"]\n\
             [[functions]]\nname = \"check-ok\"\nwasm = \"hook.wasm\"\ntriggers = [{{ mqtt = \"hooks/ok\" }}]\n\
             [functions.grants]\nlocal = [\"out/#\"]\n\
             [[functions]]\nname = \"check-fails\"\nwasm = \"bad.wasm\"\ntriggers = [{{ mqtt = \"hooks/fails\" }}]\n",
            data = dir.join("data").display().to_string(),
        )
    })
}

fn module(gateway: &GatewayProcess, file: &str) -> String {
    gateway
        .config_path()
        .with_file_name(file)
        .display()
        .to_string()
}

/// `wasmgate deploy f MODULE ARGS... --config CONFIG`.
fn deploy(config: &str, module: &str, args: &[&str]) -> support::gateway::CommandOutput {
    let mut all = vec!["deploy", "f", module];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", config]);
    wasmgate(&all, ONE)
}

/// The newest rollout of `f`, as `wasmgate deployments --json` shows it.
fn newest(config: &str) -> serde_json::Value {
    let out = wasmgate(&["deployments", "f", "--config", config, "--json"], ONE);
    assert_eq!(out.code, Some(0), "{out:?}");
    let body: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    body["deployments"][0].clone()
}

fn live_version(config: &str) -> String {
    let out = wasmgate(&["versions", "f", "--config", config], ONE);
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout
        .lines()
        .find(|l| l.contains(" live "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no live version in\n{}", out.stdout))
        .to_owned()
}

/// Publishes to `in/<seq>` every 10 ms until `done` says so or a minute
/// passes; returns whether it did.
fn publish_until(device: &MqttClient, mut done: impl FnMut() -> bool) -> bool {
    let began = Instant::now();
    let mut seq = 0u64;
    while began.elapsed() < ONE {
        for _ in 0..10 {
            device.publish(&format!("in/{seq}"), format!("{seq}"));
            seq += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        if done() {
            return true;
        }
    }
    false
}

#[test]
fn a_canary_that_fails_its_share_is_rolled_back_and_kept() {
    let broker = free_port();
    let gateway = gateway(broker);
    let config = gateway.config_path().display().to_string();
    let v1 = live_version(&config);
    let device = MqttClient::connect(broker, &unique_id("vm-1"));
    let out = deploy(
        &config,
        &module(&gateway, "bad.wasm"),
        &["--strategy", "canary50-5m"],
    );
    assert_eq!(out.code, Some(0), "{out:?}\n{}", gateway.logs());
    assert!(out.stdout.contains("rollout canary50-5m"), "{}", out.stdout);
    // A second rollout of the function waits for this one's end.
    let again = deploy(
        &config,
        &module(&gateway, "v2.wasm"),
        &["--strategy", "canary10-1m"],
    );
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(
        again.stderr.contains("rollout under way"),
        "{}",
        again.stderr
    );
    // So is a move by hand: the rollout's next step would undo it.
    let by_hand = wasmgate(&["rollback", "f", "--config", &config], ONE);
    assert_eq!(by_hand.code, Some(1), "{by_hand:?}");
    assert!(
        by_hand.stderr.contains("rollout under way"),
        "{}",
        by_hand.stderr
    );
    let rolled_back = publish_until(&device, || newest(&config)["state"] == "rolled_back");
    let row = newest(&config);
    assert!(rolled_back, "{row:#}\n{}", gateway.logs());
    let reason = row["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("failed") && reason.contains("over the 5.0% allowed"),
        "{reason}"
    );
    let figures: serde_json::Value =
        serde_json::from_str(row["figures"].as_str().expect("figures")).unwrap();
    assert!(figures["new_failed"].as_u64() >= Some(5), "{figures}");
    assert_eq!(figures["old_failed"], 0, "{figures}");
    assert_eq!(row["share"], 0.0);
    // Live is the old version alone; the failed one is kept.
    assert_eq!(live_version(&config), v1);
    let versions = wasmgate(&["versions", "f", "--config", &config], ONE);
    assert!(
        versions
            .stdout
            .contains(row["to_version"].as_str().unwrap()),
        "{}",
        versions.stdout
    );
    assert!(
        !gateway.log_lines_with(&["rollout rolled back"]).is_empty(),
        "{}",
        gateway.logs()
    );
}

#[test]
fn a_healthy_canary_takes_every_event_at_the_end_of_its_window() {
    let broker = free_port();
    let gateway = gateway(broker);
    let config = gateway.config_path().display().to_string();
    let v1 = live_version(&config);
    let outputs = MqttClient::connect(broker, &unique_id("outputs"));
    outputs.subscribe("out/#");
    let device = MqttClient::connect(broker, &unique_id("vm-1"));
    let out = deploy(
        &config,
        &module(&gateway, "v2.wasm"),
        &["--strategy", "Canary50Percent3Seconds"],
    );
    assert_eq!(out.code, Some(0), "{out:?}\n{}", gateway.logs());
    let succeeded = publish_until(&device, || newest(&config)["state"] == "succeeded");
    let row = newest(&config);
    assert!(succeeded, "{row:#}\n{}", gateway.logs());
    assert_eq!(row["strategy"], "canary50-3s");
    assert_eq!(row["share"], 1.0);
    let v2 = row["to_version"].as_str().unwrap().to_owned();
    assert_ne!(v2, v1);
    assert_eq!(live_version(&config), v2);
    // Both versions ran during the window.
    let (mut saw_v1, mut saw_v2) = (false, false);
    outputs.collect_until(Duration::from_secs(10), |m| {
        saw_v1 |= m.topic == "out/v1";
        saw_v2 |= m.topic == "out/v2";
        saw_v1 && saw_v2
    });
    assert!(saw_v1 && saw_v2, "v1 {saw_v1}, v2 {saw_v2}");
}

#[test]
fn a_gateway_killed_during_a_canary_rolls_it_back_at_its_next_start() {
    let broker = free_port();
    let mut gateway = gateway(broker);
    let config = gateway.config_path().display().to_string();
    let v1 = live_version(&config);
    let out = deploy(
        &config,
        &module(&gateway, "v2.wasm"),
        &["--strategy", "linear20-every-10m"],
    );
    assert_eq!(out.code, Some(0), "{out:?}\n{}", gateway.logs());
    assert_eq!(newest(&config)["state"], "running");
    assert_eq!(newest(&config)["share"], 0.2);
    gateway.kill();
    gateway.restart();
    let row = newest(&config);
    assert_eq!(row["state"], "rolled_back", "{row:#}");
    assert!(
        row["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot be judged"),
        "{row:#}"
    );
    assert_eq!(live_version(&config), v1);
    // And a strategy that does not parse is refused before anything moves.
    let out = deploy(
        &config,
        &module(&gateway, "v2.wasm"),
        &["--strategy", "blue-green"],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("canary<P>-<M>m"), "{}", out.stderr);
    assert_eq!(live_version(&config), v1);
}

#[test]
fn traffic_hooks_run_before_and_after_and_a_failing_one_rolls_back() {
    let broker = free_port();
    let gateway = gateway(broker);
    let config = gateway.config_path().display().to_string();
    let v1 = live_version(&config);
    let v2 = module(&gateway, "v2.wasm");
    // A failing pre-traffic hook: refused before the new version takes any
    // event.
    let out = deploy(
        &config,
        &v2,
        &[
            "--strategy",
            "canary50-1m",
            "--pre-traffic-hook",
            "check-fails",
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("pre-traffic hook check-fails failed"),
        "{}",
        out.stderr
    );
    let row = newest(&config);
    assert_eq!(row["state"], "rolled_back", "{row:#}");
    assert_eq!(live_version(&config), v1);
    // Passing hooks both: the rollout goes through to the end.
    let outputs = MqttClient::connect(broker, &unique_id("outputs"));
    outputs.subscribe("out/hook");
    let out = deploy(
        &config,
        &v2,
        &[
            "--strategy",
            "canary50-2s",
            "--pre-traffic-hook",
            "check-ok",
            "--post-traffic-hook",
            "check-ok",
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}\n{}", gateway.logs());
    let device = MqttClient::connect(broker, &unique_id("vm-1"));
    assert!(publish_until(&device, || newest(&config)["state"] == "succeeded"));
    let v2_version = newest(&config)["to_version"].as_str().unwrap().to_owned();
    // Each hook ran once, told which rollout and stage.
    let mut stages = Vec::new();
    outputs.collect_until(Duration::from_secs(5), |m| {
        let told: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(told["function"], "f");
        stages.push(told["stage"].as_str().unwrap().to_owned());
        stages.len() == 2
    });
    assert_eq!(stages, ["pre-traffic", "post-traffic"]);
    // A failing post-traffic hook moves live back once the new version
    // had every event.
    let out = deploy(
        &config,
        &module(&gateway, "bad.wasm"),
        &[
            "--strategy",
            "all-at-once",
            "--post-traffic-hook",
            "check-fails",
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("post-traffic hook check-fails failed"),
        "{}",
        out.stderr
    );
    assert_eq!(newest(&config)["state"], "rolled_back");
    assert_eq!(live_version(&config), v2_version, "live is back on v2");
}

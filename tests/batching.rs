//! Batching windows end to end, with mosquitto and the real binary: a batch
//! of MQTT messages is one invocation; the items the function reports failed
//! are retried alone and dead-lettered one by one while the rest commit; and
//! with a dedup key a batch's effects are exact across kill -9, because its
//! items' ids are recorded in the transaction that commits them.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::gateway::{example_wasm, kv_value, wasmgate, GatewayProcess};
use support::mosquitto::{Mosquitto, GATEWAY_SETTINGS};
use support::mqtt::{unique_id, wait_until, MqttClient};

const PATIENCE: Duration = Duration::from_secs(60);
const MACHINES: [&str; 4] = ["vm-1", "vm-2", "vm-3", "vm-4"];

fn config(dir: &std::path::Path, port: u16, trigger_extra: &str) -> String {
    format!(
        "data_dir = {data:?}\n[broker]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         [[functions]]\nname = \"ledger\"\nwasm = {wasm:?}\n\
         triggers = [{{ mqtt = \"vending/+/sale\", batch = {{ size = 50, window_ms = 200 }}{trigger_extra} }}]\n\
         [functions.retry]\nattempts = 2\ninitial_backoff_ms = 10\n",
        data = dir.join("data").display().to_string(),
        wasm = example_wasm("vending_ledger.wasm").display().to_string(),
    )
}

fn cents(i: u64) -> i64 {
    100 + (i % 37) as i64
}

fn counter(gateway: &GatewayProcess, key: &str) -> Option<i64> {
    kv_value(gateway, "ledger", key).and_then(|v| v.parse().ok())
}

/// What the counters must be once every good sale of `seqs` ran once.
fn expected(seqs: impl IntoIterator<Item = u64>) -> BTreeMap<String, i64> {
    let mut totals = BTreeMap::new();
    for i in seqs {
        *totals
            .entry(format!("sales/{}", MACHINES[i as usize % 4]))
            .or_insert(0) += cents(i);
    }
    totals
}

fn sales(gateway: &GatewayProcess) -> BTreeMap<String, i64> {
    MACHINES
        .iter()
        .filter_map(|m| {
            let key = format!("sales/{m}");
            Some((key.clone(), counter(gateway, &key)?))
        })
        .collect()
}

#[test]
fn only_the_items_a_batch_reports_failed_are_retried_and_dead_lettered() {
    const N: u64 = 300;
    const BAD: [u64; 3] = [17, 99, 250];
    let broker = Mosquitto::start_with(GATEWAY_SETTINGS);
    let gateway = GatewayProcess::start_toml(|dir| config(dir, broker.port(), ""));
    let device = MqttClient::connect(broker.port(), &unique_id("device"));
    for i in 0..N {
        let payload = if BAD.contains(&i) {
            format!("not json {i}")
        } else {
            format!(r#"{{"cents":{}}}"#, cents(i))
        };
        device.publish(
            &format!("vending/{}/sale", MACHINES[i as usize % 4]),
            payload,
        );
    }
    device.wait_acked(PATIENCE);
    let good = N - BAD.len() as u64;
    assert!(
        wait_until(PATIENCE, || counter(&gateway, "items") == Some(good as i64)),
        "items: {:?}\n{}",
        counter(&gateway, "items"),
        gateway.logs()
    );
    let config = gateway.config_path().display().to_string();
    let listed = || wasmgate(&["dlq", "--config", &config, "list"], PATIENCE).stdout;
    assert!(
        wait_until(PATIENCE, || listed().matches("ledger").count() >= BAD.len()),
        "{}\n{}",
        listed(),
        gateway.logs()
    );
    // Each bad message is a dead letter of its own, with its own event.
    let out = listed();
    assert_eq!(out.matches("ledger").count(), BAD.len(), "{out}");
    let shown: String = out
        .lines()
        .filter(|line| line.contains("ledger"))
        .filter_map(|line| line.split_whitespace().next())
        .map(|id| wasmgate(&["dlq", "--config", &config, "show", id], PATIENCE).stdout)
        .collect();
    for i in BAD {
        assert!(shown.contains(&format!("not json {i}")), "{i}: {shown}");
    }
    assert!(shown.contains("item_failed"), "{shown}");
    // The good ones ran once each: the sums are those of a replay.
    assert_eq!(
        sales(&gateway),
        expected((0..N).filter(|i| !BAD.contains(i)))
    );
    // Batches, not one invocation per message: far fewer commits.
    let batches = counter(&gateway, "batches").unwrap();
    assert!(
        batches < good as i64 / 2,
        "{batches} batches for {good} messages"
    );
}

#[test]
fn a_batchs_effects_are_exact_across_kill_9_and_resends_with_a_dedup_key() {
    const N: u64 = 3_000;
    let broker = Mosquitto::start_with(&format!(
        "{GATEWAY_SETTINGS}persistence true\npersistence_location {{dir}}/\n"
    ));
    let mut gateway =
        GatewayProcess::start_toml(|dir| config(dir, broker.port(), ", dedup_key = \"id\""));
    let port = broker.port();
    let sale = |i: u64| {
        (
            format!("vending/{}/sale", MACHINES[i as usize % 4]),
            format!(r#"{{"id":"s-{i}","cents":{}}}"#, cents(i)),
        )
    };
    let publisher = std::thread::spawn(move || {
        let device = MqttClient::connect(port, &unique_id("device"));
        for i in 0..N {
            let (topic, payload) = sale(i);
            device.publish(&topic, payload);
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        device.wait_acked(PATIENCE);
    });
    for share in [N / 4, N / 2] {
        assert!(
            wait_until(PATIENCE, || counter(&gateway, "items")
                .is_some_and(|n| n >= share as i64)),
            "{}",
            gateway.logs()
        );
        gateway.kill();
        gateway.restart();
    }
    publisher.join().unwrap();
    assert!(
        wait_until(PATIENCE, || counter(&gateway, "items") == Some(N as i64)),
        "items: {:?}\n{}",
        counter(&gateway, "items"),
        gateway.logs()
    );
    // A device that resends what it is not sure of: the same ids again, in
    // batches with one new sale last (one shard: it runs after them).
    let device = MqttClient::connect(port, &unique_id("resender"));
    for i in (0..N / 2).chain([N]) {
        let (topic, payload) = sale(i);
        device.publish(&topic, payload);
    }
    device.wait_acked(PATIENCE);
    assert!(
        wait_until(PATIENCE, || counter(&gateway, "items")
            >= Some(N as i64 + 1)),
        "items: {:?}\n{}",
        counter(&gateway, "items"),
        gateway.logs()
    );
    // Batches run only their new items: nothing counted twice.
    assert_eq!(counter(&gateway, "items"), Some(N as i64 + 1));
    assert_eq!(sales(&gateway), expected(0..=N));
}

#[test]
fn config_check_explains_bad_batching_windows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let mut text = config(dir.path(), 1883, "");
    text = text.replace("size = 50", "size = 0");
    text.push_str("\n[[functions]]\nname = \"tick\"\nwasm = \"x.wasm\"\ntriggers = [{ schedule = \"rate(1 minute)\", batch = { size = 5 } }]\n");
    std::fs::write(&path, text).unwrap();
    let out = wasmgate(&["config", "check", path.to_str().unwrap()], PATIENCE);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("batch.size"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("batching windows are for mqtt, file and kv_change triggers"),
        "{}",
        out.stderr
    );
}

/// A copy of a message that lands in the same batch as its original (a
/// device resending at once) is not run twice: the store has not seen its
/// id yet, so the batch itself catches it, and acknowledges it with the
/// original once that is committed.
#[test]
fn a_copy_within_one_batch_runs_once() {
    let broker = Mosquitto::start_with(GATEWAY_SETTINGS);
    let gateway =
        GatewayProcess::start_toml(|dir| config(dir, broker.port(), ", dedup_key = \"id\""));
    let device = MqttClient::connect(broker.port(), &unique_id("device"));
    for i in 0..10 {
        let payload = format!(r#"{{"id":"twice-{i}","cents":{}}}"#, cents(i));
        device.publish("vending/vm-1/sale", payload.clone());
        device.publish("vending/vm-1/sale", payload);
    }
    device.publish("vending/vm-1/sale", r#"{"id":"last","cents":1}"#);
    device.wait_acked(PATIENCE);
    assert!(
        wait_until(PATIENCE, || counter(&gateway, "items") >= Some(11)),
        "items: {:?}\n{}",
        counter(&gateway, "items"),
        gateway.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(counter(&gateway, "items"), Some(11), "a copy ran");
    let want: i64 = (0..10).map(cents).sum::<i64>() + 1;
    assert_eq!(counter(&gateway, "sales/vm-1"), Some(want));
}

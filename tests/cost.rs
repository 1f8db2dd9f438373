//! `wasmgate cost` against the real binary: what a function's invocations
//! used is kept per hour in the database, so the report covers restarts;
//! through a running gateway it is current, and it prices the same work
//! on AWS Lambda and IoT Core and says where a limit is far above what is
//! used.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::gateway::{example_wasm, wasmgate, GatewayProcess};
use support::mqtt::{free_port, unique_id, wait_until, MqttClient};
use support::rig::telemetry;

const ONE: Duration = Duration::from_secs(60);

fn cost(gateway: &GatewayProcess, since: &str) -> Value {
    let config = gateway.config_path().display().to_string();
    let out = wasmgate(
        &["cost", "--config", &config, "--since", since, "--json"],
        ONE,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn invocations(report: &Value) -> u64 {
    report["versions"].as_array().map_or(0, |v| {
        v.iter().filter_map(|v| v["invocations"].as_u64()).sum()
    })
}

#[test]
fn usage_is_kept_across_restarts_priced_and_right_sized() {
    let broker = free_port();
    let mut gateway = GatewayProcess::start_toml(|dir| {
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n\
             [[functions]]\nname = \"enrich\"\nwasm = {wasm:?}\ntriggers = [{{ mqtt = \"vending/#\" }}]\n\
             [functions.grants]\nupstream = [\"telemetry/#\"]\n[functions.limits]\nmemory_mb = 64\n",
            data = dir.join("data").display().to_string(),
            wasm = example_wasm("telemetry_enrich.wasm").display().to_string(),
        )
    });
    let publish = |n: u64| {
        let device = MqttClient::connect(broker, &unique_id("vm-1"));
        for seq in 0..n {
            device.publish("vending/vm-1/telemetry", telemetry(seq, 5.0));
        }
        device.wait_acked(ONE);
    };
    publish(20);
    // Through the running gateway: current, without waiting for a flush.
    assert!(
        wait_until(ONE, || invocations(&cost(&gateway, "1h")) == 20),
        "{}\n{}",
        cost(&gateway, "1h"),
        gateway.logs()
    );
    let report = cost(&gateway, "1h");
    let v = &report["versions"][0];
    assert_eq!(v["function"], "enrich");
    assert_eq!(v["failed"], 0);
    assert_eq!(v["memory_limit_bytes"], 64u64 << 20);
    assert!(v["peak_memory_bytes"].as_u64() >= Some(65_536), "{v}");
    assert!(
        v["fuel"].as_u64() > Some(0) && v["max_fuel"].as_u64() > Some(0),
        "{v}"
    );
    assert!(v["p99_duration_ms"].as_f64() > Some(0.0), "{v}");
    assert!(v["gb_seconds"].as_f64() > Some(0.0), "{v}");
    assert!(v["aws_month_usd"].as_f64() > Some(0.0), "{v}");
    // A telemetry enricher needs far less than 64 MiB and 50M fuel.
    let advice = v["advice"].to_string();
    assert!(
        advice.contains("limits.memory_mb =") && advice.contains("limits.fuel ="),
        "{advice}"
    );
    assert!(
        report["prices_source"]
            .as_str()
            .is_some_and(|s| s.contains("0.0000166667")),
        "{report}"
    );

    // Stopped: read from the database, flushed at shutdown. Restarted:
    // what ran before is there; what runs after adds.
    gateway.stop();
    assert_eq!(invocations(&cost(&gateway, "1h")), 20);
    gateway.restart();
    publish(5);
    assert!(
        wait_until(ONE, || invocations(&cost(&gateway, "1h")) == 25),
        "{}",
        cost(&gateway, "1h")
    );
    gateway.stop();
    assert_eq!(invocations(&cost(&gateway, "24h")), 25);
    let config = gateway.config_path().display().to_string();
    let text = wasmgate(&["cost", "--config", &config], ONE);
    assert_eq!(text.code, Some(0), "{text:?}");
    assert!(
        text.stdout.contains("FUNCTION")
            && text.stdout.contains("enrich")
            && text.stdout.contains("a month")
            && text.stdout.contains("limits.memory_mb"),
        "{}",
        text.stdout
    );
}

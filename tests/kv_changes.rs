//! The KV change stream end to end: one function's committed KV writes run
//! another, in order, with the value before and after, none lost across a
//! restart, and config check refuses a function that follows itself.

mod support;

use std::time::Duration;
use support::gateway::{example_wasm, wasmgate, GatewayProcess};
use support::mqtt::{free_port, wait_until, MqttClient};
use support::rig::{telemetry, telemetry_topic};

const ONE: Duration = Duration::from_secs(30);

#[test]
fn writes_of_one_function_run_another_in_order_across_a_restart() {
    let port = free_port();
    let mut gateway = GatewayProcess::start_toml(|dir| {
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{port}\"\n\
             [[functions]]\nname = \"vending\"\nwasm = {vending:?}\ntriggers = [{{ mqtt = \"vending/+/telemetry\" }}]\n[functions.grants]\nupstream = [\"telemetry/#\"]\nlocal = [\"vending/+/alert\"]\n\
             [[functions]]\nname = \"audit\"\nwasm = {audit:?}\ntriggers = [{{ kv_change = \"vending\", keys = \"vm-*/last_temp_c\" }}]\n",
            data = dir.join("data").display().to_string(),
            vending = example_wasm("vending_telemetry.wasm").display().to_string(),
            audit = example_wasm("kv_audit.wasm").display().to_string(),
        )
    });
    let publish = |from: u64, to: u64| {
        let device = MqttClient::connect(port, &format!("vm-1-{from}"));
        for ts in from..to {
            device.publish(&telemetry_topic("vm-1"), telemetry(ts, ts as f32));
        }
        device.wait_acked(ONE);
    };
    let modified = |gateway: &GatewayProcess, n: u64| {
        wait_until(ONE, || {
            support::gateway::kv_value(gateway, "audit", "changes/modify") == Some(n.to_string())
        })
    };
    publish(1, 6);
    // Stopped as soon as vending has its writes: the follower may not have
    // seen them all; after the restart it carries on from its cursor.
    gateway.stop();
    gateway.restart();
    assert!(modified(&gateway, 4), "{}", gateway.logs());
    publish(6, 11);
    assert!(modified(&gateway, 9), "{}", gateway.logs());
    assert_eq!(
        support::gateway::kv_value(&gateway, "audit", "changes/insert").as_deref(),
        Some("1")
    );
    assert_eq!(
        support::gateway::kv_value(&gateway, "audit", "changes/remove"),
        None
    );
    // The copy is the last value written: the changes ran in commit order.
    assert_eq!(
        support::gateway::kv_value(&gateway, "audit", "copy/vm-1/last_temp_c"),
        support::gateway::kv_value(&gateway, "vending", "vm-1/last_temp_c")
    );
    assert_eq!(
        support::gateway::kv_value(&gateway, "vending", "vm-1/last_temp_c").as_deref(),
        Some("10.0")
    );
}

#[test]
fn a_function_following_its_own_changes_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let audit = example_wasm("kv_audit.wasm").display().to_string();
    let text = |extra: &str| {
        format!("[[functions]]\nname = \"audit\"\nwasm = {audit:?}\ntriggers = [{{ kv_change = \"audit\"{extra} }}, {{ kv_change = \"nobody\" }}]\n")
    };
    std::fs::write(&path, text("")).unwrap();
    let out = wasmgate(&["config", "check", path.to_str().unwrap()], ONE);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("functions[0].triggers[0].kv_change: `kv_change` cannot be used on the function's own namespace")
            && out.stderr.contains("functions[0].triggers[1].kv_change: no function named \"nobody\""),
        "{}",
        out.stderr
    );
    std::fs::write(&path, text(", allow_self = true")).unwrap();
    let out = wasmgate(&["config", "check", path.to_str().unwrap()], ONE);
    assert!(!out.stderr.contains("own namespace"), "{}", out.stderr);
}

/// `batch` on a change stream: changes are handed over many at a time, in
/// commit order, each counted once; a module that predates the ABI
/// revision in which `KvChange` grew (so would misread a batch of them) is
/// refused at start, naming the revision it needs.
#[test]
fn a_batched_change_stream_runs_every_change_once_in_order() {
    let port = free_port();
    let gateway = GatewayProcess::start_toml(|dir| {
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{port}\"\n\
             [[functions]]\nname = \"vending\"\nwasm = {vending:?}\ntriggers = [{{ mqtt = \"vending/+/telemetry\" }}]\n[functions.grants]\nupstream = [\"telemetry/#\"]\nlocal = [\"vending/+/alert\"]\n\
             [[functions]]\nname = \"audit\"\nwasm = {audit:?}\ntriggers = [{{ kv_change = \"vending\", keys = \"vm-*/last_temp_c\", batch = {{ size = 20, window_ms = 50 }} }}]\n",
            data = dir.join("data").display().to_string(),
            vending = example_wasm("vending_telemetry.wasm").display().to_string(),
            audit = example_wasm("kv_audit.wasm").display().to_string(),
        )
    });
    let device = MqttClient::connect(port, "vm-1");
    for ts in 1..=60 {
        device.publish(&telemetry_topic("vm-1"), telemetry(ts, ts as f32));
    }
    device.wait_acked(ONE);
    assert!(
        wait_until(ONE, || support::gateway::kv_value(
            &gateway,
            "audit",
            "changes/modify"
        ) == Some("59".into())),
        "{:?}\n{}",
        support::gateway::kv_value(&gateway, "audit", "changes/modify"),
        gateway.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        support::gateway::kv_value(&gateway, "audit", "changes/modify").as_deref(),
        Some("59"),
        "each change once"
    );
    assert_eq!(
        support::gateway::kv_value(&gateway, "audit", "copy/vm-1/last_temp_c").as_deref(),
        Some("60.0"),
        "in commit order: the copy ends at the last value"
    );
}

#[test]
fn a_module_too_old_for_batched_changes_is_refused_at_start() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    // No `wasmgate_abi_revision` export: revision 0.
    let old = dir.path().join("old.wasm");
    std::fs::write(
        &old,
        wat::parse_str(
            r#"(module (memory (export "memory") 1)
              (func (export "wasmgate_abi_version") (result i32) i32.const 1)
              (func (export "wasmgate_handle") (param i32) (result i32) i32.const 0))"#,
        )
        .unwrap(),
    )
    .unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{port}\"\n\
             [[functions]]\nname = \"vending\"\nwasm = {vending:?}\ntriggers = [{{ mqtt = \"vending/+/telemetry\" }}]\n\
             [[functions]]\nname = \"audit\"\nwasm = {old:?}\ntriggers = [{{ kv_change = \"vending\", batch = {{ size = 10 }} }}]\n",
            data = dir.path().join("data").display().to_string(),
            vending = example_wasm("vending_telemetry.wasm").display().to_string(),
            old = old.display().to_string(),
        ),
    )
    .unwrap();
    let out = wasmgate(&["run", "--config", config.to_str().unwrap()], ONE);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("ABI revision 1") && out.stderr.contains("current SDK"),
        "{}",
        out.stderr
    );
}

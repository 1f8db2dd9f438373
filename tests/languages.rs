//! Functions written in C, Zig and AssemblyScript against the ABI alone
//! (functions/abi/README.md, no WASI): the committed modules
//! `functions/examples/wasm/{c_vending_alert,zig_downsampler,as_enrich}.wasm`,
//! which `functions/examples/build-languages.sh` rebuilds from
//! `functions/examples/{c-vending-alert,zig-downsampler,as-enrich}/`.
//!
//! For each module:
//! - its imports are only from module `wasmgate` (the gateway would also
//!   take a WASI subset; these must not need it);
//! - `wasmgate invoke` with its event file prints the expected emits, and
//!   the same emits, KV writes and metrics as the Rust example it ports
//!   (vending-telemetry, robot-telemetry, telemetry-enrich) on that event;
//! - on a running gateway (embedded local broker, a mosquitto as the cloud
//!   broker), an MQTT message published by a device comes out as the
//!   expected local and upstream messages, and its KV state is kept.

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::gateway::{example_wasm, kv_value, wasmgate, GatewayProcess};
use support::mosquitto::{Mosquitto, GATEWAY_SETTINGS};
use support::mqtt::{free_port, unique_id, Message, MqttClient};

/// For one message to make it through (debug build, busy CI machine).
const ONE: Duration = Duration::from_secs(30);
/// For one `wasmgate invoke`.
const COMMAND: Duration = Duration::from_secs(60);

/// A file under `functions/examples/`.
fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../functions/examples")
        .join(path)
        .canonicalize()
        .unwrap_or_else(|e| panic!("functions/examples/{path}: {e}"))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `wasmgate invoke MODULE --event EVENT --json ARGS...`: the report. It
/// exits 0 when every invocation succeeded, 1 when one failed.
#[track_caller]
fn invoke(module: &Path, event: &Path, args: &[&str]) -> Value {
    let mut all = vec!["invoke", path(module), "--event", path(event), "--json"];
    all.extend(args);
    let out = wasmgate(&all, COMMAND);
    let report: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "wasmgate {} (exit {:?}) printed no JSON ({e}):\n{}{}",
            all.join(" "),
            out.code,
            out.stdout,
            out.stderr
        )
    });
    let all_ok = report["invocations"]
        .as_array()
        .expect("invocations")
        .iter()
        .all(|i| i["outcome"]["ok"] == true);
    assert_eq!(
        out.code,
        Some(if all_ok { 0 } else { 1 }),
        "wasmgate {}:\n{}",
        all.join(" "),
        out.stderr
    );
    report
}

/// What one invocation of a report did, without its costs and logs: what
/// two modules of the same function must agree on.
fn effects(invocation: &Value) -> Value {
    let outcome = &invocation["outcome"];
    json!({
        "ok": outcome["ok"],
        "emits": outcome["emits"],
        "kv": outcome["kv"],
        "metrics": invocation["metrics"],
    })
}

/// The emits of a report's first invocation as (destination, topic,
/// payload); none if it failed.
fn emits(report: &Value) -> Vec<(String, String, String)> {
    let outcome = &report["invocations"][0]["outcome"];
    if outcome["ok"] != true {
        return Vec::new();
    }
    outcome["emits"]
        .as_array()
        .expect("emits")
        .iter()
        .map(|e| {
            (
                e["destination"].as_str().unwrap().to_owned(),
                e["topic"].as_str().unwrap().to_owned(),
                e["payload"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn emit(destination: &str, topic: &str, payload: &str) -> (String, String, String) {
    (destination.into(), topic.into(), payload.into())
}

/// Every import of the module, as `module.name`; each must be from `wasmgate`.
#[track_caller]
fn assert_imports_only_wasmgate(file: &str) {
    let bytes = std::fs::read(example_wasm(file)).unwrap();
    let engine = wasmi::Engine::default();
    let module = wasmi::Module::new(&engine, &bytes[..]).expect("a valid module");
    let imports: Vec<String> = module
        .imports()
        .map(|i| format!("{}.{}", i.module(), i.name()))
        .collect();
    assert!(!imports.is_empty(), "{file} imports nothing");
    for import in &imports {
        assert!(
            import.starts_with("wasmgate."),
            "{file} imports {import}: {imports:?}"
        );
    }
    let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
    for export in ["memory", "wasmgate_abi_version", "wasmgate_handle"] {
        assert!(exports.contains(&export), "{file} exports {exports:?}");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---------------------------------------------------------------------------
// A gateway running one of the modules.

/// An embedded local broker, a mosquitto as the cloud broker, and a gateway
/// running one function; a subscriber on each broker.
struct Rig {
    gateway: GatewayProcess,
    _cloud: Mosquitto,
    local_port: u16,
    /// Subscribed on the local broker.
    local: MqttClient,
    /// Subscribed on the cloud broker.
    cloud: MqttClient,
}

impl Rig {
    /// `function`: the `[[functions]]` table (and its sub-tables);
    /// `local`/`cloud`: what each subscriber subscribes to.
    #[track_caller]
    fn start(function: &str, local: &[&str], cloud: &[&str]) -> Rig {
        let cloud_broker = Mosquitto::start_with(GATEWAY_SETTINGS);
        let local_port = free_port();
        let cloud_port = cloud_broker.port();
        let gateway = GatewayProcess::start_toml(|dir| {
            format!(
                r#"gateway_id = "languages"
data_dir = {data:?}

[broker]
mode = "embedded"
listen = "127.0.0.1:{local_port}"
client_id = "{client}"

[upstream]
host = "127.0.0.1"
port = {cloud_port}

{function}"#,
                data = path(&dir.join("data")).to_owned(),
                client = unique_id("gw"),
            )
        });
        let local_sub = MqttClient::connect(local_port, "ops");
        for filter in local {
            local_sub.subscribe(filter);
        }
        let cloud_sub = MqttClient::connect(cloud_port, "cloud");
        for filter in cloud {
            cloud_sub.subscribe(filter);
        }
        Rig {
            gateway,
            _cloud: cloud_broker,
            local_port,
            local: local_sub,
            cloud: cloud_sub,
        }
    }

    fn device(&self) -> MqttClient {
        MqttClient::connect(self.local_port, "device")
    }

    /// The gateway logs "gateway running" before its MQTT session has
    /// subscribed: publishes `probe(n)` (topic, payload) until a message
    /// on `out(n)` comes out of the cloud broker.
    #[track_caller]
    fn wait_until_flowing(
        &self,
        device: &MqttClient,
        probe: impl Fn(u32) -> (String, String),
        out: impl Fn(u32) -> String,
    ) {
        let deadline = std::time::Instant::now() + ONE;
        let mut n = 0;
        while std::time::Instant::now() < deadline {
            n += 1;
            let (topic, payload) = probe(n);
            device.publish(&topic, payload);
            let wanted = out(n);
            let quiet = std::time::Instant::now() + Duration::from_millis(500);
            while let Some(left) = quiet.checked_duration_since(std::time::Instant::now()) {
                match self.cloud.next_message(left) {
                    Some(m) if m.topic == wanted => {
                        // Probes sent before this one may still come; let them.
                        let _ = self.cloud.drain_for(Duration::from_millis(300));
                        return;
                    }
                    Some(_) | None => {}
                }
            }
        }
        panic!(
            "nothing came through the gateway within {ONE:?}; its log:\n{}",
            self.gateway.logs()
        );
    }

    /// The next message on `topic` from `client`, skipping others.
    #[track_caller]
    fn next_on(&self, client: &MqttClient, topic: &str) -> Message {
        let deadline = std::time::Instant::now() + ONE;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match client.next_message(left) {
                Some(m) if m.topic == topic => return m,
                Some(_) => {}
                None => break,
            }
        }
        panic!(
            "no message on {topic} within {ONE:?}; the gateway's log:\n{}",
            self.gateway.logs()
        );
    }
}

fn text(message: &Message) -> String {
    String::from_utf8(message.payload.clone()).expect("UTF-8 payload")
}

/// The `payload` of an event file, as JSON text (how a device sends it).
fn event_payload(file: &str) -> String {
    let event: Value =
        serde_json::from_str(&std::fs::read_to_string(example(file)).unwrap()).unwrap();
    match &event["mqtt"]["payload"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------
// C: vending alerts (c-vending-alert, the port of vending-telemetry).

const HOT_ALERT: &str = r#"{"machine":"vm-17","ts":1764160060000,"temp_c":9.4,"max_temp_c":8.0,"too_warm":true,"door_open":true,"low_stock":["A1","B1"]}"#;
const HOT_SUMMARY: &str = r#"{"machine":"vm-17","ts":1764160060000,"temp_c":9.4,"door_open":true,"sales_cents":0,"vends":0,"low_slots":2}"#;

#[test]
fn c_module_imports_only_wasmgate() {
    assert_imports_only_wasmgate("c_vending_alert.wasm");
}

#[test]
fn c_module_under_invoke_alerts_like_the_rust_one() {
    let c = example_wasm("c_vending_alert.wasm");
    let rust = example_wasm("vending_telemetry.wasm");

    let hot = example("c-vending-alert/event-hot.json");
    let report = invoke(&c, &hot, &[]);
    assert_eq!(
        emits(&report),
        [
            emit("local", "vending/vm-17/alert", HOT_ALERT),
            emit("upstream", "telemetry/vending/vm-17", HOT_SUMMARY),
        ],
        "{report:#}"
    );
    assert_eq!(report["invocations"][0]["outcome"]["ok"], true);

    // The Rust module on the same events (its own event files), run
    // three times so that totals accumulate through KV: the same effects.
    for event in [
        "event-hot.json",
        "event.json",
        "event-bench.json",
        "event-bad.json",
    ] {
        let event = example(&format!("vending-telemetry/{event}"));
        let c_report = invoke(&c, &event, &["--repeat", "3"]);
        let rust_report = invoke(&rust, &event, &["--repeat", "3"]);
        for i in 0..3 {
            assert_eq!(
                effects(&c_report["invocations"][i]),
                effects(&rust_report["invocations"][i]),
                "{} call {i}: C against Rust",
                event.display()
            );
        }
        let ok = c_report["invocations"][0]["outcome"]["ok"] == true;
        assert_eq!(ok, !event.ends_with("event-bad.json"), "{c_report:#}");
    }
    // Config thresholds, as `--set` gives them.
    let normal = example("c-vending-alert/event.json");
    let args = ["--set", "max_temp_c=6.5", "--set", "low_stock=7"];
    let c_report = invoke(&c, &normal, &args);
    assert_eq!(
        effects(&c_report["invocations"][0]),
        effects(&invoke(&rust, &normal, &args)["invocations"][0])
    );
    let alert = &emits(&c_report)[0];
    assert_eq!(alert.1, "vending/vm-17/alert");
    assert!(
        alert.2.contains(r#""max_temp_c":6.5,"too_warm":true"#),
        "{alert:?}"
    );
    assert!(alert.2.contains(r#""low_stock":["A1","A2"]"#), "{alert:?}");
}

#[test]
fn c_module_on_a_gateway_alerts_locally_and_sums_upstream() {
    let rig = Rig::start(
        &format!(
            r#"[[functions]]
name = "c-vending"
wasm = {wasm:?}
triggers = [{{ mqtt = "vending/+/telemetry", qos = 1 }}]
[functions.grants]
local = ["vending/+/alert"]
upstream = ["telemetry/vending/+"]
"#,
            wasm = path(&example_wasm("c_vending_alert.wasm")),
        ),
        &["vending/+/alert"],
        &["telemetry/vending/+"],
    );
    let device = rig.device();
    rig.wait_until_flowing(
        &device,
        |n| {
            (
                "vending/probe/telemetry".into(),
                format!(r#"{{"ts":{n},"temp_c":4.0}}"#),
            )
        },
        |_| "telemetry/vending/probe".into(),
    );

    device.publish(
        "vending/vm-17/telemetry",
        event_payload("c-vending-alert/event-hot.json"),
    );
    let alert = rig.next_on(&rig.local, "vending/vm-17/alert");
    assert_eq!(text(&alert), HOT_ALERT);
    let summary = rig.next_on(&rig.cloud, "telemetry/vending/vm-17");
    assert_eq!(text(&summary), HOT_SUMMARY);

    // A normal reading with a sale raises no alert: the next alert is the
    // warm reading after it (alerts of one machine come in order).
    device.publish(
        "vending/vm-17/telemetry",
        event_payload("c-vending-alert/event.json"),
    );
    device.publish(
        "vending/vm-17/telemetry",
        r#"{"ts":3,"temp_c":8.5,"stock":[{"slot":"A1","count":9}]}"#,
    );
    let summary = rig.next_on(&rig.cloud, "telemetry/vending/vm-17");
    assert_eq!(
        text(&summary),
        r#"{"machine":"vm-17","ts":1764160000000,"temp_c":6.8,"door_open":false,"sales_cents":150,"vends":1,"low_slots":0}"#
    );
    let alert = rig.next_on(&rig.local, "vending/vm-17/alert");
    assert_eq!(
        text(&alert),
        r#"{"machine":"vm-17","ts":3,"temp_c":8.5,"max_temp_c":8.0,"too_warm":true,"door_open":false,"low_stock":[]}"#
    );
    let summary = rig.next_on(&rig.cloud, "telemetry/vending/vm-17");
    assert!(
        text(&summary).contains(r#""sales_cents":150,"vends":1"#),
        "{}",
        text(&summary)
    );
    assert_eq!(
        kv_value(&rig.gateway, "c-vending", "vm-17/sales_cents").as_deref(),
        Some("150")
    );
    assert_eq!(
        kv_value(&rig.gateway, "c-vending", "vm-17/last_temp_c").as_deref(),
        Some("8.5")
    );
}

// ---------------------------------------------------------------------------
// Zig: the robot downsampler (zig-downsampler, the port of robot-telemetry).

const ROBOT_POSITION: &str =
    r#"{"robot":"r-3","ts":1764160000000,"x":1.5,"y":2.0,"state":"moving"}"#;
const ROBOT_ALERT: &str = r#"{"robot":"r-3","ts":1764160000000,"alert":"battery_low","battery_pct":17.5,"threshold_pct":20.0}"#;

#[test]
fn zig_module_imports_only_wasmgate() {
    assert_imports_only_wasmgate("zig_downsampler.wasm");
}

#[test]
fn zig_module_under_invoke_downsamples_like_the_rust_one() {
    let zig = example_wasm("zig_downsampler.wasm");
    let rust = example_wasm("robot_telemetry.wasm");
    let event = example("zig-downsampler/event.json");

    let report = invoke(&zig, &event, &[]);
    assert_eq!(
        emits(&report),
        [
            emit("upstream", "robots/r-3/position", ROBOT_POSITION),
            emit("local", "robots/r-3/alert", ROBOT_ALERT),
        ],
        "{report:#}"
    );

    // Twelve times the same message, KV kept between them: the first is
    // sent, then nothing (not moved, alert already raised) until the 10th
    // message since, exactly as the Rust module decides.
    let zig_report = invoke(&zig, &event, &["--repeat", "12"]);
    let rust_report = invoke(&rust, &event, &["--repeat", "12"]);
    let mut sent = Vec::new();
    for i in 0..12 {
        let z = effects(&zig_report["invocations"][i]);
        assert_eq!(
            z,
            effects(&rust_report["invocations"][i]),
            "call {i}: Zig against Rust"
        );
        if !z["emits"].as_array().unwrap().is_empty() {
            sent.push(i);
        }
    }
    assert_eq!(sent, [0, 10], "calls that emitted");
    let args = ["--set", "every_n=2", "--set", "battery_low_pct=10"];
    let zig_report = invoke(&zig, &event, &[&args[..], &["--repeat", "4"][..]].concat());
    let rust_report = invoke(&rust, &event, &[&args[..], &["--repeat", "4"][..]].concat());
    for i in 0..4 {
        assert_eq!(
            effects(&zig_report["invocations"][i]),
            effects(&rust_report["invocations"][i]),
            "call {i} with {args:?}"
        );
    }
}

#[test]
fn zig_module_on_a_gateway_forwards_moves_and_keeps_its_state_in_kv() {
    let rig = Rig::start(
        &format!(
            r#"[[functions]]
name = "zig-robots"
wasm = {wasm:?}
triggers = [{{ mqtt = "robots/+/telemetry", qos = 1 }}]
[functions.grants]
local = ["robots/+/alert"]
upstream = ["robots/+/position"]
"#,
            wasm = path(&example_wasm("zig_downsampler.wasm")),
        ),
        &["robots/+/alert"],
        &["robots/+/position"],
    );
    let device = rig.device();
    // A robot's first message is always sent: a new probe robot each time.
    rig.wait_until_flowing(
        &device,
        |n| {
            (
                format!("robots/probe-{n}/telemetry"),
                r#"{"ts":1,"x":0,"y":0,"battery_pct":90}"#.into(),
            )
        },
        |n| format!("robots/probe-{n}/position"),
    );

    let topic = "robots/r-3/telemetry";
    device.publish(topic, event_payload("zig-downsampler/event.json"));
    assert_eq!(
        text(&rig.next_on(&rig.cloud, "robots/r-3/position")),
        ROBOT_POSITION
    );
    assert_eq!(
        text(&rig.next_on(&rig.local, "robots/r-3/alert")),
        ROBOT_ALERT
    );

    let at = |ts: u32, x: f32, battery: f32| {
        format!(r#"{{"ts":{ts},"x":{x},"y":2.0,"battery_pct":{battery},"state":"moving"}}"#)
    };
    // 2: moved 0.3 m, still low: nothing. 3: moved 0.6 m from the last sent
    // position, charged: a position, the alert re-armed. 4: low again: an alert.
    device.publish(topic, at(2, 1.8, 16.0));
    device.publish(topic, at(3, 2.1, 60.0));
    device.publish(topic, at(4, 2.1, 12.0));
    assert_eq!(
        text(&rig.next_on(&rig.cloud, "robots/r-3/position")),
        r#"{"robot":"r-3","ts":3,"x":2.1,"y":2.0,"state":"moving"}"#,
        "the next position is message 3's"
    );
    assert_eq!(
        text(&rig.next_on(&rig.local, "robots/r-3/alert")),
        r#"{"robot":"r-3","ts":4,"alert":"battery_low","battery_pct":12.0,"threshold_pct":20.0}"#,
        "the next alert is message 4's"
    );
    // Message 4 did not move: one message since the last position.
    assert_eq!(
        kv_value(&rig.gateway, "zig-robots", "r-3/since").as_deref(),
        Some("1")
    );
    assert!(kv_value(&rig.gateway, "zig-robots", "r-3/battery_low").is_some());
}

// ---------------------------------------------------------------------------
// AssemblyScript: telemetry enrichment (as-enrich, the port of telemetry-enrich).

#[test]
fn as_module_imports_only_wasmgate() {
    assert_imports_only_wasmgate("as_enrich.wasm");
}

/// `payload` with `received_ms` checked to lie in `[before, after]` and
/// replaced by 0.
#[track_caller]
fn without_time(payload: &str, before: u64, after: u64) -> String {
    let key = r#","received_ms":"#;
    let start = payload
        .find(key)
        .unwrap_or_else(|| panic!("no received_ms: {payload}"))
        + key.len();
    let end = start + payload[start..].find([',', '}']).unwrap();
    let ms: u64 = payload[start..end].parse().unwrap();
    assert!(
        (before..=after).contains(&ms),
        "received_ms {ms} not in {before}..={after}"
    );
    format!("{}0{}", &payload[..start], &payload[end..])
}

#[test]
fn as_module_under_invoke_enriches_like_the_rust_one() {
    let module = example_wasm("as_enrich.wasm");
    let rust = example_wasm("telemetry_enrich.wasm");
    let event = example("as-enrich/event.json");
    let before = now_ms();
    let report = invoke(&module, &event, &["--set", "site=plant \"7\""]);
    let after = now_ms();
    let out = emits(&report);
    assert_eq!(out.len(), 1, "{report:#}");
    assert_eq!(
        (out[0].0.as_str(), out[0].1.as_str()),
        ("upstream", "telemetry/vending/vm-17")
    );
    assert_eq!(
        without_time(&out[0].2, before, after),
        r#"{"door_open":false,"machine":"vm-17","sale":{"price_cents":150,"slot":"A1"},"stock":[{"count":2,"slot":"A1"},{"count":7,"slot":"A2"},{"count":0,"slot":"B1"}],"temp_c":6.8,"ts":1764160000000,"site":"plant \"7\"","received_ms":0,"temp_f":44.2}"#
    );

    // The Rust module on the same events: the same output but for the time.
    let dir = tempfile::tempdir().unwrap();
    let payloads = [
        r#"{"temp_c":-18}"#,
        r#"{"battery":0.8}"#,
        " { } ",
        r#"{"temp_c":"hot"}"#,
        r#"{ "temp_c" : 5.50 , "x": [1e3, null, true] }"#,
        r#"{"temp_c": 5"#,
        "[1,2]",
    ];
    for (i, payload) in payloads.iter().enumerate() {
        let file = dir.path().join(format!("event-{i}.json"));
        let event = json!({"mqtt": {"topic": "robots/r2/telemetry", "payload": payload}});
        std::fs::write(&file, event.to_string()).unwrap();
        let before = now_ms();
        let ours = invoke(&module, &file, &[]);
        let theirs = invoke(&rust, &file, &[]);
        let after = now_ms();
        let ok = |r: &Value| r["invocations"][0]["outcome"]["ok"] == true;
        assert_eq!(
            ok(&ours),
            ok(&theirs),
            "{payload}: {ours:#} against {theirs:#}"
        );
        assert_eq!(ok(&ours), i < 5, "{payload}");
        let (ours, theirs) = (emits(&ours), emits(&theirs));
        assert_eq!(
            ours.len(),
            theirs.len(),
            "{payload}: {ours:?} against {theirs:?}"
        );
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!((&a.0, &a.1), (&b.0, &b.1), "{payload}");
            assert_eq!(
                without_time(&a.2, before, after),
                without_time(&b.2, before, after),
                "{payload}"
            );
        }
    }
}

#[test]
fn as_module_on_a_gateway_enriches_upstream() {
    let rig = Rig::start(
        &format!(
            r#"[[functions]]
name = "as-enrich"
wasm = {wasm:?}
triggers = [{{ mqtt = "sensors/+/telemetry", qos = 1 }}]
[functions.grants]
upstream = ["telemetry/sensors/+"]
[functions.config]
site = "plant-7"
"#,
            wasm = path(&example_wasm("as_enrich.wasm")),
        ),
        &[],
        &["telemetry/sensors/+"],
    );
    let device = rig.device();
    rig.wait_until_flowing(
        &device,
        |n| ("sensors/probe/telemetry".into(), format!(r#"{{"n":{n}}}"#)),
        |_| "telemetry/sensors/probe".into(),
    );

    let before = now_ms();
    // Not a JSON object: fails, nothing sent; the next message goes through.
    device.publish("sensors/s-1/telemetry", r#"{"temp_c": 21.5"#);
    device.publish("sensors/s-1/telemetry", r#"{"device":"s-1","temp_c":21.5}"#);
    let out = rig.next_on(&rig.cloud, "telemetry/sensors/s-1");
    let after = now_ms();
    assert_eq!(
        without_time(&text(&out), before, after),
        r#"{"device":"s-1","temp_c":21.5,"site":"plant-7","received_ms":0,"temp_f":70.7}"#
    );
    assert!(
        !rig.gateway
            .log_lines_with(&["telemetry is not a JSON object on sensors/s-1/telemetry"])
            .is_empty(),
        "the failed message is logged:\n{}",
        rig.gateway.logs()
    );
}

/// `functions/js/js_runtime.wasm`: QuickJS compiled to a WASI reactor,
/// running a Node-RED style `handle(msg)` (here the bundled
/// `examples/enrich.js`, the telemetry-enrich port).
fn js_module() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../functions/js/js_runtime.wasm")
        .canonicalize()
        .expect("functions/js/js_runtime.wasm (functions/js/build.sh)")
}

#[test]
fn js_module_under_invoke_enriches_like_the_rust_one() {
    let event = example("as-enrich/event.json");
    let before = now_ms();
    let report = invoke(&js_module(), &event, &["--set", "site=plant-7"]);
    let after = now_ms();
    let out = emits(&report);
    assert_eq!(out.len(), 1, "{report:#}");
    assert_eq!(
        (out[0].0.as_str(), out[0].1.as_str()),
        ("upstream", "telemetry/vending/vm-17")
    );
    // Re-encoded by JSON.stringify (5.50 is 5.5), so compared as JSON.
    let ours: Value = serde_json::from_str(&out[0].2).unwrap();
    let received = ours["received_ms"].as_u64().expect("received_ms");
    assert!((before..=after).contains(&received), "{ours}");
    assert_eq!(ours["site"], "plant-7");
    assert_eq!(ours["temp_f"], 44.2);
    assert_eq!(ours["machine"], "vm-17");
    let rust = invoke(
        &example_wasm("telemetry_enrich.wasm"),
        &event,
        &["--set", "site=plant-7"],
    );
    let mut theirs: Value = serde_json::from_str(&emits(&rust)[0].2).unwrap();
    theirs["received_ms"] = ours["received_ms"].clone();
    assert_eq!(ours, theirs);

    // A function that throws fails the invocation, with its message logged.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("event.json");
    std::fs::write(
        &file,
        json!({"mqtt": {"topic": "not/a/telemetry/topic", "payload": "{}"}}).to_string(),
    )
    .unwrap();
    let report = invoke(&js_module(), &file, &[]);
    let invocation = &report["invocations"][0];
    assert_eq!(invocation["outcome"]["ok"], false, "{report:#}");
    assert!(
        invocation["logs"]
            .to_string()
            .contains("not a <kind>/<device>/telemetry topic"),
        "{report:#}"
    );
}

#[test]
fn js_module_on_a_gateway_runs_a_pasted_node_red_function_body() {
    let rig = Rig::start(
        &format!(
            r#"[[functions]]
name = "js"
wasm = {wasm:?}
triggers = [{{ mqtt = "sensors/+/telemetry", qos = 1 }}]
[functions.grants]
upstream = ["alerts/#"]
[functions.config]
function_body = 'if (msg.payload.temp_c > 8) {{ return {{ topic: "alerts/" + msg.topic.split("/")[1], payload: {{ hot: msg.payload.temp_c }}, upstream: true }}; }} return null;'
"#,
            wasm = path(&js_module()),
        ),
        &[],
        &["alerts/#"],
    );
    let device = rig.device();
    rig.wait_until_flowing(
        &device,
        |n| {
            (
                "sensors/probe/telemetry".into(),
                format!(r#"{{"temp_c":9,"n":{n}}}"#),
            )
        },
        |_| "alerts/probe".into(),
    );
    device.publish("sensors/s-1/telemetry", r#"{"temp_c": 4}"#);
    device.publish("sensors/s-2/telemetry", r#"{"temp_c": 12.5}"#);
    // The cold one sends nothing (`return null`): the hot one's alert
    // comes with none for s-1 before it (one session: in order).
    let out = loop {
        let m = rig.cloud.next_message(ONE).expect("the hot alert");
        assert_ne!(m.topic, "alerts/s-1", "the cold reading sent an alert");
        if m.topic == "alerts/s-2" {
            break m;
        }
    };
    assert_eq!(text(&out), r#"{"hot":12.5}"#);
}

//! `wasmgate apply` and SIGHUP against the real binary: a config file as a
//! live diff. Functions are added, removed and changed under a stream of
//! QoS 1 messages without losing or repeating one and without dropping the
//! device; a removed function's messages wait at the broker for it; what
//! needs a restart, a module that does not load, and a dry run change
//! nothing; an API deploy stands until the file names another module.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use support::gateway::{example_wasm, wasmgate, GatewayProcess};
use support::mqtt::{free_port, unique_id, wait_until, MqttClient};
use support::rig::telemetry;

const ONE: Duration = Duration::from_secs(60);

/// The parts of the config the tests vary.
#[derive(Clone)]
struct Shape {
    broker: u16,
    http: u16,
    /// `enrich`'s triggers, as TOML array items.
    enrich_triggers: &'static str,
    /// `enrich`'s `[functions.limits]` lines.
    enrich_limits: &'static str,
    /// `enrich`'s module.
    enrich_wasm: String,
    robots: bool,
    hello: bool,
    /// Another function with this module.
    extra: Option<String>,
}

impl Shape {
    fn toml(&self, dir: &Path) -> String {
        let enrich = example_wasm("telemetry_enrich.wasm").display().to_string();
        let mut text = format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
             [[functions]]\nname = \"enrich\"\nwasm = {wasm:?}\ntriggers = [{triggers}]\n\
             [functions.limits]\n{limits}\n[functions.grants]\nupstream = [\"telemetry/#\"]\n",
            data = dir.join("data").display().to_string(),
            broker = self.broker,
            http = self.http,
            wasm = self.enrich_wasm,
            triggers = self.enrich_triggers,
            limits = self.enrich_limits,
        );
        if self.robots {
            text += &format!(
                "[[functions]]\nname = \"robots\"\nwasm = {enrich:?}\ntriggers = [{{ mqtt = \"robot/+/telemetry\" }}]\n\
                 [functions.grants]\nupstream = [\"telemetry/#\"]\n"
            );
        }
        if self.hello {
            let hello = example_wasm("hello_http.wasm").display().to_string();
            text += &format!(
                "[[functions]]\nname = \"hello\"\nwasm = {hello:?}\ntriggers = [{{ http = \"GET /hello\" }}]\n"
            );
        }
        if let Some(wasm) = &self.extra {
            text += &format!(
                "[[functions]]\nname = \"extra\"\nwasm = {wasm:?}\ntriggers = [{{ mqtt = \"extra/#\" }}]\n"
            );
        }
        text
    }
}

/// Writes `shape` as the gateway's config and applies it.
fn apply(
    gateway: &GatewayProcess,
    shape: &Shape,
    extra: &[&str],
) -> support::gateway::CommandOutput {
    let path = gateway.config_path();
    std::fs::write(path, shape.toml(gateway.dir())).unwrap();
    let mut args = vec!["apply", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    wasmgate(&args, ONE)
}

fn get(port: u16, target: &str) -> u16 {
    support::http::request(port, "GET", target, "", "").0
}

/// The seqs (`ts`) of the enriched messages on `topic` until `want` of
/// them came or nothing came for a while; panics on one seen twice, with
/// the gateway's log (which says whether a session or the outbox
/// reconnected).
fn seqs_on(
    gateway: &GatewayProcess,
    outputs: &MqttClient,
    topic: &str,
    want: usize,
) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    outputs.collect_until(Duration::from_secs(10), |m| {
        if m.topic == topic {
            let ts = m.json()["ts"].as_u64().expect("a seq");
            assert!(
                seen.insert(ts),
                "seq {ts} on {topic} ran twice (after {} seqs)\n{}",
                seen.len(),
                gateway.logs()
            );
        }
        seen.len() >= want
    });
    seen
}

#[test]
fn apply_changes_functions_live_under_load_and_leaves_alone_what_it_refuses() {
    const N: u64 = 1_500;
    let (broker, http) = (free_port(), free_port());
    let first = Shape {
        broker,
        http,
        enrich_triggers: "{ mqtt = \"vending/+/telemetry\" }",
        enrich_limits: "concurrency = 2",
        enrich_wasm: example_wasm("telemetry_enrich.wasm").display().to_string(),
        robots: true,
        hello: false,
        extra: None,
    };
    let start = first.clone();
    let mut gateway = GatewayProcess::start_toml(move |dir| start.toml(dir));
    let outputs = MqttClient::connect(broker, &unique_id("outputs"));
    outputs.subscribe("telemetry/#");
    let robot = MqttClient::connect(broker, &unique_id("r-1"));
    robot.publish("robot/r-1/telemetry", telemetry(1, 5.0));
    assert_eq!(
        seqs_on(&gateway, &outputs, "telemetry/robot/r-1", 1).len(),
        1
    );

    // Under a stream of QoS 1 messages: enrich gets a second trigger and a
    // new queue (its triggers and workers restart), robots goes, hello
    // (an HTTP route, the first: the listener starts) comes.
    let changed = Shape {
        enrich_triggers: "{ mqtt = \"vending/+/telemetry\" }, { mqtt = \"kiosk/+/telemetry\" }",
        enrich_limits: "concurrency = 2\nqueue = 64",
        robots: false,
        hello: true,
        ..first.clone()
    };
    let publisher = std::thread::spawn(move || {
        let device = MqttClient::connect(broker, &unique_id("vm-1"));
        for seq in 0..N {
            device.publish("vending/vm-1/telemetry", telemetry(seq, 5.0));
            std::thread::sleep(Duration::from_micros(700));
        }
        device.wait_acked(ONE);
        device.connacks()
    });
    std::thread::sleep(Duration::from_millis(300));
    let applied = apply(&gateway, &changed, &[]);
    assert_eq!(applied.code, Some(0), "{applied:?}\n{}", gateway.logs());
    let plan = &applied.stdout;
    assert!(
        plan.contains("~ function enrich: triggers, limits.queue")
            && plan.contains("(its triggers and workers restart)"),
        "{plan}"
    );
    assert!(plan.contains("- function robots"), "{plan}");
    assert!(plan.contains("+ function hello"), "{plan}");
    assert_eq!(publisher.join().unwrap(), 1, "the device was disconnected");
    let seqs = seqs_on(&gateway, &outputs, "telemetry/vending/vm-1", N as usize);
    assert_eq!(
        seqs,
        (0..N).collect::<BTreeSet<_>>(),
        "lost across the restart of enrich\n{}",
        gateway.logs()
    );
    assert_eq!(get(http, "/hello"), 200, "{}", gateway.logs());
    let kiosk = MqttClient::connect(broker, &unique_id("k-1"));
    kiosk.publish("kiosk/k-1/telemetry", telemetry(7, 5.0));
    assert_eq!(
        seqs_on(&gateway, &outputs, "telemetry/kiosk/k-1", 1).len(),
        1
    );

    // A removed function's messages wait at the broker under its session,
    // and run once it is back.
    robot.publish("robot/r-1/telemetry", telemetry(2, 5.0));
    robot.wait_acked(ONE);
    assert!(seqs_on(&gateway, &outputs, "telemetry/robot/r-1", 1).is_empty());
    let back = Shape {
        robots: true,
        ..changed.clone()
    };
    let applied = apply(&gateway, &back, &[]);
    assert_eq!(applied.code, Some(0), "{applied:?}");
    assert!(
        applied.stdout.contains("+ function robots"),
        "{}",
        applied.stdout
    );
    assert_eq!(
        seqs_on(&gateway, &outputs, "telemetry/robot/r-1", 1),
        BTreeSet::from([2]),
        "{}",
        gateway.logs()
    );

    // A dry run plans and changes nothing: the same change is planned again.
    let fuel = Shape {
        enrich_limits: "concurrency = 2\nqueue = 64\nfuel = 70_000_000",
        ..back.clone()
    };
    for extra in [&["--dry-run"][..], &[]] {
        let planned = apply(&gateway, &fuel, extra);
        assert_eq!(planned.code, Some(0), "{planned:?}");
        assert!(
            planned
                .stdout
                .contains("~ function enrich: limits.fuel (live moves; nothing restarts)"),
            "{}",
            planned.stdout
        );
    }
    let again = apply(&gateway, &fuel, &[]);
    assert_eq!(again.stdout.trim(), "no changes", "{again:?}");

    // What is read only at start: refused, named, nothing applied.
    let moved = Shape {
        broker: free_port(),
        hello: false,
        ..fuel.clone()
    };
    let refused = apply(&gateway, &moved, &[]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("broker.listen")
            && refused.stderr.contains("restart")
            && refused.stderr.contains("nothing applied"),
        "{}",
        refused.stderr
    );
    // A module that does not load, beside a change that would: neither.
    let junk = gateway.dir().join("junk.wasm");
    std::fs::write(&junk, b"not a module").unwrap();
    let half = Shape {
        extra: Some(junk.display().to_string()),
        hello: false,
        ..fuel.clone()
    };
    let refused = apply(&gateway, &half, &[]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("refused (422)") && refused.stderr.contains("extra"),
        "{}",
        refused.stderr
    );
    let unchanged = apply(&gateway, &fuel, &[]);
    assert_eq!(unchanged.stdout.trim(), "no changes", "{unchanged:?}");
    assert_eq!(get(http, "/hello"), 200);
    // Removing a function another's grants still invoke: the file's check.
    let bad = fuel
        .toml(gateway.dir())
        .replace(
            "upstream = [\"telemetry/#\"]\n[[functions]]\nname = \"robots\"",
            "upstream = [\"telemetry/#\"]\ninvoke = [\"hello\"]\n[[functions]]\nname = \"robots\"",
        )
        .replace("name = \"hello\"", "name = \"hi\"");
    std::fs::write(gateway.config_path(), bad).unwrap();
    let refused = wasmgate(&["apply", gateway.config_path().to_str().unwrap()], ONE);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("grants.invoke"),
        "{}",
        refused.stderr
    );

    // SIGHUP (systemctl reload) applies the file the gateway started with.
    let hup = Shape {
        robots: false,
        ..fuel.clone()
    };
    std::fs::write(gateway.config_path(), hup.toml(gateway.dir())).unwrap();
    let pid = gateway.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        wait_until(Duration::from_secs(20), || gateway
            .logs()
            .contains("SIGHUP: config applied")),
        "{}",
        gateway.logs()
    );
    assert!(gateway.logs().contains("- function robots"));
    assert!(gateway.stop().success(), "{}", gateway.logs());
}

#[test]
fn an_api_deploy_stands_through_apply_until_the_file_names_another_module() {
    let (broker, http) = (free_port(), free_port());
    let shape = Shape {
        broker,
        http,
        enrich_triggers: "{ mqtt = \"vending/+/telemetry\" }",
        enrich_limits: "",
        enrich_wasm: example_wasm("telemetry_enrich.wasm").display().to_string(),
        robots: false,
        hello: false,
        extra: None,
    };
    let start = shape.clone();
    let mut gateway = GatewayProcess::start_toml(move |dir| start.toml(dir));
    let config = gateway.config_path().display().to_string();
    let live = |gateway: &GatewayProcess| -> String {
        let out = wasmgate(&["functions", "--config", &config, "--json"], ONE);
        assert_eq!(out.code, Some(0), "{out:?}\n{}", gateway.logs());
        let all: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        all.as_array().unwrap()[0]["live"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let from_file = live(&gateway);
    // The robot example as enrich's new version, through the API.
    let deployed = wasmgate(
        &[
            "deploy",
            "enrich",
            example_wasm("robot_telemetry.wasm").to_str().unwrap(),
            "--config",
            &config,
        ],
        ONE,
    );
    assert_eq!(deployed.code, Some(0), "{deployed:?}");
    let from_api = live(&gateway);
    assert_ne!(from_api, from_file);
    // The file still names the module it named: the deploy stands.
    let same = apply(&gateway, &shape, &[]);
    assert_eq!(same.stdout.trim(), "no changes", "{same:?}");
    assert_eq!(live(&gateway), from_api);
    // A limit changes: the deployed version keeps running, with it.
    let limited = Shape {
        enrich_limits: "fuel = 40_000_000",
        ..shape.clone()
    };
    let applied = apply(&gateway, &limited, &[]);
    assert_eq!(applied.code, Some(0), "{applied:?}");
    assert_eq!(live(&gateway), from_api);
    // The file names another module: the file wins.
    let copy = gateway.dir().join("enrich-copy.wasm");
    let mut bytes = std::fs::read(example_wasm("telemetry_enrich.wasm")).unwrap();
    // A custom section makes other bytes of the same code: a new version.
    bytes.extend_from_slice(&[0, 5, 4, b'n', b'o', b't', b'e']);
    std::fs::write(&copy, bytes).unwrap();
    let other = Shape {
        enrich_wasm: copy.display().to_string(),
        ..limited.clone()
    };
    let applied = apply(&gateway, &other, &[]);
    assert_eq!(applied.code, Some(0), "{applied:?}");
    assert!(applied.stdout.contains("wasm"), "{}", applied.stdout);
    assert!(
        applied.stdout.contains(&format!("live {from_api} -> ")),
        "{}",
        applied.stdout
    );
    let now = live(&gateway);
    assert!(now != from_api && now != from_file, "{now}");
    assert!(gateway.stop().success(), "{}", gateway.logs());
}

//! Fleet deployments over the AWS IoT Jobs MQTT API, against a TEST DOUBLE
//! of the jobs service (`support::iot_jobs`: AWS IoT Core cannot be reached
//! from here) on one real mosquitto, with real gateway processes (embedded
//! broker off) taking real traffic:
//!
//! - 50 gateways take a canary rollout of a good version: all succeed;
//! - then of a version that fails on real traffic: each canary rolls back,
//!   the service aborts the job past its failure threshold, and no gateway
//!   is left on the bad version;
//! - then of a tampered bundle: refused everywhere;
//! - one gateway killed with SIGKILL mid-canary, and one whose broker goes
//!   away mid-job, report their jobs once back.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::gateway::{wasmgate, GatewayProcess};
use support::iot_jobs::{JobSpec, JobsService};
use support::mosquitto::{Mosquitto, GATEWAY_SETTINGS};
use support::mqtt::{unique_id, wait_until, MqttClient};

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

/// `good(name)` grown to about 52 KB with bytes that do not compress, as
/// a real module's code would not much: too large for a job document.
fn big(name: &str) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32;
    let data: String = (0..53_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            format!("\\{:02x}", x as u8)
        })
        .collect();
    support::guest::mqtt_guest(
        r#"(import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))"#,
        &format!(r#"(data (i32.const 65000) "out/{name}") (data (i32.const 8192) "{data}")"#),
        &format!(
            "(drop (call $emit (i32.const 65000) (i32.const {}) (local.get $payload) (local.get $payload_len) (i32.const 1)))
    (i32.const 0)",
            4 + name.len()
        ),
    )
}

/// Fails every event.
fn bad() -> Vec<u8> {
    support::guest::mqtt_guest("", "", "(i32.const 1)")
}

fn run(args: &[&str]) {
    let out = wasmgate(args, ONE);
    assert_eq!(out.code, Some(0), "wasmgate {args:?}: {out:?}");
}

/// Keys and modules shared by the fleet, in one directory.
struct Kit {
    dir: tempfile::TempDir,
    trusted: String,
}

impl Kit {
    fn new() -> Kit {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ci");
        run(&["bundle", "keygen", key.to_str().unwrap()]);
        for (name, wasm) in [
            ("v1", good("v1")),
            ("v2", big("v2")),
            ("v3", good("v3")),
            ("bad", bad()),
        ] {
            std::fs::write(dir.path().join(format!("{name}.wasm")), wasm).unwrap();
        }
        let trusted = std::fs::read_to_string(dir.path().join("ci.pub"))
            .unwrap()
            .trim()
            .to_owned();
        Kit { dir, trusted }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// A gateway of the fleet: thing `thing`, the function `f` on
    /// `site/+/in`, small limits.
    fn config(&self, dir: &Path, port: u16, thing: &str) -> String {
        format!(
            "gateway_id = {thing:?}\ndata_dir = {data:?}\n\
             [broker]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = {id:?}\n\
             [bundles]\ntrusted_keys = [{trusted:?}]\n[fleet]\njobs = true\n\
             [[functions]]\nname = \"f\"\nwasm = {wasm:?}\ntriggers = [{{ mqtt = \"site/+/in\" }}]\n\
             [functions.limits]\nqueue = 16\nmemory_mb = 2\n\
             [functions.grants]\nlocal = [\"out/#\"]\n",
            data = dir.join("data").display().to_string(),
            id = unique_id(thing),
            trusted = self.trusted,
            wasm = self.path("v1.wasm"),
        )
    }

    /// A signed bundle of `wasm` for `f` as `config` runs it.
    fn bundle(&self, config: &Path, wasm: &str, sequence: u64, strategy: &str) -> Vec<u8> {
        let out = self.path(&format!("{wasm}-{sequence}.wgb"));
        let (wasm, sequence) = (self.path(&format!("{wasm}.wasm")), sequence.to_string());
        let mut args = vec![
            "bundle",
            "create",
            "f",
            "--config",
            config.to_str().unwrap(),
            "--wasm",
            &wasm,
            "--sequence",
            &sequence,
            "--out",
            &out,
        ];
        if !strategy.is_empty() {
            args.extend_from_slice(&["--strategy", strategy]);
        }
        run(&args);
        let key = self.path("ci.key");
        run(&["bundle", "sign", &out, "--key", &key]);
        std::fs::read(&out).unwrap()
    }
}

fn live_version(gateway: &GatewayProcess) -> String {
    let config = gateway.config_path().display().to_string();
    let out = wasmgate(&["versions", "f", "--config", &config], ONE);
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout
        .lines()
        .find(|l| l.contains(" live "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no live version in\n{}", out.stdout))
        .to_owned()
}

fn module_version(kit: &Kit, wasm: &str) -> String {
    let bytes = std::fs::read(kit.path(&format!("{wasm}.wasm"))).unwrap();
    wasmgate::runtime::module_version(&bytes)
}

/// Publishes to `site/all/in` every 50 ms until dropped.
struct Traffic(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Traffic {
    fn start(port: u16) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let device = MqttClient::connect(port, &unique_id("traffic"));
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    device.publish("site/all/in", seq.to_string());
                    seq += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Traffic(stop, Some(thread))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

#[track_caller]
fn settle(jobs: &JobsService, job: &str, within: Duration) -> Duration {
    let began = Instant::now();
    assert!(
        wait_until(within, || jobs.settled(job)),
        "job {job} did not settle within {within:?}: {:?}",
        jobs.counts(job)
    );
    began.elapsed()
}

#[test]
fn fifty_gateways_take_a_good_rollout_stop_a_bad_one_and_refuse_a_tampered_bundle() {
    const GATEWAYS: usize = 50;
    let broker = Mosquitto::start_with(GATEWAY_SETTINGS);
    let port = broker.port();
    let kit = Kit::new();
    let jobs = JobsService::start(port);
    let things: Vec<String> = (0..GATEWAYS).map(|i| format!("gw-{i:02}")).collect();
    let mut fleet = Vec::with_capacity(GATEWAYS);
    for thing in &things {
        let kit = &kit;
        fleet.push(GatewayProcess::start_toml(|dir| {
            kit.config(dir, port, thing)
        }));
    }
    let _traffic = Traffic::start(port);
    let config = fleet[0].config_path().to_owned();
    let (v1, v2) = (module_version(&kit, "v1"), module_version(&kit, "v2"));
    let logs =
        |fleet: &[GatewayProcess]| support::diagnostics(&fleet[0], &[("mosquitto", &broker)]);

    // A good version of 52 KB, delivered by a stream, as a 50% canary
    // for 5 s, 10 gateways a second.
    let module_bytes = std::fs::read(kit.path("v2.wasm")).unwrap().len();
    let bundle = kit.bundle(&config, "v2", 2, "canary50-5s");
    let inline = wasmgate::fleet::document("f", &bundle).to_string().len();
    assert!(
        inline > 32 * 1024,
        "the module is too small to need a stream: {inline}"
    );
    let (file, document) = wasmgate::fleet::stream_document("f", &bundle, "v2-bundle");
    let file_bytes = file.len();
    jobs.create_stream("v2-bundle", file);
    let bytes = document.to_string().len();
    jobs.create_job(JobSpec {
        id: "deploy-v2",
        document,
        targets: things.clone(),
        per_second: 10.0,
        abort_above: Some((0.2, 5)),
    });
    let took = settle(&jobs, "deploy-v2", Duration::from_secs(180));
    let counts = jobs.counts("deploy-v2");
    assert_eq!(
        counts.get("SUCCEEDED"),
        Some(&GATEWAYS),
        "{counts:?}\n{}",
        logs(&fleet)
    );
    for (thing, e) in jobs.executions("deploy-v2") {
        let e = e.unwrap();
        // Reported as it went: taken, deploying, rolling out, done.
        assert!(
            e.history.first().map(String::as_str) == Some("QUEUED")
                && e.history.last().map(String::as_str) == Some("SUCCEEDED")
                && e.history.iter().filter(|s| *s == "IN_PROGRESS").count() >= 3,
            "{thing}: {:?}",
            e.history
        );
        assert_eq!(e.details["version"], v2.as_str(), "{thing}");
    }
    for gateway in &fleet {
        assert_eq!(live_version(gateway), v2);
    }
    let streamed = jobs.streamed();
    assert_eq!(streamed.len(), GATEWAYS, "{streamed:?}");
    let most = streamed.values().max().copied().unwrap_or(0);
    eprintln!(
        "deploy-v2: {GATEWAYS} gateways at 10/s, canary50-5s: all succeeded in {took:?}; \
         module {module_bytes} B, bundle {} B, stream file {file_bytes} B (inline it would be a {inline} B document); \
         per gateway: job document {bytes} B + stream messages {} to {most} B",
        bundle.len(),
        streamed.values().min().copied().unwrap_or(0)
    );

    // A version that fails every event: canaries roll back, the service
    // aborts the job, nothing stays on it.
    let document = wasmgate::fleet::document("f", &kit.bundle(&config, "bad", 3, "canary50-30s"));
    jobs.create_job(JobSpec {
        id: "deploy-bad",
        document,
        targets: things.clone(),
        per_second: 2.0,
        abort_above: Some((0.2, 3)),
    });
    let took = settle(&jobs, "deploy-bad", Duration::from_secs(180));
    let counts = jobs.counts("deploy-bad");
    assert!(jobs.canceled("deploy-bad"), "not aborted: {counts:?}");
    assert_eq!(counts.get("SUCCEEDED"), None, "{counts:?}");
    let failed = counts.get("FAILED").copied().unwrap_or(0);
    assert!((3..GATEWAYS).contains(&failed), "{counts:?}");
    for (thing, e) in jobs.executions("deploy-bad") {
        if let Some(e) = e.filter(|e| e.status == "FAILED") {
            let reason = e.details["reason"].as_str().unwrap_or("");
            assert!(reason.starts_with("rolled_back"), "{thing}: {reason}");
        }
    }
    for gateway in &fleet {
        assert_eq!(live_version(gateway), v2, "left on the bad version");
    }
    let rollbacks: Vec<i64> = fleet
        .iter()
        .filter_map(|g| {
            let config = g.config_path().display().to_string();
            let out = wasmgate(&["deployments", "f", "--config", &config, "--json"], ONE);
            let body: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            let d = &body["deployments"][0];
            (d["state"] == "rolled_back" && d["strategy"] == "canary50-30s").then(|| {
                d["ended_ms"].as_i64().unwrap_or(0) - d["started_ms"].as_i64().unwrap_or(0)
            })
        })
        .collect();
    assert_eq!(rollbacks.len(), failed, "{rollbacks:?}");
    eprintln!(
        "deploy-bad: aborted after {failed} of {GATEWAYS} failed, {took:?}; start to rollback per canary (ms): {rollbacks:?}"
    );

    // A tampered bundle: refused by every gateway.
    let mut tampered = kit.bundle(&config, "v3", 4, "");
    let at = tampered.len() - 102 - 20;
    tampered[at] ^= 1;
    jobs.create_job(JobSpec {
        id: "deploy-tampered",
        document: wasmgate::fleet::document("f", &tampered),
        targets: things.clone(),
        per_second: 50.0,
        abort_above: None,
    });
    settle(&jobs, "deploy-tampered", Duration::from_secs(120));
    for (thing, e) in jobs.executions("deploy-tampered") {
        let e = e.unwrap();
        assert_eq!(e.status, "FAILED", "{thing}");
        let reason = e.details["reason"].as_str().unwrap_or("");
        assert!(reason.contains("tampered"), "{thing}: {reason}");
    }
    for gateway in &fleet {
        assert_eq!(live_version(gateway), v2);
        assert!(!gateway
            .log_lines_with(&["bundle refused", "tampered"])
            .is_empty());
    }
    assert_ne!(v1, v2);
}

#[test]
fn a_job_survives_a_kill_and_a_broker_outage_and_is_reported_once_back() {
    let mut broker = Mosquitto::start_with(&format!(
        "{GATEWAY_SETTINGS}persistence true\npersistence_location {{dir}}/\n"
    ));
    let port = broker.port();
    let kit = Kit::new();
    let mut jobs = Some(JobsService::start(port));
    let mut gateway = GatewayProcess::start_toml(|dir| kit.config(dir, port, "gw-solo"));
    let config = gateway.config_path().to_owned();
    let _traffic = Traffic::start(port);
    let v1 = module_version(&kit, "v1");

    // Killed mid-canary: the rollout cannot be judged and is rolled back at
    // the next start, and the job is reported failed with that reason.
    let document = wasmgate::fleet::document("f", &kit.bundle(&config, "v2", 2, "canary50-1m"));
    let service = jobs.as_ref().unwrap();
    service.create_job(JobSpec {
        id: "killed",
        document,
        targets: vec!["gw-solo".into()],
        per_second: 1.0,
        abort_above: None,
    });
    assert!(
        wait_until(ONE, || service.executions("killed")["gw-solo"]
            .as_ref()
            .is_some_and(|e| e.details["step"] == "rolling_out")),
        "{:?}\n{}",
        service.executions("killed"),
        gateway.logs()
    );
    gateway.kill();
    gateway.restart();
    settle(service, "killed", ONE);
    let e = service.executions("killed")["gw-solo"].clone().unwrap();
    assert_eq!(e.status, "FAILED", "{e:?}");
    assert!(
        e.details["reason"]
            .as_str()
            .unwrap_or("")
            .contains("rolled_back"),
        "{e:?}"
    );
    assert_eq!(live_version(&gateway), v1);

    // The broker goes away mid-canary and comes back: the job's end is
    // reported when the link is.
    let document = wasmgate::fleet::document("f", &kit.bundle(&config, "v3", 3, "canary50-3s"));
    service.create_job(JobSpec {
        id: "outage",
        document,
        targets: vec!["gw-solo".into()],
        per_second: 1.0,
        abort_above: None,
    });
    assert!(wait_until(ONE, || service.executions("outage")["gw-solo"]
        .as_ref()
        .is_some_and(|e| e.details["step"] == "rolling_out")));
    // The double's state lives in the test, so it is kept across the
    // broker's restart; its connection reconnects on its own.
    broker.stop();
    std::thread::sleep(Duration::from_secs(5));
    broker.restart();
    assert!(
        wait_until(ONE, || service.settled("outage")),
        "{:?}\n{}",
        service.executions("outage"),
        support::diagnostics(&gateway, &[("mosquitto", &broker)])
    );
    let e = service.executions("outage")["gw-solo"].clone().unwrap();
    assert_eq!(e.status, "SUCCEEDED", "{e:?}\n{}", gateway.logs());
    assert_eq!(live_version(&gateway), module_version(&kit, "v3"));
    jobs.take();
}

//! Out of the box (issue 16): the operator's and developer's commands as a
//! user meets them, with the real `wasmgate` binary.
//!
//! - `kv` and `dlq list|show|purge` need only the database, not the modules;
//! - `invoke` runs a configured function with its grants (`--gateway-config`),
//!   says which grants it assumed otherwise, takes `--set KEY=VALUE` and a
//!   dead letter as `dlq show` prints it;
//! - `kv get` shows bytes as bytes and counters as numbers, `--raw`, `--json`,
//!   and says so when there is nothing;
//! - `functions` lists what a config deploys, never a secret;
//! - `new NAME` writes a crate that builds and invokes.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::gateway::{wasmgate, CommandOutput, GatewayProcess, WASMGATE};
use support::mqtt::{free_port, unique_id, wait_until, MqttClient};

/// For a `wasmgate` command (debug build, busy machine).
const COMMAND: Duration = Duration::from_secs(60);
/// For a message to go through the gateway.
const ONE: Duration = Duration::from_secs(30);

/// Emits to `poison/out`, which its grants do not name, and fails when the
/// gateway refuses: `run` dead-letters every message, and a permissive
/// `invoke` passes it.
const POISON: &str = r#"(module
  (import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "poison/out")
  (func (export "wasmgate_abi_version") (result i32) (i32.const 1))
  (func (export "wasmgate_handle") (param $len i32) (result i32)
    (if (result i32)
        (i32.lt_s (call $emit (i32.const 100) (i32.const 10) (i32.const 100) (i32.const 6) (i32.const 1))
                  (i32.const 0))
      (then (i32.const 1))
      (else (i32.const 0)))))"#;

/// A robot's state: its position (two f32, 8 bytes, put) and a tick counter
/// (incremented by 200).
const ROBOT: &str = r#"(module
  (import "wasmgate" "kv_put" (func $kv_put (param i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "kv_increment" (func $kv_increment (param i32 i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "r-3/pos")
  (data (i32.const 200) "r-3/ticks")
  (data (i32.const 300) "\00\00\00\40\00\00\20\40")
  (func (export "wasmgate_abi_version") (result i32) (i32.const 1))
  (func (export "wasmgate_handle") (param $len i32) (result i32)
    (drop (call $kv_put (i32.const 100) (i32.const 7) (i32.const 300) (i32.const 8)))
    (drop (call $kv_increment (i32.const 200) (i32.const 9) (i64.const 200) (i32.const 400)))
    (i32.const 0)))"#;

/// 2.0f32 then 2.5f32, little-endian: what ROBOT puts at `r-3/pos`.
const POS: [u8; 8] = [0, 0, 0, 0x40, 0, 0, 0x20, 0x40];

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[track_caller]
fn run(args: &[&str]) -> CommandOutput {
    wasmgate(args, COMMAND)
}

/// A gateway with `poison` (one attempt, so one message is one dead letter)
/// and `robot`, after one message each; stopped, so that what follows reads
/// the database as an operator does.
struct Setup {
    gateway: GatewayProcess,
}

impl Setup {
    #[track_caller]
    fn start() -> Setup {
        let port = free_port();
        let gateway = GatewayProcess::start_toml(|dir| {
            std::fs::write(dir.join("poison.wasm"), wat::parse_str(POISON).unwrap()).unwrap();
            std::fs::write(dir.join("robot.wasm"), wat::parse_str(ROBOT).unwrap()).unwrap();
            format!(
                r#"gateway_id = "oob"
data_dir = "data"

[broker]
mode = "embedded"
listen = "127.0.0.1:{port}"
client_id = "{client}"

[[functions]]
name = "poison"
wasm = "poison.wasm"
triggers = [{{ mqtt = "poison/in" }}]
[functions.retry]
attempts = 1
[functions.grants]
local = ["allowed/#"]

[[functions]]
name = "robot"
wasm = "robot.wasm"
triggers = [{{ mqtt = "robots/+/telemetry" }}]
"#,
                client = unique_id("gw")
            )
        });
        let client = MqttClient::connect(port, &unique_id("device"));
        client.publish("poison/in", "hello");
        client.publish("robots/r-3/telemetry", "{}");
        client.wait_acked(ONE);
        let mut setup = Setup { gateway };
        let config = setup.config();
        let settled = wait_until(ONE, || {
            let letters = run(&["dlq", "--config", &config, "list"]);
            let ticks = run(&["kv", "--config", &config, "get", "robot", "r-3/ticks"]);
            letters.stdout.contains("poison/in") && ticks.code == Some(0)
        });
        assert!(
            settled,
            "no dead letter or no KV:\n{}",
            setup.gateway.logs()
        );
        setup.gateway.stop();
        setup
    }

    fn config(&self) -> String {
        path(self.gateway.config_path()).to_owned()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.gateway.dir().join(name)
    }

    /// `dlq show 1`, written to a file, as `dlq show 1 > e.json` would.
    #[track_caller]
    fn dead_letter_file(&self, extra: &[&str]) -> PathBuf {
        let mut args = vec![
            "dlq",
            "--config",
            self.gateway.config_path().to_str().unwrap(),
        ];
        args.extend(["show", "1"]);
        args.extend(extra);
        let out = run(&args);
        assert_eq!(out.code, Some(0), "dlq show: {}", out.stderr);
        let file = self.file(if extra.is_empty() {
            "letter.json"
        } else {
            "event.json"
        });
        std::fs::write(&file, &out.stdout).unwrap();
        file
    }
}

// ---------------------------------------------------------------------------
// Item 4: operator commands need only the database.

#[test]
fn kv_and_dlq_work_when_the_modules_are_not_there() {
    let setup = Setup::start();
    let config = setup.config();
    std::fs::remove_file(setup.file("poison.wasm")).unwrap();
    std::fs::remove_file(setup.file("robot.wasm")).unwrap();
    // `run` and `config check` need them.
    let check = run(&["config", "check", &config]);
    assert_eq!(check.code, Some(2), "{}", check.stderr);

    let get = run(&["kv", "--config", &config, "get", "robot", "r-3/ticks"]);
    assert_eq!(get.code, Some(0), "kv get: {}", get.stderr);
    let list = run(&["kv", "--config", &config, "list", "robot"]);
    assert_eq!(list.code, Some(0), "kv list: {}", list.stderr);
    let put = run(&["kv", "--config", &config, "put", "robot", "mode", "idle"]);
    assert_eq!(put.code, Some(0), "kv put: {}", put.stderr);
    let letters = run(&["dlq", "--config", &config, "list"]);
    assert_eq!(letters.code, Some(0), "dlq list: {}", letters.stderr);
    assert!(letters.stdout.contains("poison"), "{}", letters.stdout);
    let show = run(&["dlq", "--config", &config, "show", "1"]);
    assert_eq!(show.code, Some(0), "dlq show: {}", show.stderr);
    // A replay runs the module: without it, it says which file is missing.
    let replay = run(&["dlq", "--config", &config, "replay", "1"]);
    assert_eq!(replay.code, Some(2), "{}", replay.stdout);
    assert!(replay.stderr.contains("poison.wasm"), "{}", replay.stderr);
    let purge = run(&["dlq", "--config", &config, "purge", "--all"]);
    assert_eq!(purge.code, Some(0), "dlq purge: {}", purge.stderr);
    assert!(
        purge.stdout.contains("purged 1 dead letter"),
        "{}",
        purge.stdout
    );
}

// ---------------------------------------------------------------------------
// Items 6, 7 and 9: invoke with the configured grants, --set, dead letters.

#[test]
fn invoke_runs_a_dead_letter_with_the_functions_real_grants() {
    let setup = Setup::start();
    let config = setup.config();
    let letter = setup.dead_letter_file(&[]);
    let module = setup.file("poison.wasm");

    // Item 9: the document `dlq show` prints is an event file.
    // Item 6: without a gateway config every grant is assumed, and it says so.
    let assumed = run(&["invoke", path(&module), "--event", path(&letter)]);
    assert_eq!(
        assumed.code,
        Some(0),
        "permissive invoke: {}{}",
        assumed.stdout,
        assumed.stderr
    );
    assert!(
        assumed.stdout.contains("grants   assumed: every topic"),
        "{}",
        assumed.stdout
    );
    // The dead letter's function names the run (its KV namespace).
    assert!(
        assumed.stdout.starts_with("function poison "),
        "{}",
        assumed.stdout
    );

    // With the config, it fails as it does in the gateway: the emit is refused.
    let configured = run(&[
        "invoke",
        "--gateway-config",
        &config,
        "--function",
        "poison",
        "--event",
        path(&letter),
    ]);
    assert_eq!(
        configured.code,
        Some(1),
        "configured invoke: {}{}",
        configured.stdout,
        configured.stderr
    );
    assert!(
        configured.stdout.contains("refused") && configured.stdout.contains("poison/out"),
        "{}",
        configured.stdout
    );
    assert!(
        configured.stdout.contains("grants   from ") && configured.stdout.contains("allowed/#"),
        "{}",
        configured.stdout
    );
    // Item 13: a guest's own error is not "FAILED (failed)".
    assert!(
        configured.stdout.contains("FAILED: function poison"),
        "{}",
        configured.stdout
    );
    assert!(!configured.stdout.contains("FAILED (failed)"));

    // Item 7: --config FILE is --gateway-config; the function comes from the letter.
    let alias = run(&["invoke", "--config", &config, "--event", path(&letter)]);
    assert_eq!(alias.code, Some(1), "{}{}", alias.stdout, alias.stderr);
    assert!(
        alias.stdout.starts_with("function poison "),
        "{}",
        alias.stdout
    );

    // Item 9: `dlq show --event` prints just the event.
    let event = setup.dead_letter_file(&["--event"]);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&event).unwrap()).unwrap();
    assert_eq!(json["mqtt"]["topic"], "poison/in", "{json}");
    assert_eq!(json.as_object().unwrap().len(), 1, "{json}");
    let bare = run(&["invoke", path(&module), "--event", path(&event)]);
    assert_eq!(bare.code, Some(0), "{}{}", bare.stdout, bare.stderr);
    assert!(
        bare.stdout.starts_with("function local "),
        "{}",
        bare.stdout
    );
}

#[test]
fn invoke_sets_config_values_with_set_and_explains_the_old_spelling() {
    let module = support::gateway::example_wasm("vending_telemetry.wasm");
    let event = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../functions/examples/vending-telemetry/event-hot.json");
    let old = run(&[
        "invoke",
        path(&module),
        "--event",
        path(&event),
        "--config",
        "max_temp_c=100",
    ]);
    assert_eq!(old.code, Some(2), "{}{}", old.stdout, old.stderr);
    assert!(
        old.stderr.contains("--set max_temp_c=100"),
        "{}",
        old.stderr
    );

    let set = run(&[
        "invoke",
        path(&module),
        "--event",
        path(&event),
        "--set",
        "max_temp_c=100",
        "--json",
    ]);
    assert_eq!(set.code, Some(0), "{}{}", set.stdout, set.stderr);
    let report: Value = serde_json::from_str(&set.stdout).unwrap();
    let alert = &report["invocations"][0]["outcome"]["emits"][0]["payload"];
    assert!(
        alert.as_str().unwrap().contains("\"max_temp_c\":100"),
        "{report:#}"
    );
    assert_eq!(report["grants"]["assumed"], true, "{report:#}");
}

#[test]
fn invoke_with_a_board_runs_under_the_boards_limits() {
    let dir = tempfile::tempdir().unwrap();
    let module = support::gateway::example_wasm("vending_telemetry.wasm");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "gateway_id = \"b\"\ndata_dir = \"data\"\n\n[[functions]]\nname = \"vending\"\nwasm = {:?}\n\
             triggers = [{{ mqtt = \"vending/+/telemetry\" }}]\n[functions.grants]\nlocal = [\"vending/+/alert\"]\n\
             upstream = [\"telemetry/#\"]\n",
            path(&module)
        ),
    )
    .unwrap();
    let event = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../functions/examples/vending-telemetry/event-hot.json");
    let ok = run(&[
        "invoke",
        "--gateway-config",
        path(&config),
        "--event",
        path(&event),
        "--board",
        "rpi3-32",
        "--json",
    ]);
    assert_eq!(ok.code, Some(0), "{}{}", ok.stdout, ok.stderr);
    let report: Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(
        report["grants"]["local"][0], "vending/+/alert",
        "{report:#}"
    );
    assert!(
        report["grants"]["config"]
            .as_str()
            .unwrap()
            .ends_with("--board rpi3-32"),
        "{report:#}"
    );
    let unknown = run(&[
        "invoke",
        "--gateway-config",
        path(&config),
        "--function",
        "nope",
        "--event",
        path(&event),
    ]);
    assert_eq!(unknown.code, Some(2));
    assert!(unknown.stderr.contains("vending"), "{}", unknown.stderr);
}

// ---------------------------------------------------------------------------
// Item 13: kv output.

#[test]
fn kv_shows_bytes_as_bytes_and_counters_as_numbers() {
    let setup = Setup::start();
    let config = setup.config();
    let get = |key: &str, extra: &[&str]| {
        let mut args = vec!["kv", "--config", config.as_str(), "get", "robot", key];
        args.extend(extra);
        run(&args)
    };
    let pos = get("r-3/pos", &[]);
    assert_eq!(pos.code, Some(0), "{}", pos.stderr);
    assert_eq!(pos.stdout, "0x0000004000002040 (8 bytes)\n");
    let ticks = get("r-3/ticks", &[]);
    assert_eq!(ticks.stdout, "200 (counter; bytes c800000000000000)\n");

    // --raw: the bytes as they are.
    let raw = Command::new(WASMGATE)
        .args([
            "kv", "--config", &config, "get", "robot", "r-3/pos", "--raw",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(raw.status.success());
    assert_eq!(raw.stdout, POS);

    let json: Value = serde_json::from_str(&get("r-3/ticks", &["--json"]).stdout).unwrap();
    assert_eq!(json["counter"], 200, "{json}");
    assert_eq!(json["bytes"], "c800000000000000", "{json}");
    let json: Value = serde_json::from_str(&get("r-3/pos", &["--json"]).stdout).unwrap();
    assert_eq!(json["counter"], Value::Null, "{json}");

    // `kv put --counter` makes a counter, a plain put text.
    let put = run(&[
        "kv",
        "--config",
        &config,
        "put",
        "robot",
        "n",
        "7",
        "--counter",
    ]);
    assert_eq!(put.code, Some(0), "{}", put.stderr);
    assert_eq!(
        get("n", &[]).stdout,
        "7 (counter; bytes 0700000000000000)\n"
    );

    // Nothing there: said on stderr; a missing key is exit code 1.
    let missing = get("nope", &[]);
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("no key"), "{}", missing.stderr);
    let delete = run(&["kv", "--config", &config, "delete", "robot", "nope"]);
    assert_eq!(delete.code, Some(1), "{}", delete.stderr);
    assert!(delete.stderr.contains("no key"), "{}", delete.stderr);
    let delete = run(&["kv", "--config", &config, "delete", "robot", "n"]);
    assert_eq!(delete.code, Some(0), "{}", delete.stderr);
    let empty = run(&["kv", "--config", &config, "list", "poison"]);
    assert_eq!(empty.code, Some(0));
    assert_eq!(empty.stdout, "");
    assert!(empty.stderr.contains("poison: no keys"), "{}", empty.stderr);
}

#[test]
fn every_kv_and_dlq_argument_has_help() {
    for command in [
        &["kv", "get", "--help"][..],
        &["kv", "put", "--help"],
        &["kv", "delete", "--help"],
        &["dlq", "purge", "--help"],
        &["dlq", "show", "--help"],
    ] {
        let out = run(command);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        // clap prints an argument with no help as its name alone on the line.
        for line in out.stdout.lines() {
            let line = line.trim();
            let bare = line.starts_with('<') && line.ends_with('>')
                || line.starts_with("--") && !line.contains("  ");
            assert!(!bare, "`{}`: no help for {line}", command.join(" "));
        }
    }
}

// ---------------------------------------------------------------------------
// Item 13: wasmgate functions.

#[test]
fn functions_lists_versions_triggers_grants_and_board_limits_but_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let module = support::gateway::example_wasm("vending_telemetry.wasm");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"gateway_id = "f"
data_dir = "data"

[[functions]]
name = "vending"
wasm = {module:?}
triggers = [{{ mqtt = "vending/+/telemetry", dedup_key = "msg_id" }}]
[functions.grants]
local = ["vending/+/alert"]
secrets = ["api_key", "token", "pin", "cred"]
[functions.config]
max_temp_c = "8"
[functions.secrets]
api_key = "hunter2-inline-secret"
token = {{ env = "OOB_TOKEN_SECRET_VAR" }}
pin = {{ file = "pin-secret-file" }}
cred = {{ credential = "cred-secret-name" }}

[[functions]]
name = "gone"
wasm = "gone.wasm"
triggers = [{{ mqtt = "gone/#" }}]
"#,
            module = path(&module)
        ),
    )
    .unwrap();
    let out = run(&["functions", "--config", path(&config)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let bytes = std::fs::metadata(&module).unwrap().len();
    let version = {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(std::fs::read(&module).unwrap());
        digest[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert!(
        out.stdout
            .starts_with(&format!("vending  version {version} ({bytes} bytes)")),
        "{}",
        out.stdout
    );
    assert!(out
        .stdout
        .contains("mqtt vending/+/telemetry qos1 dedup_key msg_id"));
    assert!(
        out.stdout.contains("local vending/+/alert;"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("gone  module missing: "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("secrets   api_key = ***, cred = ***, pin = ***, token = ***"),
        "{}",
        out.stdout
    );
    let json = run(&["functions", "--config", path(&config), "--json"]);
    assert_eq!(json.code, Some(0), "{}", json.stderr);
    for shown in [&out.stdout, &out.stderr, &json.stdout, &json.stderr] {
        for secret in [
            "hunter2-inline-secret",
            "OOB_TOKEN_SECRET_VAR",
            "pin-secret-file",
            "cred-secret-name",
        ] {
            assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
        }
    }

    // The limits a board gives, under what the config sets.
    let limits = |args: &[&str]| -> String {
        let mut all = vec!["functions", "--config", path(&config)];
        all.extend(args);
        let out = run(&all);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        out.stdout
            .lines()
            .find(|l| l.trim_start().starts_with("limits"))
            .unwrap()
            .to_owned()
    };
    assert!(limits(&[]).contains("timeout 1000 ms"), "{}", limits(&[]));
    let board = limits(&["--board", "rpi3-32"]);
    assert!(
        board.contains("timeout 2500 ms") && board.contains("queue 256"),
        "{board}"
    );
}

// ---------------------------------------------------------------------------
// Item 13: the demo's final block, once.

#[test]
fn the_demo_prints_its_final_summary_once_and_devices_get_through() {
    let port = free_port();
    let out = run(&[
        "demo",
        "--duration",
        "4",
        "--report-every",
        "2",
        "--devices",
        "3",
        "--rate",
        "10",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let headers: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("function") && l.contains("emitted"))
        .collect();
    // At 2 s, then the final one (not the 4 s tick and then the final one).
    assert_eq!(headers.len(), 2, "{}", out.stdout);
    assert!(
        !out.stderr.contains("no user name and password"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("devices sent "), "{}", out.stdout);
}

// ---------------------------------------------------------------------------
// Item 14: wasmgate new.

fn wasm32_installed() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-unknown-unknown"))
        .unwrap_or(false)
}

#[test]
fn a_new_function_builds_tests_and_invokes_in_three_commands() {
    if !wasm32_installed() {
        eprintln!("skipped: the wasm32-unknown-unknown target is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/sdk");
    let made = Command::new(WASMGATE)
        .args(["new", "hello", "--sdk", path(&sdk)])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let crate_dir = dir.path().join("hello");
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "event.json",
        "README.md",
        ".cargo/config.toml",
    ] {
        assert!(crate_dir.join(file).is_file(), "{file} missing");
    }
    let cargo = |args: &[&str]| {
        let out = Command::new(env!("CARGO"))
            .args(args)
            .current_dir(&crate_dir)
            // Its own target/ (the path the README gives), and the crate's
            // own rustflags (.cargo/config.toml), not this build's.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cargo(&["build", "--release", "--target", "wasm32-unknown-unknown"]);
    cargo(&["test"]);
    let module = crate_dir.join("target/wasm32-unknown-unknown/release/hello.wasm");
    let out = run(&[
        "invoke",
        path(&module),
        "--event",
        path(&crate_dir.join("event.json")),
        "--json",
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let invocation = &report["invocations"][0];
    assert_eq!(
        invocation["outcome"]["emits"][0]["topic"], "hello/out",
        "{report:#}"
    );
    // The 64 KiB stack: about 192 KiB of memory, not 1.1 MiB.
    let memory = invocation["cost"]["memory_bytes"].as_u64().unwrap();
    assert!(memory <= 256 << 10, "memory {memory} bytes:\n{report:#}");
}

#[test]
fn a_new_function_outside_a_checkout_says_where_to_point_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(WASMGATE)
        .args(["new", "lonely"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let cargo = std::fs::read_to_string(dir.path().join("lonely/Cargo.toml")).unwrap();
    assert!(
        cargo.contains("wasmgate-sdk is not on crates.io"),
        "{cargo}"
    );
    assert!(String::from_utf8_lossy(&made.stderr).contains("--sdk DIR"));
    // Not over a directory that has something in it.
    let again = Command::new(WASMGATE)
        .args(["new", "lonely"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
}

/// Whether `shown` (a line of a README sample) stands for `printed`: the
/// same text, except that `...` stands for anything and a time in µs for
/// any time.
fn sample_line_matches(shown: &str, printed: &str) -> bool {
    fn untimed(line: &str) -> String {
        let words: Vec<&str> = line.split(' ').collect();
        let mut out = Vec::with_capacity(words.len());
        for (i, word) in words.iter().enumerate() {
            let timed = words.get(i + 1) == Some(&"µs") && word.bytes().all(|b| b.is_ascii_digit());
            out.push(if timed { "N" } else { word });
        }
        out.join(" ")
    }
    let (shown, printed) = (untimed(shown), untimed(printed));
    let mut rest = printed.as_str();
    let mut pieces = shown.split("...").peekable();
    let mut first = true;
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        let at = match (first, last) {
            (true, true) => return rest == piece,
            (true, false) => rest.starts_with(piece).then_some(0),
            (false, true) => return rest.ends_with(piece),
            (false, false) => rest.find(piece),
        };
        match at {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
        first = false;
    }
    true
}

#[test]
fn a_sample_line_matches_with_ellipses_and_times() {
    assert!(sample_line_matches("a 12 µs b", "a 9 µs b"));
    assert!(sample_line_matches(
        "x {\"m\":1,...}",
        "x {\"m\":1,\"n\":2}"
    ));
    assert!(!sample_line_matches(
        "x {\"m\":1,...}",
        "x {\"m\":2,\"n\":2}"
    ));
    assert!(!sample_line_matches("fuel 12", "fuel 13"));
}

/// The README's `invoke` sample is what `invoke` prints today for the
/// committed example, line for line (times aside; `...` cuts a long line):
/// a new version or size of the example, a new line in the report, and this
/// fails until the README says so.
#[test]
fn the_readmes_invoke_sample_is_what_invoke_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find("$ cargo run --release -- invoke ")
        .expect("the README's invoke sample");
    let block = &readme[start..readme[start..].find("```").map(|end| start + end).unwrap()];
    let mut lines = block.lines();
    // The command: `$ cargo run --release -- ARGS \` and continuation lines.
    let mut command = String::new();
    for line in lines.by_ref() {
        let line = line.trim_start_matches("$ cargo run --release --").trim();
        command.push_str(line.trim_end_matches('\\'));
        command.push(' ');
        if !line.ends_with('\\') {
            break;
        }
    }
    // The module as committed: a fresh build's bytes (and so its version)
    // depend on the checkout's path, through path dependencies' symbol
    // hashes; the README shows what the committed example prints.
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    for arg in &mut args {
        if arg.ends_with(".wasm") {
            let committed = Command::new("git")
                .args(["show", &format!("HEAD:{arg}")])
                .current_dir(&root)
                .output()
                .unwrap();
            if committed.status.success() {
                let copy = dir.path().join("committed.wasm");
                std::fs::write(&copy, committed.stdout).unwrap();
                *arg = copy.display().to_string();
            }
        }
    }
    let out = Command::new(WASMGATE)
        .args(&args)
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let shown: Vec<&str> = lines.collect();
    let printed: Vec<&str> = printed.lines().collect();
    assert_eq!(
        shown.len(),
        printed.len(),
        "the README shows\n{}\nbut invoke prints\n{}",
        shown.join("\n"),
        printed.join("\n")
    );
    for (shown, printed) in shown.iter().zip(&printed) {
        assert!(
            sample_line_matches(shown, printed),
            "README.md's invoke sample is out of date:\n  README: {shown}\n  prints: {printed}"
        );
    }
}

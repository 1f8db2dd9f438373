//! Functions that fail, as a user meets them: the real `wasmgate` binary, a
//! real broker (the embedded one), guests written in WAT that trap, loop or
//! succeed depending on their attempt number, and `wasmgate dlq` to look at
//! and replay what failed for good.
//!
//! - a failure that passes on the next attempt is retried, and the function
//!   sees the attempt number in its context;
//! - a poison message goes to the dead-letter queue after its attempts, the
//!   stream behind it moves on, and `dlq list|show|replay|purge` manage it;
//! - a function stuck in a long backoff with a full queue is throttled (and
//!   counted) while another function keeps delivering every result, and a
//!   shutdown does not wait for the backoff.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use support::gateway::{wasmgate, CommandOutput, WASMGATE};
use support::mqtt::{free_port, unique_id, wait_until, MqttClient};

/// For one message to make it through (debug build, busy machine).
const ONE: Duration = Duration::from_secs(30);
/// For a `wasmgate` command or a start or stop.
const COMMAND: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Guests

/// A guest in WAT that reads its envelope, decodes the context's attempt
/// number and the MQTT message's payload (postcard, functions/abi/README.md),
/// then runs `behaviour` with locals `$attempt`, `$payload` and
/// `$payload_len`, and the helper `$emit_out(ptr, len)` that emits to
/// `out_topic`. `behaviour` returns the handler's result.
fn guest(out_topic: &str, behaviour: &str) -> Vec<u8> {
    support::guest::mqtt_guest(
        r#"(import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "log" (func $log (param i32 i32 i32)))"#,
        &format!(
            r#";; The out topic and a log line live past the envelope buffer (0..60000).
  (data (i32.const 60000) "{out_topic}")
  (data (i32.const 62000) "{BAD_READING}")
  (func $emit_out (param $ptr i32) (param $len i32)
    (drop (call $emit (i32.const 60000) (i32.const {topic_len})
                      (local.get $ptr) (local.get $len) (i32.const 1))))"#,
            topic_len = out_topic.len(),
        ),
        behaviour,
    )
}

/// Traps on the first attempt; on a later one emits the attempt number.
fn flaky() -> Vec<u8> {
    guest(
        "flaky/out",
        r#"(if (i32.lt_u (local.get $attempt) (i32.const 2)) (then unreachable))
    (i32.store8 (i32.const 61000) (i32.add (i32.const 48) (local.get $attempt)))
    (call $emit_out (i32.const 61000) (i32.const 1))
    (i32.const 0)"#,
    )
}

/// What `picky` logs, at error, before it fails: what a dead letter keeps.
const BAD_READING: &str = "bad reading: the payload starts with b";

/// Version 1 of `picky`: logs an error and traps on every payload starting
/// with `b` (the bug), echoes the others.
fn picky_buggy() -> Vec<u8> {
    guest(
        "picky/out",
        r#"(if (i32.eq (i32.load8_u (local.get $payload)) (i32.const 98))
      (then (call $log (i32.const 0) (i32.const 62000) (i32.const 38)) unreachable))
    (call $emit_out (local.get $payload) (local.get $payload_len))
    (i32.const 0)"#,
    )
}

/// Version 2 of `picky`: the fix; echoes every payload.
fn picky_fixed() -> Vec<u8> {
    guest(
        "picky/out",
        r#"(call $emit_out (local.get $payload) (local.get $payload_len))
    (i32.const 0)"#,
    )
}

/// Loops until its deadline, every time.
fn stuck() -> Vec<u8> {
    guest("stuck/out", "(loop $forever (br $forever)) (i32.const 0)")
}

/// Echoes every payload to `echo/out`.
fn echo() -> Vec<u8> {
    guest(
        "echo/out",
        r#"(call $emit_out (local.get $payload) (local.get $payload_len))
    (i32.const 0)"#,
    )
}

/// The version a module deploys as, as `dlq list` shows it.
fn version(wasm: &[u8]) -> String {
    wasmgate::runtime::module_version(wasm)
}

// ---------------------------------------------------------------------------
// The gateway

/// A `wasmgate run` with the embedded broker and the given functions.
struct Gateway {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    port: u16,
}

impl Gateway {
    /// Writes `modules` (file name, bytes) and a config whose `[[functions]]`
    /// tables are `functions` (naming the modules by file name), starts the
    /// gateway and waits for "gateway running".
    #[track_caller]
    fn start(modules: &[(&str, &[u8])], functions: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, wasm) in modules {
            std::fs::write(dir.path().join(name), wasm).expect("write module");
        }
        let port = free_port();
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "gateway_id = \"failures\"\ndata_dir = \"data\"\n\n[broker]\nmode = \"embedded\"\n\
                 listen = \"127.0.0.1:{port}\"\nclient_id = \"{}\"\n\n{functions}",
                unique_id("gw")
            ),
        )
        .expect("write config");
        let check = wasmgate(&["config", "check", path(&config)], COMMAND);
        assert_eq!(check.code, Some(0), "config check: {}", check.stderr);
        let child = Command::new(WASMGATE)
            .args(["run", "--config", path(&config)])
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout")).expect("log file"))
            .stderr(File::create(dir.path().join("stderr")).expect("log file"))
            .spawn()
            .expect("spawn wasmgate run");
        let mut gateway = Gateway {
            dir,
            config,
            child: Some(child),
            port,
        };
        let started = wait_until(COMMAND, || {
            gateway.log().contains("gateway running") || !gateway.is_running()
        });
        assert!(
            started && gateway.is_running(),
            "the gateway did not start; its log:\n{}",
            gateway.log()
        );
        gateway
    }

    fn client(&self, name: &str) -> MqttClient {
        MqttClient::connect(self.port, &unique_id(name))
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.path().join("stderr")).unwrap_or_default())
            .into_owned()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// `wasmgate dlq ARGS... --config <this gateway's config>`.
    #[track_caller]
    fn dlq(&self, args: &[&str]) -> CommandOutput {
        let mut all = vec!["dlq"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", path(&self.config)]);
        wasmgate(&all, COMMAND)
    }

    /// Dead letters listed by `dlq list`: (id, the rest of the line).
    #[track_caller]
    fn dead_letters(&self) -> Vec<(i64, String)> {
        let out = self.dlq(&["list"]);
        assert_eq!(out.code, Some(0), "dlq list: {}", out.stderr);
        out.stdout
            .lines()
            .skip(1) // the header
            .map(|line| {
                let id = line.split_whitespace().next().unwrap_or_default();
                let id = id
                    .parse()
                    .unwrap_or_else(|_| panic!("a dead letter line starts with its id: {line}"));
                (id, line.to_owned())
            })
            .collect()
    }

    /// `dlq show ID` as JSON.
    #[track_caller]
    fn show(&self, id: i64) -> Value {
        let out = self.dlq(&["show", &id.to_string()]);
        assert_eq!(out.code, Some(0), "dlq show: {}", out.stderr);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("dlq show prints JSON ({e}):\n{}", out.stdout))
    }

    /// SIGTERM; waits (bounded) for the exit.
    #[track_caller]
    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the gateway is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let mut exit = None;
        let exited = wait_until(COMMAND, || {
            exit = child.try_wait().ok().flatten();
            exit.is_some()
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the gateway did not stop within {COMMAND:?} of SIGTERM; its log:\n{}",
                self.log()
            );
        }
        exit.expect("exit status")
    }

    /// The `function totals` line the gateway logs for `function` at
    /// shutdown, as `field -> value`.
    #[track_caller]
    fn totals(&self, function: &str) -> std::collections::BTreeMap<String, u64> {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| {
                l.contains("function totals") && l.contains(&format!("function=\"{function}\""))
            })
            .or_else(|| {
                log.lines().find(|l| {
                    l.contains("function totals") && l.contains(&format!("function={function} "))
                })
            })
            .unwrap_or_else(|| panic!("no totals for {function} in the log:\n{log}"));
        line.split_whitespace()
            .filter_map(|field| field.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn a_failure_that_passes_on_the_next_attempt_is_retried_with_the_attempt_in_its_context() {
    let flaky = flaky();
    let mut gateway = Gateway::start(
        &[("flaky.wasm", &flaky)],
        r#"[[functions]]
name = "flaky"
wasm = "flaky.wasm"
triggers = [{ mqtt = "flaky/in" }]
grants = { local = ["flaky/out"] }
retry = { attempts = 3, initial_backoff_ms = 10 }
"#,
    );
    let ops = gateway.client("ops");
    ops.subscribe("flaky/out");
    let device = gateway.client("device");
    device.publish("flaky/in", "hello");
    device.wait_acked(ONE);

    let out = ops
        .next_message(ONE)
        .unwrap_or_else(|| panic!("no result after the retry; log:\n{}", gateway.log()));
    assert_eq!(
        out.payload, b"2",
        "the function succeeded on attempt 2 and saw that number"
    );
    assert!(ops.drain_for(Duration::from_millis(500)).is_empty());
    assert!(gateway.dead_letters().is_empty(), "nothing dead-lettered");

    assert!(gateway.stop().success());
    let totals = gateway.totals("flaky");
    assert_eq!(totals["failed"], 1, "{totals:?}");
    assert_eq!(totals["retries"], 1, "{totals:?}");
    assert_eq!(totals["succeeded"], 1, "{totals:?}");
    assert_eq!(totals["dead_letters"], 0, "{totals:?}");
}

#[test]
fn a_poison_message_is_dead_lettered_the_stream_moves_on_and_a_fixed_version_replays_it() {
    let (buggy, fixed) = (picky_buggy(), picky_fixed());
    let (v1, v2) = (version(&buggy), version(&fixed));
    let mut gateway = Gateway::start(
        &[("picky.wasm", &buggy), ("picky-fixed.wasm", &fixed)],
        r#"[[functions]]
name = "picky"
wasm = "picky.wasm"
triggers = [{ mqtt = "picky/in" }]
grants = { local = ["picky/out"] }
retry = { attempts = 3, initial_backoff_ms = 10 }
dead_letters = { topic = "dlq/picky" }
"#,
    );
    let ops = gateway.client("ops");
    ops.subscribe("picky/out");
    ops.subscribe("dlq/picky");
    let device = gateway.client("device");
    // The poison message first, then a good one on the same topic.
    device.publish("picky/in", "bad-1");
    device.publish("picky/in", "good-2");
    device.wait_acked(ONE);

    let mut results = BTreeSet::new();
    let mut published_letters = Vec::new();
    let both = ops.collect_until(ONE, |m| {
        match m.topic.as_str() {
            "picky/out" => {
                results.insert(String::from_utf8_lossy(&m.payload).into_owned());
            }
            _ => published_letters.push(m.json()),
        }
        !results.is_empty() && !published_letters.is_empty()
    });
    assert!(
        both,
        "expected the good message's result and the published dead letter; got {results:?} {published_letters:?}; log:\n{}",
        gateway.log()
    );
    assert_eq!(
        results,
        BTreeSet::from(["good-2".to_owned()]),
        "the stream moved on past the poison message"
    );
    let published = &published_letters[0];
    assert_eq!(published["function"], "picky");
    assert_eq!(published["event"]["mqtt"]["payload"], "bad-1");

    // `dlq list` and `dlq show`: everything about it.
    let letters = gateway.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (id, line) = &letters[0];
    assert!(
        line.contains("picky") && line.contains(&v1) && line.contains("trap"),
        "{line}"
    );
    assert!(line.contains("picky/in"), "{line}");
    assert!(
        line.contains(BAD_READING),
        "the list shows the function's own account of the failure: {line}"
    );
    let letter = gateway.show(*id);
    assert_eq!(letter["version"], v1.as_str());
    assert_eq!(letter["event"]["mqtt"]["topic"], "picky/in");
    assert_eq!(letter["event"]["mqtt"]["payload"], "bad-1");
    let attempts = letter["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 3, "{letter:#}");
    for (i, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["attempt"], i as u64 + 1);
        assert_eq!(attempt["kind"], "trap");
        assert!(
            attempt["error"].as_str().unwrap_or("").contains("picky"),
            "{attempt}"
        );
        assert_eq!(
            attempt["logs"],
            serde_json::json!([format!("ERROR {BAD_READING}")]),
            "each attempt keeps the line it logged: {attempt}"
        );
    }
    assert!(letter["received_ms"].as_i64() <= letter["failed_ms"].as_i64());
    assert_eq!(
        published["id"], *id,
        "the published letter is the stored one"
    );

    // A replay on the current (buggy) version fails again and keeps it.
    let again = gateway.dlq(&["replay", &id.to_string()]);
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stdout.contains("stays in the queue"), "{again:?}");
    assert_eq!(
        gateway.show(*id)["attempts"].as_array().map(Vec::len),
        Some(4)
    );

    // Naming the fixed version without its module is refused, changing nothing.
    let refused = gateway.dlq(&["replay", &id.to_string(), "--version", &v2]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains(&v2), "{refused:?}");

    // The fix: replayed while the gateway runs, its result comes out.
    let replayed = gateway.dlq(&[
        "replay",
        &id.to_string(),
        "--wasm",
        path(&gateway.dir.path().join("picky-fixed.wasm")),
        "--version",
        &v2,
    ]);
    assert_eq!(replayed.code, Some(0), "{replayed:?}");
    assert!(replayed.stdout.contains(&v2), "{replayed:?}");
    let result = ops.next_message(ONE).unwrap_or_else(|| {
        panic!(
            "the replay's emit was not delivered; log:\n{}",
            gateway.log()
        )
    });
    assert_eq!(
        (result.topic.as_str(), &result.payload[..]),
        ("picky/out", &b"bad-1"[..])
    );
    assert!(
        gateway.dead_letters().is_empty(),
        "the replayed letter is gone"
    );

    // Another poison message, then purge.
    device.publish("picky/in", "bad-3");
    device.wait_acked(ONE);
    assert!(
        wait_until(ONE, || gateway.dead_letters().len() == 1),
        "the second poison message was not dead-lettered; log:\n{}",
        gateway.log()
    );
    let vague = gateway.dlq(&["purge"]);
    assert_eq!(vague.code, Some(2), "a bare purge is refused: {vague:?}");
    assert_eq!(gateway.dead_letters().len(), 1);
    let purged = gateway.dlq(&["purge", "--function", "picky"]);
    assert_eq!(purged.code, Some(0), "{purged:?}");
    assert!(purged.stdout.contains("purged 1 dead letter"), "{purged:?}");
    assert!(gateway.dead_letters().is_empty());

    assert!(gateway.stop().success());
    let totals = gateway.totals("picky");
    assert_eq!(totals["dead_letters"], 2, "{totals:?}");
    assert_eq!(
        totals["retries"], 4,
        "two poison messages, two retries each: {totals:?}"
    );
    assert_eq!(totals["succeeded"], 1, "{totals:?}");
}

#[test]
fn a_stuck_function_is_throttled_while_a_healthy_one_delivers_everything_and_shutdown_does_not_wait_for_its_backoff(
) {
    let (stuck, echo) = (stuck(), echo());
    // `stuck` loops until its deadline on every event, then waits ten
    // minutes before its retry; its queue of 2 fills at once.
    let mut gateway = Gateway::start(
        &[("stuck.wasm", &stuck), ("echo.wasm", &echo)],
        r#"[[functions]]
name = "stuck"
wasm = "stuck.wasm"
triggers = [{ mqtt = "stuck/in/+" }]
grants = { local = ["stuck/out"] }
limits = { fuel = 10_000_000_000, timeout_ms = 200, queue = 2 }
retry = { attempts = 3, initial_backoff_ms = 600_000, max_backoff_ms = 600_000 }

[[functions]]
name = "echo"
wasm = "echo.wasm"
triggers = [{ mqtt = "echo/in/+" }]
grants = { local = ["echo/out"] }
"#,
    );
    let ops = gateway.client("ops");
    ops.subscribe("echo/out");
    let device = gateway.client("device");
    for i in 0..20 {
        device.publish(&format!("stuck/in/{}", i % 4), format!("s-{i}"));
    }
    const HEALTHY: usize = 200;
    for i in 0..HEALTHY {
        device.publish(&format!("echo/in/{}", i % 4), format!("e-{i}"));
    }
    device.wait_acked(ONE);

    let mut echoed = BTreeSet::new();
    let all = ops.collect_until(ONE, |m| {
        echoed.insert(String::from_utf8_lossy(&m.payload).into_owned());
        echoed.len() == HEALTHY
    });
    assert!(
        all,
        "the healthy function delivered {} of {HEALTHY} while the other was stuck; log:\n{}",
        echoed.len(),
        gateway.log()
    );
    assert!(gateway.is_running());

    // SIGTERM while `stuck` sleeps in a ten-minute backoff: the gateway
    // stops (within COMMAND), leaving its events at the broker.
    assert!(gateway.stop().success(), "log:\n{}", gateway.log());
    assert!(
        gateway
            .log()
            .contains("stopping between attempts; the message stays unacknowledged"),
        "log:\n{}",
        gateway.log()
    );
    let stuck = gateway.totals("stuck");
    assert!(
        stuck["throttled"] >= 1,
        "the full queue was counted: {stuck:?}"
    );
    assert_eq!(stuck["succeeded"], 0, "{stuck:?}");
    assert_eq!(stuck["dead_letters"], 0, "{stuck:?}");
    let echo = gateway.totals("echo");
    assert_eq!(echo["succeeded"], HEALTHY as u64, "{echo:?}");
    assert_eq!(echo["failed"], 0, "{echo:?}");
}

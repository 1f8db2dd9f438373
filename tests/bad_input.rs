//! Bad input, end to end: the real `wasmgate` binary and a real broker fed
//! broken modules, hostile guests, bad topics, broken databases and a full
//! disk. For each: the healthy function keeps being served, the problem is
//! visible (a log line naming it, and the function's totals), nothing is lost.
//!
//! What is covered elsewhere is not repeated here: hostile guests one by one
//! at the runtime level (`gateway/tests/sandbox.rs`), garbage, invalid UTF-8
//! and 1 MB payloads and bad config text (`tests/pipeline.rs`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::gateway::{example_wasm, wasmgate, GatewayProcess};
use support::mosquitto::Mosquitto;
use support::mqtt::{free_port, wait_until, MqttClient};
use support::rig::{summary_topic, telemetry, telemetry_topic};

/// For one message to make it through (debug build, busy CI machine).
const ONE: Duration = Duration::from_secs(30);

/// The healthy function: the vending example, summaries to
/// `telemetry/vending/<machine>` on the local broker.
fn healthy_function() -> String {
    format!(
        r#"
[[functions]]
name = "vending"
wasm = {wasm:?}
triggers = [{{ mqtt = "vending/+/telemetry", qos = 1 }}]
[functions.grants]
local = ["vending/+/alert"]
upstream = ["telemetry/#"]
"#,
        wasm = example_wasm("vending_telemetry.wasm").display().to_string()
    )
}

fn config(data_dir: &Path, broker: &str, functions: &str) -> String {
    format!(
        "gateway_id = \"bad-input\"\ndata_dir = {:?}\n\n[broker]\n{broker}\n{functions}",
        data_dir.display().to_string()
    )
}

fn embedded(port: u16) -> String {
    format!("mode = \"embedded\"\nlisten = \"127.0.0.1:{port}\"")
}

/// A guest importing the host functions it may abuse, with "out/topic" at
/// 0, "key" at 16, "alerts/#" at 32, "alerts/+/x" at 48, "$SYS/broker/x" at
/// 64 and its own name at 96; `body` is its handler, `extra` more items.
fn guest(name: &str, extra: &str, body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
          (import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))
          (import "wasmgate" "kv_put" (func $kv_put (param i32 i32 i32 i32) (result i32)))
          (import "wasmgate" "invoke" (func $invoke (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "out/topic")
          (data (i32.const 16) "key")
          (data (i32.const 32) "alerts/#")
          (data (i32.const 48) "alerts/+/x")
          (data (i32.const 64) "$SYS/broker/x")
          (data (i32.const 96) "{name}")
          (func (export "wasmgate_abi_version") (result i32) i32.const 1)
          {extra}
          (func (export "wasmgate_handle") (param i32) (result i32) {body}))"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("fixture {name} does not parse: {e}"))
}

/// A hostile function: its module written to `dir`, triggered on `hostile/<name>`.
struct Hostile {
    name: &'static str,
    wasm: Vec<u8>,
    /// The `kind` its failure is logged with.
    kind: &'static str,
    /// Words its failure message contains.
    says: &'static str,
}

impl Hostile {
    fn toml(&self, dir: &Path) -> String {
        let path = dir.join(format!("{}.wasm", self.name));
        std::fs::write(&path, &self.wasm).expect("write module");
        format!(
            r##"
[[functions]]
name = "{name}"
wasm = {path:?}
triggers = [{{ mqtt = "hostile/{name}", qos = 1 }}]
[functions.limits]
fuel = 5_000_000
memory_mb = 2
[functions.grants]
local = ["#"]
"##,
            name = self.name,
            path = path.display().to_string(),
        )
    }
}

/// Emits to the topic at `ptr` (length `len`) and returns the status, as
/// an SDK guest does (`ctx.emit(..)?`): a refused emit fails the invocation.
fn emit_and_return_status(name: &'static str, ptr: u32, len: u32) -> Vec<u8> {
    guest(
        name,
        "",
        &format!("(call $emit (i32.const {ptr}) (i32.const {len}) (i32.const 16) (i32.const 3) (i32.const 1))"),
    )
}

fn hostile_guests() -> Vec<Hostile> {
    vec![
        Hostile {
            name: "spin",
            wasm: guest("spin", "", "(loop $l (br $l)) (i32.const 0)"),
            kind: "out_of_fuel",
            says: "ran out of fuel",
        },
        Hostile {
            name: "membomb",
            wasm: guest(
                "membomb",
                "",
                "(block $out (loop $l
                   (br_if $out (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
                   (br $l)))
                 (i32.const 0)",
            ),
            kind: "memory_limit",
            says: "memory limit",
        },
        Hostile {
            name: "recursion",
            wasm: guest(
                "recursion",
                "(func $deep (param i32) (result i32)
                   (call $deep (i32.add (local.get 0) (i32.const 1))))",
                "(call $deep (i32.const 0))",
            ),
            kind: "trap",
            says: "trapped",
        },
        Hostile {
            name: "huge-emit",
            // 16 MiB claimed; the limit is checked before memory is read.
            wasm: guest(
                "huge-emit",
                "",
                "(call $emit (i32.const 0) (i32.const 9) (i32.const 0) (i32.const 16777216) (i32.const 1))",
            ),
            kind: "abi",
            says: "over the limit",
        },
        Hostile {
            name: "emit-storm",
            wasm: guest(
                "emit-storm",
                "",
                "(loop $l
                   (drop (call $emit (i32.const 0) (i32.const 9) (i32.const 16) (i32.const 3) (i32.const 1)))
                   (br $l))
                 (i32.const 0)",
            ),
            kind: "abi",
            says: "more than 100 per invocation",
        },
        Hostile {
            name: "kv-too-large",
            wasm: guest(
                "kv-too-large",
                "",
                "(call $kv_put (i32.const 16) (i32.const 3) (i32.const 0) (i32.const 65537))",
            ),
            kind: "abi",
            says: "value of 65537 bytes is over the limit",
        },
        Hostile {
            name: "invoke-self",
            // Not granted (a config granting it is refused: see below), so DENIED.
            wasm: guest(
                "invoke-self",
                "",
                "(call $invoke (i32.const 96) (i32.const 11) (i32.const 16) (i32.const 3))",
            ),
            kind: "failed",
            says: "returned error code",
        },
        Hostile {
            name: "topic-hash",
            wasm: emit_and_return_status("topic-hash", 32, 8),
            kind: "failed",
            says: "returned error code",
        },
        Hostile {
            name: "topic-plus",
            wasm: emit_and_return_status("topic-plus", 48, 10),
            kind: "failed",
            says: "returned error code",
        },
        Hostile {
            name: "topic-sys",
            wasm: emit_and_return_status("topic-sys", 64, 13),
            kind: "failed",
            says: "returned error code",
        },
    ]
}

/// Publishes telemetry as `machine` and waits for its summary: the healthy
/// function is being served.
#[track_caller]
fn assert_served(port: u16, machine: &str, ts: u64, gateway: &GatewayProcess) {
    let cloud = MqttClient::connect(port, "cloud");
    cloud.subscribe(&summary_topic(machine));
    let device = MqttClient::connect(port, machine);
    device.publish(&telemetry_topic(machine), telemetry(ts, 4.0));
    let summary = cloud.next_message(ONE).unwrap_or_else(|| {
        panic!(
            "the healthy function did not answer {machine} ts {ts}; log:\n{}",
            gateway.logs()
        )
    });
    assert_eq!(summary.json()["ts"], ts, "{}", summary.topic);
}

/// Waits until the gateway accepts and processes telemetry (it logs
/// "gateway running" before its subscriptions are in place).
#[track_caller]
fn wait_flowing(port: u16, gateway: &GatewayProcess) {
    let cloud = MqttClient::connect(port, "probe-cloud");
    cloud.subscribe(&summary_topic("probe"));
    let device = MqttClient::connect(port, "probe");
    let flowing = wait_until(ONE, || {
        device.publish(&telemetry_topic("probe"), telemetry(1, 4.0));
        cloud.next_message(Duration::from_millis(250)).is_some()
    });
    assert!(flowing, "nothing flows; log:\n{}", gateway.logs());
}

/// The `function totals` line the gateway logs for `function` at shutdown.
#[track_caller]
fn totals(gateway: &GatewayProcess, function: &str) -> String {
    let lines = gateway.log_lines_with(&["function totals"]);
    lines
        .into_iter()
        .find(|l| {
            l.contains(&format!("function=\"{function}\""))
                || l.contains(&format!("function={function} "))
        })
        .unwrap_or_else(|| panic!("no totals for {function}; log:\n{}", gateway.logs()))
}

#[test]
fn hostile_guests_fail_alone_and_the_healthy_function_is_still_served() {
    let port = free_port();
    let hostile = hostile_guests();
    let mut gateway = GatewayProcess::start_toml(|dir| {
        let functions: String = std::iter::once(healthy_function())
            .chain(hostile.iter().map(|h| h.toml(dir)))
            .collect();
        config(&dir.join("data"), &embedded(port), &functions)
    });
    wait_flowing(port, &gateway);

    let device = MqttClient::connect(port, "attacker");
    for (i, h) in hostile.iter().enumerate() {
        device.publish(&format!("hostile/{}", h.name), "{}");
        // Served between the attacks, not only after them.
        assert_served(port, "vm-1", i as u64 + 1, &gateway);
    }
    device.wait_acked(ONE);

    for h in &hostile {
        let failed = || {
            gateway
                .log_lines_with(&["invocation failed", h.name, h.kind])
                .into_iter()
                .any(|l| l.contains(h.says))
        };
        assert!(
            wait_until(ONE, failed),
            "{}: no `invocation failed` line with kind {} saying {:?}; log:\n{}",
            h.name,
            h.kind,
            h.says,
            gateway.logs()
        );
    }
    assert_served(port, "vm-1", 100, &gateway);
    assert!(gateway.is_running(), "{}", gateway.logs());

    let status = gateway.stop();
    assert!(status.success(), "{status}\n{}", gateway.logs());
    for h in &hostile {
        let line = totals(&gateway, h.name);
        // Per attempt: retried kinds (trap, out of fuel) count each try.
        assert!(count(&line, "failed") >= 1, "{}: {line}", h.name);
        assert_eq!(count(&line, "succeeded"), 0, "{}: {line}", h.name);
    }
    let line = totals(&gateway, "vending");
    assert_eq!(count(&line, "failed"), 0, "{line}");
    assert!(count(&line, "succeeded") > hostile.len() as u64, "{line}");
}

/// The number logged as `name=N` in `line`.
#[track_caller]
fn count(line: &str, name: &str) -> u64 {
    let at = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    line[at + name.len() + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number in {line}"))
}

#[test]
fn a_malformed_wasm_file_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("broken.wasm");
    // The magic number, then garbage: what a truncated copy looks like.
    std::fs::write(&bad, b"\0asm\x01\0\0\0\xff\xff\xff garbage").expect("write module");
    let functions = format!(
        "{}\n[[functions]]\nname = \"broken\"\nwasm = {:?}\ntriggers = [{{ mqtt = \"b/#\" }}]\n",
        healthy_function(),
        bad.display().to_string()
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        config(&dir.path().join("data"), &embedded(free_port()), &functions),
    )
    .expect("write config");
    let out = wasmgate(&["run", "--config", path.to_str().expect("utf-8")], ONE);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let file = bad.display().to_string();
    assert!(
        out.stderr.lines().any(|l| l.contains(&file)
            && l.contains("function broken")
            && l.contains("not a valid WebAssembly module")),
        "the error names the file and the function:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("gateway running"), "{}", out.stderr);
}

#[test]
fn a_function_granted_to_invoke_itself_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let wasm = example_wasm("vending_telemetry.wasm").display().to_string();
    let functions = format!(
        r#"
[[functions]]
name = "ping"
wasm = {wasm:?}
triggers = [{{ mqtt = "ping/#" }}]
[functions.grants]
invoke = ["pong"]

[[functions]]
name = "pong"
wasm = {wasm:?}
triggers = [{{ mqtt = "pong/#" }}]
[functions.grants]
invoke = ["ping"]

[[functions]]
name = "echo"
wasm = {wasm:?}
triggers = [{{ mqtt = "echo/#" }}]
[functions.grants]
invoke = ["echo"]
"#
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        config(&dir.path().join("data"), &embedded(free_port()), &functions),
    )
    .expect("write config");
    let file = path.to_str().expect("utf-8");
    for args in [["config", "check", file], ["run", "--config", file]] {
        let out = wasmgate(&args, ONE);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        for cycle in ["ping -> pong -> ping", "echo -> echo"] {
            assert!(
                out.stderr.contains(cycle) && out.stderr.contains("never end"),
                "{args:?}: the loop {cycle} is named:\n{}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains("gateway running"), "{}", out.stderr);
    }
}

/// Files of the data directory (its `modules/` too) and their bytes, to
/// show nothing was rewritten.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read data dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            let bytes = std::fs::read(&path).expect("read file");
            files.push((path, bytes));
        }
    }
    files.sort();
    files
}

/// Runs the gateway on `data_dir` (already holding a database) and expects
/// a clear refusal naming the database, leaving the directory as it was.
#[track_caller]
fn assert_start_refused(data_dir: &Path, says: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        config(data_dir, &embedded(free_port()), &healthy_function()),
    )
    .expect("write config");
    let before = snapshot(data_dir);
    let out = wasmgate(&["run", "--config", path.to_str().expect("utf-8")], ONE);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let db = data_dir.join("wasmgate.db").display().to_string();
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains(&db) && l.contains(says)),
        "the error names {db} and says {says:?}:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("gateway running"), "{}", out.stderr);
    assert_eq!(
        snapshot(data_dir),
        before,
        "the data directory was changed by a refused start"
    );
}

#[test]
fn a_corrupt_database_stops_the_start_and_is_left_untouched() {
    let data = tempfile::tempdir().expect("temp dir");
    // Not SQLite at all: what a bad SD card or a stray `cp` leaves.
    let mut garbage = b"this is not a database\n".repeat(300);
    garbage.extend((0..=255u8).cycle().take(4096));
    std::fs::write(data.path().join("wasmgate.db"), &garbage).expect("write db");
    assert_start_refused(data.path(), "not a database");
}

#[test]
fn a_locked_database_stops_the_start_and_is_left_untouched() {
    let port = free_port();
    // A real database, made by a gateway that processed something.
    let mut gateway = GatewayProcess::start_toml(|dir| {
        config(&dir.join("data"), &embedded(port), &healthy_function())
    });
    wait_flowing(port, &gateway);
    assert!(gateway.stop().success(), "{}", gateway.logs());
    let data = gateway.dir().join("data");

    // Another process holds it exclusively (a second gateway, a backup tool).
    let mut holder = Command::new("sqlite3")
        .arg(data.join("wasmgate.db"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run sqlite3");
    {
        use std::io::Write;
        let stdin = holder.stdin.as_mut().expect("sqlite3 stdin");
        stdin
            .write_all(
                b".timeout 20000\nPRAGMA locking_mode = EXCLUSIVE;\nBEGIN EXCLUSIVE;\nSELECT 1;\n",
            )
            .expect("lock the database");
        stdin.flush().expect("flush");
    }
    // Until sqlite3 holds the lock, the database opens fine; wait for it.
    let locked = wait_until(ONE, || {
        Command::new("sqlite3")
            .arg(data.join("wasmgate.db"))
            .arg("BEGIN IMMEDIATE; ROLLBACK;")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).contains("locked"))
            .unwrap_or(false)
    });
    assert!(locked, "sqlite3 did not take the lock");
    assert_start_refused(&data, "locked");
    let _ = holder.kill();
    let _ = holder.wait();

    // Once the other process lets go, the same data starts and serves.
    gateway.restart();
    wait_flowing(port, &gateway);
    assert_served(port, "vm-1", 7, &gateway);
}

/// A small tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (with the reason) where mounting is not permitted.
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system is full; returns how much fit.
fn fill(path: &Path) -> usize {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0x5a; 4096];
    let mut written = 0;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len();
    }
    // What no whole chunk fitted in.
    while file.write_all(&[0x5a]).is_ok() {
        written += 1;
    }
    let _ = file.sync_all();
    written
}

#[test]
fn a_full_disk_stalls_without_acking_and_loses_nothing_once_space_is_back() {
    let mosquitto = Mosquitto::start_for_gateway();
    let port = mosquitto.port();
    let mut mount = None;
    let mut skipped = None;
    let mut gateway = GatewayProcess::start_toml(|dir| {
        let data = dir.join("data");
        match Tmpfs::mount(&data, "2m") {
            Ok(m) => mount = Some(m),
            Err(e) => skipped = Some(e),
        }
        let broker = format!(
            "mode = \"external\"\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"bad-input-disk\""
        );
        config(&data, &broker, &healthy_function())
    });
    if let Some(reason) = skipped {
        eprintln!("SKIPPED: cannot mount a tmpfs for the data directory ({reason}); the disk-full case was not tested");
        return;
    }
    let data = gateway.dir().join("data");
    wait_flowing(port, &gateway);

    let cloud = MqttClient::connect(port, "cloud");
    cloud.subscribe("telemetry/vending/+");
    let filler = data.join("filler");
    fill(&filler);

    const N: u64 = 20;
    let device = MqttClient::connect(port, "vm-full");
    for ts in 1..=N {
        device.publish(&telemetry_topic("vm-full"), telemetry(ts, 4.0));
    }
    device.wait_acked(ONE);
    let reported = || {
        gateway
            .log_lines_with(&["commit failed"])
            .iter()
            .any(|l| l.contains("full"))
    };
    assert!(
        wait_until(ONE, reported),
        "a full disk is reported as such; log:\n{}",
        gateway.logs()
    );
    // Nothing it could not persist comes out (or is acked).
    let early: Vec<_> = cloud
        .drain_for(Duration::from_secs(1))
        .into_iter()
        .filter(|m| m.topic == summary_topic("vm-full"))
        .collect();
    assert!(early.is_empty(), "emitted without a commit: {early:?}");
    assert!(gateway.is_running(), "{}", gateway.logs());

    // Space back: everything held comes through, once each, in order.
    std::fs::remove_file(&filler).expect("free space");
    let mut seen = Vec::new();
    let all = cloud.collect_until(ONE, |m| {
        if m.topic == summary_topic("vm-full") {
            seen.push(m.json()["ts"].as_u64().expect("ts"));
        }
        seen.len() as u64 >= N
    });
    assert!(all, "after space came back: {seen:?}\n{}", gateway.logs());
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());
    assert_served(port, "vm-1", 1, &gateway);

    // Full again, then a restart: what was unacked is redelivered by the broker.
    fill(&filler);
    for ts in N + 1..=2 * N {
        device.publish(&telemetry_topic("vm-full"), telemetry(ts, 4.0));
    }
    device.wait_acked(ONE);
    let failures = gateway.log_lines_with(&["commit failed"]).len();
    assert!(
        wait_until(ONE, || gateway.log_lines_with(&["commit failed"]).len()
            > failures),
        "{}",
        gateway.logs()
    );
    gateway.kill();
    std::fs::remove_file(&filler).expect("free space");
    gateway.restart();
    let mut seen = Vec::new();
    let all = cloud.collect_until(ONE, |m| {
        if m.topic == summary_topic("vm-full") {
            seen.push(m.json()["ts"].as_u64().expect("ts"));
        }
        seen.iter().filter(|&&ts| ts > N).count() as u64 >= N
    });
    assert!(all, "after the restart: {seen:?}\n{}", gateway.logs());
    let mut second: Vec<u64> = seen.into_iter().filter(|&ts| ts > N).collect();
    second.dedup();
    assert_eq!(second, (N + 1..=2 * N).collect::<Vec<_>>());
    drop(gateway);
    drop(mount);
}

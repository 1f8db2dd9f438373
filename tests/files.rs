//! File triggers end to end, with a real directory and the real binary:
//! complete files run once and move to `done/`, failing ones to `failed/`
//! and the dead-letter queue, partial names are left alone, a file dropped
//! while the gateway was down runs at the next start.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::gateway::{example_wasm, wasmgate, GatewayProcess};
use support::mqtt::{free_port, wait_until};

const ONE: Duration = Duration::from_secs(30);

fn config(dir: &Path, inbox: &Path) -> String {
    format!(
        "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{port}\"\n[[functions]]\nname = \"sales\"\nwasm = {wasm:?}\ntriggers = [{{ file = {pattern:?}, max_file_bytes = 200 }}]\n[functions.grants]\nupstream = [\"sales/#\"]\n[functions.retry]\nattempts = 1\n",
        data = dir.join("data").display().to_string(),
        port = free_port(),
        wasm = example_wasm("vending_sales.wasm").display().to_string(),
        pattern = inbox.join("*.csv").display().to_string(),
    )
}

/// Writes a file as a sync job should: under a temporary name, then renamed.
fn drop_file(inbox: &Path, name: &str, text: &str) -> PathBuf {
    let part = inbox.join(format!("{name}.part"));
    std::fs::write(&part, text).unwrap();
    let path = inbox.join(name);
    std::fs::rename(&part, &path).unwrap();
    path
}

#[test]
fn files_run_once_then_move_to_done_and_failing_ones_to_failed() {
    let inbox_dir = tempfile::tempdir().unwrap();
    let inbox = inbox_dir.path().to_owned();
    let gateway = GatewayProcess::start_toml(|dir| config(dir, &inbox));

    drop_file(
        &inbox,
        "sales-1.csv",
        "machine,slot,cents\nvm-17,A3,250\nvm-17,B1,180\n",
    );
    let done = inbox.join("done/sales-1.csv");
    assert!(wait_until(ONE, || done.exists()), "{}", gateway.logs());
    assert!(!inbox.join("sales-1.csv").exists());
    assert_eq!(
        support::gateway::kv_value(&gateway, "sales", "sales/vm-17").as_deref(),
        Some("430")
    );

    // A bad line: nothing counted, the file to failed/ and the DLQ.
    drop_file(&inbox, "sales-2.csv", "machine,slot,cents\nvm-17,A3,lots\n");
    // Too large to read: failed/, and a dead letter that says why.
    drop_file(
        &inbox,
        "sales-3.csv",
        &format!("machine,slot,cents\n{}", "vm-9,A1,1\n".repeat(40)),
    );
    // Still being written (a partial name): left alone.
    std::fs::write(inbox.join("sales-4.csv.part"), "machine,slot,cents\n").unwrap();
    let failed = |n: u32| inbox.join(format!("failed/sales-{n}.csv"));
    assert!(
        wait_until(ONE, || failed(2).exists() && failed(3).exists()),
        "{}",
        gateway.logs()
    );
    assert_eq!(
        support::gateway::kv_value(&gateway, "sales", "sales/vm-17").as_deref(),
        Some("430")
    );
    assert_eq!(
        support::gateway::kv_value(&gateway, "sales", "sales/vm-9"),
        None
    );
    let config = gateway.config_path().to_str().unwrap().to_owned();
    let listed = wasmgate(&["dlq", "--config", &config, "list"], ONE);
    assert!(listed.stdout.contains("sales-2.csv"), "{}", listed.stdout);
    assert!(
        listed.stdout.contains("too_large") && listed.stdout.contains("sales-3.csv"),
        "{}",
        listed.stdout
    );
    assert!(inbox.join("sales-4.csv.part").exists());
    // The done file ran once: its sales were counted once.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        support::gateway::kv_value(&gateway, "sales", "sales/vm-17").as_deref(),
        Some("430")
    );
}

#[test]
fn a_file_dropped_while_the_gateway_was_down_runs_at_the_next_start() {
    let inbox_dir = tempfile::tempdir().unwrap();
    let inbox = inbox_dir.path().to_owned();
    let mut gateway = GatewayProcess::start_toml(|dir| config(dir, &inbox));
    gateway.stop();
    drop_file(&inbox, "sales-9.csv", "machine,slot,cents\nvm-4,A1,200\n");
    gateway.restart();
    assert!(
        wait_until(ONE, || inbox.join("done/sales-9.csv").exists()),
        "{}",
        gateway.logs()
    );
    assert_eq!(
        support::gateway::kv_value(&gateway, "sales", "sales/vm-4").as_deref(),
        Some("200")
    );
}

#[test]
fn config_check_says_a_watched_directory_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(dir.path(), &dir.path().join("no-such-inbox"))).unwrap();
    let out = wasmgate(&["config", "check", path.to_str().unwrap()], ONE);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("functions[0].triggers[0].file: the watched directory")
            && out.stderr.contains("no-such-inbox does not exist"),
        "{}",
        out.stderr
    );
}

//! Schedule triggers end to end, with the real binary and database: each
//! tick runs once (across kill -9 too), missed ticks follow `missed`, a
//! failing tick is retried and dead-lettered like any event, and
//! `wasmgate schedules` says when each fires next.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::gateway::{example_wasm, wasmgate, GatewayProcess};
use support::mqtt::{free_port, wait_until};

const ONE: Duration = Duration::from_secs(30);

/// A gateway whose one function runs on `triggers`, with the heartbeat
/// example (or `wasm`), and `extra` config appended.
fn config(dir: &std::path::Path, wasm: &str, triggers: &str, extra: &str) -> String {
    format!(
        "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{port}\"\n[[functions]]\nname = \"heartbeat\"\nwasm = {wasm:?}\ntriggers = [{triggers}]\n[functions.grants]\nupstream = [\"heartbeat/#\"]\n{extra}",
        data = dir.join("data").display().to_string(),
        port = free_port(),
        wasm = example_wasm(wasm).display().to_string(),
    )
}

/// The heartbeat function's KV counters, by key.
fn counters(gateway: &GatewayProcess) -> BTreeMap<String, i64> {
    let out = wasmgate(
        &[
            "kv",
            "--config",
            gateway.config_path().to_str().unwrap(),
            "list",
            "heartbeat",
        ],
        ONE,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout
        .lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(" = ")?;
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.to_owned(), value))
        })
        .collect()
}

/// The scheduled times of the ticks that ran, each with how often it ran.
fn ticks(counters: &BTreeMap<String, i64>) -> BTreeMap<i64, i64> {
    counters
        .iter()
        .filter_map(|(key, n)| Some((key.strip_prefix("tick/")?.parse().ok()?, *n)))
        .collect()
}

/// kill -9 while ticks are in flight (a slow group commit keeps half of
/// each second between a tick's run and its commit), down for three ticks
/// and more, started again: every tick that ran, ran once; of the ticks
/// missed, only the latest ran (`missed = "once"`, the default), told it is
/// late; all kept the schedule's own times.
#[test]
fn each_tick_runs_once_across_kill_9_and_missed_ticks_run_once_late() {
    let mut gateway = GatewayProcess::start_toml(|dir| {
        config(
            dir,
            "vending_heartbeat.wasm",
            "{ schedule = \"rate(1 second)\" }",
            "[store]\ngroup_commit_ms = 500\n",
        )
    });
    assert!(
        wait_until(ONE, || counters(&gateway).get("ticks") >= Some(&3)),
        "{}",
        gateway.logs()
    );
    std::thread::sleep(Duration::from_millis(1_300));
    gateway.kill();
    let before = ticks(&counters(&gateway));
    std::thread::sleep(Duration::from_millis(3_500));
    gateway.restart();
    assert!(
        wait_until(ONE, || ticks(&counters(&gateway)).len() >= before.len() + 3),
        "{}",
        gateway.logs()
    );
    gateway.stop();

    let all = counters(&gateway);
    let ran = ticks(&all);
    assert!(
        ran.values().all(|&n| n == 1),
        "a tick ran more than once: {ran:?}"
    );
    assert_eq!(all.get("ticks"), Some(&(ran.len() as i64)), "{all:?}");
    // The restart caught up once, told the function so. (A tick that ran
    // past the next one also makes that one late: a busy machine may add some.)
    let caught_up = gateway.log_lines_with(&["running a missed tick"]).len() as i64;
    assert!(caught_up >= 1, "{}", gateway.logs());
    assert_eq!(all.get("late"), Some(&caught_up), "{all:?}");
    // Of the three or more ticks missed while down, only the latest ran.
    let last_before = *before.keys().last().expect("ticks before the kill");
    let first_after = *ran.keys().find(|&&t| t > last_before).expect("ticks after");
    assert!(
        first_after - last_before >= 3_000,
        "missed ticks ran: {last_before} then {first_after}"
    );
    // Every tick on the schedule's own times, a second apart.
    assert!(
        ran.keys().all(|t| (t - last_before) % 1_000 == 0),
        "ticks off their rate: {ran:?}"
    );
}

/// `missed = "skip"`: after downtime nothing runs late; `wasmgate
/// schedules` shows the last tick and the next, and before a restart says
/// how many missed ticks a start would run.
#[test]
fn skipped_ticks_stay_skipped_and_schedules_says_when_next() {
    let mut gateway = GatewayProcess::start_toml(|dir| {
        config(
            dir,
            "vending_heartbeat.wasm",
            "{ schedule = \"rate(1 second)\", missed = \"skip\" }, { schedule = \"cron(0 3 * * ? *)\" }, { schedule = \"cron(0 4 * * ? *)\", timezone = \"Asia/Kolkata\" }",
            "",
        )
    });
    assert!(wait_until(ONE, || counters(&gateway).get("ticks") >= Some(&2)));
    gateway.stop();
    std::thread::sleep(Duration::from_millis(2_500));
    let listed = wasmgate(
        &[
            "schedules",
            "--config",
            gateway.config_path().to_str().unwrap(),
        ],
        ONE,
    );
    assert_eq!(listed.code, Some(0), "{listed:?}");
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert!(lines[0].starts_with("FUNCTION"), "{}", listed.stdout);
    let rate = lines.iter().find(|l| l.contains("rate(1 second)")).unwrap();
    assert!(rate.contains("skip"), "{rate}");
    let cron = lines
        .iter()
        .find(|l| l.contains("cron(0 3 * * ? *)"))
        .unwrap();
    assert!(
        cron.contains("once") && cron.contains(" 03:00:00"),
        "{cron}"
    );
    // 04:00 in Kolkata (UTC+5:30, no DST) is 22:30 UTC.
    let local = lines.iter().find(|l| l.contains("Asia/Kolkata")).unwrap();
    assert!(local.contains(" 22:30:00"), "{local}");
    let before = counters(&gateway);
    gateway.restart();
    assert!(wait_until(ONE, || counters(&gateway).get("ticks")
        >= Some(&(before["ticks"] + 2))));
    gateway.stop();
    let after = counters(&gateway);
    assert_eq!(after.get("late"), None, "nothing ran late: {after:?}");
}

/// A function that fails on every tick: each tick is retried as its policy
/// says, then dead-lettered (the schedule's cursor moves on in the same
/// transaction), and the next tick comes.
#[test]
fn a_failing_tick_is_retried_then_dead_lettered_and_the_schedule_goes_on() {
    let gateway = GatewayProcess::start_toml(|dir| {
        // vending-telemetry handles MQTT messages only: a tick fails it.
        config(
            dir,
            "vending_telemetry.wasm",
            "{ schedule = \"rate(1 second)\" }",
            "[functions.retry]\nattempts = 2\ninitial_backoff_ms = 10\n",
        )
    });
    let config = gateway.config_path().to_str().unwrap().to_owned();
    let listed = || wasmgate(&["dlq", "--config", &config, "list"], ONE);
    assert!(
        wait_until(ONE, || listed().stdout.matches("rate(1 second)").count()
            >= 2),
        "{}\n{}",
        listed().stdout,
        gateway.logs()
    );
    let out = listed();
    assert!(
        out.stdout.contains("handles MQTT messages only"),
        "{}",
        out.stdout
    );
    // Each dead letter is its own tick: the schedule did not stop at the first.
    let shown = wasmgate(&["dlq", "--config", &config, "show", "2"], ONE);
    assert!(shown.stdout.contains("scheduled_ms"), "{}", shown.stdout);
    let schedules = wasmgate(&["schedules", "--config", &config], ONE);
    assert!(
        !schedules.stdout.contains("not started"),
        "the cursor moved with the dead letters: {}",
        schedules.stdout
    );
}

/// `config check` says what is wrong with each schedule, with its line.
#[test]
fn config_check_explains_bad_schedules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        config(
            dir.path(),
            "vending_heartbeat.wasm",
            "{ schedule = \"every 5 minutes\" }, { schedule = \"cron(0 0 31 2 ? *)\" }, { schedule = \"rate(1 second)\", dedup_key = \"id\" }, { mqtt = \"a/b\", schedule = \"rate(1 minute)\" }, { qos = 1 }, { schedule = \"cron(0 2 * * ? *)\", timezone = \"Mars/Olympus_Mons\" }, { schedule = \"rate(1 day)\", timezone = \"Europe/Berlin\" }, { schedule = \" rate(1 second) \" }",
            "",
        ),
    )
    .unwrap();
    let out = wasmgate(&["config", "check", path.to_str().unwrap()], ONE);
    assert_eq!(out.code, Some(2), "{out:?}");
    for says in [
        "gateway.toml:7: functions[0].triggers[0].schedule: invalid schedule \"every 5 minutes\": expected rate(5 minutes)",
        "functions[0].triggers[1].schedule: invalid schedule \"cron(0 0 31 2 ? *)\": cron(0 0 31 2 ? *) never fires",
        "functions[0].triggers[2].dedup_key: `dedup_key` has no effect on a schedule",
        "functions[0].triggers[3].schedule: `schedule` cannot be used beside another kind in one trigger",
        "functions[0].triggers[4]: a trigger needs a kind: `mqtt",
        "functions[0].triggers[5].timezone: invalid schedule \"Mars/Olympus_Mons\": unknown time zone",
        "functions[0].triggers[6].timezone: `timezone` has no effect on a rate",
        "functions[0].triggers[7].schedule: `schedule` cannot be used twice in one function",
    ] {
        assert!(out.stderr.contains(says), "missing {says:?} in:\n{}", out.stderr);
    }
}

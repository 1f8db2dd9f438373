//! The real `wasmgate` binary as a user runs it: a config file written to a
//! temporary directory, `wasmgate run --config FILE`, logs captured to
//! files, stopped with SIGTERM (systemd's stop) or SIGKILL (power loss).

use super::mqtt::wait_until;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// The binary under test, built by cargo for this test run.
pub const WASMGATE: &str = env!("CARGO_BIN_EXE_wasmgate");

/// The committed example modules (`functions/examples/wasm/`).
pub fn example_wasm(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../functions/examples/wasm")
        .join(file)
        .canonicalize()
        .unwrap_or_else(|e| panic!("example module {file}: {e}"))
}

/// How long a started gateway may take to say "gateway running" (debug build).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM may take: the gateway's own grace (10 s) plus margin.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the gateway finds its local broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerMode {
    /// rumqttd inside the gateway, listening on this loopback port.
    Embedded { port: u16 },
    /// A broker of its own (mosquitto) on this loopback port.
    External { port: u16 },
}

/// The gateway config the tests run: the vending example on
/// `vending/+/telemetry`, alerts local, summaries "upstream" (on the local
/// broker, since no `[upstream]` is configured).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub broker: BrokerMode,
    /// Stable across restarts of one test's gateway: the broker keeps the
    /// persistent session under it.
    pub client_id: String,
    /// `limits.concurrency`; the default (1) when `None`.
    pub concurrency: Option<u32>,
    /// `limits.queue`; the default (1024) when `None`.
    pub queue: Option<u32>,
    /// The body of an `[upstream]` table (`host`, `port`, `tls`...); without
    /// it, summaries go to the local broker.
    pub upstream: Option<String>,
    /// The body of a `[store]` table (`synchronous`, `outbox_max_mb`...).
    pub store: Option<String>,
    /// The trigger's `dedup_key` (exactly-once effects).
    pub dedup_key: Option<String>,
    /// The trigger's `dedup_property` (the id in an MQTT 5 user property).
    pub dedup_property: Option<String>,
    /// `broker.protocol` (`"3.1.1"` or `"5"`); the default when `None`.
    pub broker_protocol: Option<String>,
}

impl GatewayConfig {
    pub fn vending(broker: BrokerMode) -> GatewayConfig {
        GatewayConfig {
            broker,
            client_id: super::mqtt::unique_id("gw"),
            concurrency: None,
            queue: None,
            upstream: None,
            store: None,
            dedup_key: None,
            dedup_property: None,
            broker_protocol: None,
        }
    }

    /// The TOML file, as a user would write it.
    pub fn to_toml(&self, data_dir: &Path) -> String {
        let mut broker = match self.broker {
            BrokerMode::Embedded { port } => {
                format!("mode = \"embedded\"\nlisten = \"127.0.0.1:{port}\"")
            }
            BrokerMode::External { port } => {
                format!("mode = \"external\"\nhost = \"127.0.0.1\"\nport = {port}")
            }
        };
        if let Some(protocol) = &self.broker_protocol {
            broker += &format!("\nprotocol = {protocol:?}");
        }
        let mut limits = String::new();
        if let Some(n) = self.concurrency {
            limits += &format!("concurrency = {n}\n");
        }
        if let Some(n) = self.queue {
            limits += &format!("queue = {n}\n");
        }
        if !limits.is_empty() {
            limits = format!("\n[functions.limits]\n{limits}");
        }
        let tables = [("upstream", &self.upstream), ("store", &self.store)]
            .iter()
            .filter_map(|(name, body)| body.as_ref().map(|body| format!("[{name}]\n{body}\n")))
            .collect::<String>();
        let dedup = [
            ("dedup_key", &self.dedup_key),
            ("dedup_property", &self.dedup_property),
        ]
        .iter()
        .filter_map(|(field, value)| value.as_ref().map(|v| format!(", {field} = {v:?}")))
        .collect::<String>();
        format!(
            r#"gateway_id = "e2e"
data_dir = {data_dir:?}

[broker]
{broker}
client_id = "{client_id}"

{tables}
[[functions]]
name = "vending"
wasm = {wasm:?}
triggers = [{{ mqtt = "vending/+/telemetry", qos = 1{dedup} }}]
{limits}
[functions.grants]
local = ["vending/+/alert"]
upstream = ["telemetry/#"]

[functions.config]
max_temp_c = "8"
"#,
            data_dir = data_dir.display().to_string(),
            client_id = self.client_id,
            wasm = example_wasm("vending_telemetry.wasm").display().to_string(),
        )
    }
}

/// A `wasmgate run` process; killed on drop if still running.
#[derive(Debug)]
pub struct GatewayProcess {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    /// Starts so far; each writes its own log files.
    runs: usize,
    /// Arguments after `run --config FILE`, and environment, of every run.
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl GatewayProcess {
    /// Writes `config`, starts the gateway and waits for "gateway running".
    #[track_caller]
    pub fn start(config: &GatewayConfig) -> GatewayProcess {
        Self::start_toml(|dir| config.to_toml(&dir.join("data")))
    }

    /// Like [`GatewayProcess::start`] with a config of the test's own:
    /// `write` gets the gateway's (empty) temporary directory, may put files
    /// there (modules, a pre-made data directory) and returns the TOML.
    #[track_caller]
    pub fn start_toml(write: impl FnOnce(&Path) -> String) -> GatewayProcess {
        Self::start_toml_with(&[], &[], write)
    }

    /// Like [`GatewayProcess::start_toml`], with more arguments for `run`
    /// and environment variables (set after the harness's own, so they win).
    #[track_caller]
    pub fn start_toml_with(
        args: &[&str],
        env: &[(&str, &str)],
        write: impl FnOnce(&Path) -> String,
    ) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, write(dir.path())).expect("write config");
        let mut gateway = GatewayProcess {
            dir,
            config: path,
            child: None,
            runs: 0,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        gateway.restart();
        gateway
    }

    /// The gateway's temporary directory (config, logs, usually its data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the gateway again on the same config (after `stop` or `kill`).
    #[track_caller]
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the gateway is already running");
        self.runs += 1;
        let log = |name: &str| {
            File::create(self.dir.path().join(format!("run-{}.{name}", self.runs)))
                .expect("create log file")
        };
        let mut command = Command::new(WASMGATE);
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            // The gateway's default log filter, and plain text for grepping.
            .env_remove("RUST_LOG");
        // To debug a failing test: WASMGATE_TEST_LOG=debug cargo test ...
        if let Some(filter) = std::env::var_os("WASMGATE_TEST_LOG") {
            command.env("RUST_LOG", filter);
        }
        command.env("NO_COLOR", "1").args(&self.args);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .stdin(Stdio::null())
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .spawn()
            .expect("spawn wasmgate run");
        self.child = Some(child);
        let started = wait_until(START_TIMEOUT, || {
            self.run_log().contains("gateway running") || self.exited()
        });
        assert!(
            started && !self.exited(),
            "the gateway did not start within {START_TIMEOUT:?}; its log:\n{}",
            self.logs()
        );
    }

    /// The config file, for `wasmgate kv --config` and friends.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Whether the gateway process is still running.
    pub fn is_running(&mut self) -> bool {
        !self.exited()
    }

    fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) => true,
            Some(Ok(None)) => false,
            _ => true,
        }
    }

    /// The process id of the running gateway.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the gateway is running").id()
    }

    /// SIGTERM, as `systemctl stop` sends; waits (bounded) for the exit.
    #[track_caller]
    pub fn stop(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        self.wait_exit(STOP_TIMEOUT)
    }

    /// SIGKILL: the gateway gets no chance to finish anything (power loss).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself; kills it if it does not
    /// within `timeout` and fails the test.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        let exited = wait_until(timeout, || {
            status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            status.is_some()
        });
        if !exited {
            self.kill();
            panic!(
                "the gateway did not exit within {timeout:?}; its log:\n{}",
                self.logs()
            );
        }
        self.child = None;
        status.expect("exit status")
    }

    /// The stderr (where the gateway logs) of the current or last run.
    pub fn run_log(&self) -> String {
        read_log(&self.dir.path().join(format!("run-{}.stderr", self.runs)))
    }

    /// Every run's stderr, oldest first.
    pub fn logs(&self) -> String {
        (1..=self.runs)
            .map(|run| {
                let path = self.dir.path().join(format!("run-{run}.stderr"));
                format!("--- run {run} ---\n{}", read_log(&path))
            })
            .collect()
    }

    /// Log lines (all runs) containing every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_log(path: &Path) -> String {
    strip_ansi(&String::from_utf8_lossy(
        &std::fs::read(path).unwrap_or_default(),
    ))
}

/// Removes terminal colour codes, in case the log is coloured after all.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters... final letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A finished `wasmgate` command: exit code and output.
#[derive(Debug)]
pub struct CommandOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `wasmgate ARGS...` to completion (bounded), e.g. `config check`.
#[track_caller]
pub fn wasmgate(args: &[&str], timeout: Duration) -> CommandOutput {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(WASMGATE)
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn wasmgate");
    let mut status = None;
    if !wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    }) {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`wasmgate {}` did not finish within {timeout:?}; stderr:\n{}",
            args.join(" "),
            read_log(&err)
        );
    }
    CommandOutput {
        code: status.and_then(|s| s.code()),
        stdout: read_log(&out),
        stderr: read_log(&err),
    }
}

/// What `wasmgate kv get NAMESPACE KEY` shows of a key (the value's first
/// word), `None` if the key is not there.
pub fn kv_value(gateway: &GatewayProcess, namespace: &str, key: &str) -> Option<String> {
    let config = gateway
        .config_path()
        .to_str()
        .expect("config path")
        .to_owned();
    let out = wasmgate(
        &["kv", "--config", &config, "get", namespace, key],
        std::time::Duration::from_secs(30),
    );
    (out.code == Some(0)).then(|| {
        out.stdout
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned()
    })
}

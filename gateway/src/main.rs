//! The `wasmgate` command. Parsing and printing only; the work is in the library.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use wasmgate::config::Config;
use wasmgate::event::{OwnedEvent, EVENT_JSON_HELP};
use wasmgate::runtime::{FunctionSpec, Limits};

/// Serverless functions for edge gateways: MQTT in, WebAssembly functions,
/// SQLite state, durable sync upstream.
#[derive(Debug, Parser)]
#[command(name = "wasmgate", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines look on stderr: `text` (colour only on a terminal, and
    /// never with NO_COLOR set) or `json` (one object per line, with the
    /// function, version, request id and trigger as fields, for a log
    /// shipper).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "WASMGATE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The demo: an embedded broker, the example functions, and a simulated
    /// fleet of vending machines and robots, with a live summary. Ctrl-C stops it.
    Demo(DemoArgs),
    /// Run the gateway: the broker (embedded by default), every configured
    /// function, until SIGINT or SIGTERM; then finish in-flight work and stop.
    Run(RunArgs),
    /// Write a commented default config, or check one and print every problem.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Read and change functions' KV state in the gateway's database (safe
    /// while the gateway runs).
    Kv(KvArgs),
    /// The dead-letter queue: events whose function failed every attempt.
    /// List them, show one, replay them (after a fix), or purge them.
    #[command(after_help = DLQ_HELP)]
    Dlq(DlqArgs),
    /// Run a function once on an event file, with no broker, and print what it
    /// did (emits, KV writes, logs) and what it cost (fuel, memory, time).
    #[command(after_help = EVENT_JSON_HELP)]
    Invoke(InvokeArgs),
    /// Simulate a fleet of devices (vending machines, robots) publishing
    /// telemetry to a broker, to demo or load the gateway.
    #[command(after_help = wasmgate::simulate::SIMULATE_HELP)]
    Simulate(Box<wasmgate::simulate::SimulateArgs>),
    /// Load a gateway end to end: publish telemetry, match the outputs, report
    /// throughput, latency, losses and the gateway's CPU and memory.
    #[command(after_help = wasmgate::bench::BENCH_HELP)]
    Bench(Box<wasmgate::bench::BenchArgs>),
    /// Set a device's password in the embedded broker's passwords file
    /// (`[broker] passwords`), read from stdin; the file keeps only a salted
    /// hash, in mosquitto_passwd's format.
    #[cfg(feature = "embedded-broker")]
    #[command(
        after_help = "Example:\n  read -rs PW && printf '%s\\n' \"$PW\" | wasmgate passwd /etc/wasmgate/passwords vm-17\n\nThe broker reads the file when it starts: restart the gateway after a change."
    )]
    Passwd {
        /// The passwords file (created, mode 0600, if missing).
        file: PathBuf,
        /// The device's user name.
        user: String,
    },
    /// The embedded broker's own process, which `wasmgate run` starts and
    /// restarts; not for running by hand.
    #[cfg(feature = "embedded-broker")]
    #[command(hide = true)]
    EmbeddedBroker,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Where the embedded broker listens [default: 127.0.0.1:1883, or a free port if taken].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Simulated devices (2/3 vending machines, 1/3 robots).
    #[arg(long, default_value_t = 20)]
    devices: u32,
    /// Messages per second from the whole fleet.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Stop after this many seconds [default: run until Ctrl-C].
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Seconds between summaries.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    report_every: u64,
    /// Keep the demo's database here [default: a temporary directory, removed at the end].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The gateway config (TOML); `wasmgate config init` writes a starting point.
    #[arg(long, short, default_value = "gateway.toml")]
    config: PathBuf,
    /// A board profile (rpi4-64, rpi5-64, rpi3-32, beaglebone-black,
    /// generic-aarch64-musl, or a profile file): its limits become the
    /// defaults under your config; what your config sets wins.
    #[arg(long)]
    board: Option<String>,
}

#[derive(Debug, Args)]
struct KvArgs {
    /// The gateway config; its data_dir holds the database.
    #[arg(long, short, default_value = "gateway.toml", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    op: KvOp,
}

#[derive(Debug, Subcommand)]
enum KvOp {
    /// Print one value (text as text, counters as numbers).
    Get { function: String, key: String },
    /// Print every key and value of a function.
    List { function: String },
    /// Set a value (as text, or with --counter as a number functions can increment).
    Put {
        function: String,
        key: String,
        value: String,
        #[arg(long)]
        counter: bool,
    },
    /// Delete a key.
    Delete { function: String, key: String },
}

const DLQ_HELP: &str = "\
An event lands in the dead-letter queue when its function failed every attempt
([functions.retry]); it is kept in the gateway's database with the function,
the version, the event's bytes and every attempt's error, and its message is
acknowledged only once it is kept. These commands are safe while the gateway
runs.

Replay runs here, in this process, not in the daemon: the function is deployed
as the config describes it (limits, grants, config values), from the config's
module or from --wasm FILE, and runs on the stored event with the next attempt
number. On success its effects are committed to the gateway's database exactly
as the pipeline commits them (KV writes, and emits into the durable outbox),
in one transaction that also deletes the dead letter; a running gateway sends
those emits within a second, a stopped one when it starts. On failure the
attempt is added to the dead letter, which stays. wasmgate keeps no copies of
old modules: name a version by its file with --wasm; --version checks that the
module about to run is the version you mean.

Examples:
  wasmgate dlq list
  wasmgate dlq show 12 > letter.json      # its \"event\" runs with `wasmgate invoke`
  wasmgate dlq replay 12 --wasm fixed.wasm
  wasmgate dlq purge --function vending";

#[derive(Debug, Args)]
struct DlqArgs {
    /// The gateway config; its data_dir holds the database.
    #[arg(long, short, default_value = "gateway.toml", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    op: DlqOp,
}

#[derive(Debug, Subcommand)]
enum DlqOp {
    /// One line per dead letter, oldest first: id, function, version,
    /// attempts, when it failed, the last error's kind, topic.
    List {
        /// Only this function's.
        #[arg(long)]
        function: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// One dead letter as JSON: the event (in `wasmgate invoke`'s event
    /// format) and every attempt with its time, version, kind and error.
    Show { id: i64 },
    /// Run dead letters again (see `wasmgate dlq --help`); each one that
    /// succeeds is removed. Exit code 1 if any failed again.
    // `--version` here names a module version, not wasmgate's.
    #[command(disable_version_flag = true)]
    Replay {
        /// Dead letters to replay, in this order.
        ids: Vec<i64>,
        /// Replay every dead letter of this function, oldest first.
        #[arg(long, conflicts_with = "ids")]
        function: Option<String>,
        /// Run this module instead of the config's (a fixed version).
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// Refuse unless the module that would run has this version (the
        /// 12-hex-digit prefix of its SHA-256, as `dlq list` shows).
        #[arg(long)]
        version: Option<String>,
    },
    /// Delete dead letters for good: by id, a function's, or all.
    Purge {
        ids: Vec<i64>,
        #[arg(long, conflicts_with = "ids")]
        function: Option<String>,
        #[arg(long, conflicts_with_all = ["ids", "function"])]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Write the default config, with every setting explained, to FILE (or stdout with -).
    Init {
        #[arg(default_value = "gateway.toml")]
        file: PathBuf,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Check FILE: syntax, every value, and that the files it names exist.
    /// Prints every problem with its line; exit code 2 if there are any.
    Check {
        #[arg(default_value = "gateway.toml")]
        file: PathBuf,
        /// Check it as `wasmgate run --board NAME` would run it.
        #[arg(long)]
        board: Option<String>,
    },
}

#[derive(Debug, Args)]
struct InvokeArgs {
    /// The function: a .wasm module built against the wasmgate ABI.
    wasm: PathBuf,
    /// The event, as JSON (see below).
    #[arg(long, short)]
    event: PathBuf,
    /// The function's name, as it would be deployed (its KV namespace).
    #[arg(long, default_value = "local")]
    name: String,
    /// A config value the function reads with config_get; repeatable.
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    config: Vec<(String, String)>,
    /// Invoke this many times, committing KV between runs (shows warm starts and running totals).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    repeat: u32,
    /// Print a JSON report instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Per-invocation limits; the defaults are the gateway's.
#[derive(Debug, Args)]
struct LimitArgs {
    /// Fuel budget, roughly Wasm instructions.
    #[arg(long, default_value_t = Limits::DEFAULT_FUEL)]
    fuel: u64,
    /// Linear memory limit in MiB.
    #[arg(long, default_value_t = (Limits::DEFAULT_MEMORY_BYTES >> 20) as u64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    memory_mb: u64,
    /// Wall-clock limit per invocation, in milliseconds.
    #[arg(long, default_value_t = Limits::DEFAULT_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Emits (and invokes) allowed per invocation.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_EMITS)]
    max_emits: usize,
    /// Bytes per emitted payload.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_EMIT_BYTES)]
    max_emit_bytes: usize,
    /// Bytes per KV value.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_KV_VALUE_BYTES)]
    max_kv_value_bytes: usize,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            memory_bytes: (self.memory_mb as usize) << 20,
            timeout: Duration::from_millis(self.timeout_ms),
            max_emits: self.max_emits,
            max_emit_bytes: self.max_emit_bytes,
            max_kv_value_bytes: self.max_kv_value_bytes,
            ..Limits::default()
        }
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Logs when RUST_LOG is not set: a daemon reports its life at info; a
/// one-shot command only warnings. Guest log lines are per message, so they
/// show from warn up unless asked for (RUST_LOG=wasmgate::guest=info).
fn default_filter(command: &Command) -> &'static str {
    match command {
        Command::Run(_) | Command::Simulate(_) => "info,wasmgate::guest=warn,rumqttd=off",
        // The demo prints its own summary; logs only for trouble.
        _ => "warn,wasmgate::guest=warn,rumqttd=off",
    }
}

/// Colour codes only for a person at a terminal: a file, a pipe or the
/// journal gets plain text (https://no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Exit codes: 0 success, 1 the function failed, 2 bad input (files, flags).
const EXIT_FAILED: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| default_filter(&cli.command).into());
    #[cfg(feature = "embedded-broker")]
    let filter = if matches!(cli.command, Command::EmbeddedBroker) {
        wasmgate::broker::log_filter(&filter)
    } else {
        filter
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter(&cli.command)));
    // The embedded broker's process logs as this one does.
    std::env::set_var("WASMGATE_LOG_FORMAT", cli.log_format.name());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => logs.with_ansi(colour_on_stderr()).init(),
    }
    let result = match cli.command {
        Command::Demo(args) => demo(args),
        Command::Run(args) => run(args),
        Command::Config(ConfigCommand::Init { file, force }) => config_init(&file, force),
        Command::Config(ConfigCommand::Check { file, board }) => {
            config_check(&file, board.as_deref())
        }
        Command::Kv(args) => kv(args),
        Command::Dlq(args) => dlq(args),
        Command::Invoke(args) => invoke(args),
        Command::Simulate(args) => simulate(*args),
        Command::Bench(args) => bench(*args),
        #[cfg(feature = "embedded-broker")]
        Command::EmbeddedBroker => return wasmgate::broker::child_main(),
        #[cfg(feature = "embedded-broker")]
        Command::Passwd { file, user } => passwd(&file, &user),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

#[cfg(feature = "embedded-broker")]
fn passwd(file: &Path, user: &str) -> anyhow::Result<ExitCode> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        anyhow::bail!("a user name is not empty and has no `:` or control characters");
    }
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .context("cannot read the password from stdin")?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!("no password on stdin");
    }
    wasmgate::passwords::set(file, user, password)
        .with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!(
        "{}: password of {user} set; restart the gateway for its broker to read it",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    use wasmgate::files::{read_limited, read_text, MAX_EVENT_FILE_BYTES, MAX_MODULE_BYTES};
    let wasm = read_limited(&args.wasm, MAX_MODULE_BYTES, "module")
        .with_context(|| format!("cannot read the module {}", args.wasm.display()))?;
    let text = read_text(&args.event, MAX_EVENT_FILE_BYTES, "event file")
        .with_context(|| format!("cannot read the event file {}", args.event.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", args.event.display()))?;
    let event = OwnedEvent::from_json(&json)
        .with_context(|| format!("{} is not a valid event", args.event.display()))?;
    let spec = FunctionSpec {
        config: args.config.iter().cloned().collect::<BTreeMap<_, _>>(),
        limits: args.limits.limits(),
        ..FunctionSpec::permissive(args.name)
    };
    let run = wasmgate::local::invoke(spec, &wasm, &event, args.repeat)?;
    if args.json {
        println!("{:#}", wasmgate::local::to_json(&run));
    } else {
        print!("{}", wasmgate::local::render(&run));
    }
    Ok(if run.all_succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// Loads a config, printing every problem at once.
fn load_config(path: &Path, board: Option<&str>) -> Result<Config, ExitCode> {
    let board = match board.map(wasmgate::board::BoardProfile::find).transpose() {
        Ok(board) => board,
        Err(e) => {
            eprintln!("{e}");
            return Err(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let name = path.display().to_string();
    let text = match wasmgate::config::read_config_text(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!(
                "{name}: cannot read the config: {e} (`wasmgate config init {name}` writes one)"
            );
            return Err(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    // Syntax first (nothing more can be read reliably after a syntax
    // error); then schema errors, and the values and files of what could be
    // read around them, all reported together.
    let (config, mut problems) = Config::parse_all(&text, &name);
    let config = config.map(|mut config| {
        config.resolve_paths(path.parent().unwrap_or(Path::new("")));
        problems.extend(config.resolve_secrets(path.parent().unwrap_or(Path::new(""))));
        if let Some(board) = &board {
            board.apply_defaults(&mut config, &text);
            apply_board_store(board, &mut config, &text);
        }
        if let Err(errors) = config.validate() {
            problems.extend(errors);
        }
        problems.extend(config.check_files());
        config
    });
    problems.sort_by_key(|p| p.line);
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            eprintln!(
                "{}: {} problem{}",
                path.display(),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
            Err(ExitCode::from(EXIT_BAD_INPUT))
        }
    }
}

/// The board's outbox budget, unless the config sets one.
fn apply_board_store(board: &wasmgate::board::BoardProfile, config: &mut Config, text: &str) {
    let set_by_user = text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("store")?.as_table()?.get("outbox_max_mb").cloned())
        .is_some();
    if !set_by_user {
        config.store.outbox_max_mb = board.store.outbox_budget_mb;
    }
}

fn config_check(path: &Path, board: Option<&str>) -> anyhow::Result<ExitCode> {
    Ok(match load_config(path, board) {
        Ok(config) => {
            println!(
                "{}: ok ({} function{})",
                path.display(),
                config.functions.len(),
                if config.functions.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    })
}

fn config_init(path: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let text = Config::default_toml();
    if path == Path::new("-") {
        print!("{text}");
        eprintln!(
            "(the example module it names is written by `wasmgate config init FILE`, beside FILE)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let written = wasmgate::examples::init_config(path, text, force)?;
    if let Some(module) = &written.module {
        eprintln!("wrote {} (the example function it runs)", module.display());
    }
    eprintln!(
        "wrote {}; check it with `wasmgate config check {}`",
        path.display(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config(&args.config, args.board.as_deref()) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let runtime = tokio_runtime()?;
    runtime.block_on(async {
        // Signal handlers go in before the gateway starts, so that a SIGTERM
        // during start-up stops it cleanly rather than killing it.
        let shutdown = shutdown_signal();
        wasmgate::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn simulate(args: wasmgate::simulate::SimulateArgs) -> anyhow::Result<ExitCode> {
    let options = args.into_options();
    let runtime = tokio_runtime()?;
    let _context = runtime.enter(); // signal handlers need the runtime
    let summary = runtime.block_on(wasmgate::simulate::run(options, shutdown_signal()))?;
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

fn bench(args: wasmgate::bench::BenchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio_runtime()?;
    let _context = runtime.enter(); // signal handlers need the runtime
    let output = runtime.block_on(wasmgate::bench::command(args, shutdown_signal()))?;
    print!("{output}");
    Ok(ExitCode::SUCCESS)
}

/// Two reactor threads are plenty: invocations run on the workers' own threads.
fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Waits for one signal; a handler that could not be installed never fires.
#[cfg(unix)]
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd stop). The handlers are
/// installed when this is called (inside the runtime), not when first polled.
///
/// SIGHUP (`systemctl reload`, the unit's `ExecReload`, or a closed terminal)
/// must not stop the gateway: its default action would kill it at once, with
/// no totals and no clean stop. Until functions can be reloaded live, it logs
/// that a change of config needs a restart, and keeps running.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (mut interrupt, mut terminate, mut hangup) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::hangup()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        loop {
            tokio::select! {
                () = recv(&mut interrupt) => break,
                () = recv(&mut terminate) => break,
                () = recv(&mut hangup) => tracing::warn!(
                    "SIGHUP: the gateway does not reload its config while running yet; \
                     it keeps the config it started with. Restart it to apply a change \
                     (systemctl restart wasmgate)"
                ),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn kv(args: KvArgs) -> anyhow::Result<ExitCode> {
    use wasmgate::runtime::{Effects, KvRead, KvWrite};
    let config = match load_config(&args.config, None) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let store = open_store(&config)?;
    let known = |function: &str| -> anyhow::Result<()> {
        if config.function(function).is_none() {
            anyhow::bail!(
                "no function named {function:?} in {}",
                args.config.display()
            );
        }
        Ok(())
    };
    let code = match args.op {
        KvOp::Get { function, key } => {
            known(&function)?;
            match store.get(&function, &key).map_err(anyhow::Error::msg)? {
                Some(value) => {
                    println!("{}", wasmgate::local::show_value(&value));
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("{function}: no key {key:?}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        KvOp::List { function } => {
            known(&function)?;
            for (key, value) in store.kv_list(&function)? {
                println!("{key} = {}", wasmgate::local::show_value(&value));
            }
            ExitCode::SUCCESS
        }
        KvOp::Put {
            function,
            key,
            value,
            counter,
        } => {
            known(&function)?;
            let bytes = if counter {
                let n: i64 = value
                    .parse()
                    .with_context(|| format!("{value:?} is not a whole number"))?;
                n.to_le_bytes().to_vec()
            } else {
                value.into_bytes()
            };
            let mut effects = Effects::default();
            effects.kv.insert(key, KvWrite::Put(bytes));
            store.commit_now(&function, effects)?;
            ExitCode::SUCCESS
        }
        KvOp::Delete { function, key } => {
            known(&function)?;
            let mut effects = Effects::default();
            effects.kv.insert(key, KvWrite::Delete);
            store.commit_now(&function, effects)?;
            ExitCode::SUCCESS
        }
    };
    store.close();
    Ok(code)
}

/// Opens the database of the config's data_dir, which must exist, for an
/// operator's command (`kv`, `dlq`): the gateway may be running beside it.
fn open_store(config: &Config) -> anyhow::Result<wasmgate::store::Store> {
    let path = config.data_dir.join("wasmgate.db");
    if !path.exists() {
        anyhow::bail!(
            "{} does not exist yet (the gateway creates it on its first run)",
            path.display()
        );
    }
    let mut options = wasmgate::store::StoreOptions::new(&path);
    options.operator = true;
    Ok(wasmgate::store::Store::open(options)?)
}

fn dlq(args: DlqArgs) -> anyhow::Result<ExitCode> {
    use wasmgate::store::Purge;
    let config = match load_config(&args.config, None) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let store = open_store(&config)?;
    let result = (|| -> anyhow::Result<ExitCode> {
        Ok(match args.op {
            DlqOp::List { function, limit } => {
                let letters = store.dead_letters(function.as_deref(), limit)?;
                let total = store.dead_letter_count(function.as_deref())?;
                print!("{}", wasmgate::dlq::render_list(&letters));
                if total as usize > letters.len() {
                    eprintln!("({} of {total} shown; --limit shows more)", letters.len());
                }
                ExitCode::SUCCESS
            }
            DlqOp::Show { id } => match store.dead_letter_by_id(id)? {
                Some(letter) => {
                    println!("{:#}", wasmgate::dlq::to_json(&letter));
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("no dead letter {id} (`wasmgate dlq list` shows them)");
                    ExitCode::from(EXIT_FAILED)
                }
            },
            DlqOp::Replay {
                ids,
                function,
                wasm,
                version,
            } => dlq_replay(&config, &store, ids, function, wasm, version)?,
            DlqOp::Purge { ids, function, all } => {
                let purge = match (ids.is_empty(), function, all) {
                    (false, _, _) => Purge::Ids(ids),
                    (true, Some(f), _) => Purge::Function(f),
                    (true, None, true) => Purge::All,
                    (true, None, false) => anyhow::bail!(
                        "say what to purge: dead letter ids, --function NAME, or --all"
                    ),
                };
                let n = store.purge_dead_letters(purge)?;
                println!("purged {n} dead letter{}", if n == 1 { "" } else { "s" });
                ExitCode::SUCCESS
            }
        })
    })();
    store.close();
    result
}

fn dlq_replay(
    config: &Config,
    store: &wasmgate::store::Store,
    ids: Vec<i64>,
    function: Option<String>,
    wasm: Option<PathBuf>,
    version: Option<String>,
) -> anyhow::Result<ExitCode> {
    let letters = match (ids.is_empty(), &function) {
        (false, _) => ids
            .iter()
            .map(|&id| {
                store.dead_letter_by_id(id)?.ok_or_else(|| {
                    anyhow::anyhow!("no dead letter {id} (`wasmgate dlq list` shows them)")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        (true, Some(f)) => store.dead_letters(Some(f), usize::MAX)?,
        (true, None) => anyhow::bail!("say what to replay: dead letter ids, or --function NAME"),
    };
    if letters.is_empty() {
        println!("no dead letters to replay");
        return Ok(ExitCode::SUCCESS);
    }
    // Modules are read once per function; a replay of many letters deploys each once.
    let mut modules: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut failed = 0;
    for letter in &letters {
        // A message no broker would take goes back in the outbox as it was.
        if wasmgate::dlq::requeue(store, letter)?.is_some() {
            println!(
                "dead letter {}: undeliverable message to {} put back in the outbox; removed from the queue",
                letter.id,
                wasmgate::text::escape(&letter.topic)
            );
            continue;
        }
        let Some((_, f)) = config.function(&letter.function) else {
            anyhow::bail!(
                "dead letter {}: function {:?} is not in the config any more; its limits and grants are unknown, so it cannot be replayed",
                letter.id,
                letter.function
            );
        };
        if !modules.contains_key(&f.name) {
            let path = wasm.clone().unwrap_or_else(|| f.wasm.clone());
            let bytes =
                wasmgate::files::read_limited(&path, wasmgate::files::MAX_MODULE_BYTES, "module")
                    .with_context(|| format!("cannot read the module {}", path.display()))?;
            if let Some(want) = &version {
                let found = wasmgate::runtime::module_version(&bytes);
                if &found != want {
                    anyhow::bail!(
                        "{} is version {found}, not {want}; name the module of version {want} with --wasm",
                        path.display()
                    );
                }
            }
            modules.insert(f.name.clone(), bytes);
        }
        let spec = wasmgate::pipeline::function_spec(f);
        let replayed = wasmgate::dlq::replay(store, letter, spec, &modules[&f.name])?;
        for line in &replayed.logs {
            eprintln!("  [{:?}] {}", line.level, line.message);
        }
        match &replayed.outcome {
            Ok(effects) => println!(
                "dead letter {}: replayed on {} version {} (attempt {}): ok, {} emit{}, {} KV write{}; removed from the queue",
                letter.id,
                letter.function,
                replayed.version,
                replayed.attempt,
                effects.emits.len(),
                if effects.emits.len() == 1 { "" } else { "s" },
                effects.kv.len(),
                if effects.kv.len() == 1 { "" } else { "s" },
            ),
            Err(error) => {
                failed += 1;
                println!(
                    "dead letter {}: attempt {} on version {} failed: {error}; it stays in the queue",
                    letter.id, replayed.attempt, replayed.version
                );
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let options = wasmgate::demo::DemoOptions {
        listen: args.listen,
        devices: args.devices,
        rate: args.rate,
        duration: args.duration.map(Duration::from_secs),
        report_every: Duration::from_secs(args.report_every),
        data_dir: args.data_dir,
    };
    let runtime = tokio_runtime()?;
    let _context = runtime.enter(); // signal handlers need the runtime
    runtime.block_on(wasmgate::demo::run(options, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Clap checks its definitions only when a command is parsed; a clash
    /// (say, a subcommand's `--version` against the automatic one) would
    /// otherwise surface as a panic in front of a user.
    #[test]
    fn every_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

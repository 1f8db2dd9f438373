//! The `wasmgate` command. Parsing and printing only; the work is in the library.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use wasmgate::config::{Config, Needs};
use wasmgate::event::EVENT_JSON_HELP;

mod ops;

use ops::dlq::{DlqArgs, DLQ_HELP};
use ops::invoke::InvokeArgs;
use ops::kv::KvArgs;

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
    /// List the configured functions: module version (SHA-256 prefix) and
    /// size, triggers, grants, and the limits they run under (after --board).
    /// Secrets by name only.
    Functions(ops::functions::FunctionsArgs),
    /// List the schedule triggers: each one's last tick and when it fires
    /// next (and the missed ticks a start now would run late).
    Schedules(ops::schedules::SchedulesArgs),
    /// Functions' log lines, kept in the gateway's database: a function's,
    /// or all; since a time, at a level, of one request id; --follow
    /// prints new ones as they come (like `sam logs`).
    Logs(ops::logs::LogsArgs),
    /// What each function used over a window (invocations, run time,
    /// GB-seconds, fuel, peak memory), what it would cost on AWS Lambda and
    /// IoT Core, and limits right-sized from what it really used.
    Cost(ops::cost::CostArgs),
    /// Deploy a module as a function's new live version on the running
    /// gateway: checked, kept under data_dir/modules, warmed, then the next
    /// events run on it (no restart, no device disconnected). `rollback`
    /// moves it back. With `--strategy`, a canary or linear rollout that
    /// rolls itself back when the new version fails.
    #[cfg(unix)]
    Deploy(ops::deploy::DeployArgs),
    /// Signed bundles: a function's module, the spec it runs with and its
    /// rollout in one file, signed with Ed25519; a gateway deploys one only
    /// if a key in its [bundles] trusted_keys signed it.
    #[command(
        after_help = "Example:\n  wasmgate bundle keygen ci            # ci.key (secret) and ci.pub\n  wasmgate bundle create enrich -c gateway.toml --wasm new.wasm --strategy canary10-5m\n  wasmgate bundle sign enrich.wgb --key ci.key\n  wasmgate deploy enrich enrich.wgb    # or a fleet job carries it"
    )]
    Bundle(ops::bundle::BundleArgs),
    /// Rollouts on the running gateway, newest first: a function's, or
    /// all; their state, the new version's share, why one rolled back.
    #[cfg(unix)]
    Deployments(ops::deploy::DeploymentsArgs),
    /// A function's versions on the running gateway: which is live, which
    /// was before, where each came from.
    #[cfg(unix)]
    Versions(ops::deploy::VersionsArgs),
    /// Point a function's `live` alias at one of its versions.
    #[cfg(unix)]
    Alias(ops::deploy::AliasArgs),
    /// Move a function's `live` alias back to the version it ran before.
    #[cfg(unix)]
    Rollback(ops::deploy::RollbackArgs),
    /// Apply a config file to the running gateway as a live diff: functions
    /// added, removed or changed (modules, limits, grants, triggers,
    /// schedules, routes) without a restart; prints the plan. What is read
    /// only at start (data_dir, the broker, [store], [http]) is refused with
    /// the field named. SIGHUP (systemctl reload) applies the file the
    /// gateway was started with.
    Apply(ops::deploy::ApplyArgs),
    /// Write a new function crate: Cargo.toml (with the SDK), a handler with
    /// a unit test, an event file and a README.
    New(ops::new::NewArgs),
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

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Write the default config, with every setting explained, to FILE (or stdout with -).
    Init {
        /// Where to write the config (`-`: stdout).
        #[arg(default_value = "gateway.toml")]
        file: PathBuf,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Check FILE: syntax, every value, and that the files it names exist.
    /// Prints every problem with its line; exit code 2 if there are any.
    Check {
        /// The config to check.
        #[arg(default_value = "gateway.toml")]
        file: PathBuf,
        /// Check it as `wasmgate run --board NAME` would run it.
        #[arg(long)]
        board: Option<String>,
    },
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
        Command::Kv(args) => ops::kv::kv(args),
        Command::Dlq(args) => ops::dlq::dlq(args),
        Command::Invoke(args) => ops::invoke::invoke(args),
        Command::Functions(args) => ops::functions::functions(args),
        Command::Schedules(args) => ops::schedules::schedules(args),
        Command::Logs(args) => ops::logs::logs(args),
        Command::Cost(args) => ops::cost::cost(args),
        #[cfg(unix)]
        Command::Deploy(args) => ops::deploy::deploy(args),
        #[cfg(unix)]
        Command::Deployments(args) => ops::deploy::deployments(args),
        #[cfg(unix)]
        Command::Versions(args) => ops::deploy::versions(args),
        #[cfg(unix)]
        Command::Alias(args) => ops::deploy::alias(args),
        #[cfg(unix)]
        Command::Rollback(args) => ops::deploy::rollback(args),
        Command::Apply(args) => ops::deploy::apply(args),
        Command::Bundle(args) => ops::bundle::bundle(args),
        Command::New(args) => ops::new::new(args),
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

/// Loads a config, printing every problem at once.
fn load_config(path: &Path, board: Option<&str>) -> Result<Config, ExitCode> {
    load_config_for(path, board, Needs::EVERYTHING)
}

/// [`load_config`] for a command that needs less than `run` does: the
/// library's one loader ([`wasmgate::config::load`]), its problems printed.
fn load_config_for(path: &Path, board: Option<&str>, needs: Needs) -> Result<Config, ExitCode> {
    let board = match board.map(wasmgate::board::BoardProfile::find).transpose() {
        Ok(board) => board,
        Err(e) => {
            eprintln!("{e}");
            return Err(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let loaded = match &board {
        Some(board) => board.load_config(path, needs),
        None => wasmgate::config::load(path, needs, |_, _| {}),
    };
    let problems = match loaded {
        Ok(config) => return Ok(config),
        Err(problems) => problems,
    };
    let name = path.display().to_string();
    for problem in problems.iter() {
        match &problem.kind {
            wasmgate::config::ConfigErrorKind::Read(e) => eprintln!(
                "{name}: cannot read the config: {e} (`wasmgate config init {name}` writes one)"
            ),
            _ => eprintln!("{problem}"),
        }
    }
    let count = problems.iter().count();
    if !matches!(
        problems.iter().next().map(|p| &p.kind),
        Some(wasmgate::config::ConfigErrorKind::Read(_))
    ) {
        eprintln!(
            "{name}: {count} problem{}",
            if count == 1 { "" } else { "s" }
        );
    }
    Err(ExitCode::from(EXIT_BAD_INPUT))
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
    let board = match args
        .board
        .as_deref()
        .map(wasmgate::board::BoardProfile::find)
        .transpose()
    {
        Ok(board) => board,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let source = wasmgate::Source {
        path: std::path::absolute(&args.config).unwrap_or_else(|_| args.config.clone()),
        board,
    };
    let runtime = tokio_runtime()?;
    runtime.block_on(async {
        // Signal handlers go in before the gateway starts, so that a SIGTERM
        // during start-up stops it cleanly rather than killing it.
        let (hangup, hangups) = tokio::sync::mpsc::channel(1);
        let shutdown = shutdown_signal(Some(hangup));
        wasmgate::run_from(config, Some(source), shutdown, hangups).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn simulate(args: wasmgate::simulate::SimulateArgs) -> anyhow::Result<ExitCode> {
    let options = args.into_options();
    let runtime = tokio_runtime()?;
    let _context = runtime.enter(); // signal handlers need the runtime
    let summary = runtime.block_on(wasmgate::simulate::run(options, shutdown_signal(None)))?;
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

fn bench(args: wasmgate::bench::BenchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio_runtime()?;
    let _context = runtime.enter(); // signal handlers need the runtime
    let output = runtime.block_on(wasmgate::bench::command(args, shutdown_signal(None)))?;
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
/// no totals and no clean stop. It goes to `reload` (the gateway applies its
/// config file again); without one (the demo), it is logged and ignored.
fn shutdown_signal(
    reload: Option<tokio::sync::mpsc::Sender<()>>,
) -> impl std::future::Future<Output = ()> {
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
                () = recv(&mut hangup) => match &reload {
                    // A reload already waiting covers this one too.
                    Some(to) => { let _ = to.try_send(()); }
                    None => tracing::warn!("SIGHUP ignored: there is no config file to apply"),
                },
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
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
    runtime.block_on(wasmgate::demo::run(options, shutdown_signal(None)))?;
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

    /// `wasmgate X --help` explains every argument it lists.
    #[test]
    fn every_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if ["help", "version"].contains(&id) || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "wasmgate", &mut missing);
        assert!(missing.is_empty(), "no help: {missing:#?}");
    }
}

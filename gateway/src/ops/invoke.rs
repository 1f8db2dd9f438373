//! `wasmgate invoke`: run a function once on an event file, with no broker.

use crate::{load_config_for, Needs, EXIT_FAILED};
use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wasmgate::event::OwnedEvent;
use wasmgate::runtime::{FunctionSpec, Limits};

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The function: a .wasm module built against the wasmgate ABI. With
    /// --gateway-config, the configured function's module unless given.
    #[arg(required_unless_present_any = ["gateway_config", "live"])]
    wasm: Option<PathBuf>,
    /// Run this function on the running gateway instead (`--config` finds
    /// it, default gateway.toml): its live version, real grants, limits and
    /// KV; its effects are committed as a trigger's would be.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["wasm", "name", "function", "board", "set"])]
    live: Option<String>,
    /// With --live: run it and show what it did, but commit nothing.
    #[arg(long, requires = "live")]
    dry_run: bool,
    /// The event, as JSON (see below), or a dead letter as `wasmgate dlq
    /// show` prints it.
    #[arg(long, short)]
    event: PathBuf,
    /// The function's name, as it would be deployed (its KV namespace)
    /// [default: the dead letter's function, else `local`].
    #[arg(long, conflicts_with = "gateway_config")]
    name: Option<String>,
    /// Run a function of this gateway config as `wasmgate run` would: its
    /// grants, limits, config values and secrets (`--config FILE` also works).
    #[arg(
        long = "gateway-config",
        visible_alias = "config",
        short = 'c',
        value_name = "FILE"
    )]
    gateway_config: Vec<PathBuf>,
    /// With --gateway-config: the function to run [default: the dead
    /// letter's function, or the config's only one].
    #[arg(long, requires = "gateway_config")]
    function: Option<String>,
    /// With --gateway-config: a board profile, as `wasmgate run --board`
    /// applies it (its limits as defaults under the config's).
    #[arg(long, requires = "gateway_config")]
    board: Option<String>,
    /// A config value the function reads with config_get (over the
    /// configured ones); repeatable.
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
    /// Invoke this many times, committing KV between runs (shows warm starts and running totals).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    repeat: u32,
    /// Print a JSON report instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Per-invocation limits: the gateway's defaults, or with --gateway-config
/// the function's; each flag given overrides.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Fuel budget, roughly Wasm instructions.
    #[arg(long, help = format!("Fuel budget, roughly Wasm instructions [default: {}]", Limits::DEFAULT_FUEL))]
    fuel: Option<u64>,
    /// Linear memory limit in MiB.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096),
          help = format!("Linear memory limit in MiB [default: {}]", Limits::DEFAULT_MEMORY_BYTES >> 20))]
    memory_mb: Option<u64>,
    /// Wall-clock limit per invocation, in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..),
          help = format!("Wall-clock limit per invocation, in milliseconds [default: {}]", Limits::DEFAULT_TIMEOUT.as_millis()))]
    timeout_ms: Option<u64>,
    /// Emits (and invokes) allowed per invocation.
    #[arg(long, help = format!("Emits (and invokes) allowed per invocation [default: {}]", Limits::DEFAULT_MAX_EMITS))]
    max_emits: Option<usize>,
    /// Bytes per emitted payload.
    #[arg(long, help = format!("Bytes per emitted payload [default: {}]", Limits::DEFAULT_MAX_EMIT_BYTES))]
    max_emit_bytes: Option<usize>,
    /// Bytes per KV value.
    #[arg(long, help = format!("Bytes per KV value [default: {}]", Limits::DEFAULT_MAX_KV_VALUE_BYTES))]
    max_kv_value_bytes: Option<usize>,
}

impl LimitArgs {
    /// `base` with every limit given on the command line in its place.
    fn over(&self, base: Limits) -> Limits {
        Limits {
            fuel: self.fuel.unwrap_or(base.fuel),
            memory_bytes: self
                .memory_mb
                .map_or(base.memory_bytes, |mb| (mb as usize) << 20),
            timeout: self.timeout_ms.map_or(base.timeout, Duration::from_millis),
            max_emits: self.max_emits.unwrap_or(base.max_emits),
            max_emit_bytes: self.max_emit_bytes.unwrap_or(base.max_emit_bytes),
            max_kv_value_bytes: self.max_kv_value_bytes.unwrap_or(base.max_kv_value_bytes),
            ..base
        }
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// The gateway config `--gateway-config` (or `--config`) names, if any.
/// `--config KEY=VALUE` was once how a config value was set: that is `--set`.
fn gateway_config(given: &[PathBuf]) -> anyhow::Result<Option<PathBuf>> {
    for path in given {
        let text = path.to_string_lossy();
        if text.contains('=') && !path.exists() {
            anyhow::bail!(
                "--config {text}: a config value is set with `--set {text}` (--config names a gateway config file, as --gateway-config does)"
            );
        }
    }
    match given {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        _ => anyhow::bail!("one --gateway-config (or --config) at most"),
    }
}

pub fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    use wasmgate::files::{read_limited, read_text, MAX_EVENT_FILE_BYTES, MAX_MODULE_BYTES};
    let config_path = gateway_config(&args.gateway_config)?;
    let text = read_text(&args.event, MAX_EVENT_FILE_BYTES, "event file")
        .with_context(|| format!("cannot read the event file {}", args.event.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", args.event.display()))?;
    let (event, letter_function) = OwnedEvent::from_event_file(&json)
        .with_context(|| format!("{} is not a valid event", args.event.display()))?;
    #[cfg(unix)]
    if let Some(name) = &args.live {
        drop(event);
        let path = config_path.unwrap_or_else(|| PathBuf::from("gateway.toml"));
        return live(&path, name, json, &args);
    }
    let (mut spec, wasm_path, configured) = match &config_path {
        Some(path) => {
            let config = match load_config_for(path, args.board.as_deref(), Needs::SECRETS) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            let names = || {
                config
                    .functions
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let name = match (
                &args.function,
                &letter_function,
                config.functions.as_slice(),
            ) {
                (Some(name), _, _) => name.clone(),
                (None, Some(name), _) => name.clone(),
                (None, None, [only]) => only.name.clone(),
                (None, None, _) => anyhow::bail!(
                    "say which function of {} to run: --function NAME (one of: {})",
                    path.display(),
                    names()
                ),
            };
            let Some((_, f)) = config.function(&name) else {
                anyhow::bail!(
                    "no function named {name:?} in {} (it has: {})",
                    path.display(),
                    names()
                );
            };
            let wasm = args.wasm.clone().unwrap_or_else(|| f.wasm.clone());
            let mut source = path.display().to_string();
            if let Some(board) = &args.board {
                source += &format!(" --board {board}");
            }
            (wasmgate::pipeline::function_spec(f), wasm, Some(source))
        }
        None => {
            let name = args
                .name
                .clone()
                .or(letter_function)
                .unwrap_or_else(|| "local".to_owned());
            let Some(wasm) = args.wasm.clone() else {
                anyhow::bail!("name the module to run, or a function with --gateway-config FILE");
            };
            (FunctionSpec::permissive(name), wasm, None)
        }
    };
    spec.limits = args.limits.over(spec.limits);
    spec.config.extend(args.set.iter().cloned());
    let wasm = read_limited(&wasm_path, MAX_MODULE_BYTES, "module")
        .with_context(|| format!("cannot read the module {}", wasm_path.display()))?;
    let mut run = wasmgate::local::invoke(spec, &wasm, &event, args.repeat)?;
    run.configured = configured;
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

/// `wasmgate invoke --live NAME`: the running gateway runs its live version
/// (management socket) and answers with what it did.
#[cfg(unix)]
fn live(
    config: &std::path::Path,
    name: &str,
    event: serde_json::Value,
    args: &InvokeArgs,
) -> anyhow::Result<ExitCode> {
    let config = match load_config_for(config, None, Needs::DATABASE) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let body = serde_json::json!({ "event": event, "dry_run": args.dry_run }).to_string();
    let answer = wasmgate::control::client::request(
        &config.data_dir,
        "POST",
        &format!("/v1/functions/{name}/invoke"),
        &[("content-type", "application/json")],
        body.as_bytes(),
    )?;
    if !(200..300).contains(&answer.status) {
        let error = answer.body["error"].as_str().unwrap_or("refused");
        eprintln!("refused ({}): {error}", answer.status);
        return Ok(ExitCode::from(1));
    }
    let body = &answer.body;
    let ok = body["invocation"]["outcome"]["ok"].as_bool() == Some(true);
    if args.json {
        println!("{body:#}");
    } else {
        let what = match (ok, body["committed"].as_bool() == Some(true), args.dry_run) {
            (true, _, true) => "ok, dry run: nothing committed",
            (true, true, _) => "ok, committed",
            (true, false, _) => "ok, but the commit did not happen (the gateway is stopping?)",
            (false, _, _) => "failed: nothing committed",
        };
        println!(
            "{name} version {} on the running gateway (request {}): {what}",
            body["version"].as_str().unwrap_or("?"),
            body["request_id"]
        );
        println!("{:#}", body["invocation"]);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

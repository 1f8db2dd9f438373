//! `wasmgate deploy`, `versions`, `alias`, `rollback`: the running gateway's
//! function registry, through its management socket (`data_dir/
//! control.sock`). Nothing here writes the database: the gateway does.

use crate::{load_config_for, Needs};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use wasmgate::control::client::{request, Answer};

/// Where the running gateway is.
#[derive(Debug, Args)]
pub struct Target {
    /// The gateway config (TOML): its data_dir holds the management socket.
    #[arg(long, short, default_value = "gateway.toml", global = true)]
    config: PathBuf,
    /// Print the gateway's answer as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The function, as configured.
    name: String,
    /// The module to run as its new live version, or a signed bundle of
    /// it (`wasmgate bundle`), which rolls out as it says unless
    /// --strategy is given.
    wasm: PathBuf,
    /// How it takes the events: `all-at-once` (the default), `canary<P>-<M>m`
    /// (P% of the events for M minutes, then all: `canary10-5m`),
    /// `linear<P>-every-<M>m` (P% more every M minutes); seconds as `30s`.
    /// CodeDeploy's names work too: `Canary10Percent5Minutes`,
    /// `Linear10PercentEvery1Minute`. During the rollout the new version is
    /// rolled back when its failure rate is over --max-error-rate (and over
    /// the old version's), or its p99 over --max-p99-ms.
    #[arg(long, value_name = "STRATEGY")]
    strategy: Option<String>,
    /// With --strategy: the failed share of the new version's invocations
    /// that rolls it back (judged once it ran 5 times).
    #[arg(
        long,
        value_name = "SHARE",
        default_value_t = 0.05,
        requires = "strategy"
    )]
    max_error_rate: f64,
    /// With --strategy: the p99 invocation time, in milliseconds, that
    /// rolls the new version back. None by default.
    #[arg(long, value_name = "MS", requires = "strategy")]
    max_p99_ms: Option<u64>,
    /// With --strategy: a configured function run (live, committed) with
    /// an `invoke` event naming the rollout before the new version takes
    /// any event; its failure stops the rollout (CodeDeploy's
    /// BeforeAllowTraffic).
    #[arg(long, value_name = "FUNCTION", requires = "strategy")]
    pre_traffic_hook: Option<String>,
    /// With --strategy: the same once the new version takes every event;
    /// its failure rolls back (AfterAllowTraffic).
    #[arg(long, value_name = "FUNCTION", requires = "strategy")]
    post_traffic_hook: Option<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub struct DeploymentsArgs {
    /// One function's rollouts only.
    name: Option<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub struct VersionsArgs {
    /// The function, as configured.
    name: String,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub struct AliasArgs {
    /// The function, as configured.
    name: String,
    /// The alias to move; only `live` today.
    alias: String,
    /// The version to point it at (`wasmgate versions NAME` lists them).
    #[arg(value_name = "VERSION")]
    to: String,
    /// A canary: another version and the share of events it takes,
    /// `--weight 9345c3d3da67=0.1` (0 to 1, exclusive). Each event's version
    /// is picked by its dedup id, else its request id, so its retries run
    /// on one version.
    #[arg(long, value_name = "VERSION=SHARE")]
    weight: Option<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The function, as configured.
    name: String,
    #[command(flatten)]
    target: Target,
}

/// Exit code for a request the gateway refused.
const REFUSED: u8 = 1;

fn data_dir(target: &Target) -> Result<PathBuf, ExitCode> {
    load_config_for(&target.config, None, Needs::DATABASE).map(|c| c.data_dir)
}

/// Prints the answer (as JSON, or as `describe` says) and picks the exit code.
fn finish(
    answer: Answer,
    json: bool,
    describe: impl FnOnce(&serde_json::Value) -> String,
) -> ExitCode {
    if (200..300).contains(&answer.status) {
        if json {
            println!("{:#}", answer.body);
        } else {
            print!("{}", describe(&answer.body));
        }
        ExitCode::SUCCESS
    } else {
        let error = answer.body["error"].as_str().unwrap_or("refused");
        if json {
            println!("{:#}", answer.body);
        }
        eprintln!("refused ({}): {error}", answer.status);
        ExitCode::from(REFUSED)
    }
}

fn moved(body: &serde_json::Value) -> String {
    if body["again"].as_bool() == Some(true) {
        return format!(
            "{}: bundle {} taken already (live {}); nothing changed\n",
            body["function"].as_str().unwrap_or("?"),
            body["bundle"]["sequence"].as_u64().unwrap_or(0),
            body["to"].as_str().unwrap_or("?"),
        );
    }
    let canary = match body["other"].as_array().map(Vec::as_slice) {
        Some([other, share]) => format!(
            ", {} of the events to {}",
            share.as_f64().unwrap_or(0.0),
            other.as_str().unwrap_or("?")
        ),
        _ => String::new(),
    };
    format!(
        "{}: live {} -> {}{canary} ({} instance(s) warm before the move)\n",
        body["function"].as_str().unwrap_or("?"),
        body["from"].as_str().unwrap_or("?"),
        body["to"].as_str().unwrap_or("?"),
        body["warm"].as_u64().unwrap_or(0),
    )
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let dir = match data_dir(&args.target) {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    // A bundle is its module and a manifest of a few KB.
    let wasm = wasmgate::files::read_limited(
        &args.wasm,
        wasmgate::files::MAX_MODULE_BYTES + (1 << 20),
        "module",
    )
    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.wasm.display()))?;
    let bundled_rollout = wasmgate::bundle::is_bundle(&wasm)
        && wasmgate::bundle::Bundle::parse(&wasm).is_ok_and(|b| b.manifest.rollout.is_some());
    let source = args.wasm.display().to_string();
    let mut path = format!("/v1/functions/{}/deploy", args.name);
    if let Some(strategy) = &args.strategy {
        if let Err(e) = wasmgate::rollout::Strategy::parse(strategy) {
            eprintln!("--strategy: {e}");
            return Ok(ExitCode::from(2));
        }
        path += &format!(
            "?strategy={strategy}&max_error_rate={}",
            args.max_error_rate
        );
        if let Some(ms) = args.max_p99_ms {
            path += &format!("&max_p99_ms={ms}");
        }
        for (key, hook) in [
            ("pre_traffic_hook", &args.pre_traffic_hook),
            ("post_traffic_hook", &args.post_traffic_hook),
        ] {
            if let Some(hook) = hook {
                path += &format!("&{key}={hook}");
            }
        }
    }
    let rollout = args.strategy.is_some() || bundled_rollout;
    let answer = request(
        &dir,
        "POST",
        &path,
        &[
            ("x-wasmgate-source", &source),
            ("content-type", "application/wasm"),
        ],
        &wasm,
    )?;
    if rollout {
        return Ok(finish(answer, args.target.json, started));
    }
    Ok(finish(answer, args.target.json, moved))
}

fn started(body: &serde_json::Value) -> String {
    if body["again"].as_bool() == Some(true) {
        return moved(body);
    }
    format!(
        "{}: rollout {} of {} -> {} started ({} of the events to the new version); `wasmgate deployments {}` follows it\n",
        body["function"].as_str().unwrap_or("?"),
        body["strategy"].as_str().unwrap_or("?"),
        body["from"].as_str().unwrap_or("?"),
        body["to"].as_str().unwrap_or("?"),
        body["share"].as_f64().unwrap_or(0.0),
        body["function"].as_str().unwrap_or("?"),
    )
}

pub fn deployments(args: DeploymentsArgs) -> anyhow::Result<ExitCode> {
    let dir = match data_dir(&args.target) {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    let path = match &args.name {
        Some(name) => format!("/v1/deployments?function={name}"),
        None => "/v1/deployments".to_owned(),
    };
    let answer = request(&dir, "GET", &path, &[], b"")?;
    Ok(finish(answer, args.target.json, |body| {
        let mut out = format!(
            "{:<4} {:<16} {:<14} {:<14} {:<22} {:<12} {:>5}  {:<20} REASON\n",
            "ID", "FUNCTION", "FROM", "TO", "STRATEGY", "STATE", "SHARE", "STARTED (UTC)"
        );
        for d in body["deployments"].as_array().into_iter().flatten() {
            out += &format!(
                "{:<4} {:<16} {:<14} {:<14} {:<22} {:<12} {:>5.2}  {:<20} {}\n",
                d["id"].as_i64().unwrap_or(0),
                d["function"].as_str().unwrap_or("?"),
                d["from_version"].as_str().unwrap_or("?"),
                d["to_version"].as_str().unwrap_or("?"),
                d["strategy"].as_str().unwrap_or("?"),
                d["state"].as_str().unwrap_or("?"),
                d["share"].as_f64().unwrap_or(0.0),
                wasmgate::dlq::utc(d["started_ms"].as_i64().unwrap_or(0)),
                d["reason"].as_str().unwrap_or(""),
            );
        }
        out
    }))
}

pub fn versions(args: VersionsArgs) -> anyhow::Result<ExitCode> {
    let dir = match data_dir(&args.target) {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    let functions = request(&dir, "GET", "/v1/functions", &[], b"")?;
    let live = functions.body.as_array().and_then(|all| {
        all.iter()
            .find(|f| f["name"] == args.name.as_str())
            .map(|f| (f["live"].clone(), f["alias"]["previous"].clone()))
    });
    let answer = request(
        &dir,
        "GET",
        &format!("/v1/functions/{}/versions", args.name),
        &[],
        b"",
    )?;
    Ok(finish(answer, args.target.json, |body| {
        let (live, previous) = live.unwrap_or_default();
        let mut out = format!(
            "{:<14} {:>9}  {:<20} {:<10} {:<16} SOURCE\n",
            "VERSION", "BYTES", "PUBLISHED (UTC)", "ALIAS", "BY"
        );
        for v in body.as_array().into_iter().flatten() {
            let version = v["version"].as_str().unwrap_or("?");
            let alias = if v["version"] == live {
                "live"
            } else if v["version"] == previous {
                "(previous)"
            } else {
                ""
            };
            out += &format!(
                "{version:<14} {:>9}  {:<20} {alias:<10} {:<16} {}\n",
                v["size"].as_u64().unwrap_or(0),
                wasmgate::dlq::utc(v["published_ms"].as_i64().unwrap_or(0)),
                v["published_by"].as_str().unwrap_or(""),
                v["source"].as_str().unwrap_or(""),
            );
        }
        out
    }))
}

pub fn alias(args: AliasArgs) -> anyhow::Result<ExitCode> {
    if args.alias != wasmgate::registry::LIVE {
        eprintln!("only the `live` alias exists (triggers run it); weighted and named aliases are not built yet");
        return Ok(ExitCode::from(2));
    }
    let dir = match data_dir(&args.target) {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    let mut body = serde_json::json!({ "version": args.to });
    if let Some(weight) = &args.weight {
        let parsed = weight
            .split_once('=')
            .and_then(|(v, w)| Some((v.to_owned(), w.parse::<f64>().ok()?)));
        let Some((other, share)) = parsed else {
            eprintln!("--weight takes VERSION=SHARE, as --weight 9345c3d3da67=0.1");
            return Ok(ExitCode::from(2));
        };
        body["other"] = other.into();
        body["weight"] = share.into();
    }
    let body = body.to_string();
    let answer = request(
        &dir,
        "PUT",
        &format!("/v1/functions/{}/aliases/live", args.name),
        &[("content-type", "application/json")],
        body.as_bytes(),
    )?;
    Ok(finish(answer, args.target.json, moved))
}

pub fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let dir = match data_dir(&args.target) {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    let answer = request(
        &dir,
        "POST",
        &format!("/v1/functions/{}/rollback", args.name),
        &[],
        b"",
    )?;
    Ok(finish(answer, args.target.json, moved))
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The config file to run (TOML): checked here first, then applied by
    /// the gateway that runs on its data_dir, as a live diff.
    #[arg(default_value = "gateway.toml", value_name = "FILE")]
    file: PathBuf,
    /// Print the plan; change nothing (modules are still checked).
    #[arg(long)]
    dry_run: bool,
    /// The board the gateway runs with (`wasmgate boards`), for this
    /// check; the gateway applies its own.
    #[arg(long)]
    board: Option<String>,
    /// Print the gateway's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// `wasmgate apply`: the file is checked here (every problem, with its
/// line), then the gateway loads it itself, with its own board, and plans
/// it against what runs.
pub fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config_for(&args.file, args.board.as_deref(), Needs::EVERYTHING) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let path = std::path::absolute(&args.file).unwrap_or_else(|_| args.file.clone());
    let Some(path) = path.to_str() else {
        eprintln!(
            "{}: the gateway takes config paths in UTF-8 only",
            path.display()
        );
        return Ok(ExitCode::from(REFUSED));
    };
    let body = serde_json::json!({ "path": path, "dry_run": args.dry_run }).to_string();
    let answer = match request(
        &config.data_dir,
        "POST",
        "/v1/apply",
        &[("content-type", "application/json")],
        body.as_bytes(),
    ) {
        Ok(answer) => answer,
        Err(e @ wasmgate::control::client::ClientError::NotRunning(_)) => {
            eprintln!(
                "{e}; if this file changes data_dir, that needs a restart of the gateway anyway"
            );
            return Ok(ExitCode::from(REFUSED));
        }
        Err(e) => return Err(e.into()),
    };
    let lines = |body: &serde_json::Value| -> String {
        body["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| Some(format!("{}\n", l.as_str()?)))
            .collect()
    };
    if !(200..300).contains(&answer.status) && !args.json {
        // The plan, then why it was refused.
        eprint!("{}", lines(&answer.body));
        for problem in answer.body["problems"].as_array().into_iter().flatten() {
            eprintln!("{}", problem.as_str().unwrap_or(""));
        }
    }
    let dry_run = args.dry_run;
    Ok(finish(answer, args.json, |body| {
        let mut out = lines(body);
        if dry_run {
            out.push_str("(dry run: nothing applied)\n");
        }
        out
    }))
}

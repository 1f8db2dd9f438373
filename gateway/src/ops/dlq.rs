//! `wasmgate dlq`: the dead-letter queue in the gateway's database.

use crate::{load_config_for, Needs, EXIT_FAILED};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use wasmgate::config::Config;

pub const DLQ_HELP: &str = "\
An event lands in the dead-letter queue when its function failed every attempt
([functions.retry]); it is kept in the gateway's database with the function,
the version, the event's bytes and every attempt's error, and its message is
acknowledged only once it is kept. These commands are safe while the gateway
runs.

While the gateway runs, these go through it (its management socket): a replay
runs the function's live version there, with the limits, grants and config
values it runs with, or the module given by --wasm FILE. When no gateway runs,
they work on the database here: a replay deploys the function as the config
describes it, from the config's module or from --wasm FILE. Either way it runs
on the stored event with the next attempt number. On success its effects are committed to the gateway's database exactly
as the pipeline commits them (KV writes, and emits into the durable outbox),
in one transaction that also deletes the dead letter; a running gateway sends
those emits within a second, a stopped one when it starts. On failure the
attempt is added to the dead letter, which stays. wasmgate keeps no copies of
old modules beyond its kept versions: name a version by its file with --wasm;
--version checks that the module about to run is the version you mean.

Examples:
  wasmgate dlq list
  wasmgate dlq show 12 > letter.json      # `wasmgate invoke --event letter.json` runs it
  wasmgate dlq show 12 --event > e.json   # just the event
  wasmgate dlq replay 12 --wasm fixed.wasm
  wasmgate dlq purge --function vending";

#[derive(Debug, Args)]
pub struct DlqArgs {
    /// The gateway config; its data_dir holds the database.
    #[arg(long, short, default_value = "gateway.toml", global = true)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub op: DlqOp,
}

#[derive(Debug, Subcommand)]
pub enum DlqOp {
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
    /// `wasmgate invoke --event` takes this document as it is.
    Show {
        /// The dead letter's id, as `dlq list` shows it.
        id: i64,
        /// Print only the event, in `wasmgate invoke`'s event format.
        #[arg(long)]
        event: bool,
    },
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
        /// Dead letters to delete, by id.
        ids: Vec<i64>,
        /// Delete every dead letter of this function.
        #[arg(long, conflicts_with = "ids")]
        function: Option<String>,
        /// Delete every dead letter of every function.
        #[arg(long, conflicts_with_all = ["ids", "function"])]
        all: bool,
    },
}

pub fn dlq(args: DlqArgs) -> anyhow::Result<ExitCode> {
    use wasmgate::store::Purge;
    // Only a replay runs a function (its secrets, its module); the rest
    // need only the database.
    let needs = match args.op {
        DlqOp::Replay { .. } => Needs::SECRETS,
        _ => Needs::DATABASE,
    };
    let config = match load_config_for(&args.config, None, needs) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    if super::daemon_runs(&config.data_dir) {
        return through_daemon(&config.data_dir, args.op);
    }
    let store = super::open_store(&config)?;
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
            DlqOp::Show { id, event } => show(id, store.dead_letter_by_id(id)?, event)?,
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

/// `dlq show`: the letter as JSON, or only its event.
fn show(
    id: i64,
    letter: Option<wasmgate::store::DeadLetter>,
    event: bool,
) -> anyhow::Result<ExitCode> {
    Ok(match letter {
        Some(letter) if event => {
            let decoded = wasmgate::dlq::decode_event(&letter.event).with_context(|| {
                format!("dead letter {id}: its event cannot be decoded (stored by another version of wasmgate?)")
            })?;
            println!("{:#}", wasmgate::dlq::event_json(&decoded));
            ExitCode::SUCCESS
        }
        Some(letter) => {
            println!("{:#}", wasmgate::dlq::to_json(&letter));
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("no dead letter {id} (`wasmgate dlq list` shows them)");
            ExitCode::from(EXIT_FAILED)
        }
    })
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
            eprintln!(
                "  [{:?}] {}",
                line.level,
                wasmgate::text::escape(&line.message)
            );
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

/// The same operations through the running gateway's management API.
fn through_daemon(dir: &std::path::Path, op: DlqOp) -> anyhow::Result<ExitCode> {
    use wasmgate::control::client::request;
    use wasmgate::store::DeadLetter;
    let refused = |answer: &wasmgate::control::client::Answer| {
        anyhow::anyhow!(
            "the gateway refused ({}): {}",
            answer.status,
            answer.body["error"].as_str().unwrap_or("?")
        )
    };
    let letter = |id: i64| -> anyhow::Result<Option<DeadLetter>> {
        let answer = request(dir, "GET", &format!("/v1/dead-letters/{id}"), &[], b"")?;
        match answer.status {
            200 => Ok(Some(serde_json::from_value(answer.body)?)),
            404 => Ok(None),
            _ => Err(refused(&answer)),
        }
    };
    Ok(match op {
        DlqOp::List { function, limit } => {
            let mut path = format!("/v1/dead-letters?limit={limit}");
            if let Some(f) = &function {
                path.push_str(&format!("&function={}", super::percent(f, false)));
            }
            let answer = request(dir, "GET", &path, &[], b"")?;
            if answer.status != 200 {
                return Err(refused(&answer));
            }
            let letters: Vec<DeadLetter> = serde_json::from_value(answer.body["letters"].clone())?;
            let total = answer.body["total"].as_u64().unwrap_or(0);
            print!("{}", wasmgate::dlq::render_list(&letters));
            if total as usize > letters.len() {
                eprintln!("({} of {total} shown; --limit shows more)", letters.len());
            }
            ExitCode::SUCCESS
        }
        DlqOp::Show { id, event } => show(id, letter(id)?, event)?,
        DlqOp::Replay {
            ids,
            function,
            wasm,
            version,
        } => {
            let ids = match (ids.is_empty(), &function) {
                (false, _) => ids,
                (true, Some(f)) => {
                    let path = format!(
                        "/v1/dead-letters?limit=1000000&function={}",
                        super::percent(f, false)
                    );
                    let answer = request(dir, "GET", &path, &[], b"")?;
                    if answer.status != 200 {
                        return Err(refused(&answer));
                    }
                    let letters: Vec<DeadLetter> =
                        serde_json::from_value(answer.body["letters"].clone())?;
                    letters.iter().map(|l| l.id).collect()
                }
                (true, None) => {
                    anyhow::bail!("say what to replay: dead letter ids, or --function NAME")
                }
            };
            if ids.is_empty() {
                println!("no dead letters to replay");
                return Ok(ExitCode::SUCCESS);
            }
            let module = match &wasm {
                Some(path) => {
                    wasmgate::files::read_limited(path, wasmgate::files::MAX_MODULE_BYTES, "module")
                        .with_context(|| format!("cannot read the module {}", path.display()))?
                }
                None => Vec::new(),
            };
            let mut headers = vec![("content-type", "application/wasm")];
            if let Some(v) = &version {
                headers.push(("x-wasmgate-version", v.as_str()));
            }
            let mut failed = 0;
            for id in ids {
                let answer = request(
                    dir,
                    "POST",
                    &format!("/v1/dead-letters/{id}/replay"),
                    &headers,
                    &module,
                )?;
                let body = &answer.body;
                if answer.status == 404 {
                    anyhow::bail!("no dead letter {id} (`wasmgate dlq list` shows them)");
                }
                if answer.status != 200 {
                    return Err(refused(&answer));
                }
                for line in body["logs"].as_array().into_iter().flatten() {
                    eprintln!(
                        "  [{}] {}",
                        line["level"].as_str().unwrap_or("?"),
                        line["message"].as_str().unwrap_or("")
                    );
                }
                let n = |k: &str| body[k].as_u64().unwrap_or(0);
                let plural = |n: u64| if n == 1 { "" } else { "s" };
                if body["requeued"] == true {
                    println!(
                        "dead letter {id}: undeliverable message to {} put back in the outbox; removed from the queue",
                        wasmgate::text::escape(body["topic"].as_str().unwrap_or("?"))
                    );
                } else if body["ok"] == true {
                    println!(
                        "dead letter {id}: replayed on {} version {} (attempt {}): ok, {} emit{}, {} KV write{}; removed from the queue",
                        body["function"].as_str().unwrap_or("?"),
                        body["version"].as_str().unwrap_or("?"),
                        n("attempt"),
                        n("emits"),
                        plural(n("emits")),
                        n("kv_writes"),
                        plural(n("kv_writes")),
                    );
                } else {
                    failed += 1;
                    println!(
                        "dead letter {id}: attempt {} on version {} failed: {}; it stays in the queue",
                        n("attempt"),
                        body["version"].as_str().unwrap_or("?"),
                        body["error"].as_str().unwrap_or("?")
                    );
                }
            }
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
        DlqOp::Purge { ids, function, all } => {
            let body = match (ids.is_empty(), function, all) {
                (false, _, _) => serde_json::json!({ "ids": ids }),
                (true, Some(f), _) => serde_json::json!({ "function": f }),
                (true, None, true) => serde_json::json!({ "all": true }),
                (true, None, false) => {
                    anyhow::bail!("say what to purge: dead letter ids, --function NAME, or --all")
                }
            };
            let answer = request(
                dir,
                "POST",
                "/v1/dead-letters/purge",
                &[("content-type", "application/json")],
                body.to_string().as_bytes(),
            )?;
            if answer.status != 200 {
                return Err(refused(&answer));
            }
            let n = answer.body["purged"].as_u64().unwrap_or(0);
            println!("purged {n} dead letter{}", if n == 1 { "" } else { "s" });
            ExitCode::SUCCESS
        }
    })
}

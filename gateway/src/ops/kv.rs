//! `wasmgate kv`: read and change functions' KV state in the gateway's database.

use crate::{load_config_for, Needs, EXIT_FAILED};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use wasmgate::runtime::{Effects, KvWrite};
use wasmgate::store::KvEntry;

#[derive(Debug, Args)]
pub struct KvArgs {
    /// The gateway config; its data_dir holds the database. Only the config
    /// is read: the modules it names need not exist here.
    #[arg(long, short, default_value = "gateway.toml", global = true)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub op: KvOp,
}

#[derive(Debug, Subcommand)]
pub enum KvOp {
    /// Print one value: text as text, a counter (written by `kv_increment`)
    /// as its number, anything else as hex bytes. Exit code 1 if there is no
    /// such key.
    Get {
        /// The function (its name in the config), whose namespace holds the key.
        function: String,
        /// The key, as the function names it (e.g. `vm-17/vends`).
        key: String,
        /// Write the value's bytes to stdout as they are, and nothing else.
        #[arg(long, conflicts_with = "json")]
        raw: bool,
        /// Print a JSON object: key, bytes (hex), text (if UTF-8), counter
        /// (the number, if an increment wrote it).
        #[arg(long)]
        json: bool,
    },
    /// Print every key and value of a function, as `kv get` shows them.
    List {
        /// The function (its name in the config).
        function: String,
        /// Print a JSON array of objects, as `kv get --json` prints one.
        #[arg(long)]
        json: bool,
    },
    /// Set a value (as text, or with --counter as a number functions can increment).
    Put {
        /// The function (its name in the config), whose namespace holds the key.
        function: String,
        /// The key to set.
        key: String,
        /// The value: stored as its UTF-8 bytes, or with --counter as a
        /// whole number (8 bytes, little-endian).
        value: String,
        /// Store VALUE as a counter that `kv_increment` adds to.
        #[arg(long)]
        counter: bool,
    },
    /// Delete a key. Exit code 1 if there was no such key.
    Delete {
        /// The function (its name in the config), whose namespace holds the key.
        function: String,
        /// The key to delete.
        key: String,
    },
}

pub fn kv(args: KvArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config_for(&args.config, None, Needs::DATABASE) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let function = match &args.op {
        KvOp::Get { function, .. }
        | KvOp::List { function, .. }
        | KvOp::Put { function, .. }
        | KvOp::Delete { function, .. } => function.clone(),
    };
    if config.function(&function).is_none() {
        anyhow::bail!(
            "no function named {function:?} in {}",
            args.config.display()
        );
    }
    let store = super::open_store(&config)?;
    let result = (|| -> anyhow::Result<ExitCode> {
        Ok(match args.op {
            KvOp::Get { key, raw, json, .. } => match store.kv_entry(&function, &key)? {
                Some(entry) if raw => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&entry.value)?;
                    stdout.flush()?;
                    ExitCode::SUCCESS
                }
                Some(entry) if json => {
                    println!("{:#}", entry_json(&entry));
                    ExitCode::SUCCESS
                }
                Some(entry) => {
                    println!("{}", wasmgate::local::show_kv(&entry.value, entry.counter));
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("{function}: no key {key:?}");
                    ExitCode::from(EXIT_FAILED)
                }
            },
            KvOp::List { json, .. } => {
                let entries = store.kv_list(&function)?;
                if json {
                    let all: Vec<_> = entries.iter().map(entry_json).collect();
                    println!("{:#}", serde_json::Value::Array(all));
                } else {
                    for entry in &entries {
                        println!(
                            "{} = {}",
                            wasmgate::text::escape(&entry.key),
                            wasmgate::local::show_kv(&entry.value, entry.counter)
                        );
                    }
                }
                if entries.is_empty() {
                    eprintln!("{function}: no keys");
                }
                ExitCode::SUCCESS
            }
            KvOp::Put {
                key,
                value,
                counter,
                ..
            } => {
                if counter {
                    let n: i64 = value
                        .parse()
                        .with_context(|| format!("{value:?} is not a whole number"))?;
                    // An increment is what marks a counter (the store
                    // records which write came last), so: delete, then add.
                    // An increment by a running function in between is
                    // added to N.
                    commit(&store, &function, &key, KvWrite::Delete)?;
                    commit(&store, &function, &key, KvWrite::Add(n))?;
                } else {
                    commit(&store, &function, &key, KvWrite::Put(value.into_bytes()))?;
                }
                ExitCode::SUCCESS
            }
            KvOp::Delete { key, .. } => {
                if store.kv_entry(&function, &key)?.is_none() {
                    eprintln!("{function}: no key {key:?}; nothing deleted");
                    return Ok(ExitCode::from(EXIT_FAILED));
                }
                commit(&store, &function, &key, KvWrite::Delete)?;
                ExitCode::SUCCESS
            }
        })
    })();
    store.close();
    result
}

fn commit(
    store: &wasmgate::store::Store,
    function: &str,
    key: &str,
    write: KvWrite,
) -> anyhow::Result<()> {
    let mut effects = Effects::default();
    effects.kv.insert(key.to_owned(), write);
    store.commit_now(function, effects)?;
    Ok(())
}

/// `kv get --json`: the bytes always; the text and the number when they are what it is.
fn entry_json(entry: &KvEntry) -> serde_json::Value {
    let hex: String = entry.value.iter().map(|b| format!("{b:02x}")).collect();
    let counter = match (entry.counter, <[u8; 8]>::try_from(entry.value.as_slice())) {
        (Some(true), Ok(bytes)) => Some(i64::from_le_bytes(bytes)),
        _ => None,
    };
    json!({
        "key": entry.key,
        "bytes": hex,
        "text": std::str::from_utf8(&entry.value).ok(),
        "counter": counter,
    })
}

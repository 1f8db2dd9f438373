//! `wasmgate kv`: read and change functions' KV state in the gateway's database.

use crate::{load_config, EXIT_FAILED};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct KvArgs {
    /// The gateway config; its data_dir holds the database.
    #[arg(long, short, default_value = "gateway.toml", global = true)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub op: KvOp,
}

#[derive(Debug, Subcommand)]
pub enum KvOp {
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

pub fn kv(args: KvArgs) -> anyhow::Result<ExitCode> {
    use wasmgate::runtime::{Effects, KvRead, KvWrite};
    let config = match load_config(&args.config, None) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let store = super::open_store(&config)?;
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

//! `wasmgate kv`: read and change functions' KV state: through the running
//! gateway when one runs on the config's data_dir, else in its database.

use crate::{load_config_for, Needs, EXIT_FAILED};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use wasmgate::admin;
use wasmgate::control::client::request;
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

/// Where the KV is reached: the running gateway's API (its store writes,
/// so KV change triggers see the write), or, when none runs, the database.
enum Backend {
    Daemon(PathBuf),
    Offline(wasmgate::store::Store),
}

impl Backend {
    fn open(config: &wasmgate::config::Config) -> anyhow::Result<Backend> {
        if super::daemon_runs(&config.data_dir) {
            return Ok(Backend::Daemon(config.data_dir.clone()));
        }
        Ok(Backend::Offline(super::open_store(config)?))
    }

    /// GET/PUT/DELETE on the API; `Ok(None)` for a 404.
    fn ask(
        dir: &std::path::Path,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let answer = request(
            dir,
            method,
            path,
            &[("content-type", "application/json")],
            body,
        )?;
        match answer.status {
            200..=299 => Ok(Some(answer.body)),
            404 if answer.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("no key")) =>
            {
                Ok(None)
            }
            status => anyhow::bail!(
                "the gateway refused ({status}): {}",
                answer.body["error"].as_str().unwrap_or("?")
            ),
        }
    }

    fn get(&self, function: &str, key: &str) -> anyhow::Result<Option<serde_json::Value>> {
        match self {
            Backend::Daemon(dir) => Self::ask(dir, "GET", &kv_path(function, Some(key)), b""),
            Backend::Offline(store) => Ok(admin::kv_get(store, function, key)?),
        }
    }

    fn list(&self, function: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        match self {
            Backend::Daemon(dir) => Ok(Self::ask(dir, "GET", &kv_path(function, None), b"")?
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()),
            Backend::Offline(store) => Ok(admin::kv_list(store, function)?),
        }
    }

    fn put(&self, function: &str, key: &str, value: admin::KvValue) -> anyhow::Result<()> {
        match self {
            Backend::Daemon(dir) => {
                let body = match &value {
                    admin::KvValue::Text(text) => json!({ "text": text }),
                    admin::KvValue::Counter(n) => json!({ "counter": n }),
                };
                Self::ask(
                    dir,
                    "PUT",
                    &kv_path(function, Some(key)),
                    body.to_string().as_bytes(),
                )?;
                Ok(())
            }
            Backend::Offline(store) => Ok(admin::kv_put(store, function, key, value)?),
        }
    }

    fn delete(&self, function: &str, key: &str) -> anyhow::Result<bool> {
        match self {
            Backend::Daemon(dir) => {
                Ok(Self::ask(dir, "DELETE", &kv_path(function, Some(key)), b"")?.is_some())
            }
            Backend::Offline(store) => Ok(admin::kv_delete(store, function, key)?),
        }
    }

    fn close(self) {
        if let Backend::Offline(store) = self {
            store.close();
        }
    }
}

/// `/v1/kv/FUNCTION[/KEY]`, each byte outside the unreserved set (and `/`
/// in a key) percent-encoded.
fn kv_path(function: &str, key: Option<&str>) -> String {
    use super::percent;
    match key {
        None => format!("/v1/kv/{}", percent(function, false)),
        Some(key) => format!("/v1/kv/{}/{}", percent(function, false), percent(key, true)),
    }
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
    let backend = Backend::open(&config)?;
    let show = |entry: &serde_json::Value| -> anyhow::Result<KvEntry> {
        admin::entry_from_json(entry).context("the gateway's answer is not a KV entry")
    };
    let result = (|| -> anyhow::Result<ExitCode> {
        Ok(match args.op {
            KvOp::Get { key, raw, json, .. } => match backend.get(&function, &key)? {
                Some(entry) if raw => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&show(&entry)?.value)?;
                    stdout.flush()?;
                    ExitCode::SUCCESS
                }
                Some(entry) if json => {
                    println!("{entry:#}");
                    ExitCode::SUCCESS
                }
                Some(entry) => {
                    let entry = show(&entry)?;
                    println!("{}", wasmgate::local::show_kv(&entry.value, entry.counter));
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("{function}: no key {key:?}");
                    ExitCode::from(EXIT_FAILED)
                }
            },
            KvOp::List { json, .. } => {
                let entries = backend.list(&function)?;
                if json {
                    println!("{:#}", serde_json::Value::Array(entries.clone()));
                } else {
                    for entry in &entries {
                        let entry = show(entry)?;
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
                let value = if counter {
                    admin::KvValue::Counter(
                        value
                            .parse()
                            .with_context(|| format!("{value:?} is not a whole number"))?,
                    )
                } else {
                    admin::KvValue::Text(value)
                };
                backend.put(&function, &key, value)?;
                ExitCode::SUCCESS
            }
            KvOp::Delete { key, .. } => {
                if !backend.delete(&function, &key)? {
                    eprintln!("{function}: no key {key:?}; nothing deleted");
                    return Ok(ExitCode::from(EXIT_FAILED));
                }
                ExitCode::SUCCESS
            }
        })
    })();
    backend.close();
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_percent_encoded_in_the_path_and_keep_their_slashes() {
        assert_eq!(
            super::kv_path("vending", Some("vm-17/vends 2%")),
            "/v1/kv/vending/vm-17/vends%202%25"
        );
        assert_eq!(super::kv_path("a b", None), "/v1/kv/a%20b");
    }
}

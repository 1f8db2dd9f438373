//! The operator's and developer's commands: `kv`, `dlq`, `invoke`,
//! `functions`, `schedules`, `logs`, `cost`, `new`, `bundle`, and `deploy`, `versions`, `alias`,
//! `rollback`, `apply` (through the running gateway's management socket;
//! `kv`, `dlq` and `functions` too whenever a gateway runs).
//! Binary-private: each parses its arguments, calls the library, and prints.

pub mod bundle;
pub mod cost;
pub mod deploy;
pub mod dlq;
pub mod functions;
pub mod invoke;
pub mod kv;
pub mod logs;
pub mod new;
pub mod schedules;

use wasmgate::config::Config;

/// Opens the database of the config's data_dir, which must exist, for an
/// operator's command (`kv`, `dlq`): the gateway may be running beside it.
pub fn open_store(config: &Config) -> anyhow::Result<wasmgate::store::Store> {
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

/// Whether a gateway answers on this data_dir's management socket: then
/// the operators' commands go through it, not beside it to the database.
pub fn daemon_runs(data_dir: &std::path::Path) -> bool {
    std::os::unix::net::UnixStream::connect(data_dir.join(wasmgate::control::SOCKET)).is_ok()
}

/// `text` for a URL's path or query: each byte outside the unreserved set
/// percent-encoded (but `/` when `keep_slash`: a KV key's slashes stay).
pub fn percent(text: &str, keep_slash: bool) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b'/' if keep_slash => "/".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

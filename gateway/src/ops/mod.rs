//! The operator's and developer's commands: `kv`, `dlq`, `invoke`,
//! `functions`, `schedules`, `new`, and `deploy`, `versions`, `alias`,
//! `rollback` (through the running gateway's management socket).
//! Binary-private: each parses its arguments, calls the library, and prints.

#[cfg(unix)]
pub mod deploy;
pub mod dlq;
pub mod functions;
pub mod invoke;
pub mod kv;
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

//! Operators' KV and dead-letter operations, one implementation for both
//! ways they run: through the running gateway's management API (its store,
//! its store thread: KV change streams see the write, nothing else writes
//! the database beside the daemon), and by the CLI on the database itself
//! when no gateway runs. Both speak the JSON below, so the CLI prints one
//! way whichever answered.

use crate::runtime::{Effects, FunctionSpec, KvWrite};
use crate::store::{DeadLetter, KvEntry, Purge, Store, StoreError};
use serde_json::{json, Value};

/// A value an operator writes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvValue {
    /// Stored as its UTF-8 bytes.
    Text(String),
    /// A counter `kv_increment` adds to (8 bytes, little-endian).
    Counter(i64),
}

/// An entry as JSON: the bytes always (hex); the text and the number when
/// they are what it is; which kind of write came last.
pub fn entry_json(entry: &KvEntry) -> Value {
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
        "last_write": entry.counter.map(|c| if c { "increment" } else { "put" }),
    })
}

/// [`entry_json`] read back.
pub fn entry_from_json(value: &Value) -> Option<KvEntry> {
    let hex = value["bytes"].as_str()?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(KvEntry {
        key: value["key"].as_str()?.to_owned(),
        value: bytes,
        counter: match value["last_write"].as_str() {
            Some("increment") => Some(true),
            Some("put") => Some(false),
            _ => None,
        },
    })
}

pub fn kv_get(store: &Store, function: &str, key: &str) -> Result<Option<Value>, StoreError> {
    Ok(store.kv_entry(function, key)?.as_ref().map(entry_json))
}

pub fn kv_list(store: &Store, function: &str) -> Result<Vec<Value>, StoreError> {
    Ok(store.kv_list(function)?.iter().map(entry_json).collect())
}

/// Writes a value, committed as a function's writes are.
pub fn kv_put(store: &Store, function: &str, key: &str, value: KvValue) -> Result<(), StoreError> {
    match value {
        KvValue::Text(text) => commit(store, function, key, KvWrite::Put(text.into_bytes())),
        KvValue::Counter(n) => {
            // An increment is what marks a counter (the store records which
            // write came last), so: delete, then add. An increment by a
            // running function in between is added to N.
            commit(store, function, key, KvWrite::Delete)?;
            commit(store, function, key, KvWrite::Add(n))
        }
    }
}

/// Deletes a key; false if there was none.
pub fn kv_delete(store: &Store, function: &str, key: &str) -> Result<bool, StoreError> {
    if store.kv_entry(function, key)?.is_none() {
        return Ok(false);
    }
    commit(store, function, key, KvWrite::Delete)?;
    Ok(true)
}

fn commit(store: &Store, function: &str, key: &str, write: KvWrite) -> Result<(), StoreError> {
    let mut effects = Effects::default();
    effects.kv.insert(key.to_owned(), write);
    store.commit_now(function, effects)
}

/// Dead letters (oldest or newest first, of one request if given), at
/// most `limit`, and how many the function (or all) has.
pub fn dead_letters(
    store: &Store,
    function: Option<&str>,
    request_id: Option<u64>,
    newest_first: bool,
    limit: usize,
) -> Result<(Vec<DeadLetter>, u64), StoreError> {
    Ok((
        store.dead_letters_where(function, request_id, newest_first, limit)?,
        store.dead_letter_count(function)?,
    ))
}

pub fn purge(store: &Store, purge: Purge) -> Result<u64, StoreError> {
    store.purge_dead_letters(purge)
}

/// Replays one dead letter: an undeliverable message goes back in the
/// outbox; anything else runs on the module `module` gives (see
/// `dlq::replay`). The answer as JSON.
pub fn replay(
    store: &Store,
    letter: &DeadLetter,
    module: impl FnOnce() -> Result<(FunctionSpec, Vec<u8>), String>,
) -> Result<Value, String> {
    if crate::dlq::requeue(store, letter)
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(json!({ "id": letter.id, "requeued": true, "topic": letter.topic, "ok": true }));
    }
    let (spec, wasm) = module()?;
    let replayed = crate::dlq::replay(store, letter, spec, &wasm).map_err(|e| e.to_string())?;
    let logs: Vec<Value> = replayed
        .logs
        .iter()
        .map(|l| json!({ "level": format!("{:?}", l.level), "message": l.message }))
        .collect();
    Ok(match &replayed.outcome {
        Ok(effects) => json!({
            "id": letter.id,
            "ok": true,
            "function": letter.function,
            "version": replayed.version,
            "attempt": replayed.attempt,
            "emits": effects.emits.len(),
            "kv_writes": effects.kv.len(),
            "logs": logs,
        }),
        Err(error) => json!({
            "id": letter.id,
            "ok": false,
            "function": letter.function,
            "version": replayed.version,
            "attempt": replayed.attempt,
            "error": error.to_string(),
            "logs": logs,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_its_json() {
        for entry in [
            KvEntry {
                key: "vm-17/vends".into(),
                value: 42i64.to_le_bytes().to_vec(),
                counter: Some(true),
            },
            KvEntry {
                key: "note".into(),
                value: b"restocked \xff".to_vec(),
                counter: None,
            },
        ] {
            assert_eq!(entry_from_json(&entry_json(&entry)), Some(entry));
        }
    }
}

//! What an invocation did, held back until it commits.
//!
//! Nothing here touches a broker or a database: the runtime fills an
//! [`Effects`] while the guest runs and hands it over whole on success, or
//! drops it on failure. That is what makes "a trap commits nothing" true.

use std::collections::BTreeMap;
use wasmgate_abi::EmitOptions;

/// A message to publish once the invocation commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    pub topic: String,
    pub payload: Vec<u8>,
    pub options: EmitOptions,
}

/// A fan-out invocation to start once the invocation commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoke {
    pub function: String,
    pub payload: Vec<u8>,
    /// `payload` is a whole event (postcard `Event`), to be run as it is,
    /// not the payload of an `Invoke` event: an HTTP request taken with
    /// `invocation = "event"`.
    pub whole_event: bool,
}

/// A message for a WebSocket connection, sent once the invocation commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    pub connection: String,
    pub data: Vec<u8>,
}

/// The reply to a request/response trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// Headers the function set (`respond_header`), in order.
    pub headers: Vec<(String, String)>,
}

/// The net effect of an invocation on one KV key.
///
/// Increments stay additions (`Add`) rather than the value the guest saw, so
/// two invocations of one function committing concurrently both count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvWrite {
    Put(Vec<u8>),
    Delete,
    Add(i64),
}

impl KvWrite {
    /// The value after this write lands on `current`. A value that stopped
    /// being a counter between the guest's read and the commit is replaced
    /// rather than failing the whole commit (the guest saw a counter).
    pub fn apply(&self, current: Option<&[u8]>) -> Option<Vec<u8>> {
        match self {
            KvWrite::Put(value) => Some(value.clone()),
            KvWrite::Delete => None,
            KvWrite::Add(delta) => {
                let base = decode_counter(current).unwrap_or(0);
                Some(base.wrapping_add(*delta).to_le_bytes().to_vec())
            }
        }
    }
}

/// Why a KV read-modify-write was refused; surfaces as a guest status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvArithmeticError {
    /// The stored value is not an 8-byte little-endian integer.
    NotANumber,
    /// The sum does not fit in an `i64`.
    Overflow,
}

/// Everything one successful invocation asks the gateway to do, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    pub emits: Vec<Emit>,
    /// Keyed by KV key within the function's namespace; one net write per key.
    pub kv: BTreeMap<String, KvWrite>,
    pub invokes: Vec<Invoke>,
    pub response: Option<Response>,
    /// The items of a batch the function said failed (`item_failed`), by
    /// index: only those are retried, the rest commit with these effects.
    pub failed_items: std::collections::BTreeSet<u32>,
    /// Messages for WebSocket connections (`post_to_connection`): not kept
    /// in the store (a connection does not outlive the process), sent once
    /// the rest is durable.
    pub posts: Vec<Post>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.emits.is_empty()
            && self.kv.is_empty()
            && self.invokes.is_empty()
            && self.response.is_none()
            && self.posts.is_empty()
    }

    /// What a read of `key` sees: this invocation's own write if any, layered
    /// over `committed` (fetched lazily, only when the pending write needs it).
    pub fn read(
        &self,
        key: &str,
        committed: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, KvArithmeticError> {
        match self.kv.get(key) {
            None => Ok(committed()),
            Some(KvWrite::Put(v)) => Ok(Some(v.clone())),
            Some(KvWrite::Delete) => Ok(None),
            Some(KvWrite::Add(delta)) => {
                let base = decode_counter(committed().as_deref())?;
                let sum = base
                    .checked_add(*delta)
                    .ok_or(KvArithmeticError::Overflow)?;
                Ok(Some(sum.to_le_bytes().to_vec()))
            }
        }
    }

    pub fn put(&mut self, key: String, value: Vec<u8>) {
        self.kv.insert(key, KvWrite::Put(value));
    }

    pub fn delete(&mut self, key: String) {
        self.kv.insert(key, KvWrite::Delete);
    }

    /// Adds `delta` to the counter at `key` and returns the value this
    /// invocation now sees. The pending write stays an addition unless this
    /// invocation already replaced the value outright.
    pub fn increment(
        &mut self,
        key: &str,
        delta: i64,
        committed: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Result<i64, KvArithmeticError> {
        let committed = committed();
        let seen = decode_counter(self.read(key, || committed.clone())?.as_deref())?;
        let new = seen.checked_add(delta).ok_or(KvArithmeticError::Overflow)?;
        let write = match self.kv.get(key) {
            Some(KvWrite::Put(_)) | Some(KvWrite::Delete) => {
                KvWrite::Put(new.to_le_bytes().to_vec())
            }
            Some(KvWrite::Add(pending)) => KvWrite::Add(
                pending
                    .checked_add(delta)
                    .ok_or(KvArithmeticError::Overflow)?,
            ),
            None => {
                // Check the stored value is a counter now, so that the guest
                // learns NOT_A_NUMBER here and not at commit.
                decode_counter(committed.as_deref())?;
                KvWrite::Add(delta)
            }
        };
        self.kv.insert(key.to_owned(), write);
        Ok(new)
    }
}

/// Counters are 8-byte little-endian `i64`; a missing key counts as 0.
pub fn decode_counter(value: Option<&[u8]>) -> Result<i64, KvArithmeticError> {
    match value {
        None => Ok(0),
        Some(bytes) => bytes
            .try_into()
            .map(i64::from_le_bytes)
            .map_err(|_| KvArithmeticError::NotANumber),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(n: i64) -> Option<Vec<u8>> {
        Some(n.to_le_bytes().to_vec())
    }

    #[test]
    fn reads_see_the_invocations_own_writes_over_committed_state() {
        let mut fx = Effects::default();
        assert_eq!(
            fx.read("k", || Some(b"old".to_vec())),
            Ok(Some(b"old".to_vec()))
        );
        fx.put("k".into(), b"new".to_vec());
        assert_eq!(
            fx.read("k", || Some(b"old".to_vec())),
            Ok(Some(b"new".to_vec()))
        );
        fx.delete("k".into());
        assert_eq!(fx.read("k", || Some(b"old".to_vec())), Ok(None));
    }

    #[test]
    fn increments_stay_additions_so_concurrent_invocations_both_count() {
        let mut fx = Effects::default();
        assert_eq!(fx.increment("n", 2, || counter(40)), Ok(42));
        assert_eq!(fx.increment("n", 3, || counter(40)), Ok(45));
        assert_eq!(fx.kv["n"], KvWrite::Add(5), "committed as +5, not as 45");
        assert_eq!(fx.read("n", || counter(100)), Ok(counter(105)));
    }

    #[test]
    fn increment_after_put_becomes_a_put_of_the_sum() {
        let mut fx = Effects::default();
        fx.put("n".into(), 10i64.to_le_bytes().to_vec());
        assert_eq!(fx.increment("n", 1, || counter(99)), Ok(11));
        assert_eq!(fx.kv["n"], KvWrite::Put(11i64.to_le_bytes().to_vec()));
    }

    #[test]
    fn increment_of_a_missing_or_deleted_key_starts_at_zero() {
        let mut fx = Effects::default();
        assert_eq!(fx.increment("a", 7, || None), Ok(7));
        fx.delete("b".into());
        assert_eq!(fx.increment("b", 1, || counter(50)), Ok(1));
    }

    #[test]
    fn increment_of_a_non_counter_is_refused_and_changes_nothing() {
        let mut fx = Effects::default();
        assert_eq!(
            fx.increment("s", 1, || Some(b"text".to_vec())),
            Err(KvArithmeticError::NotANumber)
        );
        assert!(fx.is_empty());
    }

    #[test]
    fn increment_overflow_is_refused() {
        let mut fx = Effects::default();
        assert_eq!(
            fx.increment("n", 1, || counter(i64::MAX)),
            Err(KvArithmeticError::Overflow)
        );
        assert!(fx.is_empty());
    }
}

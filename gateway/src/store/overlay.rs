//! KV writes submitted for commit but not yet committed.
//!
//! Group commit lets a worker start its next invocation before the last one's
//! transaction is on disk. That invocation must still read the last one's
//! writes, so reads consult this overlay on top of the database. Every write
//! carries the sequence number of its commit; the database records the
//! highest committed sequence in the same transaction as the data, so a
//! reader that sees sequence `c` in its snapshot applies exactly the overlay
//! writes above `c`, never one twice and never one missed.

use crate::runtime::KvWrite;
use std::collections::{BTreeMap, HashMap, VecDeque};

#[derive(Debug, Default)]
pub struct Overlay {
    /// Per (namespace, key): pending writes in sequence order.
    entries: HashMap<(String, String), VecDeque<(u64, KvWrite)>>,
}

impl Overlay {
    /// Records one commit's KV writes under `seq` (which only ever grows).
    pub fn push(&mut self, seq: u64, namespace: &str, writes: &BTreeMap<String, KvWrite>) {
        for (key, write) in writes {
            self.entries
                .entry((namespace.to_owned(), key.clone()))
                .or_default()
                .push_back((seq, write.clone()));
        }
    }

    /// `committed` (the database's value in a snapshot whose highest
    /// committed sequence is `committed_seq`) with the later pending writes applied.
    pub fn read(
        &self,
        namespace: &str,
        key: &str,
        committed_seq: u64,
        committed: Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        let Some(pending) = self.entries.get(&(namespace.to_owned(), key.to_owned())) else {
            return committed;
        };
        pending
            .iter()
            .filter(|(seq, _)| *seq > committed_seq)
            .fold(committed, |value, (_, write)| write.apply(value.as_deref()))
    }

    /// Forgets writes at or below `seq`: committed, or given up on.
    pub fn prune(&mut self, seq: u64) {
        self.entries.retain(|_, pending| {
            while pending.front().is_some_and(|(s, _)| *s <= seq) {
                pending.pop_front();
            }
            !pending.is_empty()
        });
    }

    /// Forgets the writes of commits that failed, so reads stop seeing them.
    pub fn discard(&mut self, seqs: &[u64]) {
        self.entries.retain(|_, pending| {
            pending.retain(|(s, _)| !seqs.contains(s));
            !pending.is_empty()
        });
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(pairs: &[(&str, KvWrite)]) -> BTreeMap<String, KvWrite> {
        pairs
            .iter()
            .map(|(k, w)| (k.to_string(), w.clone()))
            .collect()
    }

    fn counter(n: i64) -> Option<Vec<u8>> {
        Some(n.to_le_bytes().to_vec())
    }

    #[test]
    fn pending_writes_layer_over_the_committed_value_in_order() {
        let mut o = Overlay::default();
        o.push(1, "f", &writes(&[("n", KvWrite::Add(2))]));
        o.push(2, "f", &writes(&[("n", KvWrite::Add(3))]));
        assert_eq!(o.read("f", "n", 0, counter(10)), counter(15));
        o.push(3, "f", &writes(&[("n", KvWrite::Put(b"x".to_vec()))]));
        assert_eq!(o.read("f", "n", 0, counter(10)), Some(b"x".to_vec()));
    }

    #[test]
    fn writes_already_in_the_snapshot_are_not_applied_twice() {
        let mut o = Overlay::default();
        o.push(1, "f", &writes(&[("n", KvWrite::Add(2))]));
        o.push(2, "f", &writes(&[("n", KvWrite::Add(3))]));
        // The snapshot already holds seq 1 (10 + 2 = 12).
        assert_eq!(o.read("f", "n", 1, counter(12)), counter(15));
        assert_eq!(o.read("f", "n", 2, counter(15)), counter(15));
    }

    #[test]
    fn namespaces_do_not_see_each_other() {
        let mut o = Overlay::default();
        o.push(1, "a", &writes(&[("k", KvWrite::Put(b"1".to_vec()))]));
        assert_eq!(o.read("b", "k", 0, None), None);
    }

    #[test]
    fn prune_and_discard_forget_writes() {
        let mut o = Overlay::default();
        o.push(1, "f", &writes(&[("a", KvWrite::Delete)]));
        o.push(2, "f", &writes(&[("b", KvWrite::Add(1))]));
        o.push(3, "f", &writes(&[("b", KvWrite::Add(1))]));
        o.prune(1);
        assert_eq!(
            o.read("f", "a", 0, Some(b"v".to_vec())),
            Some(b"v".to_vec())
        );
        o.discard(&[3]);
        assert_eq!(o.read("f", "b", 0, None), counter(1));
        o.prune(2);
        assert!(o.is_empty());
    }
}

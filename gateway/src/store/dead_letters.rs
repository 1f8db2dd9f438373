//! The dead-letter queue: events that failed every attempt, with each
//! attempt's error, kept until an operator replays or purges them.
//!
//! Dead letters are written by the store thread like everything else, in the
//! same group commit as invocations' effects, so the message behind one is
//! acknowledged to the broker only once it is durable here. Reads (for
//! `wasmgate dlq`) use the reader connections and never wait for the writer.

use super::{now_ms, Request, Store, StoreError};
use rusqlite::{params, OptionalExtension, Row, Transaction};
use std::sync::mpsc;

/// One failed attempt at an event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    /// 1 for the first try; replays continue the count.
    pub attempt: u32,
    /// When it failed, Unix milliseconds.
    pub at_ms: i64,
    /// The failure kind (`trap`, `deadline`, ... see `FailureKind`).
    pub kind: String,
    /// The error, naming the function and version.
    pub error: String,
    /// The module version that ran this attempt.
    pub version: String,
    /// The function's own log lines from this attempt (`ERROR price
    /// missing`), the last few of them: an error code says that it failed,
    /// these say why. Absent in letters written before they were kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
}

/// A dead letter as the dispatcher hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeadLetter {
    pub function: String,
    pub request_id: u64,
    pub version: String,
    /// The event's topic, or what orders it.
    pub topic: String,
    pub event_kind: String,
    /// The event as the ABI encodes it (postcard `Event`).
    pub event: Vec<u8>,
    pub dedup: Option<String>,
    pub attempts: Vec<Attempt>,
    /// When the gateway received the event, Unix milliseconds.
    pub received_ms: i64,
    /// The most dead letters kept for this function; older ones are deleted.
    pub keep: u32,
    /// Also publish it (JSON) to this topic on the local broker.
    pub publish_to: Option<String>,
    /// What the event's source records in the same transaction as the dead
    /// letter (see [`super::Cursor`]).
    pub cursor: Option<super::Cursor>,
}

/// A dead letter as stored (and as the management API carries it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub id: i64,
    pub function: String,
    pub request_id: u64,
    pub version: String,
    pub topic: String,
    pub event_kind: String,
    pub event: Vec<u8>,
    pub dedup: Option<String>,
    pub attempts: Vec<Attempt>,
    pub received_ms: i64,
    pub failed_ms: i64,
}

/// Which dead letters a purge deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    Ids(Vec<i64>),
    Function(String),
    All,
}

/// A change to the dead-letter queue, made on the store thread.
pub(super) enum DeadLetterOp {
    Insert(NewDeadLetter),
    Purge(Purge),
    /// A replay that failed: its attempt is added and the letter stays.
    Failed {
        id: i64,
        attempt: Attempt,
    },
}

/// Called on the store thread once the change is durable: the new id for
/// an insert, the rows changed otherwise.
pub(super) type Reply = Box<dyn FnOnce(Result<i64, StoreError>) + Send>;

/// What an insert asks of the rest of the transaction.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// The id (insert) or rows changed.
    pub result: i64,
    /// A row for the outbox: (topic, JSON payload, function).
    pub publish: Option<(String, Vec<u8>, String)>,
    /// Older letters deleted to stay within `keep`: (id, function).
    pub dropped: Vec<(i64, String)>,
}

pub(super) fn apply(tx: &Transaction<'_>, op: &DeadLetterOp) -> rusqlite::Result<Applied> {
    let mut applied = Applied::default();
    match op {
        DeadLetterOp::Insert(letter) => {
            let attempts = attempts_json(&letter.attempts);
            let failed_ms = letter.attempts.last().map_or_else(now_ms, |a| a.at_ms);
            tx.prepare_cached(
                "INSERT INTO dead_letters
                 (function, request_id, version, topic, event_kind, event, dedup, attempts, received_ms, failed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                letter.function,
                letter.request_id as i64,
                letter.version,
                letter.topic,
                letter.event_kind,
                letter.event,
                letter.dedup,
                attempts,
                letter.received_ms,
                failed_ms
            ])?;
            let id = tx.last_insert_rowid();
            applied.result = id;
            let mut over = tx.prepare_cached(
                "DELETE FROM dead_letters WHERE id IN (
                     SELECT id FROM dead_letters WHERE function = ?1
                     ORDER BY id DESC LIMIT -1 OFFSET ?2)
                 RETURNING id",
            )?;
            let dropped = over
                .query_map(params![letter.function, letter.keep.max(1)], |r| {
                    r.get::<_, i64>(0)
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            applied.dropped = dropped
                .into_iter()
                .map(|id| (id, letter.function.clone()))
                .collect();
            if let Some(topic) = &letter.publish_to {
                let stored = DeadLetter {
                    id,
                    function: letter.function.clone(),
                    request_id: letter.request_id,
                    version: letter.version.clone(),
                    topic: letter.topic.clone(),
                    event_kind: letter.event_kind.clone(),
                    event: letter.event.clone(),
                    dedup: letter.dedup.clone(),
                    attempts: letter.attempts.clone(),
                    received_ms: letter.received_ms,
                    failed_ms,
                };
                let payload = crate::dlq::to_json(&stored).to_string().into_bytes();
                applied.publish = Some((topic.clone(), payload, letter.function.clone()));
            }
        }
        DeadLetterOp::Purge(purge) => {
            applied.result = match purge {
                Purge::All => tx.execute("DELETE FROM dead_letters", [])?,
                Purge::Function(function) => {
                    tx.execute("DELETE FROM dead_letters WHERE function = ?1", [function])?
                }
                Purge::Ids(ids) => {
                    let mut delete = tx.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
                    let mut n = 0;
                    for id in ids {
                        n += delete.execute([id])?;
                    }
                    n
                }
            } as i64;
        }
        DeadLetterOp::Failed { id, attempt } => {
            let current: Option<String> = tx
                .prepare_cached("SELECT attempts FROM dead_letters WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()?;
            if let Some(current) = current {
                let mut attempts = parse_attempts(&current);
                attempts.push(attempt.clone());
                applied.result = tx.execute(
                    "UPDATE dead_letters SET attempts = ?2, failed_ms = ?3, version = ?4 WHERE id = ?1",
                    params![id, attempts_json(&attempts), attempt.at_ms, attempt.version],
                )? as i64;
            }
        }
    }
    Ok(applied)
}

fn attempts_json(attempts: &[Attempt]) -> String {
    // A Vec of plain structs always serializes.
    serde_json::to_string(attempts).unwrap_or_else(|_| "[]".to_owned())
}

/// The attempts column; a value this binary cannot read (edited by hand)
/// shows as no attempts rather than hiding the letter.
fn parse_attempts(text: &str) -> Vec<Attempt> {
    serde_json::from_str(text).unwrap_or_default()
}

const COLUMNS: &str = "id, function, request_id, version, topic, event_kind, event, dedup, attempts, received_ms, failed_ms";

fn from_row(r: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.get(0)?,
        function: r.get(1)?,
        request_id: r.get::<_, i64>(2)? as u64,
        version: r.get(3)?,
        topic: r.get(4)?,
        event_kind: r.get(5)?,
        event: r.get(6)?,
        dedup: r.get(7)?,
        attempts: parse_attempts(&r.get::<_, String>(8)?),
        received_ms: r.get(9)?,
        failed_ms: r.get(10)?,
    })
}

impl Store {
    /// Queues a dead letter for the next group commit; `done` gets its id
    /// once it is durable (then, and only then, may its message be acked).
    pub fn dead_letter(
        &self,
        letter: NewDeadLetter,
        done: impl FnOnce(Result<i64, StoreError>) + Send + 'static,
    ) {
        self.dead_letter_op(DeadLetterOp::Insert(letter), Box::new(done));
    }

    /// Deletes dead letters; returns how many. Waits for the commit.
    pub fn purge_dead_letters(&self, purge: Purge) -> Result<u64, StoreError> {
        self.dead_letter_op_now(DeadLetterOp::Purge(purge))
            .map(|n| n as u64)
    }

    /// Records a failed replay of dead letter `id`; it stays in the queue.
    /// Waits for the commit.
    pub fn dead_letter_failed_again(&self, id: i64, attempt: Attempt) -> Result<(), StoreError> {
        self.dead_letter_op_now(DeadLetterOp::Failed { id, attempt })
            .map(drop)
    }

    /// Commits a successful replay's effects and removes its dead letter in
    /// one transaction, recording its dedup id like a normal commit; waits.
    pub fn commit_replay(
        &self,
        letter: &DeadLetter,
        effects: crate::runtime::Effects,
    ) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        self.submit_resolving(
            super::Commit {
                function: letter.function.clone(),
                effects,
                dedup: letter.dedup.clone().into_iter().collect(),
                cursors: Vec::new(),
                trace: None,
                done: Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            },
            Some(letter.id),
            true,
        );
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Dead letters, oldest first, of one function or all; at most `limit`.
    pub fn dead_letters(
        &self,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.with_reader(|conn| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = match function {
                Some(f) => conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM dead_letters WHERE function = ?1 ORDER BY id LIMIT ?2"
                    ))?
                    .query_map(params![f, limit], from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM dead_letters ORDER BY id LIMIT ?1"
                    ))?
                    .query_map([limit], from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            Ok(rows)
        })
    }

    /// Dead letters of one function or all, and of one request only when
    /// `request_id` is given; oldest or newest first; at most `limit`. The
    /// newest first is what the dashboard shows: the end of the queue
    /// without reading all of it.
    pub fn dead_letters_where(
        &self,
        function: Option<&str>,
        request_id: Option<u64>,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.with_reader(|conn| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let request_id = request_id.map(|r| r as i64);
            let order = if newest_first { "DESC" } else { "ASC" };
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM dead_letters \
                     WHERE (?1 IS NULL OR function = ?1) AND (?2 IS NULL OR request_id = ?2) \
                     ORDER BY id {order} LIMIT ?3"
                ))?
                .query_map(params![function, request_id, limit], from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// One dead letter by id.
    pub fn dead_letter_by_id(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        self.with_reader(|conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?1"))?
                .query_row([id], from_row)
                .optional()?)
        })
    }

    /// How many dead letters there are, of one function or all.
    pub fn dead_letter_count(&self, function: Option<&str>) -> Result<u64, StoreError> {
        self.with_reader(|conn| {
            let n: i64 = match function {
                Some(f) => conn.query_row(
                    "SELECT COUNT(*) FROM dead_letters WHERE function = ?1",
                    [f],
                    |r| r.get(0),
                )?,
                None => conn.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))?,
            };
            Ok(n as u64)
        })
    }

    fn dead_letter_op_now(&self, op: DeadLetterOp) -> Result<i64, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.dead_letter_op(
            op,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Takes one of the store's permits, like a commit: a function that
    /// fails every event as fast as it can must not queue dead letters
    /// without bound while the disk is slow.
    fn dead_letter_op(&self, op: DeadLetterOp, reply: Reply) {
        self.inner.pending.acquire();
        let sent = match &super::lock(&self.inner.submitter).tx {
            Some(tx) => tx.send(Request::DeadLetters { op, reply }).map_err(|e| e.0),
            None => Err(Request::DeadLetters { op, reply }),
        };
        if let Err(Request::DeadLetters { reply, .. }) = sent {
            self.inner.pending.release(1);
            reply(Err(StoreError::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Effects, KvRead, KvWrite};
    use crate::store::{OutboxDestination, StoreOptions};
    use std::time::Duration;

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(StoreOptions::new(dir.path().join("wasmgate.db"))).expect("opens")
    }

    fn letter(function: &str, payload: &str, keep: u32, publish_to: Option<&str>) -> NewDeadLetter {
        let event = crate::event::OwnedEvent::mqtt("a/b", payload.as_bytes().to_vec(), 1, false);
        NewDeadLetter {
            function: function.into(),
            request_id: 7,
            version: "0123456789ab".into(),
            topic: "a/b".into(),
            event_kind: "mqtt".into(),
            event: crate::dlq::encode_event(&event.as_event()),
            dedup: Some("msg-1".into()),
            attempts: (1..=3)
                .map(|attempt| Attempt {
                    attempt,
                    at_ms: 1_000 + i64::from(attempt),
                    kind: "trap".into(),
                    error: format!("attempt {attempt} trapped"),
                    version: "0123456789ab".into(),
                    logs: vec![format!("ERROR attempt {attempt} saw a bad price")],
                })
                .collect(),
            received_ms: 1_000,
            keep,
            publish_to: publish_to.map(str::to_owned),
            cursor: None,
        }
    }

    #[track_caller]
    fn insert(store: &Store, letter: NewDeadLetter) -> i64 {
        let (tx, rx) = mpsc::channel();
        store.dead_letter(letter, move |r| tx.send(r).unwrap());
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("committed")
    }

    #[test]
    fn a_dead_letter_keeps_everything_about_the_event_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let id = insert(&store, letter("vending", "poison", 10, None));
        store.close();
        let store = open(&dir);
        let stored = store.dead_letter_by_id(id).unwrap().expect("kept");
        assert_eq!(stored.function, "vending");
        assert_eq!(stored.request_id, 7);
        assert_eq!(stored.dedup.as_deref(), Some("msg-1"));
        assert_eq!(stored.attempts.len(), 3);
        assert_eq!(stored.attempts[2].error, "attempt 3 trapped");
        assert_eq!((stored.received_ms, stored.failed_ms), (1_000, 1_003));
        let event = crate::dlq::decode_event(&stored.event).unwrap();
        let wasmgate_abi::Event::Mqtt(m) = event else {
            panic!("{event:?}")
        };
        assert_eq!(m.payload, b"poison");
        assert_eq!(store.dead_letter_count(Some("vending")).unwrap(), 1);
        assert_eq!(store.dead_letter_count(Some("other")).unwrap(), 0);
        store.close();
    }

    #[test]
    fn the_newest_dead_letters_come_first_and_one_requests_can_be_picked_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut other_request = letter("vending", "p-other", 10, None);
        other_request.request_id = 42;
        let ids = [
            insert(&store, letter("vending", "p0", 10, None)),
            insert(&store, other_request),
            insert(&store, letter("other", "p2", 10, None)),
            insert(&store, letter("vending", "p3", 10, None)),
        ];
        let newest = |function, request, limit| -> Vec<i64> {
            store
                .dead_letters_where(function, request, true, limit)
                .unwrap()
                .iter()
                .map(|l| l.id)
                .collect()
        };
        assert_eq!(newest(None, None, 2), [ids[3], ids[2]]);
        assert_eq!(newest(Some("vending"), None, 10), [ids[3], ids[1], ids[0]]);
        assert_eq!(newest(None, Some(42), 10), [ids[1]]);
        assert_eq!(newest(Some("other"), Some(42), 10), Vec::<i64>::new());
        let oldest = store.dead_letters_where(None, None, false, 2).unwrap();
        assert_eq!([oldest[0].id, oldest[1].id], ids[..2]);
        store.close();
    }

    #[test]
    fn past_keep_the_oldest_of_that_function_goes_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let other = insert(&store, letter("other", "x", 2, None));
        let ids: Vec<i64> = (0..4)
            .map(|i| insert(&store, letter("vending", &format!("p{i}"), 2, None)))
            .collect();
        let left: Vec<i64> = store
            .dead_letters(Some("vending"), 100)
            .unwrap()
            .iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(left, ids[2..]);
        assert!(
            store.dead_letter_by_id(other).unwrap().is_some(),
            "other functions' letters stay"
        );
        assert_eq!(
            store
                .stats()
                .dead_letters_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        store.close();
    }

    #[test]
    fn a_dead_letter_topic_gets_the_letter_as_json_through_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let id = insert(&store, letter("vending", "poison", 10, Some("dlq/vending")));
        let rows = store.outbox_after(OutboxDestination::Local, 0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].topic, "dlq/vending");
        let json: serde_json::Value = serde_json::from_slice(&rows[0].payload).unwrap();
        assert_eq!(json["id"], id);
        assert_eq!(json["event"]["mqtt"]["payload"], "poison");
        assert_eq!(json["attempts"][0]["kind"], "trap");
        store.close();
    }

    #[test]
    fn a_successful_replay_commits_its_effects_and_removes_the_letter_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let id = insert(&store, letter("vending", "poison", 10, None));
        let stored = store.dead_letter_by_id(id).unwrap().unwrap();
        let mut effects = Effects::default();
        effects
            .kv
            .insert("fixed".into(), KvWrite::Put(b"yes".to_vec()));
        store.commit_replay(&stored, effects).unwrap();
        assert!(store.dead_letter_by_id(id).unwrap().is_none());
        assert_eq!(
            store.get("vending", "fixed").unwrap().as_deref(),
            Some(&b"yes"[..])
        );
        assert_eq!(
            store.seen("vending", "msg-1", || Box::new(|_| {})).unwrap(),
            crate::store::Seen::Committed,
            "its dedup id is recorded"
        );
        store.close();
    }

    #[test]
    fn a_failed_replay_adds_its_attempt_and_keeps_the_letter() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let id = insert(&store, letter("vending", "poison", 10, None));
        let attempt = Attempt {
            attempt: 4,
            at_ms: 5_000,
            kind: "deadline".into(),
            error: "too slow".into(),
            version: "ba9876543210".into(),
            logs: Vec::new(),
        };
        store.dead_letter_failed_again(id, attempt.clone()).unwrap();
        let stored = store.dead_letter_by_id(id).unwrap().unwrap();
        assert_eq!(stored.attempts.last(), Some(&attempt));
        assert_eq!(stored.failed_ms, 5_000);
        assert_eq!(stored.version, "ba9876543210");
        store.close();
    }

    #[test]
    fn purges_delete_by_id_by_function_or_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let a = insert(&store, letter("a", "1", 10, None));
        let _a2 = insert(&store, letter("a", "2", 10, None));
        let b = insert(&store, letter("b", "3", 10, None));
        let _c = insert(&store, letter("c", "4", 10, None));
        assert_eq!(
            store.purge_dead_letters(Purge::Ids(vec![a, 999])).unwrap(),
            1
        );
        assert_eq!(
            store
                .purge_dead_letters(Purge::Function("a".into()))
                .unwrap(),
            1
        );
        assert!(store.dead_letter_by_id(b).unwrap().is_some());
        assert_eq!(store.purge_dead_letters(Purge::All).unwrap(), 2);
        assert_eq!(store.dead_letter_count(None).unwrap(), 0);
        store.close();
    }

    #[test]
    fn an_unreadable_attempts_column_shows_as_no_attempts_not_an_error() {
        assert!(parse_attempts("not json").is_empty());
    }
}

//! The durable store: one SQLite database (WAL) owned by a store thread that
//! group-commits the effects of many invocations in one transaction.
//!
//! A worker submits an invocation's effects and moves on to its next event;
//! the store thread gathers submissions for a few milliseconds (or until a
//! batch is full), writes them all in one transaction, and only then runs
//! each submission's `done` callback, which acknowledges the MQTT message.
//! So a message acked to the broker always has its effects on disk, while one
//! fsync covers many messages. Until a batch commits, reads see its KV writes
//! through the [`overlay::Overlay`].

mod dead_letters;
pub mod deployments;
mod feed;
pub mod logs;
mod overlay;
mod schema;
pub mod spans;
pub mod usage;
mod versions;

pub use dead_letters::{Attempt, DeadLetter, NewDeadLetter, Purge};
pub use schema::{MigrationError, VERSION as SCHEMA_VERSION};
pub use versions::{AliasRow, VersionRow};

use crate::runtime::{Effects, KvRead, KvWrite};
use feed::Feed;
use overlay::Overlay;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmgate_abi::Destination;

/// How hard SQLite works to survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: a commit acknowledged is a commit kept, even
    /// through power loss. The default: the promise wasmgate makes.
    #[default]
    Full,
    /// fsync only at WAL checkpoints: faster, and still never corrupt, but a
    /// power cut can lose the last commits, whose messages were already acked.
    Normal,
}

/// What happens when the outbox reaches its byte budget (a link down for days).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Take no new messages until the outbox drains: the broker (and then the
    /// devices) hold them. Nothing is dropped. The default.
    #[default]
    Block,
    /// Delete the oldest rows for this destination to make room, each one
    /// logged and counted: for telemetry where the latest matters most.
    DropOldest,
}

/// Where an outbox row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxDestination {
    Local = 0,
    Upstream = 1,
    /// A fan-out invocation; the row's topic is the function's name.
    Invoke = 2,
}

impl From<Destination> for OutboxDestination {
    fn from(d: Destination) -> Self {
        match d {
            Destination::Local => OutboxDestination::Local,
            Destination::Upstream => OutboxDestination::Upstream,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The database file; created with its directory if missing.
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// A batch commits when it holds this many submissions...
    pub group_commit_max: usize,
    /// ...or when its first submission has waited this long.
    pub group_commit_delay: Duration,
    /// Submissions accepted but not yet committed; past this, `submit` waits
    /// (backpressure to the workers and so to the broker).
    pub max_pending: usize,
    /// How long a dedup id is remembered: longer than any redelivery can
    /// take (a gateway down over a long weekend), short enough to stay small.
    pub dedup_retention: Duration,
    /// Bytes (topic + payload) the outbox may hold before `when_full` applies.
    pub outbox_max_bytes: u64,
    /// Per destination: local, upstream (invokes always block).
    pub local_when_full: WhenFull,
    pub upstream_when_full: WhenFull,
    /// An operator's tool (`wasmgate kv`, `wasmgate dlq`) committing beside
    /// a gateway that may be running: its commits leave the committed
    /// sequence number alone. That number is the gateway's: its readers
    /// take the writes above it from their overlay (store/overlay.rs), and
    /// another store's commit numbered from the same count would mark the
    /// gateway's pending writes as committed before they are. Nor does it
    /// hold commits for outbox room: its count of the outbox's bytes is
    /// read once at open and only the gateway's drainer makes room, so a
    /// full outbox (an uplink down for days) would hold it for good.
    pub operator: bool,
    /// Namespaces a `kv_change` trigger watches: their writes are kept in
    /// the change stream (with the value before), the others' are not.
    pub kv_streams: Vec<String>,
    /// Functions' log lines kept ([`logs`]), the newest; 0 keeps none.
    pub log_keep: u32,
    /// Spans kept for the OTLP exporter ([`spans`]); 0: tracing is off.
    pub span_keep: u32,
}

impl StoreOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreOptions {
            path: path.into(),
            synchronous: Synchronous::Full,
            group_commit_max: 512,
            group_commit_delay: Duration::from_millis(2),
            max_pending: 4_096,
            dedup_retention: Duration::from_secs(7 * 24 * 3600),
            outbox_max_bytes: 256 << 20,
            local_when_full: WhenFull::Block,
            upstream_when_full: WhenFull::Block,
            operator: false,
            kv_streams: Vec::new(),
            log_keep: DEFAULT_LOG_KEEP,
            span_keep: 0,
        }
    }
}

/// Default [`StoreOptions::log_keep`]: at ~200 bytes a line, a couple of MB.
pub const DEFAULT_LOG_KEEP: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {error}")]
    Open { path: PathBuf, error: String },
    #[error("database {path}: {error}")]
    Migrate {
        path: PathBuf,
        error: MigrationError,
    },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store is shutting down; the message stays unacknowledged at the broker")]
    Closed,
}

/// A committed KV entry as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    /// Whether the last write was an increment (`kv_increment`, `kv put
    /// --counter`); `None` when written by a wasmgate that did not record it.
    pub counter: Option<bool>,
}

impl KvEntry {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<KvEntry> {
        Ok(KvEntry {
            key: row.get(0)?,
            value: row.get(1)?,
            counter: row.get::<_, Option<i64>>(2)?.map(|c| c != 0),
        })
    }
}

/// What an event's source records in the transaction that keeps the
/// event's outcome, so that the source is settled exactly when the outcome
/// is kept and a crash cannot run the event twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// The outbox row of a fan-out invoke: deleted.
    OutboxRow(i64),
    /// A schedule's tick: the schedule's last settled tick, moved forward.
    Schedule {
        function: String,
        schedule: String,
        scheduled_ms: i64,
    },
    /// A KV change stream's consumer: its last settled change, moved
    /// forward; changes every consumer of the namespace passed are dropped.
    KvStream {
        consumer: String,
        namespace: String,
        seq: i64,
    },
}

/// One committed KV write, as the change stream keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvChangeRow {
    pub seq: i64,
    pub key: String,
    /// `None`: the key was new.
    pub old: Option<Vec<u8>>,
    /// `None`: the key was deleted.
    pub new: Option<Vec<u8>>,
}

/// One invocation's effects, to be committed together.
pub struct Commit {
    pub function: String,
    pub effects: Effects,
    /// The device-provided ids of the messages (one, or a batch's), recorded
    /// in the same transaction so that a redelivery is recognised
    /// ([`Store::seen`]).
    pub dedup: Vec<String>,
    /// What the events' sources record in the same transaction (see
    /// [`Cursor`]).
    pub cursors: Vec<Cursor>,
    /// The invocation's span ([`crate::trace::TraceContext::stored`]), kept
    /// with its emits and invokes; `None` with tracing off.
    pub trace: Option<String>,
    /// Called on the store thread once the transaction holding these effects
    /// is durable (`Ok`), or when the store gives up on it (`Err`, at shutdown).
    pub done: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commit")
            .field("function", &self.function)
            .field("effects", &self.effects)
            .finish_non_exhaustive()
    }
}

/// What waits in the outbox for one destination ([`Store::outbox_backlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxBacklog {
    pub rows: u64,
    pub bytes: u64,
    /// When the oldest row was written, Unix ms; `None` when none waits.
    pub oldest_ms: Option<i64>,
}

/// A row waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub destination: OutboxDestination,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub function: String,
    /// The span that produced it, as [`crate::trace::TraceContext::stored`]
    /// writes it: passed on as `traceparent` (MQTT 5), or to the invoked
    /// function as its parent.
    pub trace: Option<String>,
}

/// Counters for the durability report and benchmarks.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Transactions committed (each is one fsync of the WAL with `Full`).
    pub transactions: AtomicU64,
    /// Invocations whose effects were committed.
    pub commits: AtomicU64,
    /// Outbox rows written and deleted.
    pub outbox_written: AtomicU64,
    pub outbox_deleted: AtomicU64,
    /// Transactions that failed and were retried (disk full, I/O errors).
    pub failures: AtomicU64,
    /// Outbox rows deleted undelivered by a `drop-oldest` policy.
    pub outbox_dropped: AtomicU64,
    /// Dead letters written, and deleted to keep within a function's `keep`.
    pub dead_letters: AtomicU64,
    pub dead_letters_dropped: AtomicU64,
    /// Function log lines written to the ring, and dropped because the
    /// buffer in front of it was full (the disk stalled).
    pub log_lines_written: AtomicU64,
    pub log_lines_dropped: AtomicU64,
    /// Spans dropped before the collector had them: the buffer in front
    /// of the table was full, or past `[tracing] keep`.
    pub spans_dropped: AtomicU64,
    /// How long each transaction took, from its first statement to the
    /// end of its commit (the fsync).
    pub commit_seconds: crate::histogram::Histogram,
    /// Invocations' effects per transaction: what group commit shares.
    pub commit_size: crate::histogram::Histogram,
}

enum Request {
    Commit {
        seq: u64,
        commit: Commit,
        /// A dead letter this commit replays, deleted in the same transaction.
        resolves: Option<i64>,
        /// Someone waits for it (an HTTP client): its group does not wait
        /// for more to fill.
        urgent: bool,
    },
    /// Delivered rows; `done` runs once their delete is durable.
    DeleteOutbox {
        ids: Vec<i64>,
        done: Option<DeletedCallback>,
    },
    DeadLetters {
        op: dead_letters::DeadLetterOp,
        reply: dead_letters::Reply,
    },
    /// Log lines are waiting in [`Inner::logs`]: write them.
    Logs,
    /// Functions' usage to add to its hours' rows.
    Usage {
        rows: Vec<usage::UsageRow>,
        done: Option<mpsc::Sender<()>>,
    },
}

type OutboxCallback = Box<dyn Fn(OutboxDestination) + Send + Sync>;
type DeletedCallback = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Runs for a message whose id was pending when its copy arrived: `true`
/// once the original's effects are committed, `false` if they never will be
/// (the store shut down first).
pub type PendingWaiter = Box<dyn FnOnce(bool) + Send>;

/// What [`Store::seen`] found for a message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never processed: run it.
    New,
    /// Its effects are committed: acknowledge the copy without running it.
    Committed,
    /// Its effects are still waiting for their group commit; the waiter was
    /// kept and runs when that commit ends. Until then the copy must not be
    /// acknowledged: if the process died now, the original's effects would
    /// be lost with it, and the copy is what the broker would redeliver.
    Pending,
}

struct Submitter {
    next_seq: u64,
    tx: Option<mpsc::Sender<Request>>,
}

struct Inner {
    path: PathBuf,
    /// How many times this database has been opened, this time included.
    run: u64,
    submitter: Mutex<Submitter>,
    overlay: Mutex<Overlay>,
    /// Dedup ids submitted but not yet committed, as (function, id), with
    /// the copies that arrived meanwhile and wait for that commit.
    pending_ids: Mutex<HashMap<(String, String), Vec<PendingWaiter>>>,
    dedup_retention: Duration,
    /// Outbox bytes per destination (index = `OutboxDestination as usize`).
    outbox_bytes: Mutex<[u64; 3]>,
    /// Signalled when outbox bytes go down, for submitters waiting for room.
    room: Condvar,
    outbox_max_bytes: u64,
    pending: Permits,
    readers: Mutex<Vec<Connection>>,
    stats: StoreStats,
    /// Called after a transaction that added outbox rows, per destination.
    on_outbox: Mutex<Vec<OutboxCallback>>,
    /// Rows just committed, per destination, for its drainer ([`feed`]).
    feeds: Mutex<[Feed; 3]>,
    closing: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// KV namespaces whose changes are kept for `kv_change` triggers;
    /// `apply` replaces them as triggers come and go.
    kv_streams: std::sync::RwLock<Vec<String>>,
    /// Log lines for the next transaction.
    logs: Mutex<logs::Buffer>,
    log_keep: u32,
    /// Spans for the next transaction.
    spans: Mutex<spans::Buffer>,
    span_keep: u32,
}

impl Inner {
    /// A commit with a dedup id has ended: the id leaves the pending set,
    /// and the copies that waited for it learn whether it was kept.
    fn settle_pending_id(&self, commit: &Commit, committed: bool) {
        for id in &commit.dedup {
            let waiters = lock(&self.pending_ids).remove(&(commit.function.clone(), id.clone()));
            for waiter in waiters.into_iter().flatten() {
                waiter(committed);
            }
        }
    }
}

/// A handle to the store; cheap to clone and share across threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating and migrating if needed) the database and starts the
    /// store thread. Refuses a database that is corrupt, locked or newer,
    /// without changing it.
    pub fn open(mut options: StoreOptions) -> Result<Store, StoreError> {
        if options.operator {
            options.outbox_max_bytes = u64::MAX;
        }
        let path = options.path.clone();
        let open_err = |error: String| StoreError::Open {
            path: path.clone(),
            error,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(&path).map_err(|e| open_err(e.to_string()))?;
        configure(&conn, options.synchronous).map_err(|e| open_err(explain(&e)))?;
        schema::migrate(&mut conn).map_err(|error| StoreError::Migrate {
            path: path.clone(),
            error,
        })?;
        let committed_seq = committed_seq(&conn).map_err(|e| open_err(explain(&e)))?;
        let outbox_bytes = outbox_bytes(&conn).map_err(|e| open_err(explain(&e)))?;
        let run = next_run(&conn).map_err(|e| open_err(explain(&e)))?;

        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            path: path.clone(),
            run,
            submitter: Mutex::new(Submitter {
                next_seq: committed_seq + 1,
                tx: Some(tx),
            }),
            overlay: Mutex::new(Overlay::default()),
            pending_ids: Mutex::new(HashMap::new()),
            dedup_retention: options.dedup_retention,
            outbox_bytes: Mutex::new(outbox_bytes),
            room: Condvar::new(),
            outbox_max_bytes: options.outbox_max_bytes,
            pending: Permits::new(options.max_pending),
            kv_streams: std::sync::RwLock::new(options.kv_streams.clone()),
            logs: Mutex::new(logs::Buffer::default()),
            log_keep: options.log_keep,
            spans: Mutex::new(spans::Buffer::default()),
            span_keep: options.span_keep,
            readers: Mutex::new(Vec::new()),
            stats: StoreStats::default(),
            on_outbox: Mutex::new(Vec::new()),
            feeds: Mutex::new(Default::default()),
            closing: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let thread_inner = inner.clone();
        let handle = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || StoreThread::new(conn, thread_inner, options).run(rx))
            .map_err(|e| open_err(e.to_string()))?;
        *lock(&inner.thread) = Some(handle);
        tracing::info!(path = %path.display(), committed_seq, "store open");
        Ok(Store { inner })
    }

    /// The KV namespaces whose changes are kept from the next transaction
    /// on (those of the `kv_change` triggers running now).
    pub fn set_kv_streams(&self, namespaces: Vec<String>) {
        *self
            .inner
            .kv_streams
            .write()
            .unwrap_or_else(PoisonError::into_inner) = namespaces;
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    /// Registers a callback run (on the store thread) after each transaction
    /// that added rows for a destination; drainers use it to wake up.
    pub fn on_outbox(&self, callback: impl Fn(OutboxDestination) + Send + Sync + 'static) {
        lock(&self.inner.on_outbox).push(Box::new(callback));
    }

    /// Queues an invocation's effects for the next group commit. Returns at
    /// once unless too much is pending, in which case it waits (backpressure).
    /// Reads from now on see the KV writes.
    pub fn submit(&self, commit: Commit) {
        self.submit_resolving(commit, None, false);
    }

    /// [`Store::submit`] for a commit someone is waiting on (an HTTP client
    /// for its answer): the transaction it starts does not wait the group
    /// commit window for others to join, it takes what is queued and goes.
    /// A device's acknowledgement can wait 2 ms to share an fsync; a client
    /// holding a connection for its answer should not.
    pub fn submit_urgent(&self, commit: Commit) {
        self.submit_resolving(commit, None, true);
    }

    /// [`Store::submit`], deleting dead letter `resolves` in the same transaction.
    fn submit_resolving(&self, commit: Commit, resolves: Option<i64>, urgent: bool) {
        if self.inner.closing.load(Ordering::SeqCst) {
            (commit.done)(Err(StoreError::Closed));
            return;
        }
        self.wait_for_outbox_room();
        self.inner.pending.acquire();
        // Sequence, overlay and channel move together under one lock, so the
        // store thread sees submissions in sequence order and a committed
        // sequence number covers everything below it.
        let mut submitter = lock(&self.inner.submitter);
        let seq = submitter.next_seq;
        submitter.next_seq += 1;
        lock(&self.inner.overlay).push(seq, &commit.function, &commit.effects.kv);
        for id in &commit.dedup {
            lock(&self.inner.pending_ids)
                .entry((commit.function.clone(), id.clone()))
                .or_default();
        }
        let sent = match &submitter.tx {
            Some(tx) => tx
                .send(Request::Commit {
                    seq,
                    commit,
                    resolves,
                    urgent,
                })
                .map_err(|e| e.0),
            None => Err(Request::Commit {
                seq,
                commit,
                resolves,
                urgent,
            }),
        };
        drop(submitter);
        if let Err(Request::Commit { seq, commit, .. }) = sent {
            lock(&self.inner.overlay).discard(&[seq]);
            self.inner.settle_pending_id(&commit, false);
            self.inner.pending.release(1);
            (commit.done)(Err(StoreError::Closed));
        }
    }

    /// Bytes waiting in the outbox, all destinations together.
    pub fn outbox_bytes(&self) -> u64 {
        lock(&self.inner.outbox_bytes).iter().sum()
    }

    /// What waits for one destination: rows, bytes, and when the oldest
    /// was written (Unix ms; `None` when empty). Counting rows reads the
    /// destination's index, so a scrape of a backlog of a million rows
    /// takes tens of milliseconds; the oldest is one index lookup.
    pub fn outbox_backlog(
        &self,
        destination: OutboxDestination,
    ) -> Result<OutboxBacklog, StoreError> {
        let bytes = lock(&self.inner.outbox_bytes)[destination as usize];
        self.with_reader(|conn| {
            let (rows, oldest) = conn.query_row(
                "SELECT COUNT(*), (SELECT created_ms FROM outbox WHERE destination = ?1 ORDER BY id LIMIT 1)
                 FROM outbox WHERE destination = ?1",
                [destination as i64],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?)),
            )?;
            Ok(OutboxBacklog {
                rows: rows as u64,
                bytes,
                oldest_ms: oldest,
            })
        })
    }

    /// The same per destination, indexed by `OutboxDestination as usize`
    /// (local, upstream, invoke): which link is behind, not only that one is.
    pub fn outbox_bytes_by_destination(&self) -> [u64; 3] {
        *lock(&self.inner.outbox_bytes)
    }

    /// The `block` policy: while the outbox is over its budget, new commits
    /// wait, so workers stop, queues fill, and the broker holds the messages.
    fn wait_for_outbox_room(&self) {
        let inner = &self.inner;
        let mut bytes = lock(&inner.outbox_bytes);
        let mut warned = false;
        while bytes.iter().sum::<u64>() > inner.outbox_max_bytes
            && !inner.closing.load(Ordering::SeqCst)
        {
            if !warned {
                tracing::warn!(
                    bytes = bytes.iter().sum::<u64>(),
                    budget = inner.outbox_max_bytes,
                    "outbox full: holding new messages until it drains (policy block)"
                );
                warned = true;
            }
            bytes = inner
                .room
                .wait_timeout(bytes, Duration::from_secs(1))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if warned {
            tracing::info!("outbox has room again");
        }
    }

    /// Whether `function` already processed the message with this
    /// device-provided id. If the original is still committing, `waiter`
    /// is called for the copy (and kept) and the answer is
    /// [`Seen::Pending`]; otherwise it is not called.
    pub fn seen(
        &self,
        function: &str,
        id: &str,
        waiter: impl FnOnce() -> PendingWaiter,
    ) -> Result<Seen, StoreError> {
        {
            // Pending first: once it leaves the pending set it is committed
            // (or failed, and the table says so).
            let mut pending = lock(&self.inner.pending_ids);
            if let Some(waiters) = pending.get_mut(&(function.to_owned(), id.to_owned())) {
                waiters.push(waiter());
                return Ok(Seen::Pending);
            }
        }
        let committed = self.with_reader(|conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM dedup WHERE function = ?1 AND key = ?2")?
                .query_row([function, id], |_| Ok(()))
                .optional()?
                .is_some())
        })?;
        Ok(if committed {
            Seen::Committed
        } else {
            Seen::New
        })
    }

    /// Removes delivered outbox rows (in the next group commit).
    pub fn delete_outbox(&self, ids: Vec<i64>) {
        self.delete_outbox_then(ids, None);
    }

    /// Removes delivered outbox rows; `done` runs on the store thread once
    /// the delete is durable (or failed at shutdown). The drainers hold a
    /// row's window slot until then, which is what bounds what a crash can
    /// send twice (see `pipeline/outbox.rs`). Not held by the store's
    /// permits: each drainer has at most a window of rows in flight here.
    pub fn delete_outbox_then(&self, ids: Vec<i64>, done: Option<DeletedCallback>) {
        if ids.is_empty() {
            if let Some(done) = done {
                done(Ok(()));
            }
            return;
        }
        let request = Request::DeleteOutbox { ids, done };
        let sent = match &lock(&self.inner.submitter).tx {
            Some(tx) => tx.send(request).map_err(|e| e.0),
            None => Err(request),
        };
        if let Err(Request::DeleteOutbox {
            done: Some(done), ..
        }) = sent
        {
            done(Err(StoreError::Closed));
        }
    }

    /// Up to `limit` rows for `destination` with ids above `after`, oldest first.
    pub fn outbox_after(
        &self,
        destination: OutboxDestination,
        after: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.with_reader(|conn| {
            // No `LIMIT ?`: a bound LIMIT makes SQLite re-prepare the
            // statement on every bind. The `(destination, id)` index returns
            // rows in id order without a sort, so stepping only `limit` rows
            // is as cheap as a LIMIT. Measured (BENCHMARKS.md, section 6):
            // SQLite still re-prepares this statement once per call
            // (~85,000 instructions; the cause is not pinned down), so the
            // drainer keeps calls rare rather than relying on the cache.
            let mut stmt = conn.prepare_cached(
                "SELECT id, topic, payload, qos, retain, function, trace FROM outbox
                 WHERE destination = ?1 AND id > ?2 ORDER BY id",
            )?;
            let rows = stmt
                .query_map(params![destination as i64, after], |r| {
                    Ok(OutboxRow {
                        id: r.get(0)?,
                        destination,
                        topic: r.get(1)?,
                        payload: r.get(2)?,
                        qos: r.get::<_, i64>(3)? as u8,
                        retain: r.get(4)?,
                        function: r.get(5)?,
                        trace: r.get(6)?,
                    })
                })?
                .take(limit)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Starts keeping `destination`'s rows in memory as they are committed,
    /// for one consumer; returns its generation for [`Store::outbox_feed`].
    /// The consumer must then read the table up to its end before it relies
    /// on the feed (see [`feed`]).
    pub fn outbox_feed_start(&self, destination: OutboxDestination) -> u64 {
        lock(&self.inner.feeds)[destination as usize].start()
    }

    /// Up to `limit` rows committed for `destination` with ids above
    /// `after`, taken from memory; `None` when the feed stopped (overflow,
    /// `drop-oldest`, another consumer started it) and the table must be
    /// read with [`Store::outbox_after`].
    pub fn outbox_feed(
        &self,
        destination: OutboxDestination,
        generation: u64,
        after: i64,
        limit: usize,
    ) -> Option<Vec<OutboxRow>> {
        lock(&self.inner.feeds)[destination as usize].take(generation, after, limit)
    }

    /// Rows waiting per destination (for status and tests).
    pub fn outbox_len(&self, destination: OutboxDestination) -> Result<u64, StoreError> {
        self.with_reader(|conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM outbox WHERE destination = ?1",
                [destination as i64],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
    }

    /// Every schedule's last committed tick: (function, schedule, Unix ms),
    /// for the schedules to start from and `wasmgate schedules`.
    pub fn schedule_ticks(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT function, schedule, last_ms FROM schedules ORDER BY function, schedule",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// The change stream of `namespace` after `after`, oldest first.
    pub fn kv_changes_after(
        &self,
        namespace: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<KvChangeRow>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, key, old, new FROM kv_changes WHERE namespace = ?1 AND seq > ?2
                 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![namespace, after, limit as i64], |r| {
                    Ok(KvChangeRow {
                        seq: r.get(0)?,
                        key: r.get(1)?,
                        old: r.get(2)?,
                        new: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// A change stream consumer's settled position; `None` before its first
    /// start. And the stream's newest change, where a new consumer begins.
    pub fn kv_cursor(
        &self,
        consumer: &str,
        namespace: &str,
    ) -> Result<(Option<i64>, i64), StoreError> {
        self.with_reader(|conn| {
            let cursor = conn
                .prepare_cached("SELECT seq FROM kv_cursors WHERE consumer = ?1")?
                .query_row([consumer], |r| r.get(0))
                .optional()?;
            let newest = conn
                .prepare_cached(
                    "SELECT coalesce(max(seq), 0) FROM kv_changes WHERE namespace = ?1",
                )?
                .query_row([namespace], |r| r.get(0))?;
            Ok((cursor, newest))
        })
    }

    /// Every committed KV entry of `namespace` (operators' `wasmgate kv list`).
    pub fn kv_list(&self, namespace: &str) -> Result<Vec<KvEntry>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key, value, counter FROM kv WHERE namespace = ?1 ORDER BY key",
            )?;
            let rows = stmt
                .query_map([namespace], KvEntry::from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// One committed KV entry (operators' `wasmgate kv get`); unlike
    /// [`KvRead::get`] it says whether an increment wrote it.
    pub fn kv_entry(&self, namespace: &str, key: &str) -> Result<Option<KvEntry>, StoreError> {
        self.with_reader(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT key, value, counter FROM kv WHERE namespace = ?1 AND key = ?2",
                )?
                .query_row([namespace, key], KvEntry::from_row)
                .optional()?)
        })
    }

    /// Commits `effects` for `function` and waits for it: for operators'
    /// `wasmgate kv put|delete`, not the message path.
    pub fn commit_now(&self, function: &str, effects: Effects) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        self.submit(Commit {
            function: function.to_owned(),
            effects,
            dedup: Vec::new(),
            cursors: Vec::new(),
            trace: None,
            done: Box::new(move |result| {
                let _ = tx.send(result);
            }),
        });
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Waits until everything submitted so far is committed (or `timeout`).
    pub fn flush(&self, timeout: Duration) -> bool {
        self.inner.pending.wait_idle(timeout)
    }

    /// Commits what is pending and stops the store thread.
    pub fn close(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.inner.room.notify_all();
        lock(&self.inner.submitter).tx = None;
        if let Some(handle) = lock(&self.inner.thread).take() {
            let _ = handle.join();
        }
    }

    /// The first request id of this run: request ids are unique across
    /// restarts (and across functions), as a Lambda request id is, because
    /// each opening of the store counts a run and a run's ids start at
    /// `run << 40` (a trillion per run).
    pub fn first_request_id(&self) -> u64 {
        (self.inner.run << 40) | 1
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = match lock(&self.inner.readers).pop() {
            Some(conn) => conn,
            None => open_reader(&self.inner.path)?,
        };
        let result = f(&mut conn);
        lock(&self.inner.readers).push(conn);
        result
    }
}

impl KvRead for Store {
    /// The committed value with every submitted-but-uncommitted write applied.
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        // Holding the overlay while reading keeps the store thread from
        // pruning writes between our snapshot and our look at the overlay.
        let overlay = lock(&self.inner.overlay);
        // One statement, so one snapshot holds both the value and the
        // sequence it is current to, without a BEGIN and COMMIT to parse and
        // run per read (a message reads two or three keys). `value` is NOT
        // NULL, so NULL means no such key.
        let read = self.with_reader(|conn| {
            let (value, seq) = conn
                .prepare_cached(
                    "SELECT (SELECT value FROM kv WHERE namespace = ?1 AND key = ?2), \
                            (SELECT value FROM meta WHERE key = 'committed_seq')",
                )?
                .query_row([namespace, key], |r| {
                    Ok((r.get::<_, Option<Vec<u8>>>(0)?, r.get::<_, i64>(1)?))
                })?;
            Ok((value, seq as u64))
        });
        let (value, seq) = read.map_err(|e| e.to_string())?;
        Ok(overlay.read(namespace, key, seq, value))
    }
}

/// Counts one more opening of the database and returns the count.
fn next_run(conn: &Connection) -> rusqlite::Result<u64> {
    let run: i64 = conn.query_row(
        "INSERT INTO meta (key, value) VALUES ('runs', 1)
         ON CONFLICT (key) DO UPDATE SET value = value + 1
         RETURNING value",
        [],
        |r| r.get(0),
    )?;
    // 24 bits of runs: after 16 million starts the count wraps, long after
    // any request id of the first runs is remembered anywhere.
    Ok(run as u64 & 0xff_ffff)
}

fn configure(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    // WAL: readers never block the writer, and a commit is one sequential write.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "SQLite refused WAL mode; commits will be slower");
    }
    conn.pragma_update(
        None,
        "synchronous",
        match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    // Check the file is a database we can read now, not at the first commit.
    conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })?;
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn outbox_bytes(conn: &Connection) -> rusqlite::Result<[u64; 3]> {
    let mut bytes = [0u64; 3];
    let mut stmt = conn.prepare(
        "SELECT destination, SUM(length(topic) + length(payload)) FROM outbox GROUP BY destination",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (destination, sum) = row?;
        if let Some(slot) = bytes.get_mut(destination as usize) {
            *slot = sum as u64;
        }
    }
    Ok(bytes)
}

fn committed_seq(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = 'committed_seq'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|v| v as u64)
}

/// Turns SQLite's terse codes into something an operator can act on.
fn explain(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(NotADatabase) => format!("{e}: the file is not a wasmgate database (or is corrupt); nothing was changed. Move it aside to start afresh"),
        Some(DatabaseCorrupt) => format!("{e}: the database is corrupt; nothing was changed. Restore a backup or move it aside"),
        Some(DatabaseBusy) | Some(DatabaseLocked) => format!("{e}: another process holds the database (is another wasmgate running on this data_dir?)"),
        Some(DiskFull) => format!("{e}: the disk is full"),
        Some(ReadOnly) | Some(CannotOpen) | Some(PermissionDenied) => format!("{e}: check the data_dir's permissions"),
        _ => e.to_string(),
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A counting semaphore for blocking threads (std has none).
struct Permits {
    state: Mutex<usize>,
    max: usize,
    changed: Condvar,
}

impl Permits {
    fn new(max: usize) -> Self {
        Permits {
            state: Mutex::new(0),
            max: max.max(1),
            changed: Condvar::new(),
        }
    }

    fn acquire(&self) {
        let mut used = lock(&self.state);
        while *used >= self.max {
            used = self
                .changed
                .wait(used)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *used += 1;
    }

    fn release(&self, n: usize) {
        let mut used = lock(&self.state);
        *used = used.saturating_sub(n);
        self.changed.notify_all();
    }

    fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut used = lock(&self.state);
        while *used > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            used = self
                .changed
                .wait_timeout(used, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// One group commit's requests: `first`, then what else is queued, up to
/// `max`, after sleeping out `window`. Sleeping, rather than waiting in
/// `recv_timeout`, lets the requests pile up without waking the store
/// thread for each and without costing each sender a futex wake: one context
/// switch per batch, not per message. After a `backlog` (the last batch
/// stopped at `max` with more waiting) the next batch is full already, so it
/// does not wait.
fn next_batch<T>(
    first: T,
    rx: &mpsc::Receiver<T>,
    window: Duration,
    max: usize,
    backlog: bool,
    sleep: impl FnOnce(Duration),
) -> Vec<T> {
    let mut batch = vec![first];
    if !backlog && !window.is_zero() {
        sleep(window);
    }
    while batch.len() < max {
        match rx.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
    batch
}

/// The thread that owns the write connection.
struct StoreThread {
    conn: Connection,
    inner: Arc<Inner>,
    options: StoreOptions,
    last_dedup_prune: Instant,
    /// The last outbox id this store inserted, to notice rows another
    /// process (`wasmgate dlq replay`) inserted in between.
    last_outbox_id: Option<i64>,
    /// Spans in the table as of the last commit; read in the first
    /// transaction that writes spans.
    spans_waiting: Option<u64>,
}

impl StoreThread {
    fn new(conn: Connection, inner: Arc<Inner>, options: StoreOptions) -> Self {
        StoreThread {
            conn,
            inner,
            options,
            // Prune on the first commit after a start.
            last_dedup_prune: Instant::now() - Duration::from_secs(3_600),
            last_outbox_id: None,
            spans_waiting: None,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Request>) {
        let max = self.options.group_commit_max.max(1);
        let mut backlog = false;
        while let Ok(first) = rx.recv() {
            let window = match &first {
                Request::Commit { urgent: true, .. } => Duration::ZERO,
                _ => self.options.group_commit_delay,
            };
            let batch = next_batch(first, &rx, window, max, backlog, std::thread::sleep);
            backlog = batch.len() == max;
            self.commit_until_done(batch);
        }
        tracing::debug!("store thread stopped");
    }

    /// Commits the batch, retrying with backoff while the disk refuses (full,
    /// I/O errors): nothing is acked meanwhile, so the pipeline stalls and
    /// the broker holds the messages, and nothing is lost.
    fn commit_until_done(&mut self, batch: Vec<Request>) {
        let lines = std::mem::take(&mut lock(&self.inner.logs).lines);
        let spans = std::mem::take(&mut *lock(&self.inner.spans));
        // A wake-up for lines an earlier transaction already took.
        if lines.is_empty() && spans.is_empty() && batch.iter().all(|r| matches!(r, Request::Logs))
        {
            return;
        }
        let mut delay = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            match self.write(&batch, &lines, &spans) {
                Ok(written) => {
                    let stats = &self.inner.stats;
                    stats.commit_seconds.record(started.elapsed());
                    let commits = batch
                        .iter()
                        .filter(|r| matches!(r, Request::Commit { .. }))
                        .count();
                    if commits > 0 {
                        stats.commit_size.record_count(commits as u64);
                    }
                    stats
                        .log_lines_written
                        .fetch_add(lines.len() as u64, Ordering::Relaxed);
                    stats
                        .spans_dropped
                        .fetch_add(written.spans_dropped, Ordering::Relaxed);
                    if written.spans_waiting.is_some() {
                        self.spans_waiting = written.spans_waiting;
                    }
                    self.finish(batch, Ok(()), written);
                    return;
                }
                Err(e) => {
                    self.inner.stats.failures.fetch_add(1, Ordering::Relaxed);
                    if self.inner.closing.load(Ordering::SeqCst) {
                        tracing::error!(error = %explain(&e), "commit failed at shutdown; those messages stay unacknowledged");
                        self.finish(batch, Err(StoreError::Sqlite(e)), Written::default());
                        return;
                    }
                    tracing::error!(error = %explain(&e), retry_in = ?delay, "commit failed; retrying (messages stay unacknowledged until it succeeds)");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One transaction for the whole batch.
    fn write(
        &mut self,
        batch: &[Request],
        lines: &[logs::NewLogLine],
        spans: &spans::Buffer,
    ) -> rusqlite::Result<Written> {
        let now = now_ms();
        let mut written = Written::default();
        let mut max_seq = None;
        // IMMEDIATE: take the write lock first, waiting (busy_timeout) while
        // another process (`wasmgate kv put`, `dlq replay`) holds it. A
        // deferred transaction reads first (increments do) and, when that
        // process commits before our first write, fails with a stale
        // snapshot (SQLITE_BUSY_SNAPSHOT, which no timeout waits out): a
        // retry, a logged error and 100 ms lost for every message behind it.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut get =
                tx.prepare_cached("SELECT value FROM kv WHERE namespace = ?1 AND key = ?2")?;
            let mut put = tx.prepare_cached(
                "INSERT INTO kv (namespace, key, value, updated_ms, counter) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms, counter = excluded.counter",
            )?;
            let mut delete =
                tx.prepare_cached("DELETE FROM kv WHERE namespace = ?1 AND key = ?2")?;
            let mut outbox = tx.prepare_cached(
                "INSERT INTO outbox (destination, topic, payload, qos, retain, function, created_ms, trace)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            // A delivered row's size, then its delete: two statements, not
            // one `DELETE ... RETURNING`. SQLite runs RETURNING as a trigger,
            // and a statement with a trigger keeps a statement journal, a
            // copy of every page it changes, in case it must undo itself:
            // about 14,000 instructions a row more (callgrind, 32-row batches
            // of deletes in one transaction), once per message delivered.
            let mut sized = tx.prepare_cached(
                "SELECT destination, length(topic) + length(payload) FROM outbox WHERE id = ?1",
            )?;
            let mut unbox = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
            let mut unbox_row = |id: i64| {
                let row = sized
                    .query_row([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                    .optional()?;
                if let Some((destination, bytes)) = row {
                    unbox.execute([id])?;
                    written.removed[destination as usize % 3] += bytes as u64;
                    written.deleted += 1;
                }
                Ok::<(), rusqlite::Error>(())
            };
            let mut schedule = tx.prepare_cached(
                "INSERT INTO schedules (function, schedule, last_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (function, schedule) DO UPDATE SET last_ms = max(last_ms, excluded.last_ms)",
            )?;
            let mut stream_cursor = tx.prepare_cached(
                "INSERT INTO kv_cursors (consumer, namespace, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (consumer) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?;
            let mut stream_prune = tx.prepare_cached(
                "DELETE FROM kv_changes WHERE namespace = ?1
                 AND seq <= (SELECT min(seq) FROM kv_cursors WHERE namespace = ?1)",
            )?;
            let mut change = tx.prepare_cached(
                "INSERT INTO kv_changes (namespace, key, old, new, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            // Held for the transaction: only `apply` writes it.
            let streams = self
                .inner
                .kv_streams
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let mut advance = |cursor: &Cursor| match cursor {
                Cursor::KvStream {
                    consumer,
                    namespace,
                    seq,
                } => {
                    stream_cursor.execute(params![consumer, namespace, seq])?;
                    stream_prune.execute([namespace]).map(drop)
                }
                Cursor::OutboxRow(id) => unbox_row(*id),
                Cursor::Schedule {
                    function,
                    schedule: name,
                    scheduled_ms,
                } => schedule
                    .execute(params![function, name, scheduled_ms])
                    .map(drop),
            };
            let mut seen = tx.prepare_cached(
                "INSERT INTO dedup (function, key, seen_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (function, key) DO UPDATE SET seen_ms = excluded.seen_ms",
            )?;
            let mut add_row = |destination: OutboxDestination,
                               topic: &str,
                               payload: &[u8],
                               qos: u8,
                               retain: bool,
                               function: &str,
                               trace: Option<&str>| {
                outbox.execute(params![
                    destination as i64,
                    topic,
                    payload,
                    qos,
                    retain,
                    function,
                    now,
                    trace
                ])?;
                // Kept whether or not the feed is on now: it may be started
                // before this commit finishes, and must then get these rows.
                written.fed[destination as usize].push(OutboxRow {
                    id: tx.last_insert_rowid(),
                    destination,
                    topic: topic.to_owned(),
                    payload: payload.to_vec(),
                    qos,
                    retain,
                    function: function.to_owned(),
                    trace: trace.map(str::to_owned),
                });
                written.added[destination as usize] += (topic.len() + payload.len()) as u64;
                if !written.destinations.contains(&destination) {
                    written.destinations.push(destination);
                }
                Ok::<(), rusqlite::Error>(())
            };
            for request in batch {
                match request {
                    Request::Commit {
                        seq,
                        commit,
                        resolves,
                        ..
                    } => {
                        max_seq = Some(*seq);
                        if let Some(id) = resolves {
                            tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
                        }
                        for cursor in &commit.cursors {
                            advance(cursor)?;
                        }
                        let ns = commit.function.as_str();
                        for id in &commit.dedup {
                            seen.execute(params![ns, id, now])?;
                        }
                        let streamed = streams.iter().any(|s| s == ns);
                        for (key, write) in &commit.effects.kv {
                            // An increment adds to what is there; the change
                            // stream keeps the value before.
                            let current = if streamed || matches!(write, KvWrite::Add(_)) {
                                get.query_row(params![ns, key], |r| r.get::<_, Vec<u8>>(0))
                                    .optional()?
                            } else {
                                None
                            };
                            let new = write.apply(current.as_deref());
                            if streamed && (current.is_some() || new.is_some()) {
                                change.execute(params![ns, key, current, new, now])?;
                            }
                            match new {
                                Some(value) => put.execute(params![
                                    ns,
                                    key,
                                    value,
                                    now,
                                    matches!(write, KvWrite::Add(_))
                                ])?,
                                None => delete.execute(params![ns, key])?,
                            };
                        }
                        for emit in &commit.effects.emits {
                            let o = emit.options;
                            add_row(
                                o.destination.into(),
                                &emit.topic,
                                &emit.payload,
                                o.qos,
                                o.retain,
                                ns,
                                commit.trace.as_deref(),
                            )?;
                        }
                        for invoke in &commit.effects.invokes {
                            // An invoke row's `retain` marks a whole event.
                            add_row(
                                OutboxDestination::Invoke,
                                &invoke.function,
                                &invoke.payload,
                                1,
                                invoke.whole_event,
                                ns,
                                commit.trace.as_deref(),
                            )?;
                        }
                    }
                    Request::DeadLetters { op, .. } => {
                        if let dead_letters::DeadLetterOp::Insert(letter) = op {
                            if let Some(cursor) = &letter.cursor {
                                advance(cursor)?;
                            }
                        }
                        let applied = dead_letters::apply(&tx, op)?;
                        if let Some((topic, payload, function)) = &applied.publish {
                            add_row(
                                OutboxDestination::Local,
                                topic,
                                payload,
                                1,
                                false,
                                function,
                                None,
                            )?;
                        }
                        if matches!(op, dead_letters::DeadLetterOp::Insert(_)) {
                            written.dead_letters += 1;
                        }
                        written.replies.push(applied.result);
                        written.dead_letters_dropped.extend(applied.dropped);
                    }
                    Request::DeleteOutbox { ids, .. } => {
                        for id in ids {
                            advance(&Cursor::OutboxRow(*id))?;
                        }
                    }
                    Request::Logs => {}
                    Request::Usage { rows, .. } => usage::write(&tx, rows)?,
                }
            }
        }
        logs::write(&tx, lines, self.options.log_keep)?;
        if !spans.is_empty() {
            let (dropped, waiting) =
                spans::write(&tx, spans, self.options.span_keep, self.spans_waiting)?;
            written.spans_dropped = dropped;
            written.spans_waiting = Some(waiting);
        }
        drop_oldest_over_budget(&self.inner, &self.options, &tx, &mut written)?;
        if let Some(seq) = max_seq.filter(|_| !self.options.operator) {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'committed_seq'",
                [seq as i64],
            )?;
        }
        // Forget old dedup ids now and then, in the same transaction.
        if self.last_dedup_prune.elapsed() > Duration::from_secs(60) {
            let horizon = now - self.inner.dedup_retention.as_millis() as i64;
            tx.execute("DELETE FROM dedup WHERE seen_ms < ?1", [horizon])?;
            self.last_dedup_prune = Instant::now();
        }
        tx.commit()?;
        Ok(written)
    }

    fn finish(
        &mut self,
        batch: Vec<Request>,
        result: Result<(), StoreError>,
        mut written: Written,
    ) {
        let inner = &self.inner;
        let mut seqs = Vec::new();
        let mut commits = Vec::new();
        let mut replies = Vec::new();
        let mut deleted = Vec::new();
        let mut usage_done = Vec::new();
        for request in batch {
            match request {
                Request::Commit { seq, commit, .. } => {
                    seqs.push(seq);
                    commits.push(commit);
                }
                Request::DeadLetters { reply, .. } => replies.push(reply),
                Request::DeleteOutbox { done, .. } => deleted.extend(done),
                Request::Logs => {}
                Request::Usage { done, .. } => usage_done.extend(done),
            }
        }
        {
            let mut overlay = lock(&inner.overlay);
            match (&result, seqs.iter().max()) {
                (Ok(()), Some(max)) => overlay.prune(*max),
                (Err(_), _) => overlay.discard(&seqs),
                _ => {}
            }
        }
        if result.is_ok() {
            let stats = &inner.stats;
            stats.transactions.fetch_add(1, Ordering::Relaxed);
            stats
                .commits
                .fetch_add(commits.len() as u64, Ordering::Relaxed);
            stats
                .outbox_written
                .fetch_add(written.added_rows(&commits), Ordering::Relaxed);
            stats
                .outbox_deleted
                .fetch_add(written.deleted, Ordering::Relaxed);
            stats
                .outbox_dropped
                .fetch_add(written.dropped.len() as u64, Ordering::Relaxed);
            stats
                .dead_letters
                .fetch_add(written.dead_letters, Ordering::Relaxed);
            stats
                .dead_letters_dropped
                .fetch_add(written.dead_letters_dropped.len() as u64, Ordering::Relaxed);
            for (id, function) in &written.dead_letters_dropped {
                tracing::warn!(
                    id,
                    function,
                    "dead-letter queue full: oldest dead letter deleted (dead_letters.keep)"
                );
            }
            for (id, destination, topic, function) in &written.dropped {
                tracing::warn!(
                    id,
                    ?destination,
                    topic,
                    function,
                    "outbox full: oldest message dropped (policy drop-oldest)"
                );
            }
            written.apply_to(&mut lock(&inner.outbox_bytes));
            // Before the wake-ups below, so a woken drainer finds the rows.
            let mut feeds = lock(&inner.feeds);
            for (_, destination, _, _) in &written.dropped {
                feeds[*destination as usize].stop();
            }
            // Ids come from one sequence in commit order, and one
            // transaction's are consecutive. A gap before this one's means
            // another process inserted rows the feeds never saw; a drainer
            // taking our later rows from memory would pass over theirs. So
            // every feed stops and the drainers read the table, in id order.
            let ids = written.fed.iter().flatten().map(|r| r.id);
            if let (Some(first), Some(last)) = (ids.clone().min(), ids.max()) {
                if self.last_outbox_id.is_none_or(|before| first != before + 1) {
                    feeds.iter_mut().for_each(Feed::stop);
                }
                self.last_outbox_id = Some(last);
            }
            for (feed, rows) in feeds.iter_mut().zip(std::mem::take(&mut written.fed)) {
                if !rows.is_empty() {
                    feed.push(rows);
                }
            }
            drop(feeds);
            if written.removed.iter().any(|&r| r > 0) {
                inner.room.notify_all();
            }
        }
        let n = commits.len() + replies.len();
        let outcome = || match &result {
            Ok(()) => Ok(()),
            Err(_) => Err(StoreError::Closed),
        };
        for commit in commits {
            inner.settle_pending_id(&commit, result.is_ok());
            (commit.done)(outcome());
        }
        for done in deleted {
            done(outcome());
        }
        if result.is_ok() {
            for done in usage_done {
                let _ = done.send(());
            }
        }
        for (i, reply) in replies.into_iter().enumerate() {
            reply(match &result {
                Ok(()) => Ok(written.replies.get(i).copied().unwrap_or(0)),
                Err(_) => Err(StoreError::Closed),
            });
        }
        inner.pending.release(n);
        if result.is_ok() && !written.destinations.is_empty() {
            for callback in lock(&inner.on_outbox).iter() {
                for d in &written.destinations {
                    callback(*d);
                }
            }
        }
    }
}

/// The `drop-oldest` policy: over budget, delete the oldest rows of the
/// destinations that allow it until the outbox fits again.
fn drop_oldest_over_budget(
    inner: &Inner,
    options: &StoreOptions,
    tx: &rusqlite::Transaction<'_>,
    written: &mut Written,
) -> rusqlite::Result<()> {
    let mut bytes = *lock(&inner.outbox_bytes);
    written.apply_to(&mut bytes);
    let policies = [
        (OutboxDestination::Local, options.local_when_full),
        (OutboxDestination::Upstream, options.upstream_when_full),
    ];
    let mut oldest = tx.prepare_cached(
        "DELETE FROM outbox WHERE id = (SELECT MIN(id) FROM outbox WHERE destination = ?1)
         RETURNING id, topic, function, length(topic) + length(payload)",
    )?;
    for (destination, policy) in policies {
        while policy == WhenFull::DropOldest
            && bytes.iter().sum::<u64>() > options.outbox_max_bytes
            && bytes[destination as usize] > 0
        {
            let Some((id, topic, function, size)) = oldest
                .query_row([destination as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .optional()?
            else {
                break;
            };
            bytes[destination as usize] = bytes[destination as usize].saturating_sub(size as u64);
            written.removed[destination as usize] += size as u64;
            written.dropped.push((id, destination, topic, function));
        }
    }
    Ok(())
}

/// What one transaction did to the outbox.
#[derive(Debug, Default)]
struct Written {
    /// Destinations that got new rows.
    destinations: Vec<OutboxDestination>,
    /// Bytes added and removed, per destination.
    added: [u64; 3],
    removed: [u64; 3],
    /// Rows deleted after delivery.
    deleted: u64,
    /// Rows dropped by `drop-oldest`: id, destination, topic, function.
    dropped: Vec<(i64, OutboxDestination, String, String)>,
    /// Dead letters inserted, and deleted past `keep`: (id, function).
    dead_letters: u64,
    dead_letters_dropped: Vec<(i64, String)>,
    /// Per dead-letter request, in batch order: its id or rows changed.
    replies: Vec<i64>,
    /// Spans dropped past `[tracing] keep`.
    spans_dropped: u64,
    /// Spans in the table after it, if it wrote or deleted any.
    spans_waiting: Option<u64>,
    /// Rows added, per destination, for the feeds.
    fed: [Vec<OutboxRow>; 3],
}

impl Written {
    /// Per-destination byte counts after this transaction.
    fn apply_to(&self, bytes: &mut [u64; 3]) {
        for ((b, added), removed) in bytes.iter_mut().zip(self.added).zip(self.removed) {
            *b = (*b + added).saturating_sub(removed);
        }
    }

    fn added_rows(&self, commits: &[Commit]) -> u64 {
        commits
            .iter()
            .map(|c| (c.effects.emits.len() + c.effects.invokes.len()) as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests;

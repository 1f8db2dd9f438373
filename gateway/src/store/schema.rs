//! The database layout and its migrations.
//!
//! Each migration runs once, in its own transaction, and is recorded in
//! `schema_migrations`; a database newer than this binary is refused rather
//! than guessed at.

use rusqlite::{params, Connection};

/// Migrations in order; index + 1 is the version.
const MIGRATIONS: &[&str] = &[
    // 1: KV, outbox, the committed sequence, and the dedup set.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('committed_seq', 0);

    CREATE TABLE kv (
        namespace  TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      BLOB NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (namespace, key)
    ) WITHOUT ROWID;

    -- Every emit (and fan-out invoke) waits here until delivered.
    -- destination: 0 local broker, 1 upstream, 2 invoke (topic = function).
    CREATE TABLE outbox (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        destination INTEGER NOT NULL,
        topic       TEXT NOT NULL,
        payload     BLOB NOT NULL,
        qos         INTEGER NOT NULL,
        retain      INTEGER NOT NULL,
        function    TEXT NOT NULL,
        created_ms  INTEGER NOT NULL
    );
    CREATE INDEX outbox_by_destination ON outbox (destination, id);

    -- Device-provided ids already processed, per function (exactly-once effects).
    CREATE TABLE dedup (
        function TEXT NOT NULL,
        key      TEXT NOT NULL,
        seen_ms  INTEGER NOT NULL,
        PRIMARY KEY (function, key)
    ) WITHOUT ROWID;
    CREATE INDEX dedup_by_age ON dedup (seen_ms);
    "#,
    // 2: the dead-letter queue: events that failed every attempt.
    r#"
    CREATE TABLE dead_letters (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        function    TEXT NOT NULL,
        -- The context's request_id: a replay is a retry of the same request.
        request_id  INTEGER NOT NULL,
        -- The module version of the last failed attempt.
        version     TEXT NOT NULL,
        -- The event's topic (or what orders it: an HTTP path, a schedule).
        topic       TEXT NOT NULL,
        event_kind  TEXT NOT NULL,
        -- The event exactly as the ABI encodes it (postcard `Event`).
        event       BLOB NOT NULL,
        -- The device-provided message id, recorded when a replay commits.
        dedup       TEXT,
        -- JSON array of {attempt, at_ms, kind, error}, oldest first.
        attempts    TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        -- When the last attempt (or replay) failed.
        failed_ms   INTEGER NOT NULL
    );
    CREATE INDEX dead_letters_by_function ON dead_letters (function, id);
    "#,
    // 3: whether a KV value was last written by an increment (1) or a put
    // (0), so that `wasmgate kv` shows a counter as a number and 8 bytes of
    // anything else as bytes. NULL: written before this version.
    r#"
    ALTER TABLE kv ADD COLUMN counter INTEGER;
    "#,
    // 4: each schedule's last tick, written in the transaction that commits
    // the tick's invocation (or its dead letter): a tick runs exactly once.
    r#"
    CREATE TABLE schedules (
        function TEXT NOT NULL,
        schedule TEXT NOT NULL,
        last_ms  INTEGER NOT NULL,
        PRIMARY KEY (function, schedule)
    );
    "#,
    // 5: the KV change stream: each committed write of a namespace that a
    // `kv_change` trigger watches, in commit order, with the value before
    // and after; and each consumer's cursor, moved in the transaction that
    // commits the change's invocation. Rows every consumer has passed go.
    r#"
    CREATE TABLE kv_changes (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        namespace TEXT NOT NULL,
        key       TEXT NOT NULL,
        old       BLOB,
        new       BLOB,
        at_ms     INTEGER NOT NULL
    );
    CREATE INDEX kv_changes_by_namespace ON kv_changes (namespace, seq);
    CREATE TABLE kv_cursors (
        consumer  TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        seq       INTEGER NOT NULL
    );
    "#,
    // 6: the function registry: every version published (its bytes are in
    // data_dir/modules/<version>.wasm), and where each alias points, with
    // the version it pointed at before (for a rollback) and the version the
    // config file named when the file last set it (who wins at a start).
    r#"
    CREATE TABLE versions (
        function     TEXT NOT NULL,
        version      TEXT NOT NULL,
        size         INTEGER NOT NULL,
        published_ms INTEGER NOT NULL,
        source       TEXT NOT NULL,
        PRIMARY KEY (function, version)
    ) WITHOUT ROWID;
    CREATE TABLE aliases (
        function    TEXT NOT NULL,
        alias       TEXT NOT NULL,
        version     TEXT NOT NULL,
        previous    TEXT,
        other       TEXT,
        weight      REAL,
        from_config TEXT,
        moved_ms    INTEGER NOT NULL,
        PRIMARY KEY (function, alias)
    ) WITHOUT ROWID;
    "#,
    // 7: who published a version (the unix user on the management socket,
    // the API token's peer, the config file) and the ABI revision it knows.
    r#"
    ALTER TABLE versions ADD COLUMN published_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE versions ADD COLUMN abi_revision INTEGER NOT NULL DEFAULT 0;
    "#,
    // 8: functions' log lines, a ring of the newest (store/logs.rs), and
    // their usage per hour.
    // level: 0 error .. 4 trace (the ABI's codes).
    r#"
    CREATE TABLE logs (
        id         INTEGER PRIMARY KEY,
        at_ms      INTEGER NOT NULL,
        function   TEXT NOT NULL,
        version    TEXT NOT NULL,
        request_id INTEGER NOT NULL,
        level      INTEGER NOT NULL,
        trigger    TEXT NOT NULL,
        message    TEXT NOT NULL
    );
    CREATE INDEX logs_by_function ON logs (function, id);

    -- What each version's invocations used, per hour (store/usage.rs),
    -- for `wasmgate cost`. duration_buckets: the run-time histogram's
    -- counts, 8 bytes little-endian each.
    CREATE TABLE usage (
        function         TEXT NOT NULL,
        version          TEXT NOT NULL,
        hour_ms          INTEGER NOT NULL,
        invocations      INTEGER NOT NULL,
        failed           INTEGER NOT NULL,
        duration_us      INTEGER NOT NULL,
        max_duration_us  INTEGER NOT NULL,
        fuel             INTEGER NOT NULL,
        max_fuel         INTEGER NOT NULL,
        peak_memory      INTEGER NOT NULL,
        memory_limit     INTEGER NOT NULL,
        fuel_limit       INTEGER NOT NULL,
        duration_buckets BLOB NOT NULL,
        PRIMARY KEY (function, version, hour_ms)
    ) WITHOUT ROWID;
    "#,
    // 9: trace context. An outbox row keeps the span that emitted it
    // (traceparent, and tracestate on a second line); spans wait for the
    // OTLP collector in a table of their own (store/spans.rs): encoded
    // OTLP Span messages.
    r#"
    ALTER TABLE outbox ADD COLUMN trace TEXT;
    CREATE TABLE spans (
        -- AUTOINCREMENT: exported spans are deleted, the newest too, and
        -- the exporter reads on from the last id it sent.
        id   INTEGER PRIMARY KEY AUTOINCREMENT,
        body BLOB NOT NULL
    );
    "#,
    // 10: spans in one row per transaction (store/spans.rs), framed as
    // OTLP ScopeSpans.spans fields; `count` spans each. The rows of 9 come
    // along with `count` 0: one span, unframed. AUTOINCREMENT carries on
    // past their ids, so an exporter's place stays meaningful.
    r#"
    CREATE TABLE span_batches (
        id    INTEGER PRIMARY KEY AUTOINCREMENT,
        count INTEGER NOT NULL,
        body  BLOB NOT NULL
    );
    INSERT INTO span_batches (id, count, body) SELECT id, 0, body FROM spans;
    DROP TABLE spans;
    "#,
    // 11: `wasmgate logs --request ID` finds its lines without reading the
    // whole ring.
    "CREATE INDEX logs_by_request ON logs (request_id);",
    // 12: rollouts (rollout.rs): a canary's or linear deploy's state, so a
    // restart during its window rolls it back instead of leaving it split.
    r#"
    CREATE TABLE deployments (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        function     TEXT NOT NULL,
        from_version TEXT NOT NULL,
        to_version   TEXT NOT NULL,
        strategy     TEXT NOT NULL,
        started_ms   INTEGER NOT NULL,
        ended_ms     INTEGER,
        state        TEXT NOT NULL,
        share        REAL NOT NULL,
        reason       TEXT,
        figures      TEXT
    );
    "#,
    // 13: signed bundles taken (bundle.rs), the newest per function: an
    // older one, or another with the same sequence, is a replay; and the
    // fleet's jobs (fleet.rs).
    r#"
    CREATE TABLE bundles (
        function    TEXT PRIMARY KEY,
        sequence    INTEGER NOT NULL,
        digest      TEXT NOT NULL,
        signer      TEXT NOT NULL,
        version     TEXT NOT NULL,
        accepted_ms INTEGER NOT NULL
    );
    -- Fleet jobs (fleet.rs): recorded before the job service hears of
    -- them, so a job survives a kill -9 and is reported once back.
    CREATE TABLE fleet_jobs (
        job_id     TEXT PRIMARY KEY,
        document   TEXT NOT NULL,
        state      TEXT NOT NULL,
        deployment INTEGER,
        details    TEXT NOT NULL DEFAULT '{}',
        reported   INTEGER NOT NULL DEFAULT 0,
        updated_ms INTEGER NOT NULL
    );
    "#,
];

/// The version this binary writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("the database is at schema version {found}, newer than this wasmgate ({supported}); upgrade wasmgate or use another data_dir")]
    TooNew { found: i64, supported: i64 },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Brings the database to [`VERSION`]; returns the version it found.
pub fn migrate(conn: &mut Connection) -> Result<i64, MigrationError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            applied_ms INTEGER NOT NULL
        )",
    )?;
    let found: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )?;
    if found > VERSION {
        return Err(MigrationError::TooNew {
            found,
            supported: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
            params![version, super::now_ms()],
        )?;
        tx.commit()?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        assert_eq!(migrate(&mut conn).unwrap(), VERSION);
        let seq: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'committed_seq'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seq, 0);
    }

    #[test]
    fn spans_kept_one_per_row_come_along_to_the_batched_table() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
        )
        .unwrap();
        for (i, sql) in MIGRATIONS[..9].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?1, 0)",
                [i as i64 + 1],
            )
            .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO spans (body) VALUES (x'01'), (x'0203'); DELETE FROM spans WHERE id = 1;",
        )
        .unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 9);
        let rows: Vec<(i64, i64, Vec<u8>)> = conn
            .prepare("SELECT id, count, body FROM span_batches")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [(2, 0, vec![2, 3])]);
        // Ids go on past the old ones.
        conn.execute(
            "INSERT INTO span_batches (count, body) VALUES (1, x'00')",
            [],
        )
        .unwrap();
        assert_eq!(conn.last_insert_rowid(), 3);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute("INSERT INTO schema_migrations VALUES (99, 0)", [])
            .unwrap();
        let error = migrate(&mut conn).unwrap_err();
        assert!(
            matches!(error, MigrationError::TooNew { found: 99, .. }),
            "{error}"
        );
    }
}

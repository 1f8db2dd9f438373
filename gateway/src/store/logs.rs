//! Functions' log lines, kept in a bounded ring in the database so that
//! `wasmgate logs NAME` (like `sam logs`) and the dashboard read them while
//! the gateway runs and after it restarts, without a log shipper.
//!
//! Lines never wait for the disk: [`Store::log`] puts them in a bounded
//! buffer (a full one drops and counts them) and the store thread writes
//! the buffer in its next transaction, sharing the fsync of the group
//! commit it would do anyway. The ring keeps the newest `keep` rows: each
//! transaction that adds lines deletes those that fell off its end, by id
//! (a range of the primary key, so pruning costs what inserting does).

use super::{lock, now_ms, Request, Store, StoreError};
use rusqlite::{params, Transaction};
use wasmgate_abi::LogLevel;

/// Lines waiting for the store thread at most; past it they are dropped
/// (counted in [`super::StoreStats::log_lines_dropped`]). At the default
/// rate limit (100 lines a second per function) that is seconds of every
/// function logging at once while the disk stalls.
pub(super) const MAX_BUFFERED: usize = 4_096;

/// One log line from an invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLogLine {
    pub at_ms: i64,
    pub function: String,
    pub version: String,
    pub request_id: u64,
    pub level: LogLevel,
    /// What started the invocation: its topic, route, schedule, or the
    /// function that invoked it.
    pub trigger: String,
    pub message: String,
}

/// A stored log line, as `wasmgate logs --json` and `/v1/logs` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogEntry {
    /// Increases with every line: `--follow` and the dashboard ask for
    /// the lines after the last one they saw.
    pub id: i64,
    pub at_ms: i64,
    pub function: String,
    pub version: String,
    pub request_id: u64,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    pub trigger: String,
    pub message: String,
}

/// Which lines to read; every field narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub function: Option<String>,
    /// Lines with an id above this one.
    pub after: Option<i64>,
    /// Lines at or after this time, Unix milliseconds.
    pub since_ms: Option<i64>,
    pub request_id: Option<u64>,
    /// This level and the more severe ones.
    pub level: Option<LogLevel>,
    /// The newest this many of the lines that match (returned oldest first).
    pub limit: u32,
    /// The *oldest* `limit` instead: a follower reading on from `after`
    /// takes every line in order, however many came since (the newest
    /// would skip the rest of a burst). `order=oldest` in the API.
    pub oldest_first: bool,
}

impl LogQuery {
    /// The query as `/v1/logs` takes it: `?function=..&after=..&since_ms=..&request=..&level=..&limit=..`.
    pub fn to_query_string(&self) -> String {
        let mut parts = vec![format!("limit={}", self.limit)];
        if let Some(f) = &self.function {
            let encoded: String = f
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            parts.push(format!("function={encoded}"));
        }
        if let Some(after) = self.after {
            parts.push(format!("after={after}"));
        }
        if let Some(since) = self.since_ms {
            parts.push(format!("since_ms={since}"));
        }
        if let Some(id) = self.request_id {
            parts.push(format!("request={id}"));
        }
        if let Some(level) = self.level {
            parts.push(format!("level={}", level_name(level)));
        }
        if self.oldest_first {
            parts.push("order=oldest".to_owned());
        }
        parts.join("&")
    }

    /// [`LogQuery::to_query_string`] read back (already percent-decoded);
    /// what does not parse is named, for a 400.
    pub fn from_params(
        params: &std::collections::HashMap<String, String>,
    ) -> Result<LogQuery, String> {
        fn number<T: std::str::FromStr>(
            params: &std::collections::HashMap<String, String>,
            name: &str,
        ) -> Result<Option<T>, String> {
            params
                .get(name)
                .map(|v| {
                    v.parse()
                        .map_err(|_| format!("{name}={v:?}: expected a whole number"))
                })
                .transpose()
        }
        for name in params.keys() {
            if ![
                "function", "after", "since_ms", "request", "level", "limit", "order",
            ]
            .contains(&name.as_str())
            {
                return Err(format!(
                    "unknown parameter {name:?} (function, after, since_ms, request, level, limit, order)"
                ));
            }
        }
        let oldest_first = match params.get("order").map(String::as_str) {
            None | Some("newest") => false,
            Some("oldest") => true,
            Some(other) => return Err(format!("order={other:?}: expected newest or oldest")),
        };
        let level = params
            .get("level")
            .map(|l| {
                parse_level(l).ok_or_else(|| {
                    format!("level={l:?}: expected error, warn, info, debug or trace")
                })
            })
            .transpose()?;
        Ok(LogQuery {
            function: params.get("function").cloned(),
            after: number(params, "after")?,
            since_ms: number(params, "since_ms")?,
            request_id: number(params, "request")?,
            level,
            limit: number(params, "limit")?.unwrap_or(DEFAULT_QUERY_LINES),
            oldest_first,
        })
    }
}

/// [`LogQuery::limit`] when none is given.
pub const DEFAULT_QUERY_LINES: u32 = 100;

/// The largest [`LogQuery::limit`] answered; a larger one is cut to it.
pub const MAX_QUERY_LINES: u32 = 10_000;

pub fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

/// A level by its name, as `--level` and `?level=` take it.
pub fn parse_level(name: &str) -> Option<LogLevel> {
    Some(match name.to_ascii_lowercase().as_str() {
        "error" => LogLevel::Error,
        "warn" | "warning" => LogLevel::Warn,
        "info" => LogLevel::Info,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => return None,
    })
}

/// The lines waiting for the store thread.
#[derive(Debug, Default)]
pub(super) struct Buffer {
    pub lines: Vec<NewLogLine>,
}

impl Store {
    /// Keeps a function's log lines in the ring, from the next transaction
    /// on. Never blocks: with the buffer full (the disk stalled), the
    /// lines are dropped and counted. A ring of size 0 keeps nothing.
    pub fn log(&self, lines: impl IntoIterator<Item = NewLogLine>) {
        if self.inner.log_keep == 0 {
            return;
        }
        let wake = {
            let mut buffer = lock(&self.inner.logs);
            let was_empty = buffer.lines.is_empty();
            for line in lines {
                if buffer.lines.len() >= MAX_BUFFERED {
                    self.inner
                        .stats
                        .log_lines_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    buffer.lines.push(line);
                }
            }
            was_empty && !buffer.lines.is_empty()
        };
        // One wake-up per batch of lines: the thread takes the whole buffer.
        if wake {
            if let Some(tx) = &lock(&self.inner.submitter).tx {
                let _ = tx.send(Request::Logs);
            }
        }
    }

    /// Log lines, oldest first.
    pub fn logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
        self.with_reader(|conn| read(conn, query).map_err(StoreError::Sqlite))
    }
}

/// Writes the buffered lines and drops those past the ring's size.
pub(super) fn write(tx: &Transaction<'_>, lines: &[NewLogLine], keep: u32) -> rusqlite::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO logs (at_ms, function, version, request_id, level, trigger, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for line in lines {
        insert.execute(params![
            line.at_ms,
            line.function,
            line.version,
            line.request_id as i64,
            line.level.code(),
            line.trigger,
            line.message
        ])?;
    }
    // Ids only grow (the newest row is never deleted), so the ring is the
    // last `keep` ids.
    tx.prepare_cached("DELETE FROM logs WHERE id <= ?1")?
        .execute([tx.last_insert_rowid() - i64::from(keep)])?;
    Ok(())
}

/// The query for `q`'s filters. A filter is in the text only when it is
/// set: `(?1 IS NULL OR function = ?1)` would keep SQLite from using the
/// indexes by function and by request id, and `logs --request` would read
/// the whole ring. Every parameter stays bound either way.
fn query_sql(q: &LogQuery) -> String {
    let function = match q.function {
        Some(_) => "function = ?1",
        None => "?1 IS NULL",
    };
    let request = match q.request_id {
        Some(_) => "request_id = ?4",
        None => "?4 IS NULL",
    };
    format!(
        "SELECT id, at_ms, function, version, request_id, level, trigger, message FROM logs
         WHERE {function} AND {request}
           AND id > ?2
           AND at_ms >= ?3
           AND level <= ?5
         ORDER BY id {order} LIMIT ?6",
        order = if q.oldest_first { "ASC" } else { "DESC" }
    )
}

fn read(conn: &rusqlite::Connection, q: &LogQuery) -> rusqlite::Result<Vec<LogEntry>> {
    let limit = q.limit.clamp(1, MAX_QUERY_LINES);
    // The newest `limit` that match, turned oldest first below.
    let mut statement = conn.prepare_cached(&query_sql(q))?;
    let rows = statement.query_map(
        params![
            q.function,
            q.after.unwrap_or(0),
            q.since_ms.unwrap_or(i64::MIN),
            q.request_id.map(|id| id as i64),
            q.level.unwrap_or(LogLevel::Trace).code(),
            limit
        ],
        |r| {
            let level: i32 = r.get(5)?;
            Ok(LogEntry {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                function: r.get(2)?,
                version: r.get(3)?,
                request_id: r.get::<_, i64>(4)? as u64,
                level: LogLevel::from_code(level)
                    .map_or("?", level_name)
                    .to_owned(),
                trigger: r.get(6)?,
                message: r.get(7)?,
            })
        },
    )?;
    let mut lines = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    if !q.oldest_first {
        lines.reverse();
    }
    Ok(lines)
}

/// A line as the gateway writes it now.
pub fn line(
    function: &str,
    version: &str,
    request_id: u64,
    level: LogLevel,
    trigger: &str,
    message: &str,
) -> NewLogLine {
    NewLogLine {
        at_ms: now_ms(),
        function: function.to_owned(),
        version: version.to_owned(),
        request_id,
        level,
        trigger: trigger.to_owned(),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions};

    fn store(dir: &tempfile::TempDir, keep: u32) -> Store {
        let mut options = StoreOptions::new(dir.path().join("wasmgate.db"));
        options.log_keep = keep;
        Store::open(options).expect("opens")
    }

    fn wait_for(store: &Store, q: &LogQuery, n: usize) -> Vec<LogEntry> {
        for _ in 0..500 {
            let lines = store.logs(q).expect("reads");
            if lines.len() >= n {
                return lines;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        store.logs(q).expect("reads")
    }

    fn all() -> LogQuery {
        LogQuery {
            limit: MAX_QUERY_LINES,
            ..LogQuery::default()
        }
    }

    /// SQLite's plan for `q`, one line per step.
    fn plan(conn: &rusqlite::Connection, q: &LogQuery) -> String {
        let mut explain = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", query_sql(q)))
            .unwrap();
        let rows = explain
            .query_map(params![None::<String>, 0, 0, None::<i64>, 0, 1], |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_query_by_request_or_function_uses_its_index() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut conn).unwrap();
        let by_request = LogQuery {
            request_id: Some(7),
            ..all()
        };
        assert!(
            plan(&conn, &by_request).contains("logs_by_request"),
            "{}",
            plan(&conn, &by_request)
        );
        let by_function = LogQuery {
            function: Some("f".into()),
            ..all()
        };
        assert!(
            plan(&conn, &by_function).contains("logs_by_function"),
            "{}",
            plan(&conn, &by_function)
        );
    }

    #[test]
    fn lines_are_kept_newest_last_and_the_ring_keeps_its_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir, 5);
        for i in 0..8u64 {
            store.log([line(
                "f",
                "v1",
                i,
                LogLevel::Info,
                "t/1",
                &format!("line {i}"),
            )]);
        }
        let mut lines = Vec::new();
        for _ in 0..500 {
            lines = store.logs(&all()).expect("reads");
            if lines.last().is_some_and(|l| l.message == "line 7") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let messages: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages, ["line 3", "line 4", "line 5", "line 6", "line 7"]);
        assert!(lines.windows(2).all(|w| w[0].id < w[1].id));
        store.close();
    }

    #[test]
    fn queries_narrow_by_function_request_level_and_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir, 100);
        store.log([
            line("a", "v1", 1, LogLevel::Info, "t", "a info"),
            line("a", "v1", 2, LogLevel::Error, "t", "a error"),
            line("b", "v2", 3, LogLevel::Warn, "t", "b warn"),
            line("b", "v2", 3, LogLevel::Debug, "t", "b debug"),
        ]);
        let lines = wait_for(&store, &all(), 4);
        assert_eq!(lines.len(), 4);
        let ask = |q: LogQuery| -> Vec<String> {
            store
                .logs(&q)
                .expect("reads")
                .into_iter()
                .map(|l| l.message)
                .collect()
        };
        let function = |f: &str| Some(f.to_owned());
        assert_eq!(
            ask(LogQuery {
                function: function("a"),
                ..all()
            }),
            ["a info", "a error"]
        );
        assert_eq!(
            ask(LogQuery {
                request_id: Some(3),
                ..all()
            }),
            ["b warn", "b debug"]
        );
        assert_eq!(
            ask(LogQuery {
                level: Some(LogLevel::Warn),
                ..all()
            }),
            ["a error", "b warn"]
        );
        assert_eq!(
            ask(LogQuery {
                after: Some(lines[2].id),
                ..all()
            }),
            ["b debug"]
        );
        // The newest `limit`, oldest first; or the oldest `limit`.
        assert_eq!(ask(LogQuery { limit: 2, ..all() }), ["b warn", "b debug"]);
        assert_eq!(
            ask(LogQuery {
                limit: 2,
                oldest_first: true,
                ..all()
            }),
            ["a info", "a error"]
        );
        assert_eq!(lines[1].level, "error");
        assert_eq!(
            (lines[2].version.as_str(), lines[2].trigger.as_str()),
            ("v2", "t")
        );
        store.close();
    }

    #[test]
    fn a_ring_of_zero_keeps_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir, 0);
        store.log([line("f", "v1", 1, LogLevel::Info, "t", "gone")]);
        assert!(store.flush(std::time::Duration::from_secs(5)));
        assert!(store.logs(&all()).expect("reads").is_empty());
        store.close();
    }

    #[test]
    fn the_query_string_reads_back() {
        let q = LogQuery {
            function: Some("vend ing".into()),
            after: Some(7),
            since_ms: Some(1_700_000_000_000),
            request_id: Some(42),
            level: Some(LogLevel::Warn),
            limit: 20,
            oldest_first: true,
        };
        let params: std::collections::HashMap<String, String> = q
            .to_query_string()
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("k=v");
                (k.to_owned(), v.replace("%20", " "))
            })
            .collect();
        assert_eq!(LogQuery::from_params(&params), Ok(q));
        let bad: std::collections::HashMap<String, String> =
            [("order".to_owned(), "random".to_owned())].into();
        assert!(LogQuery::from_params(&bad).unwrap_err().contains("order"));
        let bad: std::collections::HashMap<String, String> =
            [("level".to_owned(), "loud".to_owned())].into();
        assert!(LogQuery::from_params(&bad).unwrap_err().contains("level"));
        let unknown: std::collections::HashMap<String, String> =
            [("functon".to_owned(), "x".to_owned())].into();
        assert!(LogQuery::from_params(&unknown)
            .unwrap_err()
            .contains("functon"));
    }
}

//! The registry's records: versions published and where aliases point.
//! Written rarely (a deploy, a start), on a connection of their own beside
//! the store thread's (SQLite's WAL lets one writer in at a time; these
//! wait their turn with the busy timeout).

use super::{Store, StoreError};
use rusqlite::{params, Connection, OptionalExtension};

/// A version as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionRow {
    pub version: String,
    pub size: u64,
    pub published_ms: i64,
    /// Where it came from: the config's module path, or `api`.
    pub source: String,
    /// Who published it: `config file`, the unix user on the management
    /// socket, or `bearer token from <peer>` on TCP.
    pub published_by: String,
    /// The ABI revision the module knows (`wasmgate_abi::ABI_REVISION`).
    pub abi_revision: u32,
}

/// Where an alias points.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AliasRow {
    pub alias: String,
    pub version: String,
    /// What it pointed at before the last move: a rollback's target.
    pub previous: Option<String>,
    /// A second version taking `weight` of the events (a canary).
    pub other: Option<String>,
    pub weight: Option<f64>,
    /// The version the config file named when the file last set it.
    pub from_config: Option<String>,
    pub moved_ms: i64,
}

impl Store {
    pub(super) fn with_writer<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let conn = Connection::open(&self.inner.path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(f(&conn)?)
    }

    /// Forgets the cursors of change-stream consumers that no longer run
    /// (a `kv_change` trigger removed, or renamed by a trigger added before
    /// it): the oldest cursor of a namespace holds back its pruning, so a
    /// stale one would keep every later change of it. Returns how many.
    pub fn forget_kv_consumers(&self, running: &[String]) -> Result<usize, StoreError> {
        self.with_writer(|conn| {
            let known: Vec<String> = conn
                .prepare("SELECT consumer FROM kv_cursors")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut gone = 0;
            for consumer in known.iter().filter(|c| !running.contains(c)) {
                gone += conn.execute("DELETE FROM kv_cursors WHERE consumer = ?1", [consumer])?;
            }
            Ok(gone)
        })
    }

    /// Records a published version (again: keeps the first record).
    pub fn put_version(&self, function: &str, row: &VersionRow) -> Result<(), StoreError> {
        self.with_writer(|conn| {
            conn.execute(
                "INSERT INTO versions (function, version, size, published_ms, source,
                 published_by, abi_revision)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                params![
                    function,
                    row.version,
                    row.size as i64,
                    row.published_ms,
                    row.source,
                    row.published_by,
                    row.abi_revision
                ],
            )?;
            Ok(())
        })
    }

    /// Whether any function still has this version (its module file is
    /// shared by every function with the same bytes).
    pub fn version_known(&self, version: &str) -> Result<bool, StoreError> {
        self.with_reader(|conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM versions WHERE version = ?1 LIMIT 1")?
                .query_row([version], |_| Ok(()))
                .optional()?
                .is_some())
        })
    }

    /// A function's versions, newest first.
    pub fn versions(&self, function: &str) -> Result<Vec<VersionRow>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT version, size, published_ms, source, published_by, abi_revision FROM versions
                 WHERE function = ?1 ORDER BY published_ms DESC, version",
            )?;
            let rows = stmt
                .query_map([function], |r| {
                    Ok(VersionRow {
                        version: r.get(0)?,
                        size: r.get::<_, i64>(1)? as u64,
                        published_ms: r.get(2)?,
                        source: r.get(3)?,
                        published_by: r.get(4)?,
                        abi_revision: r.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    pub fn alias(&self, function: &str, alias: &str) -> Result<Option<AliasRow>, StoreError> {
        self.with_reader(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT alias, version, previous, other, weight, from_config, moved_ms
                     FROM aliases WHERE function = ?1 AND alias = ?2",
                )?
                .query_row([function, alias], |r| {
                    Ok(AliasRow {
                        alias: r.get(0)?,
                        version: r.get(1)?,
                        previous: r.get(2)?,
                        other: r.get(3)?,
                        weight: r.get(4)?,
                        from_config: r.get(5)?,
                        moved_ms: r.get(6)?,
                    })
                })
                .optional()?)
        })
    }

    /// Points `alias` at `version` (and `other` with its share, if any),
    /// keeping where it pointed as `previous` (unless that is `version`
    /// already). `from_config`: the file set it, naming this version.
    pub fn set_alias(
        &self,
        function: &str,
        alias: &str,
        version: &str,
        other: Option<(&str, f64)>,
        from_config: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (other, weight) = other.map_or((None, None), |(v, w)| (Some(v), Some(w)));
        self.with_writer(|conn| {
            conn.execute(
                "INSERT INTO aliases (function, alias, version, previous, other, weight, from_config, moved_ms)
                 VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, ?7)
                 ON CONFLICT (function, alias) DO UPDATE SET
                     previous = CASE WHEN aliases.version = excluded.version
                                     THEN aliases.previous ELSE aliases.version END,
                     version = excluded.version,
                     other = excluded.other,
                     weight = excluded.weight,
                     from_config = COALESCE(excluded.from_config, aliases.from_config),
                     moved_ms = excluded.moved_ms",
                params![function, alias, version, other, weight, from_config, now_ms],
            )?;
            Ok(())
        })
    }

    /// Forgets versions of `function` beyond the newest `keep`, except
    /// those in `in_use`; returns the ones forgotten (their files can go).
    pub fn prune_versions(
        &self,
        function: &str,
        keep: usize,
        in_use: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        let old: Vec<String> = self
            .versions(function)?
            .into_iter()
            .skip(keep)
            .map(|v| v.version)
            .filter(|v| !in_use.contains(&v.as_str()))
            .collect();
        if old.is_empty() {
            return Ok(old);
        }
        self.with_writer(|conn| {
            let mut delete =
                conn.prepare("DELETE FROM versions WHERE function = ?1 AND version = ?2")?;
            for version in &old {
                delete.execute([function, version.as_str()])?;
            }
            Ok(())
        })?;
        Ok(old)
    }
}

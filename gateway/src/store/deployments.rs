//! Rollouts' records (`rollout.rs`): one row per deploy with a strategy,
//! updated at each step and at its end; and the newest signed bundle taken
//! per function (`bundle.rs`). Written on a connection of their own, as the
//! registry's records are (`versions.rs`).

use super::{Store, StoreError};
use rusqlite::params;

/// A rollout as kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentRow {
    pub id: i64,
    pub function: String,
    pub from_version: String,
    pub to_version: String,
    pub strategy: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    /// `running`, `succeeded`, `rolled_back` or `superseded`.
    pub state: String,
    /// The new version's share of the events now (1 once it succeeded).
    pub share: f64,
    /// Why it rolled back or stopped.
    pub reason: Option<String>,
    /// The figures it was judged on, as JSON.
    pub figures: Option<String>,
}

const COLUMNS: &str = "id, function, from_version, to_version, strategy, started_ms, ended_ms, state, share, reason, figures";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeploymentRow> {
    Ok(DeploymentRow {
        id: r.get(0)?,
        function: r.get(1)?,
        from_version: r.get(2)?,
        to_version: r.get(3)?,
        strategy: r.get(4)?,
        started_ms: r.get(5)?,
        ended_ms: r.get(6)?,
        state: r.get(7)?,
        share: r.get(8)?,
        reason: r.get(9)?,
        figures: r.get(10)?,
    })
}

impl Store {
    /// Records a rollout that starts now; returns its id.
    pub fn start_deployment(
        &self,
        function: &str,
        from: &str,
        to: &str,
        strategy: &str,
        share: f64,
    ) -> Result<i64, StoreError> {
        self.with_writer(|conn| {
            conn.execute(
                "INSERT INTO deployments (function, from_version, to_version, strategy, started_ms, state, share)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6)",
                params![function, from, to, strategy, super::now_ms(), share],
            )?;
            Ok(conn.last_insert_rowid())
        })
    }

    /// A step, or the end (`state` other than `running`); a rollout that
    /// has ended is not changed again.
    pub fn update_deployment(
        &self,
        id: i64,
        state: &str,
        share: f64,
        reason: Option<&str>,
        figures: Option<&str>,
    ) -> Result<(), StoreError> {
        let ended = (state != "running").then(super::now_ms);
        self.with_writer(|conn| {
            conn.execute(
                "UPDATE deployments SET state = ?2, share = ?3, reason = COALESCE(?4, reason),
                 figures = COALESCE(?5, figures), ended_ms = ?6 WHERE id = ?1 AND state = 'running'",
                params![id, state, share, reason, figures, ended],
            )?;
            Ok(())
        })
    }

    /// Rollouts, newest first: a function's, or all; at most `limit`.
    pub fn deployments(
        &self,
        function: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeploymentRow>, StoreError> {
        self.with_writer(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deployments WHERE ?1 IS NULL OR function = ?1
                 ORDER BY id DESC LIMIT ?2"
            ))?
            .query_map(params![function, limit], row)?
            .collect()
        })
    }

    /// Rollouts a stop interrupted.
    pub fn running_deployments(&self) -> Result<Vec<DeploymentRow>, StoreError> {
        self.with_writer(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deployments WHERE state = 'running' ORDER BY id"
            ))?
            .query_map([], row)?
            .collect()
        })
    }

    /// The newest bundle taken for `function`: its sequence and digest.
    pub fn last_bundle(&self, function: &str) -> Result<Option<(u64, String)>, StoreError> {
        self.with_writer(|conn| {
            use rusqlite::OptionalExtension;
            conn.query_row(
                "SELECT sequence, digest FROM bundles WHERE function = ?1",
                params![function],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()
        })
    }

    /// Records a bundle taken: the newest for its function from now on.
    pub fn record_bundle(
        &self,
        function: &str,
        sequence: u64,
        digest: &str,
        signer: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        self.with_writer(|conn| {
            conn.execute(
                "INSERT INTO bundles (function, sequence, digest, signer, version, accepted_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (function) DO UPDATE SET sequence = ?2, digest = ?3, signer = ?4,
                 version = ?5, accepted_ms = ?6",
                params![
                    function,
                    sequence as i64,
                    digest,
                    signer,
                    version,
                    super::now_ms()
                ],
            )?;
            Ok(())
        })
    }

    /// Records a job taken from the fleet's job service, unless it is known
    /// (a redelivery keeps what was done of it).
    pub fn record_job(&self, job_id: &str, document: &str) -> Result<(), StoreError> {
        self.with_writer(|conn| {
            conn.execute(
                "INSERT OR IGNORE INTO fleet_jobs (job_id, document, state, updated_ms)
                 VALUES (?1, ?2, 'received', ?3)",
                params![job_id, document, super::now_ms()],
            )?;
            Ok(())
        })
    }

    /// A job's new state, to be reported (again).
    pub fn update_job(
        &self,
        job_id: &str,
        state: &str,
        deployment: Option<i64>,
        details: &str,
    ) -> Result<(), StoreError> {
        self.with_writer(|conn| {
            conn.execute(
                "UPDATE fleet_jobs SET state = ?2, deployment = COALESCE(?3, deployment),
                 details = ?4, reported = 0, updated_ms = ?5 WHERE job_id = ?1",
                params![job_id, state, deployment, details, super::now_ms()],
            )?;
            Ok(())
        })
    }

    /// The job service took the report of `state`.
    pub fn job_reported(&self, job_id: &str, state: &str) -> Result<(), StoreError> {
        self.with_writer(|conn| {
            conn.execute(
                "UPDATE fleet_jobs SET reported = 1 WHERE job_id = ?1 AND state = ?2",
                params![job_id, state],
            )?;
            Ok(())
        })
    }

    /// One job, if known.
    pub fn job(&self, job_id: &str) -> Result<Option<JobRow>, StoreError> {
        self.with_writer(|conn| {
            use rusqlite::OptionalExtension;
            conn.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM fleet_jobs WHERE job_id = ?1"),
                params![job_id],
                job_row,
            )
            .optional()
        })
    }

    /// Jobs not finished, or finished and not yet reported: what a start
    /// (or a reconnect) takes up again, oldest first.
    pub fn open_jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        self.with_writer(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM fleet_jobs
                 WHERE state NOT IN ('succeeded', 'failed') OR reported = 0 ORDER BY updated_ms"
            ))?
            .query_map([], job_row)?
            .collect()
        })
    }
}

/// A fleet job as kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobRow {
    pub job_id: String,
    pub document: String,
    /// `received`, `deploying`, `rolling_out`, `succeeded` or `failed`.
    pub state: String,
    /// The rollout it started, if any.
    pub deployment: Option<i64>,
    /// The status details last reported, JSON.
    pub details: String,
    pub reported: bool,
}

const JOB_COLUMNS: &str = "job_id, document, state, deployment, details, reported";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        job_id: r.get(0)?,
        document: r.get(1)?,
        state: r.get(2)?,
        deployment: r.get(3)?,
        details: r.get(4)?,
        reported: r.get::<_, i64>(5)? != 0,
    })
}

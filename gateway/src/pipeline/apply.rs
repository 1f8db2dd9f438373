//! Applying a config to the running gateway (`wasmgate apply`, SIGHUP).
//!
//! In two phases, so that a plan that fails half-way applies nothing:
//! first everything that can fail is prepared without touching what runs
//! (each new or changed module read, checked and instantiated; each new
//! function's workers started; the HTTP listener bound if routes appear);
//! then it is switched over: `live` aliases move, new functions' triggers
//! start, and the functions removed or restarted drain (their in-flight
//! events finish, their sessions disconnect with what they did not take
//! still at the broker) before their replacements' sessions connect.

use super::plan::{self, Change, Plan};
use super::unit::{Unit, Wiring};
use super::{function_spec, intakes_of, start_dispatcher, start_http, Gateway, GatewayError};
use crate::config::{Config, FunctionConfig};
use crate::registry::Adoption;
use std::sync::Arc;

/// How long a function `apply` removes or restarts has for its events in
/// flight.
const RETIRE_GRACE: std::time::Duration = super::SHUTDOWN_GRACE;

/// Why a plan was not applied; nothing of it was.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{} cannot change while the gateway runs; restart it to apply this file", .0.restart_needed.join(", "))]
    RestartNeeded(Plan),
    #[error("the embedded broker has room for {room} sessions of the gateway's own, and this file needs {needed}; restart the gateway to apply it")]
    NoRoom { room: usize, needed: usize },
    #[error("function {function}: {error}")]
    Module { function: String, error: String },
    #[error("{0}")]
    MovedMeanwhile(String),
    #[error("cannot record the new versions: {0}")]
    Record(String),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

impl ApplyError {
    /// The plan, where one was made.
    pub fn plan(&self) -> Option<&Plan> {
        match self {
            ApplyError::RestartNeeded(plan) => Some(plan),
            _ => None,
        }
    }
}

/// A function of the new config, prepared.
struct Prepared {
    config: FunctionConfig,
    /// Its `live` alias's new state, when the module or spec changed.
    adoption: Option<Adoption>,
    /// New workers (and what stops them), for a function added or restarted.
    dispatcher: Option<(super::Dispatcher, Arc<super::Stop>)>,
}

impl Gateway {
    /// What runs: the config it started with, or the last one applied.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Plans `new` against what runs and, unless `dry_run`, applies it.
    /// `new` has been loaded and validated as `wasmgate run` loads one.
    pub async fn apply(&mut self, new: Config, dry_run: bool) -> Result<Plan, ApplyError> {
        let mut plan = plan::diff(&self.config, &new);
        if !plan.restart_needed.is_empty() {
            return Err(ApplyError::RestartNeeded(plan));
        }
        if let Some(room) = self.session_room {
            let needed = super::embedded_sessions(&new);
            if needed > room {
                return Err(ApplyError::NoRoom { room, needed });
            }
        }
        let prepared = self.prepare(&new, &mut plan, dry_run).await?;
        if dry_run {
            self.discard(prepared);
            return Ok(plan);
        }
        self.switch(new, prepared, &plan).await?;
        Ok(plan)
    }

    /// Everything that can fail, with nothing of what runs touched: on an
    /// error, what was prepared is dropped.
    async fn prepare(
        &mut self,
        new: &Config,
        plan: &mut Plan,
        dry_run: bool,
    ) -> Result<Vec<Prepared>, ApplyError> {
        let mut prepared: Vec<Prepared> = Vec::with_capacity(new.functions.len());
        for f in &new.functions {
            let running = self.units.iter().find(|u| u.name() == f.name);
            let one = match self.prepare_one(f, running, dry_run).await {
                Ok(one) => one,
                Err(e) => {
                    self.discard(prepared);
                    return Err(e);
                }
            };
            // A module whose bytes changed under an unchanged path shows
            // in the plan too; and every change names the versions.
            if let Some(adoption) = &one.adoption {
                let before = self.registry.live_versions(&f.name);
                let after = adoption.versions();
                let moves = before.as_ref() != Some(&after);
                match plan.changes.iter_mut().find(|c| c.function() == f.name) {
                    Some(Change::Change {
                        versions, fields, ..
                    }) if moves => {
                        *versions = before.map(|b| (b, after));
                        if !fields.iter().any(|f| f == "wasm") {
                            fields.push("module".to_owned());
                        }
                    }
                    Some(_) => {}
                    None if moves => plan.changes.push(Change::Change {
                        function: f.name.clone(),
                        fields: vec!["module".to_owned()],
                        restart: false,
                        versions: before.map(|b| (b, after)),
                    }),
                    None => {}
                }
            }
            prepared.push(one);
        }
        let routes_wanted = new
            .functions
            .iter()
            .any(|f| f.triggers.iter().any(|t| t.route().is_some()));
        if routes_wanted && self.http.is_none() && !dry_run {
            match start_http(new, Vec::new(), self.connections.clone()).await {
                Ok(listener) => self.http = Some(listener),
                Err(e) => {
                    self.discard(prepared);
                    return Err(e.into());
                }
            }
        }
        Ok(prepared)
    }

    async fn prepare_one(
        &self,
        f: &FunctionConfig,
        running: Option<&Unit>,
        dry_run: bool,
    ) -> Result<Prepared, ApplyError> {
        let module_error = |error: String| ApplyError::Module {
            function: f.name.clone(),
            error,
        };
        let spec_changed = running.is_none_or(|u| spec_differs(&u.config, f));
        let restart = running.is_none_or(|u| plan::needs_restart(&u.config, f));
        // The module: compiled and checked only when it, or what it is
        // deployed with, differs from what runs.
        let (registry, config, path) = (self.registry.clone(), f.clone(), f.wasm.clone());
        let adoption = tokio::task::spawn_blocking(move || -> Result<Option<Adoption>, String> {
            let wasm = crate::files::read_limited(&path, crate::files::MAX_MODULE_BYTES, "module")
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let version = crate::runtime::module_version(&wasm);
            let known = registry
                .config_version(&config.name)
                .map_err(|e| e.to_string())?;
            if !spec_changed && known.as_deref() == Some(version.as_str()) {
                return Ok(None);
            }
            let function = registry
                .runtime()
                .deploy(function_spec(&config), &wasm)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if !dry_run {
                crate::registry::keep_module(registry.dir(), &wasm).map_err(|e| e.to_string())?;
            }
            let prewarm = config.limits.concurrency.min(config.limits.warm_instances) as usize;
            registry
                .plan_adopt(
                    function_spec(&config),
                    Arc::new(function),
                    &path.display().to_string(),
                    prewarm,
                    needs_revision(&config),
                )
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| module_error(e.to_string()))?
        .map_err(module_error)?;
        let dispatcher = match restart {
            false => None,
            true => {
                // A new function always has an adoption; a running one
                // keeps its `live` unless it has one.
                let live = match (&adoption, running) {
                    (Some(adoption), _) => adoption.live(),
                    (None, Some(unit)) => unit.dispatcher.live.clone(),
                    (None, None) => {
                        return Err(module_error("no module prepared".into()));
                    }
                };
                let metrics = running.map(|u| u.dispatcher.metrics.clone());
                Some(start_dispatcher(f, live, &self.sinks, metrics)?)
            }
        };
        Ok(Prepared {
            config: f.clone(),
            adoption,
            dispatcher,
        })
    }

    /// Drops what was prepared: new workers end (nothing was sent to them),
    /// versions compiled for it that no alias runs leave the cache.
    fn discard(&self, prepared: Vec<Prepared>) {
        for p in prepared {
            if let Some((dispatcher, _)) = p.dispatcher {
                dispatcher.join();
            }
            if let Some(adoption) = p.adoption {
                self.registry.discard(adoption);
            }
        }
    }

    /// Puts the prepared functions in place of what runs. What can fail
    /// comes first (the schedules' last ticks read, the aliases recorded);
    /// once the running units are taken apart nothing does.
    async fn switch(
        &mut self,
        new: Config,
        mut prepared: Vec<Prepared>,
        plan: &Plan,
    ) -> Result<(), ApplyError> {
        let store = self.sinks.store.clone();
        let ticks_before = match super::last_ticks(&store).await {
            Ok(ticks) => ticks,
            Err(e) => {
                self.discard(prepared);
                return Err(e.into());
            }
        };
        let adoptions: Vec<Adoption> = prepared
            .iter_mut()
            .filter_map(|p| p.adoption.take())
            .collect();
        let registry = self.registry.clone();
        let installed = tokio::task::spawn_blocking(move || registry.install_all(adoptions)).await;
        let refused = match installed {
            Ok(Ok(())) => None,
            Ok(Err(e @ crate::registry::RegistryError::MovedMeanwhile(_))) => {
                Some(ApplyError::MovedMeanwhile(e.to_string()))
            }
            Ok(Err(e)) => Some(ApplyError::Record(e.to_string())),
            Err(e) => Some(ApplyError::Record(e.to_string())),
        };
        if let Some(error) = refused {
            self.discard(prepared);
            return Err(error);
        }

        let mut old: Vec<Unit> = std::mem::take(&mut self.units);
        let mut retiring = Vec::new();
        let mut starting = Vec::new();
        let mut units = Vec::with_capacity(prepared.len());
        for p in prepared {
            let position = old.iter().position(|u| u.name() == p.config.name);
            let running = position.map(|i| old.remove(i));
            match (running, p.dispatcher) {
                (Some(mut unit), None) => {
                    unit.config = p.config;
                    units.push(unit);
                }
                (running, Some((dispatcher, stop))) => {
                    let before = running
                        .as_ref()
                        .map(|u| Unit::filters(&u.config))
                        .unwrap_or_default();
                    let now = Unit::filters(&p.config);
                    let unsubscribe = before.into_iter().filter(|f| !now.contains(f)).collect();
                    retiring.extend(running);
                    starting.push((units.len(), unsubscribe));
                    units.push(Unit::new(p.config, dispatcher, stop));
                }
                // Prepare gives every new function workers.
                (None, None) => {
                    tracing::error!(function = %p.config.name, "a new function without workers; not started");
                }
            }
        }
        // What is left of the old units was removed from the config.
        let removed: Vec<String> = old.iter().map(|u| u.name().to_owned()).collect();
        retiring.extend(old);

        store.set_kv_streams(
            new.functions
                .iter()
                .flat_map(|f| f.triggers.iter().filter_map(|t| t.kv_change.clone()))
                .collect(),
        );
        // New events go to the new workers from here on (invokes queued for
        // a removed function stay queued, for when it comes back)...
        self.intakes.set_removed(intakes_of(&units), &removed);
        if let Some(http) = &self.http {
            http.routes
                .replace(units.iter().flat_map(|u| u.routes(&store)).collect());
        }
        // ...once the old ones have finished theirs and let go of their
        // sessions, which the new ones take over.
        let mut retired = tokio::task::JoinSet::new();
        for unit in retiring {
            retired.spawn(unit.retire(RETIRE_GRACE));
        }
        while retired.join_next().await.is_some() {}
        for name in &removed {
            self.registry.remove(name);
        }
        super::forget_stale_consumers(&store, &units).await;
        // The ticks the retired schedules settled meanwhile count too.
        let last_ticks = super::last_ticks(&store).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the schedules' last ticks again; a tick settled during the apply may run once more");
            ticks_before
        });
        let wiring = Wiring {
            endpoint: &self.endpoint,
            client_id: &self.client_id,
            store: &store,
            last_ticks: &last_ticks,
        };
        let mut waiting = Vec::new();
        for (index, unsubscribe) in starting {
            units[index].start_triggers(&wiring, unsubscribe);
            waiting.extend(units[index].subscribed());
        }
        *self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            units.iter().filter_map(Unit::subscribed).collect();
        self.sources.set_functions(super::function_sources(&units));
        self.units = units;
        self.config = new;
        // Applied means subscribed, as "running" does at start: a message
        // published after the answer reaches its new function.
        let subscribed = async {
            for s in &mut waiting {
                let _ = s.wait_for(Option::is_some).await;
            }
        };
        if tokio::time::timeout(super::SUBSCRIBE_WAIT, subscribed)
            .await
            .is_err()
        {
            tracing::warn!("not yet subscribed at the local broker after the apply; retrying in the background");
        }
        for line in plan.lines() {
            tracing::info!(change = %line, "applied");
        }
        Ok(())
    }
}

/// Whether what a function's versions are deployed with differs (the
/// module's path, limits, grants, config values, secrets).
fn spec_differs(running: &FunctionConfig, new: &FunctionConfig) -> bool {
    running.wasm != new.wasm
        || running.limits != new.limits
        || running.grants != new.grants
        || running.config != new.config
        || running.secrets != new.secrets
}

/// The ABI revision a function's triggers need of its module: 1 for
/// batches of KV changes (whose event grew within ABI 1).
pub(super) fn needs_revision(f: &FunctionConfig) -> u32 {
    u32::from(
        f.triggers
            .iter()
            .any(|t| t.kv_change.is_some() && t.batch.is_some()),
    )
}

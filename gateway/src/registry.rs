//! The function registry: every version a function has had, by content
//! hash, and the alias its triggers run (`live`).
//!
//! A version is the module's bytes, kept content-addressed under
//! `data_dir/modules/<version>.wasm` (not the path it came from, which may
//! change or go), with what is known of it in the store (`versions`): when
//! it was published, from where, its size. `live` is the alias every
//! trigger invokes; moving it ([`Live::swap`]) takes effect for the next
//! event each worker starts, while the ones in flight finish on the version
//! they began with. Per-topic order holds across a swap: a topic's events
//! run one after another on one worker, and each reads `live` as it starts.

use crate::runtime::Function;
use std::sync::{Arc, PoisonError, RwLock};

/// Where `live` points: one version, or two with a share of the events
/// for the second (Lambda's alias routing configuration).
#[derive(Debug, Clone)]
pub struct Routing {
    pub primary: Arc<Function>,
    /// The other version and the share of events it takes, in (0, 1).
    pub secondary: Option<(Arc<Function>, f64)>,
}

impl Routing {
    pub fn one(function: Arc<Function>) -> Routing {
        Routing {
            primary: function,
            secondary: None,
        }
    }

    /// The version for an event with this stable key: its dedup id, else
    /// its request id, so every retry of one event runs on one version.
    pub fn pick(&self, key: u64) -> &Arc<Function> {
        match &self.secondary {
            Some((other, share)) if unit(key) < *share => other,
            _ => &self.primary,
        }
    }
}

/// A key spread evenly over [0, 1): a request id's low bits count up, so
/// they are mixed first (splitmix64's finalizer).
fn unit(key: u64) -> f64 {
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The stable key of a dedup id.
pub fn key_of(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same id picks the same version in every process.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

/// The version (or versions) a function's triggers run now.
#[derive(Debug)]
pub struct Live {
    name: String,
    routing: RwLock<Routing>,
}

impl Live {
    pub fn new(function: Arc<Function>) -> Live {
        Live {
            name: function.name().to_owned(),
            routing: RwLock::new(Routing::one(function)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The primary version (the one taking the larger share).
    pub fn current(&self) -> Arc<Function> {
        self.routing().primary
    }

    pub fn routing(&self) -> Routing {
        self.routing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The version an event with this key runs on.
    pub fn pick(&self, key: u64) -> Arc<Function> {
        self.routing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .pick(key)
            .clone()
    }

    /// Moves the alias to one version; returns the primary it had.
    pub fn swap(&self, function: Arc<Function>) -> Arc<Function> {
        self.route(Routing::one(function))
    }

    /// Moves the alias; returns the primary it had.
    pub fn route(&self, routing: Routing) -> Arc<Function> {
        let mut current = self.routing.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *current, routing).primary
    }
}

use crate::runtime::{FunctionSpec, LoadError, Runtime};
use crate::store::{AliasRow, Store, StoreError, VersionRow};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The alias every trigger invokes.
pub const LIVE: &str = "live";

/// Why a registry operation was refused; the running version is untouched.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no function {0:?} is deployed")]
    UnknownFunction(String),
    #[error("function {function:?} has no version {version:?} (`wasmgate versions {function}` lists them)")]
    UnknownVersion { function: String, version: String },
    #[error("function {0:?} has no earlier version to roll back to")]
    NothingToRollBack(String),
    #[error("function {function:?} takes KV changes in batches, which needs a module of ABI revision {needs} (built with the current SDK); {version} is of revision {has}")]
    OldGuest {
        function: String,
        version: String,
        has: u32,
        needs: u32,
    },
    #[error("an API deploy moved the live alias of {0:?} while the plan was made; nothing applied (apply again)")]
    MovedMeanwhile(String),
    #[error("a second version's share must be between 0 and 1 (exclusive), on another version than the first; got {0}")]
    Weight(f64),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the new version does not start: {0}")]
    Start(String),
    #[error(
        "function {0:?} has a rollout under way (`wasmgate deployments {0}`); wait for its end"
    )]
    RolloutUnderWay(String),
    #[error("function {function:?} runs version {version} already")]
    SameVersion { function: String, version: String },
    #[error("{0}; the rollout is rolled back")]
    HookFailed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot keep the module in {path}: {error}")]
    Io { path: String, error: std::io::Error },
}

/// Where a version's bytes are kept.
pub fn module_path(dir: &Path, version: &str) -> PathBuf {
    dir.join(format!("{version}.wasm"))
}

/// Keeps `wasm` under `dir` by its version (content-addressed: written once,
/// through a temporary file and a rename, so a crash leaves no torn module).
pub fn keep_module(dir: &Path, wasm: &[u8]) -> Result<String, RegistryError> {
    let version = crate::runtime::module_version(wasm);
    let path = module_path(dir, &version);
    if path.exists() {
        return Ok(version);
    }
    let io = |error| RegistryError::Io {
        path: path.display().to_string(),
        error,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".{version}.wasm.tmp"));
    std::fs::write(&tmp, wasm).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(version)
}

/// A move of an alias.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Moved {
    pub function: String,
    pub alias: String,
    pub from: String,
    pub to: String,
    /// A second version and its share of the events, if weighted.
    pub other: Option<(String, f64)>,
    /// Instances of the new version made ready before the move.
    pub warm: usize,
}

/// One function as the management API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FunctionView {
    pub name: String,
    pub live: String,
    pub alias: Option<AliasRow>,
    pub versions: Vec<VersionRow>,
}

/// A decision of [`Registry::plan_adopt`], not yet in effect.
pub struct Adoption {
    spec: FunctionSpec,
    routing: Routing,
    /// The function's `live`: the running one, or a new one (not yet in
    /// the registry) that a new function's workers can be started with.
    live: Arc<Live>,
    config_version: String,
    abi_revision: u32,
    size: u64,
    source: String,
    /// The config's module becomes `live` (else an API deploy stands).
    file_wins: bool,
    /// The alias as the plan read it: installing checks it is still so.
    alias_seen: Option<AliasRow>,
    needs_revision: u32,
    prewarm: usize,
}

impl Adoption {
    /// The versions `live` will run, primary first.
    pub fn versions(&self) -> Vec<String> {
        versions_of(&self.routing)
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }
}

impl std::fmt::Debug for Adoption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adoption")
            .field("function", &self.spec.name)
            .field("versions", &self.versions())
            .field("file_wins", &self.file_wins)
            .finish_non_exhaustive()
    }
}

fn versions_of(routing: &Routing) -> Vec<String> {
    std::iter::once(&routing.primary)
        .chain(routing.secondary.as_ref().map(|(f, _)| f))
        .map(|f| f.version().to_owned())
        .collect()
}

struct Entry {
    spec: FunctionSpec,
    live: Arc<Live>,
    /// The ABI revision its triggers need of a module (see
    /// [`wasmgate_abi::ABI_REVISION`]): 1 for batches of KV changes.
    needs_revision: u32,
    /// Instances of a new version to make before `live` moves to it.
    prewarm: usize,
}

/// Every deployed function's versions and its `live` alias; owns the runtime.
pub struct Registry {
    runtime: Runtime,
    store: Store,
    dir: PathBuf,
    keep: usize,
    functions: RwLock<BTreeMap<String, Entry>>,
    /// One alias move at a time: two deploys at once must not interleave
    /// their swap and their record.
    moving: std::sync::Mutex<()>,
    /// The gateway's request ids, shared with the workers.
    request_ids: Arc<std::sync::atomic::AtomicU64>,
    /// Functions with a rollout under way (`rollout.rs`).
    rollouts: Running,
}

/// The functions with a rollout under way (`rollout.rs`): one at a time
/// each, and no move by hand meanwhile.
#[derive(Debug, Default)]
pub struct Running(std::sync::Mutex<std::collections::HashSet<String>>);

impl Running {
    pub(crate) fn claim(&self, function: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(function.to_owned())
    }

    /// Whether `function` has a rollout under way: a move by hand is
    /// refused meanwhile (the rollout would undo it).
    pub fn is_running(&self, function: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(function)
    }

    pub(crate) fn release(&self, function: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(function);
    }
}

/// An invocation on the running gateway, through the management API.
#[derive(Debug)]
pub struct Invoked {
    pub version: String,
    pub request_id: u64,
    /// Its effects are durable (not for a dry run, nor a failure).
    pub committed: bool,
    pub report: crate::runtime::Report,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Whether a module knows the ABI revision a function's triggers need.
fn fits(function: &Function, needs: u32) -> Result<(), RegistryError> {
    if function.abi_revision() >= needs {
        return Ok(());
    }
    Err(RegistryError::OldGuest {
        function: function.name().to_owned(),
        version: function.version().to_owned(),
        has: function.abi_revision(),
        needs,
    })
}

fn now_ms() -> i64 {
    crate::dlq::now_ms()
}

impl Registry {
    pub fn new(
        runtime: Runtime,
        store: Store,
        dir: PathBuf,
        keep: usize,
        request_ids: Arc<std::sync::atomic::AtomicU64>,
    ) -> Registry {
        Registry {
            runtime,
            store,
            dir,
            keep,
            functions: RwLock::new(BTreeMap::new()),
            moving: std::sync::Mutex::new(()),
            request_ids,
            rollouts: Default::default(),
        }
    }

    /// Functions with a rollout under way.
    pub fn rollouts(&self) -> &Running {
        &self.rollouts
    }

    /// A function's `live` alias, as its workers read it.
    pub fn live_of(&self, name: &str) -> Result<Arc<Live>, RegistryError> {
        self.entry(name, |e| e.live.clone())
    }

    /// Runs a function's live version once on `event`, with its grants,
    /// limits and KV, as a trigger would; its effects are committed unless
    /// `dry_run` (then they are only shown). Posts to WebSocket connections
    /// are shown, not sent. Blocks until the commit is durable.
    pub fn invoke(
        &self,
        name: &str,
        event: &crate::event::OwnedEvent,
        dry_run: bool,
    ) -> Result<Invoked, RegistryError> {
        let live = self.entry(name, |e| e.live.clone())?;
        let request_id = self
            .request_ids
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let function = live.pick(request_id);
        let kv: Arc<dyn crate::runtime::KvRead> = Arc::new(self.store.clone());
        let report = function.invoke(request_id, 1, &event.as_event(), Some(kv));
        let mut committed = false;
        if let (Ok(effects), false) = (&report.outcome, dry_run) {
            let (tx, rx) = std::sync::mpsc::channel();
            let mut effects = effects.clone();
            effects.posts.clear();
            self.store.submit_urgent(crate::store::Commit {
                function: name.to_owned(),
                effects,
                dedup: Vec::new(),
                cursors: Vec::new(),
                trace: None,
                done: Box::new(move |result| {
                    let _ = tx.send(result.is_ok());
                }),
            });
            committed = rx.recv().unwrap_or(false);
        }
        Ok(Invoked {
            version: function.version().to_owned(),
            request_id,
            committed,
            report,
        })
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The gateway's store, for the management API's KV and dead-letter
    /// operations.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether a function is deployed.
    pub fn knows(&self, name: &str) -> bool {
        self.entry(name, |_| ()).is_ok()
    }

    /// What a function's versions are deployed with (limits, grants,
    /// config values, secrets), and its live version's bytes: a dead
    /// letter's replay runs that.
    pub fn live_module(&self, name: &str) -> Result<(FunctionSpec, Vec<u8>), RegistryError> {
        let (spec, version) = self.entry(name, |e| {
            (e.spec.clone(), e.live.current().version().to_owned())
        })?;
        let path = module_path(&self.dir, &version);
        let wasm = crate::files::read_limited(&path, crate::files::MAX_MODULE_BYTES, "module")
            .map_err(|_| RegistryError::UnknownVersion {
                function: name.to_owned(),
                version,
            })?;
        Ok((spec, wasm))
    }

    /// Where versions' modules are kept.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes a function deployed from the config at start, and decides what
    /// `live` runs (docs/deployments.md): the config's module, unless the
    /// config still names the module it named when it last set `live` and
    /// an API deploy has moved `live` since; then that deploy stands.
    pub fn adopt(
        &self,
        spec: FunctionSpec,
        from_config: Arc<Function>,
        source: &str,
        prewarm: usize,
        needs_revision: u32,
    ) -> Result<Arc<Live>, RegistryError> {
        let adoption = self.plan_adopt(spec, from_config, source, prewarm, needs_revision)?;
        self.install(adoption)
    }

    /// What [`Registry::adopt`] would do, with nothing written and nothing
    /// moved: `apply` prepares every function this way first, so that a
    /// plan whose one module fails applies nothing. The versions `live`
    /// will run are loaded (with the new spec) and their instances made.
    pub fn plan_adopt(
        &self,
        spec: FunctionSpec,
        from_config: Arc<Function>,
        source: &str,
        prewarm: usize,
        needs_revision: u32,
    ) -> Result<Adoption, RegistryError> {
        let name = spec.name.clone();
        fits(&from_config, needs_revision)?;
        let config_version = from_config.version().to_owned();
        let abi_revision = from_config.abi_revision();
        let alias = self.store.alias(&name, LIVE)?;
        let alias_seen = alias.clone();
        let mut routing = Routing::one(from_config);
        let mut file_wins = true;
        match alias {
            // The file names what it named when it last set `live`: what
            // the API did since stands.
            Some(alias)
                if alias.from_config.as_deref() == Some(config_version.as_str())
                    && (alias.version != config_version || alias.other.is_some()) =>
            {
                let restored = self.load(&spec, &alias.version).and_then(|primary| {
                    fits(&primary, needs_revision)?;
                    let secondary = match (&alias.other, alias.weight) {
                        (Some(other), Some(weight)) => {
                            let other = self.load(&spec, other)?;
                            fits(&other, needs_revision)?;
                            Some((Arc::new(other), weight))
                        }
                        _ => None,
                    };
                    Ok(Routing {
                        primary: Arc::new(primary),
                        secondary,
                    })
                });
                match restored {
                    Ok(restored) => {
                        tracing::info!(function = %name, version = %alias.version, other = ?alias.other, config = %config_version, "live stays where the API put it (the config's module is unchanged since)");
                        routing = restored;
                        file_wins = false;
                    }
                    Err(e) => {
                        tracing::warn!(function = %name, version = %alias.version, error = %e, "the live version deployed through the API cannot be loaded; running the config's");
                    }
                }
            }
            _ => {}
        }
        let running = self.entry(&name, |e| e.live.clone()).ok();
        // A function already running warms what it will run first, as a
        // deploy does: a new version, or the same one with new limits.
        if running.is_some() {
            routing
                .primary
                .prewarm(prewarm)
                .map_err(|e| RegistryError::Start(e.to_string()))?;
        }
        Ok(Adoption {
            live: running.unwrap_or_else(|| Arc::new(Live::new(routing.primary.clone()))),
            size: std::fs::metadata(module_path(&self.dir, &config_version))
                .map(|m| m.len())
                .unwrap_or(0),
            spec,
            routing,
            config_version,
            abi_revision,
            source: source.to_owned(),
            file_wins,
            alias_seen,
            needs_revision,
            prewarm,
        })
    }

    /// Records an adoption and makes it run ([`Registry::install_all`]).
    pub fn install(&self, a: Adoption) -> Result<Arc<Live>, RegistryError> {
        let live = a.live.clone();
        self.install_all(vec![a])?;
        Ok(live)
    }

    /// Records adoptions and makes them run: a new function's `live` is
    /// made; a running one's moves (the next events run the new versions,
    /// with the new limits and grants), and its old versions leave the
    /// compiled-module cache. One move at a time with the API's: an alias
    /// the API moved since [`Registry::plan_adopt`] read it refuses them
    /// all, before anything is written or moved (the plan was made against
    /// another state). A store that fails half-way has recorded some and
    /// moved none.
    pub fn install_all(&self, adoptions: Vec<Adoption>) -> Result<(), RegistryError> {
        let _one_at_a_time = self.moving.lock().unwrap_or_else(PoisonError::into_inner);
        for a in &adoptions {
            if self.store.alias(&a.spec.name, LIVE)? != a.alias_seen {
                return Err(RegistryError::MovedMeanwhile(a.spec.name.clone()));
            }
        }
        for a in &adoptions {
            self.store.put_version(
                &a.spec.name,
                &VersionRow {
                    version: a.config_version.clone(),
                    size: a.size,
                    published_ms: now_ms(),
                    source: a.source.clone(),
                    published_by: "config file".to_owned(),
                    abi_revision: a.abi_revision,
                },
            )?;
            if a.file_wins {
                self.store.set_alias(
                    &a.spec.name,
                    LIVE,
                    &a.config_version,
                    None,
                    Some(&a.config_version),
                    now_ms(),
                )?;
            }
        }
        let mut functions = self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for a in adoptions {
            let name = a.spec.name.clone();
            let entry = Entry {
                spec: a.spec,
                live: a.live,
                needs_revision: a.needs_revision,
                prewarm: a.prewarm,
            };
            match functions.get_mut(&name) {
                Some(running) => {
                    let before = running.live.routing();
                    let now = versions_of(&a.routing);
                    if versions_of(&before) != now {
                        tracing::info!(function = %name, from = %before.primary.version(), to = %a.routing.primary.version(), "live alias moved by the config");
                    }
                    running.live.route(a.routing);
                    for gone in std::iter::once(&before.primary)
                        .chain(before.secondary.as_ref().map(|(f, _)| f))
                    {
                        if !now.iter().any(|v| v == gone.version()) {
                            self.runtime.evict(gone);
                        }
                    }
                    running.spec = entry.spec;
                    running.needs_revision = entry.needs_revision;
                    running.prewarm = entry.prewarm;
                }
                None => {
                    entry.live.route(a.routing);
                    functions.insert(name, entry);
                }
            }
        }
        Ok(())
    }

    /// Drops what an adoption that will not be installed compiled (a dry
    /// run's, a refused plan's): versions no alias runs leave the cache.
    pub fn discard(&self, a: Adoption) {
        let running = self.live_versions(&a.spec.name).unwrap_or_default();
        for f in
            std::iter::once(&a.routing.primary).chain(a.routing.secondary.as_ref().map(|(f, _)| f))
        {
            if !running.iter().any(|v| v == f.version()) {
                self.runtime.evict(f);
            }
        }
    }

    /// Takes a function out (`apply` removed it): the API no longer knows
    /// it, its compiled modules leave the cache once its last event is done
    /// (the workers hold the versions they run). Its versions and aliases
    /// stay recorded, for a config that brings it back.
    pub fn remove(&self, name: &str) {
        let removed = self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        if let Some(entry) = removed {
            let routing = entry.live.routing();
            for function in
                std::iter::once(&routing.primary).chain(routing.secondary.as_ref().map(|(f, _)| f))
            {
                self.runtime.evict(function);
            }
        }
    }

    /// The versions `live` runs for a function, primary first.
    pub fn live_versions(&self, name: &str) -> Option<Vec<String>> {
        self.entry(name, |e| versions_of(&e.live.routing())).ok()
    }

    /// The module the config named when it last set `live` (what `apply`
    /// compares a file's module with).
    pub fn config_version(&self, name: &str) -> Result<Option<String>, RegistryError> {
        Ok(self.store.alias(name, LIVE)?.and_then(|a| a.from_config))
    }

    fn load(&self, spec: &FunctionSpec, version: &str) -> Result<Function, RegistryError> {
        let path = module_path(&self.dir, version);
        let wasm = crate::files::read_limited(&path, crate::files::MAX_MODULE_BYTES, "module")
            .map_err(|_| RegistryError::UnknownVersion {
                function: spec.name.clone(),
                version: version.to_owned(),
            })?;
        Ok(self.runtime.deploy(spec.clone(), &wasm)?)
    }

    fn entry<T>(&self, name: &str, f: impl FnOnce(&Entry) -> T) -> Result<T, RegistryError> {
        let functions = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = functions
            .get(name)
            .ok_or_else(|| RegistryError::UnknownFunction(name.to_owned()))?;
        Ok(f(entry))
    }

    /// Checks a module as the function would run it (validation, imports,
    /// ABI version, limits), keeps it and records it as a version; `live`
    /// does not move.
    pub fn publish(
        &self,
        name: &str,
        wasm: &[u8],
        source: &str,
        by: &str,
    ) -> Result<VersionRow, RegistryError> {
        let (spec, needs) = self.entry(name, |e| (e.spec.clone(), e.needs_revision))?;
        let function = self.runtime.deploy(spec, wasm)?;
        fits(&function, needs)?;
        keep_module(&self.dir, wasm)?;
        let row = VersionRow {
            version: function.version().to_owned(),
            size: wasm.len() as u64,
            published_ms: now_ms(),
            source: source.to_owned(),
            published_by: by.to_owned(),
            abi_revision: function.abi_revision(),
        };
        self.store.put_version(name, &row)?;
        Ok(row)
    }

    /// Moves `live` to a published version: its instances are made first,
    /// then the next events run on it; those in flight finish where they are.
    pub fn point(&self, name: &str, version: &str) -> Result<Moved, RegistryError> {
        self.route(name, version, None)
    }

    /// Moves `live` to `version`, with `other` taking a share of the events
    /// (in (0, 1); Lambda's routing configuration, at most two versions).
    /// Each event's version is picked by its dedup id, else its request id.
    pub fn route(
        &self,
        name: &str,
        version: &str,
        other: Option<(&str, f64)>,
    ) -> Result<Moved, RegistryError> {
        let _one_at_a_time = self.moving.lock().unwrap_or_else(PoisonError::into_inner);
        let (spec, live, prewarm) =
            self.entry(name, |e| (e.spec.clone(), e.live.clone(), e.prewarm))?;
        if let Some((other_version, weight)) = other {
            if !(weight > 0.0 && weight < 1.0) || other_version == version {
                return Err(RegistryError::Weight(weight));
            }
        }
        let known = self.store.versions(name)?;
        for wanted in std::iter::once(version).chain(other.map(|(v, _)| v)) {
            if !known.iter().any(|v| v.version == wanted) {
                return Err(RegistryError::UnknownVersion {
                    function: name.to_owned(),
                    version: wanted.to_owned(),
                });
            }
        }
        let needs = self.entry(name, |e| e.needs_revision)?;
        let start = |version: &str| -> Result<(Arc<Function>, usize), RegistryError> {
            let function = Arc::new(self.load(&spec, version)?);
            fits(&function, needs)?;
            let warm = function
                .prewarm(prewarm)
                .map_err(|e| RegistryError::Start(e.to_string()))?;
            Ok((function, warm))
        };
        let (primary, warm) = start(version)?;
        let secondary = match other {
            Some((other_version, weight)) => Some((start(other_version)?.0, weight)),
            None => None,
        };
        let running: Vec<String> = std::iter::once(version)
            .chain(other.map(|(v, _)| v))
            .map(str::to_owned)
            .collect();
        // Recorded first: a move the store could not keep is refused, and
        // the running version stays as it was.
        let previous = self.store.alias(name, LIVE)?.and_then(|a| a.previous);
        self.store
            .set_alias(name, LIVE, version, other, None, now_ms())?;
        let before = live.routing();
        let old = live.route(Routing { primary, secondary });
        // What no longer runs leaves the compiled-module cache.
        for gone in
            std::iter::once(&before.primary).chain(before.secondary.as_ref().map(|(f, _)| f))
        {
            if !running.iter().any(|v| v == gone.version()) {
                self.runtime.evict(gone);
            }
        }
        let mut kept: Vec<&str> = vec![version, old.version()];
        kept.extend(other.map(|(v, _)| v));
        kept.extend(previous.as_deref());
        match self.store.prune_versions(name, self.keep, &kept) {
            Ok(gone) => {
                for version in gone {
                    // The file is shared by every function with these bytes.
                    if !self.store.version_known(&version).unwrap_or(true) {
                        let _ = std::fs::remove_file(module_path(&self.dir, &version));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(function = name, error = %e, "cannot prune old versions; they stay")
            }
        }
        let moved = Moved {
            function: name.to_owned(),
            alias: LIVE.to_owned(),
            from: old.version().to_owned(),
            to: version.to_owned(),
            other: other.map(|(v, w)| (v.to_owned(), w)),
            warm,
        };
        tracing::info!(function = name, from = %moved.from, to = %moved.to, other = ?moved.other, warm, "live alias moved");
        Ok(moved)
    }

    /// Publishes and moves `live` to it.
    pub fn deploy(
        &self,
        name: &str,
        wasm: &[u8],
        source: &str,
        by: &str,
    ) -> Result<Moved, RegistryError> {
        self.no_rollout(name)?;
        let row = self.publish(name, wasm, source, by)?;
        self.point(name, &row.version)
    }

    /// Refuses a move by hand while a rollout of the function is under
    /// way: the rollout's next step would undo it.
    pub fn no_rollout(&self, name: &str) -> Result<(), RegistryError> {
        if self.rollouts.is_running(name) {
            return Err(RegistryError::RolloutUnderWay(name.to_owned()));
        }
        Ok(())
    }

    /// Moves `live` back to where it pointed before its last move.
    pub fn rollback(&self, name: &str) -> Result<Moved, RegistryError> {
        self.entry(name, |_| ())?;
        self.no_rollout(name)?;
        let previous = self
            .store
            .alias(name, LIVE)?
            .and_then(|a| a.previous)
            .ok_or_else(|| RegistryError::NothingToRollBack(name.to_owned()))?;
        self.point(name, &previous)
    }

    /// Every function, its live version and its versions.
    pub fn describe(&self) -> Result<Vec<FunctionView>, RegistryError> {
        let lives: Vec<(String, String)> = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, e)| (name.clone(), e.live.current().version().to_owned()))
            .collect();
        lives
            .into_iter()
            .map(|(name, live)| {
                Ok(FunctionView {
                    alias: self.store.alias(&name, LIVE)?,
                    versions: self.store.versions(&name)?,
                    name,
                    live,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_keys_goes_to_the_second_version_and_a_key_always_to_the_same() {
        let share = 0.2;
        let to_other = (0..10_000u64).filter(|&k| unit(k) < share).count();
        assert!((1_700..2_300).contains(&to_other), "{to_other} of 10,000");
        for key in [0, 1, 42, u64::MAX] {
            let first = unit(key) < share;
            assert!((0..10).all(|_| (unit(key) < share) == first));
            assert!((0.0..1.0).contains(&unit(key)));
        }
        // A dedup id picks the same key in every process: retries and
        // redeliveries after a restart run on one version.
        assert_eq!(key_of("msg-17"), key_of("msg-17"));
        assert_ne!(key_of("msg-17"), key_of("msg-18"));
    }
}

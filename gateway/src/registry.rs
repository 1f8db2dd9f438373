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

/// The version a function's triggers run now.
#[derive(Debug)]
pub struct Live {
    name: String,
    current: RwLock<Arc<Function>>,
}

impl Live {
    pub fn new(function: Arc<Function>) -> Live {
        Live {
            name: function.name().to_owned(),
            current: RwLock::new(function),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version the next event runs on.
    pub fn current(&self) -> Arc<Function> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Moves the alias; returns the version it pointed at.
    pub fn swap(&self, function: Arc<Function>) -> Arc<Function> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *current, function)
    }
}

use crate::runtime::{FunctionSpec, LoadError, Runtime};
use crate::store::{AliasRow, Store, StoreError, VersionRow};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The alias every trigger invokes.
pub const LIVE: &str = "live";

/// Versions of a function kept by default (besides those an alias names).
pub const DEFAULT_KEEP_VERSIONS: usize = 10;

/// Why a registry operation was refused; the running version is untouched.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no function {0:?} is deployed")]
    UnknownFunction(String),
    #[error("function {function:?} has no version {version:?} (`wasmgate versions {function}` lists them)")]
    UnknownVersion { function: String, version: String },
    #[error("function {0:?} has no earlier version to roll back to")]
    NothingToRollBack(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the new version does not start: {0}")]
    Start(String),
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    pub function: String,
    pub alias: String,
    pub from: String,
    pub to: String,
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

struct Entry {
    spec: FunctionSpec,
    live: Arc<Live>,
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
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    crate::dlq::now_ms()
}

impl Registry {
    pub fn new(runtime: Runtime, store: Store, dir: PathBuf, keep: usize) -> Registry {
        Registry {
            runtime,
            store,
            dir,
            keep,
            functions: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
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
    ) -> Result<Arc<Live>, RegistryError> {
        let name = spec.name.clone();
        let config_version = from_config.version().to_owned();
        let size = std::fs::metadata(module_path(&self.dir, &config_version))
            .map(|m| m.len())
            .unwrap_or(0);
        self.store.put_version(
            &name,
            &VersionRow {
                version: config_version.clone(),
                size,
                published_ms: now_ms(),
                source: source.to_owned(),
            },
        )?;
        let alias = self.store.alias(&name, LIVE)?;
        let mut live = from_config;
        match alias {
            Some(alias)
                if alias.from_config.as_deref() == Some(config_version.as_str())
                    && alias.version != config_version =>
            {
                match self.load(&spec, &alias.version) {
                    Ok(deployed) => {
                        tracing::info!(function = %name, version = %alias.version, config = %config_version, "live stays on the version deployed through the API (the config's module is unchanged since)");
                        live = Arc::new(deployed);
                    }
                    Err(e) => {
                        tracing::warn!(function = %name, version = %alias.version, error = %e, "the live version deployed through the API cannot be loaded; running the config's");
                        self.store.set_alias(
                            &name,
                            LIVE,
                            &config_version,
                            Some(&config_version),
                            now_ms(),
                        )?;
                    }
                }
            }
            _ => self.store.set_alias(
                &name,
                LIVE,
                &config_version,
                Some(&config_version),
                now_ms(),
            )?,
        }
        let live = Arc::new(Live::new(live));
        self.functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                name,
                Entry {
                    spec,
                    live: live.clone(),
                    prewarm,
                },
            );
        Ok(live)
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
    ) -> Result<VersionRow, RegistryError> {
        let spec = self.entry(name, |e| e.spec.clone())?;
        let function = self.runtime.deploy(spec, wasm)?;
        keep_module(&self.dir, wasm)?;
        let row = VersionRow {
            version: function.version().to_owned(),
            size: wasm.len() as u64,
            published_ms: now_ms(),
            source: source.to_owned(),
        };
        self.store.put_version(name, &row)?;
        Ok(row)
    }

    /// Moves `live` to a published version: its instances are made first,
    /// then the next events run on it; those in flight finish where they are.
    pub fn point(&self, name: &str, version: &str) -> Result<Moved, RegistryError> {
        let (spec, live, prewarm) =
            self.entry(name, |e| (e.spec.clone(), e.live.clone(), e.prewarm))?;
        if !self
            .store
            .versions(name)?
            .iter()
            .any(|v| v.version == version)
        {
            return Err(RegistryError::UnknownVersion {
                function: name.to_owned(),
                version: version.to_owned(),
            });
        }
        let function = Arc::new(self.load(&spec, version)?);
        let warm = function
            .prewarm(prewarm)
            .map_err(|e| RegistryError::Start(e.to_string()))?;
        let old = live.swap(function);
        self.store.set_alias(name, LIVE, version, None, now_ms())?;
        let kept: Vec<&str> = vec![version, old.version()];
        for gone in self.store.prune_versions(name, self.keep, &kept)? {
            let _ = std::fs::remove_file(module_path(&self.dir, &gone));
        }
        let moved = Moved {
            function: name.to_owned(),
            alias: LIVE.to_owned(),
            from: old.version().to_owned(),
            to: version.to_owned(),
            warm,
        };
        tracing::info!(function = name, from = %moved.from, to = %moved.to, warm, "live alias moved");
        Ok(moved)
    }

    /// Publishes and moves `live` to it.
    pub fn deploy(&self, name: &str, wasm: &[u8], source: &str) -> Result<Moved, RegistryError> {
        let row = self.publish(name, wasm, source)?;
        self.point(name, &row.version)
    }

    /// Moves `live` back to where it pointed before its last move.
    pub fn rollback(&self, name: &str) -> Result<Moved, RegistryError> {
        self.entry(name, |_| ())?;
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

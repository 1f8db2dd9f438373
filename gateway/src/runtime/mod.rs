//! The sandbox: modules compiled once per content hash (each with a wasmi
//! engine of its own),
//! warm instances, and per-invocation fuel, memory and time limits.
//!
//! An invocation either returns its [`Effects`] whole or an [`InvokeError`]
//! with nothing; a guest cannot make the host panic, block forever or grow
//! without bound. Calls are synchronous and CPU-bound: run them on worker
//! threads, never on the async reactor.

mod check;
mod usage;
pub use usage::VersionUsage;
mod effects;
mod error;
mod host;
mod wasi;

pub use check::{MAX_CONST_EXPR_DEPTH, MAX_MODULE_BYTES};
pub use effects::{
    decode_counter, Effects, Emit, Invoke, KvArithmeticError, KvWrite, Post, Response,
};
pub use error::{AbiViolation, FailureKind, InvokeError, LoadError};
pub use host::{
    HOST_BYTES_PER_FUEL, HOST_CALL_FUEL, MAX_KEY_BYTES, MAX_KV_WRITES, MAX_LOG_LINES,
    MAX_LOG_LINE_BYTES,
};

use host::{FunctionEnv, HostState, Meter, Stop};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmgate_abi::{exports, imports, Context, Destination, Envelope, Event, LogLevel};
use wasmi::{Engine, ExternType, Linker, Module, Store, TypedFunc, TypedResumableCall, ValType};

/// Fuel is granted in slices so that the wall-clock deadline is checked
/// between them: at roughly one unit per instruction this is a few
/// milliseconds on a Raspberry Pi, which bounds how late a deadline fires.
const FUEL_SLICE: u64 = 1_000_000;

/// Per-invocation budgets. The defaults suit a Raspberry Pi running dozens of
/// small functions; board profiles and the config override them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wasm instructions, roughly, and host calls by the bytes they move
    /// (`HOST_CALL_FUEL`, `HOST_BYTES_PER_FUEL`); also bounds a start function.
    pub fuel: u64,
    /// Linear memory, in bytes; growing past it fails the invocation.
    pub memory_bytes: usize,
    /// Wall-clock time for one invocation.
    pub timeout: Duration,
    /// Emits (and, separately, invokes) per invocation.
    pub max_emits: usize,
    /// Bytes per emitted payload, invoke payload or response body.
    pub max_emit_bytes: usize,
    /// Bytes per KV value.
    pub max_kv_value_bytes: usize,
    /// Instances kept warm after an invocation; 0 makes every start cold.
    pub warm_instances: usize,
}

impl Limits {
    pub const DEFAULT_FUEL: u64 = 50_000_000;
    pub const DEFAULT_MEMORY_BYTES: usize = 16 << 20;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1_000);
    pub const DEFAULT_MAX_EMITS: usize = 100;
    pub const DEFAULT_MAX_EMIT_BYTES: usize = 256 << 10;
    pub const DEFAULT_MAX_KV_VALUE_BYTES: usize = 64 << 10;
    pub const DEFAULT_WARM_INSTANCES: usize = 2;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: Self::DEFAULT_FUEL,
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            timeout: Self::DEFAULT_TIMEOUT,
            max_emits: Self::DEFAULT_MAX_EMITS,
            max_emit_bytes: Self::DEFAULT_MAX_EMIT_BYTES,
            max_kv_value_bytes: Self::DEFAULT_MAX_KV_VALUE_BYTES,
            warm_instances: Self::DEFAULT_WARM_INSTANCES,
        }
    }
}

/// What a function may reach beyond its own KV namespace (least privilege).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// MQTT filters the function may emit to on the local broker.
    pub local: Vec<String>,
    /// MQTT filters the function may emit to upstream.
    pub upstream: Vec<String>,
    /// Functions it may invoke.
    pub invoke: Vec<String>,
    /// Names of its secrets it may read.
    pub secrets: Vec<String>,
}

impl Grants {
    /// Everything, for `wasmgate invoke` and tests where there is nothing to protect.
    pub fn all() -> Self {
        Grants {
            local: vec!["#".into()],
            upstream: vec!["#".into()],
            invoke: vec!["*".into()],
            secrets: vec!["*".into()],
        }
    }

    pub fn allows_secret(&self, name: &str) -> bool {
        self.secrets.iter().any(|s| s == "*" || s == name)
    }

    pub fn allows_emit(&self, topic: &str, destination: Destination) -> bool {
        let filters = match destination {
            Destination::Local => &self.local,
            Destination::Upstream => &self.upstream,
        };
        filters
            .iter()
            .any(|filter| crate::router::filter_matches(filter, topic))
    }

    pub fn allows_invoke(&self, function: &str) -> bool {
        self.invoke.iter().any(|f| f == "*" || f == function)
    }
}

/// Read access to committed KV state, so the runtime need not know about SQLite.
pub trait KvRead: Send + Sync {
    /// The committed value of `key` in `namespace` (a function's name).
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
}

/// A KV store in memory: for `wasmgate invoke`, tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryKv {
    entries: Mutex<BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryKv {
    /// Commits one invocation's KV writes, as the durable store would.
    pub fn apply(&self, namespace: &str, effects: &Effects) {
        let mut entries = lock(&self.entries);
        for (key, write) in &effects.kv {
            let slot = (namespace.to_owned(), key.clone());
            match write.apply(entries.get(&slot).map(Vec::as_slice)) {
                Some(value) => entries.insert(slot, value),
                None => entries.remove(&slot),
            };
        }
    }

    pub fn entries(&self) -> BTreeMap<(String, String), Vec<u8>> {
        lock(&self.entries).clone()
    }
}

impl KvRead for MemoryKv {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(lock(&self.entries)
            .get(&(namespace.to_owned(), key.to_owned()))
            .cloned())
    }
}

/// A line a guest logged; kept even when the invocation fails, since that is
/// when it is most wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// How the instance that served an invocation came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new instance: instantiation, data segments, start function.
    Cold,
    /// An instance kept from an earlier successful invocation.
    Warm,
}

/// What an invocation consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub fuel: u64,
    /// Linear memory at the end of the call; memory never shrinks, so this is the peak.
    pub memory_bytes: usize,
    pub duration: Duration,
    pub start: Start,
}

/// Everything an invocation produced.
#[derive(Debug)]
pub struct Report {
    pub outcome: Result<Effects, InvokeError>,
    pub logs: Vec<LogLine>,
    /// Custom metric updates (`metric`), for the caller to apply if it succeeded.
    pub metrics: Vec<crate::custom_metrics::MetricUpdate>,
    /// Log lines past [`MAX_LOG_LINES`], counted but not kept.
    pub logs_dropped: usize,
    /// Emits and invokes the host refused, described (the first few), and
    /// how many there were. A guest may ignore the status; these may not be.
    pub refused: Vec<String>,
    pub refused_count: usize,
    pub cost: Cost,
}

/// Who a deployed function is and what it may do.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub name: String,
    pub limits: Limits,
    pub grants: Grants,
    /// Values the guest reads with `config_get`.
    pub config: BTreeMap<String, String>,
    /// What the guest reads with `secret_get`, by the names in
    /// `grants.secrets`.
    pub secrets: Secrets,
}

/// A function's secrets: kept out of `Debug` output, and out of what the
/// function logs (a line holding one has it replaced by `***`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(BTreeMap<String, String>);

impl Secrets {
    pub fn new(secrets: BTreeMap<String, String>) -> Self {
        Secrets(secrets)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `text` with every secret value in it replaced by `***`. Values
    /// shorter than 4 bytes are left alone: they would match everywhere.
    pub(crate) fn redact(&self, text: String) -> String {
        let mut text = text;
        for value in self.0.values().filter(|v| v.len() >= 4) {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), "***");
            }
        }
        text
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl FunctionSpec {
    /// Default limits, every grant, no config: for local runs and tests.
    pub fn permissive(name: impl Into<String>) -> Self {
        FunctionSpec {
            name: name.into(),
            limits: Limits::default(),
            grants: Grants::all(),
            config: BTreeMap::new(),
            secrets: Secrets::default(),
        }
    }
}

/// The compiled-module cache, each module with an engine of its own.
///
/// An engine per module version, not one for the process: a wasmi engine's
/// code map is append-only (`vendor/wasmi/src/engine/code_map`), so every
/// version ever compiled into a shared engine stayed in memory after its
/// last `Function` was gone, about 120 KiB a deploy (BENCHMARKS.md section
/// 15). A version's engine goes with its module, its functions and its
/// instances. Functions with the same bytes share one.
pub struct Runtime {
    config: wasmi::Config,
    modules: Mutex<HashMap<[u8; 32], Compiled>>,
}

/// A module, its engine and the host functions linked for that engine.
#[derive(Clone)]
struct Compiled {
    module: Module,
    engine: Engine,
    linker: Arc<Linker<HostState>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("compiled_modules", &self.compiled_modules())
            .finish_non_exhaustive()
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime {
    pub fn new() -> Self {
        let mut config = wasmi::Config::default();
        config.consume_fuel(true);
        // Translating a function on its first call is the gateway's work,
        // not the guest's: wasmi would bill it (7 units a byte) to the fuel
        // slice the call runs in, so that a handler over ~140 KB could never
        // start (and a failed first translation is not resumable). Its cost
        // is bounded instead by MAX_MODULE_BYTES, and its time counts
        // against the deadline like the rest of the call. Copies (bulk
        // memory, `memory.grow`) keep wasmi's price.
        config.fuel_cost(wasmi::CustomFuelCosts {
            bytes_copied_per_fuel: 64,
            fuel_per_bytes_translated: 0,
            fuel_per_bytes_validated: 0,
        });
        // Lazy translation keeps deploys and cold starts cheap: only the
        // functions an event actually reaches are translated.
        config.compilation_mode(wasmi::CompilationMode::LazyTranslation);
        Runtime {
            config,
            modules: Mutex::new(HashMap::new()),
        }
    }

    /// How many distinct modules (by content hash) have been compiled.
    pub fn compiled_modules(&self) -> usize {
        lock(&self.modules).len()
    }

    /// Drops a version's compiled module from the cache (a version no
    /// alias runs any more): a daemon that takes deploys for months would
    /// otherwise keep every version it ever ran compiled. Invocations in
    /// flight keep their own reference; a later deploy of the same bytes
    /// compiles again.
    pub fn evict(&self, function: &Function) {
        lock(&self.modules).remove(&function.hash);
    }

    /// Validates, compiles (once per content hash) and instantiates a module,
    /// checking its exports, imports and ABI version.
    ///
    /// The instance made here only proves that the start function and the
    /// imports work; it is dropped, and the warm pool fills on first use.
    /// Keeping it cost its whole linear memory per idle function (wasmi
    /// zero-fills memory by writing it; 1.15 MiB for a Rust guest with the
    /// default 1 MiB stack), which made idle functions 13× over their
    /// budget, for one saved cold start per function.
    pub fn deploy(&self, spec: FunctionSpec, wasm: &[u8]) -> Result<Function, LoadError> {
        let hash: [u8; 32] = Sha256::digest(wasm).into();
        let version = version_of(&hash);
        check::before_wasmi(wasm).map_err(|reason| LoadError::OverLimit {
            function: spec.name.clone(),
            version: version.clone(),
            reason,
        })?;
        let Compiled {
            module,
            engine,
            linker,
        } = self.compile(&spec.name, &hash, wasm)?;
        check_imports(&spec.name, &version, &module)?;
        check_exports(&spec.name, &version, &module)?;

        let mut function = Function {
            hash,
            abi_revision: 0,
            env: Arc::new(FunctionEnv {
                name: spec.name,
                limits: spec.limits,
                grants: spec.grants,
                config: spec.config,
                secrets: spec.secrets,
            }),
            version,
            module,
            engine,
            linker,
            pool: Mutex::new(Vec::new()),
            cold_starts: AtomicU64::new(0),
            warm_starts: AtomicU64::new(0),
            usage: Default::default(),
        };
        let mut instance = function.instantiate().map_err(|e| LoadError::Instantiate {
            function: function.env.name.clone(),
            version: function.version.clone(),
            source: Box::new(e),
        })?;
        function.abi_revision = function.check_abi_version(&mut instance)?;
        drop(instance);
        Ok(function)
    }

    fn compile(&self, name: &str, hash: &[u8; 32], wasm: &[u8]) -> Result<Compiled, LoadError> {
        if let Some(compiled) = lock(&self.modules).get(hash) {
            return Ok(compiled.clone());
        }
        // Compile outside the lock: a large module must not stall other deploys.
        let engine = Engine::new(&self.config);
        let module = Module::new(&engine, wasm).map_err(|e| LoadError::InvalidModule {
            function: name.to_owned(),
            message: e.to_string(),
        })?;
        let mut linker = Linker::new(&engine);
        // Defining a fixed set of host functions into a fresh linker only
        // fails on a duplicate name, which would be a bug in `host::define`.
        host::define(&mut linker).expect("host functions have unique names");
        wasi::define(&mut linker).expect("WASI functions have unique names");
        let compiled = Compiled {
            module,
            engine,
            linker: Arc::new(linker),
        };
        Ok(lock(&self.modules).entry(*hash).or_insert(compiled).clone())
    }
}

fn check_imports(function: &str, version: &str, module: &Module) -> Result<(), LoadError> {
    for import in module.imports() {
        let names: &[&str] = match import.module() {
            wasmgate_abi::IMPORT_MODULE => &imports::ALL,
            wasi::MODULE => wasi::NAMES,
            _ => &[],
        };
        let known = names.contains(&import.name()) && matches!(import.ty(), ExternType::Func(_));
        if !known {
            return Err(LoadError::UnknownImport {
                function: function.to_owned(),
                version: version.to_owned(),
                module: import.module().to_owned(),
                name: import.name().to_owned(),
            });
        }
    }
    Ok(())
}

fn check_exports(function: &str, version: &str, module: &Module) -> Result<(), LoadError> {
    let missing = |export, kind| LoadError::MissingExport {
        function: function.to_owned(),
        version: version.to_owned(),
        export,
        kind,
    };
    let func_type = |name: &str| {
        module.exports().find_map(|e| match e.ty() {
            ExternType::Func(f) if e.name() == name => Some(f.clone()),
            _ => None,
        })
    };
    let has_memory = module
        .exports()
        .any(|e| e.name() == exports::MEMORY && matches!(e.ty(), ExternType::Memory(_)));
    if !has_memory {
        return Err(missing(exports::MEMORY, "memory"));
    }
    match func_type(exports::ABI_VERSION) {
        Some(f) if f.params().is_empty() && f.results() == [ValType::I32] => {}
        _ => return Err(missing(exports::ABI_VERSION, "function () -> i32")),
    }
    match func_type(exports::HANDLE) {
        Some(f) if f.params() == [ValType::I32] && f.results() == [ValType::I32] => {}
        // A WASI command: its `main` runs once and ends the instance.
        _ if func_type(WASI_START).is_some() => {
            return Err(missing(
                exports::HANDLE,
                "function (i32) -> i32; this module is a WASI command (it exports `_start`): build it as a reactor, clang's `-mexec-model=reactor`, exporting `wasmgate_handle`",
            ))
        }
        _ => return Err(missing(exports::HANDLE, "function (i32) -> i32")),
    }
    Ok(())
}

/// A WASI command's entry point, which a function has no use for.
const WASI_START: &str = "_start";
/// A WASI reactor's constructors (wasi-libc's `__wasm_call_ctors`), run
/// once per instance after its start function.
const WASI_INITIALIZE: &str = "_initialize";

/// One instance with its store, ready for an invocation.
struct Instance {
    store: Store<HostState>,
    handle: TypedFunc<i32, i32>,
    abi_version: TypedFunc<(), i32>,
    /// The optional `wasmgate_abi_revision` export.
    abi_revision: Option<TypedFunc<(), i32>>,
}

/// A deployed function version: its module, settings and warm instances.
/// Cheap to share across worker threads (`Arc<Function>`); each invocation
/// takes its own instance.
pub struct Function {
    /// The module's SHA-256, the runtime's cache key.
    hash: [u8; 32],
    /// The guest's `wasmgate_abi_revision` (0 without the export).
    abi_revision: u32,
    env: Arc<FunctionEnv>,
    version: String,
    module: Module,
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    pool: Mutex<Vec<Instance>>,
    cold_starts: AtomicU64,
    warm_starts: AtomicU64,
    /// What this version's invocations used: for `/metrics`, the cost
    /// report and right-sizing.
    usage: VersionUsage,
}

impl fmt::Debug for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Function")
            .field("name", &self.env.name)
            .field("version", &self.version)
            .field("warm", &self.warm_instances())
            .finish_non_exhaustive()
    }
}

impl Function {
    pub fn name(&self) -> &str {
        &self.env.name
    }

    /// The first 12 hex digits of the module's SHA-256.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The ABI revision the guest knows ([`wasmgate_abi::ABI_REVISION`]).
    pub fn abi_revision(&self) -> u32 {
        self.abi_revision
    }

    pub fn limits(&self) -> &Limits {
        &self.env.limits
    }

    /// Invocations that had to instantiate (the first one, and any after a
    /// trap or beyond the warm pool); the instance deploy makes to validate
    /// the module is not counted.
    pub fn cold_starts(&self) -> u64 {
        self.cold_starts.load(Ordering::Relaxed)
    }

    pub fn usage(&self) -> &VersionUsage {
        &self.usage
    }

    pub fn warm_starts(&self) -> u64 {
        self.warm_starts.load(Ordering::Relaxed)
    }

    pub fn warm_instances(&self) -> usize {
        lock(&self.pool).len()
    }

    /// Runs the function on one event. `kv` supplies committed state for KV
    /// reads; `None` means an empty namespace.
    pub fn invoke(
        &self,
        request_id: u64,
        attempt: u32,
        event: &Event<'_>,
        kv: Option<Arc<dyn KvRead>>,
    ) -> Report {
        let started = Instant::now();
        let deadline_ms = unix_ms().saturating_add(self.env.limits.timeout.as_millis() as u64);
        let envelope = Envelope {
            context: Context {
                request_id,
                function: &self.env.name,
                version: &self.version,
                attempt,
                deadline_ms,
            },
            event: *event,
        }
        .encode()
        // Encoding into a Vec fails only for types postcard cannot express,
        // and the envelope has none.
        .expect("envelope encodes");

        let (mut instance, start) = match self.take_warm() {
            Some(instance) => (instance, Start::Warm),
            None => match self.instantiate() {
                Ok(instance) => {
                    self.cold_starts.fetch_add(1, Ordering::Relaxed);
                    (instance, Start::Cold)
                }
                Err(error) => {
                    self.usage.record(false, 0, 0, started.elapsed());
                    return Report {
                        outcome: Err(error),
                        logs: Vec::new(),
                        metrics: Vec::new(),
                        logs_dropped: 0,
                        refused: Vec::new(),
                        refused_count: 0,
                        cost: Cost {
                            fuel: 0,
                            memory_bytes: 0,
                            duration: started.elapsed(),
                            start: Start::Cold,
                        },
                    };
                }
            },
        };

        let state = &mut instance.store.data_mut().call;
        state.envelope = envelope;
        state.kv = kv;
        state.batch_len = match event {
            Event::Batch(items) => Some(items.count().unwrap_or(0) as u32),
            _ => None,
        };
        let (outcome, fuel) = self.run(&mut instance, started);
        let memory_bytes = instance
            .store
            .data()
            .memory
            .map(|m| m.data_size(&instance.store))
            .unwrap_or(0);
        let state = instance.store.data_mut();
        state.call.flush_stdio(&state.env);
        let call = std::mem::take(&mut state.call);
        // After `proc_exit` the guest's libc has run its exit handlers: the
        // instance is not used again.
        let reusable = call.exit.is_none();
        let outcome = outcome.map(|()| call.effects);
        if outcome.is_ok() && reusable {
            self.release(instance);
        }
        let duration = started.elapsed();
        self.usage
            .record(outcome.is_ok(), fuel, memory_bytes as u64, duration);
        Report {
            outcome,
            logs: call.logs,
            metrics: call.metrics,
            logs_dropped: call.logs_dropped,
            refused: call.refused,
            refused_count: call.refused_count,
            cost: Cost {
                fuel,
                memory_bytes,
                duration,
                start,
            },
        }
    }

    /// Calls the handler, refuelling slice by slice until it returns, the
    /// fuel budget is spent or the deadline passes. Returns the fuel used.
    fn run(&self, instance: &mut Instance, started: Instant) -> (Result<(), InvokeError>, u64) {
        let limits = &self.env.limits;
        let deadline = started + limits.timeout;
        let len = instance.store.data().call.envelope.len() as i32;
        let mut granted = limits.fuel.min(FUEL_SLICE);
        instance.store.data_mut().call.meter = Meter {
            deadline: Some(deadline),
            budget: limits.fuel,
            granted,
            debt: 0,
        };
        let store = &mut instance.store;
        let result = store
            .set_fuel(granted)
            .and_then(|()| instance.handle.call_resumable(&mut *store, len));
        let outcome = match result {
            Ok(call) => self.resume_until_done(store, call, deadline, &mut granted),
            Err(e) => self.exit_or_failure(store, Some(e)),
        };
        let meter = std::mem::take(&mut store.data_mut().call.meter);
        let used = granted
            .saturating_sub(store.get_fuel().unwrap_or(0))
            .saturating_add(meter.debt)
            .min(limits.fuel);
        (outcome, used)
    }

    /// Drives a resumable call to its end, granting fuel slice by slice
    /// (`granted` counts what was handed out, settled host debts included).
    fn resume_until_done(
        &self,
        store: &mut Store<HostState>,
        mut call: TypedResumableCall<i32>,
        deadline: Instant,
        granted: &mut u64,
    ) -> Result<(), InvokeError> {
        let limits = &self.env.limits;
        loop {
            match call {
                TypedResumableCall::Finished(0) => return Ok(()),
                TypedResumableCall::Finished(code) => {
                    return Err(InvokeError::Failed {
                        function: self.env.name.clone(),
                        version: self.version.clone(),
                        code,
                    })
                }
                // A host function aborted; the reason is in the call state.
                TypedResumableCall::HostTrap(_) => return self.exit_or_failure(store, None),
                TypedResumableCall::OutOfFuel(resumable) => {
                    if Instant::now() >= deadline {
                        return Err(self.deadline());
                    }
                    // What host calls charged beyond the last slice is
                    // paid out of this one (see `Meter`).
                    let meter = &mut store.data_mut().call.meter;
                    *granted = granted.saturating_add(std::mem::take(&mut meter.debt));
                    let left = limits.fuel.saturating_sub(*granted);
                    let slice = left.min(FUEL_SLICE.max(resumable.required_fuel()));
                    if slice == 0 || slice < resumable.required_fuel() {
                        return Err(self.out_of_fuel());
                    }
                    *granted += slice;
                    meter.granted = *granted;
                    if let Err(e) = store.set_fuel(slice) {
                        return Err(self.classify(store, Some(e)));
                    }
                    match resumable.resume(&mut *store) {
                        Ok(next) => call = next,
                        Err(e) => return Err(self.classify(store, Some(e))),
                    }
                }
            }
        }
    }

    fn deadline(&self) -> InvokeError {
        InvokeError::Deadline {
            function: self.env.name.clone(),
            version: self.version.clone(),
            timeout: self.env.limits.timeout,
        }
    }

    fn out_of_fuel(&self) -> InvokeError {
        InvokeError::OutOfFuel {
            function: self.env.name.clone(),
            version: self.version.clone(),
            fuel: self.env.limits.fuel,
        }
    }

    /// How a call that a host function ended came out: WASI `proc_exit(0)`
    /// is the handler's success, another code its failure, anything else
    /// as [`Function::classify`] names it.
    fn exit_or_failure(
        &self,
        store: &mut Store<HostState>,
        error: Option<wasmi::Error>,
    ) -> Result<(), InvokeError> {
        match store.data().call.exit {
            Some(0) => Ok(()),
            Some(code) => Err(InvokeError::Exited {
                function: self.env.name.clone(),
                version: self.version.clone(),
                code,
            }),
            None => Err(self.classify(store, error)),
        }
    }

    /// Names the failure. What the host recorded comes first: a guest that
    /// trips a limit often traps right after (an allocator aborting), and the
    /// limit is the useful answer.
    fn classify(&self, store: &mut Store<HostState>, error: Option<wasmi::Error>) -> InvokeError {
        let function = self.env.name.clone();
        let version = self.version.clone();
        let state = store.data_mut();
        match state.call.stop.take() {
            Some(Stop::Deadline) => return self.deadline(),
            Some(Stop::OutOfFuel) => return self.out_of_fuel(),
            None => {}
        }
        if let Some(violation) = state.call.violation.take() {
            return InvokeError::Abi {
                function,
                version,
                violation,
            };
        }
        if let Some(message) = state.call.host_failure.take() {
            return InvokeError::Host {
                function,
                version,
                message,
            };
        }
        if state.limiter.hit {
            return InvokeError::MemoryLimit {
                function,
                version,
                limit_bytes: self.env.limits.memory_bytes,
            };
        }
        match error {
            Some(e) if e.as_trap_code() == Some(wasmi::TrapCode::OutOfFuel) => self.out_of_fuel(),
            Some(e) => InvokeError::Trap {
                function,
                version,
                message: e.to_string(),
            },
            None => InvokeError::Trap {
                function,
                version,
                message: "host call aborted".into(),
            },
        }
    }

    /// A cold start: a fresh store and instance, with the start function (if
    /// any) run under the fuel budget.
    fn instantiate(&self) -> Result<Instance, InvokeError> {
        let mut store = Store::new(&self.engine, HostState::new(self.env.clone()));
        store.limiter(|state| &mut state.limiter);
        let instance = store
            .set_fuel(self.env.limits.fuel)
            .and_then(|()| self.linker.instantiate_and_start(&mut store, &self.module));
        let instance = match instance {
            Ok(instance) => instance,
            Err(e) => return Err(self.classify(&mut store, Some(e))),
        };
        let abi = |violation| InvokeError::Abi {
            function: self.env.name.clone(),
            version: self.version.clone(),
            violation,
        };
        let memory = instance
            .get_memory(&store, exports::MEMORY)
            .ok_or_else(|| abi(AbiViolation::NoMemory))?;
        store.data_mut().memory = Some(memory);
        if let Ok(initialize) = instance.get_typed_func::<(), ()>(&store, WASI_INITIALIZE) {
            store.data_mut().call.initializing = true;
            let result = initialize.call(&mut store, ());
            let call = std::mem::take(&mut store.data_mut().call);
            // Lines printed by constructors are not an invocation's: dropped.
            match (result, call.exit) {
                (_, Some(code)) => {
                    return Err(InvokeError::Exited {
                        function: self.env.name.clone(),
                        version: self.version.clone(),
                        code,
                    })
                }
                (Err(e), None) => {
                    store.data_mut().call = call;
                    return Err(self.classify(&mut store, Some(e)));
                }
                (Ok(()), None) => {}
            }
        }
        let handle = instance
            .get_typed_func::<i32, i32>(&store, exports::HANDLE)
            .map_err(|e| InvokeError::Trap {
                function: self.env.name.clone(),
                version: self.version.clone(),
                message: e.to_string(),
            })?;
        let abi_version = instance
            .get_typed_func::<(), i32>(&store, exports::ABI_VERSION)
            .map_err(|e| InvokeError::Trap {
                function: self.env.name.clone(),
                version: self.version.clone(),
                message: e.to_string(),
            })?;
        let abi_revision = instance
            .get_typed_func::<(), i32>(&store, exports::ABI_REVISION)
            .ok();
        Ok(Instance {
            store,
            handle,
            abi_version,
            abi_revision,
        })
    }

    /// Checks the guest's ABI version; returns its revision (0 without one).
    fn check_abi_version(&self, instance: &mut Instance) -> Result<u32, LoadError> {
        let store = &mut instance.store;
        let abi_version = instance.abi_version;
        let found = store
            .set_fuel(self.env.limits.fuel)
            .and_then(|()| abi_version.call(&mut *store, ()))
            .map_err(|e| LoadError::Instantiate {
                function: self.env.name.clone(),
                version: self.version.clone(),
                source: Box::new(self.classify(store, Some(e))),
            })?;
        if found as u32 != wasmgate_abi::ABI_VERSION {
            return Err(LoadError::AbiVersionMismatch {
                function: self.env.name.clone(),
                version: self.version.clone(),
                found: i64::from(found),
                expected: wasmgate_abi::ABI_VERSION,
            });
        }
        let revision = match instance.abi_revision {
            Some(revision) => {
                revision
                    .call(&mut *store, ())
                    .map_err(|e| LoadError::Instantiate {
                        function: self.env.name.clone(),
                        version: self.version.clone(),
                        source: Box::new(self.classify(store, Some(e))),
                    })?
            }
            None => 0,
        };
        Ok(u32::try_from(revision).unwrap_or(0))
    }

    /// Fills the warm pool up to `n` instances (at most its limit), so the
    /// first events after a swap to this version find them ready: a swap
    /// makes no cold-start spike. Returns how many are warm.
    pub fn prewarm(&self, n: usize) -> Result<usize, InvokeError> {
        let n = n.min(self.env.limits.warm_instances);
        while self.warm_instances() < n {
            let instance = self.instantiate()?;
            lock(&self.pool).push(instance);
        }
        Ok(self.warm_instances())
    }

    fn take_warm(&self) -> Option<Instance> {
        let instance = lock(&self.pool).pop()?;
        self.warm_starts.fetch_add(1, Ordering::Relaxed);
        Some(instance)
    }

    /// Keeps a healthy instance for the next invocation, up to the warm limit.
    fn release(&self, instance: Instance) {
        let mut pool = lock(&self.pool);
        if pool.len() < self.env.limits.warm_instances {
            pool.push(instance);
        }
    }
}

/// A poisoned lock here only means another thread panicked mid-update of a
/// plain collection; the data is still consistent enough to keep serving.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The version a module deploys as: the first 12 hex digits of its SHA-256.
pub fn module_version(wasm: &[u8]) -> String {
    version_of(&Sha256::digest(wasm).into())
}

fn version_of(hash: &[u8; 32]) -> String {
    hex(&hash[..6])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

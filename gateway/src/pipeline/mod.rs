//! The running gateway: triggers (MQTT, invokes, schedules) -> dispatch ->
//! runtime -> store (group commit) -> outbox -> broker.
//!
//! [`Gateway::start`] wires it up from a validated config; [`run`] adds
//! signal handling and a clean shutdown, which is all `wasmgate run` is.

mod apply;
mod batch;
mod dispatch;
mod log_gate;
mod outbox;
pub mod plan;
mod retry;
pub mod spans;
mod unit;

pub use crate::mqtt::{Backoff, Endpoint};
pub use apply::ApplyError;
pub use batch::{decode as decode_batch, BatchError, BatchSettings, Compression};
pub use dispatch::FailurePolicy;
pub use retry::{RetryPolicy, Stop};

use crate::config::{BrokerMode, Config, FunctionConfig};
use crate::metrics::FunctionMetrics;
use crate::runtime::{FunctionSpec, Grants, Limits, LoadError, Runtime};
use crate::store::{OutboxDestination, Store, StoreError, StoreOptions};
use crate::triggers::invoke::Intakes;
use crate::usage::UsageFlusher;
use dispatch::{Dispatcher, Sinks};
use outbox::Drain;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use unit::{LastTicks, Unit, Wiring};

use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a shutdown waits for in-flight work before leaving the rest to
/// be redelivered by the broker on the next start.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a start waits for its subscriptions before reporting "running"
/// anyway (the broker may be down; sessions keep retrying).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A module read fine but does not deploy (not Wasm, wrong ABI, bad
    /// imports): the file is named, since that is what the operator fixes.
    #[error("{path}: {error}")]
    Module { path: String, error: LoadError },
    #[cfg(feature = "embedded-broker")]
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error("this build has no embedded broker (feature `embedded-broker`); set broker.mode = \"external\"")]
    NoEmbeddedBroker,
    #[error("cannot start worker threads: {0}")]
    Threads(#[from] std::io::Error),
    #[error("function {function}: cannot start its {concurrency} worker thread(s) (functions.limits.concurrency): {error}; lower concurrency, or raise the system's thread limit (TasksMax= in the systemd unit, ulimit -u)")]
    Workers {
        function: String,
        concurrency: u32,
        error: std::io::Error,
    },
    #[error("{functions} functions need about {needed} file descriptors, but this process may open {limit} (LimitNOFILE= in the systemd unit, or ulimit -n); raise the limit or run fewer functions")]
    FileDescriptors {
        functions: usize,
        needed: u64,
        limit: u64,
    },
    #[error(
        "http: cannot listen on {addr}: {error} (is something else on that port? set http.listen)"
    )]
    HttpBind { addr: String, error: std::io::Error },
    #[error("http.tls: {0}")]
    HttpTls(String),
    #[error("the config has no functions to run")]
    NoFunctions,
    #[error("api: {0}")]
    Api(String),
    #[error("{0}")]
    Tracing(String),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Endpoint(#[from] crate::mqtt::EndpointError),
}

/// A function ready to deploy: its config and where its module comes from.
#[derive(Debug, Clone)]
pub struct FunctionModule {
    pub config: FunctionConfig,
    pub wasm: ModuleSource,
}

/// A module's bytes, or the file to read them from when it is deployed.
///
/// Files are read one at a time, each just before its deploy, and dropped
/// after it: wasmi keeps what it needs, and reading every module up front
/// held them all at once until start-up ended. glibc then kept the freed
/// space, so the resident memory stayed at that peak: 88 KB per function at
/// 1,000 functions with one module (BENCHMARKS.md section 8).
#[derive(Debug, Clone)]
pub enum ModuleSource {
    File(PathBuf),
    Bytes(Arc<[u8]>),
}

impl ModuleSource {
    fn read(&self, function: &str) -> Result<Arc<[u8]>, LoadError> {
        match self {
            ModuleSource::Bytes(bytes) => Ok(bytes.clone()),
            ModuleSource::File(path) => {
                crate::files::read_limited(path, crate::files::MAX_MODULE_BYTES, "module")
                    .map(Arc::from)
                    .map_err(|error| read_error(function, path, error.into()))
            }
        }
    }
}

fn read_error(function: &str, path: &Path, error: std::io::Error) -> LoadError {
    LoadError::Read {
        function: function.to_owned(),
        path: path.display().to_string(),
        error,
    }
}

/// Checks every function's module file can be opened, naming the function
/// on failure, so a typo stops the start before anything is opened. The
/// bytes are read at deploy ([`ModuleSource`]).
pub fn load_modules(config: &Config) -> Result<Vec<FunctionModule>, LoadError> {
    config
        .functions
        .iter()
        .map(|f| {
            crate::files::check_module(&f.wasm)
                .map_err(|error| read_error(&f.name, &f.wasm, error.into()))?;
            Ok(FunctionModule {
                config: f.clone(),
                wasm: ModuleSource::File(f.wasm.clone()),
            })
        })
        .collect()
}

/// The runtime view of a configured function.
pub fn function_spec(f: &FunctionConfig) -> FunctionSpec {
    FunctionSpec {
        name: f.name.clone(),
        limits: Limits {
            fuel: f.limits.fuel,
            memory_bytes: f.limits.memory_bytes() as usize,
            timeout: f.limits.timeout(),
            max_emits: f.limits.max_emits as usize,
            max_emit_bytes: f.limits.max_emit_bytes as usize,
            max_kv_value_bytes: f.limits.max_kv_value_bytes as usize,
            warm_instances: f.limits.warm_instances as usize,
        },
        grants: Grants {
            local: f.grants.local.clone(),
            upstream: f.grants.upstream.clone(),
            invoke: f.grants.invoke.clone(),
            secrets: f.grants.secrets.clone(),
        },
        config: f.config.clone(),
        secrets: crate::runtime::Secrets::new(
            f.secrets
                .iter()
                .map(|(name, secret)| (name.clone(), secret.expose().to_owned()))
                .collect(),
        ),
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// What runs: the config it started with, or the last one applied.
    config: Config,
    /// One per function, in config order.
    units: Vec<Unit>,
    sinks: Arc<Sinks>,
    intakes: Arc<Intakes>,
    drains: Vec<Drain>,
    invoke_task: JoinHandle<()>,
    /// What versions used, into the store every few seconds.
    usage: Arc<UsageFlusher>,
    usage_task: JoinHandle<()>,
    /// The HTTP listener, once some function has an `http` trigger.
    http: Option<HttpListener>,
    /// Open WebSocket connections, for a listener started by `apply`.
    connections: Arc<crate::triggers::websocket::Connections>,
    /// Every MQTT session's subscription acknowledgement: the embedded
    /// broker lets devices in once all have subscribed (again).
    sessions: Arc<std::sync::Mutex<Vec<tokio::sync::watch::Receiver<Option<std::time::Instant>>>>>,
    endpoint: Endpoint,
    /// The gateway's MQTT client id, which its sessions' ids start with.
    client_id: String,
    /// Sessions the embedded broker has room for (`apply` adding functions
    /// past it is refused: the broker's limits are set at start).
    session_room: Option<usize>,
    /// Versions and aliases: what the management API moves.
    registry: Arc<crate::registry::Registry>,
    /// The management socket's task, and what stops it.
    control: Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>,
    /// The management API's TCP listener, when configured.
    tcp_control: Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>,
    /// What `GET /v1/ready` answers.
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// What `/metrics` reads, and its own listener when configured.
    sources: Arc<crate::scrape::Sources>,
    metrics_listener: Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>,
    /// The OTLP span exporter, with `[tracing]`.
    traces: Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>,
    /// The fleet's jobs (`fleet.rs`), with `[fleet] jobs`.
    fleet: Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>,
    /// What the management API asks of the gateway itself (`apply`), for
    /// the run loop ([`Gateway::commands`]).
    commands: Option<tokio::sync::mpsc::Receiver<crate::control::Command>>,
    /// Kept alive for the gateway's lifetime.
    _broker: Option<EmbeddedBrokerHandle>,
}

impl Gateway {
    /// Opens the store, starts the broker (if embedded), deploys every
    /// function, and opens its session. Must be called within a tokio runtime.
    pub async fn start(
        config: &Config,
        modules: Vec<FunctionModule>,
    ) -> Result<Gateway, GatewayError> {
        if modules.is_empty() {
            return Err(GatewayError::NoFunctions);
        }
        check_file_descriptors(modules.len())?;
        // Deploy everything before connecting anything: a bad module stops
        // the start before any message is taken from the broker.
        let runtime = Runtime::new();
        let modules_dir = config.data_dir.join("modules");
        let mut deployed = Vec::with_capacity(modules.len());
        for module in &modules {
            let module_error = |error| GatewayError::Module {
                path: module.config.wasm.display().to_string(),
                error,
            };
            let wasm = module
                .wasm
                .read(&module.config.name)
                .map_err(module_error)?;
            let function = runtime
                .deploy(function_spec(&module.config), &wasm)
                .map_err(module_error)?;
            tracing::info!(
                function = function.name(),
                version = function.version(),
                "deployed"
            );
            deployed.push((module.config.clone(), Arc::new(function)));
        }

        let mut options = StoreOptions::new(config.data_dir.join("wasmgate.db"));
        options.synchronous = config.store.synchronous;
        options.group_commit_delay = Duration::from_millis(config.store.group_commit_ms);
        options.group_commit_max = config.store.group_commit_max as usize;
        options.outbox_max_bytes = u64::from(config.store.outbox_max_mb) << 20;
        options.local_when_full = config.store.local_when_full;
        options.upstream_when_full = config.store.upstream_when_full;
        options.log_keep = config.logs.keep();
        options.span_keep = config.tracing.as_ref().map_or(0, |t| t.keep());
        options.kv_streams = config
            .functions
            .iter()
            .flat_map(|f| f.triggers.iter().filter_map(|t| t.kv_change.clone()))
            .collect();
        let store = tokio::task::spawn_blocking(move || Store::open(options))
            .await
            .map_err(|e| GatewayError::Threads(std::io::Error::other(e.to_string())))??;

        let upstream = upstream_endpoint(config)?;
        let (endpoint, broker) = connect_to(config)?;

        let registry_dir = modules_dir.clone();
        // One sequence of request ids for the gateway: workers and the
        // management API's invocations alike.
        let request_ids = Arc::new(std::sync::atomic::AtomicU64::new(store.first_request_id()));
        let registry = Arc::new(crate::registry::Registry::new(
            runtime,
            store.clone(),
            modules_dir,
            config.store.keep_versions as usize,
            request_ids.clone(),
        ));
        // The management socket before any session or trigger: a second gateway on
        // this data_dir stops here, before it takes a message.
        let (commands_tx, commands) = tokio::sync::mpsc::channel(4);
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sources = Arc::new(crate::scrape::Sources::new(store.clone()));
        let usage = Arc::new(UsageFlusher::new(sources.clone()));
        let handles = crate::control::Handles {
            commands: commands_tx.clone(),
            ready: ready.clone(),
            sources: sources.clone(),
            usage: usage.clone(),
        };
        let control = match crate::control::Control::bind(&config.data_dir) {
            Ok(bound) => {
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let serve = bound.serve(registry.clone(), handles.clone(), stopped);
                Some((stop, tokio::spawn(serve)))
            }
            Err(e @ crate::control::ControlError::InUse(_)) => return Err(e.into()),
            // The gateway runs without its management API rather than not at
            // all (a data_dir path too long for a socket name, say).
            Err(e) => {
                tracing::warn!(error = %e, "no management API: deploys need a restart");
                None
            }
        };
        // The API on TCP, when configured: bound here, so that a taken
        // port or an unreadable token stops the start.
        let tcp_control = match &config.api.listen {
            None => None,
            Some(listen) => {
                let token = config
                    .api
                    .read_token()
                    .map_err(GatewayError::Api)?
                    .ok_or_else(|| GatewayError::Api("api.listen needs api.token_file".into()))?;
                let addr: std::net::SocketAddr = listen
                    .parse()
                    .map_err(|e| GatewayError::Api(format!("api.listen {listen:?}: {e}")))?;
                let bound = crate::control::TcpControl::bind(addr, token)
                    .await
                    .map_err(|e| {
                        GatewayError::Api(format!("cannot listen on {addr}: {e} (set api.listen)"))
                    })?;
                tracing::info!(listen = %addr, "management API listening (bearer token)");
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let serve = bound.serve(registry.clone(), handles.clone(), stopped);
                Some((stop, tokio::spawn(serve)))
            }
        };
        let mut lives = Vec::with_capacity(deployed.len());
        for ((f, function), module) in deployed.iter_mut().zip(&modules) {
            // The registry keeps its versions' bytes, not the path; read
            // again (one at a time) now that the store has opened, so that
            // a start refused before leaves the data directory untouched.
            let wasm = module
                .wasm
                .read(&f.name)
                .map_err(|error| GatewayError::Module {
                    path: f.wasm.display().to_string(),
                    error,
                })?;
            crate::registry::keep_module(&registry_dir, &wasm)?;
            drop(wasm);
            let prewarm = f.limits.concurrency.min(f.limits.warm_instances) as usize;
            let needs_revision = apply::needs_revision(f);
            let live = registry.adopt(
                function_spec(f),
                function.clone(),
                &f.wasm.display().to_string(),
                prewarm,
                needs_revision,
            )?;
            *function = live.current();
            lives.push(live);
        }
        // A rollout this gateway's last run left under way is rolled back:
        // its window was not seen whole.
        crate::rollout::recover(&registry);
        let connections = Arc::new(crate::triggers::websocket::Connections::default());
        let sinks = Arc::new(Sinks {
            store: store.clone(),
            connections: connections.clone(),
            request_ids: request_ids.clone(),
            log_rate: config.logs.rate(),
            tracing: config.tracing.is_some(),
        });
        let mut units = Vec::with_capacity(deployed.len());
        for ((f, _), live) in deployed.iter().zip(lives) {
            let (dispatcher, stop) = start_dispatcher(f, live, &sinks, None)?;
            units.push(Unit::new(f.clone(), dispatcher, stop));
        }
        let intakes = Arc::new(Intakes::default());
        intakes.set(intakes_of(&units));

        // What functions emit leaves through the outbox: local emits to the
        // local broker, upstream ones to the cloud broker, or to the local
        // broker when no [upstream] is configured (so a gateway works before
        // it has a cloud, and a bridge can forward them).
        let client_id = config.broker_client_id();
        let upstream_drain = match (&upstream, config.upstream_client_id()) {
            (Some(up), Some(id)) => Drain::start(
                store.clone(),
                OutboxDestination::Upstream,
                up.clone(),
                id,
                upstream_batch(config),
            ),
            _ => Drain::start(
                store.clone(),
                OutboxDestination::Upstream,
                endpoint.clone(),
                format!("{client_id}-up"),
                None,
            ),
        };
        let drains = vec![
            Drain::start(
                store.clone(),
                OutboxDestination::Local,
                endpoint.clone(),
                format!("{client_id}-out"),
                None,
            ),
            upstream_drain,
        ];
        let invoke_wake = Arc::new(tokio::sync::Notify::new());
        let wakes: Vec<(OutboxDestination, Arc<tokio::sync::Notify>)> = vec![
            (OutboxDestination::Local, drains[0].wake.clone()),
            (OutboxDestination::Upstream, drains[1].wake.clone()),
            (OutboxDestination::Invoke, invoke_wake.clone()),
        ];
        store.on_outbox(move |destination| {
            for (d, wake) in &wakes {
                if *d == destination {
                    wake.notify_one();
                }
            }
        });
        let invoke_task = tokio::spawn(crate::triggers::invoke::drain(
            store.clone(),
            intakes.clone(),
            invoke_wake,
        ));

        sources.set_functions(function_sources(&units));
        sources.set_drains(
            ["local", "upstream"]
                .iter()
                .zip(&drains)
                .map(|(destination, d)| crate::scrape::DrainSource {
                    destination,
                    delivered: d.delivered.clone(),
                    refused: d.refused.clone(),
                    undeliverable: d.dead_lettered.clone(),
                    link: d.link.clone(),
                })
                .collect(),
        );
        let metrics_listener = match &config.metrics.listen {
            None => None,
            Some(listen) => Some(start_metrics(listen, sources.clone()).await?),
        };
        let traces = match &config.tracing {
            None => None,
            Some(tracing) => Some(start_traces(config, tracing, &store, &sources)?),
        };
        // Jobs run once the functions do: a job's deploy needs them.
        let fleet = config.fleet.jobs.then(|| {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let fleet = crate::fleet::Fleet {
                thing: config.fleet.thing(&config.gateway_id).to_owned(),
                endpoint: upstream.clone().unwrap_or_else(|| endpoint.clone()),
                client_id: format!("{}-jobs", config.broker_client_id()),
                store: store.clone(),
                registry: registry.clone(),
                commands: commands_tx.clone(),
            };
            (stop, stopped, fleet)
        });
        forget_stale_consumers(&store, &units).await;
        let last_ticks = last_ticks(&store).await?;
        let wiring = Wiring {
            endpoint: &endpoint,
            client_id: &client_id,
            store: &store,
            last_ticks: &last_ticks,
        };
        for unit in &mut units {
            unit.start_triggers(&wiring, Vec::new());
        }
        let subscribed: Vec<_> = units.iter().filter_map(Unit::subscribed).collect();
        // What the embedded broker's device gate waits for: `apply` keeps
        // it to the sessions that run.
        let sessions = Arc::new(std::sync::Mutex::new(subscribed.clone()));
        let routes: Vec<_> = units.iter().flat_map(|u| u.routes(&store)).collect();
        let http = match routes.is_empty() {
            true => None,
            false => Some(start_http(config, routes, connections.clone()).await?),
        };
        // "Running" means subscribed: a message published after this line
        // reaches its function even on a first start with a fresh broker.
        let all_subscribed = async {
            for s in &subscribed {
                let _ = s.clone().wait_for(Option::is_some).await;
            }
        };
        if tokio::time::timeout(SUBSCRIBE_WAIT, all_subscribed)
            .await
            .is_err()
        {
            tracing::warn!(
                broker = %format!("{}:{}", endpoint.host, endpoint.port),
                "not yet subscribed at the local broker; retrying in the background"
            );
        }
        // The embedded broker lets devices in now that the sessions they
        // publish to exist, and again after a restart once they do again.
        #[cfg(feature = "embedded-broker")]
        if let Some(broker) = &broker {
            sources.set_broker(broker.counter());
            let sessions = sessions.clone();
            broker.open_devices(move |since| {
                sessions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .all(|s| s.borrow().is_some_and(|at| at >= since))
            });
        }
        // Where devices connect: the embedded broker's device listener, or
        // the external broker.
        #[cfg(feature = "embedded-broker")]
        let devices_at = match &broker {
            Some(broker) => broker.listen().to_string(),
            None => format!("{}:{}", endpoint.host, endpoint.port),
        };
        #[cfg(not(feature = "embedded-broker"))]
        let devices_at = format!("{}:{}", endpoint.host, endpoint.port);
        ready.store(true, Ordering::SeqCst);
        tracing::info!(
            functions = units.len(),
            broker = %devices_at,
            store = %store.path().display(),
            "gateway running"
        );
        let usage_task = tokio::spawn({
            let usage = usage.clone();
            async move {
                let mut every = tokio::time::interval(crate::usage::FLUSH_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    usage.flush();
                }
            }
        });
        let fleet = fleet.map(|(stop, stopped, fleet)| (stop, tokio::spawn(fleet.run(stopped))));
        Ok(Gateway {
            config: config.clone(),
            units,
            sinks,
            intakes,
            drains,
            invoke_task,
            usage,
            usage_task,
            http,
            connections,
            sessions,
            endpoint,
            client_id,
            session_room: broker
                .as_ref()
                .map(|_| embedded_sessions(config) + SESSION_MARGIN),
            registry,
            control,
            tcp_control,
            metrics_listener,
            traces,
            fleet,
            sources,
            ready,
            commands: Some(commands),
            _broker: broker,
        })
    }

    /// The management API's requests for the gateway itself, once: the
    /// run loop answers them ([`run_from`]).
    pub fn commands(&mut self) -> Option<tokio::sync::mpsc::Receiver<crate::control::Command>> {
        self.commands.take()
    }

    /// Every function as it runs, for the management API: its config
    /// (limits, grants, triggers), versions and alias, and counters.
    async fn describe(&self) -> crate::control::Reply {
        let registry = self.registry.clone();
        let views = tokio::task::spawn_blocking(move || registry.describe()).await;
        let views = match views {
            Ok(Ok(views)) => views,
            Ok(Err(e)) => {
                return crate::control::Reply {
                    status: 500,
                    body: serde_json::json!({ "error": e.to_string() }),
                }
            }
            Err(e) => {
                return crate::control::Reply {
                    status: 500,
                    body: serde_json::json!({ "error": e.to_string() }),
                }
            }
        };
        let functions: Vec<serde_json::Value> = self
            .units
            .iter()
            .map(|unit| {
                let view = views.iter().find(|v| v.name == unit.name());
                let m = unit.dispatcher.metrics.snapshot();
                // JSON that never panics (a path that is not UTF-8 is null).
                use plan::to_value as value;
                // A route's API keys are not for the management API to show.
                let mut triggers = value(&unit.config.triggers);
                for t in triggers.as_array_mut().into_iter().flatten() {
                    if let Some(auth) = t.get_mut("auth") {
                        *auth = serde_json::json!("(api keys not shown)");
                    }
                }
                serde_json::json!({
                    "name": unit.name(),
                    "live": view.map(|v| v.live.clone()),
                    "alias": view.and_then(|v| v.alias.clone()),
                    "versions": view.map(|v| v.versions.clone()).unwrap_or_default(),
                    "wasm": unit.config.wasm.display().to_string(),
                    "limits": value(&unit.config.limits),
                    "grants": value(&unit.config.grants),
                    "triggers": triggers,
                    "in_flight": unit.in_flight(),
                    "counters": {
                        "received": m.received,
                        "succeeded": m.succeeded,
                        "failed": m.failed,
                        "retries": m.retries,
                        "dead_letters": m.dead_letters,
                        "throttled": m.throttled,
                        "refused": m.refused,
                        "dropped": m.dropped,
                        "duplicates": m.duplicates,
                    },
                })
            })
            .collect();
        crate::control::Reply {
            status: 200,
            body: serde_json::Value::Array(functions),
        }
    }

    /// The function registry, for the management API.
    pub fn registry(&self) -> Arc<crate::registry::Registry> {
        self.registry.clone()
    }

    /// Where devices (and tests) reach the local broker.
    pub fn broker_endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Each function's name and live metrics, in config order.
    pub fn metrics(&self) -> Vec<(String, Arc<FunctionMetrics>)> {
        self.units
            .iter()
            .map(|u| (u.name().to_owned(), u.dispatcher.metrics.clone()))
            .collect()
    }

    /// Outbox rows delivered to a broker so far (emits out).
    pub fn delivered(&self) -> u64 {
        self.drains
            .iter()
            .map(|d| d.delivered.load(Ordering::Relaxed))
            .sum()
    }

    /// Outbox rows a broker refused so far (MQTT 5 PUBACKs with a failure
    /// reason code); each is kept and retried.
    pub fn refused(&self) -> u64 {
        self.drains
            .iter()
            .map(|d| d.refused.load(Ordering::Relaxed))
            .sum()
    }

    /// The durable store (KV, outbox).
    pub fn store(&self) -> &Store {
        &self.sinks.store
    }

    /// Stops taking messages, finishes what is in flight (up to `grace`):
    /// invocations, their commits and acks, and delivery of the outbox; then
    /// disconnects. Unfinished messages stay unacknowledged at the broker and
    /// undelivered emits stay in the outbox, both for the next start.
    pub async fn shutdown(self, grace: Duration) {
        // (The span exporter stops with the listeners below: spans it has
        // not sent stay in the database for the next start.)
        self.ready.store(false, Ordering::SeqCst);
        let totals = self.metrics();
        // Each function takes no more events, and a worker in a backoff
        // gives up on that event now (it stays at the broker) rather than
        // holding the shutdown for the whole wait.
        for unit in &self.units {
            unit.drain();
        }
        // No new requests; those in flight are answered as they settle.
        if let Some(http) = &self.http {
            let _ = http.stop.send(true);
        }
        let deadline = tokio::time::Instant::now() + grace;
        let in_flight = || -> usize { self.units.iter().map(Unit::in_flight).sum() };
        while in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = in_flight();
        if left > 0 {
            tracing::warn!(
                left,
                "shutdown grace ran out; unfinished messages stay at the broker"
            );
        }
        // Acks queued by the last commits go out before each DISCONNECT.
        let mut dispatchers = Vec::with_capacity(self.units.len());
        for unit in self.units {
            dispatchers.push(unit.stop_sources().await);
        }
        self.invoke_task.abort();
        self.usage_task.abort();
        for (stop, task) in self
            .control
            .into_iter()
            .chain(self.tcp_control)
            .chain(self.metrics_listener)
            .chain(self.traces)
            .chain(self.fleet)
        {
            let _ = stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        if let Some(mut http) = self.http {
            if tokio::time::timeout(Duration::from_secs(2), &mut http.task)
                .await
                .is_err()
            {
                http.task.abort();
            }
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let count = |of: fn(&Drain) -> &std::sync::atomic::AtomicU64| -> u64 {
            self.drains
                .iter()
                .map(|d| of(d).load(Ordering::Relaxed))
                .sum()
        };
        let (delivered, refused, undeliverable) = (
            count(|d| &d.delivered),
            count(|d| &d.refused),
            count(|d| &d.dead_lettered),
        );
        for drain in self.drains {
            drain.close(remaining.max(Duration::from_secs(1))).await;
        }
        // Workers end once every queue sender is gone, including the ones
        // `Intakes` holds for invokes; they are idle by now or past the grace.
        self.intakes.set(HashMap::new());
        let store = self.sinks.store.clone();
        let usage = self.usage.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for d in dispatchers {
                d.join();
            }
            // The last invocations' usage, in the store's last transaction.
            usage.flush();
            store.close();
            log_store_totals(&store);
        })
        .await;
        for (name, metrics) in &totals {
            log_function_totals(name, metrics);
        }
        tracing::info!(delivered, refused, undeliverable, "outbox totals");
        tracing::info!("gateway stopped");
    }
}

/// Starts a function's workers, with what stops their backoffs (each
/// function's own: `apply` stops one while the others go on). `metrics`:
/// the counters of the workers they replace, if any, so totals go on.
fn start_dispatcher(
    f: &FunctionConfig,
    live: Arc<crate::registry::Live>,
    sinks: &Arc<Sinks>,
    metrics: Option<Arc<FunctionMetrics>>,
) -> Result<(Dispatcher, Arc<Stop>), GatewayError> {
    let stop = Arc::new(Stop::default());
    let dispatcher = Dispatcher::start(
        live,
        f.limits.concurrency as usize,
        f.limits.queue as usize,
        sinks.clone(),
        metrics.unwrap_or_default(),
        failure_policy(f),
        stop.clone(),
    )
    .map_err(|error| GatewayError::Workers {
        function: f.name.clone(),
        concurrency: f.limits.concurrency,
        error,
    })?;
    Ok((dispatcher, stop))
}

/// Drops the cursors of change streams no trigger reads any more (see
/// `Store::forget_kv_consumers`); a failure leaves them, logged.
async fn forget_stale_consumers(store: &Store, units: &[Unit]) {
    let running: Vec<String> = units
        .iter()
        .flat_map(|u| Unit::stream_consumers(&u.config))
        .collect();
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.forget_kv_consumers(&running)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(
            cursors = n,
            "forgot the cursors of KV change triggers that are gone"
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot forget stale KV change cursors; they hold back pruning")
        }
        Err(_) => {}
    }
}

/// Each function's counters, for `/metrics`.
fn function_sources(units: &[Unit]) -> Vec<crate::scrape::FunctionSource> {
    units
        .iter()
        .map(|u| crate::scrape::FunctionSource {
            name: u.name().to_owned(),
            metrics: u.dispatcher.metrics.clone(),
            live: u.dispatcher.live.clone(),
            in_flight: u.dispatcher.intake.in_flight.clone(),
            http: u.config.triggers.iter().any(|t| t.route().is_some()),
        })
        .collect()
}

/// Binds `[metrics] listen` and serves `/metrics` there.
async fn start_metrics(
    listen: &str,
    sources: Arc<crate::scrape::Sources>,
) -> Result<(tokio::sync::watch::Sender<bool>, JoinHandle<()>), GatewayError> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| GatewayError::Api(format!("metrics.listen {listen:?}: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        GatewayError::Api(format!(
            "cannot listen on {addr} for /metrics: {e} (set metrics.listen)"
        ))
    })?;
    tracing::info!(listen = %addr, "metrics listening (/metrics)");
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let sources = sources.clone();
            async move { crate::control::metrics(sources).await }
        }),
    );
    let task = tokio::spawn(async move {
        let stopping = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopping)
            .await
        {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok((stop, task))
}

/// Each function's intake, for invokes.
fn intakes_of(units: &[Unit]) -> HashMap<String, crate::triggers::Intake> {
    units
        .iter()
        .map(|u| {
            (
                u.name().to_owned(),
                u.dispatcher.intake.for_trigger("invoke"),
            )
        })
        .collect()
}

/// Each schedule's last settled tick.
async fn last_ticks(store: &Store) -> Result<LastTicks, GatewayError> {
    let reader = store.clone();
    Ok(tokio::task::spawn_blocking(move || reader.schedule_ticks())
        .await
        .map_err(|e| GatewayError::Threads(std::io::Error::other(e.to_string())))??
        .into_iter()
        .map(|(function, name, last)| ((function, name), last))
        .collect())
}

/// Sessions a gateway asks the embedded broker to make room for: one per
/// function, and the local, upstream and invoke drains.
fn embedded_sessions(config: &Config) -> usize {
    config.functions.len() + 3
}

/// Functions `apply` may add beyond those the gateway started with: the
/// embedded broker keeps room for its own sessions to reconnect, and this
/// much of it may go to new ones.
const SESSION_MARGIN: usize = 8;

/// File descriptors a gateway with `functions` functions needs: a broker
/// connection per function and a few each for the store, drains, the
/// embedded broker's pipes and the reactor. Checked at start so that a
/// large config fails with a clear message, not with `EMFILE` half-way.
fn check_file_descriptors(functions: usize) -> Result<(), GatewayError> {
    let needed = functions as u64 * 2 + 64;
    match open_files_limit() {
        Some(limit) if limit < needed => Err(GatewayError::FileDescriptors {
            functions,
            needed,
            limit,
        }),
        _ => Ok(()),
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits`
/// (Linux); `None` where that cannot be read.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What happened to one function's events in this run: one line per
/// function at shutdown, for operators and the end-to-end tests.
fn log_function_totals(function: &str, metrics: &FunctionMetrics) {
    let s = metrics.snapshot();
    tracing::info!(
        function,
        received = s.received,
        succeeded = s.succeeded,
        failed = s.failed,
        retries = s.retries,
        dead_letters = s.dead_letters,
        throttled = s.throttled,
        refused = s.refused,
        dropped = s.dropped,
        duplicates = s.duplicates,
        acked = s.acked,
        "function totals"
    );
}

/// A function's retry and dead-letter settings, as the dispatcher applies them.
pub fn failure_policy(f: &FunctionConfig) -> FailurePolicy {
    FailurePolicy {
        retry: RetryPolicy::from(&f.retry),
        keep: f.dead_letters.keep,
        topic: f.dead_letters.topic.clone(),
    }
}

/// What the store did in this run, for the operator and the crash tests:
/// `outbox_dropped` is the `drop-oldest` policy's count, the other log line
/// of every dropped row.
fn log_store_totals(store: &Store) {
    let stats = store.stats();
    let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    tracing::info!(
        transactions = get(&stats.transactions),
        commits = get(&stats.commits),
        outbox_written = get(&stats.outbox_written),
        outbox_deleted = get(&stats.outbox_deleted),
        outbox_dropped = get(&stats.outbox_dropped),
        failures = get(&stats.failures),
        outbox_bytes_waiting = store.outbox_bytes(),
        "store totals"
    );
}

/// The running HTTP listener.
#[derive(Debug)]
struct HttpListener {
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Its routes, which `apply` replaces.
    routes: crate::triggers::http::RouteTable,
}

/// Binds `[http] listen` and serves `routes` (every `http` trigger's).
async fn start_http(
    config: &Config,
    routes: Vec<(crate::triggers::route::Route, crate::triggers::http::Target)>,
    connections: Arc<crate::triggers::websocket::Connections>,
) -> Result<HttpListener, GatewayError> {
    use crate::triggers::http::Server;
    let addr = config
        .http
        .listen_addr()
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
    let tls = match &config.http.tls {
        None => None,
        Some(tls) => Some(http_tls(tls)?),
    };
    let https = tls.is_some();
    let server = Server::bind(addr, routes, config.http.max_body(), tls, connections)
        .await
        .map_err(|error| GatewayError::HttpBind {
            addr: addr.to_string(),
            error,
        })?;
    tracing::info!(listen = %addr, tls = https, "http listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let routes = server.routes();
    let task = tokio::spawn(server.serve(stopped));
    Ok(HttpListener { stop, task, routes })
}

/// The HTTP listener's TLS settings, read once at start so that a bad file
/// is a start-up error naming it.
#[cfg(feature = "tls")]
fn http_tls(
    tls: &crate::config::HttpTlsConfig,
) -> Result<crate::triggers::http::Tls, GatewayError> {
    crate::tls::server_config(&tls.cert, &tls.key, tls.client_ca.as_deref())
        .map_err(|e| GatewayError::HttpTls(e.to_string()))
}

#[cfg(not(feature = "tls"))]
fn http_tls(_: &crate::config::HttpTlsConfig) -> Result<crate::triggers::http::Tls, GatewayError> {
    Err(GatewayError::HttpTls(
        "this build has no TLS (feature `tls`)".into(),
    ))
}

/// Starts the embedded broker if configured, and says where to connect.
fn connect_to(config: &Config) -> Result<(Endpoint, Option<EmbeddedBrokerHandle>), GatewayError> {
    let broker = &config.broker;
    match broker.mode {
        BrokerMode::External => Ok((
            Endpoint::from_config(
                broker.host.as_deref().unwrap_or("127.0.0.1"),
                broker.effective_port(),
                broker.username.as_ref(),
                broker.password.as_ref(),
                broker.tls.as_ref(),
                broker.protocol,
            )?,
            None,
        )),
        BrokerMode::Embedded => start_embedded(config),
    }
}

/// The upstream batching settings, with the default topic filled in.
pub fn upstream_batch(config: &Config) -> Option<BatchSettings> {
    let batch = config.upstream.as_ref()?.batch.as_ref()?;
    Some(BatchSettings {
        topic: batch
            .topic
            .clone()
            .unwrap_or_else(|| format!("wasmgate/{}/batch", config.gateway_id)),
        max_messages: batch.max_messages as usize,
        max_bytes: batch.max_bytes as usize,
        max_delay: Duration::from_millis(batch.max_delay_ms),
        compression: batch.compression,
    })
}

/// The cloud broker, if configured.
fn upstream_endpoint(config: &Config) -> Result<Option<Endpoint>, GatewayError> {
    config
        .upstream
        .as_ref()
        .map(|u| {
            Endpoint::from_config(
                &u.host,
                u.effective_port(),
                u.username.as_ref(),
                u.password.as_ref(),
                u.tls.as_ref(),
                u.protocol,
            )
        })
        .transpose()
        .map_err(GatewayError::from)
}

#[cfg(feature = "embedded-broker")]
type EmbeddedBrokerHandle = crate::broker::EmbeddedBroker;
#[cfg(not(feature = "embedded-broker"))]
type EmbeddedBrokerHandle = ();

#[cfg(feature = "embedded-broker")]
fn start_embedded(
    config: &Config,
) -> Result<(Endpoint, Option<EmbeddedBrokerHandle>), GatewayError> {
    let listen = config
        .broker
        .listen_addr()
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 1883)));
    let sessions = embedded_sessions(config) + SESSION_MARGIN;
    let mut settings = crate::broker::BrokerSettings::new(listen, sessions);
    let b = &config.broker;
    if let Some(n) = b.max_connections {
        // The gateway's own room stays as it is.
        settings.max_connections =
            settings.max_connections - settings.max_device_connections + n as usize;
        settings.max_device_connections = n as usize;
    }
    if let Some(n) = b.max_retained {
        settings.max_retained_count = n as usize;
    }
    if let Some(mb) = b.max_retained_mb {
        settings.max_retained_bytes = (mb as usize) << 20;
    }
    settings.passwords.clone_from(&b.passwords);
    settings.tls = b
        .tls_listener
        .as_ref()
        .map(|t| crate::broker::TlsListenerSettings {
            // Validation has checked it parses.
            listen: t
                .listen_addr()
                .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8883))),
            cert: t.cert.clone(),
            key: t.key.clone(),
            client_ca: t.client_ca.clone(),
        });
    let broker = crate::broker::EmbeddedBroker::start(settings)?;
    let addr = broker.addr();
    let (user, password) = match broker.credentials() {
        Some((user, password)) => (
            Some(user.to_owned()),
            Some(crate::config::Secret::new(password)),
        ),
        None => (None, None),
    };
    let mut endpoint = Endpoint::from_config(
        &addr.ip().to_string(),
        addr.port(),
        user.as_ref(),
        password.as_ref(),
        None,
        // Validation keeps MQTT 5 to external brokers.
        crate::config::Protocol::V311,
    )?;
    endpoint.max_packet_bytes = Some(crate::broker::MAX_PAYLOAD_BYTES);
    Ok((endpoint, Some(broker)))
}

#[cfg(not(feature = "embedded-broker"))]
fn start_embedded(
    _config: &Config,
) -> Result<(Endpoint, Option<EmbeddedBrokerHandle>), GatewayError> {
    Err(GatewayError::NoEmbeddedBroker)
}

/// `wasmgate run`: start, wait for `shutdown` (SIGINT/SIGTERM in the CLI),
/// stop cleanly. Without a [`Source`], `apply` and SIGHUP are refused.
/// Starts the OTLP span exporter for `[tracing]`.
fn start_traces(
    config: &Config,
    tracing: &crate::config::TracingConfig,
    store: &Store,
    sources: &crate::scrape::Sources,
) -> Result<(tokio::sync::watch::Sender<bool>, JoinHandle<()>), GatewayError> {
    // Validation has parsed it already.
    let endpoint = spans::Endpoint::parse(&tracing.endpoint)
        .map_err(|e| GatewayError::Tracing(format!("tracing.endpoint: {e}")))?;
    #[cfg(feature = "tls")]
    let tls = match endpoint.tls {
        true => Some(
            crate::tls::client_config(&tracing.tls.clone().unwrap_or_default())
                .map_err(|e| GatewayError::Tracing(format!("tracing.tls: {e}")))?,
        ),
        false => None,
    };
    #[cfg(not(feature = "tls"))]
    let tls = None;
    let resource = vec![
        ("service.name", tracing.service_name().to_owned()),
        ("service.instance.id", config.gateway_id.clone()),
        ("service.version", env!("CARGO_PKG_VERSION").to_owned()),
    ];
    let stats = Arc::new(spans::ExportStats::default());
    sources.set_traces(stats.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    ::tracing::info!(endpoint = %tracing.endpoint, "exporting spans over OTLP/HTTP");
    let task = tokio::spawn(spans::run(
        store.clone(),
        endpoint,
        resource,
        tls,
        stats,
        stopped,
    ));
    Ok((stop, task))
}

pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
    let (_keep, hangups) = tokio::sync::mpsc::channel(1);
    run_from(config, None, shutdown, hangups).await
}

/// Where a running gateway reads its config again (`apply` without a
/// path, SIGHUP), and how: the same loader and board as at start.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub board: Option<crate::board::BoardProfile>,
}

impl Source {
    fn load(&self, path: Option<&Path>) -> Result<Config, crate::config::ConfigErrors> {
        let path = path.unwrap_or(&self.path);
        let needs = crate::config::Needs::EVERYTHING;
        match &self.board {
            Some(board) => board.load_config(path, needs),
            None => crate::config::load(path, needs, |_, _| {}),
        }
    }
}

/// [`run`], and while running: each message on `hangups` (SIGHUP, the
/// unit's `ExecReload`) applies the config file again, as does the
/// management API's `apply`.
pub async fn run_from(
    config: Config,
    source: Option<Source>,
    shutdown: impl Future<Output = ()>,
    mut hangups: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), GatewayError> {
    let modules = load_modules(&config)?;
    let mut gateway = Gateway::start(&config, modules).await?;
    crate::systemd::ready();
    let watchdog = crate::systemd::watchdog_interval().map(|every| {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                crate::systemd::watchdog();
            }
        })
    });
    let mut commands = gateway.commands();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = hangups.recv() => {
                tracing::info!("SIGHUP: applying the config file again");
                let reply = apply_file(&mut gateway, source.as_ref(), None, false).await;
                if (200..300).contains(&reply.status) {
                    tracing::info!(plan = %reply.body["lines"], "SIGHUP: config applied");
                } else {
                    tracing::error!(error = %reply.body["error"], "SIGHUP: config not applied; the gateway runs as before");
                }
            }
            Some(command) = recv_command(&mut commands) => match command {
                crate::control::Command::Apply { path, dry_run, reply } => {
                    let answer = apply_file(&mut gateway, source.as_ref(), path.as_deref(), dry_run).await;
                    let _ = reply.send(answer);
                }
                crate::control::Command::Functions { reply } => {
                    let _ = reply.send(gateway.describe().await);
                }
                crate::control::Command::CheckBundle { function, bundle, reply } => {
                    let _ = reply.send(crate::bundle::check(&bundle, &function, gateway.config()));
                }
            },
        }
    }
    crate::systemd::stopping();
    tracing::info!("shutting down: finishing in-flight work");
    gateway.shutdown(SHUTDOWN_GRACE).await;
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    Ok(())
}

async fn recv_command(
    commands: &mut Option<tokio::sync::mpsc::Receiver<crate::control::Command>>,
) -> Option<crate::control::Command> {
    match commands {
        Some(commands) => commands.recv().await,
        None => std::future::pending().await,
    }
}

/// Loads a config file as the gateway was started with, applies it (or,
/// `dry_run`, only plans it), and says what happened, for the API and logs.
async fn apply_file(
    gateway: &mut Gateway,
    source: Option<&Source>,
    path: Option<&Path>,
    dry_run: bool,
) -> crate::control::Reply {
    use crate::control::Reply;
    use serde_json::json;
    let Some(source) = source else {
        return Reply {
            status: 409,
            body: json!({ "error": "this gateway was not started from a config file; nothing to apply" }),
        };
    };
    // The API may be on TCP: it reads config files beside the gateway's
    // own, not any file the daemon's user can read.
    if let Some(path) = path {
        let dir = |p: &Path| {
            std::fs::canonicalize(p)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
        };
        if dir(path).is_none() || dir(path) != dir(&source.path) {
            return Reply {
                status: 403,
                body: json!({ "error": format!(
                    "{}: apply takes config files in the directory of the gateway's own ({}); nothing applied",
                    path.display(),
                    source.path.display()
                ) }),
            };
        }
    }
    let (loader, wanted) = (source.clone(), path.map(Path::to_path_buf));
    let loaded = tokio::task::spawn_blocking(move || loader.load(wanted.as_deref())).await;
    let new = match loaded {
        Ok(Ok(config)) => config,
        Ok(Err(problems)) => {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Reply {
                status: 422,
                body: json!({
                    "error": format!("the config has {} problem(s); nothing applied", problems.len()),
                    "problems": problems,
                }),
            };
        }
        Err(e) => {
            return Reply {
                status: 500,
                body: json!({ "error": e.to_string() }),
            }
        }
    };
    match gateway.apply(new, dry_run).await {
        Ok(plan) => Reply {
            status: 200,
            body: json!({ "applied": !dry_run, "dry_run": dry_run, "lines": plan.lines(), "plan": plan }),
        },
        Err(e) => Reply {
            status: match e {
                apply::ApplyError::RestartNeeded(_) | apply::ApplyError::MovedMeanwhile(_) => 409,
                apply::ApplyError::Record(_) => 500,
                apply::ApplyError::Gateway(
                    GatewayError::HttpBind { .. } | GatewayError::Workers { .. },
                ) => 422,
                apply::ApplyError::Gateway(_) => 500,
                _ => 422,
            },
            body: json!({
                "error": format!("{e}; nothing applied"),
                "lines": e.plan().map(plan::Plan::lines),
                "plan": e.plan(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(functions: &[(&str, &Path)]) -> Config {
        let mut text = String::from("gateway_id = \"t\"\n");
        for (name, wasm) in functions {
            text.push_str(&format!(
                "[[functions]]\nname = \"{name}\"\nwasm = \"{}\"\ntriggers = [{{ mqtt = \"t/{name}\" }}]\n",
                wasm.display()
            ));
        }
        Config::parse(&text, "test.toml").expect("config parses")
    }

    #[test]
    fn module_files_are_checked_up_front_and_read_at_deploy() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.wasm"), dir.path().join("b.wasm"));
        std::fs::write(&a, b"module a").unwrap();
        std::fs::write(&b, b"module b").unwrap();
        let modules =
            load_modules(&config_with(&[("one", &a), ("two", &b), ("three", &a)])).unwrap();
        let names: Vec<_> = modules.iter().map(|m| m.config.name.as_str()).collect();
        assert_eq!(names, ["one", "two", "three"]);
        // Nothing is held until deploy asks for it; then the file as it is.
        assert!(matches!(&modules[2].wasm, ModuleSource::File(p) if p == &a));
        std::fs::write(&a, b"module a, rebuilt").unwrap();
        assert_eq!(&*modules[0].wasm.read("one").unwrap(), b"module a, rebuilt");
        assert_eq!(&*modules[1].wasm.read("two").unwrap(), b"module b");
        // A file gone between the check and the deploy is still a named error.
        std::fs::remove_file(&b).unwrap();
        let text = modules[1].wasm.read("two").unwrap_err().to_string();
        assert!(
            text.contains("function two") && text.contains("b.wasm"),
            "{text}"
        );
    }

    #[test]
    fn the_open_files_limit_is_read_from_proc() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), None);
        // On this machine it is there and plausible.
        assert!(open_files_limit().is_some_and(|l| l >= 64));
    }

    #[test]
    fn an_unreadable_module_names_its_function_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.wasm");
        let err = load_modules(&config_with(&[("ghost", &missing)])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("function ghost"), "{text}");
        assert!(text.contains("missing.wasm"), "{text}");
    }
}

//! The management API: HTTP on a unix socket in `data_dir` (`control.sock`,
//! mode 0600, so only the gateway's user reaches it), through which the CLI
//! deploys versions and moves aliases on the running gateway, without a
//! restart and without touching a device's connection.
//!
//! Endpoints (JSON answers; errors as `{"error": "..."}`):
//! - `GET  /v1/health`; `GET /v1/ready`: 503 until every trigger runs
//! - `GET  /metrics`: OpenMetrics text (`scrape.rs`)
//! - `GET  /v1/stats`: the same counters as JSON, with the gateway's clock
//!   (`stats.rs`), which the dashboard polls
//! - `GET  /dashboard`: the live dashboard's page and its files
//!   (`dashboard/`), the only paths TCP serves without the token
//! - `GET  /v1/functions`: every function as it runs: live version, alias,
//!   versions, limits, triggers, counters
//! - `GET  /v1/functions/{name}/versions`
//! - `POST /v1/functions/{name}/versions`: publish a module (the body), 201
//! - `POST /v1/functions/{name}/deploy`: publish it and move `live` to it
//! - `PUT  /v1/functions/{name}/aliases/live`: `{"version": "..."}`, or with
//!   a canary `{"version": "...", "other": "...", "weight": 0.1}`
//! - `POST /v1/functions/{name}/rollback`: `live` back where it was
//! - `POST /v1/functions/{name}/invoke`: `{"event": <event file>, "dry_run":
//!   false}`: run the live version once with its real grants and limits,
//!   its effects committed (or, dry, only shown)
//! - `POST /v1/apply`: `{"path": "/etc/wasmgate/gateway.toml", "dry_run":
//!   false}`: the file as a live diff (see `pipeline::plan`); 200 with the
//!   plan, 409 when it changes what needs a restart, 422 when the file or
//!   a module in it is wrong (then nothing of it is applied)
//!
//! A module that does not load (not wasm, another ABI, over its limits) is
//! refused with 422 and the running version is untouched.
//!
//! With `[api] listen`, the same API is served on TCP too, each request
//! checked for the bearer token in `api.token_file` ([`TcpControl`]).

use crate::registry::{Registry, RegistryError};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put, MethodRouter};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// The socket's name in `data_dir`.
pub const SOCKET: &str = "control.sock";

/// The largest module a publish takes (the runtime refuses larger anyway),
/// or a bundle of one (its manifest is a few KB).
const MAX_UPLOAD: usize = crate::files::MAX_MODULE_BYTES as usize + (1 << 20);

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut response = Response::new(Body::from(format!("{value}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// An endpoint's answer before it is a response: what the fleet's jobs
/// (`fleet.rs`) get from a deploy, as a client of the API would.
pub type Answer = (StatusCode, serde_json::Value);

fn refused_value(error: &RegistryError) -> Answer {
    let status = match error {
        RegistryError::UnknownFunction(_) | RegistryError::UnknownVersion { .. } => {
            StatusCode::NOT_FOUND
        }
        RegistryError::NothingToRollBack(_) => StatusCode::CONFLICT,
        RegistryError::Weight(_) => StatusCode::BAD_REQUEST,
        RegistryError::MovedMeanwhile(_)
        | RegistryError::RolloutUnderWay(_)
        | RegistryError::SameVersion { .. } => StatusCode::CONFLICT,
        RegistryError::Load(_)
        | RegistryError::Start(_)
        | RegistryError::OldGuest { .. }
        | RegistryError::HookFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
        RegistryError::Store(_) | RegistryError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, serde_json::json!({ "error": error.to_string() }))
}

/// A deploy's `?strategy=..&max_error_rate=..&max_p99_ms=..`.
fn rollout_of(
    strategy: &str,
    asked: &std::collections::HashMap<String, String>,
) -> Result<(crate::rollout::Strategy, crate::rollout::Alarms), String> {
    let strategy = crate::rollout::Strategy::parse(strategy)?;
    let mut alarms = crate::rollout::Alarms::default();
    if let Some(rate) = asked.get("max_error_rate") {
        alarms.max_error_rate = rate
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..1.0).contains(r))
            .ok_or_else(|| {
                format!("max_error_rate={rate:?}: expected a share from 0 to 1, as 0.05")
            })?;
    }
    if let Some(ms) = asked.get("max_p99_ms") {
        let ms: u64 = ms
            .parse()
            .ok()
            .filter(|ms| (1..=3_600_000).contains(ms))
            .ok_or_else(|| {
                format!("max_p99_ms={ms:?}: expected whole milliseconds, 1 to 3,600,000")
            })?;
        alarms.max_p99 = Some(std::time::Duration::from_millis(ms));
    }
    alarms.pre_traffic_hook = asked.get("pre_traffic_hook").cloned();
    alarms.post_traffic_hook = asked.get("post_traffic_hook").cloned();
    Ok((strategy, alarms))
}

/// Deploys `wasm` as `name`'s new version: at once, or as the query's
/// `strategy` rolls it out.
async fn deploy(
    r: Arc<Registry>,
    name: String,
    asked: std::collections::HashMap<String, String>,
    (source, by): (String, String),
    wasm: Vec<u8>,
) -> Answer {
    let Some(strategy) = asked.get("strategy") else {
        return blocking_value(StatusCode::OK, move || r.deploy(&name, &wasm, &source, &by)).await;
    };
    let (strategy, alarms) = match rollout_of(strategy, &asked) {
        Ok(rollout) => rollout,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": error }),
            )
        }
    };
    blocking_value(StatusCode::OK, move || {
        crate::rollout::start(&r, &name, &wasm, (&source, &by), strategy, alarms)
    })
    .await
}

/// A signed bundle: checked against the running config (its signer, its
/// function's spec), then against the newest bundle taken for the function
/// (a replay is refused, the same one again changes nothing), then
/// deployed as its rollout says (the query's `strategy` wins, for a
/// deploy by hand) and recorded. Every refusal is logged with its reason.
pub(crate) async fn deploy_bundle(
    registry: &Arc<Registry>,
    commands: &tokio::sync::mpsc::Sender<Command>,
    name: String,
    mut asked: std::collections::HashMap<String, String>,
    from: (String, String),
    bytes: &[u8],
) -> Answer {
    use crate::bundle::{Bundle, BundleError, Freshness};
    let refuse = |signer: Option<String>, error: BundleError| {
        let status = match &error {
            BundleError::Malformed(_) | BundleError::ModuleMismatch => StatusCode::BAD_REQUEST,
            BundleError::Unsigned
            | BundleError::BadSignature
            | BundleError::UntrustedKey(_)
            | BundleError::NoTrustedKeys => StatusCode::FORBIDDEN,
            BundleError::Older { .. }
            | BundleError::SequenceReused { .. }
            | BundleError::NoLongerLive { .. }
            | BundleError::SpecDiffers { .. } => StatusCode::CONFLICT,
            BundleError::OtherFunction { .. }
            | BundleError::UnknownFunction(_)
            | BundleError::Rollout(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        tracing::warn!(function = %name, signer = signer.as_deref().unwrap_or("none"), reason = %error, "bundle refused");
        (
            status,
            serde_json::json!({ "error": format!("bundle refused: {error}") }),
        )
    };
    let bundle = match Bundle::parse(bytes) {
        Ok(bundle) => bundle,
        Err(error) => return refuse(None, error),
    };
    let signer = bundle.signer();
    let (reply, checked) = tokio::sync::oneshot::channel();
    let asked_check = Command::CheckBundle {
        function: name.clone(),
        bundle: Box::new(bundle.clone()),
        reply,
    };
    if commands.send(asked_check).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "the gateway is stopping" }),
        );
    }
    match checked.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return refuse(signer, error),
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": "the gateway is stopping" }),
            )
        }
    }
    let store = registry.store().clone();
    let last = {
        let (store, name) = (store.clone(), name.clone());
        tokio::task::spawn_blocking(move || store.last_bundle(&name)).await
    };
    let last = match last {
        Ok(Ok(last)) => last,
        Ok(Err(e)) => return refused_value(&RegistryError::Store(e)),
        Err(_) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": "the operation panicked" }),
            )
        }
    };
    match crate::bundle::replay(&bundle, last.as_ref()) {
        Ok(Freshness::New) => {}
        Ok(Freshness::Again) => {
            let version = crate::runtime::module_version(&bundle.module);
            let live = registry
                .live_of(&name)
                .map(|l| l.current().version().to_owned());
            if live.as_deref().ok() != Some(version.as_str()) {
                // Taken, then rolled back (or replaced): judged already.
                let error = BundleError::NoLongerLive {
                    function: name.clone(),
                    sequence: bundle.manifest.sequence,
                };
                return refuse(signer, error);
            }
            tracing::info!(function = %name, sequence = bundle.manifest.sequence, "bundle taken already; nothing to do");
            return (
                StatusCode::OK,
                serde_json::json!({
                    "function": name, "to": version, "again": true,
                    "bundle": { "sequence": bundle.manifest.sequence, "signer": signer },
                }),
            );
        }
        Err(error) => return refuse(signer, error),
    }
    if !asked.contains_key("strategy") {
        if let Some(rollout) = &bundle.manifest.rollout {
            asked.extend(rollout.query());
        }
    }
    let (sequence, digest) = (bundle.manifest.sequence, bundle.digest());
    let version = crate::runtime::module_version(&bundle.module);
    let response = deploy(registry.clone(), name.clone(), asked, from, bundle.module).await;
    if response.0.is_success() {
        let signer = signer.unwrap_or_default();
        let recorded = tokio::task::spawn_blocking(move || {
            store.record_bundle(&name, sequence, &digest, &signer, &version)
        })
        .await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::warn!("a bundle deployed, but its sequence is not recorded: the same bundle would deploy again");
        }
    }
    response
}

/// Runs a registry operation off the reactor (it compiles modules and
/// writes SQLite) and answers with its result.
async fn blocking<T: serde::Serialize + Send + 'static>(
    ok: StatusCode,
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Response {
    let (status, body) = blocking_value(ok, f).await;
    json(status, &body)
}

async fn blocking_value<T: serde::Serialize + Send + 'static>(
    ok: StatusCode,
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Answer {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => (ok, serde_json::to_value(value).unwrap_or_default()),
        Ok(Err(error)) => refused_value(&error),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": "the operation panicked" }),
        ),
    }
}

/// Who sent a request: the unix user on the socket, the peer with the
/// token on TCP (recorded with each version published).
#[derive(Debug, Clone)]
struct Caller(String);

fn caller(caller: Option<axum::Extension<Caller>>) -> String {
    caller.map_or_else(|| "api".to_owned(), |c| c.0 .0)
}

/// The name of a unix user, from `/etc/passwd` (else `uid N`).
fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let id: u32 = fields.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn source(headers: &HeaderMap) -> String {
    headers
        .get("x-wasmgate-source")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| "api".to_owned(), |s| format!("api: {s}"))
}

/// A request for the running gateway itself, not its registry: the run
/// loop, which owns the gateway, carries it out and answers.
#[derive(Debug)]
pub enum Command {
    /// Apply a config file (`None`: the one the gateway started with).
    Apply {
        path: Option<PathBuf>,
        dry_run: bool,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// Every function as it runs: versions, alias, limits, triggers, counters.
    Functions {
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// Whether a signed bundle may deploy, judged by the running config
    /// (`bundle::check`).
    CheckBundle {
        function: String,
        bundle: Box<crate::bundle::Bundle>,
        reply: tokio::sync::oneshot::Sender<Result<(), crate::bundle::BundleError>>,
    },
}

/// The run loop's answer to a [`Command`].
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

/// What the endpoints reach.
#[derive(Debug, Clone)]
struct Api {
    registry: Arc<Registry>,
    commands: tokio::sync::mpsc::Sender<Command>,
    /// Started: every session subscribed (or given up waiting for), every
    /// trigger running; false again once it stops.
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// What `/metrics` reads.
    sources: Arc<crate::scrape::Sources>,
    usage: Arc<crate::usage::UsageFlusher>,
}

/// Where the API's endpoints reach the gateway, bar the registry.
#[derive(Debug, Clone)]
pub struct Handles {
    pub commands: tokio::sync::mpsc::Sender<Command>,
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    pub sources: Arc<crate::scrape::Sources>,
    /// Flushed before `/v1/cost` reads, so that it is current.
    pub usage: Arc<crate::usage::UsageFlusher>,
}

impl axum::extract::FromRef<Api> for Arc<Registry> {
    fn from_ref(api: &Api) -> Arc<Registry> {
        api.registry.clone()
    }
}

async fn apply(State(api): State<Api>, body: Bytes) -> Response {
    /// What a client may ask: a body that is not this is refused, never
    /// read as "apply the start-up file for real".
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Asked {
        path: Option<PathBuf>,
        #[serde(default)]
        dry_run: bool,
    }
    let asked: Asked = match serde_json::from_slice(if body.is_empty() { b"{}" } else { &body }) {
        Ok(asked) => asked,
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": format!("expected {{\"path\": \"...\", \"dry_run\": false}}: {e}; nothing applied") }),
            )
        }
    };
    let (path, dry_run) = (asked.path, asked.dry_run);
    ask(&api, |reply| Command::Apply {
        path,
        dry_run,
        reply,
    })
    .await
}

/// Sends a command to the run loop and answers with its reply.
async fn ask(
    api: &Api,
    command: impl FnOnce(tokio::sync::oneshot::Sender<Reply>) -> Command,
) -> Response {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let sent = api.commands.send(command(reply)).await;
    match (sent, answer.await) {
        (Ok(()), Ok(reply)) => json(
            StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &reply.body,
        ),
        _ => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": "the gateway is stopping" }),
        ),
    }
}

/// Every endpoint: its path and handlers.
fn endpoints() -> Vec<(&'static str, MethodRouter<Api>)> {
    let mut endpoints: Vec<(&'static str, MethodRouter<Api>)> = vec![
        (
            "/metrics",
            get(|State(api): State<Api>| async move { metrics(api.sources.clone()).await }),
        ),
        (
            "/v1/stats",
            get(|State(api): State<Api>| async move {
                let stats = crate::stats::collect(&api.sources);
                json(
                    StatusCode::OK,
                    &serde_json::to_value(stats).unwrap_or_default(),
                )
            }),
        ),
        (
            "/v1/ready",
            get(|State(api): State<Api>| async move {
                if api.ready.load(std::sync::atomic::Ordering::SeqCst) {
                    json(StatusCode::OK, &serde_json::json!({ "ready": true }))
                } else {
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({ "ready": false, "error": "starting or stopping" }),
                    )
                }
            }),
        ),
        (
            "/v1/health",
            get(|| async { json(StatusCode::OK, &serde_json::json!({ "status": "ok" })) }),
        ),
        (
            "/v1/functions/:name/versions",
            get(
                |State(r): State<Arc<Registry>>, Path(name): Path<String>| async move {
                    blocking(StatusCode::OK, move || {
                        let found = r.describe()?.into_iter().find(|f| f.name == name);
                        found
                            .map(|f| f.versions)
                            .ok_or(RegistryError::UnknownFunction(name))
                    })
                    .await
                },
            )
            .post(
                |State(r): State<Arc<Registry>>,
                 Path(name): Path<String>,
                 who: Option<axum::Extension<Caller>>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let (source, by) = (source(&headers), caller(who));
                    blocking(StatusCode::CREATED, move || {
                        r.publish(&name, &body, &source, &by)
                    })
                    .await
                },
            ),
        ),
        (
            "/v1/functions/:name/deploy",
            post(
                |State(api): State<Api>,
                 Path(name): Path<String>,
                 who: Option<axum::Extension<Caller>>,
                 headers: HeaderMap,
                 axum::extract::Query(asked): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >,
                 body: Bytes| async move {
                    let from = (source(&headers), caller(who));
                    let (status, body) = if crate::bundle::is_bundle(&body) {
                        deploy_bundle(&api.registry, &api.commands, name, asked, from, &body).await
                    } else {
                        deploy(api.registry.clone(), name, asked, from, body.to_vec()).await
                    };
                    json(status, &body)
                },
            ),
        ),
        (
            "/v1/deployments",
            get(
                |State(r): State<Arc<Registry>>,
                 axum::extract::Query(asked): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| async move {
                    blocking(StatusCode::OK, move || {
                        let rows = r
                            .store()
                            .deployments(asked.get("function").map(String::as_str), 100)?;
                        Ok::<_, RegistryError>(serde_json::json!({ "deployments": rows }))
                    })
                    .await
                },
            ),
        ),
        (
            "/v1/functions/:name/aliases/live",
            put(
                |State(r): State<Arc<Registry>>, Path(name): Path<String>, body: Bytes| async move {
                    let asked =
                        serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
                    let version = asked["version"].as_str().map(str::to_owned);
                    let other = match (asked["other"].as_str(), asked["weight"].as_f64()) {
                        (Some(other), Some(weight)) => Some((other.to_owned(), weight)),
                        (None, None) => None,
                        _ => {
                            return json(
                                StatusCode::BAD_REQUEST,
                                &serde_json::json!({ "error": "`other` and `weight` go together" }),
                            )
                        }
                    };
                    let Some(version) = version else {
                        return json(
                            StatusCode::BAD_REQUEST,
                            &serde_json::json!({ "error": "expected {\"version\": \"...\"}" }),
                        );
                    };
                    blocking(StatusCode::OK, move || {
                        r.no_rollout(&name)?;
                        r.route(
                            &name,
                            &version,
                            other.as_ref().map(|(v, w)| (v.as_str(), *w)),
                        )
                    })
                    .await
                },
            ),
        ),
        (
            "/v1/functions/:name/invoke",
            post(
                |State(r): State<Arc<Registry>>, Path(name): Path<String>, body: Bytes| async move {
                    let asked =
                        serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
                    let dry_run = asked["dry_run"].as_bool().unwrap_or(false);
                    let event = match crate::event::OwnedEvent::from_event_file(&asked["event"]) {
                        Ok((event, _)) => event,
                        Err(e) => {
                            return json(
                                StatusCode::BAD_REQUEST,
                                &serde_json::json!({ "error": format!("not an event: {e}") }),
                            )
                        }
                    };
                    blocking(StatusCode::OK, move || {
                        let invoked = r.invoke(&name, &event, dry_run)?;
                        Ok(serde_json::json!({
                            "function": name,
                            "version": invoked.version,
                            "request_id": invoked.request_id,
                            "dry_run": dry_run,
                            "committed": invoked.committed,
                            "invocation": crate::local::report_json(&invoked.report),
                        }))
                    })
                    .await
                },
            ),
        ),
        (
            "/v1/functions/:name/rollback",
            post(
                |State(r): State<Arc<Registry>>, Path(name): Path<String>| async move {
                    blocking(StatusCode::OK, move || r.rollback(&name)).await
                },
            ),
        ),
        ("/v1/apply", post(apply)),
        (
            "/v1/cost",
            get(
                |State(api): State<Api>,
                 axum::extract::Query(q): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| async move {
                    let since_ms = match q.get("since_ms").map(|v| v.parse::<i64>()) {
                        None => crate::store::now_ms() - 86_400_000,
                        Some(Ok(ms)) => ms,
                        Some(Err(_)) => {
                            return json(
                                StatusCode::BAD_REQUEST,
                                &serde_json::json!({ "error": "since_ms: expected Unix milliseconds" }),
                            )
                        }
                    };
                    let (usage, store) = (api.usage.clone(), api.registry.store().clone());
                    let f = move || {
                        // What ran since the last flush counts too.
                        usage.flush_and_wait(std::time::Duration::from_secs(5));
                        let rows = store.usage(since_ms)?;
                        let now = crate::store::now_ms();
                        Ok(Some(crate::cost::report(
                            &rows,
                            since_ms,
                            now,
                            crate::cost::AWS_PRICES,
                        )))
                    };
                    admin(f, String::new()).await
                },
            ),
        ),
        (
            "/v1/functions",
            get(|State(api): State<Api>| async move {
                ask(&api, |reply| Command::Functions { reply }).await
            }),
        ),
    ];
    endpoints.extend(admin_endpoints());
    endpoints.extend(crate::dashboard::ASSETS.iter().map(|asset| {
        let route: MethodRouter<Api> =
            get(move || async move { crate::dashboard::response(asset) });
        (asset.path, route)
    }));
    endpoints
}

/// The app: every endpoint, and a JSON 404 for any other path.
fn app(registry: Arc<Registry>, handles: Handles) -> axum::Router {
    let api = Api {
        registry,
        commands: handles.commands,
        ready: handles.ready,
        sources: handles.sources,
        usage: handles.usage,
    };
    endpoints()
        .into_iter()
        .fold(axum::Router::new(), |router, (path, route)| router.route(path, route))
        .fallback(|| async {
            json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": "no such endpoint (GET /v1/openapi.json lists them)" }),
            )
        })
        .with_state(api)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD))
}

/// An answer from a blocking admin operation: `Ok(None)` is 404 with `missing`.
async fn admin<T: serde::Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<Option<T>, Refusal> + Send + 'static,
    missing: String,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(Some(value))) => json(
            StatusCode::OK,
            &serde_json::to_value(value).unwrap_or_default(),
        ),
        Ok(Ok(None)) => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": missing }),
        ),
        Ok(Err(Refusal::Unprocessable(error))) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({ "error": error }),
        ),
        Ok(Err(Refusal::Store(error))) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({ "error": error }),
        ),
        Err(_) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({ "error": "the operation panicked" }),
        ),
    }
}

/// Why an admin operation failed: the request (422), or the store (500).
enum Refusal {
    Unprocessable(String),
    Store(String),
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Refusal {
        Refusal::Store(e.to_string())
    }
}

/// 404 for a function the gateway does not run (which is not "no key").
fn not_running(function: &str) -> Response {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({ "error": format!("no function {function:?} is deployed") }),
    )
}

/// KV and dead letters, through the gateway's own store (`admin`).
fn admin_endpoints() -> Vec<(&'static str, MethodRouter<Api>)> {
    use crate::admin;
    use axum::extract::Query;
    type R = State<Arc<Registry>>;
    type Key = Path<(String, String)>;
    vec![
        (
            "/v1/kv/:function",
            get(|State(r): R, Path(function): Path<String>| async move {
                if !r.knows(&function) {
                    return not_running(&function);
                }
                let f = move || Ok(Some(admin::kv_list(r.store(), &function)?));
                admin(f, String::new()).await
            }),
        ),
        (
            "/v1/kv/:function/*key",
            get(|State(r): R, Path((function, key)): Key| async move {
                if !r.knows(&function) {
                    return not_running(&function);
                }
                let missing = format!("{function}: no key {key:?}");
                admin(move || Ok(admin::kv_get(r.store(), &function, &key)?), missing).await
            })
            .put(|State(r): R, Path((function, key)): Key, body: Bytes| async move {
                if !r.knows(&function) {
                    return not_running(&function);
                }
                let value = match serde_json::from_slice::<admin::KvValue>(&body) {
                    Ok(value) => value,
                    Err(e) => {
                        return json(
                            StatusCode::BAD_REQUEST,
                            &serde_json::json!({ "error": format!("expected {{\"text\": \"...\"}} or {{\"counter\": 42}}: {e}") }),
                        )
                    }
                };
                let f = move || {
                    admin::kv_put(r.store(), &function, &key, value)?;
                    Ok(Some(serde_json::json!({ "written": true })))
                };
                admin(f, String::new()).await
            })
            .delete(|State(r): R, Path((function, key)): Key| async move {
                if !r.knows(&function) {
                    return not_running(&function);
                }
                let missing = format!("{function}: no key {key:?}; nothing deleted");
                let f = move || {
                    let gone = admin::kv_delete(r.store(), &function, &key)?;
                    Ok(gone.then(|| serde_json::json!({ "deleted": true })))
                };
                admin(f, missing).await
            }),
        ),
        (
            "/v1/dead-letters",
            get(
                |State(r): R, Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    let function = q.get("function").cloned();
                    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(1000);
                    let request = match q.get("request").map(|r| r.parse::<u64>()) {
                        None => None,
                        Some(Ok(request)) => Some(request),
                        Some(Err(_)) => {
                            return json(
                                StatusCode::BAD_REQUEST,
                                &serde_json::json!({ "error": "request: expected a request id (a number)" }),
                            )
                        }
                    };
                    let newest_first = match q.get("order").map(String::as_str) {
                        None | Some("oldest") => false,
                        Some("newest") => true,
                        Some(other) => {
                            return json(
                                StatusCode::BAD_REQUEST,
                                &serde_json::json!({ "error": format!("order: expected oldest or newest, not {other:?}") }),
                            )
                        }
                    };
                    let f = move || {
                        let (letters, total) = admin::dead_letters(
                            r.store(),
                            function.as_deref(),
                            request,
                            newest_first,
                            limit,
                        )?;
                        Ok(Some(serde_json::json!({ "letters": letters, "total": total })))
                    };
                    admin(f, String::new()).await
                },
            ),
        ),
        (
            "/v1/logs",
            get(
                |State(r): R, Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    let query = match crate::store::logs::LogQuery::from_params(&q) {
                        Ok(query) => query,
                        Err(error) => {
                            return json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": error }))
                        }
                    };
                    let f = move || Ok(Some(serde_json::json!({ "lines": r.store().logs(&query)? })));
                    admin(f, String::new()).await
                },
            ),
        ),
        (
            "/v1/dead-letters/purge",
            post(|State(r): R, body: Bytes| async move {
                let asked = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
                let purge = if let Some(ids) = asked["ids"].as_array() {
                    crate::store::Purge::Ids(ids.iter().filter_map(serde_json::Value::as_i64).collect())
                } else if let Some(f) = asked["function"].as_str() {
                    crate::store::Purge::Function(f.to_owned())
                } else if asked["all"] == true {
                    crate::store::Purge::All
                } else {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({ "error": "say what to purge: {\"ids\": [..]}, {\"function\": \"..\"} or {\"all\": true}" }),
                    );
                };
                let f = move || Ok(Some(serde_json::json!({ "purged": admin::purge(r.store(), purge)? })));
                admin(f, String::new()).await
            }),
        ),
        (
            "/v1/dead-letters/:id",
            get(|State(r): R, Path(id): Path<i64>| async move {
                admin(
                    move || Ok(r.store().dead_letter_by_id(id)?),
                    format!("no dead letter {id} (`wasmgate dlq list` shows them)"),
                )
                .await
            }),
        ),
        (
            "/v1/dead-letters/:id/replay",
            post(
                |State(r): R, Path(id): Path<i64>, headers: HeaderMap, body: Bytes| async move {
                    let want = headers
                        .get("x-wasmgate-version")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let f = move || {
                        let Some(letter) = r.store().dead_letter_by_id(id)? else {
                            return Ok(None);
                        };
                        // The module only when one runs (an undeliverable
                        // message goes back in the outbox, as offline).
                        let module = || {
                            let (spec, live) = r.live_module(&letter.function).map_err(|e| {
                                format!("dead letter {id}: {e}; it cannot be replayed here")
                            })?;
                            let wasm = if body.is_empty() { live } else { body.to_vec() };
                            if let Some(want) = &want {
                                let found = crate::runtime::module_version(&wasm);
                                if &found != want {
                                    return Err(format!("the module is version {found}, not {want}"));
                                }
                            }
                            Ok((spec, wasm))
                        };
                        admin::replay(r.store(), &letter, module)
                            .map(Some)
                            .map_err(Refusal::Unprocessable)
                    };
                    admin(f, format!("no dead letter {id} (`wasmgate dlq list` shows them)")).await
                },
            ),
        ),
        ("/v1/openapi.json", get(|| async { openapi() })),
    ]
}

/// `/metrics`, as a scraper takes it.
pub async fn metrics(sources: Arc<crate::scrape::Sources>) -> Response {
    // One scrape at a time: each reads the outbox's backlog from SQLite
    // (off the reactor), and the `[metrics] listen` address takes no token,
    // so a client looping on it must not fill the blocking pool.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let Ok(text) = tokio::task::spawn_blocking(move || sources.render()).await else {
        // An empty 200 would read as "no metrics"; a 500 reads as a failed scrape.
        let mut response = Response::new(Body::from("the metrics could not be rendered\n"));
        *response.status_mut() = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
        return response;
    };
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(crate::scrape::CONTENT_TYPE),
    );
    response
}

/// The API's OpenAPI description (`docs/openapi.json`), which a test keeps
/// equal to what [`endpoints`] serves.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

fn openapi() -> Response {
    let mut response = Response::new(Body::from(OPENAPI));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Why the management socket could not open.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another wasmgate is running on this data_dir (it answers on {0})")]
    InUse(String),
    #[error("cannot open the management socket {path}: {error}")]
    Bind { path: String, error: std::io::Error },
}

/// The management socket, bound.
#[derive(Debug)]
pub struct Control {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Control {
    /// Binds `data_dir/control.sock` (mode 0600). A socket file left by a
    /// gateway that died is replaced; one that answers means another
    /// gateway runs on this data_dir, which would corrupt nothing (SQLite
    /// locks) but serve nobody well: refused.
    pub fn bind(data_dir: &std::path::Path) -> Result<Control, ControlError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let path = data_dir.join(SOCKET);
        let bind_error = |error| ControlError::Bind {
            path: path.display().to_string(),
            error,
        };
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(ControlError::InUse(path.display().to_string()));
            }
            std::fs::remove_file(&path).map_err(bind_error)?;
        }
        // Bound in a directory only this user can enter, made 0600 there,
        // then moved into place: at no moment can another user connect.
        let private = data_dir.join(format!(".control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(bind_error)?;
        let staged = private.join(SOCKET);
        let bound = tokio::net::UnixListener::bind(&staged)
            .and_then(|listener| {
                std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
                std::fs::rename(&staged, &path)?;
                Ok(listener)
            })
            .map_err(bind_error);
        let _ = std::fs::remove_dir_all(&private);
        Ok(Control {
            listener: bound?,
            path,
        })
    }

    /// Serves until `stop`; then removes the socket file.
    pub async fn serve(
        self,
        registry: Arc<Registry>,
        handles: Handles,
        mut stop: watch::Receiver<bool>,
    ) {
        use hyper_util::rt::TokioIo;
        let app = app(registry, handles);
        loop {
            let stream = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "management socket: cannot accept");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            };
            let who = match stream.peer_cred() {
                Ok(cred) => user_name(cred.uid()),
                Err(_) => "a local user".to_owned(),
            };
            let app = app.clone().layer(axum::Extension(Caller(who)));
            let service = hyper_util::service::TowerToHyperService::new(app);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The management API on TCP (`[api] listen`): every request must carry
/// the bearer token (bar the dashboard's static files, which hold no
/// data); one without it gets 401 and a log line naming the peer. Bound
/// at start, so a taken port is a start-up error.
#[derive(Debug)]
pub struct TcpControl {
    listener: tokio::net::TcpListener,
    token: Arc<str>,
}

impl TcpControl {
    pub async fn bind(addr: std::net::SocketAddr, token: String) -> std::io::Result<TcpControl> {
        Ok(TcpControl {
            listener: tokio::net::TcpListener::bind(addr).await?,
            token: token.into(),
        })
    }

    /// Serves until `stop`.
    pub async fn serve(
        self,
        registry: Arc<Registry>,
        handles: Handles,
        mut stop: watch::Receiver<bool>,
    ) {
        let token = self.token.clone();
        let app = app(registry, handles).layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let token = token.clone();
                async move {
                    let peer = request
                        .extensions()
                        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                        .map(|c| c.0.to_string())
                        .unwrap_or_default();
                    if crate::dashboard::is_public(request.method(), request.uri().path()) {
                        return next.run(request).await;
                    }
                    if bearer_matches(&token, request.headers()) {
                        let mut request = request;
                        request
                            .extensions_mut()
                            .insert(Caller(format!("bearer token from {peer}")));
                        return next.run(request).await;
                    }
                    tracing::warn!(%peer, method = %request.method(), path = %request.uri().path(), "management API request refused: no or wrong bearer token");
                    let mut response = json(
                        StatusCode::UNAUTHORIZED,
                        &serde_json::json!({ "error": "a bearer token is required (Authorization: Bearer <the token in api.token_file>)" }),
                    );
                    response.headers_mut().insert(
                        axum::http::header::WWW_AUTHENTICATE,
                        axum::http::HeaderValue::from_static("Bearer"),
                    );
                    response
                }
            },
        ));
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(self.listener, service)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %e, "management API listener failed");
        }
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in
/// time that does not depend on where the first differing byte is.
fn bearer_matches(token: &str, headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (token.as_bytes(), given.trim().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The CLI's side: one request to the running gateway's socket.
pub mod client {
    use std::io::{Read, Write};
    use std::path::Path;

    /// What a request got.
    #[derive(Debug)]
    pub struct Answer {
        pub status: u16,
        pub body: serde_json::Value,
    }

    /// Why there was no answer.
    #[derive(Debug, thiserror::Error)]
    pub enum ClientError {
        #[error("no gateway is running on {0} (start it with `wasmgate run`; deploys go to a running gateway)")]
        NotRunning(String),
        #[error("the gateway's answer could not be read: {0}")]
        Garbled(String),
        #[error("talking to the gateway: {0}")]
        Io(#[from] std::io::Error),
    }

    /// Sends one request and reads the whole answer.
    pub fn request(
        data_dir: &Path,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, ClientError> {
        let socket = data_dir.join(super::SOCKET);
        let mut stream = std::os::unix::net::UnixStream::connect(&socket)
            .map_err(|_| ClientError::NotRunning(socket.display().to_string()))?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: wasmgate\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| ClientError::Garbled(text.to_string()))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Garbled(head.to_owned()))?;
        let body = serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null);
        Ok(Answer { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every (path, method) the API serves, probed over a real socket: a
    /// method a path does not take is answered 405.
    fn served(data_dir: &std::path::Path) -> BTreeSet<(String, String)> {
        let mut served = BTreeSet::new();
        for (path, _) in endpoints() {
            let concrete: String = path
                .split('/')
                .map(|s| match s.chars().next() {
                    Some(':' | '*') => "7",
                    _ => s,
                })
                .collect::<Vec<_>>()
                .join("/");
            let documented: String = path
                .split('/')
                .map(|s| match s.chars().next() {
                    Some(':' | '*') => format!("{{{}}}", &s[1..]),
                    _ => s.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("/");
            for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
                let answer = client::request(data_dir, method, &concrete, &[], b"").unwrap();
                if answer.status != 405 {
                    served.insert((documented.clone(), method.to_lowercase()));
                }
            }
        }
        served
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_openapi_description_lists_exactly_what_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(crate::store::StoreOptions::new(dir.path().join("db")))
                .unwrap();
        let registry = Arc::new(Registry::new(
            crate::runtime::Runtime::new(),
            store,
            dir.path().join("modules"),
            10,
            Arc::new(std::sync::atomic::AtomicU64::new(1)),
        ));
        let (commands, mut asked) = tokio::sync::mpsc::channel(4);
        // The run loop's part: every command answered.
        tokio::spawn(async move {
            while let Some(command) = asked.recv().await {
                match command {
                    Command::Apply { reply, .. } | Command::Functions { reply } => {
                        let _ = reply.send(Reply {
                            status: 200,
                            body: serde_json::Value::Null,
                        });
                    }
                    Command::CheckBundle { reply, .. } => {
                        let _ = reply.send(Err(crate::bundle::BundleError::NoTrustedKeys));
                    }
                }
            }
        });
        let control = Control::bind(dir.path()).unwrap();
        // Only the gateway's user reaches it, from the moment it exists;
        // the directory it was made in is gone.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(SOCKET))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".control-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let (_stop, stopped) = watch::channel(false);
        let sources = Arc::new(crate::scrape::Sources::new(registry.store().clone()));
        let handles = Handles {
            commands,
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            sources: sources.clone(),
            usage: Arc::new(crate::usage::UsageFlusher::new(sources)),
        };
        tokio::spawn(control.serve(registry, handles, stopped));
        let data_dir = dir.path().to_owned();
        let served = tokio::task::spawn_blocking(move || served(&data_dir))
            .await
            .unwrap();

        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.0.3");
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (path.clone(), method.clone()))
            })
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not in docs/openapi.json: {undocumented:?}; documented but not served: {unserved:?}"
        );
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                assert!(
                    op["summary"].is_string() && op["responses"].is_object(),
                    "{method} {path}"
                );
            }
        }
    }
}

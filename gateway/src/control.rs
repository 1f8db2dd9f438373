//! The management API: HTTP on a unix socket in `data_dir` (`control.sock`,
//! mode 0600, so only the gateway's user reaches it), through which the CLI
//! deploys versions and moves aliases on the running gateway, without a
//! restart and without touching a device's connection.
//!
//! Endpoints (JSON answers; errors as `{"error": "..."}`):
//! - `GET  /v1/health`
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

use crate::registry::{Registry, RegistryError};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// The socket's name in `data_dir`.
pub const SOCKET: &str = "control.sock";

/// The largest module a publish takes (the runtime refuses larger anyway).
const MAX_UPLOAD: usize = crate::files::MAX_MODULE_BYTES as usize;

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut response = Response::new(Body::from(format!("{value}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

fn refused(error: &RegistryError) -> Response {
    let status = match error {
        RegistryError::UnknownFunction(_) | RegistryError::UnknownVersion { .. } => {
            StatusCode::NOT_FOUND
        }
        RegistryError::NothingToRollBack(_) => StatusCode::CONFLICT,
        RegistryError::Weight(_) => StatusCode::BAD_REQUEST,
        RegistryError::Load(_) | RegistryError::Start(_) | RegistryError::OldGuest { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        RegistryError::Store(_) | RegistryError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json(status, &serde_json::json!({ "error": error.to_string() }))
}

/// Runs a registry operation off the reactor (it compiles modules and
/// writes SQLite) and answers with its result.
async fn blocking<T: serde::Serialize + Send + 'static>(
    ok: StatusCode,
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => json(ok, &serde_json::to_value(value).unwrap_or_default()),
        Ok(Err(error)) => refused(&error),
        Err(_) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({ "error": "the operation panicked" }),
        ),
    }
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
    commands: tokio::sync::mpsc::Sender<Command>,
}

async fn apply(State(api): State<Api>, body: Bytes) -> Response {
    let asked = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
    let path = asked["path"].as_str().map(PathBuf::from);
    let dry_run = asked["dry_run"].as_bool().unwrap_or(false);
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

fn app(registry: Arc<Registry>, commands: tokio::sync::mpsc::Sender<Command>) -> axum::Router {
    let api = Api { commands };
    let registry_routes = axum::Router::new()
        .route(
            "/v1/health",
            get(|| async { json(StatusCode::OK, &serde_json::json!({ "status": "ok" })) }),
        )
        .route(
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
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let source = source(&headers);
                    blocking(StatusCode::CREATED, move || {
                        r.publish(&name, &body, &source)
                    })
                    .await
                },
            ),
        )
        .route(
            "/v1/functions/:name/deploy",
            post(
                |State(r): State<Arc<Registry>>,
                 Path(name): Path<String>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let source = source(&headers);
                    blocking(StatusCode::OK, move || r.deploy(&name, &body, &source)).await
                },
            ),
        )
        .route(
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
                        r.route(
                            &name,
                            &version,
                            other.as_ref().map(|(v, w)| (v.as_str(), *w)),
                        )
                    })
                    .await
                },
            ),
        )
        .route(
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
        )
        .route(
            "/v1/functions/:name/rollback",
            post(
                |State(r): State<Arc<Registry>>, Path(name): Path<String>| async move {
                    blocking(StatusCode::OK, move || r.rollback(&name)).await
                },
            ),
        )
        .with_state(registry);
    axum::Router::new()
        .route("/v1/apply", post(apply))
        .route(
            "/v1/functions",
            get(|State(api): State<Api>| async move {
                ask(&api, |reply| Command::Functions { reply }).await
            }),
        )
        .with_state(api)
        .merge(registry_routes)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD))
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
        use std::os::unix::fs::PermissionsExt;
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
        let listener = tokio::net::UnixListener::bind(&path).map_err(bind_error)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
        Ok(Control { listener, path })
    }

    /// Serves until `stop`; then removes the socket file.
    pub async fn serve(
        self,
        registry: Arc<Registry>,
        commands: tokio::sync::mpsc::Sender<Command>,
        mut stop: watch::Receiver<bool>,
    ) {
        use hyper_util::rt::TokioIo;
        let app = app(registry, commands);
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
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        let _ = std::fs::remove_file(&self.path);
    }
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

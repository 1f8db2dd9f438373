//! HTTP routes as a source: an API gateway on the gateway.
//!
//! `triggers = [{ http = "GET /vending/{machine}/state" }]` serves that route
//! on the `[http]` listener. A request becomes an event like a message: it
//! waits for room in the function's intake (or gets 429 at once when the
//! queue is full: the client holds the request and retries), and it is
//! answered only once its invocation's effects are committed, or its dead
//! letter is ([`Settle::Http`]). So a 2xx means the effects are durable.
//!
//! What a client can act on: 404 unknown route, 405 wrong method (with
//! `Allow`), 413 body over `max_body_bytes`, 429 queue full (with
//! `Retry-After`), 502 the function failed every attempt, 504 it ran past
//! its deadline, 503 the gateway is stopping. Every answer from a function
//! carries `x-request-id`, the request id of the gateway's logs and of the
//! dead letter. A function that does not `respond` answers 204.
//!
//! With `invocation = "event"` a route answers 202 as soon as the request is
//! durably queued (in the outbox, as a fan-out invoke is), and the function
//! runs after: at least once, with retries and the dead-letter queue.
//!
//! Routing is [`super::route`]'s, not axum's router.
//!
//! [`Settle::Http`]: super::Settle::Http

pub use super::answer::{Answer, Pending};
pub use super::route::{Matched, Route, Routes};
use super::{Intake, Job, Settle};
use crate::event::OwnedEvent;
use crate::runtime::{FailureKind, Response};
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, watch};

/// How many headers of a request the event carries at most.
const MAX_HEADERS: usize = 64;

/// Where a route leads, and who may call it.
#[derive(Debug, Clone)]
pub struct Target {
    pub intake: Intake,
    /// API keys one of which a client must send in `x-api-key`; none: open.
    pub api_keys: Option<Vec<String>>,
    /// `invocation = "event"`: requests are queued here, durably, and
    /// answered 202; the invoke drain runs them after.
    pub queue: Option<Queue>,
    /// A websocket route: upgrades are served as connections.
    pub websocket: Option<Arc<super::websocket::Settings>>,
}

/// Where a route with `invocation = "event"` queues its requests.
#[derive(Debug, Clone)]
pub struct Queue {
    pub store: crate::store::Store,
    pub function: String,
}

impl Queue {
    /// Writes the request to the outbox as a whole event for the function;
    /// 202 once that is durable. The outbox is the buffer: while it is over
    /// its budget the write waits, and so does the client.
    async fn accept(&self, event: OwnedEvent) -> HttpResponse {
        let payload = crate::dlq::encode_event(&event.as_event());
        let (told, heard) = oneshot::channel();
        let (store, function) = (self.store.clone(), self.function.clone());
        let submitted = tokio::task::spawn_blocking(move || {
            let mut effects = crate::runtime::Effects::default();
            effects.invokes.push(crate::runtime::Invoke {
                function: function.clone(),
                payload,
                whole_event: true,
            });
            store.submit_urgent(crate::store::Commit {
                function,
                effects,
                dedup: Vec::new(),
                cursors: Vec::new(),
                trace: None,
                done: Box::new(move |committed| {
                    let _ = told.send(committed.is_ok());
                }),
            });
        })
        .await;
        if submitted.is_ok() && heard.await == Ok(true) {
            let mut response = HttpResponse::new(Body::from("{\"queued\":true}\n"));
            *response.status_mut() = StatusCode::ACCEPTED;
            response.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        } else {
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "not queued (the gateway is stopping); retry",
            )
        }
    }
}

/// The routes served, and where each leads.
#[derive(Debug)]
struct Table {
    routes: Routes<usize>,
    /// Each route's function, by the index `routes` leads to.
    targets: Vec<Target>,
}

impl Table {
    fn new(routes: Vec<(Route, Target)>) -> Table {
        let mut targets = Vec::new();
        let routes = routes
            .into_iter()
            .map(|(route, target)| {
                targets.push(target);
                (route, targets.len() - 1)
            })
            .collect();
        Table {
            routes: Routes::new(routes),
            targets,
        }
    }
}

#[derive(Debug)]
struct State {
    /// Replaced whole by `apply`: a request finds its route in one table.
    table: std::sync::RwLock<Arc<Table>>,
    max_body: usize,
    /// Open WebSocket connections, where committed posts go.
    connections: Arc<super::websocket::Connections>,
}

/// Whether `given` is one of `keys`, in time that does not depend on where
/// the first differing byte is.
fn key_matches(keys: &[String], given: &[u8]) -> bool {
    keys.iter().fold(false, |found, key| {
        let key = key.as_bytes();
        let same = key.len() == given.len()
            && key.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        found | same
    })
}

/// The listener's TLS settings (HTTPS); a build without TLS has none.
#[cfg(feature = "tls")]
pub type Tls = Arc<rustls::ServerConfig>;
#[cfg(not(feature = "tls"))]
pub type Tls = std::convert::Infallible;

/// How long a client has for its TLS handshake, and then for each request's
/// head: a peer that opens a connection and stalls holds only its own task.
#[cfg(feature = "tls")]
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
#[cfg(feature = "tls")]
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The listener, bound: binding happens at start so that a taken port is a
/// start-up error naming the address.
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    tls: Option<Tls>,
}

impl Server {
    pub async fn bind(
        addr: SocketAddr,
        routes: Vec<(Route, Target)>,
        max_body: usize,
        tls: Option<Tls>,
        connections: Arc<super::websocket::Connections>,
    ) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(Server {
            listener,
            state: Arc::new(State {
                table: std::sync::RwLock::new(Arc::new(Table::new(routes))),
                max_body,
                connections,
            }),
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the routes can be replaced while it serves.
    pub fn routes(&self) -> RouteTable {
        RouteTable(self.state.clone())
    }
}

/// A serving listener's routes, replaceable (`wasmgate apply`).
#[derive(Debug, Clone)]
pub struct RouteTable(Arc<State>);

impl RouteTable {
    /// The next requests are routed by `routes`; those in flight finish
    /// where they were routed (a WebSocket connection keeps its function's
    /// intake until it closes).
    pub fn replace(&self, routes: Vec<(Route, Target)>) {
        let table = Arc::new(Table::new(routes));
        *self
            .0
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = table;
    }
}

impl Server {
    /// Serves until `stop` turns true; then takes no new request and
    /// finishes the ones in flight (their invocations commit or are left).
    pub async fn serve(self, mut stop: watch::Receiver<bool>) {
        let state = self.state.clone();
        let stopping = stop.clone();
        let app = axum::Router::new().fallback(move |request: Request<Body>| {
            let (state, stopping) = (state.clone(), stopping.clone());
            async move { handle(&state, request, stopping).await }
        });
        if let Some(tls) = self.tls {
            #[cfg(feature = "tls")]
            return serve_tls(self.listener, tls, app, stop).await;
            #[cfg(not(feature = "tls"))]
            match tls {}
        }
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(self.listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    }
}

/// HTTPS: each connection's handshake and requests in a task of its own,
/// so a client that stalls its handshake holds no one else up. At `stop`
/// no new connection is taken; requests in flight still get their answers.
#[cfg(feature = "tls")]
async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Tls,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // Each connection hears the stop too: it finishes the request in hand
    // and takes no more, so its task (and the intakes it holds) ends.
    let each = stop.clone();
    let mut stopped = std::pin::pin!(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait, do not spin.
                    tracing::warn!(error = %e, "https: cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stopped => return,
        };
        let (acceptor, app, mut stop) = (acceptor.clone(), app.clone(), each.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => return,
                Ok(Err(error)) => {
                    tracing::warn!(%peer, %error, "https client refused: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "https: TLS handshake timed out");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let stopping = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stopping => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "https connection ended");
            }
        });
    }
}

type HttpResponse = axum::response::Response;

fn plain(status: StatusCode, text: &str) -> HttpResponse {
    let mut response = HttpResponse::new(Body::from(format!("{text}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn handle(
    state: &State,
    request: Request<Body>,
    stopping: watch::Receiver<bool>,
) -> HttpResponse {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let table = state
        .table
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let (index, params) = match table.routes.find(&method, &path) {
        Matched::Route(index, params) => (index, params),
        Matched::NotFound => return plain(StatusCode::NOT_FOUND, "no route for this path"),
        Matched::WrongMethod(allowed) => {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            if let Ok(allow) = HeaderValue::from_str(&allowed.join(", ")) {
                response
                    .headers_mut()
                    .insert(axum::http::header::ALLOW, allow);
            }
            return response;
        }
    };
    let target = &table.targets[index];
    let response = serve_route(state, target, method, path, params, request, stopping).await;
    let status = response.status().as_u16();
    target.intake.metrics().count_http(status);
    if let Some(trigger) = target.intake.trigger() {
        trigger.count_http(status);
    }
    response
}

/// A request its route leads to `target`: checked, then run (or queued,
/// or upgraded to a WebSocket).
async fn serve_route(
    state: &State,
    target: &Target,
    method: String,
    path: String,
    params: Vec<(String, String)>,
    request: Request<Body>,
    stopping: watch::Receiver<bool>,
) -> HttpResponse {
    if let Some(keys) = &target.api_keys {
        let given = request
            .headers()
            .get("x-api-key")
            .map(HeaderValue::as_bytes);
        if !given.is_some_and(|given| key_matches(keys, given)) {
            tracing::warn!(method, path, "http request refused: no or wrong x-api-key");
            let mut response = plain(
                StatusCode::UNAUTHORIZED,
                "an API key is required (x-api-key)",
            );
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("ApiKey header=\"x-api-key\""),
            );
            return response;
        }
    }
    if let Some(settings) = &target.websocket {
        return super::websocket::upgrade(
            request,
            settings.clone(),
            target.intake.clone(),
            state.connections.clone(),
            stopping,
        )
        .await;
    }
    let query = request.uri().query().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .take(MAX_HEADERS)
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let body = match axum::body::to_bytes(request.into_body(), state.max_body).await {
        Ok(body) => body,
        Err(_) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is over {} bytes", state.max_body),
            )
        }
    };
    let event = OwnedEvent::Http {
        method,
        path,
        query,
        headers: OwnedEvent::encode_pairs(&headers),
        body: body.to_vec(),
        params: OwnedEvent::encode_pairs(&params),
    };
    if let Some(queue) = &target.queue {
        let response = queue.accept(event).await;
        // Counted here, queued or refused (503) as a request-response
        // route counts what its queue refuses: the invoke drain that runs
        // it later counts it for the function only.
        if let Some(trigger) = target.intake.trigger() {
            crate::metrics::inc(&trigger.events);
        }
        return response;
    }
    let (reply, answer) = oneshot::channel();
    let job = Job {
        event,
        arrived: Instant::now(),
        settle: Settle::Http(Pending::new(reply)),
        dedup: None,
        trace: None,
    };
    match target.intake.try_send(job) {
        Ok(()) => {}
        Err(super::Refused::Full) => {
            let mut response = plain(
                StatusCode::TOO_MANY_REQUESTS,
                "the function's queue is full; retry",
            );
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("1"),
            );
            return response;
        }
        Err(super::Refused::Closed) => {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping")
        }
    }
    match answer.await.unwrap_or(Answer::Unavailable) {
        Answer::Ran {
            request_id,
            response,
            trace,
        } => with_request_id(from_function(response), request_id, trace),
        Answer::Failed {
            request_id,
            failure,
            trace,
        } => {
            let (status, text) = match failure {
                FailureKind::Deadline => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "the function ran past its deadline",
                ),
                _ => (StatusCode::BAD_GATEWAY, "the function failed"),
            };
            let text = format!(
                "{text} (kind {}); its event is in the dead-letter queue",
                failure.as_str()
            );
            with_request_id(plain(status, &text), request_id, trace)
        }
        Answer::Unavailable => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "not committed (the gateway is stopping); retry",
        ),
    }
}

/// The function's `respond`, or 204 without one.
fn from_function(response: Option<Response>) -> HttpResponse {
    let Some(response) = response else {
        let mut empty = HttpResponse::new(Body::empty());
        *empty.status_mut() = StatusCode::NO_CONTENT;
        return empty;
    };
    let mut out = HttpResponse::new(Body::empty());
    *out.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
    for (name, value) in &response.headers {
        // The host let only valid names and values through.
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.headers_mut().append(name, value);
        }
    }
    if !out.headers().contains_key(axum::http::header::CONTENT_TYPE) && !response.body.is_empty() {
        // Without a content type of the function's: a JSON body says so,
        // anything else goes as bytes.
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(&response.body).is_ok();
        out.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static(if json {
                "application/json"
            } else {
                "application/octet-stream"
            }),
        );
    }
    *out.body_mut() = Body::from(response.body);
    out
}

/// Names the invocation in its answer: its request id (what `wasmgate
/// logs --request` takes) and, with tracing on, its span, so that a client
/// can follow its request on.
fn with_request_id(
    mut response: HttpResponse,
    request_id: u64,
    trace: Option<String>,
) -> HttpResponse {
    if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
        response.headers_mut().insert("x-request-id", value);
    }
    if let Some(value) = trace.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_key_must_be_one_of_the_keys_exactly() {
        let keys = vec!["k-1".to_owned(), "k-22".to_owned()];
        assert!(key_matches(&keys, b"k-22"));
        assert!(!key_matches(&keys, b"k-2"));
        assert!(!key_matches(&keys, b"k-222"));
        assert!(!key_matches(&[], b""));
    }
}

//! WebSocket routes as a source: API Gateway's WebSocket API on the gateway.
//!
//! `triggers = [{ websocket = "/live" }]` takes upgrades on the `[http]`
//! listener. Each connection gets an unguessable id; its open, each message
//! and its close run the function (`$connect`, `$default`, `$disconnect`),
//! in the order they happened (the id orders them, as a topic does). The
//! connect event is answered like an HTTP request: a `respond` with a status
//! of 400 or more refuses the connection. A function sends to a connection
//! with `post_to_connection`; what it sends is an effect like an emit, held
//! until the invocation commits and then handed to the connection
//! ([`Connections::deliver`]); a failed invocation sends nothing.
//!
//! Every refusal has its close code: 1013 over the route's connections,
//! 1009 a message over its size, 1001 idle too long or the gateway stopping,
//! 1008 refused by the connect function, 1011 the connect function failed.
//!
//! Messages are events without an acknowledgement to give (a client has no
//! way to be told), so a message whose invocation fails every attempt goes
//! to the dead-letter queue, and one read while the gateway stops is lost
//! with its connection, as the connection itself is.

use super::answer::{Answer, Pending};
use super::{Intake, Job, Settle};
use crate::event::OwnedEvent;
use crate::runtime::Post;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::response::IntoResponse;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use wasmgate_abi::WebSocketKind;

/// Messages waiting to be written to one connection; past it, a client too
/// slow to read loses the newest ones (logged).
const OUTGOING: usize = 256;

/// Close codes (RFC 6455 section 7.4.1).
pub const GOING_AWAY: u16 = 1001;
pub const POLICY: u16 = 1008;
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL: u16 = 1011;
pub const TRY_LATER: u16 = 1013;

/// A route's limits.
#[derive(Debug)]
pub struct Settings {
    /// The route as configured (`/live`), for the events.
    pub route: String,
    pub max_connections: usize,
    pub idle: Duration,
    pub max_message: usize,
    /// Connections open on the route now.
    pub open: AtomicUsize,
}

/// Every open connection, by id: where committed posts go.
#[derive(Debug, Default)]
pub struct Connections {
    open: Mutex<HashMap<String, mpsc::Sender<Vec<u8>>>>,
}

impl Connections {
    fn register(&self, id: &str) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(OUTGOING);
        self.lock().insert(id.to_owned(), tx);
        rx
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Vec<u8>>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a committed invocation's posts to their connections. A
    /// connection closed meanwhile is skipped, as API Gateway answers 410.
    pub fn deliver(&self, function: &str, posts: Vec<Post>) {
        let open = self.lock();
        for post in posts {
            match open.get(&post.connection).map(|tx| tx.try_send(post.data)) {
                Some(Ok(())) => {}
                Some(Err(mpsc::error::TrySendError::Full(_))) => tracing::warn!(
                    function,
                    connection = %post.connection,
                    "websocket client too slow to read: message dropped"
                ),
                Some(Err(mpsc::error::TrySendError::Closed(_))) | None => tracing::debug!(
                    function,
                    connection = %post.connection,
                    "post to a connection that is gone: skipped"
                ),
            }
        }
    }

    /// How many are open, for tests and status.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection id no client can guess: SipHash with the process's random
/// keys over a counter, twice over (128 bits).
fn new_id() -> String {
    use std::hash::BuildHasher;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let a = std::collections::hash_map::RandomState::new().hash_one(n);
    let b = std::collections::hash_map::RandomState::new().hash_one((a, n));
    format!("{a:016x}{b:016x}")
}

/// Upgrades a request on a websocket route (a request that is not an
/// upgrade gets axum's 400 or 426), then serves the connection.
pub async fn upgrade(
    request: axum::http::Request<axum::body::Body>,
    settings: Arc<Settings>,
    intake: Intake,
    connections: Arc<Connections>,
    stop: watch::Receiver<bool>,
) -> axum::response::Response {
    let (mut parts, _) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let query = parts.uri.query().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .take(64)
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    // Room to see a message is too big and say so (1009) rather than have
    // the protocol layer drop the connection without a word.
    let frame_limit = settings.max_message.saturating_mul(2).max(64 << 10);
    upgrade
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .on_upgrade(move |socket| async move {
            let connection = Connection {
                id: new_id(),
                settings,
                intake,
                connections,
            };
            connection.serve(socket, query, headers, stop).await;
        })
}

struct Connection {
    id: String,
    settings: Arc<Settings>,
    intake: Intake,
    connections: Arc<Connections>,
}

/// How long a write to a client may take: one that does not read holds its
/// own task only this long (a shutdown waits for every connection's task).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one message; `false` if the client is gone or does not read.
async fn send(socket: &mut WebSocket, message: Message) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(message)).await,
        Ok(Ok(()))
    )
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    // A reason is at most 123 bytes; cut on a character boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].to_owned().into(),
    };
    send(socket, Message::Close(Some(frame))).await;
}

impl Connection {
    fn event(&self, kind: WebSocketKind, data: Vec<u8>, text: bool) -> OwnedEvent {
        OwnedEvent::WebSocket {
            route: self.settings.route.clone(),
            connection_id: self.id.clone(),
            kind,
            data,
            text,
            query: String::new(),
            headers: Vec::new(),
        }
    }

    fn job(event: OwnedEvent, settle: Settle) -> Job {
        Job {
            event,
            arrived: std::time::Instant::now(),
            settle,
            dedup: None,
            trace: None,
        }
    }

    async fn serve(
        self,
        mut socket: WebSocket,
        query: String,
        headers: Vec<(String, String)>,
        mut stop: watch::Receiver<bool>,
    ) {
        let settings = &self.settings;
        if settings.open.fetch_add(1, Ordering::SeqCst) >= settings.max_connections {
            settings.open.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(route = %settings.route, limit = settings.max_connections, "websocket refused: the route has its most connections");
            let reason = format!(
                "try again later: {} has its {} connections",
                settings.route, settings.max_connections
            );
            close(&mut socket, TRY_LATER, &reason).await;
            return;
        }
        let mut outgoing = self.connections.register(&self.id);
        let reason = match self.connect(query, headers).await {
            Ok(()) => self.run(&mut socket, &mut outgoing, &mut stop).await,
            Err((code, reason)) => {
                close(&mut socket, code, &reason).await;
                None
            }
        };
        self.connections.remove(&self.id);
        settings.open.fetch_sub(1, Ordering::SeqCst);
        // Refused at connect: it never opened, so there is no close to tell.
        if let Some(reason) = reason {
            let job = Self::job(
                self.event(WebSocketKind::Disconnect, reason.into_bytes(), true),
                Settle::Nothing,
            );
            let _ = self.intake.send(job).await;
        }
    }

    /// Runs the connect event and waits for its answer: `Err` holds the
    /// close code and reason of a refusal.
    async fn connect(
        &self,
        query: String,
        headers: Vec<(String, String)>,
    ) -> Result<(), (u16, String)> {
        let (reply, answer) = oneshot::channel();
        let mut event = self.event(WebSocketKind::Connect, Vec::new(), true);
        if let OwnedEvent::WebSocket {
            query: q,
            headers: h,
            ..
        } = &mut event
        {
            *q = query;
            *h = OwnedEvent::encode_pairs(&headers);
        }
        if !self
            .intake
            .send(Self::job(event, Settle::Http(Pending::new(reply))))
            .await
        {
            return Err((GOING_AWAY, "the gateway is stopping".into()));
        }
        match answer.await.unwrap_or(Answer::Unavailable) {
            Answer::Ran {
                response: Some(response),
                ..
            } if response.status >= 400 => {
                let body = String::from_utf8_lossy(&response.body);
                let reason = if body.trim().is_empty() {
                    format!("refused ({})", response.status)
                } else {
                    body.trim().to_owned()
                };
                Err((POLICY, reason))
            }
            Answer::Ran { .. } => Ok(()),
            Answer::Failed { failure, .. } => Err((
                INTERNAL,
                format!("the connect function failed ({})", failure.as_str()),
            )),
            Answer::Unavailable => Err((GOING_AWAY, "the gateway is stopping".into())),
        }
    }

    /// Serves an open connection until it ends; the reason it ended.
    async fn run(
        &self,
        socket: &mut WebSocket,
        outgoing: &mut mpsc::Receiver<Vec<u8>>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<String> {
        let settings = &self.settings;
        let mut last = Instant::now();
        let mut stopped = std::pin::pin!(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        loop {
            let idle_until = tokio::time::Instant::from_std(last + settings.idle);
            tokio::select! {
                incoming = socket.recv() => {
                    last = Instant::now();
                    let (data, text) = match incoming {
                        Some(Ok(Message::Text(text))) => (text.into_bytes(), true),
                        Some(Ok(Message::Binary(data))) => (data, false),
                        Some(Ok(Message::Close(frame))) => {
                            return Some(frame.map(|f| f.reason.into_owned()).unwrap_or_default());
                        }
                        // Answered by the protocol layer.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Err(e)) => return Some(format!("protocol error: {e}")),
                        None => return Some(String::new()),
                    };
                    if data.len() > settings.max_message {
                        let reason = format!("message over {} bytes", settings.max_message);
                        close(socket, TOO_BIG, &reason).await;
                        return Some(reason);
                    }
                    let job = Self::job(self.event(WebSocketKind::Message, data, text), Settle::Nothing);
                    if !self.intake.send(job).await {
                        close(socket, GOING_AWAY, "the gateway is stopping").await;
                        return Some("the gateway is stopping".into());
                    }
                }
                Some(data) = outgoing.recv() => {
                    last = Instant::now();
                    let message = match String::from_utf8(data) {
                        Ok(text) => Message::Text(text),
                        Err(e) => Message::Binary(e.into_bytes()),
                    };
                    if !send(socket, message).await {
                        return Some("the client is gone, or does not read".into());
                    }
                }
                () = tokio::time::sleep_until(idle_until) => {
                    let reason = format!("idle for {} s", settings.idle.as_secs());
                    close(socket, GOING_AWAY, &reason).await;
                    return Some(reason);
                }
                () = &mut stopped => {
                    close(socket, GOING_AWAY, "the gateway is stopping").await;
                    return Some("the gateway is stopping".into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_long_and_never_repeat() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 32));
    }

    #[test]
    fn posts_reach_open_connections_and_skip_closed_ones() {
        let connections = Connections::default();
        let mut open = connections.register("a");
        connections.deliver(
            "f",
            vec![
                Post {
                    connection: "a".into(),
                    data: b"hi".to_vec(),
                },
                Post {
                    connection: "gone".into(),
                    data: b"lost".to_vec(),
                },
            ],
        );
        assert_eq!(open.try_recv().unwrap(), b"hi");
        assert!(open.try_recv().is_err());
        connections.remove("a");
        assert!(connections.is_empty());
    }
}

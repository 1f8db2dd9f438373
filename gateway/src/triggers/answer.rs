//! What a caller waiting on an invocation is told once its outcome is
//! durable: an HTTP client's answer, a WebSocket connect's verdict. Its own
//! leaf so that the sources that answer (`http`, `websocket`) share it
//! without leaning on each other.

use crate::runtime::{FailureKind, Response};
use tokio::sync::oneshot;

/// The end of an HTTP event: the answer for its client.
#[derive(Debug)]
pub struct Pending {
    answer: Option<Answer>,
    reply: oneshot::Sender<Answer>,
}

/// How an invocation ended, for its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Ran, and its effects are committed; `None`: it did not respond.
    Ran {
        request_id: u64,
        response: Option<Response>,
        /// The invocation's span, as `traceparent`, with tracing on.
        trace: Option<String>,
    },
    /// Failed every attempt; its dead letter is committed.
    Failed {
        request_id: u64,
        failure: FailureKind,
        trace: Option<String>,
    },
    /// Not settled: the gateway is stopping, or could not commit.
    Unavailable,
}

impl Pending {
    /// An answer to wait for on `reply`.
    pub(crate) fn new(reply: oneshot::Sender<Answer>) -> Pending {
        Pending {
            answer: None,
            reply,
        }
    }

    /// Keeps what the invocation said until its outcome is durable.
    pub(crate) fn tell(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }

    pub(crate) fn resolve(self, durable: bool) {
        let answer = match self.answer {
            Some(answer) if durable => answer,
            _ => Answer::Unavailable,
        };
        // The client may have gone: the effects stand all the same.
        let _ = self.reply.send(answer);
    }
}

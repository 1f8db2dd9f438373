//! An in-memory host for unit-testing functions natively (not on `wasm32`).
//!
//! [`FakeHost`] keeps KV, config, emits, logs, invokes and the HTTP reply in
//! memory, answers with the same statuses as the gateway where that is cheap
//! to mirror (wildcard topics, empty keys, non-counters, HTTP status range,
//! denied names), and like the gateway commits an invocation's effects only
//! when the handler returns `Ok`.
//!
//! ```
//! use wasmgate_sdk::testing::{mqtt, FakeHost};
//! # use wasmgate_sdk::{Ctx, Error, Event};
//! # fn handle(_: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
//! #     ctx.kv_increment("seen", 1).map(drop)
//! # }
//! let mut host = FakeHost::new();
//! host.call(handle, &mqtt("sensors/1", "21.5")).unwrap();
//! host.call(handle, &mqtt("sensors/1", "21.7")).unwrap();
//! assert_eq!(host.counter("seen"), Some(2));
//! ```

use crate::ctx::Ctx;
use crate::error::Error;
use crate::host::Host;
use std::collections::{BTreeMap, BTreeSet};
use std::string::{String, ToString};
use std::vec::Vec;
use wasmgate_abi::{
    is_valid_publish_topic, Context, EmitOptions, Envelope, Event, FileArrival, HttpRequest,
    LogLevel, MetricKind, MqttMessage, Pair, ScheduleTick, Seq, Status, WebSocketEvent,
    WebSocketKind,
};

/// A message the function emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub topic: String,
    pub payload: Vec<u8>,
    pub options: EmitOptions,
}

impl Emitted {
    /// The payload as text (JSON, usually); panics if it is not UTF-8.
    #[track_caller]
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("payload is not UTF-8")
    }
}

/// A log line the function wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub level: LogLevel,
    pub message: String,
}

/// A call of another function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoked {
    pub function: String,
    pub payload: Vec<u8>,
}

/// The reply to a request/response trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// Headers set with `respond_header`, in order.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The body as text; panics if it is not UTF-8.
    #[track_caller]
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("body is not UTF-8")
    }
}

/// A message for a WebSocket connection (`post_to_connection`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub connection: String,
    pub data: Vec<u8>,
}

/// A custom metric update (`Ctx::counter`, `gauge`, `observe`).
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// As the function wrote it, labels included: `dispensed{slot="a3"}`.
    pub name: String,
    pub kind: MetricKind,
    pub value: f64,
}

/// What an invocation may change, saved so that a failed one can be undone.
#[derive(Debug, Clone, Default)]
struct Effects {
    /// Kept, like the gateway's, only if the invocation succeeds.
    metrics: Vec<Measured>,
    kv: BTreeMap<String, Vec<u8>>,
    emits: Vec<Emitted>,
    invokes: Vec<Invoked>,
    response: Option<Response>,
    failed_items: BTreeSet<usize>,
    posts: Vec<Posted>,
}

/// The in-memory host. See the [module docs](self).
#[derive(Debug)]
pub struct FakeHost {
    effects: Effects,
    logs: Vec<Logged>,
    config: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
    denied: BTreeSet<String>,
    now_ms: i64,
    next_request_id: u64,
    event: Vec<u8>,
    /// The current event's items, if it is a batch.
    batch_len: Option<usize>,
}

fn batch_len(event: &Event<'_>) -> Option<usize> {
    match event {
        Event::Batch(items) => Some(items.count().unwrap_or(0)),
        _ => None,
    }
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost::new()
    }
}

impl FakeHost {
    /// The clock starts at 2025-11-26T12:00:00Z and moves only when told to.
    pub const START_MS: i64 = 1_764_158_400_000;
    /// Every invocation's deadline is this long after "now".
    pub const TIMEOUT_MS: u64 = 1_000;

    pub fn new() -> Self {
        FakeHost {
            effects: Effects::default(),
            logs: Vec::new(),
            config: BTreeMap::new(),
            secrets: BTreeMap::new(),
            denied: BTreeSet::new(),
            now_ms: Self::START_MS,
            next_request_id: 1,
            event: Vec::new(),
            batch_len: None,
        }
    }

    // ---- running a function ----

    /// Runs `handler` on `event` as one invocation: with a fresh request id,
    /// and like the gateway, keeping its emits, KV writes, invokes and reply
    /// only if it returns `Ok` (logs are kept either way).
    pub fn call<F>(&mut self, handler: F, event: &Event<'_>) -> Result<(), Error>
    where
        F: for<'e, 'c> FnOnce(&Event<'e>, &mut Ctx<'c, FakeHost>) -> Result<(), Error>,
    {
        let saved = self.effects.clone();
        let context = self.next_context();
        self.batch_len = batch_len(event);
        let result = handler(event, &mut Ctx::new(self, context));
        if result.is_err() {
            self.effects = saved;
        }
        result
    }

    /// Encodes `event` into an envelope and runs it through exactly what the
    /// exported `wasmgate_handle` does with an event buffer of `buffer_size`
    /// bytes; returns its return code (`0` on success). Effects are kept only
    /// on `0`, as in [`FakeHost::call`].
    pub fn handle_encoded<F>(&mut self, event: &Event<'_>, buffer_size: usize, handler: F) -> i32
    where
        F: for<'e, 'c> FnOnce(&Event<'e>, &mut Ctx<'c, FakeHost>) -> Result<(), Error>,
    {
        let context = self.next_context();
        let envelope = Envelope {
            context,
            event: *event,
        };
        let bytes = envelope.encode().expect("an event always encodes");
        let event_len = i32::try_from(bytes.len()).expect("test event under 2 GiB");
        self.event = bytes;
        self.batch_len = batch_len(event);
        let saved = self.effects.clone();
        let mut buf = std::vec![0u8; buffer_size];
        let code = crate::glue::run(self, &mut buf, event_len, handler);
        if code != 0 {
            self.effects = saved;
        }
        code
    }

    /// A `Ctx` for calling SDK methods directly, outside any handler; its
    /// effects are kept immediately.
    pub fn ctx(&mut self) -> Ctx<'_, FakeHost> {
        let context = self.next_context();
        Ctx::new(self, context)
    }

    fn next_context(&mut self) -> Context<'static> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        Context {
            request_id,
            function: "test-function",
            version: "0000test",
            attempt: 1,
            deadline_ms: (self.now_ms.max(0) as u64) + Self::TIMEOUT_MS,
        }
    }

    // ---- setting the scene ----

    /// Sets a value of the function's `config` table.
    pub fn set_config(&mut self, key: &str, value: &str) -> &mut Self {
        self.config.insert(key.to_string(), value.to_string());
        self
    }

    /// Gives the function a secret it may read (its grants name it).
    pub fn set_secret(&mut self, name: &str, value: &str) -> &mut Self {
        self.secrets.insert(name.to_string(), value.to_string());
        self
    }

    /// Sets a KV value as if an earlier invocation had committed it.
    pub fn set_kv(&mut self, key: &str, value: impl AsRef<[u8]>) -> &mut Self {
        self.effects
            .kv
            .insert(key.to_string(), value.as_ref().to_vec());
        self
    }

    /// Makes emits to this exact topic, and invokes of this function, [`Status::Denied`].
    pub fn deny(&mut self, topic_or_function: &str) -> &mut Self {
        self.denied.insert(topic_or_function.to_string());
        self
    }

    pub fn set_now_ms(&mut self, now_ms: i64) -> &mut Self {
        self.now_ms = now_ms;
        self
    }

    pub fn advance_ms(&mut self, ms: i64) -> &mut Self {
        self.now_ms += ms;
        self
    }

    /// The raw bytes `event_read` returns, for testing envelope handling.
    pub fn set_event_bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.event = bytes.to_vec();
        self
    }

    // ---- looking at the outcome ----

    /// Everything emitted (and committed) so far, in order.
    pub fn emits(&self) -> &[Emitted] {
        &self.effects.emits
    }

    /// The emits to one topic, in order.
    pub fn emits_to(&self, topic: &str) -> Vec<&Emitted> {
        self.emits().iter().filter(|e| e.topic == topic).collect()
    }

    /// Forgets the emits, invokes and reply so far (KV stays), to look at the next invocation alone.
    pub fn clear_outputs(&mut self) -> &mut Self {
        self.effects.emits.clear();
        self.effects.invokes.clear();
        self.effects.response = None;
        self.effects.failed_items.clear();
        self.effects.posts.clear();
        self
    }

    /// The items of the last batch reported failed (`item_failed`), in order.
    pub fn failed_items(&self) -> Vec<usize> {
        self.effects.failed_items.iter().copied().collect()
    }

    pub fn logs(&self) -> &[Logged] {
        &self.logs
    }

    /// Whether a line at `level` containing `text` was logged.
    pub fn logged(&self, level: LogLevel, text: &str) -> bool {
        self.logs
            .iter()
            .any(|l| l.level == level && l.message.contains(text))
    }

    pub fn kv(&self, key: &str) -> Option<&[u8]> {
        self.effects.kv.get(key).map(Vec::as_slice)
    }

    /// A KV value as a counter (8 bytes little-endian); `None` if missing or not 8 bytes.
    pub fn counter(&self, key: &str) -> Option<i64> {
        let bytes: [u8; 8] = self.kv(key)?.try_into().ok()?;
        Some(i64::from_le_bytes(bytes))
    }

    pub fn invokes(&self) -> &[Invoked] {
        &self.effects.invokes
    }

    /// The custom metric updates of the successful invocations, in order.
    pub fn metrics(&self) -> &[Measured] {
        &self.effects.metrics
    }

    /// What was sent to WebSocket connections, in order.
    pub fn posts(&self) -> &[Posted] {
        &self.effects.posts
    }

    pub fn response(&self) -> Option<&Response> {
        self.effects.response.as_ref()
    }

    fn copy_out(value: &[u8], dst: &mut [u8]) -> i32 {
        if let Some(dst) = dst.get_mut(..value.len()) {
            dst.copy_from_slice(value);
        }
        i32::try_from(value.len()).unwrap_or(i32::MAX)
    }
}

const OK: i32 = Status::Ok.code();
const NOT_FOUND: i32 = Status::NotFound.code();
const INVALID_ARGUMENT: i32 = Status::InvalidArgument.code();
const DENIED: i32 = Status::Denied.code();
const NOT_A_NUMBER: i32 = Status::NotANumber.code();

impl Host for FakeHost {
    fn event_read(&mut self, dst: &mut [u8]) -> i32 {
        Self::copy_out(&self.event, dst)
    }

    fn emit(&mut self, topic: &str, payload: &[u8], flags: i32) -> i32 {
        let Some(options) = EmitOptions::from_flags(flags) else {
            return INVALID_ARGUMENT;
        };
        if !is_valid_publish_topic(topic) {
            return INVALID_ARGUMENT;
        }
        if self.denied.contains(topic) {
            return DENIED;
        }
        self.effects.emits.push(Emitted {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            options,
        });
        OK
    }

    fn kv_get(&mut self, key: &str, dst: &mut [u8]) -> i32 {
        if key.is_empty() {
            return INVALID_ARGUMENT;
        }
        match self.effects.kv.get(key) {
            Some(value) => Self::copy_out(value, dst),
            None => NOT_FOUND,
        }
    }

    fn kv_put(&mut self, key: &str, value: &[u8]) -> i32 {
        if key.is_empty() {
            return INVALID_ARGUMENT;
        }
        self.effects.kv.insert(key.to_string(), value.to_vec());
        OK
    }

    fn kv_delete(&mut self, key: &str) -> i32 {
        if key.is_empty() {
            return INVALID_ARGUMENT;
        }
        self.effects.kv.remove(key);
        OK
    }

    fn kv_increment(&mut self, key: &str, delta: i64, dst: &mut [u8; 8]) -> i32 {
        if key.is_empty() {
            return INVALID_ARGUMENT;
        }
        let current = match self.effects.kv.get(key) {
            None => 0,
            Some(value) => match <[u8; 8]>::try_from(value.as_slice()) {
                Ok(bytes) => i64::from_le_bytes(bytes),
                Err(_) => return NOT_A_NUMBER,
            },
        };
        let new = current.wrapping_add(delta);
        self.effects
            .kv
            .insert(key.to_string(), new.to_le_bytes().to_vec());
        *dst = new.to_le_bytes();
        OK
    }

    fn log(&mut self, level: LogLevel, msg: &str) {
        self.logs.push(Logged {
            level,
            message: msg.to_string(),
        });
    }

    fn now_ms(&mut self) -> i64 {
        self.now_ms
    }

    fn config_get(&mut self, key: &str, dst: &mut [u8]) -> i32 {
        if key.is_empty() {
            return INVALID_ARGUMENT;
        }
        match self.config.get(key) {
            Some(value) => Self::copy_out(value.as_bytes(), dst),
            None => NOT_FOUND,
        }
    }

    fn secret_get(&mut self, name: &str, dst: &mut [u8]) -> i32 {
        if name.is_empty() {
            return INVALID_ARGUMENT;
        }
        if self.denied.contains(name) {
            return DENIED;
        }
        match self.secrets.get(name) {
            Some(value) => Self::copy_out(value.as_bytes(), dst),
            None => NOT_FOUND,
        }
    }

    fn invoke(&mut self, function: &str, payload: &[u8]) -> i32 {
        if function.is_empty() {
            return INVALID_ARGUMENT;
        }
        if self.denied.contains(function) {
            return DENIED;
        }
        self.effects.invokes.push(Invoked {
            function: function.to_string(),
            payload: payload.to_vec(),
        });
        OK
    }

    fn respond(&mut self, status: i32, body: &[u8]) -> i32 {
        let Ok(status @ 100..=599) = u16::try_from(status) else {
            return INVALID_ARGUMENT;
        };
        let headers = self
            .effects
            .response
            .take()
            .map(|r| r.headers)
            .unwrap_or_default();
        self.effects.response = Some(Response {
            status,
            body: body.to_vec(),
            headers,
        });
        OK
    }

    fn respond_header(&mut self, name: &str, value: &str) -> i32 {
        if !wasmgate_abi::valid_response_header(name, value) {
            return INVALID_ARGUMENT;
        }
        let response = self.effects.response.get_or_insert_with(|| Response {
            status: 200,
            body: Vec::new(),
            headers: Vec::new(),
        });
        if response.headers.len() >= wasmgate_abi::MAX_RESPONSE_HEADERS {
            return INVALID_ARGUMENT;
        }
        response.headers.push((name.to_string(), value.to_string()));
        OK
    }

    fn post_to_connection(&mut self, connection: &str, data: &[u8]) -> i32 {
        if connection.is_empty() || self.effects.posts.len() >= 100 {
            return INVALID_ARGUMENT;
        }
        self.effects.posts.push(Posted {
            connection: connection.to_string(),
            data: data.to_vec(),
        });
        OK
    }

    /// Checks what the SDK can (the kind, the value); the gateway also
    /// checks the name and its labels.
    fn metric(&mut self, name: &str, kind: MetricKind, value: f64) -> i32 {
        if name.is_empty() || !value.is_finite() || (kind == MetricKind::Counter && value < 0.0) {
            return INVALID_ARGUMENT;
        }
        self.effects.metrics.push(Measured {
            name: name.to_string(),
            kind,
            value,
        });
        OK
    }

    fn item_failed(&mut self, index: i32) -> i32 {
        match (self.batch_len, usize::try_from(index)) {
            (Some(len), Ok(index)) if index < len => {
                self.effects.failed_items.insert(index);
                OK
            }
            _ => INVALID_ARGUMENT,
        }
    }
}

// ---- building events ----

/// An MQTT message on `topic` (QoS 1, not retained, no user properties).
pub fn mqtt<'a>(topic: &'a str, payload: &'a (impl AsRef<[u8]> + ?Sized)) -> Event<'a> {
    Event::Mqtt(MqttMessage {
        topic,
        payload: payload.as_ref(),
        qos: 1,
        retain: false,
        user_properties: Seq::empty(),
    })
}

/// An HTTP request; `query` without the `?`.
pub fn http<'a>(
    method: &'a str,
    path: &'a str,
    query: &'a str,
    body: &'a (impl AsRef<[u8]> + ?Sized),
) -> Event<'a> {
    Event::Http(HttpRequest {
        method,
        path,
        query,
        headers: Seq::empty(),
        body: body.as_ref(),
        params: Seq::empty(),
    })
}

/// A file that landed in a watched directory, with these contents.
pub fn file<'a>(path: &'a str, contents: &'a (impl AsRef<[u8]> + ?Sized)) -> Event<'a> {
    let contents = contents.as_ref();
    Event::File(FileArrival {
        path,
        size: contents.len() as u64,
        modified_ms: FakeHost::START_MS as u64,
        contents,
    })
}

/// A schedule tick, run on time.
pub fn schedule(schedule: &str, scheduled_ms: u64) -> Event<'_> {
    Event::Schedule(ScheduleTick {
        schedule,
        scheduled_ms,
        fired_ms: scheduled_ms,
        catch_up: false,
    })
}

/// A WebSocket event on `route` for `connection`: a message (`data` as
/// text), or a connect with this query, or a disconnect.
pub fn websocket<'a>(
    kind: WebSocketKind,
    route: &'a str,
    connection: &'a str,
    query: &'a str,
    data: &'a (impl AsRef<[u8]> + ?Sized),
) -> Event<'a> {
    Event::WebSocket(WebSocketEvent {
        route,
        connection_id: connection,
        kind,
        data: data.as_ref(),
        text: true,
        query,
        headers: Seq::empty(),
    })
}

/// The bytes behind a `Seq<Pair>` (user properties, headers):
/// `Seq::from_encoded(&pairs(&[("k", "v")]))`.
pub fn pairs(items: &[(&str, &str)]) -> Vec<u8> {
    let items: Vec<Pair<'_>> = items
        .iter()
        .map(|&(name, value)| Pair { name, value })
        .collect();
    Seq::<Pair>::encode(&items).expect("pairs always encode")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_then_fail(_: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
        ctx.kv_increment("n", 1)?;
        ctx.emit("out", "x")?;
        ctx.log(LogLevel::Info, "about to fail");
        Err(Error::msg("boom"))
    }

    #[test]
    fn a_failed_call_commits_nothing_but_keeps_its_logs() {
        let mut host = FakeHost::new();
        host.set_kv("n", 5i64.to_le_bytes());
        assert_eq!(
            host.call(count_then_fail, &mqtt("a", "")),
            Err(Error::msg("boom"))
        );
        assert_eq!(host.counter("n"), Some(5));
        assert!(host.emits().is_empty());
        assert!(host.logged(LogLevel::Info, "about to fail"));
    }

    #[test]
    fn each_call_gets_a_new_request_id() {
        fn record(_: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
            let id = ctx.context().request_id;
            ctx.kv_put(if id == 1 { "first" } else { "second" }, id.to_le_bytes())
        }
        let mut host = FakeHost::new();
        host.call(record, &mqtt("a", "")).unwrap();
        host.call(record, &mqtt("a", "")).unwrap();
        assert_eq!(host.counter("first"), Some(1));
        assert_eq!(host.counter("second"), Some(2));
    }

    #[test]
    fn user_properties_can_be_built_for_a_test_event() {
        let props = pairs(&[("device", "vm-1")]);
        let Event::Mqtt(mut msg) = mqtt("a", "") else {
            unreachable!()
        };
        msg.user_properties = Seq::from_encoded(&props);
        let first = msg.user_properties.iter().next().unwrap().unwrap();
        assert_eq!(
            first,
            Pair {
                name: "device",
                value: "vm-1"
            }
        );
    }

    #[test]
    fn unknown_emit_flags_are_an_invalid_argument() {
        let mut host = FakeHost::new();
        assert_eq!(host.emit("a", b"", 1 << 5), INVALID_ARGUMENT);
        assert_eq!(host.emit("a", b"", 3), INVALID_ARGUMENT);
    }
}

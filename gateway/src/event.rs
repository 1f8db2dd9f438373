//! Events as the gateway holds them between a trigger and an invocation.
//!
//! The ABI's [`Event`] borrows everything (that is what lets a guest decode
//! without an allocator); the gateway needs owned events that can sit in a
//! queue. [`OwnedEvent`] is that, plus the JSON form users write by hand for
//! `wasmgate invoke --event event.json`.

use serde_json::{Map, Value};
use wasmgate_abi::{
    Event, FileArrival, HttpRequest, InvokeRequest, KvChange, KvOp, MqttMessage, Pair,
    ScheduleTick, Seq, WebSocketEvent, WebSocketKind,
};

/// An event that owns its bytes. `as_event` lends it out in ABI form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedEvent {
    Mqtt {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        /// Encoded `Seq<Pair>`, built once so lending is free.
        user_properties: Vec<u8>,
    },
    Schedule {
        schedule: String,
        scheduled_ms: u64,
        fired_ms: u64,
        catch_up: bool,
    },
    Http {
        method: String,
        path: String,
        query: String,
        headers: Vec<u8>,
        body: Vec<u8>,
        /// Encoded `Seq<Pair>`: the route's path parameters.
        params: Vec<u8>,
    },
    File {
        path: String,
        size: u64,
        modified_ms: u64,
        contents: Vec<u8>,
    },
    KvChange {
        namespace: String,
        key: String,
        op: KvOp,
        value: Option<Vec<u8>>,
        /// The value before the change; `None` for a new key.
        old: Option<Vec<u8>>,
    },
    Invoke {
        from: String,
        payload: Vec<u8>,
    },
    /// Encoded `Seq<Event>`.
    Batch(Vec<u8>),
    WebSocket {
        route: String,
        connection_id: String,
        kind: WebSocketKind,
        data: Vec<u8>,
        text: bool,
        query: String,
        /// Encoded `Seq<Pair>`.
        headers: Vec<u8>,
    },
}

impl OwnedEvent {
    /// The bytes it holds, roughly (strings and payloads): what buffers of
    /// events are bounded by.
    pub fn size(&self) -> usize {
        match self {
            OwnedEvent::Mqtt {
                topic,
                payload,
                user_properties,
                ..
            } => topic.len() + payload.len() + user_properties.len(),
            OwnedEvent::Schedule { schedule, .. } => schedule.len(),
            OwnedEvent::Http {
                method,
                path,
                query,
                headers,
                body,
                params,
            } => {
                method.len() + path.len() + query.len() + headers.len() + body.len() + params.len()
            }
            OwnedEvent::File { path, contents, .. } => path.len() + contents.len(),
            OwnedEvent::KvChange {
                namespace,
                key,
                value,
                old,
                ..
            } => {
                namespace.len()
                    + key.len()
                    + value.as_ref().map_or(0, Vec::len)
                    + old.as_ref().map_or(0, Vec::len)
            }
            OwnedEvent::Invoke { from, payload } => from.len() + payload.len(),
            OwnedEvent::Batch(events) => events.len(),
            OwnedEvent::WebSocket {
                route,
                connection_id,
                data,
                query,
                headers,
                ..
            } => route.len() + connection_id.len() + data.len() + query.len() + headers.len(),
        }
    }

    /// An MQTT message without user properties (MQTT 3.1.1, or none sent).
    pub fn mqtt(
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        qos: u8,
        retain: bool,
    ) -> Self {
        OwnedEvent::Mqtt {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            user_properties: Vec::new(),
        }
    }

    /// An MQTT 5 message with its user properties, in the order sent
    /// (names may repeat). Encoded once here, so lending it is free.
    pub fn mqtt_with_properties(
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        qos: u8,
        retain: bool,
        properties: &[(String, String)],
    ) -> Self {
        let pairs: Vec<Pair<'_>> = properties
            .iter()
            .map(|(name, value)| Pair { name, value })
            .collect();
        OwnedEvent::Mqtt {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            // postcard cannot fail to encode strings into a Vec; none
            // encode as nothing, like an MQTT 3.1.1 message.
            user_properties: Seq::<Pair>::encode(&pairs).unwrap_or_default(),
        }
    }

    /// `(name, value)` pairs as the ABI's `Seq<Pair>` (HTTP headers, path
    /// parameters).
    pub fn encode_pairs(pairs: &[(String, String)]) -> Vec<u8> {
        let lent: Vec<Pair<'_>> = pairs
            .iter()
            .map(|(name, value)| Pair { name, value })
            .collect();
        // postcard cannot fail to encode strings into a Vec.
        Seq::<Pair>::encode(&lent).unwrap_or_default()
    }

    /// Several events delivered to one invocation.
    pub fn batch(events: &[OwnedEvent]) -> Self {
        Self::batch_of(events)
    }

    /// [`OwnedEvent::batch`] of events held elsewhere (a batch's items).
    pub fn batch_of<'a>(events: impl IntoIterator<Item = &'a OwnedEvent>) -> Self {
        let lent: Vec<Event<'_>> = events.into_iter().map(OwnedEvent::as_event).collect();
        // postcard cannot fail to encode these plain types into a Vec.
        OwnedEvent::Batch(Seq::<Event>::encode(&lent).unwrap_or_default())
    }

    /// An owned copy of a lent event (one decoded from the store).
    pub fn from_abi(event: &Event<'_>) -> Self {
        match *event {
            Event::Mqtt(m) => OwnedEvent::Mqtt {
                topic: m.topic.to_owned(),
                payload: m.payload.to_vec(),
                qos: m.qos,
                retain: m.retain,
                user_properties: m.user_properties.encoded().to_vec(),
            },
            Event::Schedule(t) => OwnedEvent::Schedule {
                schedule: t.schedule.to_owned(),
                scheduled_ms: t.scheduled_ms,
                fired_ms: t.fired_ms,
                catch_up: t.catch_up,
            },
            Event::Http(r) => OwnedEvent::Http {
                method: r.method.to_owned(),
                path: r.path.to_owned(),
                query: r.query.to_owned(),
                headers: r.headers.encoded().to_vec(),
                body: r.body.to_vec(),
                params: r.params.encoded().to_vec(),
            },
            Event::File(f) => OwnedEvent::File {
                path: f.path.to_owned(),
                size: f.size,
                modified_ms: f.modified_ms,
                contents: f.contents.to_vec(),
            },
            Event::KvChange(c) => OwnedEvent::KvChange {
                namespace: c.namespace.to_owned(),
                key: c.key.to_owned(),
                op: c.op,
                value: c.value.map(<[u8]>::to_vec),
                old: c.old.map(<[u8]>::to_vec),
            },
            Event::Invoke(i) => OwnedEvent::Invoke {
                from: i.from.to_owned(),
                payload: i.payload.to_vec(),
            },
            Event::Batch(items) => OwnedEvent::Batch(items.encoded().to_vec()),
            Event::WebSocket(w) => OwnedEvent::WebSocket {
                route: w.route.to_owned(),
                connection_id: w.connection_id.to_owned(),
                kind: w.kind,
                data: w.data.to_vec(),
                text: w.text,
                query: w.query.to_owned(),
                headers: w.headers.encoded().to_vec(),
            },
        }
    }

    pub fn as_event(&self) -> Event<'_> {
        match self {
            OwnedEvent::Mqtt {
                topic,
                payload,
                qos,
                retain,
                user_properties,
            } => Event::Mqtt(MqttMessage {
                topic,
                payload,
                qos: *qos,
                retain: *retain,
                user_properties: Seq::from_encoded(user_properties),
            }),
            OwnedEvent::Schedule {
                schedule,
                scheduled_ms,
                fired_ms,
                catch_up,
            } => Event::Schedule(ScheduleTick {
                schedule,
                scheduled_ms: *scheduled_ms,
                fired_ms: *fired_ms,
                catch_up: *catch_up,
            }),
            OwnedEvent::Http {
                method,
                path,
                query,
                headers,
                body,
                params,
            } => Event::Http(HttpRequest {
                method,
                path,
                query,
                headers: Seq::from_encoded(headers),
                body,
                params: Seq::from_encoded(params),
            }),
            OwnedEvent::File {
                path,
                size,
                modified_ms,
                contents,
            } => Event::File(FileArrival {
                path,
                size: *size,
                modified_ms: *modified_ms,
                contents,
            }),
            OwnedEvent::KvChange {
                namespace,
                key,
                op,
                value,
                old,
            } => Event::KvChange(KvChange {
                namespace,
                key,
                op: *op,
                value: value.as_deref(),
                old: old.as_deref(),
            }),
            OwnedEvent::Invoke { from, payload } => Event::Invoke(InvokeRequest { from, payload }),
            OwnedEvent::Batch(encoded) => Event::Batch(Seq::from_encoded(encoded)),
            OwnedEvent::WebSocket {
                route,
                connection_id,
                kind,
                data,
                text,
                query,
                headers,
            } => Event::WebSocket(WebSocketEvent {
                route,
                connection_id,
                kind: *kind,
                data,
                text: *text,
                query,
                headers: Seq::from_encoded(headers),
            }),
        }
    }

    /// Parses what `wasmgate invoke --event` reads: an event (see
    /// [`OwnedEvent::from_json`]), or a document that holds one under
    /// `"event"`, as `wasmgate dlq show` prints a dead letter; then its
    /// `"function"` is returned too.
    pub fn from_event_file(value: &Value) -> Result<(Self, Option<String>), EventJsonError> {
        match value.as_object().and_then(|o| o.get("event")) {
            Some(event) => {
                if let Some(why) = event.get("undecodable").and_then(Value::as_str) {
                    return Err(EventJsonError::new(
                        "event",
                        &format!("the dead letter's event could not be decoded: {why}"),
                    ));
                }
                let function = value
                    .get("function")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                Ok((
                    Self::from_json(event).map_err(|e| e.within("event"))?,
                    function,
                ))
            }
            None => Ok((Self::from_json(value)?, None)),
        }
    }

    /// Parses the JSON form: one key naming the trigger kind, e.g.
    /// `{"mqtt": {"topic": "a/b", "payload": {"t": 1}}}`. See
    /// [`EVENT_JSON_HELP`] for every field.
    pub fn from_json(value: &Value) -> Result<Self, EventJsonError> {
        let object = value
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or_else(|| EventJsonError::new("", "an event is an object with exactly one key: mqtt, http, schedule, file, kv_change, invoke, websocket or batch"))?;
        let (kind, body) = object
            .iter()
            .next()
            .ok_or_else(|| EventJsonError::new("", "empty event"))?;
        let at = kind.as_str();
        if kind == "batch" {
            let items = body
                .as_array()
                .ok_or_else(|| EventJsonError::new(at, "a batch is an array of events"))?;
            let events = items
                .iter()
                .enumerate()
                .map(|(i, item)| match OwnedEvent::from_json(item) {
                    Ok(OwnedEvent::Batch(_)) => Err(EventJsonError::new(
                        &format!("batch[{i}]"),
                        "batches do not nest",
                    )),
                    Ok(event) => Ok(event),
                    Err(e) => Err(e.within(&format!("batch[{i}]"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(OwnedEvent::batch(&events));
        }
        let fields = Fields::new(at, body)?;
        let event = match at {
            "mqtt" => {
                let qos = fields.u64_or("qos", 1)?;
                if qos > 2 {
                    return Err(EventJsonError::new(at, "qos must be 0, 1 or 2"));
                }
                OwnedEvent::Mqtt {
                    topic: fields.required_str("topic")?,
                    payload: fields.bytes("payload")?,
                    qos: qos as u8,
                    retain: fields.bool_or("retain", false)?,
                    user_properties: fields.pairs("user_properties")?,
                }
            }
            "http" => OwnedEvent::Http {
                method: fields.str_or("method", "GET")?,
                path: fields.str_or("path", "/")?,
                query: fields.str_or("query", "")?,
                headers: fields.pairs("headers")?,
                body: fields.bytes("body")?,
                params: fields.pairs("params")?,
            },
            "schedule" => {
                let scheduled_ms = fields.u64_or("scheduled_ms", 0)?;
                OwnedEvent::Schedule {
                    schedule: fields.required_str("schedule")?,
                    scheduled_ms,
                    fired_ms: fields.u64_or("fired_ms", scheduled_ms)?,
                    catch_up: fields.bool_or("catch_up", false)?,
                }
            }
            "file" => {
                let contents = fields.bytes("contents")?;
                OwnedEvent::File {
                    path: fields.required_str("path")?,
                    size: fields.u64_or("size", contents.len() as u64)?,
                    modified_ms: fields.u64_or("modified_ms", 0)?,
                    contents,
                }
            }
            "kv_change" => {
                let op = match fields.str_or("op", "put")?.as_str() {
                    "put" => KvOp::Put,
                    "delete" => KvOp::Delete,
                    other => return Err(EventJsonError::new(at, &format!("op must be \"put\" or \"delete\", not {other:?}"))),
                };
                let value = fields.bytes("value")?;
                let has_old = ["old", "old_hex"].iter().any(|k| fields.map.contains_key(*k));
                let old = if has_old { Some(fields.bytes("old")?) } else { None };
                OwnedEvent::KvChange {
                    namespace: fields.required_str("namespace")?,
                    key: fields.required_str("key")?,
                    op,
                    value: (op == KvOp::Put).then_some(value),
                    old,
                }
            }
            "invoke" => OwnedEvent::Invoke {
                from: fields.str_or("from", "cli")?,
                payload: fields.bytes("payload")?,
            },
            "websocket" => {
                let kind = match fields.str_or("kind", "message")?.as_str() {
                    "connect" => WebSocketKind::Connect,
                    "message" => WebSocketKind::Message,
                    "disconnect" => WebSocketKind::Disconnect,
                    other => return Err(EventJsonError::new(at, &format!("kind must be \"connect\", \"message\" or \"disconnect\", not {other:?}"))),
                };
                OwnedEvent::WebSocket {
                    route: fields.str_or("route", "/")?,
                    connection_id: fields.str_or("connection_id", "cli")?,
                    kind,
                    data: fields.bytes("data")?,
                    text: fields.bool_or("text", true)?,
                    query: fields.str_or("query", "")?,
                    headers: fields.pairs("headers")?,
                }
            }
            other => {
                return Err(EventJsonError::new(
                    "",
                    &format!("unknown event kind {other:?}; expected mqtt, http, schedule, file, kv_change, invoke, websocket or batch"),
                ))
            }
        };
        fields.reject_unknown(match at {
            "mqtt" => &[
                "topic",
                "payload",
                "payload_hex",
                "qos",
                "retain",
                "user_properties",
            ],
            "http" => &[
                "method", "path", "query", "headers", "params", "body", "body_hex",
            ],
            "schedule" => &["schedule", "scheduled_ms", "fired_ms", "catch_up"],
            "file" => &["path", "size", "modified_ms", "contents", "contents_hex"],
            "kv_change" => &[
                "namespace",
                "key",
                "op",
                "value",
                "value_hex",
                "old",
                "old_hex",
            ],
            "websocket" => &[
                "route",
                "connection_id",
                "kind",
                "data",
                "data_hex",
                "text",
                "query",
                "headers",
            ],
            _ => &["from", "payload", "payload_hex"],
        })?;
        Ok(event)
    }
}

/// Shown by `wasmgate invoke --help`.
pub const EVENT_JSON_HELP: &str = r#"An event file holds one JSON object keyed by trigger kind:
  {"mqtt": {"topic": "vending/vm-17/telemetry", "payload": {"temp_c": 6.8}, "qos": 1, "retain": false, "user_properties": {"k": "v"}}}
  {"http": {"method": "GET", "path": "/hello", "query": "name=Ada", "headers": {"accept": "text/plain"}, "body": ""}}
  {"schedule": {"schedule": "rate(1 hour)", "scheduled_ms": 1764160000000, "fired_ms": 1764160000012, "catch_up": false}}
  {"file": {"path": "/data/in/a.csv", "contents": "a,b\n1,2\n"}}
  {"kv_change": {"namespace": "vending", "key": "total", "op": "put", "value": "42"}}
  {"invoke": {"from": "other-function", "payload": "..."}}
  {"websocket": {"route": "/live", "connection_id": "c1", "kind": "message", "data": "hi", "text": true}}
  {"batch": [ <event>, <event>, ... ]}
Payloads (payload, body, contents, value): a JSON string is taken as its UTF-8 bytes, any
other JSON value is sent as compact JSON; use payload_hex (body_hex, ...) for binary.
A dead letter as `wasmgate dlq show ID` prints it is read as its "event" (and runs
as its "function" unless --name or --function says otherwise)."#;

/// A problem in an event file, located by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct EventJsonError {
    pub path: String,
    pub message: String,
}

impl EventJsonError {
    fn new(path: &str, message: &str) -> Self {
        EventJsonError {
            path: path.to_owned(),
            message: message.to_owned(),
        }
    }

    fn within(mut self, outer: &str) -> Self {
        self.path = if self.path.is_empty() {
            outer.to_owned()
        } else {
            format!("{outer}.{}", self.path)
        };
        self
    }
}

/// Typed access to one event's fields, with errors that name the field.
struct Fields<'a> {
    kind: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(kind: &'a str, body: &'a Value) -> Result<Self, EventJsonError> {
        let map = body
            .as_object()
            .ok_or_else(|| EventJsonError::new(kind, "must be an object"))?;
        Ok(Fields { kind, map })
    }

    fn err(&self, field: &str, message: &str) -> EventJsonError {
        EventJsonError::new(&format!("{}.{field}", self.kind), message)
    }

    fn required_str(&self, field: &str) -> Result<String, EventJsonError> {
        match self.map.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.err(field, "must be a string")),
            None => Err(self.err(field, "is required")),
        }
    }

    fn str_or(&self, field: &str, default: &str) -> Result<String, EventJsonError> {
        match self.map.get(field) {
            None => Ok(default.to_owned()),
            Some(_) => self.required_str(field),
        }
    }

    fn u64_or(&self, field: &str, default: u64) -> Result<u64, EventJsonError> {
        match self.map.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| self.err(field, "must be a non-negative integer")),
        }
    }

    fn bool_or(&self, field: &str, default: bool) -> Result<bool, EventJsonError> {
        match self.map.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(field, "must be true or false")),
        }
    }

    /// `field` as bytes (string: UTF-8; other JSON: compact JSON), or
    /// `field_hex` as hex; neither means empty.
    fn bytes(&self, field: &str) -> Result<Vec<u8>, EventJsonError> {
        let hex_field = format!("{field}_hex");
        match (self.map.get(field), self.map.get(&hex_field)) {
            (Some(_), Some(_)) => {
                Err(self.err(field, &format!("give {field} or {hex_field}, not both")))
            }
            (Some(Value::String(s)), None) => Ok(s.as_bytes().to_vec()),
            (Some(other), None) => Ok(other.to_string().into_bytes()),
            (None, Some(Value::String(h))) => decode_hex(h)
                .ok_or_else(|| self.err(&hex_field, "must be an even number of hex digits")),
            (None, Some(_)) => Err(self.err(&hex_field, "must be a string of hex digits")),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// An object of string values, encoded as the ABI's `Seq<Pair>`.
    fn pairs(&self, field: &str) -> Result<Vec<u8>, EventJsonError> {
        let Some(value) = self.map.get(field) else {
            return Ok(Vec::new());
        };
        let object = value
            .as_object()
            .ok_or_else(|| self.err(field, "must be an object of strings"))?;
        let mut pairs = Vec::with_capacity(object.len());
        for (name, value) in object {
            let value = value
                .as_str()
                .ok_or_else(|| self.err(&format!("{field}.{name}"), "must be a string"))?;
            pairs.push(Pair { name, value });
        }
        Seq::<Pair>::encode(&pairs).map_err(|e| self.err(field, &e.to_string()))
    }

    fn reject_unknown(&self, known: &[&str]) -> Result<(), EventJsonError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(self.err(
                unknown,
                &format!("unknown field; expected one of: {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_event_file_may_be_a_dead_letter_as_dlq_show_prints_it() {
        let letter = serde_json::json!({
            "id": 3,
            "function": "vending",
            "attempts": [{"attempt": 1, "kind": "trap"}],
            "event": {"mqtt": {"topic": "vending/vm-1/telemetry", "payload": "hi"}},
        });
        let (event, function) = OwnedEvent::from_event_file(&letter).unwrap();
        assert_eq!(function.as_deref(), Some("vending"));
        let bare =
            serde_json::json!({"mqtt": {"topic": "vending/vm-1/telemetry", "payload": "hi"}});
        assert_eq!(OwnedEvent::from_event_file(&bare).unwrap(), (event, None));
        let broken = serde_json::json!({"function": "f", "event": {"mqtt": {}}});
        let error = OwnedEvent::from_event_file(&broken).unwrap_err();
        assert!(error.to_string().contains("event.mqtt"), "{error}");
    }
    use super::*;
    use serde_json::json;

    #[track_caller]
    fn parse(value: Value) -> OwnedEvent {
        OwnedEvent::from_json(&value).unwrap_or_else(|e| panic!("{e}"))
    }

    #[track_caller]
    fn parse_err(value: Value) -> String {
        OwnedEvent::from_json(&value)
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn mqtt_event_takes_json_payloads_compactly_and_strings_as_text() {
        let event = parse(json!({"mqtt": {"topic": "a/b", "payload": {"t": 1.5}}}));
        let Event::Mqtt(m) = event.as_event() else {
            panic!()
        };
        assert_eq!(
            (m.topic, m.payload, m.qos, m.retain),
            ("a/b", &b"{\"t\":1.5}"[..], 1, false)
        );

        let event = parse(json!({"mqtt": {"topic": "a/b", "payload": "plain text", "qos": 0}}));
        let Event::Mqtt(m) = event.as_event() else {
            panic!()
        };
        assert_eq!((m.payload, m.qos), (&b"plain text"[..], 0));
    }

    #[test]
    fn binary_payloads_come_in_hex() {
        let event = parse(json!({"mqtt": {"topic": "a", "payload_hex": "00ff10"}}));
        let Event::Mqtt(m) = event.as_event() else {
            panic!()
        };
        assert_eq!(m.payload, [0x00, 0xff, 0x10]);
        assert!(
            parse_err(json!({"mqtt": {"topic": "a", "payload_hex": "0g"}}))
                .contains("mqtt.payload_hex")
        );
    }

    #[test]
    fn user_properties_and_headers_reach_the_guest_in_order() {
        let event = parse(
            json!({"http": {"path": "/hello", "query": "name=Ada", "headers": {"a": "1", "b": "2"}}}),
        );
        let Event::Http(h) = event.as_event() else {
            panic!()
        };
        assert_eq!((h.method, h.path, h.query), ("GET", "/hello", "name=Ada"));
        let headers: Vec<Pair> = h.headers.iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            headers,
            [
                Pair {
                    name: "a",
                    value: "1"
                },
                Pair {
                    name: "b",
                    value: "2"
                }
            ]
        );
    }

    #[test]
    fn batches_hold_other_events_but_do_not_nest() {
        let event = parse(json!({"batch": [
            {"mqtt": {"topic": "a", "payload": "1"}},
            {"schedule": {"schedule": "hourly"}}
        ]}));
        let Event::Batch(batch) = event.as_event() else {
            panic!()
        };
        assert_eq!(batch.count().unwrap(), 2);
        assert!(parse_err(json!({"batch": [{"batch": []}]})).contains("do not nest"));
    }

    #[test]
    fn mistakes_name_the_field() {
        assert!(parse_err(json!({"mqtt": {"payload": "x"}})).contains("mqtt.topic: is required"));
        assert!(
            parse_err(json!({"mqtt": {"topic": "a", "qos": 3}})).contains("qos must be 0, 1 or 2")
        );
        assert!(parse_err(json!({"mqtt": {"topic": "a", "topik": "b"}}))
            .contains("mqtt.topik: unknown field"));
        assert!(parse_err(json!({"mqqt": {}})).contains("unknown event kind"));
        assert!(parse_err(json!([])).contains("exactly one key"));
        assert!(parse_err(json!({"batch": [{"mqtt": {}}]})).contains("batch[0].mqtt.topic"));
    }

    #[test]
    fn mqtt_5_user_properties_reach_the_envelope_in_order() {
        let props = [
            ("msg-id".to_owned(), "a-1".to_owned()),
            ("source".to_owned(), "vm-1".to_owned()),
            ("msg-id".to_owned(), "a-2".to_owned()),
        ];
        let event = OwnedEvent::mqtt_with_properties("a/b", b"x".to_vec(), 1, false, &props);
        let Event::Mqtt(m) = event.as_event() else {
            panic!()
        };
        let got: Vec<Pair> = m.user_properties.iter().collect::<Result<_, _>>().unwrap();
        let want: Vec<Pair> = props
            .iter()
            .map(|(name, value)| Pair { name, value })
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            OwnedEvent::mqtt_with_properties("a/b", b"x".to_vec(), 1, false, &[]),
            OwnedEvent::mqtt("a/b", b"x".to_vec(), 1, false),
            "no properties encode like MQTT 3.1.1"
        );
    }

    #[test]
    fn kv_change_delete_carries_no_value() {
        let event = parse(json!({"kv_change": {"namespace": "n", "key": "k", "op": "delete"}}));
        let Event::KvChange(c) = event.as_event() else {
            panic!()
        };
        assert_eq!((c.op, c.value), (KvOp::Delete, None));
    }
}

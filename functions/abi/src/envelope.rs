//! The one message the host hands a guest per invocation.

use crate::seq::Seq;
use serde::{Deserialize, Serialize};

/// What `event_read` copies into the guest: who is being invoked and why.
///
/// Field order is the wire order (postcard encodes a struct as its fields in
/// sequence); new fields come only at the ends of structs, for guests that
/// declare the ABI revision knowing them (`wasmgate_abi_revision`, see the
/// ABI README's "Trigger kinds"), or with a new [`crate::ABI_VERSION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow)]
    pub context: Context<'a>,
    #[serde(borrow)]
    pub event: Event<'a>,
}

impl<'a> Envelope<'a> {
    /// Decodes an envelope, borrowing strings and payloads from `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Encodes into `buf`, returning the used prefix; for guests and tests
    /// without an allocator.
    pub fn encode_into<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], postcard::Error> {
        postcard::to_slice(self, buf)
    }

    #[cfg(feature = "alloc")]
    pub fn encode(&self) -> Result<alloc::vec::Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }
}

/// The invocation's context, like a Lambda context object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context<'a> {
    /// Unique per event (stable across retries of the same event).
    pub request_id: u64,
    /// The function's name as deployed.
    pub function: &'a str,
    /// The version being run: a prefix of the module's content hash.
    pub version: &'a str,
    /// 1 on the first try, 2 on the first retry, and so on.
    pub attempt: u32,
    /// Wall-clock deadline in Unix milliseconds; the host stops the function after it.
    pub deadline_ms: u64,
}

/// Why the function runs. One variant per trigger kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event<'a> {
    #[serde(borrow)]
    Mqtt(MqttMessage<'a>),
    #[serde(borrow)]
    Schedule(ScheduleTick<'a>),
    #[serde(borrow)]
    Http(HttpRequest<'a>),
    #[serde(borrow)]
    File(FileArrival<'a>),
    #[serde(borrow)]
    KvChange(KvChange<'a>),
    /// Sent by another function's `invoke`.
    #[serde(borrow)]
    Invoke(InvokeRequest<'a>),
    /// Several events delivered at once (a batching window); never nested.
    #[serde(borrow)]
    Batch(Seq<'a, Event<'a>>),
    /// A WebSocket connection opened, sent a message, or closed.
    #[serde(borrow)]
    WebSocket(WebSocketEvent<'a>),
}

impl Event<'_> {
    /// A short name for logs and errors.
    pub const fn kind(&self) -> &'static str {
        match self {
            Event::Mqtt(_) => "mqtt",
            Event::Schedule(_) => "schedule",
            Event::Http(_) => "http",
            Event::File(_) => "file",
            Event::KvChange(_) => "kv_change",
            Event::Invoke(_) => "invoke",
            Event::Batch(_) => "batch",
            Event::WebSocket(_) => "websocket",
        }
    }
}

/// Byte strings serialized as bytes rather than as sequences of `u8`: the
/// same postcard encoding (a length, then the bytes), written at once instead
/// of a byte at a time (2,500 instructions per vending message on the host).
/// Deserializing `&[u8]` already borrows the bytes whole.
mod as_bytes {
    use serde::{Serialize, Serializer};

    pub struct Bytes<'a>(pub &'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    pub fn serialize<S: Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn serialize_option<S: Serializer>(
        bytes: &Option<&[u8]>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(&Bytes(bytes)),
            None => serializer.serialize_none(),
        }
    }
}

/// A name/value pair: MQTT 5 user properties, HTTP headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// A message from the local broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttMessage<'a> {
    pub topic: &'a str,
    #[serde(serialize_with = "as_bytes::serialize")]
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 user properties; empty for MQTT 3.1.1.
    #[serde(borrow)]
    pub user_properties: Seq<'a, Pair<'a>>,
}

/// A tick of a cron or interval schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleTick<'a> {
    /// The schedule's name from the config.
    pub schedule: &'a str,
    /// When the tick was due, Unix milliseconds (it may run late after downtime).
    pub scheduled_ms: u64,
    /// When it was started, Unix milliseconds.
    pub fired_ms: u64,
    /// A tick missed while the gateway was down (or busy), run late now.
    pub catch_up: bool,
}

/// An HTTP request to the gateway's function endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Without the leading `?`; empty when there is none.
    pub query: &'a str,
    #[serde(borrow)]
    pub headers: Seq<'a, Pair<'a>>,
    #[serde(serialize_with = "as_bytes::serialize")]
    pub body: &'a [u8],
    /// The route's path parameters: `{machine}` in `GET /vending/{machine}/state`.
    #[serde(borrow)]
    pub params: Seq<'a, Pair<'a>>,
}

/// A file that appeared in a watched directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileArrival<'a> {
    pub path: &'a str,
    pub size: u64,
    pub modified_ms: u64,
    /// The file's bytes, up to the trigger's size limit (`size` tells if cut).
    #[serde(serialize_with = "as_bytes::serialize")]
    pub contents: &'a [u8],
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    Put,
    Delete,
}

/// A committed change to a watched KV namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvChange<'a> {
    pub namespace: &'a str,
    pub key: &'a str,
    pub op: KvOp,
    /// The new value for `Put`; `None` for `Delete`.
    #[serde(serialize_with = "as_bytes::serialize_option")]
    pub value: Option<&'a [u8]>,
    /// The value before: `None` when a `Put` made the key (an INSERT, where
    /// `Some` is a MODIFY). A `Delete` has the value it removed.
    #[serde(serialize_with = "as_bytes::serialize_option")]
    pub old: Option<&'a [u8]>,
}

/// What happened on a WebSocket connection: API Gateway's `$connect`,
/// `$default` and `$disconnect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebSocketKind {
    /// A client opened the connection; `respond` with a status of 400 or
    /// more refuses it (closed with 1008 and the body as the reason).
    Connect,
    /// The client sent a message.
    Message,
    /// The connection closed (the client, a limit, or the gateway).
    Disconnect,
}

/// An event of one WebSocket connection on a `websocket` route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebSocketEvent<'a> {
    /// The route, as configured (`/live`).
    pub route: &'a str,
    /// The connection's id, for `post_to_connection`; unguessable.
    pub connection_id: &'a str,
    pub kind: WebSocketKind,
    /// A message's bytes; for a disconnect, the close reason if any.
    #[serde(serialize_with = "as_bytes::serialize")]
    pub data: &'a [u8],
    /// A message sent as text (UTF-8) rather than binary.
    pub text: bool,
    /// On connect: the opening request's query string, without `?`.
    pub query: &'a str,
    /// On connect: the opening request's headers.
    #[serde(borrow)]
    pub headers: Seq<'a, Pair<'a>>,
}

/// An asynchronous invocation from another function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeRequest<'a> {
    /// The calling function's name.
    pub from: &'a str,
    #[serde(serialize_with = "as_bytes::serialize")]
    pub payload: &'a [u8],
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn context() -> Context<'static> {
        Context {
            request_id: 7,
            function: "vending",
            version: "3f2a9c1b",
            attempt: 1,
            deadline_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn byte_strings_keep_the_encoding_of_a_sequence_of_u8() {
        // Guests built before bytes were written whole decode these, and
        // the other way round: the wire must not change.
        let payload: &[u8] = &[0, 1, 2, 0xff, b'{'];
        let as_seq = postcard::to_allocvec(payload).unwrap();
        let whole = postcard::to_allocvec(&as_bytes::Bytes(payload)).unwrap();
        assert_eq!(whole, as_seq);
        let some = postcard::to_allocvec(&Some(payload)).unwrap();
        let change = KvChange {
            namespace: "n",
            key: "k",
            op: KvOp::Put,
            value: Some(payload),
            old: Some(payload),
        };
        let encoded = postcard::to_allocvec(&change).unwrap();
        assert!(encoded.ends_with(&some), "{encoded:?} ends with {some:?}");
    }

    #[test]
    fn mqtt_envelope_round_trips_with_user_properties() {
        let props = Seq::<Pair>::encode(&[Pair {
            name: "device-id",
            value: "vm-1",
        }])
        .unwrap();
        let env = Envelope {
            context: context(),
            event: Event::Mqtt(MqttMessage {
                topic: "vending/vm-1/telemetry",
                payload: b"{\"temp\":4.5}",
                qos: 1,
                retain: false,
                user_properties: Seq::from_encoded(&props),
            }),
        };
        let bytes = env.encode().unwrap();
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back, env);
        let Event::Mqtt(m) = back.event else {
            panic!("not mqtt")
        };
        let pairs: Vec<Pair> = m.user_properties.iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            pairs,
            [Pair {
                name: "device-id",
                value: "vm-1"
            }]
        );
    }

    #[test]
    fn batch_holds_events_of_any_kind_in_order() {
        let inner = [
            Event::Schedule(ScheduleTick {
                schedule: "hourly",
                scheduled_ms: 1,
                fired_ms: 2,
                catch_up: false,
            }),
            Event::Invoke(InvokeRequest {
                from: "a",
                payload: b"x",
            }),
        ];
        let encoded = Seq::<Event>::encode(&inner).unwrap();
        let env = Envelope {
            context: context(),
            event: Event::Batch(Seq::from_encoded(&encoded)),
        };
        let bytes = env.encode().unwrap();
        let Event::Batch(batch) = Envelope::decode(&bytes).unwrap().event else {
            panic!("not a batch")
        };
        let events: Vec<Event> = batch.iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(events, inner);
        assert_eq!(batch.count().unwrap(), 2);
    }

    #[test]
    fn truncated_envelope_is_an_error_not_a_panic() {
        let env = Envelope {
            context: context(),
            event: Event::Http(HttpRequest {
                method: "POST",
                path: "/hello",
                query: "",
                headers: Seq::empty(),
                body: b"hi",
                params: Seq::empty(),
            }),
        };
        let bytes = env.encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(Envelope::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn readme_example_encodes_to_the_documented_bytes() {
        let env = Envelope {
            context: Context {
                request_id: 5,
                function: "f",
                version: "v1",
                attempt: 1,
                deadline_ms: 1000,
            },
            event: Event::Mqtt(MqttMessage {
                topic: "a/b",
                payload: b"hi",
                qos: 1,
                retain: false,
                user_properties: Seq::empty(),
            }),
        };
        let expected = [
            0x05, 0x01, 0x66, 0x02, 0x76, 0x31, 0x01, 0xe8, 0x07, // context
            0x00, // Event::Mqtt
            0x03, 0x61, 0x2f, 0x62, 0x02, 0x68, 0x69, 0x01, 0x00, // topic..retain
            0x00, // no user properties
        ];
        assert_eq!(env.encode().unwrap(), expected);
    }

    #[test]
    fn envelope_encodes_without_an_allocator() {
        let env = Envelope {
            context: context(),
            event: Event::KvChange(KvChange {
                namespace: "vending",
                key: "total",
                op: KvOp::Delete,
                value: None,
                old: None,
            }),
        };
        let mut buf = [0u8; 128];
        let used = env.encode_into(&mut buf).unwrap().len();
        assert_eq!(Envelope::decode(&buf[..used]).unwrap(), env);
    }
}

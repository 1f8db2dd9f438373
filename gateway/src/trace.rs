//! W3C trace context and the spans the gateway reports over OTLP.
//!
//! A device (or an HTTP client) that sends `traceparent` (an MQTT 5 user
//! property, or an HTTP header) gets each invocation of its event as a
//! child span; what the invocation sends on (its emits, as an MQTT 5 user
//! property, its fan-out invokes, its HTTP response) carries that span as
//! the next parent, so one device message can be followed to the cloud.
//! An event without one starts a trace.
//!
//! Spans are encoded here as OTLP protobuf `Span` messages, by hand: the
//! few messages OTLP/HTTP needs are a page of code, where `prost` and the
//! generated OpenTelemetry types would cost a build script and a few
//! hundred KB. The field numbers are those of
//! `opentelemetry/proto/trace/v1/trace.proto`; tests/tracing.rs decodes
//! what this writes with the classes generated from those definitions.

use crate::event::OwnedEvent;
use wasmgate_abi::{Pair, Seq};

/// A span's place in a trace, as `traceparent` and `tracestate` carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// Vendors' `tracestate`, passed on as it came.
    pub state: Option<String>,
}

/// `tracestate` longer than this is dropped, as W3C allows (512 is what it
/// asks implementations to propagate at least).
const MAX_STATE: usize = 512;

impl TraceContext {
    /// Reads a `traceparent` header (W3C Trace Context level 1). A value
    /// that is not one is ignored, and the event starts a trace of its own,
    /// as the recommendation says: never fail an event for its header.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let s = traceparent.trim();
        let mut parts = s.splitn(4, '-');
        let (version, trace, span, rest) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || !is_hex(version) {
            return None;
        }
        // Version 00 is exactly four fields; a later version may add more
        // after the flags, which a version-00 reader skips.
        let flags = if version == "00" {
            rest
        } else {
            rest.split('-').next()?
        };
        if version == "00" && s.len() != 55 {
            return None;
        }
        let trace_id: [u8; 16] = hex_bytes(trace)?;
        let span_id: [u8; 8] = hex_bytes(span)?;
        let [flags]: [u8; 1] = hex_bytes(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let state = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_STATE && !s.contains('\n'))
            .map(str::to_owned);
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
            state,
        })
    }

    /// The context an event brought: its MQTT 5 user properties, or its
    /// HTTP headers (names in any case).
    pub fn from_event(event: &OwnedEvent) -> Option<Self> {
        let pairs = match event {
            OwnedEvent::Mqtt {
                user_properties, ..
            } => user_properties,
            OwnedEvent::Http { headers, .. } => headers,
            OwnedEvent::WebSocket { headers, .. } => headers,
            _ => return None,
        };
        let pairs: Seq<'_, Pair<'_>> = Seq::from_encoded(pairs);
        let (mut parent, mut state) = (None, None);
        for pair in pairs.iter().flatten() {
            if pair.name.eq_ignore_ascii_case("traceparent") {
                parent.get_or_insert(pair.value);
            } else if pair.name.eq_ignore_ascii_case("tracestate") {
                state.get_or_insert(pair.value);
            }
        }
        TraceContext::parse(parent?, state)
    }

    /// A new trace, sampled.
    pub fn root() -> Self {
        TraceContext {
            trace_id: random_id(),
            span_id: random_id(),
            sampled: true,
            state: None,
        }
    }

    /// A child of this span: same trace, state and sampling, a new id.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: random_id(),
            ..self.clone()
        }
    }

    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// As the outbox keeps it with an emit or invoke: `traceparent`, then
    /// `tracestate` on a line of its own.
    pub fn stored(&self) -> String {
        match &self.state {
            Some(state) => format!("{}\n{state}", self.traceparent()),
            None => self.traceparent(),
        }
    }

    pub fn from_stored(text: &str) -> Option<Self> {
        let (parent, state) = match text.split_once('\n') {
            Some((parent, state)) => (parent, Some(state)),
            None => (text, None),
        };
        TraceContext::parse(parent, state)
    }

    /// The MQTT 5 user properties that carry it.
    pub fn properties(&self) -> Vec<(String, String)> {
        let mut properties = vec![("traceparent".to_owned(), self.traceparent())];
        if let Some(state) = &self.state {
            properties.push(("tracestate".to_owned(), state.clone()));
        }
        properties
    }
}

/// An id that is not all zeros (which W3C reserves for "none"), from a
/// per-thread generator seeded once from the OS. Ids need to be unique and
/// unguessable enough to spread over a collector's shards, not secret (they
/// travel in clear headers): a `getrandom` system call per span cost more
/// than the rest of the span's id work.
fn random_id<const N: usize>() -> [u8; N] {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    let mut id = [0u8; N];
    while id == [0u8; N] {
        STATE.with(|state| {
            for chunk in id.chunks_mut(8) {
                let (next, word) = splitmix64(state.get());
                state.set(next);
                chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
            }
        });
    }
    id
}

/// SplitMix64 (Steele, Lea and Flood): the next state, and its output.
fn splitmix64(state: u64) -> (u64, u64) {
    let next = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (next, z ^ (z >> 31))
}

/// A thread's starting state: the OS's randomness, or (with no entropy
/// source, never seen on Linux) the time and a counter, which still keep
/// ids unique on this gateway.
fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1 << 40, Ordering::Relaxed) ^ unix_nanos()
}

pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex only, as W3C requires.
fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !is_hex(s) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// OTLP's `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Consumer = 5,
}

impl SpanKind {
    /// What kind of span an invocation of this event is: a request
    /// answered (HTTP), a message consumed, or the gateway's own (a
    /// schedule, a file).
    pub fn of(event: &OwnedEvent) -> SpanKind {
        match event {
            OwnedEvent::Http { .. } | OwnedEvent::WebSocket { .. } => SpanKind::Server,
            OwnedEvent::Mqtt { .. } | OwnedEvent::Invoke { .. } | OwnedEvent::Batch(_) => {
                SpanKind::Consumer
            }
            _ => SpanKind::Internal,
        }
    }
}

/// An attribute's value, borrowed: a span is encoded as it ends, from
/// what the invocation already holds, with no copies of its strings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
}

/// One invocation's span, finished.
#[derive(Debug, Clone)]
pub struct Span<'a> {
    pub context: &'a TraceContext,
    pub parent: Option<[u8; 8]>,
    pub name: &'a str,
    pub kind: SpanKind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: &'a [(&'static str, Value<'a>)],
    /// Why it failed; `None`: it succeeded.
    pub error: Option<String>,
}

impl Span<'_> {
    /// Its OTLP `Span` message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(192);
        bytes(&mut out, 1, &self.context.trace_id);
        bytes(&mut out, 2, &self.context.span_id);
        if let Some(state) = &self.context.state {
            bytes(&mut out, 3, state.as_bytes());
        }
        if let Some(parent) = &self.parent {
            bytes(&mut out, 4, parent);
        }
        bytes(&mut out, 5, self.name.as_bytes());
        varint_field(&mut out, 6, self.kind as u64);
        fixed64(&mut out, 7, self.start_ns);
        fixed64(&mut out, 8, self.end_ns);
        for (key, value) in self.attributes {
            key_value(&mut out, 9, key, value);
        }
        // Status { message = 2, code = 3 }.
        match &self.error {
            Some(message) => {
                let len = 1 + varint_len(message.len() as u64) + message.len() + 2;
                varint(&mut out, 15 << 3 | 2);
                varint(&mut out, len as u64);
                bytes(&mut out, 2, message.as_bytes());
                varint_field(&mut out, 3, 2); // STATUS_CODE_ERROR
            }
            None => {
                varint(&mut out, 15 << 3 | 2);
                varint(&mut out, 2);
                varint_field(&mut out, 3, 1); // STATUS_CODE_OK
            }
        }
        // flags (fixed32): the W3C trace flags in the low byte. Field 16's
        // tag is two bytes of varint.
        varint(&mut out, 16 << 3 | 5);
        out.extend_from_slice(&u32::from(self.context.sampled).to_le_bytes());
        out
    }
}

/// Appends an encoded `Span` as a `ScopeSpans.spans` field (2): how the
/// store keeps spans, so that a batch is sent as it was kept.
pub fn frame_span(out: &mut Vec<u8>, span: &[u8]) {
    bytes(out, 2, span);
}

/// An OTLP `ExportTraceServiceRequest` holding spans framed by
/// [`frame_span`], as one resource (this gateway: string attributes) and
/// one instrumentation scope.
pub fn export_request(resource: &[(&'static str, String)], framed: &[u8]) -> Vec<u8> {
    let mut resource_msg = Vec::new();
    for (key, value) in resource {
        key_value(&mut resource_msg, 1, key, &Value::Str(value));
    }
    let mut scope = Vec::new();
    bytes(&mut scope, 1, b"wasmgate");
    bytes(&mut scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
    let mut scope_spans = Vec::with_capacity(scope.len() + framed.len() + 8);
    bytes(&mut scope_spans, 1, &scope);
    scope_spans.extend_from_slice(framed);
    let mut resource_spans = Vec::new();
    bytes(&mut resource_spans, 1, &resource_msg);
    bytes(&mut resource_spans, 2, &scope_spans);
    let mut request = Vec::with_capacity(resource_spans.len() + 8);
    bytes(&mut request, 1, &resource_spans);
    request
}

/// OTLP's `KeyValue { key, value: AnyValue }` as field `field` of `out`,
/// written in place: the nested lengths are known before the bytes.
fn key_value(out: &mut Vec<u8>, field: u64, key: &str, value: &Value) {
    let any_len = match value {
        Value::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
        Value::Int(n) => 1 + varint_len(*n as u64),
    };
    let kv_len =
        1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any_len as u64) + any_len;
    varint(out, field << 3 | 2);
    varint(out, kv_len as u64);
    bytes(out, 1, key.as_bytes());
    varint(out, 2 << 3 | 2);
    varint(out, any_len as u64);
    match value {
        Value::Str(s) => bytes(out, 1, s.as_bytes()),
        Value::Int(n) => varint_field(out, 3, *n as u64),
    }
}

/// The bytes `varint` writes for `n`.
fn varint_len(n: u64) -> usize {
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u64, n: u64) {
    varint(out, field << 3);
    varint(out, n);
}

fn fixed64(out: &mut Vec<u8>, field: u64, n: u64) {
    varint(out, field << 3 | 1);
    out.extend_from_slice(&n.to_le_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_w3c_traceparent_is_read_and_written_back() {
        let c = TraceContext::parse(PARENT, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(c.sampled);
        assert_eq!(c.traceparent(), PARENT);
        assert_eq!(TraceContext::from_stored(&c.stored()), Some(c.clone()));
        let child = c.child();
        assert_eq!(child.trace_id, c.trace_id);
        assert_ne!(child.span_id, c.span_id);
        assert_eq!(child.state.as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn new_ids_are_never_zero_and_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let root = TraceContext::root();
            assert_ne!(root.trace_id, [0; 16]);
            assert_ne!(root.span_id, [0; 8]);
            // The two halves of a trace id are not one word twice.
            assert_ne!(root.trace_id[..8], root.trace_id[8..]);
            assert!(seen.insert(root.span_id));
        }
        // Another thread starts from a seed of its own.
        let there = std::thread::spawn(|| TraceContext::root().trace_id)
            .join()
            .unwrap();
        assert_ne!(there, TraceContext::root().trace_id);
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn what_is_not_a_traceparent_is_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad}");
        }
        // A later version may add fields after the flags.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-next";
        assert!(!TraceContext::parse(later, None).unwrap().sampled);
    }

    #[test]
    fn an_event_brings_its_context_in_a_user_property_or_a_header() {
        let mqtt = OwnedEvent::mqtt_with_properties(
            "t",
            Vec::new(),
            1,
            false,
            &[("traceparent".to_owned(), PARENT.to_owned())],
        );
        assert_eq!(
            TraceContext::from_event(&mqtt).map(|c| c.traceparent()),
            Some(PARENT.to_owned())
        );
        assert_eq!(
            TraceContext::from_event(&OwnedEvent::mqtt("t", b"x".to_vec(), 1, false)),
            None
        );
    }

    #[test]
    fn a_varints_length_is_known_before_it_is_written() {
        for n in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, n);
            assert_eq!(varint_len(n), out.len(), "{n}");
        }
    }

    #[test]
    fn spans_encode_as_protobuf() {
        let span = Span {
            context: &TraceContext::parse(PARENT, None).unwrap(),
            parent: None,
            name: "f",
            kind: SpanKind::Consumer,
            start_ns: 1,
            end_ns: 2,
            attributes: &[("n", Value::Int(300))],
            error: None,
        };
        let encoded = span.encode();
        // trace_id: field 1, length-delimited, 16 bytes.
        assert_eq!(&encoded[..2], &[0x0a, 16]);
        // The attribute's int 300 as a varint: ac 02.
        assert!(encoded.windows(3).any(|w| w == [0x18, 0xac, 0x02]));
        let mut framed = Vec::new();
        frame_span(&mut framed, &encoded);
        let request = export_request(&[("service.name", "g".to_owned())], &framed);
        assert_eq!(request[0], 0x0a);
    }
}

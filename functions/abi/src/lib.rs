//! The contract between the wasmgate host and a guest function.
//!
//! Everything a function author in any language needs is in `README.md` beside
//! this crate; this crate is the same contract as Rust types so that the host
//! and the Rust SDK cannot drift apart. It is `no_std` and allocation-free for
//! guests: decoding borrows from the event buffer the guest owns.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;

mod envelope;
mod seq;

pub use envelope::{
    Context, Envelope, Event, FileArrival, HttpRequest, InvokeRequest, KvChange, KvOp, MqttMessage,
    Pair, ScheduleTick, WebSocketEvent, WebSocketKind,
};
pub use seq::{Seq, SeqIter};

/// Bumped on any incompatible change to imports, exports or the envelope.
/// The host refuses a module whose `wasmgate_abi_version` export differs.
pub const ABI_VERSION: u32 = 1;

/// Compatible revisions within [`ABI_VERSION`], reported by a guest's
/// optional `wasmgate_abi_revision` export (a guest without it is revision
/// 0). Revision 1: the fields added at the end of `ScheduleTick`
/// (`fired_ms`, `catch_up`), `HttpRequest` (`params`) and `KvChange`
/// (`old`), and `WebSocketEvent`. A single event decodes under any
/// revision (postcard ignores what follows a struct); inside a `Batch` the
/// items lie back to back, so the host batches a kind whose struct grew
/// only for a guest of the revision that has it.
pub const ABI_REVISION: u32 = 1;

/// The module name all host functions are imported from.
pub const IMPORT_MODULE: &str = "wasmgate";

/// Names of the functions a guest exports.
pub mod exports {
    /// `() -> i32`: the ABI version the guest was built against.
    pub const ABI_VERSION: &str = "wasmgate_abi_version";
    /// `(event_len: i32) -> i32`: handle one event; `0` is success.
    pub const HANDLE: &str = "wasmgate_handle";
    /// Optional, `() -> i32`: the [`crate::ABI_REVISION`] the guest knows.
    pub const ABI_REVISION: &str = "wasmgate_abi_revision";
    /// The guest's linear memory, through which all data passes.
    pub const MEMORY: &str = "memory";
}

/// Names of the host functions a guest may import from [`IMPORT_MODULE`].
/// The signatures are documented in `README.md`; a guest imports only what it uses.
pub mod imports {
    /// `(dst: i32, cap: i32) -> i32`
    pub const EVENT_READ: &str = "event_read";
    /// `(topic: i32, topic_len: i32, payload: i32, payload_len: i32, flags: i32) -> i32`
    pub const EMIT: &str = "emit";
    /// `(key: i32, key_len: i32, dst: i32, cap: i32) -> i32`
    pub const KV_GET: &str = "kv_get";
    /// `(key: i32, key_len: i32, value: i32, value_len: i32) -> i32`
    pub const KV_PUT: &str = "kv_put";
    /// `(key: i32, key_len: i32) -> i32`
    pub const KV_DELETE: &str = "kv_delete";
    /// `(key: i32, key_len: i32, delta: i64, dst: i32) -> i32`
    pub const KV_INCREMENT: &str = "kv_increment";
    /// `(level: i32, msg: i32, msg_len: i32)`
    pub const LOG: &str = "log";
    /// `() -> i64`
    pub const NOW_MS: &str = "now_ms";
    /// `(key: i32, key_len: i32, dst: i32, cap: i32) -> i32`
    pub const CONFIG_GET: &str = "config_get";
    /// A secret of the function's, by name, if its grants name it.
    pub const SECRET_GET: &str = "secret_get";
    /// `(function: i32, function_len: i32, payload: i32, payload_len: i32) -> i32`
    pub const INVOKE: &str = "invoke";
    /// `(status: i32, body: i32, body_len: i32) -> i32`
    pub const RESPOND: &str = "respond";
    /// `(name: i32, name_len: i32, value: i32, value_len: i32) -> i32`
    pub const RESPOND_HEADER: &str = "respond_header";
    /// `(index: i32) -> i32`: an item of a batch failed (only it is retried).
    pub const ITEM_FAILED: &str = "item_failed";
    /// `(connection: i32, connection_len: i32, data: i32, data_len: i32) -> i32`
    pub const POST_TO_CONNECTION: &str = "post_to_connection";
    /// `(name: i32, name_len: i32, kind: i32, value: f64) -> i32`: a custom
    /// metric ([`crate::MetricKind`]); `name` may carry labels,
    /// `dispensed{slot="a3"}`.
    pub const METRIC: &str = "metric";

    /// Every import name, for hosts that want to reject unknown imports by name.
    pub const ALL: [&str; 16] = [
        EVENT_READ,
        EMIT,
        KV_GET,
        KV_PUT,
        KV_DELETE,
        KV_INCREMENT,
        LOG,
        NOW_MS,
        CONFIG_GET,
        SECRET_GET,
        INVOKE,
        RESPOND,
        RESPOND_HEADER,
        ITEM_FAILED,
        POST_TO_CONNECTION,
        METRIC,
    ];
}

/// What a `metric` call does with its value.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Adds the value (0 or more) to a running total.
    Counter = 0,
    /// Sets the value.
    Gauge = 1,
    /// Records the value in a histogram (its buckets: 1, 2.5, 5 times each
    /// power of ten from 0.001 to 10,000).
    Histogram = 2,
}

impl MetricKind {
    pub const fn code(self) -> i32 {
        self as i32
    }

    pub const fn from_code(code: i32) -> Option<MetricKind> {
        Some(match code {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => return None,
        })
    }
}

/// What a host call returns when it did not succeed, as a negative `i32`.
///
/// These are conditions a function can reasonably handle. Breaking the contract
/// (a pointer outside memory, output over a limit) is not reported this way: it
/// ends the invocation, and nothing the invocation did is kept.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    /// The key (KV or config) does not exist.
    NotFound = -1,
    /// An argument is malformed: bad UTF-8, an empty key, a topic with `+`/`#`, bad flags.
    InvalidArgument = -2,
    /// The function's manifest does not grant this topic, namespace or function.
    Denied = -3,
    /// `kv_increment` on a value that is not an 8-byte little-endian integer.
    NotANumber = -4,
    /// The host cannot do this right now (for example the feature is off in this build).
    Unavailable = -5,
}

impl Status {
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// Maps a host call's negative return value back to a status.
    pub const fn from_code(code: i32) -> Option<Status> {
        Some(match code {
            0 => Status::Ok,
            -1 => Status::NotFound,
            -2 => Status::InvalidArgument,
            -3 => Status::Denied,
            -4 => Status::NotANumber,
            -5 => Status::Unavailable,
            _ => return None,
        })
    }
}

/// `log` levels, most severe first (as in `tracing` and syslog).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
    Trace = 4,
}

impl LogLevel {
    pub const fn code(self) -> i32 {
        self as i32
    }

    pub const fn from_code(code: i32) -> Option<LogLevel> {
        Some(match code {
            0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            3 => LogLevel::Debug,
            4 => LogLevel::Trace,
            _ => return None,
        })
    }
}

/// Where an emitted message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The gateway's local broker, where devices and other functions listen.
    Local,
    /// The cloud broker, through the durable outbox.
    Upstream,
}

/// The `flags` argument of `emit`, packed into one `i32` so that a C author
/// passes a plain integer: bits 0-1 QoS, bit 2 retain, bit 3 upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmitOptions {
    pub qos: u8,
    pub retain: bool,
    pub destination: Destination,
}

impl Default for EmitOptions {
    /// QoS 1 to the local broker: the only default that cannot lose a message.
    fn default() -> Self {
        EmitOptions {
            qos: 1,
            retain: false,
            destination: Destination::Local,
        }
    }
}

impl EmitOptions {
    const QOS_MASK: i32 = 0b11;
    const RETAIN: i32 = 1 << 2;
    const UPSTREAM: i32 = 1 << 3;
    const KNOWN: i32 = Self::QOS_MASK | Self::RETAIN | Self::UPSTREAM;

    pub const fn upstream() -> Self {
        EmitOptions {
            qos: 1,
            retain: false,
            destination: Destination::Upstream,
        }
    }

    pub const fn to_flags(self) -> i32 {
        let mut flags = (self.qos as i32) & Self::QOS_MASK;
        if self.retain {
            flags |= Self::RETAIN;
        }
        if let Destination::Upstream = self.destination {
            flags |= Self::UPSTREAM;
        }
        flags
    }

    /// `None` for unknown bits or QoS 3, so that a future flag is refused
    /// rather than silently ignored.
    pub const fn from_flags(flags: i32) -> Option<Self> {
        if flags & !Self::KNOWN != 0 || flags & Self::QOS_MASK == 3 {
            return None;
        }
        Some(EmitOptions {
            qos: (flags & Self::QOS_MASK) as u8,
            retain: flags & Self::RETAIN != 0,
            destination: if flags & Self::UPSTREAM != 0 {
                Destination::Upstream
            } else {
                Destination::Local
            },
        })
    }
}

/// Whether `topic` may be published to: MQTT forbids wildcards in a topic
/// name, and `$`-topics belong to the broker.
pub fn is_valid_publish_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 65_535
        && !topic.starts_with('$')
        && !topic.contains(['+', '#', '\0'])
}

/// The most headers a function may answer with (`respond_header`).
pub const MAX_RESPONSE_HEADERS: usize = 32;

/// Whether `respond_header` takes this header: a token name, a value
/// without control characters, and not one the host sets itself (the
/// length, the request id) or that would change the connection's framing.
/// One rule for the host and for the SDK's fake host.
pub fn valid_response_header(name: &str, value: &str) -> bool {
    const RESERVED: [&str; 6] = [
        "content-length",
        "transfer-encoding",
        "connection",
        "x-request-id",
        "upgrade",
        "keep-alive",
    ];
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let printable = value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80);
    token && printable && !RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_flags_round_trip_for_every_valid_combination() {
        for qos in 0..=2 {
            for retain in [false, true] {
                for destination in [Destination::Local, Destination::Upstream] {
                    let options = EmitOptions {
                        qos,
                        retain,
                        destination,
                    };
                    assert_eq!(EmitOptions::from_flags(options.to_flags()), Some(options));
                }
            }
        }
    }

    #[test]
    fn unknown_emit_flags_are_refused() {
        assert_eq!(EmitOptions::from_flags(3), None, "QoS 3 does not exist");
        assert_eq!(EmitOptions::from_flags(1 << 4), None);
        assert_eq!(EmitOptions::from_flags(-1), None);
    }

    #[test]
    fn status_codes_round_trip() {
        for status in [
            Status::Ok,
            Status::NotFound,
            Status::InvalidArgument,
            Status::Denied,
            Status::NotANumber,
            Status::Unavailable,
        ] {
            assert_eq!(Status::from_code(status.code()), Some(status));
        }
        assert_eq!(Status::from_code(-99), None);
    }

    #[test]
    fn wildcards_and_system_topics_cannot_be_published_to() {
        assert!(is_valid_publish_topic("vending/42/alert"));
        for bad in ["", "a/+/b", "a/#", "$SYS/broker", "a\0b"] {
            assert!(!is_valid_publish_topic(bad), "{bad:?}");
        }
    }
}

//! Gateway configuration (TOML): parse, then validate, reporting every problem.
//!
//! [`Config::parse`] turns text into the plain structs below (syntax and
//! schema errors: unknown fields, wrong types); [`Config::validate`] checks
//! what serde cannot (names, topic filters, ranges, references between
//! functions, broker modes). Both report every problem they find, each with
//! the file, line and field it concerns; [`Config::from_toml_str`] and
//! [`Config::load`] do both. [`Config::check_files`] is separate because it
//! touches the file system: `wasmgate config check` runs it, tests need not.
//!
//! The structs carry no spans so the rest of the gateway reads them plainly;
//! lines are found again from the text when an error is reported (see
//! `locate.rs`).

mod error;
mod locate;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue, Deserializer, ValueDeserializer};
use toml::Spanned;

pub use error::{ConfigError, ConfigErrorKind, ConfigErrors, FieldPath, PathSegment};
pub use validate::{MAX_KV_VALUE_BYTES, MAX_MQTT_PAYLOAD};

use crate::router::{FunctionId, Router};
use crate::runtime::FailureKind;
use crate::store::{Synchronous, WhenFull};
use locate::SourceMap;

/// Default [`Config::gateway_id`].
pub const DEFAULT_GATEWAY_ID: &str = "wasmgate";
/// Default [`Config::data_dir`].
pub const DEFAULT_DATA_DIR: &str = "./wasmgate-data";
/// Default [`BrokerConfig::listen`] of the embedded broker.
/// Loopback: a gateway's broker takes devices from the network only when
/// told to, and then with passwords (or `allow_anonymous`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1883";
/// Default [`TlsListenerConfig::listen`]; loopback, as above.
pub const DEFAULT_TLS_LISTEN: &str = "127.0.0.1:8883";
/// Largest MQTT payload the embedded broker accepts. Above the 1 MB a camera
/// still or firmware chunk may need; functions refuse what they cannot
/// handle. (Here, not in `broker`, so that validation needs no broker.)
pub const EMBEDDED_MAX_PAYLOAD_BYTES: usize = 2 << 20;

/// The largest message the embedded broker takes, topic included, as an
/// emit's payload limit must respect: the payload limit less room for a
/// topic (MQTT allows 65,535 bytes) and the fixed header.
pub const EMBEDDED_MAX_EMIT_BYTES: usize = EMBEDDED_MAX_PAYLOAD_BYTES - 65_535 - 16;

/// MQTT's port without TLS.
pub const MQTT_PORT: u16 = 1883;
/// MQTT's port with TLS.
pub const MQTTS_PORT: u16 = 8883;
/// Largest [`Limits::memory_mb`]: a 32-bit Wasm memory is at most 4 GiB.
pub const MAX_MEMORY_MB: u32 = 4096;
/// Bytes in a Wasm page.
pub const WASM_PAGE_BYTES: u64 = 64 * 1024;

fn default_gateway_id() -> String {
    DEFAULT_GATEWAY_ID.to_owned()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}
const fn default_qos() -> u8 {
    1
}
const fn default_fuel() -> u64 {
    50_000_000
}
const fn default_memory_mb() -> u32 {
    16
}
const fn default_timeout_ms() -> u64 {
    1000
}
const fn default_concurrency() -> u32 {
    1
}
const fn default_warm_instances() -> u32 {
    2
}
const fn default_queue() -> u32 {
    1024
}
const fn default_max_emits() -> u32 {
    100
}
const fn default_max_emit_bytes() -> u32 {
    256 * 1024
}
const fn default_max_kv_value_bytes() -> u32 {
    64 * 1024
}
fn default_local_grants() -> Vec<String> {
    // `#` does not match `$` topics (MQTT §4.7.2), so `$SYS/...` stays out of reach.
    vec!["#".to_owned()]
}

/// The whole gateway configuration: one TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this gateway: part of its default MQTT client ids and of its logs.
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`. Default `"wasmgate"`.
    #[serde(default = "default_gateway_id")]
    pub gateway_id: String,
    /// Directory of the gateway's SQLite state (function KV, outbox). A
    /// relative path is resolved against the config file's directory by
    /// [`Config::load`]. Default `"./wasmgate-data"`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The local broker that devices publish to.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// The cloud broker that functions with `grants.upstream` emit to; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamConfig>,
    /// How the SQLite state is written.
    #[serde(default)]
    pub store: StoreConfig,
    /// The HTTP listener that `http` triggers' routes are served on.
    #[serde(default)]
    pub http: HttpConfig,
    /// The management API beyond its unix socket: a TCP listener.
    #[serde(default)]
    pub api: ApiConfig,
    /// `/metrics` on an address of its own, for a Prometheus scraper.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Functions' log lines: how many are kept, how fast each may write.
    #[serde(default)]
    pub logs: LogsConfig,
    /// Spans of invocations, exported over OTLP; off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
    /// Signed bundles (`wasmgate bundle`): whose signatures a deploy of
    /// one is checked against.
    #[serde(default)]
    pub bundles: BundlesConfig,
    /// Deployments from the cloud: AWS IoT Jobs on the upstream link.
    #[serde(default)]
    pub fleet: FleetConfig,
    /// The functions this gateway runs; a function's index here is its
    /// [`FunctionId`] in [`Config::router`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionConfig>,
    /// Where the config came from, to locate errors; not part of its value.
    #[serde(skip)]
    origin: Origin,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gateway_id: default_gateway_id(),
            data_dir: default_data_dir(),
            broker: BrokerConfig::default(),
            upstream: None,
            store: StoreConfig::default(),
            http: HttpConfig::default(),
            api: ApiConfig::default(),
            metrics: MetricsConfig::default(),
            logs: LogsConfig::default(),
            tracing: None,
            bundles: BundlesConfig::default(),
            fleet: FleetConfig::default(),
            functions: Vec::new(),
            origin: Origin::default(),
        }
    }
}

/// The API gateway on the gateway: where `http` triggers are served. It
/// listens only when some function has an `http` trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The `ip:port` to listen on. Default `"127.0.0.1:8080"` (this machine
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The largest request body taken, 0 to 16 MiB; a larger one gets 413.
    /// Default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u32>,
    /// Serve HTTPS: `tls = { cert = "...", key = "..." }`, and with
    /// `client_ca` clients must present a certificate that CA signed
    /// (mutual TLS, for a maintenance tablet). None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HttpTlsConfig>,
}

/// The management API (deploys, aliases, apply, KV, dead letters) is
/// always on the unix socket `data_dir/control.sock` (mode 0600). This
/// adds a TCP listener, for tools on other machines: every request must
/// carry `Authorization: Bearer <token>`, the token read from a file (never
/// written in the config itself); a request without it gets 401 and is
/// logged. Plain HTTP: listen on loopback or a VPN address, or put a TLS
/// proxy in front.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The `ip:port` to listen on; none by default (the socket only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The file holding the bearer token (its first line, at least 16
    /// characters); required with `listen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl ApiConfig {
    /// The bearer token: the file's first line, trimmed.
    pub fn read_token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = crate::files::read_text(path, 4096, "token file")
            .map_err(|e| format!("api.token_file {}: {e}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        if token.len() < MIN_API_TOKEN {
            return Err(format!(
                "api.token_file {}: the token (its first line) must be at least {MIN_API_TOKEN} characters; `head -c 24 /dev/urandom | base64 > {}` makes one",
                path.display(),
                path.display()
            ));
        }
        Ok(Some(token))
    }
}

/// `/metrics` is always on the management API (the socket, and TCP with
/// the token). This serves it, and nothing else, on an address of its own
/// with no token, as Prometheus exporters are: listen on loopback or the
/// network the scraper is on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The `ip:port` to serve `/metrics` on; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// Signed bundles: a deploy of one is taken only if a key here signed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlesConfig {
    /// Public keys, `"ed25519:<64 hex digits>"` as `wasmgate bundle keygen`
    /// writes them in its `.pub` file. None by default: every bundle is
    /// refused (bare modules still deploy over the management socket).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
}

/// Fleet deployments: the gateway as an AWS IoT Jobs device (`fleet.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Take jobs from the AWS IoT Jobs MQTT API on the upstream broker (the
    /// local one without `[upstream]`): `$aws/things/<thing>/jobs/...`.
    /// Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jobs: bool,
    /// The thing name the jobs are for; the gateway_id by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thing_name: Option<String>,
}

impl FleetConfig {
    /// The thing name jobs are addressed to.
    pub fn thing<'a>(&'a self, gateway_id: &'a str) -> &'a str {
        self.thing_name.as_deref().unwrap_or(gateway_id)
    }
}

/// Functions' log lines (the `log` host call) go to the gateway's own log
/// (the journal) and to a ring in its database that `wasmgate logs` and
/// the dashboard read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    /// Lines kept in the ring, the newest, for all functions together;
    /// 0 keeps none. Default 10,000 (a couple of MB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// Lines a second each function may write, in bursts of up to a
    /// second's worth; the rest are dropped and counted
    /// (`wasmgate_function_log_lines_dropped`). 0: no limit. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

/// Default [`LogsConfig::rate`].
pub const DEFAULT_LOG_RATE: u32 = 100;

impl LogsConfig {
    pub fn keep(&self) -> u32 {
        self.keep.unwrap_or(crate::store::DEFAULT_LOG_KEEP)
    }

    pub fn rate(&self) -> u32 {
        self.rate.unwrap_or(DEFAULT_LOG_RATE)
    }
}

/// Trace context and spans (`[tracing]`): with it, every invocation is a
/// span, a child of the `traceparent` its event brought (MQTT 5 user
/// property, HTTP header) or the root of a trace, and what it sends on
/// carries it. Spans wait in the database until the collector takes them,
/// so traces survive a link or collector outage, and a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces endpoint, in full:
    /// `"http://collector:4318/v1/traces"` (protobuf encoding).
    pub endpoint: String,
    /// The `service.name` the spans are reported under. Default
    /// `"wasmgate"`; the gateway id goes in `service.instance.id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Spans kept while the collector cannot be reached, the newest; the
    /// oldest beyond are dropped and counted. Default 100,000 (about 20 MB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// For an `https://` endpoint: the CA to trust (the system's roots by
    /// default) and a client certificate, as for `[upstream.tls]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// Default [`TracingConfig::keep`].
pub const DEFAULT_SPANS_KEPT: u32 = 100_000;

impl TracingConfig {
    pub fn keep(&self) -> u32 {
        self.keep.unwrap_or(DEFAULT_SPANS_KEPT)
    }

    pub fn service_name(&self) -> &str {
        self.service_name.as_deref().unwrap_or("wasmgate")
    }
}

/// The shortest bearer token taken.
pub const MIN_API_TOKEN: usize = 16;

/// The HTTP listener's certificate, and the CA of its clients' if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// PEM certificate (chain) clients check the gateway against.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA(s) that sign client certificates: with it, a client without
    /// one of theirs is refused in the handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// Default [`HttpConfig::listen`].
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// Default [`HttpConfig::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: u32 = 1 << 20;

impl HttpConfig {
    /// `listen`, or the default; `None` if unparsable (validation says so).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen
            .as_deref()
            .unwrap_or(DEFAULT_HTTP_LISTEN)
            .parse()
            .ok()
    }

    pub fn max_body(&self) -> usize {
        self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES) as usize
    }
}

/// How the gateway writes its SQLite state (`data_dir/wasmgate.db`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `"full"` (default): every commit is fsynced before its messages are
    /// acknowledged, so nothing acknowledged is lost even on power loss.
    /// `"normal"`: fsync only at WAL checkpoints; faster on slow SD cards, never
    /// corrupt, but a power cut can lose the last commits' effects although
    /// their messages were acknowledged.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// How long the first invocation in a group commit waits for others to
    /// join its transaction, in milliseconds. Default 2.
    #[serde(default = "default_group_commit_ms")]
    pub group_commit_ms: u64,
    /// The most invocations in one transaction. Default 512.
    #[serde(default = "default_group_commit_max")]
    pub group_commit_max: u32,
    /// Disk the outbox may use for undelivered messages, in MiB. Default 256.
    #[serde(default = "default_outbox_max_mb")]
    pub outbox_max_mb: u32,
    /// When the outbox is full: `"block"` (default) takes no new messages
    /// until it drains, so the broker and devices hold them; `"drop-oldest"`
    /// deletes the oldest undelivered local emits, each logged and counted.
    #[serde(default)]
    pub local_when_full: WhenFull,
    /// The same for upstream emits (a cloud link down for days).
    #[serde(default)]
    pub upstream_when_full: WhenFull,
    /// Versions of each function kept (their modules under
    /// `data_dir/modules`, for `wasmgate alias` and `rollback`) besides the
    /// ones an alias names, 1 to 1000. Default 10.
    #[serde(default = "default_keep_versions")]
    pub keep_versions: u32,
}

const fn default_keep_versions() -> u32 {
    10
}

const fn default_outbox_max_mb() -> u32 {
    256
}

const fn default_group_commit_ms() -> u64 {
    2
}

const fn default_group_commit_max() -> u32 {
    512
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            synchronous: Synchronous::Full,
            group_commit_ms: default_group_commit_ms(),
            group_commit_max: default_group_commit_max(),
            outbox_max_mb: default_outbox_max_mb(),
            local_when_full: WhenFull::Block,
            upstream_when_full: WhenFull::Block,
            keep_versions: default_keep_versions(),
        }
    }
}

/// Which local broker devices talk to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    /// An MQTT broker (rumqttd) runs inside the gateway process.
    #[default]
    Embedded,
    /// The gateway connects to a broker run separately (mosquitto, ...).
    External,
}

/// The MQTT version the gateway speaks to a broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// MQTT 3.1.1: what every broker speaks.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5: user properties, and PUBACKs that say why a message was refused
    /// (AWS IoT Core, HiveMQ, EMQX, mosquitto all speak it).
    #[serde(rename = "5")]
    V5,
}

impl Protocol {
    /// As written in the config.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

/// The local broker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `"embedded"` (default) or `"external"`.
    #[serde(default)]
    pub mode: BrokerMode,
    /// External only: `"3.1.1"` (default) or `"5"`. MQTT 5 hands the
    /// functions their messages' user properties and allows a trigger's
    /// `dedup_property`. (The embedded broker's listener speaks 3.1.1 to
    /// every device, so it stays 3.1.1.)
    #[serde(default)]
    pub protocol: Protocol,
    /// Embedded only: the `ip:port` devices connect to. Default
    /// `"127.0.0.1:1883"` (this machine only); an address other devices can
    /// reach (`"0.0.0.0:1883"`) needs `passwords` or `allow_anonymous`. See
    /// [`BrokerConfig::listen_addr`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// External only, required there: host name or IP address of the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// External only: the broker's port. Default 1883, or 8883 with `tls`;
    /// see [`BrokerConfig::effective_port`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Client id of the gateway's MQTT session. Default `"wasmgate-<gateway_id>"`
    /// (see [`Config::broker_client_id`]). It must stay stable across restarts:
    /// the broker keeps the persistent session, and the QoS 1 messages the
    /// gateway has not acknowledged yet, under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// User name the gateway's MQTT client presents; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password the gateway's MQTT client presents; needs `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// External only: connect with TLS; none (plain MQTT) by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Embedded only: a second device listener that speaks TLS, for
    /// mutual TLS with device certificates; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_listener: Option<TlsListenerConfig>,
    /// Embedded only: a file of device user names and password hashes, in
    /// mosquitto_passwd's format (`wasmgate passwd FILE USER` adds one);
    /// devices must then log in with one of them. Not in this file, so that
    /// gateway.toml holds no secret. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passwords: Option<PathBuf>,
    /// Embedded only: accept devices without a password on a `listen`
    /// address other machines can reach. `false` by default, as mosquitto 2
    /// does: a broker open to the LAN is a choice to make knowingly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_anonymous: bool,
    /// Embedded only: devices connected at once, 1 to 65,536 (connections
    /// that have not sent CONNECT yet count too; past it a new one is
    /// closed at once). The gateway's own sessions have room apart from
    /// these. Default 1,024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Embedded only: retained messages kept at once, 0 to 1,000,000; past
    /// it a retained message is delivered but not kept (logged, counted).
    /// Default 4,096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retained: Option<u32>,
    /// Embedded only: MiB of retained topics and payloads kept at once, 0 to
    /// 1,024; as above. Default 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retained_mb: Option<u32>,
}

impl BrokerConfig {
    /// The address the embedded broker listens on; `None` for an external
    /// broker or an unparsable `listen` (which validation reports).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        match self.mode {
            BrokerMode::Embedded => self
                .listen
                .as_deref()
                .unwrap_or(DEFAULT_LISTEN)
                .parse()
                .ok(),
            BrokerMode::External => None,
        }
    }

    /// The external broker's port: `port`, else 8883 with TLS, else 1883.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(default_port(self.tls.is_some()))
    }
}

const fn default_port(tls: bool) -> u16 {
    if tls {
        MQTTS_PORT
    } else {
        MQTT_PORT
    }
}

/// The cloud broker that functions emit to through the durable outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Host name or IP address of the cloud broker. Required.
    pub host: String,
    /// The broker's port. Default 8883 with `tls`, else 1883; see
    /// [`UpstreamConfig::effective_port`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Client id of the gateway's upstream session. Default
    /// `"wasmgate-<gateway_id>"` (see [`Config::upstream_client_id`]); must be
    /// unique among the gateways using that broker, and stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// User name presented to the cloud broker; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password presented to the cloud broker; needs `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Connect with TLS (strongly advised over the internet); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Many results per upstream message (cellular links); off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchConfig>,
    /// `"3.1.1"` (default) or `"5"`. With MQTT 5 a broker that refuses a
    /// message says so in its PUBACK (not authorized, quota exceeded...);
    /// the gateway then keeps the message and retries it later, where with
    /// 3.1.1 such a broker silently drops it or closes the connection.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Upstream batching: results wait up to `max_delay_ms` to travel together
/// in one message of the `WGB1` format (docs/upstream-batching.md), which
/// saves per-message overhead and round trips on metered links. Delivery is
/// unchanged: a batch's rows leave the outbox when the broker acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Where batches are published. Default `"wasmgate/<gateway_id>/batch"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Results per batch, 1 to 10,000. Default 100.
    #[serde(default = "default_batch_messages")]
    pub max_messages: u32,
    /// Topic and payload bytes per batch before compression, 1 to 1 MiB.
    /// Default 65,536. A larger single result travels alone.
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: u32,
    /// How long a partial batch waits for more results, 0 to 3,600,000 ms.
    /// Default 1000. A backlog never waits: its batches are full.
    #[serde(default = "default_batch_delay_ms")]
    pub max_delay_ms: u64,
    /// `"none"` (default) or `"deflate"` (raw DEFLATE of the body).
    #[serde(default)]
    pub compression: Compression,
}

/// How an upstream batch's body is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    #[default]
    None,
    /// Raw DEFLATE: `zlib.decompress(body, -15)` in Python, `inflateRaw` in
    /// Node, `flate2::read::DeflateDecoder` in Rust.
    Deflate,
}

const fn default_batch_messages() -> u32 {
    100
}
const fn default_batch_bytes() -> u32 {
    65_536
}
const fn default_batch_delay_ms() -> u64 {
    1000
}

impl UpstreamConfig {
    /// `port`, else 8883 with TLS, else 1883.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(default_port(self.tls.is_some()))
    }
}

/// TLS to a broker. Relative paths are resolved against the config file's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificates to trust; the system's roots if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS; needs `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`; needs `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// The embedded broker's TLS listener (mosquitto's `listener 8883` with
/// `certfile`, `keyfile` and `cafile` + `require_certificate`). It takes the
/// same devices as `listen`, with the same passwords file and limits
/// (`max_connections` applies to each listener).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// The `ip:port` devices connect to with TLS; default `"127.0.0.1:8883"`.
    /// An address other machines can reach needs `client_ca`, `passwords`
    /// or `allow_anonymous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// PEM certificate (chain) the broker presents; devices check it against
    /// their CA. Required.
    pub cert: PathBuf,
    /// PEM private key of `cert`. Required.
    pub key: PathBuf,
    /// PEM file of the CA(s) that sign device certificates: with it, a
    /// device must present a certificate that chains to one of them (mutual
    /// TLS), and any other is refused in the handshake, before MQTT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl TlsListenerConfig {
    /// `listen`, or the default; `None` if unparsable (validation says so).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen
            .as_deref()
            .unwrap_or(DEFAULT_TLS_LISTEN)
            .parse()
            .ok()
    }

    fn files_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        [&mut self.cert, &mut self.key]
            .into_iter()
            .chain(self.client_ca.as_mut())
    }
}

impl TlsConfig {
    fn files_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        [&mut self.ca, &mut self.cert, &mut self.key]
            .into_iter()
            .flatten()
    }
}

/// A password or key: written in the config, or better, a reference to
/// where it is kept, so that the config holds no secret:
/// `{ file = "/etc/wasmgate/upstream.pass" }` (the file's contents, a final
/// newline dropped), `{ env = "UPSTREAM_PASSWORD" }`, or
/// `{ credential = "upstream" }` (a systemd credential: the file of that name
/// in `$CREDENTIALS_DIRECTORY`, from `LoadCredential=`). A reference is
/// read by [`Config::resolve_secrets`]. Kept out of `Debug` output, errors
/// and every other print, so configs can be logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SecretSource", into = "SecretSource")]
pub struct Secret {
    source: SecretSource,
    /// The value, once known: at once when written inline, after
    /// [`Config::resolve_secrets`] for a reference.
    value: Option<String>,
}

/// Where a [`Secret`] is kept.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    Inline(String),
    File { file: PathBuf },
    Env { env: String },
    Credential { credential: String },
}

impl From<SecretSource> for Secret {
    fn from(source: SecretSource) -> Self {
        let value = match &source {
            SecretSource::Inline(value) => Some(value.clone()),
            _ => None,
        };
        Secret { source, value }
    }
}

impl From<Secret> for SecretSource {
    fn from(secret: Secret) -> Self {
        secret.source
    }
}

/// Why a referenced secret could not be read. Names where it was looked
/// for, never any of its bytes.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret file {path}: {error}")]
    File { path: PathBuf, error: String },
    #[error("the environment variable {0} is not set (or not UTF-8)")]
    Env(String),
    #[error("no systemd credential {name}: {why}")]
    Credential { name: String, why: String },
}

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        SecretSource::Inline(secret.into()).into()
    }

    /// The secret itself; empty when it is a reference not yet resolved
    /// (a validated config has resolved them all).
    pub fn expose(&self) -> &str {
        self.value.as_deref().unwrap_or("")
    }

    /// Reads a referenced secret (relative files against `base_dir`).
    pub fn resolve(&mut self, base_dir: &Path) -> Result<(), SecretError> {
        let read_file = |path: &Path| -> Result<String, String> {
            let text = crate::files::read_text(path, 64 << 10, "secret file").map_err(|e| {
                match e.io_kind() {
                    Some(kind) => std::io::Error::from(kind).to_string(),
                    // Not the message (it is about the file, not the
                    // secret, but keep to one rule): what kind of problem.
                    None => "not a regular file of at most 64 KiB".to_owned(),
                }
            })?;
            Ok(text
                .strip_suffix('\n')
                .unwrap_or(&text)
                .trim_end_matches('\r')
                .to_owned())
        };
        let value = match &self.source {
            SecretSource::Inline(value) => value.clone(),
            SecretSource::File { file } => {
                let path = if file.is_relative() {
                    base_dir.join(file)
                } else {
                    file.clone()
                };
                read_file(&path).map_err(|error| SecretError::File { path, error })?
            }
            SecretSource::Env { env } => {
                std::env::var(env).map_err(|_| SecretError::Env(env.clone()))?
            }
            SecretSource::Credential { credential } => {
                let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
                    return Err(SecretError::Credential {
                        name: credential.clone(),
                        why: "$CREDENTIALS_DIRECTORY is not set (LoadCredential= in the systemd unit)".into(),
                    });
                };
                let path = Path::new(&dir).join(credential);
                read_file(&path).map_err(|why| SecretError::Credential {
                    name: credential.clone(),
                    why,
                })?
            }
        };
        self.value = Some(value);
        Ok(())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(***)"),
            SecretSource::File { file } => write!(f, "File({})", file.display()),
            SecretSource::Env { env } => write!(f, "Env({env})"),
            SecretSource::Credential { credential } => write!(f, "Credential({credential})"),
        }
    }
}

/// One function: a Wasm module, what runs it, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Unique name: 1 to 64 of `a-z 0-9 _ -`. Other functions `invoke` it by this name.
    pub name: String,
    /// Path of the compiled module. A relative path is resolved against the
    /// config file's directory by [`Config::load`].
    pub wasm: PathBuf,
    /// What runs the function; at least one.
    pub triggers: Vec<TriggerConfig>,
    /// Per-invocation and per-function resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// What the function may reach (least privilege).
    #[serde(default)]
    pub grants: Grants,
    /// String values the function reads with `config_get`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Secrets the function may read with `secret_get`, each only if its
    /// name is in `grants.secrets`: written here, or (better) referenced,
    /// `api-key = { file = "/etc/wasmgate/api-key" }`. Never logged, never in
    /// `config check` output, dead letters or `invoke` reports.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Secret>,
    /// Which failed invocations run again, how often and how soon.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Where events go once every attempt has failed.
    #[serde(default)]
    pub dead_letters: DeadLetterConfig,
}

const fn default_attempts() -> u32 {
    3
}
const fn default_initial_backoff_ms() -> u64 {
    100
}
const fn default_max_backoff_ms() -> u64 {
    5_000
}
const fn default_jitter_percent() -> u8 {
    50
}
fn default_retry_on() -> Vec<FailureKind> {
    RetryConfig::DEFAULT_RETRY_ON.to_vec()
}
const fn default_dead_letters_keep() -> u32 {
    10_000
}

/// How a failed invocation is retried. Retries of one event happen in its
/// shard, before the events behind it on the same topic: per-topic order is
/// kept, and a failing event holds up its topic (and the topics sharing its
/// shard) for at most its attempts and backoffs. Then it goes to the
/// dead-letter queue and the stream moves on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per event, the first one included: 1 means no retries,
    /// 1 to 100. Default 3.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Wait before the first retry, in milliseconds; each retry waits twice
    /// as long as the one before. Default 100.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// The longest wait between attempts, in milliseconds. Default 5000.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Each wait is shortened by a random 0 to this percent, so that many
    /// failing events do not retry in lockstep; 0 to 100. Default 50.
    #[serde(default = "default_jitter_percent")]
    pub jitter_percent: u8,
    /// Which failures are retried: `"trap"`, `"deadline"` (or `"timeout"`),
    /// `"out_of_fuel"`, `"memory_limit"`, `"host"`, `"failed"` (a non-zero
    /// return), `"abi"`. Default `["trap", "deadline", "out_of_fuel", "host"]`:
    /// what may pass on another try. ABI misuse and memory bombs fail the
    /// same way every time; add `"failed"` if the function's own error codes
    /// mean "try again". Other failures go to the dead-letter queue at once.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<FailureKind>,
}

impl RetryConfig {
    /// The failures retried by default.
    pub const DEFAULT_RETRY_ON: [FailureKind; 4] = [
        FailureKind::Trap,
        FailureKind::Deadline,
        FailureKind::OutOfFuel,
        FailureKind::Host,
    ];
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: default_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            jitter_percent: default_jitter_percent(),
            retry_on: default_retry_on(),
        }
    }
}

/// The dead-letter queue: events that failed every attempt, kept in the
/// database with each attempt's error until an operator replays or purges
/// them (`wasmgate dlq`). An event is acknowledged to the broker only once
/// its dead letter is committed, so nothing is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Dead letters kept for this function, at least 1; past it the oldest
    /// is deleted, logged and counted, so a device sending garbage for weeks
    /// cannot fill the disk. Default 10,000.
    #[serde(default = "default_dead_letters_keep")]
    pub keep: u32,
    /// Also publish each dead letter (JSON: function, version, event, every
    /// attempt's error) to this topic on the local broker, through the
    /// durable outbox. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            keep: default_dead_letters_keep(),
            topic: None,
        }
    }
}

/// An event source that runs a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// MQTT topic filter on the local broker (`+` one level, `#` the rest).
    /// A trigger has this or `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<String>,
    /// When to run the function, in EventBridge Scheduler's forms:
    /// `"rate(5 minutes)"` (1 second at least), `"cron(0 2 * * ? *)"` (six
    /// fields: minutes hours day-of-month month day-of-week year, in UTC or
    /// `timezone`), or once, `"at(2026-12-24T18:00:00)"`. Each tick is committed
    /// like a message: it runs exactly once, across restarts too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Schedule only: cron and at times are wall times in this zone (an
    /// IANA name from the system's tz database: `"Europe/Berlin"`), DST
    /// included. UTC by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// An HTTP route on the gateway's `[http]` listener: a method (`GET`,
    /// `POST`, `PUT`, `PATCH`, `DELETE`, or `ANY`) and a path whose
    /// `{name}` segments are path parameters: `"GET /vending/{machine}/state"`.
    /// The function answers with `respond`; without, the client gets 204.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Files that land in a directory: `"/var/spool/wasmgate/in/*.csv"` (`*`
    /// and `?` in the file name only). Each complete file (closed after
    /// writing, or renamed in) runs the function once its effects commit it
    /// moves to `done/` beside it (`failed/` if dead-lettered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A WebSocket route on the `[http]` listener: `"/live"`. Each
    /// connection's open, messages and close run the function (API
    /// Gateway's `$connect`, `$default`, `$disconnect`) with its connection
    /// id, and `post_to_connection` sends to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<String>,
    /// websocket only: connections open at once, 1 to 10,000 (default 100);
    /// one more is closed with 1013 (try again later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// websocket only: a connection with nothing sent either way for this
    /// long is closed with 1001, 1 s to 2 h (default 10 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// websocket only: the largest message taken, 1 byte to 1 MiB (default
    /// 32 KiB); a larger one closes the connection with 1009.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u32>,
    /// http only: clients must send one of these API keys in `x-api-key`
    /// (401 otherwise): `auth = { api_keys = { file = "/etc/wasmgate/api-keys" } }`,
    /// one key per line (or `{ env = ... }`, `{ credential = ... }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RouteAuth>,
    /// http only: `"request_response"` (default: the client waits for the
    /// function's answer) or `"event"`: 202 as soon as the request is
    /// durably queued, and the function runs after, at least once, with
    /// retries and the dead-letter queue (Lambda's asynchronous invoke), so
    /// a device can post telemetry over HTTP with MQTT's guarantee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<crate::triggers::route::Invocation>,
    /// The KV change stream of a function (its name): each committed write
    /// of its KV runs this function with the key, the value before and the
    /// value after, in commit order, at least once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_change: Option<String>,
    /// kv_change only: the keys to take (`*` and `?`, as `"vm-*/stock"`);
    /// every key by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<String>,
    /// kv_change only: allow a function to follow its own namespace (each
    /// of its writes runs it again: a loop, unless it stops writing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_self: bool,
    /// File only: `"move"` (default) a processed file to `done/`, or
    /// `"delete"` it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<After>,
    /// File only: the largest file read, 1 byte to 16 MiB (default 1 MiB);
    /// a larger one goes to the dead-letter queue as `too_large`, unread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<u32>,
    /// Schedule only: what to do about ticks missed while the gateway was
    /// down: `"once"` (default: one catch-up run, told it is late),
    /// `"skip"`, or `"all"` (each, up to 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<Missed>,
    /// mqtt, file and kv_change only: hand the function a batch of events, up to
    /// `size`, or what arrived within `window_ms` of the first:
    /// `batch = { size = 100, window_ms = 500 }`. The function may report
    /// single items failed (`item_failed`): only those are retried and
    /// dead-lettered, the rest commit. None by default (one event each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchWindow>,
    /// QoS of the subscription: 0 or 1 (default 1). QoS 1 with manual acks is
    /// what makes delivery at-least-once.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// mqtt only: what a QoS 0 message meets when the function's queue is
    /// full. `"wait"` (default): the gateway stops reading the session, as
    /// at QoS 1, and the broker holds or drops by its own policy (its
    /// queue limits); nothing is lost in the gateway. `"drop"`: the gateway
    /// drops it and counts it (`wasmgate_trigger_dropped_total`), for
    /// telemetry where only the newest matters and reading must not slow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos0_when_full: Option<Qos0WhenFull>,
    /// mqtt only: take this trigger's messages through the MQTT shared
    /// subscription `$share/<share>/<filter>`, so that several gateways on
    /// one broker split its load, each message going to one of them
    /// (mosquitto, EMQX, HiveMQ, AWS IoT Core; MQTT 3.1.1 or 5). Each
    /// gateway keeps its own KV and dedup ids: see docs/scale-out.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// Exactly-once effects for devices that stamp their messages with an id:
    /// the JSON field holding it (`"msg_id"`, or `"meta.id"` for a nested
    /// one). A message whose id this function has already processed is
    /// acknowledged without running again. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    /// The same with the id in an MQTT 5 user property of that name
    /// (`"msg-id"`), leaving the payload alone: for devices that do not send
    /// JSON. Needs `broker.protocol = "5"`; not together with `dedup_key`.
    /// None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_property: Option<String>,
}

impl TriggerConfig {
    /// What the broker is asked for: the `mqtt` filter, or the shared
    /// subscription `$share/<share>/<filter>`.
    pub fn subscription(&self) -> Option<String> {
        let filter = self.mqtt.as_ref()?;
        Some(match &self.share {
            Some(group) => format!("$share/{group}/{filter}"),
            None => filter.clone(),
        })
    }

    /// How `/metrics` names it: its kind and what it listens to,
    /// `mqtt:vending/+/telemetry`, `http:GET /state`, `schedule:rate(5 minutes)`,
    /// `kv_change:stock/vm-*` (a namespace, and its `keys` if set).
    pub fn label(&self) -> String {
        let kinds = [
            ("mqtt", &self.mqtt),
            ("http", &self.http),
            ("websocket", &self.websocket),
            ("schedule", &self.schedule),
            ("file", &self.file),
            ("kv_change", &self.kv_change),
        ];
        let label = kinds
            .iter()
            .find_map(|(kind, what)| what.as_ref().map(|what| format!("{kind}:{what}")))
            .unwrap_or_else(|| "unknown".to_owned());
        // Two streams of one namespace differ by their keys.
        match (&self.kv_change, &self.keys) {
            (Some(_), Some(keys)) => format!("{label}/{keys}"),
            _ => label,
        }
    }

    /// The HTTP route this trigger serves, as a route is written: its
    /// `http`, or `GET <path>` for a `websocket` (the upgrade request).
    pub fn route(&self) -> Option<String> {
        match (&self.http, &self.websocket) {
            (Some(http), _) => Some(http.clone()),
            (None, Some(path)) => Some(format!("GET {path}")),
            (None, None) => None,
        }
    }
}

/// [`TriggerConfig::qos0_when_full`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos0WhenFull {
    #[default]
    Wait,
    Drop,
}

/// Defaults of a websocket trigger's limits.
pub const DEFAULT_WS_CONNECTIONS: u32 = 100;
pub const DEFAULT_WS_IDLE_MS: u64 = 600_000;
pub const DEFAULT_WS_MESSAGE_BYTES: u32 = 32 << 10;

/// A trigger's batching window (Lambda's batch size and batching window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchWindow {
    /// Events per batch at most, 1 to 10,000.
    pub size: u32,
    /// How long a batch waits for more events after its first, 0 to
    /// 60,000 ms; 0 takes only what is already waiting. Default 0.
    #[serde(default)]
    pub window_ms: u64,
}

/// The most events one batch holds.
pub const MAX_BATCH_SIZE: u32 = 10_000;
/// The longest batching window.
pub const MAX_BATCH_WINDOW_MS: u64 = 60_000;

/// Who may call an HTTP route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuth {
    /// The keys, one per line (blank lines and `#` comments aside).
    pub api_keys: Secret,
}

impl RouteAuth {
    /// The keys, once resolved.
    pub fn keys(&self) -> Vec<String> {
        self.api_keys
            .expose()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }
}

pub use crate::triggers::pattern::After;

/// Default [`TriggerConfig::max_file_bytes`].
pub const DEFAULT_MAX_FILE_BYTES: u32 = 1 << 20;

pub use crate::triggers::expression::Missed;

/// Resource limits of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Fuel per invocation, roughly one unit per Wasm instruction; 1 to
    /// 10,000,000,000. Default 50,000,000.
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Linear memory per instance in MiB, 1 to 4096. Default 16.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Wall-clock deadline per invocation in milliseconds, 1 to 900,000 (15
    /// minutes). Default 1000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Invocations of this function running at once, 1 to 64 (each is a
    /// thread). Default 1.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Instances kept instantiated and ready, 0 to 64; 0 instantiates on
    /// demand. Default 2. Lambda's provisioned concurrency: a deploy or an
    /// alias move makes this many of the new version (at most
    /// `concurrency`) before the next events run on it, so a swap has no
    /// cold starts. `min_warm` is another name for it.
    #[serde(default = "default_warm_instances", alias = "min_warm")]
    pub warm_instances: u32,
    /// Capacity of the function's bounded event queue, 1 to 65,535. When it
    /// is full the gateway stops reading and the broker holds messages. Default 1024.
    #[serde(default = "default_queue")]
    pub queue: u32,
    /// Messages one invocation may emit, 0 to 10,000; 0 forbids emitting.
    /// Default 100.
    #[serde(default = "default_max_emits")]
    pub max_emits: u32,
    /// Payload bytes per emitted message, 1 to 268,435,455 (MQTT's maximum);
    /// with the embedded broker at most 2,031,601 (its 2 MiB packets, less
    /// room for the topic). Default 262,144.
    #[serde(default = "default_max_emit_bytes")]
    pub max_emit_bytes: u32,
    /// Bytes per KV value, 1 to 1,000,000,000 (SQLite's blob limit). Default 65,536.
    #[serde(default = "default_max_kv_value_bytes")]
    pub max_kv_value_bytes: u32,
}

impl Limits {
    /// The defaults, usable in `const` context.
    pub const DEFAULT: Limits = Limits {
        fuel: default_fuel(),
        memory_mb: default_memory_mb(),
        timeout_ms: default_timeout_ms(),
        concurrency: default_concurrency(),
        warm_instances: default_warm_instances(),
        queue: default_queue(),
        max_emits: default_max_emits(),
        max_emit_bytes: default_max_emit_bytes(),
        max_kv_value_bytes: default_max_kv_value_bytes(),
    };

    /// `memory_mb` in bytes.
    pub const fn memory_bytes(&self) -> u64 {
        self.memory_mb as u64 * 1024 * 1024
    }

    /// `memory_mb` in 64 KiB Wasm pages.
    pub const fn memory_pages(&self) -> u64 {
        self.memory_bytes() / WASM_PAGE_BYTES
    }

    /// `timeout_ms` as a duration.
    pub const fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What a function may reach. Everything not granted is denied (`DENIED` to the guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Topic filters the function may emit to on the local broker. Default
    /// `["#"]`: any topic except `$` topics (`#` does not match them).
    #[serde(default = "default_local_grants")]
    pub local: Vec<String>,
    /// Topic filters the function may emit to upstream; needs `[upstream]`.
    /// Default none.
    #[serde(default)]
    pub upstream: Vec<String>,
    /// Names of the functions it may invoke; each must be configured. Default none.
    #[serde(default)]
    pub invoke: Vec<String>,
    /// Names of the function's `secrets` it may read with `secret_get`;
    /// each must be one of them. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

impl Default for Grants {
    fn default() -> Self {
        Self {
            local: default_local_grants(),
            upstream: Vec::new(),
            invoke: Vec::new(),
            secrets: Vec::new(),
        }
    }
}

/// Where a config came from. Always equal, so it does not affect `==`.
#[derive(Clone, Default)]
struct Origin {
    name: Option<Arc<str>>,
    text: Option<Arc<str>>,
    /// When functions the text has were left out (they could not be read),
    /// each kept function's index in the text: errors found on this config
    /// are located where the function really is.
    function_indices: Option<Arc<[usize]>>,
}

impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Sections deserialized one by one after a schema error, so that a mistake
/// in one does not hide the mistakes in the others.
const SECTIONS: [&str; 4] = ["broker", "upstream", "store", "functions"];

impl Config {
    /// Parses and validates `text`, reporting every problem at once.
    /// `source_name` (usually the file name) prefixes each error. Relative
    /// paths are left as written; [`Config::load`] resolves them.
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Self, ConfigErrors> {
        let config = Self::parse(text, source_name)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates the file at `path`, then resolves relative
    /// paths in it against the file's directory and reads its secrets
    /// ([`load`] without a board, and without checking the files it names).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigErrors> {
        load(path.as_ref(), Needs::SECRETS, |_, _| {})
    }

    /// Parses `text` without the semantic checks of [`Config::validate`]:
    /// reports the first syntax error (what follows one cannot be read
    /// reliably) or else every schema error (unknown field, wrong type,
    /// missing field), each section checked on its own.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ConfigErrors> {
        let name: Arc<str> = source_name.into();
        let located = |span: Option<std::ops::Range<usize>>, path, kind| ConfigError {
            source_name: Some(name.clone()),
            line: span.map(|s| locate::line_of(text, s.start)),
            path,
            kind,
        };

        let (root, syntax) = DeTable::parse_recoverable(text);
        if let Some(first) = syntax
            .iter()
            .min_by_key(|e| e.span().map_or(usize::MAX, |s| s.start))
        {
            let error = located(
                first.span(),
                FieldPath::root(),
                ConfigErrorKind::Syntax(first.message().to_owned()),
            );
            return Err(ConfigErrors::new(vec![error]));
        }

        let map = SourceMap::new(text, root.clone());
        match deserialize(root) {
            Ok(mut config) => {
                config.origin = Origin {
                    name: Some(name),
                    text: Some(text.into()),
                    function_indices: None,
                };
                Ok(config)
            }
            Err(errors) => Err(ConfigErrors::new(
                errors
                    .into_iter()
                    .map(|e| {
                        let path = e.span().map(|s| map.path_at(s.start)).unwrap_or_default();
                        located(
                            e.span(),
                            path,
                            ConfigErrorKind::Schema(e.message().to_owned()),
                        )
                    })
                    .collect(),
            )),
        }
    }

    /// [`Config::parse`], but past schema errors: every schema error, and
    /// the config as far as it could be read (the values that were wrong
    /// left out, so they take their defaults; a function that could not be
    /// read at all left out), so that [`Config::validate`] and
    /// [`Config::check_files`] can report the rest in the same pass. `None`
    /// only after a syntax error, which leaves nothing reliable to read.
    pub fn parse_all(text: &str, source_name: &str) -> (Option<Self>, Vec<ConfigError>) {
        match Self::parse(text, source_name) {
            Ok(config) => (Some(config), Vec::new()),
            Err(errors)
                if errors
                    .iter()
                    .any(|e| matches!(e.kind, ConfigErrorKind::Syntax(_))) =>
            {
                (None, errors.into_iter().collect())
            }
            Err(errors) => {
                let mut errors: Vec<ConfigError> = errors.into_iter().collect();
                let (root, _) = DeTable::parse_recoverable(text);
                let map = SourceMap::new(text, root.clone());
                let (config, kept, more) = deserialize_around(root, errors.len());
                // What the strict pass saw first in each section, and what
                // was behind it.
                for e in more {
                    let span = e.span();
                    let error = ConfigError {
                        source_name: Some(source_name.into()),
                        line: span.clone().map(|s| locate::line_of(text, s.start)),
                        path: span.map(|s| map.path_at(s.start)).unwrap_or_default(),
                        kind: ConfigErrorKind::Schema(e.message().to_owned()),
                    };
                    let seen = errors.iter().any(|known| {
                        known.line == error.line && known.to_string() == error.to_string()
                    });
                    if !seen {
                        errors.push(error);
                    }
                }
                let config = config.map(|mut config| {
                    config.origin = Origin {
                        name: Some(source_name.into()),
                        text: Some(text.into()),
                        function_indices: Some(kept.into()),
                    };
                    config
                });
                (config, errors)
            }
        }
    }

    /// Checks everything serde cannot: names, topic filters, ranges,
    /// references between functions, broker modes. Reports every problem,
    /// located in the source text when the config was parsed from one.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let errors = validate::validate(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors::new(self.locate(errors)))
        }
    }

    /// Checks that the files the config names (Wasm modules, TLS files)
    /// exist and are readable regular files. Apart from [`Config::validate`]
    /// because it touches the file system; run it after [`Config::load`] so
    /// relative paths are resolved.
    pub fn check_files(&self) -> Vec<ConfigError> {
        fn tls_files<'a>(
            files: &mut Vec<(FieldPath, &'a Path)>,
            path: FieldPath,
            tls: Option<&'a TlsConfig>,
        ) {
            let Some(tls) = tls else { return };
            for (key, file) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                if let Some(file) = file {
                    files.push((path.key("tls").key(key), file));
                }
            }
        }
        let mut files: Vec<(FieldPath, &Path)> = Vec::new();
        let root = FieldPath::root();
        tls_files(&mut files, root.key("broker"), self.broker.tls.as_ref());
        if let Some(passwords) = &self.broker.passwords {
            files.push((root.key("broker").key("passwords"), passwords));
        }
        if let Some(listener) = &self.broker.tls_listener {
            let path = root.key("broker").key("tls_listener");
            files.push((path.key("cert"), &listener.cert));
            files.push((path.key("key"), &listener.key));
            if let Some(ca) = &listener.client_ca {
                files.push((path.key("client_ca"), ca));
            }
        }
        if let Some(token) = &self.api.token_file {
            files.push((root.key("api").key("token_file"), token));
        }
        if let Some(tls) = &self.http.tls {
            let path = root.key("http").key("tls");
            files.push((path.key("cert"), &tls.cert));
            files.push((path.key("key"), &tls.key));
            if let Some(ca) = &tls.client_ca {
                files.push((path.key("client_ca"), ca));
            }
        }
        let upstream_tls = self.upstream.as_ref().and_then(|u| u.tls.as_ref());
        tls_files(&mut files, root.key("upstream"), upstream_tls);
        for (i, function) in self.functions.iter().enumerate() {
            files.push((root.key("functions").index(i).key("wasm"), &function.wasm));
        }

        let mut directories = Vec::new();
        for (i, function) in self.functions.iter().enumerate() {
            for (j, trigger) in function.triggers.iter().enumerate() {
                let Some(Ok(pattern)) = trigger
                    .file
                    .as_deref()
                    .map(crate::triggers::pattern::Pattern::parse)
                else {
                    continue;
                };
                if !pattern.dir.is_dir() {
                    let path = root
                        .key("functions")
                        .index(i)
                        .key("triggers")
                        .index(j)
                        .key("file");
                    directories.push(ConfigError::new(
                        path,
                        ConfigErrorKind::NoSuchDirectory { path: pattern.dir },
                    ));
                }
            }
        }
        let errors = files
            .into_iter()
            .filter_map(|(path, file)| {
                // Opened only once known to be a regular file: opening a
                // FIFO would wait for a writer.
                let opened = std::fs::metadata(file).and_then(|meta| {
                    if meta.is_file() {
                        std::fs::File::open(file)?;
                    }
                    Ok(meta)
                });
                let kind = match opened {
                    Ok(meta) if meta.is_file() => return None,
                    Ok(_) => ConfigErrorKind::NotAFile {
                        path: file.to_owned(),
                    },
                    Err(source) => ConfigErrorKind::File {
                        path: file.to_owned(),
                        source,
                    },
                };
                Some(ConfigError::new(path, kind))
            })
            .chain(directories)
            .collect();
        self.locate(errors)
    }

    /// Resolves relative paths (`data_dir`, `wasm`, TLS files) against `base_dir`.
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base_dir.join(&*path);
            }
        };
        resolve(&mut self.data_dir);
        if let Some(passwords) = &mut self.broker.passwords {
            resolve(passwords);
        }
        if let Some(tls) = &mut self.broker.tls {
            tls.files_mut().for_each(resolve);
        }
        if let Some(listener) = &mut self.broker.tls_listener {
            listener.files_mut().for_each(resolve);
        }
        if let Some(token) = &mut self.api.token_file {
            resolve(token);
        }
        if let Some(tls) = &mut self.http.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                resolve(ca);
            }
        }
        if let Some(tls) = self.upstream.as_mut().and_then(|u| u.tls.as_mut()) {
            tls.files_mut().for_each(resolve);
        }
        if let Some(tls) = self.tracing.as_mut().and_then(|t| t.tls.as_mut()) {
            tls.files_mut().for_each(resolve);
        }
        for function in &mut self.functions {
            resolve(&mut function.wasm);
            for trigger in &mut function.triggers {
                if let Some(pattern) = &mut trigger.file {
                    if Path::new(pattern.as_str()).is_relative() {
                        *pattern = base_dir.join(&*pattern).display().to_string();
                    }
                }
            }
        }
    }

    /// Reads every secret the config references (by file, environment
    /// variable or systemd credential), relative files against `base_dir`;
    /// every one that cannot be read is reported.
    pub fn resolve_secrets(&mut self, base_dir: &Path) -> Vec<ConfigError> {
        let root = FieldPath::root();
        let mut errors = Vec::new();
        let mut secrets: Vec<(FieldPath, &mut Secret)> = Vec::new();
        if let Some(password) = &mut self.broker.password {
            secrets.push((root.key("broker").key("password"), password));
        }
        if let Some(password) = self.upstream.as_mut().and_then(|u| u.password.as_mut()) {
            secrets.push((root.key("upstream").key("password"), password));
        }
        for (i, function) in self.functions.iter_mut().enumerate() {
            for (name, secret) in &mut function.secrets {
                let path = root
                    .key("functions")
                    .index(i)
                    .key("secrets")
                    .key(name.clone());
                secrets.push((path, secret));
            }
            for (j, trigger) in function.triggers.iter_mut().enumerate() {
                if let Some(auth) = &mut trigger.auth {
                    let path = root
                        .key("functions")
                        .index(i)
                        .key("triggers")
                        .index(j)
                        .key("auth")
                        .key("api_keys");
                    secrets.push((path, &mut auth.api_keys));
                }
            }
        }
        for (path, secret) in secrets {
            if let Err(e) = secret.resolve(base_dir) {
                errors.push(ConfigError::new(path, ConfigErrorKind::Secret(e)));
            }
        }
        self.locate(errors)
    }

    /// A commented default config, for `wasmgate config init`. It parses and
    /// validates; its one function's Wasm file is an example build product.
    pub fn default_toml() -> &'static str {
        include_str!("default.toml")
    }

    /// The name of the source the config was parsed from, if any.
    pub fn source_name(&self) -> Option<&str> {
        self.origin.name.as_deref()
    }

    /// The client id of the gateway's session on the local broker.
    pub fn broker_client_id(&self) -> String {
        self.broker
            .client_id
            .clone()
            .unwrap_or_else(|| format!("wasmgate-{}", self.gateway_id))
    }

    /// The client id of the gateway's session on the upstream broker, if any.
    pub fn upstream_client_id(&self) -> Option<String> {
        let upstream = self.upstream.as_ref()?;
        Some(
            upstream
                .client_id
                .clone()
                .unwrap_or_else(|| format!("wasmgate-{}", self.gateway_id)),
        )
    }

    /// The function with this name and its id.
    pub fn function(&self, name: &str) -> Option<(FunctionId, &FunctionConfig)> {
        self.functions
            .iter()
            .enumerate()
            .find(|(_, f)| f.name == name)
    }

    /// A router from every function's MQTT triggers to its [`FunctionId`]
    /// (its index in [`Config::functions`]). Filters that are not valid are
    /// skipped; a validated config has none.
    pub fn router(&self) -> Router<FunctionId> {
        let mut router = Router::new();
        for (id, function) in self.functions.iter().enumerate() {
            for trigger in &function.triggers {
                // Validation has reported invalid filters already.
                if let Some(filter) = &trigger.mqtt {
                    let _ = router.add(filter, id);
                }
            }
        }
        router
    }

    /// Adds file and line to errors found on this config.
    fn locate(&self, mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
        let map = self.origin.text.as_deref().and_then(SourceMap::parse);
        for error in &mut errors {
            if let Some(indices) = &self.origin.function_indices {
                error
                    .path
                    .remap_index("functions", |i| indices.get(i).copied());
            }
            error.source_name.clone_from(&self.origin.name);
            error.line = map.as_ref().and_then(|m| m.line_of_path(&error.path));
        }
        errors
    }
}

/// Deserializes the whole config; on failure, deserializes each section
/// (and each function) on its own to collect every schema error.
fn deserialize(root: Spanned<DeTable<'_>>) -> Result<Config, Vec<toml::de::Error>> {
    let first = match Config::deserialize(Deserializer::from(root.clone())) {
        Ok(config) => return Ok(config),
        Err(error) => error,
    };
    fn check<'i, T: Deserialize<'i>>(
        value: Spanned<DeValue<'i>>,
        errors: &mut Vec<toml::de::Error>,
    ) {
        if let Err(error) = T::deserialize(ValueDeserializer::from(value)) {
            errors.push(error);
        }
    }

    let span = root.span();
    let mut rest = root.into_inner();
    let mut errors = Vec::new();
    for section in SECTIONS {
        let Some(value) = rest.remove(section) else {
            continue;
        };
        match (section, value.get_ref()) {
            ("functions", DeValue::Array(functions)) => {
                for function in functions.iter() {
                    check::<FunctionConfig>(function.clone(), &mut errors);
                }
            }
            ("functions", _) => check::<Vec<FunctionConfig>>(value, &mut errors),
            ("broker", _) => check::<BrokerConfig>(value, &mut errors),
            ("store", _) => check::<StoreConfig>(value, &mut errors),
            _ => check::<UpstreamConfig>(value, &mut errors),
        }
    }
    if let Err(error) = Config::deserialize(Deserializer::from(Spanned::new(span, rest))) {
        errors.push(error);
    }

    // The sections are the whole config, so one of them failed; this is a guard.
    if errors.is_empty() {
        errors.push(first);
    }
    errors.sort_by_key(|e| e.span().map(|s| s.start));
    errors.dedup_by(|a, b| a.span() == b.span() && a.message() == b.message());
    Err(errors)
}

/// The config with the values serde refused taken out, one at a time, so
/// the rest can be checked: the schema errors were collected already. With
/// each function's index in the text for those kept. A value is taken out
/// by its span: the innermost key or array element holding it.
fn deserialize_around(
    mut root: Spanned<DeTable<'_>>,
    errors: usize,
) -> (Option<Config>, Vec<usize>, Vec<toml::de::Error>) {
    let mut seen = Vec::new();
    let functions = match root.get_ref().get("functions").map(Spanned::get_ref) {
        Some(DeValue::Array(array)) => array.len(),
        _ => 0,
    };
    let mut kept: Vec<usize> = (0..functions).collect();
    // Each round takes one value out; the errors bound how many there are
    // (a table may hide more behind its first, hence the margin).
    for _ in 0..errors * 4 + 64 {
        let error = match Config::deserialize(Deserializer::from(root.clone())) {
            Ok(config) => return (Some(config), kept, seen),
            Err(error) => error,
        };
        let Some(span) = error.span() else {
            seen.push(error);
            return (None, kept, seen);
        };
        seen.push(error);
        let mut function = None;
        if !take_out_of_table(root.get_mut(), span.start, true, &mut function) {
            return (None, kept, seen);
        }
        if let Some(i) = function.filter(|&i| i < kept.len()) {
            kept.remove(i);
        }
    }
    (None, kept, seen)
}

fn within(span: std::ops::Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// Takes out of `table` the innermost key or array element holding
/// `offset`. At the top (`top`), taking out `functions[i]` whole sets
/// `function` to `i`.
fn take_out_of_table(
    table: &mut DeTable<'_>,
    offset: usize,
    top: bool,
    function: &mut Option<usize>,
) -> bool {
    let mut hit = None;
    for (key, child) in table.iter_mut() {
        if within(key.span(), offset) {
            hit = Some(key.clone());
            break;
        }
        let is_functions = top && key.get_ref() == "functions";
        let span = child.span();
        let inside = match child.get_mut() {
            DeValue::Table(inner) => take_out_of_table(inner, offset, false, &mut None),
            DeValue::Array(array) => {
                let mut taken = false;
                for i in 0..array.len() {
                    let Some(element) = array.get_mut(i) else {
                        break;
                    };
                    let element_span = element.span();
                    if let DeValue::Table(inner) = element.get_mut() {
                        if take_out_of_table(inner, offset, false, &mut None) {
                            taken = true;
                            break;
                        }
                    }
                    if within(element_span, offset) {
                        if is_functions {
                            *function = Some(i);
                        }
                        // No `remove` on a toml array: it is rebuilt without it.
                        *array = array
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| *j != i)
                            .map(|(_, v)| v.clone())
                            .collect();
                        taken = true;
                        break;
                    }
                }
                taken
            }
            _ => false,
        };
        if inside {
            return true;
        }
        if within(span, offset) {
            hit = Some(key.clone());
            break;
        }
    }
    match hit {
        Some(key) => table.remove(&key).is_some(),
        None => false,
    }
}

/// What a command needs of what a config names, beyond the config itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// Referenced secrets are read (a function is about to run).
    pub secrets: bool,
    /// Modules, TLS and password files must exist (`run`, `config check`,
    /// `apply`).
    pub files: bool,
}

impl Needs {
    pub const EVERYTHING: Needs = Needs {
        secrets: true,
        files: true,
    };
    /// Operators' commands on the database (`kv`, `dlq list`, `functions`).
    pub const DATABASE: Needs = Needs {
        secrets: false,
        files: false,
    };
    /// Running one function here (`dlq replay`, `invoke --gateway-config`):
    /// its secrets, and its module, which the command reads itself.
    pub const SECRETS: Needs = Needs {
        secrets: true,
        files: false,
    };
}

/// The one way a config file is read, by `wasmgate run`, the running
/// gateway's `apply` and SIGHUP, and every command: syntax first (nothing
/// more can be read reliably after a syntax error), then schema errors, and
/// the values and files of what could be read around them, all reported
/// together, in line order. `defaults` fills in what the text leaves out
/// before validation (a board's limits and outbox budget: `BoardProfile::
/// load_config`); it sees the text, since "left out" is a property of it.
pub fn load(
    path: &Path,
    needs: Needs,
    defaults: impl FnOnce(&mut Config, &str),
) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = read_config_text(path).map_err(|e| {
        let mut error = ConfigError::new(FieldPath::root(), ConfigErrorKind::Read(e));
        error.source_name = Some(name.as_str().into());
        ConfigErrors::new(vec![error])
    })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let (config, mut problems) = Config::parse_all(&text, &name);
    let config = config.map(|mut config| {
        config.resolve_paths(dir);
        if needs.secrets {
            problems.extend(config.resolve_secrets(dir));
        }
        defaults(&mut config, &text);
        if let Err(errors) = config.validate() {
            problems.extend(errors);
        }
        if needs.files {
            problems.extend(config.check_files());
        }
        config
    });
    problems.sort_by_key(|p| p.line);
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigErrors::new(problems)),
    }
}

/// A config file's text: a regular file of at most
/// [`crate::files::MAX_CONFIG_BYTES`] (so a config path that names a device
/// or a FIFO is an error, not a hang).
pub fn read_config_text(path: &Path) -> std::io::Result<String> {
    crate::files::read_text(path, crate::files::MAX_CONFIG_BYTES, "config file")
        .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests;

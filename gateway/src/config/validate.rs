//! Semantic checks on a parsed [`Config`]: every problem is collected, each
//! with the [`FieldPath`] it concerns; lines are added later by the caller.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::error::{ConfigError, ConfigErrorKind as Kind, FieldPath};
use super::{
    BrokerConfig, BrokerMode, Config, DeadLetterConfig, FunctionConfig, Limits, Protocol,
    RetryConfig, TlsConfig, TlsListenerConfig, TriggerConfig, UpstreamConfig, MAX_MEMORY_MB,
};
use crate::router::{validate_filter, validate_topic_name};

/// The largest MQTT packet: a 4-byte variable length of at most 268,435,455.
pub const MAX_MQTT_PAYLOAD: u64 = 268_435_455;

/// SQLite's default maximum length of a blob.
pub const MAX_KV_VALUE_BYTES: u64 = 1_000_000_000;

/// Sane maxima: past these a value is a typo or would take the board down
/// (threads, memory, file descriptors), so `config check` refuses it rather
/// than `run` failing half-way through its start.
pub mod max {
    /// Worker threads per function.
    pub const CONCURRENCY: u64 = 64;
    /// Events queued per function (also MQTT 5's Receive Maximum, a u16).
    pub const QUEUE: u64 = 65_535;
    /// Instances kept warm per function (each holds its linear memory).
    pub const WARM_INSTANCES: u64 = 64;
    /// Emits (and invokes) per invocation.
    pub const EMITS: u64 = 10_000;
    /// Fuel per invocation: about a minute and a half of a Pi's time.
    pub const FUEL: u64 = 10_000_000_000;
    /// Wall-clock deadline per invocation, as AWS Lambda's (15 minutes).
    pub const TIMEOUT_MS: u64 = 900_000;
    /// Functions per gateway: each has a broker session of its own.
    pub const FUNCTIONS: usize = 10_000;
    /// Dead letters kept per function.
    pub const DEAD_LETTERS: u64 = 1_000_000;
    /// Retry backoff, in milliseconds (an hour).
    pub const BACKOFF_MS: u64 = 3_600_000;
    /// The group commit's wait, in milliseconds.
    pub const GROUP_COMMIT_MS: u64 = 10_000;
    /// Invocations per transaction.
    pub const GROUP_COMMIT: u64 = 100_000;
    /// The outbox's disk budget, in MiB (1 TiB).
    pub const OUTBOX_MB: u64 = 1 << 20;
}

/// Collects problems as they are found.
struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    fn push(&mut self, path: FieldPath, kind: Kind) {
        self.errors.push(ConfigError::new(path, kind));
    }

    fn range(&mut self, path: FieldPath, value: u64, min: u64, max: u64) {
        if !(min..=max).contains(&value) {
            self.push(path, Kind::OutOfRange { value, min, max });
        }
    }

    fn filters(&mut self, path: &FieldPath, filters: &[String]) {
        for (i, filter) in filters.iter().enumerate() {
            self.filter(path.index(i), filter);
        }
    }

    fn filter(&mut self, path: FieldPath, filter: &str) {
        if let Err(source) = validate_filter(filter) {
            self.push(
                path,
                Kind::InvalidFilter {
                    filter: filter.to_owned(),
                    source,
                },
            );
        }
    }
}

/// An MQTT shared subscription's ShareName: no `/`, `+` or `#` (MQTT 5,
/// 4.8.2), and nothing a broker's log or ACL would trip over.
fn is_share_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name
            .chars()
            .any(|ch| matches!(ch, '/' | '+' | '#') || ch.is_whitespace() || ch.is_control())
}

pub(super) fn validate(config: &Config) -> Vec<ConfigError> {
    let mut c = Checker { errors: Vec::new() };
    let root = FieldPath::root();

    if !is_gateway_id(&config.gateway_id) {
        c.push(
            root.key("gateway_id"),
            Kind::InvalidValue {
                value: config.gateway_id.clone(),
                expected: "1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
            },
        );
    }
    if config.data_dir.as_os_str().is_empty() {
        c.push(
            root.key("data_dir"),
            Kind::InvalidValue {
                value: String::new(),
                expected: "a directory path",
            },
        );
    }
    broker(&mut c, &root.key("broker"), &config.broker);
    if let Some(thing) = &config.fleet.thing_name {
        // AWS IoT's thing names: 1 to 128 of these.
        let valid = (1..=128).contains(&thing.len())
            && thing
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, ':' | '_' | '-'));
        if !valid {
            c.push(
                root.key("fleet").key("thing_name"),
                Kind::InvalidValue {
                    value: thing.clone(),
                    expected: "an AWS IoT thing name: 1 to 128 of a-z, A-Z, 0-9, ':', '_' and '-'",
                },
            );
        }
    }
    if config.fleet.jobs && config.bundles.trusted_keys.is_empty() {
        c.push(
            root.key("fleet").key("jobs"),
            Kind::InvalidValue {
                value: "true".into(),
                expected: "[bundles] trusted_keys as well: a job deploys signed bundles only",
            },
        );
    }
    for (i, key) in config.bundles.trusted_keys.iter().enumerate() {
        if crate::bundle::parse_public_key(key).is_err() {
            c.push(
                root.key("bundles").key("trusted_keys").index(i),
                Kind::InvalidValue {
                    value: key.clone(),
                    expected: "an Ed25519 public key, ed25519: and 64 hex digits, as `wasmgate bundle keygen` writes",
                },
            );
        }
    }
    if let Some(upstream) = &config.upstream {
        self::upstream(&mut c, &root.key("upstream"), upstream);
    }
    store(&mut c, &root.key("store"), &config.store);
    http(&mut c, config);
    api(&mut c, config);
    if config.functions.len() > max::FUNCTIONS {
        c.push(
            root.key("functions"),
            Kind::OutOfRange {
                value: config.functions.len() as u64,
                min: 1,
                max: max::FUNCTIONS as u64,
            },
        );
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    let functions = root.key("functions");
    for (i, function) in config.functions.iter().enumerate() {
        let path = functions.index(i);
        match names.get(function.name.as_str()) {
            Some(&first) => c.push(
                path.key("name"),
                Kind::DuplicateName {
                    name: function.name.clone(),
                    first: functions.index(first),
                },
            ),
            None => {
                names.insert(&function.name, i);
            }
        }
        self::function(&mut c, &path, function, config);
    }
    let grants: Vec<(&str, &[String])> = config
        .functions
        .iter()
        .map(|f| (f.name.as_str(), f.grants.invoke.as_slice()))
        .collect();
    for (i, cycle) in invoke_cycles(&grants) {
        c.push(
            functions.index(i).key("grants").key("invoke"),
            Kind::InvokeCycle {
                cycle: cycle.join(" -> "),
            },
        );
    }
    c.errors
}

/// Loops in the invoke grants, each once: `(index of the function it is
/// reported at, the names along it back to that function)`. A loop is
/// reported at its function with the lowest index, so `a -> b -> a` is one
/// problem, not two.
///
/// Grants name functions explicitly (no wildcards), so every chain of
/// invokes the gateway could ever run follows these edges: no loop here,
/// no endless chain at run time.
pub(crate) fn invoke_cycles(grants: &[(&str, &[String])]) -> Vec<(usize, Vec<String>)> {
    let index: HashMap<&str, usize> = grants
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, i))
        .collect();
    let targets = |i: usize| -> Vec<usize> {
        grants[i]
            .1
            .iter()
            .filter_map(|name| index.get(name.as_str()).copied())
            .collect()
    };
    let mut cycles = Vec::new();
    for start in 0..grants.len() {
        // Depth-first over functions after `start` only, so each loop is
        // found from its lowest member; `visited` keeps it linear per start.
        let mut visited = vec![false; grants.len()];
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(start, targets(start))];
        let mut found = None;
        while let Some((_, next)) = stack.last_mut() {
            let Some(to) = next.pop() else {
                stack.pop();
                continue;
            };
            if to == start {
                found = Some(stack.iter().map(|(f, _)| *f).collect::<Vec<_>>());
                break;
            }
            if to > start && !visited[to] {
                visited[to] = true;
                stack.push((to, targets(to)));
            }
        }
        if let Some(path) = found {
            let mut names: Vec<String> = path.iter().map(|&f| grants[f].0.to_owned()).collect();
            names.push(grants[start].0.to_owned());
            cycles.push((start, names));
        }
    }
    cycles
}

fn is_gateway_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Function names: `[a-z0-9_-]{1,64}`, so they are safe in topics, file names and URLs.
pub(super) fn is_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

const EMBEDDED: &str = "with mode = \"embedded\"";
const EXTERNAL: &str = "with mode = \"external\"";

/// The embedded broker's TLS listener: an address of its own, and from the
/// network only with a way to tell devices apart (their certificates or
/// passwords), as for `listen`.
fn tls_listener(
    c: &mut Checker,
    path: &FieldPath,
    broker: &BrokerConfig,
    listener: &TlsListenerConfig,
) {
    let Some(addr) = listener.listen_addr() else {
        let value = listener.listen.clone().unwrap_or_default();
        let message = match value.parse::<SocketAddr>() {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        c.push(path.key("listen"), Kind::InvalidListen { value, message });
        return;
    };
    if broker.listen_addr() == Some(addr) {
        c.push(
            path.key("listen"),
            Kind::Conflict {
                field: "listen",
                with: "on broker.listen's address",
                hint: "the TLS listener needs a port of its own (8883 is MQTT over TLS's)",
            },
        );
    }
    let anonymous = listener.client_ca.is_none() && broker.passwords.is_none();
    if !addr.ip().is_loopback() && anonymous && !broker.allow_anonymous {
        c.push(
            path.key("listen"),
            Kind::Conflict {
                field: "listen",
                with: "without `client_ca` or `passwords`",
                hint: "other machines could connect without proving who they are: set broker.tls_listener.client_ca = \"devices-ca.pem\" (devices present certificates it signed) or broker.passwords, or allow_anonymous = true to accept that, or listen on 127.0.0.1",
            },
        );
    }
}

/// One trigger: exactly one of `mqtt`, `schedule` and `http`, each checked
/// with the fields that belong to it.
fn trigger_kind(c: &mut Checker, path: &FieldPath, trigger: &TriggerConfig, protocol: Protocol) {
    let kinds = [
        ("mqtt", trigger.mqtt.is_some()),
        ("schedule", trigger.schedule.is_some()),
        ("http", trigger.http.is_some()),
        ("websocket", trigger.websocket.is_some()),
        ("file", trigger.file.is_some()),
        ("kv_change", trigger.kv_change.is_some()),
    ];
    let set: Vec<&str> = kinds.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect();
    if set.is_empty() {
        c.push(path.clone(), Kind::EmptyTrigger);
        return;
    }
    if set.len() > 1 {
        c.push(
            path.key(set[1]),
            Kind::Conflict {
                field: set[1],
                with: "beside another kind in one trigger",
                hint: "make them two triggers: triggers = [{ mqtt = \"...\" }, { schedule = \"rate(5 minutes)\" }]",
            },
        );
        return;
    }
    let unused = |c: &mut Checker, fields: &[(&'static str, bool)], when: &'static str| {
        for &(field, is_set) in fields {
            if is_set {
                c.push(path.key(field), Kind::Unused { field, when });
            }
        }
    };
    if let Some(filter) = &trigger.mqtt {
        if filter.starts_with("$share/") {
            c.push(
                path.key("mqtt"),
                Kind::InvalidValue {
                    value: filter.clone(),
                    expected: "the topic filter alone, with the group in `share` beside it: `{ mqtt = \"vending/+/telemetry\", share = \"site-a\" }`",
                },
            );
        } else {
            c.filter(path.key("mqtt"), filter);
        }
        if let Some(share) = &trigger.share {
            if !is_share_name(share) {
                c.push(
                    path.key("share"),
                    Kind::InvalidValue {
                        value: share.clone(),
                        expected:
                            "a group name of 1 to 64 characters, without '/', '+', '#' or spaces",
                    },
                );
            }
        }
        // QoS 2's exactly-once handshake is not supported: delivery is
        // at-least-once end to end, and functions see duplicates anyway.
        c.range(path.key("qos"), trigger.qos.into(), 0, 1);
        dedup(c, path, trigger, protocol);
        unused(
            c,
            &[("missed", trigger.missed.is_some())],
            "on an mqtt trigger (it is for schedules)",
        );
    }
    if let Some(schedule) = &trigger.schedule {
        let zone = trigger.timezone.as_deref();
        match zone.map(crate::triggers::expression::Zone::named) {
            Some(Err(message)) => c.push(
                path.key("timezone"),
                Kind::InvalidSchedule {
                    value: zone.unwrap_or_default().to_owned(),
                    message,
                },
            ),
            Some(Ok(_)) if schedule.trim_start().starts_with("rate(") => unused(
                c,
                &[("timezone", true)],
                "on a rate (it counts periods, not wall times; use cron(...) for a local time of day)",
            ),
            _ => {
                if let Err(message) = crate::triggers::schedule::Expression::parse_in(schedule, zone) {
                    c.push(
                        path.key("schedule"),
                        Kind::InvalidSchedule {
                            value: schedule.clone(),
                            message,
                        },
                    );
                }
            }
        }
        unused(
            c,
            &[
                ("dedup_key", trigger.dedup_key.is_some()),
                ("dedup_property", trigger.dedup_property.is_some()),
            ],
            "on a schedule (each tick runs exactly once already)",
        );
    }
    match &trigger.batch {
        Some(batch)
            if trigger.mqtt.is_some() || trigger.file.is_some() || trigger.kv_change.is_some() =>
        {
            c.range(
                path.key("batch").key("size"),
                batch.size.into(),
                1,
                crate::config::MAX_BATCH_SIZE.into(),
            );
            c.range(
                path.key("batch").key("window_ms"),
                batch.window_ms,
                0,
                crate::config::MAX_BATCH_WINDOW_MS,
            );
        }
        Some(_) => unused(
            c,
            &[("batch", true)],
            "on this kind of trigger (batching windows are for mqtt, file and kv_change triggers)",
        ),
        None => {}
    }
    if trigger.schedule.is_none() {
        unused(
            c,
            &[("timezone", trigger.timezone.is_some())],
            "without `schedule`",
        );
    }
    match &trigger.websocket {
        Some(ws) => {
            if let Err(message) = crate::triggers::route::Route::parse(&format!("GET {ws}")) {
                c.push(
                    path.key("websocket"),
                    Kind::InvalidRoute {
                        value: ws.clone(),
                        message,
                    },
                );
            }
            if let Some(n) = trigger.max_connections {
                c.range(path.key("max_connections"), n.into(), 1, 10_000);
            }
            if let Some(ms) = trigger.idle_timeout_ms {
                c.range(path.key("idle_timeout_ms"), ms, 1_000, 7_200_000);
            }
            if let Some(n) = trigger.max_message_bytes {
                c.range(path.key("max_message_bytes"), n.into(), 1, 1 << 20);
            }
            unused(
                c,
                &[
                    ("dedup_key", trigger.dedup_key.is_some()),
                    ("dedup_property", trigger.dedup_property.is_some()),
                    ("invocation", trigger.invocation.is_some()),
                ],
                "on a websocket trigger",
            );
        }
        None => unused(
            c,
            &[
                ("max_connections", trigger.max_connections.is_some()),
                ("idle_timeout_ms", trigger.idle_timeout_ms.is_some()),
                ("max_message_bytes", trigger.max_message_bytes.is_some()),
            ],
            "without `websocket`",
        ),
    }
    if trigger.http.is_none() && trigger.websocket.is_none() {
        unused(
            c,
            &[("auth", trigger.auth.is_some())],
            "without `http` or `websocket`",
        );
    }
    if trigger.http.is_none() {
        unused(
            c,
            &[("invocation", trigger.invocation.is_some())],
            "without `http`",
        );
    }
    if trigger.mqtt.is_none() {
        unused(
            c,
            &[
                ("qos0_when_full", trigger.qos0_when_full.is_some()),
                ("share", trigger.share.is_some()),
            ],
            "without `mqtt`",
        );
    }
    if trigger.kv_change.is_none() {
        unused(
            c,
            &[
                ("keys", trigger.keys.is_some()),
                ("allow_self", trigger.allow_self),
            ],
            "without `kv_change`",
        );
    }
    if trigger.file.is_none() {
        unused(
            c,
            &[
                ("after", trigger.after.is_some()),
                ("max_file_bytes", trigger.max_file_bytes.is_some()),
            ],
            "without `file`",
        );
    }
    if let Some(pattern) = &trigger.file {
        if let Err(message) = crate::triggers::pattern::Pattern::parse(pattern) {
            c.push(
                path.key("file"),
                Kind::InvalidFilePattern {
                    value: pattern.clone(),
                    message,
                },
            );
        }
        if let Some(n) = trigger.max_file_bytes {
            c.range(path.key("max_file_bytes"), n.into(), 1, 16 << 20);
        }
        unused(
            c,
            &[
                ("dedup_key", trigger.dedup_key.is_some()),
                ("dedup_property", trigger.dedup_property.is_some()),
                ("missed", trigger.missed.is_some()),
            ],
            "on a file trigger (a file's effects are kept once already)",
        );
    }
    if let Some(route) = &trigger.http {
        if let Err(message) = crate::triggers::route::Route::parse(route) {
            c.push(
                path.key("http"),
                Kind::InvalidRoute {
                    value: route.clone(),
                    message,
                },
            );
        }
        unused(
            c,
            &[
                ("dedup_key", trigger.dedup_key.is_some()),
                ("dedup_property", trigger.dedup_property.is_some()),
                ("missed", trigger.missed.is_some()),
            ],
            "on an http trigger",
        );
    }
}

/// A listen address that must be `ip:port`.
fn listen_address(c: &mut Checker, path: FieldPath, listen: &str) {
    if let Err(e) = listen.parse::<SocketAddr>() {
        c.push(
            path,
            Kind::InvalidListen {
                value: listen.to_owned(),
                message: e.to_string(),
            },
        );
    }
}

/// The management API's TCP listener, and the token it needs; the metrics
/// listener.
fn api(c: &mut Checker, config: &Config) {
    if let Some(listen) = &config.metrics.listen {
        listen_address(c, FieldPath::root().key("metrics").key("listen"), listen);
    }
    let path = FieldPath::root().key("api");
    if let Some(listen) = &config.api.listen {
        listen_address(c, path.key("listen"), listen);
        if config.api.token_file.is_none() {
            c.push(
                path.key("token_file"),
                Kind::Missing {
                    field: "token_file",
                    when: "with api.listen (every TCP request needs the bearer token it holds)",
                },
            );
        }
    } else if config.api.token_file.is_some() {
        c.push(
            path.key("token_file"),
            Kind::Unused {
                field: "token_file",
                when: "without api.listen (the unix socket needs no token: only the gateway's user reaches it)",
            },
        );
    }
}

/// The HTTP listener, and no two routes that one request could match.
fn http(c: &mut Checker, config: &Config) {
    let path = FieldPath::root().key("http");
    if let Some(listen) = &config.http.listen {
        listen_address(c, path.key("listen"), listen);
    }
    if let Some(n) = config.http.max_body_bytes {
        c.range(path.key("max_body_bytes"), n.into(), 0, 16 << 20);
    }
    let logs = FieldPath::root().key("logs");
    if let Some(n) = config.logs.keep {
        c.range(logs.key("keep"), n.into(), 0, 1_000_000);
    }
    if let Some(n) = config.logs.rate {
        c.range(logs.key("rate"), n.into(), 0, 100_000);
    }
    if let Some(tracing) = &config.tracing {
        let path = FieldPath::root().key("tracing");
        if let Err(why) = crate::pipeline::spans::Endpoint::parse(&tracing.endpoint) {
            c.push(
                path.key("endpoint"),
                Kind::InvalidValue {
                    value: format!("{} ({why})", tracing.endpoint),
                    expected:
                        "an OTLP/HTTP traces URL, such as \"http://collector:4318/v1/traces\"",
                },
            );
        }
        if let Some(n) = tracing.keep {
            c.range(path.key("keep"), n.into(), 1, 10_000_000);
        }
    }
    let mut seen: Vec<(crate::triggers::route::Route, String)> = Vec::new();
    for (i, f) in config.functions.iter().enumerate() {
        for (j, t) in f.triggers.iter().enumerate() {
            let written = t.route();
            let Some(Ok(route)) = written.as_deref().map(crate::triggers::route::Route::parse)
            else {
                continue;
            };
            let key = if t.http.is_some() {
                "http"
            } else {
                "websocket"
            };
            if let Some((_, other)) = seen.iter().find(|(r, _)| r.clashes_with(&route)) {
                c.push(
                    FieldPath::root()
                        .key("functions")
                        .index(i)
                        .key("triggers")
                        .index(j)
                        .key(key),
                    Kind::RouteClash {
                        value: written.clone().unwrap_or_default(),
                        other: other.clone(),
                    },
                );
                continue;
            }
            seen.push((
                route,
                format!("{} of {}", written.clone().unwrap_or_default(), f.name),
            ));
        }
    }
}

fn broker(c: &mut Checker, path: &FieldPath, broker: &BrokerConfig) {
    match broker.mode {
        BrokerMode::Embedded => {
            if let Some(listen) = &broker.listen {
                if let Err(e) = listen.parse::<SocketAddr>() {
                    c.push(
                        path.key("listen"),
                        Kind::InvalidListen {
                            value: listen.clone(),
                            message: e.to_string(),
                        },
                    );
                }
            }
            if let Some(n) = broker.max_connections {
                c.range(path.key("max_connections"), n.into(), 1, 65_536);
            }
            let reachable = broker.listen_addr().is_some_and(|a| !a.ip().is_loopback());
            if reachable && broker.passwords.is_none() && !broker.allow_anonymous {
                c.push(
                    path.key("listen"),
                    Kind::Conflict {
                        field: "listen",
                        with: "without `passwords`",
                        hint: "other machines could connect without a password: set broker.passwords = \"passwords\" (a file `wasmgate passwd FILE USER` writes), or allow_anonymous = true to accept that, or listen on 127.0.0.1",
                    },
                );
            }
            if let Some(listener) = &broker.tls_listener {
                tls_listener(c, &path.key("tls_listener"), broker, listener);
            }
            if let Some(n) = broker.max_retained {
                c.range(path.key("max_retained"), n.into(), 0, 1_000_000);
            }
            if let Some(n) = broker.max_retained_mb {
                c.range(path.key("max_retained_mb"), n.into(), 0, 1_024);
            }
            for (field, set) in [
                ("host", broker.host.is_some()),
                ("port", broker.port.is_some()),
                ("tls", broker.tls.is_some()),
            ] {
                if set {
                    c.push(
                        path.key(field),
                        Kind::Unused {
                            field,
                            when: EMBEDDED,
                        },
                    );
                }
            }
            if broker.protocol == Protocol::V5 {
                c.push(
                    path.key("protocol"),
                    Kind::Conflict {
                        field: "protocol = \"5\"",
                        with: EMBEDDED,
                        hint: "the embedded broker speaks MQTT 3.1.1 to devices; use mode = \"external\" with an MQTT 5 broker (mosquitto, EMQX, HiveMQ)",
                    },
                );
            }
        }
        BrokerMode::External => {
            for (field, set) in [
                ("listen", broker.listen.is_some()),
                ("tls_listener", broker.tls_listener.is_some()),
                ("passwords", broker.passwords.is_some()),
                ("allow_anonymous", broker.allow_anonymous),
                ("max_connections", broker.max_connections.is_some()),
                ("max_retained", broker.max_retained.is_some()),
                ("max_retained_mb", broker.max_retained_mb.is_some()),
            ] {
                if set {
                    c.push(
                        path.key(field),
                        Kind::Unused {
                            field,
                            when: EXTERNAL,
                        },
                    );
                }
            }
            match &broker.host {
                None => c.push(
                    path.key("host"),
                    Kind::Missing {
                        field: "host",
                        when: EXTERNAL,
                    },
                ),
                Some(host) => self::host(c, path.key("host"), host),
            }
            if let Some(port) = broker.port {
                c.range(path.key("port"), port.into(), 1, u16::MAX.into());
            }
            if let Some(tls) = &broker.tls {
                self::tls(c, &path.key("tls"), tls);
            }
        }
    }
    session(
        c,
        path,
        broker.client_id.as_deref(),
        broker.username.is_some(),
        broker.password.is_some(),
    );
}

fn upstream(c: &mut Checker, path: &FieldPath, upstream: &UpstreamConfig) {
    host(c, path.key("host"), &upstream.host);
    if let Some(port) = upstream.port {
        c.range(path.key("port"), port.into(), 1, u16::MAX.into());
    }
    if let Some(tls) = &upstream.tls {
        self::tls(c, &path.key("tls"), tls);
    }
    session(
        c,
        path,
        upstream.client_id.as_deref(),
        upstream.username.is_some(),
        upstream.password.is_some(),
    );
    if let Some(batch) = &upstream.batch {
        let path = path.key("batch");
        if let Some(topic) = &batch.topic {
            if validate_topic_name(topic).is_err() || topic.starts_with('$') {
                c.push(
                    path.key("topic"),
                    Kind::InvalidValue {
                        value: topic.clone(),
                        expected: "an MQTT topic name without '+', '#' or a leading '$'",
                    },
                );
            }
        }
        c.range(
            path.key("max_messages"),
            batch.max_messages.into(),
            1,
            10_000,
        );
        c.range(path.key("max_bytes"), batch.max_bytes.into(), 1, 1 << 20);
        c.range(path.key("max_delay_ms"), batch.max_delay_ms, 0, 3_600_000);
    }
}

fn host(c: &mut Checker, path: FieldPath, host: &str) {
    if host.is_empty() || host.contains(char::is_whitespace) {
        c.push(
            path,
            Kind::InvalidValue {
                value: host.to_owned(),
                expected: "a host name or IP address",
            },
        );
    }
}

fn session(
    c: &mut Checker,
    path: &FieldPath,
    client_id: Option<&str>,
    has_username: bool,
    has_password: bool,
) {
    if let Some(id) = client_id {
        if id.is_empty() || id.len() > 65_535 || id.contains('\0') {
            c.push(
                path.key("client_id"),
                Kind::InvalidValue {
                    value: id.to_owned(),
                    expected: "a non-empty MQTT client id",
                },
            );
        }
    }
    // MQTT 3.1.1 §3.1.2.9: a password without a user name is a protocol error.
    if has_password && !has_username {
        c.push(
            path.key("username"),
            Kind::Missing {
                field: "username",
                when: "when `password` is set",
            },
        );
    }
}

fn tls(c: &mut Checker, path: &FieldPath, tls: &TlsConfig) {
    match (&tls.cert, &tls.key) {
        (Some(_), None) => c.push(
            path.key("key"),
            Kind::Missing {
                field: "key",
                when: "when `cert` is set (client certificates need their private key)",
            },
        ),
        (None, Some(_)) => c.push(
            path.key("cert"),
            Kind::Missing {
                field: "cert",
                when: "when `key` is set",
            },
        ),
        _ => {}
    }
}

fn function(c: &mut Checker, path: &FieldPath, function: &FunctionConfig, config: &Config) {
    if !is_function_name(&function.name) {
        c.push(
            path.key("name"),
            Kind::InvalidValue {
                value: function.name.clone(),
                expected: "1 to 64 characters from a-z, 0-9, '_' and '-'",
            },
        );
    }
    if function.wasm.as_os_str().is_empty() {
        c.push(
            path.key("wasm"),
            Kind::InvalidValue {
                value: String::new(),
                expected: "the path of a .wasm file",
            },
        );
    }

    let triggers = path.key("triggers");
    if function.triggers.is_empty() {
        c.push(triggers.clone(), Kind::NoTriggers);
    }
    for (i, trigger) in function.triggers.iter().enumerate() {
        let trigger_path = triggers.index(i);
        trigger_kind(c, &trigger_path, trigger, config.broker.protocol);
        // A schedule's cursor is named by its expression: two alike would
        // share one and run each tick twice.
        let same = |t: &TriggerConfig| matches!((&t.schedule, &trigger.schedule), (Some(a), Some(b)) if a.trim() == b.trim());
        if function.triggers[..i].iter().any(same) {
            c.push(
                trigger_path.key("schedule"),
                Kind::Conflict {
                    field: "schedule",
                    with: "twice in one function",
                    hint: "each tick would run twice (one schedule keeps one record of its ticks); keep one trigger",
                },
            );
        }
        if let Some(namespace) = &trigger.kv_change {
            if !config.functions.iter().any(|f| &f.name == namespace) {
                c.push(
                    trigger_path.key("kv_change"),
                    Kind::UnknownFunction {
                        name: namespace.clone(),
                    },
                );
            } else if *namespace == function.name && !trigger.allow_self {
                c.push(
                    trigger_path.key("kv_change"),
                    Kind::Conflict {
                        field: "kv_change",
                        with: "on the function's own namespace",
                        hint: "each of its writes would run it again; set allow_self = true if it stops writing on its own",
                    },
                );
            }
        }
    }

    limits(c, &path.key("limits"), &function.limits);
    emit_size(c, &path.key("limits"), &function.limits, &config.broker);
    retry(c, &path.key("retry"), &function.retry);
    dead_letters(c, &path.key("dead_letters"), &function.dead_letters);

    let grants = path.key("grants");
    c.filters(&grants.key("local"), &function.grants.local);
    c.filters(&grants.key("upstream"), &function.grants.upstream);
    // Upstream grants without an [upstream] broker are allowed on purpose:
    // such emits go to the local broker, so a gateway works before it has a
    // cloud (and a bridge can forward them).
    for (i, name) in function.grants.invoke.iter().enumerate() {
        if !config.functions.iter().any(|f| &f.name == name) {
            c.push(
                grants.key("invoke").index(i),
                Kind::UnknownFunction { name: name.clone() },
            );
        }
    }

    for (i, name) in function.grants.secrets.iter().enumerate() {
        if !function.secrets.contains_key(name) {
            c.push(
                grants.key("secrets").index(i),
                Kind::InvalidValue {
                    value: name.clone(),
                    expected: "the name of one of this function's [functions.secrets]",
                },
            );
        }
    }

    for key in function.config.keys() {
        if key.is_empty() {
            c.push(
                path.key("config"),
                Kind::InvalidValue {
                    value: String::new(),
                    expected: "a non-empty key",
                },
            );
        }
    }
}

/// The most attempts per event: past this a poison message holds up its
/// topic for too long to be what anyone meant.
pub const MAX_ATTEMPTS: u64 = 100;

fn retry(c: &mut Checker, path: &FieldPath, retry: &RetryConfig) {
    c.range(path.key("attempts"), retry.attempts.into(), 1, MAX_ATTEMPTS);
    c.range(
        path.key("jitter_percent"),
        retry.jitter_percent.into(),
        0,
        100,
    );
    c.range(
        path.key("max_backoff_ms"),
        retry.max_backoff_ms,
        retry.initial_backoff_ms,
        max::BACKOFF_MS,
    );
}

fn dead_letters(c: &mut Checker, path: &FieldPath, dead_letters: &DeadLetterConfig) {
    c.range(
        path.key("keep"),
        dead_letters.keep.into(),
        1,
        max::DEAD_LETTERS,
    );
    if let Some(topic) = &dead_letters.topic {
        if validate_topic_name(topic).is_err() || topic.starts_with('$') {
            c.push(
                path.key("topic"),
                Kind::InvalidValue {
                    value: topic.clone(),
                    expected: "an MQTT topic name without `+`, `#` or a leading `$`",
                },
            );
        }
    }
}

/// A trigger's dedup id comes from one place: a JSON field or, over MQTT 5,
/// a user property.
fn dedup(c: &mut Checker, path: &FieldPath, trigger: &TriggerConfig, protocol: Protocol) {
    let Some(property) = &trigger.dedup_property else {
        return;
    };
    let path = path.key("dedup_property");
    if property.is_empty() {
        c.push(
            path.clone(),
            Kind::InvalidValue {
                value: String::new(),
                expected: "the name of an MQTT 5 user property",
            },
        );
    }
    if trigger.dedup_key.is_some() {
        c.push(
            path.clone(),
            Kind::Conflict {
                field: "dedup_property",
                with: "with `dedup_key`",
                hint: "a trigger takes its message id from one place; keep one of them",
            },
        );
    }
    if protocol != Protocol::V5 {
        c.push(
            path,
            Kind::Conflict {
                field: "dedup_property",
                with: "with broker.protocol = \"3.1.1\"",
                hint: "user properties are MQTT 5; set protocol = \"5\" in [broker]",
            },
        );
    }
}

fn store(c: &mut Checker, path: &FieldPath, store: &super::StoreConfig) {
    c.range(
        path.key("group_commit_ms"),
        store.group_commit_ms,
        0,
        max::GROUP_COMMIT_MS,
    );
    c.range(
        path.key("group_commit_max"),
        store.group_commit_max.into(),
        1,
        max::GROUP_COMMIT,
    );
    c.range(
        path.key("outbox_max_mb"),
        store.outbox_max_mb.into(),
        1,
        max::OUTBOX_MB,
    );
    c.range(
        path.key("keep_versions"),
        store.keep_versions.into(),
        1,
        1000,
    );
}

/// A local emit must fit through the local broker: the embedded one closes
/// the connection on a packet over its limit, which would hold every row
/// behind that one. (An external broker's limit is its own config; the
/// outbox dead-letters what a broker keeps refusing.)
fn emit_size(c: &mut Checker, path: &FieldPath, limits: &Limits, broker: &BrokerConfig) {
    #[cfg(feature = "embedded-broker")]
    let embedded_max = super::EMBEDDED_MAX_EMIT_BYTES as u64;
    #[cfg(not(feature = "embedded-broker"))]
    let embedded_max = MAX_MQTT_PAYLOAD;
    if broker.mode == BrokerMode::Embedded && u64::from(limits.max_emit_bytes) > embedded_max {
        c.push(
            path.key("max_emit_bytes"),
            Kind::Conflict {
                field: "max_emit_bytes",
                with: "with the embedded broker",
                hint: "the embedded broker carries messages of up to 2 MiB (payload and topic); lower max_emit_bytes to 2,031,601 or less, or use an external broker",
            },
        );
    }
}

fn limits(c: &mut Checker, path: &FieldPath, limits: &Limits) {
    c.range(path.key("fuel"), limits.fuel, 1, max::FUEL);
    c.range(
        path.key("memory_mb"),
        limits.memory_mb.into(),
        1,
        MAX_MEMORY_MB.into(),
    );
    c.range(
        path.key("timeout_ms"),
        limits.timeout_ms,
        1,
        max::TIMEOUT_MS,
    );
    c.range(
        path.key("concurrency"),
        limits.concurrency.into(),
        1,
        max::CONCURRENCY,
    );
    c.range(path.key("queue"), limits.queue.into(), 1, max::QUEUE);
    c.range(
        path.key("warm_instances"),
        limits.warm_instances.into(),
        0,
        max::WARM_INSTANCES,
    );
    c.range(
        path.key("max_emits"),
        limits.max_emits.into(),
        0,
        max::EMITS,
    );
    c.range(
        path.key("max_emit_bytes"),
        limits.max_emit_bytes.into(),
        1,
        MAX_MQTT_PAYLOAD,
    );
    c.range(
        path.key("max_kv_value_bytes"),
        limits.max_kv_value_bytes.into(),
        1,
        MAX_KV_VALUE_BYTES,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycles(grants: &[(&str, &[&str])]) -> Vec<(usize, String)> {
        let owned: Vec<(&str, Vec<String>)> = grants
            .iter()
            .map(|(name, to)| (*name, to.iter().map(|s| s.to_string()).collect()))
            .collect();
        let borrowed: Vec<(&str, &[String])> =
            owned.iter().map(|(n, to)| (*n, to.as_slice())).collect();
        invoke_cycles(&borrowed)
            .into_iter()
            .map(|(i, names)| (i, names.join(" -> ")))
            .collect()
    }

    #[test]
    fn invoke_loops_are_found_once_each() {
        assert_eq!(cycles(&[("a", &["a"])]), [(0, "a -> a".to_owned())]);
        assert_eq!(
            cycles(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]),
            [(0, "a -> b -> c -> a".to_owned())]
        );
        // Reported at the lowest member, wherever the chain enters it.
        assert_eq!(
            cycles(&[("entry", &["x"]), ("x", &["y"]), ("y", &["x"])]),
            [(1, "x -> y -> x".to_owned())]
        );
        assert_eq!(
            cycles(&[("a", &["a", "b"]), ("b", &["b"])]),
            [(0, "a -> a".to_owned()), (1, "b -> b".to_owned())]
        );
    }

    #[test]
    fn invoke_chains_without_loops_are_fine() {
        assert!(cycles(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[])]).is_empty());
        // Unknown names are reported elsewhere; here they lead nowhere.
        assert!(cycles(&[("a", &["nope"])]).is_empty());
        assert!(cycles(&[]).is_empty());
    }

    #[test]
    fn gateway_ids_are_safe_in_client_ids_and_topics() {
        for ok in ["wasmgate", "gw-1", "Plant_A.line-2", &"x".repeat(64)] {
            assert!(is_gateway_id(ok), "{ok}");
        }
        for bad in ["", "gw/1", "gw 1", "gw+", "gw#", &"x".repeat(65), "é"] {
            assert!(!is_gateway_id(bad), "{bad}");
        }
    }

    #[test]
    fn function_names_are_lowercase_slugs() {
        for ok in ["vending", "a", "robot_pose-2", &"x".repeat(64)] {
            assert!(is_function_name(ok), "{ok}");
        }
        for bad in ["", "Vending", "a.b", "a/b", "a b", &"x".repeat(65)] {
            assert!(!is_function_name(bad), "{bad}");
        }
    }
}

//! Config tests: each feeds TOML text and checks what a user would see.

use super::*;

/// Every error message for `text`, as `config check` would print them.
#[track_caller]
fn errors(text: &str) -> Vec<String> {
    match Config::from_toml_str(text, "gateway.toml") {
        Ok(_) => panic!("expected errors, the config is valid:\n{text}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[track_caller]
fn valid(text: &str) -> Config {
    Config::from_toml_str(text, "gateway.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// A config with one valid function, to which tests append.
const ONE_FUNCTION: &str = r#"
[[functions]]
name = "vending"
wasm = "vending.wasm"
triggers = [{ mqtt = "vending/+/telemetry" }]
"#;

const FULL: &str = r#"
gateway_id = "plant-7"
data_dir = "/var/lib/wasmgate"

[broker]
mode = "external"
host = "10.0.0.2"
port = 8884
client_id = "wasmgate-plant-7-local"
username = "gateway"
password = "hunter2"
tls = { ca = "ca.pem", cert = "gw.crt", key = "gw.key" }

[upstream]
host = "cloud.example.com"
tls = { ca = "cloud-ca.pem" }

[[functions]]
name = "vending"
wasm = "functions/examples/wasm/vending_telemetry.wasm"
triggers = [
  { mqtt = "vending/+/telemetry", qos = 1 },
  { mqtt = "vending/+/door", qos = 0 },
]

[functions.limits]
fuel = 10_000_000
memory_mb = 8
timeout_ms = 250
concurrency = 4
warm_instances = 0
queue = 64
max_emits = 3
max_emit_bytes = 4096
max_kv_value_bytes = 1024

[functions.grants]
local = ["vending/+/alert"]
upstream = ["telemetry/#"]
invoke = ["audit"]

[functions.config]
max_temp_c = "8"
unit = "celsius"

[[functions]]
name = "audit"
wasm = "audit.wasm"
triggers = [{ mqtt = "$SYS/broker/clients/#" }]
"#;

#[test]
fn a_full_config_parses_into_the_values_written() {
    let config = valid(FULL);
    assert_eq!(config.gateway_id, "plant-7");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/wasmgate"));
    assert_eq!(config.broker.mode, BrokerMode::External);
    assert_eq!(config.broker.effective_port(), 8884);
    assert_eq!(config.broker.listen_addr(), None);
    assert_eq!(config.broker_client_id(), "wasmgate-plant-7-local");
    assert_eq!(
        config.broker.password.as_ref().map(Secret::expose),
        Some("hunter2")
    );
    let upstream = config.upstream.as_ref().unwrap();
    assert_eq!(upstream.effective_port(), MQTTS_PORT);
    assert_eq!(
        config.upstream_client_id().as_deref(),
        Some("wasmgate-plant-7")
    );

    let vending = &config.functions[0];
    assert_eq!(vending.triggers[1].qos, 0);
    assert_eq!(vending.limits.memory_pages(), 128);
    assert_eq!(vending.limits.timeout(), Duration::from_millis(250));
    assert_eq!(vending.config["unit"], "celsius");
    let audit = &config.functions[1];
    assert_eq!(audit.triggers[0].qos, 1, "qos defaults to 1");
    assert_eq!(audit.limits, Limits::default());
    assert_eq!(audit.grants, Grants::default());
    assert_eq!(config.function("audit").map(|(id, _)| id), Some(1));
}

#[test]
fn a_full_config_round_trips_through_toml() {
    let config = valid(FULL);
    let text = toml::to_string(&config).unwrap();
    let again = valid(&text);
    assert_eq!(config, again, "re-serialized as:\n{text}");
}

#[test]
fn an_empty_file_is_a_gateway_with_defaults_and_no_functions() {
    let config = valid("");
    assert_eq!(config, Config::default());
    assert_eq!(config.gateway_id, DEFAULT_GATEWAY_ID);
    assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(config.broker.mode, BrokerMode::Embedded);
    assert_eq!(
        config.broker.listen_addr(),
        Some("127.0.0.1:1883".parse().unwrap()),
        "this machine only, unless told otherwise"
    );
    assert_eq!(config.broker_client_id(), "wasmgate-wasmgate");
    assert_eq!(config.upstream_client_id(), None);
}

#[test]
fn the_default_config_parses_and_validates() {
    let config = valid(Config::default_toml());
    assert_eq!(config.gateway_id, DEFAULT_GATEWAY_ID);
    assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(config.broker, BrokerConfig::default());
    assert_eq!(config.functions.len(), 1);
    assert_eq!(
        config.functions[0].wasm,
        PathBuf::from("functions/vending_telemetry.wasm")
    );
}

#[test]
fn the_default_config_shows_the_real_default_limits() {
    let config = valid(Config::default_toml());
    assert_eq!(config.functions[0].limits, Limits::DEFAULT);
}

#[test]
fn an_invalid_trigger_filter_is_reported_with_its_line() {
    let text = format!("{ONE_FUNCTION}\n[[functions]]\nname = \"b\"\nwasm = \"b.wasm\"\ntriggers = [{{ mqtt = \"a/#/b\" }}]\n");
    assert_eq!(
        errors(&text),
        [
            r#"gateway.toml:10: functions[1].triggers[0].mqtt: invalid topic filter "a/#/b": '#' must be the last level"#
        ]
    );
}

#[test]
fn each_bad_value_is_reported_with_the_right_message_and_line() {
    // (lines appended after ONE_FUNCTION's 4 lines, the expected error)
    let cases: &[(&str, &str)] = &[
        (
            "[functions.limits]\nmemory_mb = 0",
            "gateway.toml:6: functions[0].limits.memory_mb: 0 is out of range: must be between 1 and 4096",
        ),
        (
            "[functions.limits]\nmemory_mb = 8192",
            "gateway.toml:6: functions[0].limits.memory_mb: 8192 is out of range: must be between 1 and 4096",
        ),
        (
            "[functions.limits]\nfuel = 0",
            "gateway.toml:6: functions[0].limits.fuel: 0 is out of range: must be between 1 and 10000000000",
        ),
        (
            "[functions.limits]\ntimeout_ms = 0",
            "gateway.toml:6: functions[0].limits.timeout_ms: 0 is out of range: must be between 1 and 900000",
        ),
        (
            "[functions.limits]\nconcurrency = 0",
            "gateway.toml:6: functions[0].limits.concurrency: 0 is out of range: must be between 1 and 64",
        ),
        (
            "[functions.limits]\nqueue = 0",
            "gateway.toml:6: functions[0].limits.queue: 0 is out of range: must be between 1 and 65535",
        ),
        (
            "[functions.limits]\nmax_emit_bytes = 0",
            "gateway.toml:6: functions[0].limits.max_emit_bytes: 0 is out of range: must be between 1 and 268435455",
        ),
        (
            "[functions.grants]\nlocal = [\"ok/#\", \"a/b+\"]",
            "gateway.toml:6: functions[0].grants.local[1]: invalid topic filter \"a/b+\": a wildcard must occupy a whole level, not be part of \"b+\"",
        ),
        (
            "[functions.grants]\ninvoke = [\"nope\"]",
            "gateway.toml:6: functions[0].grants.invoke[0]: no function named \"nope\" is configured",
        ),
        (
            "[functions.config]\n\"\" = \"x\"",
            "gateway.toml:5: functions[0].config: invalid value \"\": expected a non-empty key",
        ),
    ];
    for (tail, expected) in cases {
        let text = format!("{}{tail}\n", ONE_FUNCTION.trim_start());
        assert_eq!(errors(&text), [*expected], "for:\n{text}");
    }
}

#[test]
fn function_names_must_be_well_formed_and_unique() {
    let text = r#"[[functions]]
name = "Vending Machine"
wasm = "a.wasm"
triggers = [{ mqtt = "a" }]

[[functions]]
name = "dup"
wasm = "a.wasm"
triggers = [{ mqtt = "a" }]

[[functions]]
name = "dup"
wasm = "b.wasm"
triggers = [{ mqtt = "b" }]
"#;
    assert_eq!(
        errors(text),
        [
            r#"gateway.toml:2: functions[0].name: invalid value "Vending Machine": expected 1 to 64 characters from a-z, 0-9, '_' and '-'"#,
            r#"gateway.toml:12: functions[2].name: duplicate function name "dup", already used by functions[1]"#,
        ]
    );
}

#[test]
fn a_function_needs_a_trigger_and_qos_at_most_1() {
    let text = r#"[[functions]]
name = "lazy"
wasm = "a.wasm"
triggers = []

[[functions]]
name = "eager"
wasm = "b.wasm"
triggers = [{ mqtt = "a", qos = 2 }]
"#;
    assert_eq!(
        errors(text),
        [
            "gateway.toml:4: functions[0].triggers: a function needs at least one trigger",
            "gateway.toml:9: functions[1].triggers[0].qos: 2 is out of range: must be between 0 and 1",
        ]
    );
}

#[test]
fn broker_settings_must_fit_the_mode() {
    let embedded =
        "[broker]\nlisten = \"localhost:1883\"\nhost = \"10.0.0.2\"\ntls = { ca = \"ca.pem\" }\n";
    assert_eq!(
        errors(embedded),
        [
            "gateway.toml:2: broker.listen: invalid listen address \"localhost:1883\": invalid socket address syntax (expected ip:port, like \"0.0.0.0:1883\")",
            "gateway.toml:3: broker.host: `host` has no effect with mode = \"embedded\"",
            "gateway.toml:4: broker.tls: `tls` has no effect with mode = \"embedded\"",
        ]
    );

    let external = "[broker]\nmode = \"external\"\nlisten = \"0.0.0.0:1883\"\npassword = \"x\"\ntls = { cert = \"gw.crt\" }\n";
    assert_eq!(
        errors(external),
        [
            "gateway.toml:1: broker.host: `host` is required with mode = \"external\"",
            "gateway.toml:1: broker.username: `username` is required when `password` is set",
            "gateway.toml:3: broker.listen: `listen` has no effect with mode = \"external\"",
            "gateway.toml:5: broker.tls.key: `key` is required when `cert` is set (client certificates need their private key)",
        ]
    );
}

#[test]
fn a_tls_listener_needs_its_own_port_and_a_way_to_tell_devices_apart() {
    let listener = |extra: &str| {
        format!("[broker]\nlisten = \"0.0.0.0:1883\"\nallow_anonymous = false\npasswords = \"p\"\n[broker.tls_listener]\ncert = \"b.crt\"\nkey = \"b.key\"\n{extra}{ONE_FUNCTION}")
    };
    // Passwords tell devices apart on both listeners; the default address is
    // this machine's 8883.
    let config = valid(&listener(""));
    let tls = config.broker.tls_listener.as_ref().unwrap();
    assert_eq!(tls.listen_addr(), Some("127.0.0.1:8883".parse().unwrap()));
    valid(&listener(
        "listen = \"0.0.0.0:8883\"\nclient_ca = \"ca.crt\"\n",
    ));
    assert_eq!(
        errors(&listener("listen = \"0.0.0.0:1883\"\n")),
        ["gateway.toml:8: broker.tls_listener.listen: `listen` cannot be used on broker.listen's address: the TLS listener needs a port of its own (8883 is MQTT over TLS's)"]
    );
    assert_eq!(
        errors(&listener("listen = \"8883\"\n")),
        ["gateway.toml:8: broker.tls_listener.listen: invalid listen address \"8883\": invalid socket address syntax (expected ip:port, like \"0.0.0.0:1883\")"]
    );
    // Reachable, and neither certificates nor passwords: refused.
    let open = format!("[broker.tls_listener]\nlisten = \"0.0.0.0:8883\"\ncert = \"b.crt\"\nkey = \"b.key\"\n{ONE_FUNCTION}");
    let errors_open = errors(&open);
    assert_eq!(errors_open.len(), 1, "{errors_open:?}");
    assert!(
        errors_open[0].starts_with("gateway.toml:2: broker.tls_listener.listen: `listen` cannot be used without `client_ca` or `passwords`"),
        "{errors_open:?}"
    );
    // An external broker has no listener of ours.
    let external = format!("[broker]\nmode = \"external\"\nhost = \"10.0.0.2\"\ntls_listener = {{ cert = \"b.crt\", key = \"b.key\" }}\n{ONE_FUNCTION}");
    assert_eq!(
        errors(&external),
        ["gateway.toml:4: broker.tls_listener: `tls_listener` has no effect with mode = \"external\""]
    );
}

#[test]
fn root_and_upstream_values_are_checked() {
    let text = "gateway_id = \"gw/1\"\ndata_dir = \"\"\n[upstream]\nhost = \"\"\nport = 0\n";
    assert_eq!(
        errors(text),
        [
            "gateway.toml:1: gateway_id: invalid value \"gw/1\": expected 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
            "gateway.toml:2: data_dir: invalid value \"\": expected a directory path",
            "gateway.toml:4: upstream.host: invalid value \"\": expected a host name or IP address",
            "gateway.toml:5: upstream.port: 0 is out of range: must be between 1 and 65535",
        ]
    );
}

#[test]
fn upstream_batching_defaults_and_bad_values() {
    let config = valid(
        "gateway_id = \"gw-1\"\n[upstream]\nhost = \"cloud\"\nbatch = { compression = \"deflate\" }\n",
    );
    let batch = crate::pipeline::upstream_batch(&config).expect("batching on");
    assert_eq!(batch.topic, "wasmgate/gw-1/batch");
    assert_eq!(batch.max_messages, 100);
    assert_eq!(batch.max_bytes, 65_536);
    assert_eq!(batch.max_delay, std::time::Duration::from_secs(1));
    assert_eq!(batch.compression, crate::pipeline::Compression::Deflate);
    assert_eq!(
        crate::pipeline::upstream_batch(&valid("[upstream]\nhost = \"cloud\"\n")),
        None
    );

    let text = "[upstream]\nhost = \"cloud\"\nbatch = { topic = \"up/#\", max_messages = 0, max_bytes = 2000000 }\n";
    assert_eq!(
        errors(text),
        [
            "gateway.toml:3: upstream.batch.topic: invalid value \"up/#\": expected an MQTT topic name without '+', '#' or a leading '$'",
            "gateway.toml:3: upstream.batch.max_messages: 0 is out of range: must be between 1 and 10000",
            "gateway.toml:3: upstream.batch.max_bytes: 2000000 is out of range: must be between 1 and 1048576",
        ]
    );
    assert!(
        errors("[upstream]\nhost = \"cloud\"\nbatch = { compression = \"zstd\" }\n")[0]
            .contains("upstream.batch.compression")
    );
}

#[test]
fn several_problems_in_one_file_are_all_reported_in_line_order() {
    let text = r#"gateway_id = ""

[broker]
mode = "external"

[[functions]]
name = "a"
wasm = "a.wasm"
triggers = [{ mqtt = "x/#/y" }, { mqtt = "" }]

[functions.limits]
memory_mb = 0
concurrency = 0

[functions.grants]
invoke = ["a", "ghost"]
"#;
    let found = errors(text);
    assert_eq!(
        found,
        [
            "gateway.toml:1: gateway_id: invalid value \"\": expected 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
            "gateway.toml:3: broker.host: `host` is required with mode = \"external\"",
            "gateway.toml:9: functions[0].triggers[0].mqtt: invalid topic filter \"x/#/y\": '#' must be the last level",
            "gateway.toml:9: functions[0].triggers[1].mqtt: invalid topic filter \"\": must not be empty",
            "gateway.toml:12: functions[0].limits.memory_mb: 0 is out of range: must be between 1 and 4096",
            "gateway.toml:13: functions[0].limits.concurrency: 0 is out of range: must be between 1 and 64",
            "gateway.toml:16: functions[0].grants.invoke[1]: no function named \"ghost\" is configured",
            "gateway.toml:16: functions[0].grants.invoke: invoke grants form a loop (a -> a); an invocation chain along it would never end",
        ]
    );
    // The whole report prints one problem per line.
    let report = Config::from_toml_str(text, "gateway.toml")
        .unwrap_err()
        .to_string();
    assert_eq!(report.lines().collect::<Vec<_>>(), found);
}

#[test]
fn unknown_fields_are_rejected_with_their_line() {
    let text = format!(
        "{}[functions.limits]\nfuel = 1\nmemory = 16\n",
        ONE_FUNCTION.trim_start()
    );
    let found = errors(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(
            "gateway.toml:7: functions[0].limits.memory: unknown field `memory`, expected one of"
        ),
        "{}",
        found[0]
    );
}

#[test]
fn unknown_fields_everywhere_are_all_reported() {
    let text = r#"gatway_id = "typo"

[broker]
mode = "embedded"
lisen = "0.0.0.0:1883"

[[functions]]
name = "a"
wasm = "a.wasm"
triggers = [{ mqtt = "a", qso = 1 }]

[[functions]]
name = "b"
wasm = "b.wasm"
triggers = [{ mqtt = "b" }]
[functions.grants]
emit = ["x"]
"#;
    let found = errors(text);
    let located: Vec<_> = found
        .iter()
        .map(|e| e.split(": unknown field").next().unwrap())
        .collect();
    assert_eq!(
        located,
        [
            "gateway.toml:1: gatway_id",
            "gateway.toml:5: broker.lisen",
            "gateway.toml:10: functions[0].triggers[0].qso",
            "gateway.toml:17: functions[1].grants.emit",
        ],
        "{found:#?}"
    );
}

#[test]
fn wrong_types_and_missing_fields_are_schema_errors_with_lines() {
    let text = r#"[broker]
mode = "cloud"

[[functions]]
name = "a"
triggers = [{ mqtt = "a" }]

[[functions]]
name = "b"
wasm = "b.wasm"
triggers = [{ mqtt = "b" }]
[functions.limits]
fuel = -1

[[functions]]
name = "c"
wasm = "c.wasm"
triggers = [{ mqtt = "c" }]
[functions.config]
max_temp_c = 8
"#;
    let found = errors(text);
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(
        found[0].starts_with("gateway.toml:2: broker.mode: unknown variant `cloud`"),
        "{}",
        found[0]
    );
    assert!(
        found[1].starts_with("gateway.toml:4: functions[0]: missing field `wasm`"),
        "{}",
        found[1]
    );
    assert!(
        found[2]
            .starts_with("gateway.toml:13: functions[1].limits.fuel: invalid value: integer `-1`"),
        "{}",
        found[2]
    );
    assert!(found[3].starts_with("gateway.toml:20: functions[2].config.max_temp_c: invalid type: integer `8`, expected a string"), "{}", found[3]);
}

#[test]
fn a_syntax_error_is_reported_at_its_line() {
    let text = "gateway_id = \"gw\"\n\n[broker\nmode = \"embedded\"\n";
    let found = errors(text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("gateway.toml:3: "), "{}", found[0]);
}

#[test]
fn validating_a_config_built_in_code_reports_paths_without_lines() {
    let mut config = Config::default();
    config.functions.push(FunctionConfig {
        name: "a".into(),
        wasm: "a.wasm".into(),
        triggers: vec![],
        limits: Limits::default(),
        grants: Grants::default(),
        config: BTreeMap::new(),
        secrets: BTreeMap::new(),
        retry: RetryConfig::default(),
        dead_letters: DeadLetterConfig::default(),
    });
    let found: Vec<String> = config
        .validate()
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        found,
        ["functions[0].triggers: a function needs at least one trigger"]
    );
}

#[test]
fn grants_allow_only_what_they_name() {
    // As the runtime applies them: one rule, in `runtime::Grants`.
    use wasmgate_abi::Destination::{Local, Upstream};
    let config = valid(FULL);
    let grants = crate::pipeline::function_spec(&config.functions[0]).grants;
    assert!(grants.allows_emit("vending/m1/alert", Local));
    assert!(!grants.allows_emit("vending/m1/telemetry", Local));
    assert!(grants.allows_emit("telemetry/plant-7/vending", Upstream));
    assert!(!grants.allows_emit("vending/m1/alert", Upstream));
    assert!(grants.allows_invoke("audit"));
    assert!(!grants.allows_invoke("vending"));

    let mut function = config.functions[0].clone();
    function.grants = Grants::default();
    let defaults = crate::pipeline::function_spec(&function).grants;
    assert!(defaults.allows_emit("anything/at/all", Local));
    assert!(
        !defaults.allows_emit("$SYS/broker/load", Local),
        "default grants keep $ topics out"
    );
    assert!(!defaults.allows_emit("anything", Upstream));
    assert!(!defaults.allows_invoke("audit"));
}

#[test]
fn the_router_sends_each_trigger_to_its_function() {
    let config = valid(FULL);
    let router = config.router();
    assert_eq!(router.route("vending/m1/telemetry"), vec![0]);
    assert_eq!(router.route("vending/m1/door"), vec![0]);
    assert_eq!(router.route("$SYS/broker/clients/connected"), vec![1]);
    assert!(router.route("robots/r1/pose").is_empty());
}

#[test]
fn passwords_stay_out_of_debug_output() {
    let config = valid(FULL);
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"));
    assert!(debug.contains("Secret(***)"));
}

#[test]
fn load_resolves_relative_paths_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, FULL).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(
        config.source_name(),
        Some(path.display().to_string().as_str())
    );
    assert_eq!(
        config.data_dir,
        PathBuf::from("/var/lib/wasmgate"),
        "absolute paths stay"
    );
    assert_eq!(config.functions[1].wasm, dir.path().join("audit.wasm"));
    let tls = config.broker.tls.as_ref().unwrap();
    assert_eq!(tls.ca.as_deref(), Some(dir.path().join("ca.pem").as_path()));
}

#[test]
fn load_reports_an_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let errors = Config::load(&path).unwrap_err();
    assert_eq!(errors.len(), 1);
    let message = errors.to_string();
    assert!(
        message.starts_with(&format!(
            "{}: cannot read the config file: ",
            path.display()
        )),
        "{message}"
    );
}

#[test]
fn check_files_reports_missing_and_unreadable_files_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("present.wasm"), b"\0asm").unwrap();
    std::fs::create_dir(dir.path().join("dir.wasm")).unwrap();
    let text = r#"[[functions]]
name = "present"
wasm = "present.wasm"
triggers = [{ mqtt = "a" }]

[[functions]]
name = "absent"
wasm = "absent.wasm"
triggers = [{ mqtt = "b" }]

[[functions]]
name = "directory"
wasm = "dir.wasm"
triggers = [{ mqtt = "c" }]
"#;
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let found: Vec<String> = config
        .check_files()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(found.len(), 2, "{found:#?}");
    let prefix = path.display().to_string();
    assert!(
        found[0].starts_with(&format!(
            "{prefix}:8: functions[1].wasm: cannot read {}",
            dir.path().join("absent.wasm").display()
        )),
        "{}",
        found[0]
    );
    assert_eq!(
        found[1],
        format!(
            "{prefix}:13: functions[2].wasm: {} is not a regular file",
            dir.path().join("dir.wasm").display()
        )
    );
}

#[test]
fn the_default_config_shows_the_real_retry_and_dead_letter_defaults() {
    let config = valid(Config::default_toml());
    assert_eq!(config.functions[0].retry, RetryConfig::default());
    assert_eq!(
        config.functions[0].dead_letters,
        DeadLetterConfig::default()
    );
}

#[test]
fn mqtt_5_is_chosen_per_connection_and_3_1_1_is_the_default() {
    let config = valid(&format!(
        "[broker]\nmode = \"external\"\nhost = \"10.0.0.2\"\nprotocol = \"5\"\n[upstream]\nhost = \"cloud\"\nprotocol = \"5\"\n{ONE_FUNCTION}"
    ));
    assert_eq!(config.broker.protocol, Protocol::V5);
    assert_eq!(
        config.upstream.as_ref().map(|u| u.protocol),
        Some(Protocol::V5)
    );
    let defaults = valid(&format!("[upstream]\nhost = \"cloud\"\n{ONE_FUNCTION}"));
    assert_eq!(defaults.broker.protocol, Protocol::V311);
    assert_eq!(
        defaults.upstream.as_ref().map(|u| u.protocol),
        Some(Protocol::V311)
    );
    let text = toml::to_string(&config).unwrap();
    assert_eq!(valid(&text), config, "re-serialized as:\n{text}");
}

#[test]
fn an_unknown_protocol_version_is_a_schema_error() {
    let errors = errors("[upstream]\nhost = \"cloud\"\nprotocol = \"4\"\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("gateway.toml:3: upstream.protocol: ") && errors[0].contains("3.1.1"),
        "{errors:?}"
    );
}

#[test]
fn retries_default_to_failures_that_may_pass_next_time() {
    let config = valid(ONE_FUNCTION);
    let retry = &config.functions[0].retry;
    assert_eq!(retry.attempts, 3);
    assert!(retry.retry_on.contains(&FailureKind::Trap));
    assert!(retry.retry_on.contains(&FailureKind::Deadline));
    assert!(!retry.retry_on.contains(&FailureKind::Abi));
    assert_eq!(config.functions[0].dead_letters.topic, None);
}

#[test]
fn retry_on_accepts_timeout_for_deadline() {
    let text = format!(
        "{ONE_FUNCTION}[functions.retry]\nattempts = 5\nretry_on = [\"timeout\", \"failed\"]\n\
         [functions.dead_letters]\ntopic = \"dlq/vending\"\n"
    );
    let config = valid(&text);
    let f = &config.functions[0];
    assert_eq!(f.retry.attempts, 5);
    assert_eq!(
        f.retry.retry_on,
        [FailureKind::Deadline, FailureKind::Failed]
    );
    assert_eq!(f.dead_letters.topic.as_deref(), Some("dlq/vending"));
}

#[test]
fn bad_retry_and_dead_letter_settings_are_all_reported() {
    let text = format!(
        "{ONE_FUNCTION}[functions.retry]\nattempts = 0\ninitial_backoff_ms = 500\nmax_backoff_ms = 100\n\
         jitter_percent = 101\n[functions.dead_letters]\nkeep = 0\ntopic = \"dlq/#\"\n"
    );
    assert_eq!(
        errors(&text),
        [
            "gateway.toml:7: functions[0].retry.attempts: 0 is out of range: must be between 1 and 100",
            "gateway.toml:9: functions[0].retry.max_backoff_ms: 100 is out of range: must be between 500 and 3600000",
            "gateway.toml:10: functions[0].retry.jitter_percent: 101 is out of range: must be between 0 and 100",
            "gateway.toml:12: functions[0].dead_letters.keep: 0 is out of range: must be between 1 and 1000000",
            r#"gateway.toml:13: functions[0].dead_letters.topic: invalid value "dlq/#": expected an MQTT topic name without `+`, `#` or a leading `$`"#,
        ]
    );
}

#[test]
fn an_unknown_failure_kind_is_a_schema_error_with_its_line() {
    let text = format!("{ONE_FUNCTION}[functions.retry]\nretry_on = [\"trap\", \"oops\"]\n");
    let found = errors(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("gateway.toml:7: functions[0].retry.retry_on[1]: "),
        "{}",
        found[0]
    );
    assert!(found[0].contains("oops"), "{}", found[0]);
}

#[test]
fn the_embedded_broker_stays_mqtt_3_1_1() {
    assert_eq!(
        errors("[broker]\nprotocol = \"5\"\n"),
        ["gateway.toml:2: broker.protocol: `protocol = \"5\"` cannot be used with mode = \"embedded\": the embedded broker speaks MQTT 3.1.1 to devices; use mode = \"external\" with an MQTT 5 broker (mosquitto, EMQX, HiveMQ)"]
    );
}

#[test]
fn a_dedup_property_needs_mqtt_5_and_excludes_a_dedup_key() {
    const MQTT5: &str = "[broker]\nmode = \"external\"\nhost = \"10.0.0.2\"\nprotocol = \"5\"\n";
    let ok = valid(&format!(
        "{MQTT5}[[functions]]\nname = \"f\"\nwasm = \"f.wasm\"\ntriggers = [{{ mqtt = \"a/#\", dedup_property = \"msg-id\" }}]\n"
    ));
    assert_eq!(
        ok.functions[0].triggers[0].dedup_property.as_deref(),
        Some("msg-id")
    );

    let both = format!(
        "{MQTT5}[[functions]]\nname = \"f\"\nwasm = \"f.wasm\"\ntriggers = [\n  {{ mqtt = \"a/#\", dedup_key = \"id\", dedup_property = \"msg-id\" }},\n  {{ mqtt = \"b/#\", dedup_property = \"\" }},\n]\n"
    );
    assert_eq!(
        errors(&both),
        [
            "gateway.toml:9: functions[0].triggers[0].dedup_property: `dedup_property` cannot be used with `dedup_key`: a trigger takes its message id from one place; keep one of them",
            "gateway.toml:10: functions[0].triggers[1].dedup_property: invalid value \"\": expected the name of an MQTT 5 user property",
        ]
    );

    let v311 = "[[functions]]\nname = \"f\"\nwasm = \"f.wasm\"\ntriggers = [{ mqtt = \"a/#\", dedup_property = \"msg-id\" }]\n";
    assert_eq!(
        errors(v311),
        ["gateway.toml:4: functions[0].triggers[0].dedup_property: `dedup_property` cannot be used with broker.protocol = \"3.1.1\": user properties are MQTT 5; set protocol = \"5\" in [broker]"]
    );
}

#[test]
fn secrets_are_read_from_a_file_an_environment_variable_or_a_credential() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("up.pass"), "from-file-7f3a\n").unwrap();
    std::fs::create_dir(dir.path().join("creds")).unwrap();
    std::fs::write(dir.path().join("creds/api"), "from-credential-9c1d").unwrap();
    // SAFETY-free: std::env::set_var is safe in edition 2021; the variable
    // names are this test's own.
    std::env::set_var("WASMGATE_TEST_BROKER_PW", "from-env-42b8");
    std::env::set_var("CREDENTIALS_DIRECTORY", dir.path().join("creds"));
    let text = r#"
[broker]
mode = "external"
host = "broker.local"
username = "gw"
password = { env = "WASMGATE_TEST_BROKER_PW" }

[upstream]
host = "cloud.example.com"
username = "gw"
password = { file = "up.pass" }

[[functions]]
name = "vending"
wasm = "vending.wasm"
triggers = [{ mqtt = "vending/+/telemetry" }]
[functions.grants]
secrets = ["api"]
[functions.secrets]
api = { credential = "api" }
"#;
    let mut config = Config::parse(text, "gateway.toml").unwrap();
    assert!(config.resolve_secrets(dir.path()).is_empty());
    assert_eq!(
        config.broker.password.as_ref().unwrap().expose(),
        "from-env-42b8"
    );
    let upstream = config.upstream.as_ref().unwrap();
    assert_eq!(
        upstream.password.as_ref().unwrap().expose(),
        "from-file-7f3a"
    );
    assert_eq!(
        config.functions[0].secrets["api"].expose(),
        "from-credential-9c1d"
    );
    let shown = format!("{config:?}");
    for secret in ["from-env-42b8", "from-file-7f3a", "from-credential-9c1d"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(config.validate().is_ok());
}

#[test]
fn a_secret_that_cannot_be_read_is_named_and_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[broker]
mode = "external"
host = "broker.local"
username = "gw"
password = { env = "WASMGATE_TEST_UNSET_VARIABLE" }
[upstream]
host = "cloud.example.com"
password = { file = "missing.pass" }
[[functions]]
name = "vending"
wasm = "vending.wasm"
triggers = [{ mqtt = "vending/+/telemetry" }]
[functions.grants]
secrets = ["nope"]
"#;
    let mut config = Config::parse(text, "gateway.toml").unwrap();
    let errors: Vec<String> = config
        .resolve_secrets(dir.path())
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("gateway.toml:6: broker.password")
            && errors[0].contains("WASMGATE_TEST_UNSET_VARIABLE"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("upstream.password") && errors[1].contains("missing.pass"),
        "{errors:?}"
    );
    let invalid = config.validate().unwrap_err().to_string();
    assert!(invalid.contains("grants.secrets[0]"), "{invalid}");
}

#[test]
fn the_api_listener_needs_its_token_file_and_keep_versions_is_bounded() {
    let api = |section: &str| errors(&format!("{section}\n[store]\nkeep_versions = 0\n"));
    let found = api("[api]\nlisten = \"127.0.0.1:9080\"");
    assert!(
        found
            .iter()
            .any(|e| e.contains("api.token_file") && e.contains("required")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|e| e.contains("store.keep_versions")),
        "{found:?}"
    );
    let found = api("[api]\ntoken_file = \"token\"");
    assert!(
        found
            .iter()
            .any(|e| e.contains("api.token_file") && e.contains("no effect")),
        "{found:?}"
    );
    let found = api("[api]\nlisten = \"nowhere\"\ntoken_file = \"token\"");
    assert!(found.iter().any(|e| e.contains("api.listen")), "{found:?}");
}

#[test]
fn a_trigger_is_labelled_by_its_kind_and_what_it_listens_to() {
    let config = valid(
        r#"
[[functions]]
name = "f"
wasm = "f.wasm"
triggers = [
    { mqtt = "vending/+/telemetry" },
    { http = "GET /state/{id}" },
    { websocket = "/live" },
    { schedule = "rate(5 minutes)" },
    { kv_change = "stock", keys = "vm-*" },
    { kv_change = "stock" },
]

[[functions]]
name = "stock"
wasm = "stock.wasm"
triggers = [{ mqtt = "stock/#" }]
"#,
    );
    let labels: Vec<String> = config.functions[0]
        .triggers
        .iter()
        .map(|t| t.label())
        .collect();
    assert_eq!(
        labels,
        [
            "mqtt:vending/+/telemetry",
            "http:GET /state/{id}",
            "websocket:/live",
            "schedule:rate(5 minutes)",
            "kv_change:stock/vm-*",
            "kv_change:stock",
        ]
    );
}

#[test]
fn qos0_when_full_is_for_mqtt_triggers() {
    let config = valid(
        "[[functions]]\nname = \"f\"\nwasm = \"f.wasm\"\ntriggers = [{ mqtt = \"a/#\", qos = 0, qos0_when_full = \"drop\" }]\n",
    );
    assert_eq!(
        config.functions[0].triggers[0].qos0_when_full,
        Some(crate::config::Qos0WhenFull::Drop)
    );
    let found = errors(
        "[[functions]]\nname = \"f\"\nwasm = \"f.wasm\"\ntriggers = [{ schedule = \"rate(1 minute)\", qos0_when_full = \"wait\" }]\n",
    );
    assert!(
        found.iter().any(|e| e.contains("qos0_when_full")),
        "{found:?}"
    );
}

#[test]
fn a_shared_trigger_subscribes_its_group_and_names_bad_ones() {
    let config = valid(
        "[[functions]]\nname = \"f\"\nwasm = \"f.wasm\"\ntriggers = [{ mqtt = \"vending/+/telemetry\", share = \"site-a\" }, { mqtt = \"robot/#\" }]\n",
    );
    let subscriptions: Vec<_> = config.functions[0]
        .triggers
        .iter()
        .filter_map(TriggerConfig::subscription)
        .collect();
    assert_eq!(
        subscriptions,
        ["$share/site-a/vending/+/telemetry", "robot/#"]
    );
    // Every mistake at once: a group with a slash, one written into the
    // filter, one on a schedule.
    let found = errors(
        "[[functions]]\nname = \"f\"\nwasm = \"f.wasm\"\ntriggers = [\
         { mqtt = \"a/#\", share = \"site/a\" }, { mqtt = \"$share/g/b/#\" }, \
         { schedule = \"rate(1 minute)\", share = \"g\" }, { mqtt = \"c/#\", share = \"\" }]\n",
    );
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(
        found[0].contains("triggers[0].share") && found[0].contains("without '/'"),
        "{found:?}"
    );
    assert!(
        found[1].contains("triggers[1].mqtt") && found[1].contains("share = "),
        "{found:?}"
    );
    assert!(
        found[2].contains("triggers[2].share") && found[2].contains("without `mqtt`"),
        "{found:?}"
    );
    assert!(found[3].contains("triggers[3].share"), "{found:?}");
}

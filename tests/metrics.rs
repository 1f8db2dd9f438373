//! `/metrics` against the real binary: a Prometheus scrape of a running
//! gateway shows what its functions did, per function and version, and
//! what the store and the outbox did; on an address of its own
//! (`[metrics] listen`) and on the management API.

mod support;

use std::time::Duration;
use support::gateway::{example_wasm, wasmgate, GatewayProcess};
use support::mqtt::{free_port, unique_id, wait_until, MqttClient};
use support::rig::telemetry;

const ONE: Duration = Duration::from_secs(60);

fn scrape(port: u16) -> (String, String) {
    let (_, text) = support::http::request(port, "GET", "/metrics", "", "");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_lowercase(), body.to_owned())
}

/// The value of the sample `name{labels}` in an exposition.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_scrape_shows_each_functions_events_outcomes_versions_and_the_outbox() {
    let (broker, metrics, http) = (free_port(), free_port(), free_port());
    let gateway = GatewayProcess::start_toml(|dir| {
        std::fs::write(dir.join("keys"), "key-for-the-tablet-7f3a\n").unwrap();
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [[functions]]\nname = \"enrich\"\nwasm = {wasm:?}\ntriggers = [{{ mqtt = \"vending/#\" }}]\n\
             [functions.grants]\nupstream = [\"telemetry/#\"]\n[functions.retry]\nattempts = 1\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n\
             [[functions]]\nname = \"hello\"\nwasm = {hello:?}\ntriggers = [{{ http = \"GET /hello\" }}, {{ http = \"GET /private\", auth = {{ api_keys = {{ file = \"keys\" }} }} }}, {{ http = \"GET /inline\", auth = {{ api_keys = \"inline-key-5d1e-99aa\" }} }}]\n",
            data = dir.join("data").display().to_string(),
            wasm = example_wasm("telemetry_enrich.wasm").display().to_string(),
            hello = example_wasm("hello_http.wasm").display().to_string(),
        )
    });
    // Two HTTP requests: one answered by the function, one refused (401).
    for target in ["/hello", "/private"] {
        let (_, text) = support::http::request(http, "GET", target, "", "");
        assert!(text.starts_with("HTTP/1.1 "), "{text}");
    }
    let outputs = MqttClient::connect(broker, &unique_id("outputs"));
    outputs.subscribe("telemetry/#");
    let device = MqttClient::connect(broker, &unique_id("vm-1"));
    for seq in 0..20 {
        device.publish("vending/vm-1/telemetry", telemetry(seq, 5.0));
    }
    // One it cannot take: failed, dead-lettered.
    device.publish("vending/not-telemetry", "{}");
    device.wait_acked(ONE);
    let mut got = 0;
    outputs.collect_until(Duration::from_secs(10), |_| {
        got += 1;
        got == 20
    });
    assert_eq!(got, 20, "{}", gateway.logs());

    let fn_ = "{function=\"enrich\"}";
    let (head, body) = scrape(metrics);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    // The counters settle as the last acks and deliveries go out.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, body) = scrape(metrics);
            sample(&body, &format!("wasmgate_function_dead_letters_total{fn_}")) == Some(1.0)
                && sample(
                    &body,
                    "wasmgate_outbox_delivered_total{destination=\"upstream\"}",
                ) >= Some(20.0)
        }),
        "{}",
        scrape(metrics).1
    );
    let (_, body) = scrape(metrics);
    assert_eq!(
        sample(&body, &format!("wasmgate_function_events_total{fn_}")),
        Some(21.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "wasmgate_function_invocations_total{function=\"enrich\",outcome=\"ok\"}"
        ),
        Some(20.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "wasmgate_function_invocations_total{function=\"enrich\",outcome=\"failed\"}"
        ),
        Some(1.0),
        "{body}"
    );
    // The other failure kinds are there, at 0.
    assert_eq!(
        sample(
            &body,
            "wasmgate_function_invocations_total{function=\"enrich\",outcome=\"deadline\"}"
        ),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            &format!("wasmgate_function_duration_seconds_count{fn_}")
        ),
        Some(21.0),
        "{body}"
    );
    assert!(
        body.contains("# TYPE wasmgate_function_duration_seconds histogram"),
        "{body}"
    );
    assert!(
        sample(
            &body,
            "wasmgate_function_duration_seconds_bucket{le=\"+Inf\",function=\"enrich\"}"
        ) == Some(21.0)
            || sample(
                &body,
                "wasmgate_function_duration_seconds_bucket{function=\"enrich\",le=\"+Inf\"}"
            ) == Some(21.0),
        "{body}"
    );
    let version = body
        .lines()
        .find_map(|l| {
            l.strip_prefix("wasmgate_function_live_share{function=\"enrich\",version=\"")?
                .split_once('"')
                .map(|(v, rest)| (v.to_owned(), rest.to_owned()))
        })
        .expect("a live share line");
    assert_eq!(version.1.trim(), "} 1.0", "{body}");
    assert_eq!(version.0.len(), 12, "{version:?}");
    assert!(
        sample(&body, "wasmgate_store_commits_total") >= Some(20.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &format!("wasmgate_function_in_flight{fn_}")),
        Some(0.0),
        "{body}"
    );
    // Per version: invocations by result, and what they used.
    let v = format!("{{function=\"enrich\",version=\"{}\"", version.0);
    let of = |series: &str, rest: &str| sample(&body, &format!("{series}{v}{rest}"));
    assert_eq!(
        of(
            "wasmgate_function_version_invocations_total",
            ",outcome=\"ok\"}"
        ),
        Some(20.0),
        "{body}"
    );
    assert_eq!(
        of(
            "wasmgate_function_version_invocations_total",
            ",outcome=\"failed\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        of("wasmgate_function_fuel_count", "}"),
        Some(21.0),
        "{body}"
    );
    assert!(
        of("wasmgate_function_fuel_sum", "}") > Some(1000.0),
        "{body}"
    );
    assert_eq!(
        of("wasmgate_function_run_seconds_count", "}"),
        Some(21.0),
        "{body}"
    );
    // One 64 KiB page at least.
    assert!(
        of("wasmgate_function_peak_memory_bytes", "}") >= Some(65536.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &format!("wasmgate_function_queued{fn_}")),
        Some(0.0),
        "{body}"
    );
    // The store's transactions: how long, and how many invocations each.
    assert!(
        sample(&body, "wasmgate_store_commit_seconds_count") >= Some(1.0),
        "{body}"
    );
    assert!(
        sample(&body, "wasmgate_store_commit_invocations_sum") >= Some(20.0),
        "{body}"
    );
    // The links, and the embedded broker's connections (reported each
    // second): the two test clients, and the gateway's own sessions.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, body) = scrape(metrics);
            sample(&body, "wasmgate_broker_connections{listener=\"devices\"}") >= Some(2.0)
                && sample(&body, "wasmgate_broker_connections{listener=\"gateway\"}") >= Some(1.0)
                && sample(&body, "wasmgate_outbox_rows{destination=\"upstream\"}") == Some(0.0)
        }),
        "{}",
        scrape(metrics).1
    );
    let (_, body) = scrape(metrics);
    for d in ["local", "upstream"] {
        let link = format!("{{destination=\"{d}\"}}");
        assert_eq!(
            sample(&body, &format!("wasmgate_link_connected{link}")),
            Some(1.0),
            "{body}"
        );
        assert!(
            sample(&body, &format!("wasmgate_link_connects_total{link}")) >= Some(1.0),
            "{body}"
        );
        assert_eq!(
            sample(&body, &format!("wasmgate_outbox_oldest_age_seconds{link}")),
            Some(0.0),
            "{body}"
        );
    }
    assert_eq!(
        sample(&body, "wasmgate_broker_restarts_total"),
        Some(0.0),
        "{body}"
    );
    // HTTP responses by status class, for a function with routes only.
    let http = |class: &str| {
        sample(
            &body,
            &format!(
                "wasmgate_function_http_responses_total{{function=\"hello\",status=\"{class}\"}}"
            ),
        )
    };
    assert_eq!(
        (http("2xx"), http("4xx"), http("5xx")),
        (Some(1.0), Some(1.0), Some(0.0)),
        "{body}"
    );
    assert!(
        !body.contains("wasmgate_function_http_responses_total{function=\"enrich\""),
        "{body}"
    );
    // The management API shows a function's triggers, but not the API
    // keys of its routes (an inline key would be there in the clear).
    let config = gateway.config_path().display().to_string();
    let functions = wasmgate(&["functions", "--config", &config, "--json"], ONE);
    assert_eq!(functions.code, Some(0), "{functions:?}");
    assert!(
        functions.stdout.contains("(api keys not shown)")
            && !functions.stdout.contains("inline-key-5d1e-99aa"),
        "{}",
        functions.stdout
    );
}

/// Reports one counter named by each MQTT payload (`seen{device="vm-1"}`),
/// as a function that puts a device id in a label would.
fn counter_per_payload() -> Vec<u8> {
    support::guest::mqtt_guest(
        r#"(import "wasmgate" "metric" (func $metric (param i32 i32 i32 f64) (result i32)))"#,
        "",
        // Its status is ignored, as a careless guest would.
        r#"(drop (call $metric (local.get $payload) (local.get $payload_len) (i32.const 0) (f64.const 1)))
    (i32.const 0)"#,
    )
}

#[test]
fn functions_report_metrics_of_their_own_within_bounds() {
    let (broker, metrics) = (free_port(), free_port());
    let gateway = GatewayProcess::start_toml(|dir| {
        std::fs::write(dir.join("labels.wasm"), counter_per_payload()).unwrap();
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [[functions]]\nname = \"vending\"\nwasm = {wasm:?}\ntriggers = [{{ mqtt = \"vending/+/telemetry\" }}]\n\
             [functions.grants]\nlocal = [\"vending/#\"]\nupstream = [\"telemetry/#\"]\n\
             [[functions]]\nname = \"per-device\"\nwasm = \"labels.wasm\"\ntriggers = [{{ mqtt = \"seen/#\" }}]\n\
             [[functions]]\nname = \"per_device\"\nwasm = \"labels.wasm\"\ntriggers = [{{ mqtt = \"clash/#\" }}]\n",
            data = dir.join("data").display().to_string(),
            wasm = example_wasm("vending_telemetry.wasm").display().to_string(),
        )
    });
    let device = MqttClient::connect(broker, &unique_id("vm-1"));
    for (seq, temp) in [(1, 4.0), (2, 6.0), (3, 9.5)] {
        device.publish("vending/vm-1/telemetry", telemetry(seq, temp));
    }
    // A label per device: past 256 label sets, refused and counted.
    for i in 0..300 {
        device.publish("seen/x", format!("seen{{device=\"vm-{i}\"}}"));
    }
    // Not a metric name: the guest gets INVALID_ARGUMENT, nothing is
    // kept, each is counted, and the gateway's log says so at most once a
    // second, not once an invocation.
    for _ in 0..20 {
        device.publish("seen/x", "not a name!");
    }
    // `per_device`'s `seen_total` counter is exported under the name of
    // `per-device`'s `seen` (the encoder adds `_total`): left out, or the
    // scrape would hold one family twice and a scraper would refuse it all.
    device.publish("clash/x", "seen_total{device=\"vm-1\"}");
    device.wait_acked(ONE);
    let refused = "wasmgate_function_custom_metrics_refused_total{function=\"per-device\"}";
    assert!(
        wait_until(ONE, || {
            let (_, body) = scrape(metrics);
            sample(&body, refused) == Some(44.0)
                && sample(&body, "wasmgate_fn_vending_temperature_c_count") == Some(3.0)
        }),
        "{}\n{}",
        scrape(metrics).1,
        gateway.logs()
    );
    let (_, body) = scrape(metrics);
    assert!(
        body.contains("# TYPE wasmgate_fn_vending_temperature_c histogram"),
        "{body}"
    );
    assert_eq!(
        sample(&body, "wasmgate_fn_vending_temperature_c_sum"),
        Some(19.5),
        "{body}"
    );
    // 4.0 and 6.0 are at most 10; 9.5 too: three in the le="10" bucket.
    assert_eq!(
        sample(
            &body,
            "wasmgate_fn_vending_temperature_c_bucket{le=\"10.0\"}"
        ),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "wasmgate_fn_vending_warm_alerts_total"),
        Some(1.0),
        "{body}"
    );
    // The function's name, `-` and all, becomes a metric name.
    let series = body
        .lines()
        .filter(|l| l.starts_with("wasmgate_fn_per_device_seen_total{device="))
        .count();
    assert_eq!(series, 256, "{body}");
    assert_eq!(
        sample(&body, "wasmgate_fn_per_device_seen_total{device=\"vm-7\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            "wasmgate_function_refused_effects_total{function=\"per-device\"}"
        ),
        Some(20.0),
        "{body}"
    );
    let logged = gateway.log_lines_with(&["not a name!"]).len();
    assert!((1..20).contains(&logged), "{logged}\n{}", gateway.logs());
    // Refusals are warned of once, then only counted.
    assert_eq!(
        gateway.log_lines_with(&["custom metrics refused"]).len(),
        1,
        "{}",
        gateway.logs()
    );
    assert_eq!(
        body.matches("# TYPE wasmgate_fn_per_device_seen counter")
            .count(),
        1,
        "{body}"
    );
    assert!(!body.contains("_total_total"), "{body}");
    assert_eq!(
        gateway
            .log_lines_with(&["left out of /metrics", "per_device"])
            .len(),
        1,
        "{}",
        gateway.logs()
    );
    // The bad name is named in the gateway's log.
    assert!(gateway.logs().contains("not a name!"), "{}", gateway.logs());
}

/// Spends a few tens of milliseconds of fuel on each event, so that a
/// queue of one is full while the next messages arrive.
fn slow_guest() -> Vec<u8> {
    support::guest::mqtt_guest(
        "",
        "",
        r#"(local.set $attempt (i32.const 2000000))
    (loop $spin
      (local.set $attempt (i32.sub (local.get $attempt) (i32.const 1)))
      (br_if $spin (local.get $attempt)))
    (i32.const 0)"#,
    )
}

/// Invokes `slow` with each message's payload.
fn fan_out_guest() -> Vec<u8> {
    support::guest::mqtt_guest(
        r#"(import "wasmgate" "invoke" (func $invoke (param i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 65000) "slow")"#,
        r#"(drop (call $invoke (i32.const 65000) (i32.const 4) (local.get $payload) (local.get $payload_len)))
    (i32.const 0)"#,
    )
}

/// QoS 0 past a full queue waits by default, as QoS 1 does: the gateway
/// stops reading the session and the broker holds the rest, so a burst
/// far beyond the queue all runs and nothing is dropped in the gateway.
#[test]
fn a_qos0_burst_past_a_full_queue_all_runs_unless_the_trigger_drops() {
    const BURST: u64 = 100;
    let (broker, metrics) = (free_port(), free_port());
    let gateway = GatewayProcess::start_toml(|dir| {
        std::fs::write(dir.join("slow.wasm"), slow_guest()).unwrap();
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [[functions]]\nname = \"slow\"\nwasm = \"slow.wasm\"\n\
             triggers = [{{ mqtt = \"fast/#\", qos = 0 }}]\nlimits = {{ queue = 1 }}\n",
            data = dir.join("data").display().to_string(),
        )
    });
    let device = MqttClient::connect(broker, &unique_id("vm-2"));
    for seq in 0..BURST {
        device.publish("fast/vm-2", format!("{seq}"));
    }
    device.wait_acked(ONE);
    let ok = |body: &str| {
        sample(
            body,
            "wasmgate_function_invocations_total{function=\"slow\",outcome=\"ok\"}",
        )
    };
    assert!(
        wait_until(ONE, || ok(&scrape(metrics).1) == Some(BURST as f64)),
        "{}\n{}",
        scrape(metrics).1,
        gateway.logs()
    );
    let (_, body) = scrape(metrics);
    assert_eq!(
        sample(&body, "wasmgate_function_dropped_total{function=\"slow\"}"),
        Some(0.0),
        "{body}"
    );
}

#[test]
fn each_trigger_counts_its_own_events_drops_and_responses() {
    let (broker, metrics, http) = (free_port(), free_port(), free_port());
    let gateway = GatewayProcess::start_toml(|dir| {
        std::fs::write(dir.join("slow.wasm"), slow_guest()).unwrap();
        std::fs::write(dir.join("fan.wasm"), fan_out_guest()).unwrap();
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n\
             [[functions]]\nname = \"slow\"\nwasm = \"slow.wasm\"\n\
             triggers = [{{ mqtt = \"fast/#\", qos = 0, qos0_when_full = \"drop\" }}, {{ mqtt = \"steady/#\" }}]\nlimits = {{ queue = 1 }}\n\
             [[functions]]\nname = \"hello\"\nwasm = {hello:?}\n\
             triggers = [{{ http = \"GET /hello\" }}, {{ http = \"GET /private\", auth = {{ api_keys = \"key-2f7c-99ab-e001\" }} }}, \
             {{ http = \"POST /queued\", invocation = \"event\" }}]\n\
             [[functions]]\nname = \"fanout\"\nwasm = \"fan.wasm\"\ntriggers = [{{ mqtt = \"fan/#\" }}]\n\
             [functions.grants]\ninvoke = [\"slow\"]\n",
            data = dir.join("data").display().to_string(),
            hello = example_wasm("hello_http.wasm").display().to_string(),
        )
    });
    for target in ["/hello", "/hello", "/private"] {
        let (_, text) = support::http::request(http, "GET", target, "", "");
        assert!(text.starts_with("HTTP/1.1 "), "{text}");
    }
    let (status, text) = support::http::request(http, "POST", "/queued", "", "{}");
    assert_eq!(status, 202, "{text}");
    let device = MqttClient::connect(broker, &unique_id("vm-1"));
    for seq in 0..2 {
        device.publish("fan/vm-1", format!("{seq}"));
    }
    for seq in 0..40 {
        device.publish("fast/vm-1", format!("{seq}"));
    }
    for seq in 0..3 {
        device.publish("steady/vm-1", format!("{seq}"));
    }
    device.wait_acked(ONE);
    let series = |body: &str, name: &str, function: &str, trigger: &str, rest: &str| {
        sample(
            body,
            &format!("{name}{{function=\"{function}\",trigger=\"{trigger}\"{rest}}}"),
        )
    };
    // Every message arrives at QoS 0 or 1: each is either run or dropped.
    let settled = |body: &str| {
        let ok = sample(
            body,
            "wasmgate_function_invocations_total{function=\"slow\",outcome=\"ok\"}",
        );
        let dropped = sample(body, "wasmgate_function_dropped_total{function=\"slow\"}");
        let queued_ran = sample(
            body,
            "wasmgate_function_invocations_total{function=\"hello\",outcome=\"ok\"}",
        ) == Some(3.0);
        queued_ran && ok.zip(dropped).map(|(ok, dropped)| ok + dropped) == Some(45.0)
    };
    assert!(
        wait_until(ONE, || settled(&scrape(metrics).1)),
        "{}\n{}",
        scrape(metrics).1,
        gateway.logs()
    );
    let (_, body) = scrape(metrics);
    let events = |function, trigger| {
        series(
            &body,
            "wasmgate_trigger_events_total",
            function,
            trigger,
            "",
        )
    };
    assert_eq!(events("slow", "mqtt:fast/#"), Some(40.0), "{body}");
    assert_eq!(events("slow", "mqtt:steady/#"), Some(3.0), "{body}");
    let dropped = |trigger| series(&body, "wasmgate_trigger_dropped_total", "slow", trigger, "");
    // QoS 0 past a full queue is dropped; QoS 1 waits instead.
    let fast_dropped = dropped("mqtt:fast/#").expect("the QoS 0 trigger's drops");
    assert!(fast_dropped >= 1.0, "{body}");
    assert_eq!(dropped("mqtt:steady/#"), Some(0.0), "{body}");
    assert_eq!(
        sample(&body, "wasmgate_function_dropped_total{function=\"slow\"}"),
        Some(fast_dropped),
        "{body}"
    );
    // A route's requests and answers are its own; a request refused at
    // the door (401) is answered but never becomes an event.
    assert_eq!(events("hello", "http:GET /hello"), Some(2.0), "{body}");
    assert_eq!(events("hello", "http:GET /private"), Some(0.0), "{body}");
    let responses = |trigger, class| {
        series(
            &body,
            "wasmgate_trigger_http_responses_total",
            "hello",
            trigger,
            &format!(",status=\"{class}\""),
        )
    };
    assert_eq!(responses("http:GET /hello", "2xx"), Some(2.0), "{body}");
    assert_eq!(responses("http:GET /private", "4xx"), Some(1.0), "{body}");
    assert_eq!(responses("http:GET /private", "2xx"), Some(0.0), "{body}");
    // No drops or responses for a kind that has none.
    assert!(
        !body.contains("wasmgate_trigger_dropped_total{function=\"hello\""),
        "{body}"
    );
    assert!(
        !body.contains("wasmgate_trigger_http_responses_total{function=\"slow\""),
        "{body}"
    );
    // Another function's invokes come through the `invoke` trigger; a
    // request queued by its route is that route's event, not an invoke.
    assert_eq!(events("slow", "invoke"), Some(2.0), "{body}");
    assert_eq!(events("hello", "http:POST /queued"), Some(1.0), "{body}");
    assert_eq!(responses("http:POST /queued", "2xx"), Some(1.0), "{body}");
    assert!(
        !body.contains("function=\"hello\",trigger=\"invoke\""),
        "{body}"
    );
}

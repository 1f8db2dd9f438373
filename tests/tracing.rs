//! Trace context end to end: the real `wasmgate` between a device speaking
//! MQTT 5 (to a local mosquitto), an HTTP client, an upstream mosquitto
//! (MQTT 5) and an OTLP/HTTP
//! receiver that decodes spans with the classes generated from the
//! OpenTelemetry protobuf definitions (tests/support/otlp_receiver.py; the
//! collector binary cannot be installed here).
//!
//! One device message with `traceparent` is followed through the gateway:
//! its invocation is a child span, the message it sends upstream carries
//! that span as `traceparent`, the function it invokes is that span's
//! child; an HTTP request's `traceparent` comes back as the invocation's.
//! The collector is down while all this happens and the gateway is killed
//! (-9) before it comes up: the spans wait in the database, and arrive
//! after the restart.

mod support;

use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, Incoming, MqttOptions};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::gateway::{example_wasm, GatewayProcess};
use support::mosquitto::{Mosquitto, GATEWAY_SETTINGS};
use support::mqtt::{free_port, unique_id, wait_until};

const WAIT: Duration = Duration::from_secs(60);
const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";
const HTTP_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const HTTP_SPAN: &str = "b7ad6b7169203331";

/// Emits its payload upstream to `cloud/data` and invokes `after` with it.
fn ingest() -> Vec<u8> {
    support::guest::mqtt_guest(
        r#"(import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "invoke" (func $invoke (param i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 60000) "cloud/data")
  (data (i32.const 60016) "after")"#,
        // Upstream, QoS 1: flags 1 | 8.
        r#"(drop (call $emit (i32.const 60000) (i32.const 10) (local.get $payload) (local.get $payload_len) (i32.const 9)))
    (drop (call $invoke (i32.const 60016) (i32.const 5) (local.get $payload) (local.get $payload_len)))
    (i32.const 0)"#,
    )
}

fn ok() -> Vec<u8> {
    support::guest::mqtt_guest("", "", "(i32.const 0)")
}

fn broken() -> Vec<u8> {
    support::guest::mqtt_guest("", "", "(unreachable)")
}

/// A message's topic and user properties.
type Received = (String, Vec<(String, String)>);

/// An MQTT 5 client, and the messages it gets.
fn client5(port: u16, name: &str) -> (Client, mpsc::Receiver<Received>) {
    let mut options = MqttOptions::new(unique_id(name), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(options, 100);
    let (tx, rx) = mpsc::channel();
    let (up_tx, up) = mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    let _ = up_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let properties = p.properties.map(|p| p.user_properties).unwrap_or_default();
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let _ = tx.send((topic, properties));
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    up.recv_timeout(WAIT).expect("the MQTT 5 client connects");
    (client, rx)
}

/// The OTLP receiver, and the spans it printed.
struct Receiver {
    child: Child,
    spans: mpsc::Receiver<Value>,
}

impl Receiver {
    fn start(port: u16) -> Receiver {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/support/otlp_receiver.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the OTLP receiver (.ci/setup installs opentelemetry-proto)");
        let (tx, spans) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str::<Value>(&line).expect("a JSON line"));
            }
        });
        let first = spans.recv_timeout(WAIT).expect("the receiver starts");
        assert_eq!(first["listening"], port, "{first}");
        Receiver { child, spans }
    }

    /// Spans until `n` have come, or the wait is over.
    fn take(&self, n: usize) -> Vec<Value> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.spans.recv_timeout(WAIT) {
                Ok(span) => {
                    assert!(
                        span.get("error").is_none(),
                        "the receiver could not decode: {span}"
                    );
                    got.push(span);
                }
                Err(_) => break,
            }
        }
        got
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scrape(port: u16, series: &str) -> Option<f64> {
    let (_, text) = support::http::request(port, "GET", "/metrics", "", "");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn header(answer: &str, name: &str) -> Option<String> {
    answer.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

#[test]
fn a_device_message_is_followed_through_the_gateway_to_the_cloud_and_spans_survive_an_outage() {
    // MQTT 5 on both sides: the embedded broker speaks 3.1.1 to devices.
    let local = Mosquitto::start_for_gateway();
    let cloud = Mosquitto::start_with(GATEWAY_SETTINGS);
    let broker = local.port();
    let (http, metrics, otlp) = (free_port(), free_port(), free_port());
    let mut gateway = GatewayProcess::start_toml(|dir| {
        std::fs::write(dir.join("ingest.wasm"), ingest()).unwrap();
        std::fs::write(dir.join("ok.wasm"), ok()).unwrap();
        std::fs::write(dir.join("broken.wasm"), broken()).unwrap();
        format!(
            r#"gateway_id = "gw-trace"
data_dir = {data:?}
[broker]
mode = "external"
host = "127.0.0.1"
port = {broker}
protocol = "5"
[upstream]
host = "127.0.0.1"
port = {cloud}
protocol = "5"
[http]
listen = "127.0.0.1:{http}"
[metrics]
listen = "127.0.0.1:{metrics}"
[tracing]
endpoint = "http://127.0.0.1:{otlp}/v1/traces"
service_name = "site-a"

[[functions]]
name = "ingest"
wasm = "ingest.wasm"
triggers = [{{ mqtt = "dev/+/data" }}]
[functions.grants]
upstream = ["cloud/#"]
invoke = ["after"]

[[functions]]
name = "after"
wasm = "ok.wasm"
triggers = [{{ mqtt = "after/unused" }}]

[[functions]]
name = "broken"
wasm = "broken.wasm"
triggers = [{{ mqtt = "broken/#" }}]
[functions.retry]
attempts = 1

[[functions]]
name = "hello"
wasm = {hello:?}
triggers = [{{ http = "ANY /hello" }}]
"#,
            data = dir.join("data").display().to_string(),
            cloud = cloud.port(),
            hello = example_wasm("hello_http.wasm").display().to_string(),
        )
    });
    let (cloud_client, upstream) = client5(cloud.port(), "cloud");
    cloud_client.subscribe("cloud/#", QoS::AtLeastOnce).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // A device message that brings its trace, one that brings none, and
    // one whose function fails.
    let (device, _) = client5(broker, "device");
    let traced = PublishProperties {
        user_properties: vec![
            (
                "traceparent".into(),
                format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"),
            ),
            ("tracestate".into(), "vendor=x1".into()),
        ],
        ..Default::default()
    };
    device
        .publish_with_properties("dev/d1/data", QoS::AtLeastOnce, false, "21.5", traced)
        .unwrap();
    device
        .publish("dev/d2/data", QoS::AtLeastOnce, false, "19.0")
        .unwrap();
    device
        .publish("broken/d3", QoS::AtLeastOnce, false, "x")
        .unwrap();

    // Upstream, each message carries the span that emitted it.
    let mut carried = Vec::new();
    while carried.len() < 2 {
        let (topic, properties) = upstream
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("nothing upstream\n{}", gateway.logs()));
        assert_eq!(topic, "cloud/data");
        let get = |name: &str| {
            properties
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let parent = get("traceparent").expect("a traceparent user property");
        carried.push((parent, get("tracestate")));
    }
    let (from_d1, state) = carried
        .iter()
        .find(|(p, _)| p.contains(PARENT_TRACE))
        .cloned()
        .unwrap_or_else(|| panic!("the device's trace went upstream: {carried:?}"));
    assert_eq!(state.as_deref(), Some("vendor=x1"));
    let parts: Vec<&str> = from_d1.split('-').collect();
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{from_d1}");
    let ingest_span = parts[2].to_owned();
    assert_ne!(ingest_span, PARENT_SPAN, "a span of its own");
    let (root, _) = carried
        .iter()
        .find(|(p, _)| !p.contains(PARENT_TRACE))
        .cloned()
        .unwrap();
    let root_trace = root.split('-').nth(1).unwrap().to_owned();

    // An HTTP request's traceparent comes back as its invocation's span.
    let (status, answer) = support::http::request(
        http,
        "GET",
        "/hello?name=trace",
        &format!("traceparent: 00-{HTTP_TRACE}-{HTTP_SPAN}-01\r\n"),
        "",
    );
    assert_eq!(status, 200, "{answer}");
    let back = header(&answer, "traceparent").unwrap_or_else(|| panic!("{answer}"));
    assert!(back.starts_with(&format!("00-{HTTP_TRACE}-")), "{back}");
    let http_span = back.split('-').nth(2).unwrap().to_owned();
    assert_ne!(http_span, HTTP_SPAN);

    // With the collector down, the spans wait in the database (ingest
    // twice, after twice, broken, hello); then the gateway dies hard.
    assert!(
        wait_until(WAIT, || scrape(metrics, "wasmgate_trace_spans_waiting")
            .is_some_and(|n| n >= 6.0)),
        "{:?}\n{}",
        scrape(metrics, "wasmgate_trace_spans_waiting"),
        gateway.logs()
    );
    assert!(wait_until(WAIT, || scrape(
        metrics,
        "wasmgate_trace_export_failures_total"
    )
    .is_some_and(|n| n >= 1.0)));
    assert_eq!(
        scrape(metrics, "wasmgate_trace_collector_reachable"),
        Some(0.0)
    );
    gateway.kill();

    let receiver = Receiver::start(otlp);
    gateway.restart();
    let spans = receiver.take(6);
    assert_eq!(spans.len(), 6, "{spans:#?}\n{}", gateway.logs());
    let find = |what: &dyn Fn(&Value) -> bool| -> Value {
        spans
            .iter()
            .find(|s| what(s))
            .cloned()
            .unwrap_or_else(|| panic!("{spans:#?}"))
    };
    for span in &spans {
        assert_eq!(span["resource"]["service.name"], "site-a", "{span}");
        assert_eq!(
            span["resource"]["service.instance.id"], "gw-trace",
            "{span}"
        );
        assert_eq!(span["scope"], "wasmgate");
        assert!(span["end"].as_u64() >= span["start"].as_u64(), "{span}");
        assert!(
            span["start"].as_u64().unwrap() > 1_700_000_000_000_000_000,
            "{span}"
        );
        assert!(
            span["attributes"]["faas.invocation_id"].is_string(),
            "{span}"
        );
    }

    // The device's message: a child of the device's span, consumed.
    let ingest = find(&|s| s["span_id"] == ingest_span.as_str());
    assert_eq!(ingest["name"], "ingest");
    assert_eq!(ingest["trace_id"], PARENT_TRACE);
    assert_eq!(ingest["parent_span_id"], PARENT_SPAN);
    assert_eq!(ingest["trace_state"], "vendor=x1");
    assert_eq!(ingest["kind"], 5, "SPAN_KIND_CONSUMER");
    assert_eq!(ingest["status"], 1, "STATUS_CODE_OK");
    assert_eq!(ingest["flags"].as_u64().unwrap() & 1, 1, "sampled");
    assert_eq!(ingest["attributes"]["faas.trigger"], "pubsub");
    assert_eq!(ingest["attributes"]["wasmgate.source"], "dev/d1/data");
    // The function it invoked: a child of its span, in the same trace.
    let after = find(&|s| s["name"] == "after" && s["trace_id"] == PARENT_TRACE);
    assert_eq!(after["parent_span_id"], ingest_span.as_str());
    // The message without a context started a trace, and its invoke joined it.
    let root_ingest = find(&|s| s["name"] == "ingest" && s["trace_id"] == root_trace.as_str());
    assert_eq!(root_ingest["parent_span_id"], "");
    let root_after = find(&|s| s["name"] == "after" && s["trace_id"] == root_trace.as_str());
    assert_eq!(root_after["parent_span_id"], root_ingest["span_id"]);
    // The HTTP request: served, a child of the client's span.
    let hello = find(&|s| s["name"] == "hello");
    assert_eq!(hello["trace_id"], HTTP_TRACE);
    assert_eq!(hello["parent_span_id"], HTTP_SPAN);
    assert_eq!(hello["span_id"], http_span.as_str());
    assert_eq!(hello["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(hello["attributes"]["faas.trigger"], "http");
    // The failure: an error, with why.
    let broken = find(&|s| s["name"] == "broken");
    assert_eq!(broken["status"], 2, "STATUS_CODE_ERROR");
    assert!(
        broken["status_message"].as_str().unwrap().contains("trap"),
        "{broken}"
    );

    // Delivered, they leave the database.
    assert!(
        wait_until(WAIT, || scrape(metrics, "wasmgate_trace_spans_waiting")
            == Some(0.0)),
        "{:?}",
        scrape(metrics, "wasmgate_trace_spans_waiting")
    );
    assert_eq!(
        scrape(metrics, "wasmgate_trace_collector_reachable"),
        Some(1.0)
    );
    assert!(!gateway
        .log_lines_with(&["cannot reach the trace collector"])
        .is_empty());
}

/// A collector that refuses for good (a 4xx other than 429 and 408: here
/// a 404, a wrong path) gets each batch once: the spans are dropped and
/// counted, not retried forever. An unsampled parent is carried on, and
/// its invocation's span is not exported.
#[test]
fn a_collector_that_refuses_for_good_drops_the_batch_and_unsampled_traces_are_passed_on_only() {
    let (broker, metrics, http, otlp) = (free_port(), free_port(), free_port(), free_port());
    let receiver = Receiver::start(otlp);
    let gateway = GatewayProcess::start_toml(|dir| {
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
             [tracing]\nendpoint = \"http://127.0.0.1:{otlp}/v1/nowhere\"\n\
             [[functions]]\nname = \"hello\"\nwasm = {hello:?}\ntriggers = [{{ http = \"GET /hello\" }}]\n",
            data = dir.join("data").display().to_string(),
            hello = example_wasm("hello_http.wasm").display().to_string(),
        )
    });
    let (status, answer) = support::http::request(
        http,
        "GET",
        "/hello?name=unsampled",
        &format!("traceparent: 00-{HTTP_TRACE}-{HTTP_SPAN}-00\r\n"),
        "",
    );
    assert_eq!(status, 200, "{answer}");
    let back = header(&answer, "traceparent").unwrap_or_else(|| panic!("{answer}"));
    assert!(
        back.starts_with(&format!("00-{HTTP_TRACE}-")) && back.ends_with("-00"),
        "the trace goes on, unsampled: {back}"
    );
    let (status, answer) = support::http::request(http, "GET", "/hello?name=root", "", "");
    assert_eq!(status, 200, "{answer}");
    let root = header(&answer, "traceparent").unwrap_or_else(|| panic!("{answer}"));
    assert!(
        root.ends_with("-01") && !root.contains(HTTP_TRACE),
        "{root}"
    );
    // Only the sampled span is sent, refused once, and gone.
    assert!(
        wait_until(WAIT, || scrape(
            metrics,
            "wasmgate_trace_spans_refused_total"
        ) == Some(1.0)
            && scrape(metrics, "wasmgate_trace_spans_waiting") == Some(0.0)),
        "{:?}\n{}",
        scrape(metrics, "wasmgate_trace_spans_refused_total"),
        gateway.logs()
    );
    assert_eq!(
        scrape(metrics, "wasmgate_trace_spans_exported_total"),
        Some(0.0)
    );
    assert!(
        gateway
            .logs()
            .contains("the trace collector refused a batch of spans for good"),
        "{}",
        gateway.logs()
    );
    // Not sent again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        scrape(metrics, "wasmgate_trace_spans_refused_total"),
        Some(1.0)
    );
    assert!(
        receiver.spans.try_recv().is_err(),
        "a 404 path decodes nothing"
    );
}

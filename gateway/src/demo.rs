//! `wasmgate demo`: the whole product in one command on a fresh machine.
//!
//! The embedded broker, the example functions (compiled in, so nothing needs
//! building), a simulated fleet of vending machines and robots publishing to
//! it, and a summary every few seconds of what flowed through.

use crate::config::Config;
use crate::metrics::HistogramSnapshot;
use crate::pipeline::{FunctionModule, Gateway, GatewayError, ModuleSource, SHUTDOWN_GRACE};
use crate::simulate;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the embedded broker listens; `None`: 127.0.0.1:1883, or a free
    /// port if that one is taken (a mosquitto already running, say).
    pub listen: Option<SocketAddr>,
    pub devices: u32,
    /// Messages per second from the whole fleet.
    pub rate: f64,
    pub duration: Option<Duration>,
    pub report_every: Duration,
    /// Where the demo keeps its database; `None`: a temporary directory removed at the end.
    pub data_dir: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            listen: None,
            devices: 20,
            rate: 50.0,
            duration: None,
            report_every: Duration::from_secs(5),
            data_dir: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Simulator(#[from] simulate::SimulateError),
    #[error("demo config: {0}")]
    Config(String),
}

/// The demo's gateway: one function per device kind, thresholds set so that
/// alerts actually happen.
fn config(
    listen: SocketAddr,
    http: SocketAddr,
    data_dir: &std::path::Path,
) -> Result<Config, DemoError> {
    let text = format!(
        r#"
gateway_id = "demo"
data_dir = "{data_dir}"

[broker]
mode = "embedded"
listen = "{listen}"

[http]
listen = "{http}"

[[functions]]
name = "vending"
wasm = "vending_telemetry.wasm"
triggers = [{{ mqtt = "vending/+/telemetry" }}]
[functions.grants]
local = ["vending/+/alert"]
upstream = ["telemetry/vending/+"]
[functions.config]
max_temp_c = "8"
low_stock = "2"

[[functions]]
name = "robots"
wasm = "robot_telemetry.wasm"
triggers = [{{ mqtt = "robots/+/telemetry" }}]
[functions.grants]
local = ["robots/+/alert"]
upstream = ["robots/+/position"]
[functions.config]
battery_low_pct = "20"

[[functions]]
name = "hello"
wasm = "hello_http.wasm"
triggers = [{{ http = "ANY /hello" }}]

[[functions]]
name = "heartbeat"
wasm = "vending_heartbeat.wasm"
triggers = [{{ schedule = "rate(10 seconds)", missed = "skip" }}]
[functions.grants]
upstream = ["heartbeat/#"]
"#,
        data_dir = data_dir.display().to_string().replace('\\', "\\\\"),
    );
    Config::from_toml_str(&text, "demo").map_err(|e| DemoError::Config(e.to_string()))
}

fn pick_listen(requested: Option<SocketAddr>) -> SocketAddr {
    if let Some(addr) = requested {
        return addr;
    }
    pick_port(1883, "the demo broker")
}

/// 127.0.0.1:`port`, or a free port if it is taken.
fn pick_port(port: u16, what: &str) -> SocketAddr {
    let preferred = SocketAddr::from(([127, 0, 0, 1], port));
    match TcpListener::bind(preferred) {
        Ok(_) => preferred,
        Err(_) => {
            let free = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap_or(preferred);
            println!("port {port} is taken; {what} listens on {free} instead");
            free
        }
    }
}

/// Runs the demo until `duration` or `shutdown`.
pub async fn run(
    options: DemoOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let listen = pick_listen(options.listen);
    let (data_dir, temporary) = match &options.data_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("wasmgate-demo-{}", std::process::id())),
            true,
        ),
    };
    let http = pick_port(8080, "the demo's HTTP route");
    let config = config(listen, http, &data_dir)?;
    let examples = [
        crate::examples::VENDING,
        crate::examples::ROBOT,
        crate::examples::HELLO,
        crate::examples::HEARTBEAT,
    ];
    let modules = config
        .functions
        .iter()
        .zip(examples)
        .map(|(f, example)| FunctionModule {
            config: f.clone(),
            wasm: ModuleSource::Bytes(example.bytes.into()),
        })
        .collect();
    let gateway = Gateway::start(&config, modules).await?;
    // Devices, the watcher and the user connect where devices do: the
    // gateway's own endpoint is its internal listener, which takes only the
    // gateway's sessions.
    let endpoint = (listen.ip().to_string(), listen.port());
    println!(
        "wasmgate demo: broker on {listen}, functions vending, robots, hello (HTTP) and heartbeat (schedule), {} simulated devices at {} msg/s{}",
        options.devices,
        options.rate,
        match options.duration {
            Some(d) => format!(", for {}s", d.as_secs()),
            None => ", until Ctrl-C".into(),
        }
    );
    println!(
        "watch it yourself: mosquitto_sub -h {} -p {} -t '#' -v",
        endpoint.0, endpoint.1
    );
    println!(
        "an HTTP route: curl 'http://{http}/hello?name=Ada'; a heartbeat upstream every 10 s (heartbeat/rate)\n"
    );

    let alerts = Arc::new(Alerts::default());
    let watcher = tokio::spawn(watch_alerts(endpoint.0.clone(), endpoint.1, alerts.clone()));

    let mut sim = simulate::Options::new(endpoint.0.clone(), endpoint.1);
    sim.client_id = Some("wasmgate-demo-devices".into());
    sim.fleet.devices = options.devices;
    sim.rate = options.rate;
    sim.progress_every = Duration::from_secs(3_600);
    let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    let simulator = tokio::spawn(simulate::run(sim, async {
        let _ = sim_stopped.await;
    }));

    let started = Instant::now();
    let deadline = options.duration.map(|d| started + d);
    let ends = async {
        match options.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(ends);
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(options.report_every);
    ticker.tick().await;
    let mut last: Vec<HistogramSnapshot> = vec![HistogramSnapshot::default(); 2];
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if periodic_report_due(Instant::now(), deadline, options.report_every) {
                    report(&gateway, &alerts, started, &mut last);
                }
            }
            () = &mut ends => break,
            () = &mut shutdown => break,
        }
    }

    let _ = stop_sim.send(());
    let sim_result = simulator.await;
    // Let the last messages through before stopping the gateway.
    tokio::time::sleep(Duration::from_millis(500)).await;
    report(&gateway, &alerts, started, &mut last);
    watcher.abort();
    gateway.shutdown(SHUTDOWN_GRACE).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    match sim_result {
        Ok(Ok(summary)) => println!(
            "\ndevices sent {} messages ({} acknowledged by the broker) in {:.1}s",
            summary.sent,
            summary.acked,
            summary.elapsed.as_secs_f64()
        ),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {}
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Alerts {
    count: AtomicU64,
    last: Mutex<Option<String>>,
}

async fn watch_alerts(host: String, port: u16, alerts: Arc<Alerts>) {
    let mut options = MqttOptions::new("wasmgate-demo-watch", host, port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                let _ = client.subscribe("vending/+/alert", QoS::AtMostOnce).await;
                let _ = client.subscribe("robots/+/alert", QoS::AtMostOnce).await;
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                alerts.count.fetch_add(1, Ordering::Relaxed);
                let text = String::from_utf8_lossy(&p.payload);
                let text: String = text.chars().take(110).collect();
                *alerts.last.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("{} {text}", p.topic));
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn report(gateway: &Gateway, alerts: &Alerts, started: Instant, last: &mut Vec<HistogramSnapshot>) {
    println!(
        "[{:>4}s] {:<8} {:>8} {:>8} {:>7} {:>7} {:>5} {:>8} {:>9} {:>9}",
        started.elapsed().as_secs(),
        "function",
        "in",
        "ok",
        "failed",
        "retried",
        "dlq",
        "emitted",
        "p50",
        "p99"
    );
    for (i, (name, metrics)) in gateway.metrics().iter().enumerate() {
        let s = metrics.snapshot();
        if last.len() <= i {
            last.push(HistogramSnapshot::default());
        }
        let window = s.latency.since(&last[i]);
        last[i] = s.latency;
        let q = |q| {
            window
                .quantile(q)
                .map_or("-".to_owned(), |d| format!("≤{}", short(d)))
        };
        println!(
            "        {:<8} {:>8} {:>8} {:>7} {:>7} {:>5} {:>8} {:>9} {:>9}",
            name,
            s.received,
            s.succeeded,
            s.failed,
            s.retries,
            s.dead_letters,
            s.emitted,
            q(0.5),
            q(0.99)
        );
    }
    let last_alert = alerts
        .last
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    println!(
        "        delivered {} emits; {} alerts{}\n",
        gateway.delivered(),
        alerts.count.load(Ordering::Relaxed),
        last_alert
            .map(|a| format!(", last: {a}"))
            .unwrap_or_default()
    );
}

/// A periodic summary, unless the demo ends within half a period: the
/// final summary, printed once the last messages are through, follows.
/// (Printing both showed the same block twice when --duration is a multiple
/// of --report-every.)
fn periodic_report_due(now: Instant, deadline: Option<Instant>, every: Duration) -> bool {
    deadline.is_none_or(|end| end.saturating_duration_since(now) > every / 2)
}

fn short(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_periodic_summary_gives_way_to_the_final_one() {
        let start = Instant::now();
        let every = Duration::from_secs(5);
        let end = Some(start + Duration::from_secs(10));
        assert!(periodic_report_due(start + every, end, every));
        // The tick at 10 s (or a few ms before the end): the final one follows.
        assert!(!periodic_report_due(start + 2 * every, end, every));
        assert!(!periodic_report_due(
            start + Duration::from_millis(9_990),
            end,
            every
        ));
        assert!(periodic_report_due(start + 2 * every, None, every));
    }

    #[test]
    fn the_demo_config_is_valid() {
        let config = config(
            "127.0.0.1:1883".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            std::path::Path::new("/tmp/x"),
        )
        .unwrap();
        let names: Vec<&str> = config.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["vending", "robots", "hello", "heartbeat"]);
    }
}

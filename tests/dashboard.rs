//! The live dashboard in a real browser: Debian's headless Chromium, driven
//! over the DevTools protocol (a WebSocket), loads `/dashboard` from the
//! real binary under MQTT load, waits for the charts to fill, keeps a
//! screenshot, then sees the page say so when the gateway stops, and
//! recover when it comes back. Any script error on the page fails the test.
//!
//! Chromium is required, not optional: without it this test fails and
//! says how to install it (`.ci/setup` does).
//!
//! The screenshots go to `$WASMGATE_ARTIFACTS` if set, else beside the
//! build (`$CARGO_TARGET_DIR`, or `target/`): `dashboard.png` under load,
//! `dashboard-unreachable.png` with the gateway stopped.

mod support;

use serde_json::{json, Value};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::gateway::{example_wasm, GatewayProcess};
use support::mqtt::{free_port, unique_id, MqttClient};
use support::rig::telemetry;

const TOKEN: &str = "dash-4c1e-9b7a-22f0-e8d3";
/// How long the page may take to show what the test waits for; its polls
/// are every second (stats) and five (the rest).
const PAGE: Duration = Duration::from_secs(45);

#[test]
fn the_dashboard_charts_a_gateway_under_load_and_says_when_it_is_unreachable() {
    let (broker, api) = (free_port(), free_port());
    let mut gateway = GatewayProcess::start_toml(|dir| {
        std::fs::write(dir.join("api-token"), format!("{TOKEN}\n")).unwrap();
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n\
             [api]\nlisten = \"127.0.0.1:{api}\"\ntoken_file = \"api-token\"\n\
             [[functions]]\nname = \"vending\"\nwasm = {vending:?}\ntriggers = [{{ mqtt = \"vending/+/telemetry\" }}]\n\
             [functions.grants]\nlocal = [\"vending/+/alert\"]\nupstream = [\"telemetry/#\"]\n\
             [functions.config]\nmax_temp_c = \"8\"\n\
             [[functions]]\nname = \"enrich\"\nwasm = {enrich:?}\ntriggers = [{{ mqtt = \"vending/#\" }}]\n\
             [functions.grants]\nupstream = [\"telemetry/#\"]\n[functions.retry]\nattempts = 1\n",
            data = dir.join("data").display().to_string(),
            vending = example_wasm("vending_telemetry.wasm").display().to_string(),
            enrich = example_wasm("telemetry_enrich.wasm").display().to_string(),
        )
    });

    // The page's files need no token; its data does.
    for path in [
        "/dashboard",
        "/dashboard/app.js",
        "/dashboard/style.css",
        "/dashboard/uplot.min.js",
        "/dashboard/uplot.min.css",
    ] {
        let (status, text) = support::http::request(api, "GET", path, "", "");
        assert_eq!(status, 200, "{path}: {text}");
        let head = text.split("\r\n\r\n").next().unwrap_or("").to_lowercase();
        assert!(
            head.contains("content-security-policy: default-src 'none'"),
            "{head}"
        );
    }
    let (status, text) = support::http::request(api, "GET", "/v1/stats", "", "");
    assert_eq!(status, 401, "{text}");
    let (status, text) = support::http::request(api, "GET", "/dashboard/../v1/stats", "", "");
    assert_ne!(status, 200, "{text}");
    // The upstream link (to the local broker here: no [upstream]) is up
    // once its drain has connected.
    assert!(
        support::mqtt::wait_until(PAGE, || stats(api)["upstream"]
            == json!({ "connected": true, "reconnects": 0 })),
        "{}",
        stats(api)
    );
    let stats = stats(api);
    let version = stats["functions"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["name"] == "enrich"))
        .and_then(|f| f["versions"][0]["version"].as_str())
        .unwrap_or_else(|| panic!("no version of enrich in {stats}"))
        .to_owned();

    // Load: two machines' telemetry, and now and then a message enrich
    // cannot read (it fails, once, and is dead-lettered).
    let running = Arc::new(AtomicBool::new(true));
    let load = std::thread::spawn({
        let running = running.clone();
        move || {
            let device = MqttClient::connect(broker, &unique_id("vm"));
            let mut seq = 0u64;
            while running.load(Ordering::SeqCst) {
                for machine in ["vm-1", "vm-2"] {
                    device.publish(&format!("vending/{machine}/telemetry"), telemetry(seq, 5.0));
                }
                if seq % 100 == 5 {
                    device.publish("vending/vm-1/not-telemetry", "{}");
                }
                seq += 1;
                std::thread::sleep(Duration::from_millis(40));
            }
            seq
        }
    });

    let mut browser = Browser::launch();
    browser.navigate(&format!("http://127.0.0.1:{api}/dashboard#token={TOKEN}"));
    let points = browser.wait_for(
        "the throughput charts to show data",
        r#"(() => {
            const points = (f, c) => Number(document.querySelector(
                `[data-function="${f}"] [data-chart="${c}"]`)?.dataset.points || 0);
            const events = (f) => Number((document.querySelector(
                `[data-function="${f}"] [data-figure="events"] dd`)?.textContent || '0')
                .replace(/,/g, ''));
            const ok = ['enrich', 'vending'].every((f) =>
                points(f, 'throughput') >= 5 && points(f, 'duration') >= 5 && events(f) > 0);
            return ok && document.querySelector('#dead-letters a.request')
                && document.querySelector('#versions tbody tr[data-version]')
                && document.querySelector('#logs tbody tr[data-request]')
                && document.querySelectorAll('#cost tbody tr[data-function]').length === 2
                ? points('enrich', 'throughput') : false;
        })()"#,
    );
    assert!(points.as_u64() >= Some(5), "{points}");
    let page = browser.evaluate(
        r#"({
            status: document.getElementById('status').className,
            statusText: document.getElementById('status').textContent,
            hash: location.hash,
            version: document.querySelector('[data-function="enrich"] .version').textContent,
            versions: [...document.querySelectorAll('#versions tbody tr[data-version]')]
                .map((r) => r.dataset.function + ' ' + r.dataset.version),
            deadLetter: document.querySelector('#dead-letters tbody tr').textContent,
            outboxPoints: Number(document.getElementById('outbox-chart').dataset.points),
            upstream: document.getElementById('upstream-state').textContent,
            destinations: [...document.querySelectorAll('#destinations tbody tr')]
                .map((r) => r.dataset.destination),
            logs: [...document.querySelectorAll('#logs tbody tr[data-request]')]
                .map((r) => r.textContent),
            cost: [...document.querySelectorAll('#cost tbody tr[data-function]')]
                .map((r) => r.dataset.function),
        })"#,
    );
    assert_eq!(page["status"], "ok", "{page}");
    assert!(
        page["statusText"]
            .as_str()
            .unwrap_or("")
            .starts_with("live"),
        "{page}"
    );
    // The token has left the address bar.
    assert_eq!(page["hash"], "", "{page}");
    assert!(
        page["version"]
            .as_str()
            .unwrap_or("")
            .contains(&version[..12]),
        "the card names the live version {version}: {page}"
    );
    assert!(
        page["versions"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("enrich {version}"))),
        "{page}"
    );
    assert!(
        page["deadLetter"].as_str().unwrap_or("").contains("enrich")
            && page["deadLetter"]
                .as_str()
                .unwrap_or("")
                .contains("vending/vm-1/not-telemetry"),
        "{page}"
    );
    assert!(page["outboxPoints"].as_u64() > Some(0), "{page}");
    assert_eq!(page["upstream"], "connected", "{page}");
    assert_eq!(page["destinations"], json!(["local", "upstream"]), "{page}");
    // enrich logs each message it cannot read, with its request id.
    assert!(
        page["logs"].as_array().is_some_and(|lines| lines
            .iter()
            .any(|l| l.as_str().unwrap_or("").contains("enrich"))),
        "{page}"
    );
    // The cost panel: both functions' use of the last 24 hours.
    let mut cost: Vec<String> = page["cost"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    cost.sort();
    assert_eq!(cost, ["enrich", "vending"], "{page}");
    let shot = browser.screenshot("dashboard.png");
    println!("dashboard screenshot: {}", shot.display());

    // A request id picks out its dead letters (and logs).
    // (Read and clicked at once: a newer letter may come first at any poll.)
    let request = browser.evaluate(
        "(() => { const a = document.querySelector('#dead-letters a.request'); \
         a.click(); return a.textContent; })()",
    );
    let request = request.as_str().expect("a request id");
    browser.wait_for(
        "the page to show only that request",
        &format!(
            r#"(() => {{
                const rows = [...document.querySelectorAll('#dead-letters tbody tr[data-request]')];
                return !document.getElementById('filter').hidden
                    && document.getElementById('filter-request').textContent === '{request}'
                    && rows.length > 0 && rows.every((r) => r.dataset.request === '{request}');
            }})()"#
        ),
    );

    running.store(false, Ordering::SeqCst);
    let published = load.join().expect("the load thread");
    assert!(published > 20, "{published}");
    gateway.stop();
    let status = browser.wait_for(
        "the page to say the gateway is unreachable",
        r#"(() => {
            const s = document.getElementById('status');
            return s.classList.contains('error') && /unreachable/.test(s.textContent)
                && s.offsetHeight > 0 ? s.textContent : false;
        })()"#,
    );
    println!("with the gateway stopped the page says: {status}");
    let shot = browser.screenshot("dashboard-unreachable.png");
    println!("dashboard screenshot: {}", shot.display());

    gateway.restart();
    browser.wait_for(
        "the page to recover when the gateway is back",
        "document.getElementById('status').className === 'ok'",
    );
    let errors = browser.errors();
    assert!(errors.is_empty(), "errors on the page: {errors:#?}");
}

/// `/v1/stats` with the token, parsed.
#[track_caller]
fn stats(port: u16) -> Value {
    let (status, text) = support::http::request(
        port,
        "GET",
        "/v1/stats",
        &format!("authorization: Bearer {TOKEN}\r\n"),
        "",
    );
    assert_eq!(status, 200, "{text}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Where the screenshots go: `$WASMGATE_ARTIFACTS`, else the target dir.
fn artifacts() -> PathBuf {
    let dir = std::env::var_os("WASMGATE_ARTIFACTS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// Headless Chromium with one page, spoken to over the DevTools protocol.
struct Browser {
    browser: Devtools,
    page: Devtools,
    process: Process,
    /// Its profile and log; removed once it has exited (dropped last).
    _profile: tempfile::TempDir,
}

/// The browser's process, killed with its helpers (its process group) if
/// it is still running when dropped: also when the test fails while
/// starting it.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0.id())])
                .status();
        }
        let _ = self.0.wait();
    }
}

impl Browser {
    #[track_caller]
    fn launch() -> Browser {
        let profile = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("log file");
        let binary = std::env::var("WASMGATE_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let mut command = Command::new(&binary);
        command
            .args([
                "--headless",
                // As root (CI), Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-crash-reporter",
                "--disable-breakpad",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!(
                "--user-data-dir={}",
                profile.path().join("profile").display()
            ))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        // Its own process group, so that its helpers go with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let process = Process(command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {binary:?} ({e}): this test needs a headless Chromium, Debian's \
                 `chromium` package (`apt-get install chromium`; .ci/setup installs it), or \
                 WASMGATE_CHROMIUM=/path/to/chromium"
            )
        }));
        let mut browser_log = String::new();
        let active = profile.path().join("profile/DevToolsActivePort");
        let start = Instant::now();
        // Its first line is the port, the second the browser's own
        // WebSocket path.
        let (port, browser_path): (u16, String) = loop {
            let written = std::fs::read_to_string(&active).unwrap_or_default();
            let mut lines = written.lines();
            if let (Some(Ok(port)), Some(path)) =
                (lines.next().map(|l| l.trim().parse()), lines.next())
            {
                break (port, path.trim().to_owned());
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = std::fs::File::open(profile.path().join("chromium.log"))
                    .and_then(|mut f| f.read_to_string(&mut browser_log));
                panic!("Chromium did not open its DevTools port within 30 s:\n{browser_log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut browser = Devtools::connect(port, &browser_path);
        let targets = browser.call("Target.getTargets", json!({}));
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .unwrap_or_else(|| panic!("no page in {targets}"))
            .to_owned();
        let mut page = Devtools::connect(port, &format!("/devtools/page/{page}"));
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(domain, json!({}));
        }
        Browser {
            browser,
            page,
            process,
            _profile: profile,
        }
    }

    #[track_caller]
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.page.call(method, params)
    }
    #[track_caller]
    fn navigate(&mut self, url: &str) {
        let result = self.call("Page.navigate", json!({ "url": url }));
        assert!(result["errorText"].is_null(), "{url}: {result}");
    }

    /// The value of a JavaScript expression in the page.
    #[track_caller]
    fn evaluate(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        if !result["exceptionDetails"].is_null() {
            panic!("{expression}: {}", result["exceptionDetails"]);
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` every quarter second until it is truthy;
    /// fails with the page's text after [`PAGE`].
    #[track_caller]
    fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let start = Instant::now();
        loop {
            let value = self.evaluate(expression);
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if start.elapsed() > PAGE {
                let text = self.evaluate("document.body.innerText");
                panic!(
                    "waited {PAGE:?} for {what}; errors {:?}; the page shows:\n{}",
                    self.page.errors,
                    text.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A PNG of the whole page, 1280 px wide, saved as `name` in [`artifacts`].
    #[track_caller]
    fn screenshot(&mut self, name: &str) -> PathBuf {
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let height = metrics["cssContentSize"]["height"]
            .as_f64()
            .unwrap_or(900.0);
        let shot = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": 1280, "height": height.max(900.0), "scale": 1 },
            }),
        );
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = artifacts().join(name);
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    fn errors(&self) -> Vec<String> {
        self.page.errors.clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.browser.socket.send(tungstenite::Message::text(
            json!({ "id": 0, "method": "Browser.close" }).to_string(),
        ));
        // Given a moment to close; then `Process` kills what is left.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.process.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One DevTools WebSocket: the browser's or a page's.
struct Devtools {
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    /// Script errors, console errors and CSP refusals seen so far.
    errors: Vec<String>,
}

impl Devtools {
    #[track_caller]
    fn connect(port: u16, path: &str) -> Devtools {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (socket, _) = tungstenite::client(url.as_str(), stream)
            .unwrap_or_else(|e| panic!("DevTools handshake on {url}: {e}"));
        Devtools {
            socket,
            next_id: 0,
            errors: Vec::new(),
        }
    }

    /// One command; the events that arrive meanwhile are kept if they are errors.
    #[track_caller]
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket
            .send(tungstenite::Message::text(message))
            .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
        loop {
            let message = self
                .socket
                .read()
                .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
            let Ok(text) = message.to_text() else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if value["id"] == id {
                if !value["error"].is_null() {
                    panic!("DevTools {method}: {}", value["error"]);
                }
                return value["result"].clone();
            }
            self.keep_error(&value);
        }
    }

    fn keep_error(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                self.errors.push(format!(
                    "exception: {} {}",
                    details["text"].as_str().unwrap_or(""),
                    details["exception"]["description"].as_str().unwrap_or("")
                ));
            }
            Some("Runtime.consoleAPICalled")
                if matches!(params["type"].as_str(), Some("error" | "assert")) =>
            {
                self.errors
                    .push(format!("console.{}: {}", params["type"], params["args"]));
            }
            // Failed requests are logged by the browser with source
            // "network" (the stopped gateway, the 404 of a gateway without
            // /v1/logs): expected. Anything else at error is not.
            Some("Log.entryAdded")
                if params["entry"]["level"] == "error"
                    && params["entry"]["source"] != "network" =>
            {
                self.errors.push(format!("log: {}", params["entry"]));
            }
            _ => {}
        }
    }
}

/// Standard base64 (DevTools sends screenshots so).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut n) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

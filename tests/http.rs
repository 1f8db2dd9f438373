//! HTTP triggers end to end, over a real socket against the real binary:
//! routes with path parameters, the function's answer, and each error a
//! client can act on (404, 405, 413, 429, 502, 504), with `x-request-id`
//! matching the dead letter.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::gateway::{example_wasm, wasmgate, GatewayProcess};
use support::mqtt::free_port;

const ONE: Duration = Duration::from_secs(30);

/// A response as a client sees it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection.
fn request(port: u16, method: &str, target: &str, body: &[u8]) -> Reply {
    request_with(port, method, target, "", body)
}

/// The same with extra header lines (each ending in `\r\n`).
fn request_with(port: u16, method: &str, target: &str, headers: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(ONE)).unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n{headers}content-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before it has read the whole body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A function that never returns: it runs into its deadline.
fn endless(dir: &std::path::Path) -> String {
    let wasm = wat::parse_str(
        r#"(module
          (memory (export "memory") 1)
          (func (export "wasmgate_abi_version") (result i32) i32.const 1)
          (func (export "wasmgate_handle") (param i32) (result i32)
            (loop $forever (br $forever))
            i32.const 0))"#,
    )
    .unwrap();
    let path = dir.join("endless.wasm");
    std::fs::write(&path, wasm).unwrap();
    path.display().to_string()
}

fn gateway(http_port: u16) -> GatewayProcess {
    GatewayProcess::start_toml(|dir| {
        format!(
            r#"data_dir = {data:?}
[broker]
listen = "127.0.0.1:{broker}"
[http]
listen = "127.0.0.1:{http_port}"
max_body_bytes = 1024

[[functions]]
name = "hello"
wasm = {hello:?}
triggers = [{{ http = "ANY /hello" }}, {{ http = "GET /hello/{{name}}" }}]

[[functions]]
name = "vending"
wasm = {vending:?}
triggers = [{{ http = "POST /vending/{{machine}}/telemetry" }}]
[functions.retry]
attempts = 1

[[functions]]
name = "private"
wasm = {hello:?}
triggers = [{{ http = "GET /private", auth = {{ api_keys = {{ file = {keys:?} }} }} }}]

[[functions]]
name = "slow"
wasm = {endless:?}
triggers = [{{ http = "GET /slow" }}]
[functions.limits]
timeout_ms = 400
fuel = 10_000_000_000
queue = 1
[functions.retry]
attempts = 1
"#,
            data = dir.join("data").display().to_string(),
            broker = free_port(),
            hello = example_wasm("hello_http.wasm").display().to_string(),
            vending = example_wasm("vending_telemetry.wasm").display().to_string(),
            endless = endless(dir),
            keys = {
                let path = dir.join("api-keys");
                std::fs::write(
                    &path,
                    "# one key per line\nkey-for-the-tablet-7f3a\nkey-for-the-dashboard-91c2\n",
                )
                .unwrap();
                path.display().to_string()
            },
        )
    })
}

#[test]
fn routes_answer_with_the_function_and_errors_a_client_can_act_on() {
    let port = free_port();
    let gateway = gateway(port);

    let ok = request(port, "GET", "/hello?name=Ada", b"");
    assert_eq!(ok.status, 200, "{ok:?}\n{}", gateway.logs());
    assert_eq!(ok.body, r#"{"greeting":"Hello, Ada!","hits":1}"#);
    assert_eq!(ok.header("content-type"), Some("application/json"));
    // A header of the function's own (`respond_header`).
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    assert!(ok.header("x-request-id").is_some(), "{ok:?}");
    // The effects were committed before the answer: the counter is there.
    let post = request(port, "POST", "/hello", br#"{"name":"Bob"}"#);
    assert_eq!(post.body, r#"{"greeting":"Hello, Bob!","hits":2}"#);

    let missing = request(port, "GET", "/nowhere", b"");
    assert_eq!(missing.status, 404, "{missing:?}");
    let wrong = request(port, "DELETE", "/hello/ada", b"");
    assert_eq!(wrong.status, 405, "{wrong:?}");
    assert_eq!(wrong.header("allow"), Some("GET"));
    let big = request(port, "POST", "/hello", &[b'a'; 4096]);
    assert_eq!(big.status, 413, "{big:?}");

    // vending-telemetry takes MQTT messages only: the request fails, is
    // dead-lettered, and the 502 names the request the dead letter holds.
    let failed = request(port, "POST", "/vending/vm-1/telemetry", b"{}");
    assert_eq!(failed.status, 502, "{failed:?}");
    assert!(failed.body.contains("dead-letter queue"), "{failed:?}");
    let request_id = failed
        .header("x-request-id")
        .expect("x-request-id")
        .to_owned();
    let config = gateway.config_path().to_str().unwrap().to_owned();
    let shown = wasmgate(&["dlq", "--config", &config, "show", "1"], ONE);
    assert!(
        shown
            .stdout
            .contains(&format!("\"request_id\": {request_id},")),
        "dead letter 1 is not request {request_id}:\n{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains(r#""machine": "vm-1""#),
        "the path parameter: {}",
        shown.stdout
    );
}

#[test]
fn a_route_with_api_keys_answers_only_a_client_with_one() {
    let port = free_port();
    let gateway = gateway(port);
    let none = request(port, "GET", "/private", b"");
    assert_eq!(none.status, 401, "{none:?}");
    assert!(none.header("www-authenticate").is_some());
    let wrong = request_with(
        port,
        "GET",
        "/private",
        "x-api-key: key-for-the-tablet\r\n",
        b"",
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let right = request_with(
        port,
        "GET",
        "/private?name=Tab",
        "x-api-key: key-for-the-dashboard-91c2\r\n",
        b"",
    );
    assert_eq!(right.status, 200, "{right:?}\n{}", gateway.logs());
    assert!(right.body.contains("Hello, Tab!"), "{right:?}");
    assert_eq!(
        gateway.log_lines_with(&["x-api-key"]).len(),
        2,
        "{}",
        gateway.logs()
    );
    assert!(
        !gateway.logs().contains("key-for-the"),
        "a key reached the log"
    );
    // Other routes stay open.
    assert_eq!(request(port, "GET", "/hello", b"").status, 200);
}

#[test]
fn a_full_queue_answers_429_and_a_deadline_504() {
    let port = free_port();
    let gateway = gateway(port);
    // One running, one queued; the rest find the queue full.
    let clients: Vec<_> = (0..4)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 50 }));
            std::thread::spawn(move || request(port, "GET", "/slow", b""))
        })
        .collect();
    let replies: Vec<Reply> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert!(statuses.contains(&504), "{statuses:?}\n{}", gateway.logs());
    assert!(statuses.contains(&429), "{statuses:?}");
    let throttled = replies.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(throttled.header("retry-after"), Some("1"));
    let late = replies.iter().find(|r| r.status == 504).unwrap();
    assert!(late.body.contains("deadline"), "{late:?}");
    assert!(late.header("x-request-id").is_some());
}

#[test]
fn config_check_finds_bad_and_clashing_routes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let hello = example_wasm("hello_http.wasm").display().to_string();
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"localhost:80\"\n[[functions]]\nname = \"a\"\nwasm = {hello:?}\ntriggers = [{{ http = \"GET /v/{{id}}\" }}, {{ http = \"FETCH /x\" }}]\n[[functions]]\nname = \"b\"\nwasm = {hello:?}\ntriggers = [{{ http = \"ANY /v/{{machine}}\" }}]\n"
        ),
    )
    .unwrap();
    let out = wasmgate(&["config", "check", path.to_str().unwrap()], ONE);
    assert_eq!(out.code, Some(2), "{out:?}");
    for says in [
        "gateway.toml:2: http.listen: invalid listen address \"localhost:80\"",
        "gateway.toml:6: functions[0].triggers[1].http: invalid route \"FETCH /x\": unknown method",
        "gateway.toml:10: functions[1].triggers[0].http: route \"ANY /v/{machine}\" clashes with GET /v/{id} of a",
    ] {
        assert!(out.stderr.contains(says), "missing {says:?} in:\n{}", out.stderr);
    }
}

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

/// `invocation = "event"`: 202 once the request is durable, the function
/// after. Requests answered 202 run once each, even when the gateway is
/// killed right after answering them.
#[test]
fn an_event_route_answers_202_once_queued_and_runs_each_request_once_across_kill_9() {
    let port = free_port();
    let mut gateway = GatewayProcess::start_toml(|dir| {
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [[functions]]\nname = \"ingest\"\nwasm = {hello:?}\n\
             triggers = [{{ http = \"POST /ingest\", invocation = \"event\" }}]\n",
            data = dir.join("data").display().to_string(),
            broker = free_port(),
            hello = example_wasm("hello_http.wasm").display().to_string(),
        )
    });
    let hits = |gateway: &GatewayProcess| {
        support::gateway::kv_value(gateway, "ingest", "hits").and_then(|v| v.parse::<u32>().ok())
    };
    for round in 1..=2u32 {
        for i in 0..20 {
            let reply = request(
                port,
                "POST",
                "/ingest",
                format!(r#"{{"name":"d{i}"}}"#).as_bytes(),
            );
            assert_eq!(reply.status, 202, "{reply:?}\n{}", gateway.logs());
            assert_eq!(reply.body.trim(), r#"{"queued":true}"#);
        }
        if round == 2 {
            // Answered, perhaps not yet run: the queue is on disk.
            gateway.kill();
            gateway.restart();
        }
        let want = 20 * round;
        assert!(
            support::mqtt::wait_until(ONE, || hits(&gateway) == Some(want)),
            "hits {:?}, want {want}\n{}",
            hits(&gateway),
            gateway.logs()
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(hits(&gateway), Some(40), "nothing ran twice");
}

/// One HTTPS request on its own connection, as `tls` allows.
fn request_tls(
    port: u16,
    tls: std::sync::Arc<rustls::ClientConfig>,
    target: &str,
) -> std::io::Result<Reply> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(tls, name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(ONE))?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    stream.write_all(
        format!("GET {target} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // Some servers close without close_notify; what came is the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    Ok(Reply {
        status,
        headers: Vec::new(),
        body: body.to_owned(),
    })
}

/// `[http] tls` with `client_ca`: the route is served over HTTPS to a
/// client with a certificate from the CA, and no one else gets in.
#[test]
fn https_with_client_certificates_serves_only_clients_of_the_ca() {
    use support::tls::{device_tls, Ca};
    let ca = Ca::new("tablets CA");
    let other = Ca::new("someone else's CA");
    let (cert, key) = ca.sign("127.0.0.1");
    let port = free_port();
    let gateway = GatewayProcess::start_toml(|dir| {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             tls = {{ cert = {cert:?}, key = {key:?}, client_ca = {ca:?} }}\n\
             [[functions]]\nname = \"hello\"\nwasm = {hello:?}\ntriggers = [{{ http = \"GET /hello\" }}]\n",
            data = dir.join("data").display().to_string(),
            broker = free_port(),
            cert = write("server.crt", &cert),
            key = write("server.key", &key),
            ca = write("clients-ca.crt", &ca.pem),
            hello = example_wasm("hello_http.wasm").display().to_string(),
        )
    });
    let tablet = ca.sign("tablet-7");
    let ok = request_tls(port, device_tls(&ca, Some(&tablet)), "/hello?name=Tab")
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.logs()));
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.body.contains("Hello, Tab!"), "{ok:?}");
    // No certificate, or one from another CA: refused in the handshake.
    assert!(request_tls(port, device_tls(&ca, None), "/hello").is_err());
    let stranger = other.sign("stranger");
    assert!(request_tls(port, device_tls(&ca, Some(&stranger)), "/hello").is_err());
    // Plain HTTP on the HTTPS port is not served either.
    let plain = std::panic::catch_unwind(|| request(port, "GET", "/hello", b""));
    assert!(plain.map_or(true, |r| r.status != 200));
    assert!(
        support::mqtt::wait_until(ONE, || gateway
            .logs()
            .contains("https client refused: TLS handshake failed")),
        "{}",
        gateway.logs()
    );
}

//! One plain HTTP/1.1 request, for the tests that talk to the gateway's
//! HTTP listeners (routes, the management API on TCP, `/metrics`).

use std::io::{Read, Write};
use std::time::Duration;

/// Sends `method target` to 127.0.0.1:`port` with `connection: close`,
/// extra header lines `headers` (each ending in `\r\n`) and `body`; the
/// status (0 if there was none) and the whole answer, head and body.
pub fn request(port: u16, method: &str, target: &str, headers: &str, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

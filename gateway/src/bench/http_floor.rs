//! `wasmgate bench http-floor`: the floor an HTTP route is measured
//! against. A minimal axum handler (the axum and hyper the HTTP trigger
//! serves with) answering `/hello` as `functions/examples/hello-http` does,
//! with no function, no queue and no database: its `hits` counter is an
//! atomic in memory.
//!
//! - `GET /hello?name=Ada` or `POST /hello` with `{"name":"Ada"}` (or the
//!   plain text `Ada`): `200 {"greeting":"Hello, Ada!","hits":3}`; without a
//!   name, `world`.
//! - Other methods `405`; a name that is not UTF-8 or over 64 bytes `400`.
//! - Any other path `404`.

use super::http::HttpError;
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use clap::Args;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// hello-http's longest name, in bytes.
const MAX_NAME: usize = 64;
/// The body a request may carry.
const MAX_BODY: usize = 1 << 20;

/// hello-http's answer to `method` with `query` and `body`, the `hits`
/// counter taken from `hits` when it greets: `(status, JSON body)`.
pub fn greet(method: &str, query: &str, body: &[u8], hits: &AtomicI64) -> (u16, String) {
    if method != "GET" && method != "POST" {
        return (
            405,
            r#"{"error":"method not allowed, use GET or POST"}"#.to_owned(),
        );
    }
    let Some(name) = name_of(query, body) else {
        return (
            400,
            r#"{"error":"name must be UTF-8, at most 64 bytes"}"#.to_owned(),
        );
    };
    let hits = hits.fetch_add(1, Ordering::Relaxed) + 1;
    let greeting = format!("Hello, {name}!");
    let json = serde_json::json!({ "greeting": greeting, "hits": hits });
    (200, json.to_string())
}

/// The name from `?name=` (percent-decoded), else the body's JSON `name`,
/// else the body as text, else `world`; `None` if too long or not UTF-8.
fn name_of(query: &str, body: &[u8]) -> Option<String> {
    if let Some(raw) = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "name")
        .map(|(_, v)| v)
    {
        let bytes = percent_decode(raw)?;
        if bytes.len() > MAX_NAME {
            return None;
        }
        return String::from_utf8(bytes).ok();
    }
    let body = body.trim_ascii();
    if body.is_empty() {
        return Some("world".to_owned());
    }
    let name = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(fields)) => match fields.get("name") {
            Some(serde_json::Value::String(name)) => name.clone(),
            Some(serde_json::Value::Null) | None => "world".to_owned(),
            Some(_) => std::str::from_utf8(body).ok()?.to_owned(),
        },
        _ => std::str::from_utf8(body).ok()?.to_owned(),
    };
    (name.len() <= MAX_NAME).then_some(name)
}

/// Decodes `%XX` and `+`; `None` if malformed.
fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                (hi << 4 | lo) as u8
            }
            other => other,
        });
    }
    Some(out)
}

#[derive(Debug, Default)]
struct Floor {
    hits: AtomicI64,
    answered: AtomicU64,
}

async fn hello(floor: Arc<Floor>, request: Request<Body>) -> axum::response::Response {
    let method = request.method().clone();
    let query = request.uri().query().unwrap_or("").to_owned();
    let body = if method == Method::GET {
        Default::default()
    } else {
        match axum::body::to_bytes(request.into_body(), MAX_BODY).await {
            Ok(body) => body,
            Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, ""),
        }
    };
    let (status, json) = greet(method.as_str(), &query, &body, &floor.hits);
    floor.answered.fetch_add(1, Ordering::Relaxed);
    let mut response = axum::response::Response::new(Body::from(json));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn plain(status: StatusCode, text: &str) -> axum::response::Response {
    let mut response = axum::response::Response::new(Body::from(text.to_owned()));
    *response.status_mut() = status;
    response
}

/// `wasmgate bench http-floor`.
#[derive(Debug, Clone, Args)]
pub struct HttpFloorArgs {
    /// Where to listen, HOST:PORT (port 0: any free one, printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
}

impl HttpFloorArgs {
    /// Serves until `shutdown`; says on stderr where once listening.
    pub async fn command(self, shutdown: impl Future<Output = ()>) -> Result<String, HttpError> {
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|error| HttpError::Listen {
                addr: self.listen,
                error,
            })?;
        let addr = listener.local_addr().map_err(HttpError::Serve)?;
        let floor = Arc::new(Floor::default());
        let app = {
            let floor = floor.clone();
            axum::Router::new()
                .route(
                    "/hello",
                    axum::routing::any(move |request: Request<Body>| hello(floor.clone(), request)),
                )
                .fallback(|| async { plain(StatusCode::NOT_FOUND, "no route for this path\n") })
        };
        eprintln!("http floor listening on {addr}: GET or POST /hello, as hello-http answers");
        // axum wants a shutdown future it can send to its task; `shutdown` need not be.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        let served = tokio::select! {
            served = &mut server => served,
            () = shutdown => {
                let _ = stop.send(());
                server.await
            }
        };
        served
            .map_err(|e| HttpError::Serve(std::io::Error::other(e)))?
            .map_err(HttpError::Serve)?;
        Ok(format!(
            "http floor: {} requests answered, {} greetings\n",
            floor.answered.load(Ordering::Relaxed),
            floor.hits.load(Ordering::Relaxed)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases of hello-http's own tests, answered the same.
    #[test]
    fn it_answers_as_hello_http_does() {
        let hits = AtomicI64::new(0);
        let ask =
            |method: &str, query: &str, body: &str| greet(method, query, body.as_bytes(), &hits);
        assert_eq!(
            ask("GET", "name=Ada", ""),
            (200, r#"{"greeting":"Hello, Ada!","hits":1}"#.to_owned())
        );
        assert!(ask("GET", "lang=en&name=Ada+Lovelace%21", "")
            .1
            .contains("Hello, Ada Lovelace!!"));
        assert!(ask("POST", "", r#"{"name":"Grace"}"#)
            .1
            .contains("Hello, Grace!"));
        assert!(ask("POST", "", "Linus\n").1.contains("Hello, Linus!"));
        assert!(ask("GET", "", "").1.contains("Hello, world!"));
        assert_eq!(
            ask("GET", "name=%22x%22", ""),
            (200, r#"{"greeting":"Hello, \"x\"!","hits":6}"#.to_owned())
        );
        assert_eq!(ask("DELETE", "name=Ada", "").0, 405);
        let long = format!("name={}", "a".repeat(65));
        assert_eq!(ask("GET", &long, "").0, 400);
        assert_eq!(ask("GET", "name=%ff", "").0, 400);
        assert_eq!(ask("GET", "name=%zz", "").0, 400);
        assert_eq!(hits.load(Ordering::Relaxed), 6, "only greetings count hits");
    }

    #[tokio::test]
    async fn it_serves_over_http() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(HttpFloorArgs { listen: addr }.command(async move {
            let _ = stopped.await;
        }));
        let mut stream = loop {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => break stream,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        let mut buf = Vec::new();
        for (request, want) in [
            (
                "GET /hello?name=Ada HTTP/1.1\r\nHost: x\r\n\r\n",
                r#"{"greeting":"Hello, Ada!","hits":1}"#,
            ),
            (
                "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n{\"name\":\"Grace\"}",
                r#"{"greeting":"Hello, Grace!","hits":2}"#,
            ),
            (
                "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
                "no route for this path\n",
            ),
        ] {
            stream.write_all(request.as_bytes()).await.unwrap();
            let parsed = loop {
                if let Some(parsed) =
                    super::super::http::parse_response(&buf, false, false).unwrap()
                {
                    break parsed;
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed");
                buf.extend_from_slice(&chunk[..n]);
            };
            let body = &buf[parsed.body_start..parsed.body_start + parsed.body_len];
            assert_eq!(std::str::from_utf8(body).unwrap(), want);
            assert!(parsed.keep_alive);
            buf.drain(..parsed.len);
        }
        drop(stream);
        stop.send(()).unwrap();
        let summary = server.await.unwrap().unwrap();
        assert!(
            summary.contains("2 requests answered, 2 greetings"),
            "{summary}"
        );
    }
}

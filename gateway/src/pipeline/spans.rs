//! The OTLP/HTTP span exporter (`[tracing]`): reads the spans the store
//! keeps (`store/spans.rs`) in id order, posts them to the collector as one
//! protobuf `ExportTraceServiceRequest` per batch, and lets them go once
//! the collector has answered 2xx. While the collector or the link is down
//! the spans wait on disk and the exporter retries with backoff: the
//! retryable answers are those OTLP names (429, 502, 503, 504) and any
//! failure to connect; another 4xx is a batch the collector will never
//! take, dropped and counted rather than retried for ever.
//!
//! A small HTTP/1.1 client on the hyper the HTTP trigger already builds: a
//! connection per batch (a batch waits at least a second), HTTPS through
//! the rustls the MQTT links use.

use crate::store::Store;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Spans in one request, at most: ~200 bytes each, ~100 KB a request.
const BATCH: usize = 512;
/// How long a quiet exporter waits before it looks for spans again.
const IDLE: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go: an `http://` or `https://` URL, parsed once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, as sent on the request line.
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            if !cfg!(feature = "tls") {
                return Err("this wasmgate is built without the tls feature".into());
            }
            (true, rest)
        } else {
            return Err("it must start with http:// or https://".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/v1/traces"),
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not taken".into());
        }
        let (host, port) = match authority.strip_prefix('[') {
            // An IPv6 literal: [::1]:4318
            Some(v6) => {
                let (host, rest) = v6.split_once(']').ok_or("no ] after an IPv6 address")?;
                (host, rest.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(port) => port.parse().map_err(|_| format!("bad port {port:?}"))?,
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Endpoint {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// What the exporter did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    /// Spans the collector refused for good (a 4xx other than 429).
    pub refused: AtomicU64,
    /// Requests that failed and are retried.
    pub failures: AtomicU64,
    /// Whether the last request reached the collector.
    pub reachable: AtomicBool,
}

/// The exporter's task; ends when `stop` turns true (what it has not sent
/// waits in the database for the next start).
pub async fn run(
    store: Store,
    endpoint: Endpoint,
    resource: Vec<(&'static str, String)>,
    tls: Option<Arc<rustls_config::Config>>,
    stats: Arc<ExportStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut after = 0i64;
    let mut backoff = Duration::from_secs(1);
    let mut down_since: Option<std::time::Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let reader = store.clone();
        let batch = tokio::task::spawn_blocking(move || reader.spans_after(after, BATCH)).await;
        let waiting = match batch {
            Ok(Ok(waiting)) => waiting,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the spans waiting for the collector; trying again");
                None
            }
            Err(_) => return,
        };
        let Some(waiting) = waiting else {
            if sleep_or_stop(&mut stop, IDLE).await {
                return;
            }
            continue;
        };
        let (last, count) = (waiting.last, waiting.count);
        let request = crate::trace::export_request(&resource, &waiting.framed);
        let outcome = post(&endpoint, tls.as_deref(), request).await;
        match outcome {
            Ok(status) if (200..300).contains(&status) => {
                stats.exported.fetch_add(count, Ordering::Relaxed);
                stats.reachable.store(true, Ordering::Relaxed);
                if let Some(since) = down_since.take() {
                    tracing::info!(after = ?since.elapsed(), "the trace collector takes spans again");
                }
                backoff = Duration::from_secs(1);
                after = last;
                store.spans_exported(last);
                continue;
            }
            Ok(status) if (400..500).contains(&status) && status != 429 && status != 408 => {
                stats.refused.fetch_add(count, Ordering::Relaxed);
                stats.reachable.store(true, Ordering::Relaxed);
                tracing::warn!(
                    status,
                    spans = count,
                    "the trace collector refused a batch of spans for good; they are dropped"
                );
                after = last;
                store.spans_exported(last);
                continue;
            }
            Ok(status) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                stats.reachable.store(false, Ordering::Relaxed);
                if down_since.is_none() {
                    tracing::warn!(status, retry_in = ?backoff, "the trace collector cannot take spans now; they wait in the database");
                    down_since = Some(std::time::Instant::now());
                }
            }
            Err(error) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                stats.reachable.store(false, Ordering::Relaxed);
                if down_since.is_none() {
                    tracing::warn!(%error, retry_in = ?backoff, "cannot reach the trace collector; spans wait in the database");
                    down_since = Some(std::time::Instant::now());
                }
            }
        }
        if sleep_or_stop(&mut stop, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// True when told to stop.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
    }
}

/// The rustls client configuration, or a stand-in without the feature.
#[cfg(feature = "tls")]
pub mod rustls_config {
    pub type Config = rustls::ClientConfig;
}
#[cfg(not(feature = "tls"))]
pub mod rustls_config {
    #[derive(Debug)]
    pub enum Config {}
}

/// POSTs one request body; the collector's status.
async fn post(
    endpoint: &Endpoint,
    tls: Option<&rustls_config::Config>,
    body: Vec<u8>,
) -> Result<u16, String> {
    let connect = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port));
    let tcp = tokio::time::timeout(TIMEOUT, connect)
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    match (endpoint.tls, tls) {
        #[cfg(feature = "tls")]
        (true, Some(config)) => {
            let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                .map_err(|e| e.to_string())?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config.clone()));
            let stream = tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| "TLS handshake timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            exchange(endpoint, stream, body).await
        }
        (true, _) => Err("https needs the tls feature".into()),
        (false, _) => exchange(endpoint, tcp, body).await,
    }
}

async fn exchange<S>(endpoint: &Endpoint, stream: S, body: Vec<u8>) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    use axum::http::{header, Request};
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let default_port = if endpoint.tls { 443 } else { 80 };
    let host = if endpoint.port == default_port {
        endpoint.host.clone()
    } else {
        format!("{}:{}", endpoint.host, endpoint.port)
    };
    let request = Request::post(endpoint.path.as_str())
        .header(header::HOST, host)
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .header(
            header::USER_AGENT,
            concat!("wasmgate/", env!("CARGO_PKG_VERSION")),
        )
        .body(axum::body::Body::from(body))
        .map_err(|e| e.to_string())?;
    let answered = tokio::time::timeout(TIMEOUT, sender.send_request(request)).await;
    driver.abort();
    let response = answered
        .map_err(|_| "the collector did not answer in time".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_their_defaults() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:4318/v1/traces").unwrap(),
            Endpoint {
                tls: false,
                host: "127.0.0.1".into(),
                port: 4318,
                path: "/v1/traces".into()
            }
        );
        let bare = Endpoint::parse("http://collector").unwrap();
        assert_eq!((bare.port, bare.path.as_str()), (80, "/v1/traces"));
        let v6 = Endpoint::parse("http://[::1]:4318/v1/traces").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 4318));
        for bad in [
            "collector:4318",
            "http://",
            "http://a:b/",
            "http://u:p@h/",
            "ftp://h/",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}

//! `wasmgate bench http`: an HTTP/1.1 load generator, like wrk: N keep-alive
//! connections, each with one request in flight, sending the same request
//! flat out for a duration or a number of requests. It reports requests per
//! second, latency percentiles, every status and every error (nothing is
//! dropped from the counts), and optionally the CPU and memory of the
//! processes under test ([`super::procfs`]).
//!
//! Raw TCP on tokio: the request is built once ([`request_bytes`]) and
//! written as it is; each answer is read until [`parse_response`] (pure)
//! says it is complete: status line, headers, then a `Content-Length`,
//! chunked or read-until-close body. A connection that the server closes, or
//! that fails, is opened again; the failed request counts as an error.

use super::procfs::{Sampler, Usage};
use super::stats::Latency;
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response head larger than this is an error, not a response.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes of the first 2xx body kept in the report, to show what was answered.
const SAMPLE_BODY: usize = 256;

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not an HTTP/1.x status line: {0:?}")]
    StatusLine(String),
    #[error("a header line without a colon: {0:?}")]
    Header(String),
    #[error("invalid Content-Length {0:?}")]
    ContentLength(String),
    #[error("invalid chunk size line {0:?}")]
    Chunk(String),
    #[error("the response head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
}

/// One complete response at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The final status (interim 1xx answers before it are skipped).
    pub status: u16,
    /// Bytes of the buffer the response takes, interim answers included.
    pub len: usize,
    /// Where its body starts in the buffer.
    pub body_start: usize,
    /// Body bytes (decoded, for a chunked body).
    pub body_len: usize,
    /// Whether the body is chunked (then `body_start..` holds chunk framing).
    pub chunked: bool,
    /// Whether the connection may carry another request.
    pub keep_alive: bool,
}

/// Parses the response at the start of `buf`: `Ok(None)` while more bytes
/// are needed. `head` says the request was a HEAD (no body follows); `eof`
/// that the peer closed the connection after `buf`, which ends a body
/// without a length.
pub fn parse_response(buf: &[u8], head: bool, eof: bool) -> Result<Option<Parsed>, ParseError> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let Some(head_len) = find(rest, b"\r\n\r\n").map(|i| i + 4) else {
            return if rest.len() > MAX_HEAD {
                Err(ParseError::HeadTooLarge)
            } else {
                Ok(None)
            };
        };
        if head_len > MAX_HEAD {
            return Err(ParseError::HeadTooLarge);
        }
        let text = String::from_utf8_lossy(&rest[..head_len - 4]);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let (http10, status) = status_of(status_line)?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut keep_alive = !http10;
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| ParseError::Header(line.to_owned()))?;
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                let n = value
                    .parse::<usize>()
                    .map_err(|_| ParseError::ContentLength(value.to_owned()))?;
                if length.is_some_and(|m| m != n) {
                    return Err(ParseError::ContentLength(value.to_owned()));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        keep_alive = true;
                    }
                }
            }
        }
        // 1xx (but 101, which switches protocols) is interim: the answer follows.
        if (100..200).contains(&status) && status != 101 {
            at += head_len;
            continue;
        }
        let body_start = at + head_len;
        let body = &buf[body_start..];
        let done = |body_len: usize, len: usize, chunked: bool, keep_alive: bool| {
            Some(Parsed {
                status,
                len,
                body_start,
                body_len,
                chunked,
                keep_alive,
            })
        };
        if head || status == 204 || status == 304 || status == 101 {
            return Ok(done(0, body_start, false, keep_alive));
        }
        if chunked {
            return Ok(chunked_len(body)?.and_then(|(framed, decoded)| {
                done(decoded, body_start + framed, true, keep_alive)
            }));
        }
        if let Some(n) = length {
            return Ok((body.len() >= n)
                .then(|| done(n, body_start + n, false, keep_alive))
                .flatten());
        }
        // No length: the body runs to the end of the connection.
        return Ok(if eof {
            done(body.len(), buf.len(), false, false)
        } else {
            None
        });
    }
}

/// `(HTTP/1.0?, status)` of a status line like `HTTP/1.1 200 OK`.
fn status_of(line: &str) -> Result<(bool, u16), ParseError> {
    let bad = || ParseError::StatusLine(line.chars().take(80).collect());
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().ok_or_else(bad)?;
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(bad()),
    };
    let code = parts.next().ok_or_else(bad)?;
    if code.len() != 3 {
        return Err(bad());
    }
    let status = code.parse::<u16>().map_err(|_| bad())?;
    if !(100..600).contains(&status) {
        return Err(bad());
    }
    Ok((http10, status))
}

/// `(framed bytes, decoded bytes)` of a complete chunked body at the start
/// of `body`, trailers included; `None` while it is incomplete.
fn chunked_len(body: &[u8]) -> Result<Option<(usize, usize)>, ParseError> {
    let mut at = 0;
    let mut decoded = 0;
    loop {
        let Some(line_len) = find(&body[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&body[at..at + line_len]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ParseError::Chunk(line.chars().take(80).collect()))?;
        at += line_len + 2;
        if size == 0 {
            // Trailers, each a line, then an empty line.
            loop {
                let Some(trailer_len) = find(&body[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += trailer_len + 2;
                if trailer_len == 0 {
                    return Ok(Some((at, decoded)));
                }
            }
        }
        let end = at.checked_add(size).and_then(|e| e.checked_add(2));
        match end {
            Some(end) if body.len() >= end => {
                if &body[end - 2..end] != b"\r\n" {
                    return Err(ParseError::Chunk("no CRLF after a chunk".to_owned()));
                }
                decoded += size;
                at = end;
            }
            Some(_) => return Ok(None),
            None => return Err(ParseError::Chunk(size_text.to_owned())),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Where to send: `http://HOST[:PORT][/PATH[?QUERY]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// The path and query, starting with `/`.
    pub target: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("{s:?}: only http:// URLs (no TLS)"))?;
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: an IPv6 host needs its closing ]"))?;
            let port = after.strip_prefix(':');
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("{s:?}: invalid port {p:?}"))?,
        };
        Ok(Url {
            host: host.to_owned(),
            port,
            target,
        })
    }

    /// The `Host` header: the host, and the port unless it is 80.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.target)
    }
}

/// The bytes of one request: `Host`, the extra headers, and a
/// `Content-Length` whenever there is a body (or the method usually has one).
pub fn request_bytes(
    method: &str,
    url: &Url,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\n",
        url.target,
        url.authority()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// What to send, how hard, and what to watch.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: Url,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Keep-alive connections, each with one request in flight.
    pub connections: u32,
    /// Requests to send (after the warm-up); `None`: for `duration`.
    pub requests: Option<u64>,
    /// How long to send, after the warm-up, when `requests` is `None`.
    pub duration: Duration,
    /// Sent but not counted first: connections opened, caches and JITs warm.
    pub warmup: Duration,
    /// A request unanswered this long is an error (and its connection closed).
    pub timeout: Duration,
    /// Processes to sample.
    pub pids: Vec<u32>,
    pub sample_every: Duration,
    pub label: Option<String>,
}

impl Options {
    pub const DEFAULT_CONNECTIONS: u32 = 32;

    /// Every problem, one per line.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.connections == 0 {
            problems.push("connections must be at least 1".to_owned());
        }
        if self.requests == Some(0) {
            problems.push("requests must be at least 1".to_owned());
        }
        if self.method.is_empty() || !self.method.bytes().all(|b| b.is_ascii_uppercase()) {
            problems.push(format!(
                "method {:?} is not an upper-case HTTP method",
                self.method
            ));
        }
        for (name, value) in &self.headers {
            if name.is_empty()
                || name.contains([':', '\r', '\n', ' '])
                || value.contains(['\r', '\n'])
            {
                problems.push(format!("header {name:?}: {value:?} is not a header"));
            }
        }
        for pid in &self.pids {
            if super::procfs::read(*pid).is_none() {
                problems.push(format!(
                    "no process {pid} to sample (/proc/{pid} unreadable)"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid http bench options:\n{0}")]
    Invalid(String),
    #[error("cannot resolve {host}: {error}")]
    Resolve { host: String, error: std::io::Error },
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the HTTP floor failed: {0}")]
    Serve(std::io::Error),
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: Option<String>,
    pub method: String,
    pub url: String,
    pub connections: u32,
    pub requests_target: Option<u64>,
    pub duration_target_s: Option<f64>,
    pub warmup_s: f64,
    /// Requests sent in the measured window: answered plus failed.
    pub sent: u64,
    /// Responses read, any status.
    pub answered: u64,
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Responses with another status.
    pub non_2xx: u64,
    /// Every status seen, with its count.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no response, by why (connect, closed, io, parse, timeout).
    pub errors: BTreeMap<&'static str, u64>,
    /// Connections opened, the first ones included.
    pub connects: u64,
    /// From the end of the warm-up to the last answer.
    pub elapsed_s: f64,
    /// 2xx responses per second over `elapsed_s`: the headline.
    pub ok_per_s: f64,
    /// Responses of any status per second.
    pub answered_per_s: f64,
    /// Response bytes read, heads and bodies, of every status.
    pub bytes_read: u64,
    /// From writing each request to reading its whole 2xx response.
    pub latency: Latency,
    /// The start of the first 2xx body, as text.
    pub sample_body: Option<String>,
    pub interrupted: bool,
    /// The processes sampled with `--pid`, over the measured window (after the warm-up).
    pub processes: Vec<Usage>,
    /// The bench itself: on a small machine it competes for the same cores.
    pub bench: Usage,
}

impl Report {
    /// Errors of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(label) = &self.label {
            writeln!(f, "{label}")?;
        }
        let how_long = match (self.requests_target, self.duration_target_s) {
            (Some(n), _) => format!("{n} requests"),
            (None, Some(s)) => format!("{s:.0} s"),
            (None, None) => String::new(),
        };
        writeln!(
            f,
            "  {} {}, {} connections, {how_long} after {:.0} s of warm-up",
            self.method, self.url, self.connections, self.warmup_s
        )?;
        writeln!(
            f,
            "  2xx      {:>9.0} req/s  ({} of {} answered in {:.2} s; {:.0} answers/s in all)",
            self.ok_per_s, self.ok, self.answered, self.elapsed_s, self.answered_per_s
        )?;
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect();
        writeln!(
            f,
            "  status   {}; non-2xx {}; errors {}; {} connects",
            if statuses.is_empty() {
                "none".to_owned()
            } else {
                statuses.join(", ")
            },
            self.non_2xx,
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(", ")
            },
            self.connects
        )?;
        let l = &self.latency;
        writeln!(
            f,
            "  latency  p50 {}  p90 {}  p99 {}  max {}  (mean {}, min {}; 2xx)",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.max_us),
            ms(l.mean_us),
            ms(l.min_us)
        )?;
        for usage in self.processes.iter().chain(std::iter::once(&self.bench)) {
            let who = if std::ptr::eq(usage, &self.bench) {
                "bench".to_owned()
            } else {
                format!("{} {}", usage.name, usage.pid)
            };
            writeln!(
                f,
                "  {who:<16} cpu {:>5.1} % avg, {:>5.1} % peak ({:.2} s); rss {:.1} MiB max ({:.1} at start, {:.1} at end)",
                usage.cpu_pct,
                usage.cpu_pct_max,
                usage.cpu_s,
                usage.rss_kib_max as f64 / 1024.0,
                usage.rss_kib_start as f64 / 1024.0,
                usage.rss_kib_end as f64 / 1024.0
            )?;
        }
        if let Some(body) = &self.sample_body {
            writeln!(f, "  answer   {body}")?;
        }
        if self.interrupted {
            writeln!(f, "  interrupted")?;
        }
        Ok(())
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// Which requests to send: a count or a deadline, after the warm-up.
#[derive(Debug)]
struct Plan {
    measure_from: Instant,
    deadline: Option<Instant>,
    /// Requests left to send in the measured window, when counted.
    remaining: Option<AtomicU64>,
    stop: AtomicBool,
}

impl Plan {
    /// Whether to send another request now; `Some(counted)`.
    fn claim(&self) -> Option<bool> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        if now < self.measure_from {
            return Some(false);
        }
        if let Some(deadline) = self.deadline {
            return (now < deadline).then_some(true);
        }
        let remaining = self.remaining.as_ref()?;
        remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .ok()
            .map(|_| true)
    }
}

/// What one connection's task saw in the measured window.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    sent: u64,
    connects: u64,
    bytes_read: u64,
    last_answer: Option<Instant>,
    sample_body: Option<String>,
}

impl Tally {
    fn error(&mut self, counted: bool, kind: &'static str) {
        if counted {
            *self.errors.entry(kind).or_default() += 1;
        }
    }
}

/// How an exchange failed.
#[derive(Debug)]
enum Failure {
    Closed,
    Io,
    Parse,
}

impl Failure {
    fn kind(&self) -> &'static str {
        match self {
            Failure::Closed => "closed",
            Failure::Io => "io",
            Failure::Parse => "parse",
        }
    }
}

/// Writes the request and reads one whole response into `buf`.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    head: bool,
    buf: &mut Vec<u8>,
) -> Result<Parsed, Failure> {
    stream.write_all(request).await.map_err(|_| Failure::Io)?;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(parsed) = parse_response(buf, head, false).map_err(|_| Failure::Parse)? {
            return Ok(parsed);
        }
        let n = stream.read(&mut chunk).await.map_err(|_| Failure::Io)?;
        if n == 0 {
            return match parse_response(buf, head, true) {
                Ok(Some(parsed)) => Ok(parsed),
                Ok(None) => Err(Failure::Closed),
                Err(_) => Err(Failure::Parse),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connection(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    head: bool,
    timeout: Duration,
    plan: Arc<Plan>,
) -> Tally {
    let mut tally = Tally::default();
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    while let Some(counted) = plan.claim() {
        if counted {
            tally.sent += 1;
        }
        if stream.is_none() {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    tally.connects += 1;
                    stream = Some(s);
                    buf.clear();
                }
                Ok(Err(_)) | Err(_) => {
                    tally.error(counted, "connect");
                    // A server that is not there: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, exchange(s, &request, head, &mut buf)).await;
        let answered = Instant::now();
        match result {
            Ok(Ok(parsed)) => {
                if counted {
                    *tally.statuses.entry(parsed.status).or_default() += 1;
                    tally.bytes_read += parsed.len as u64;
                    tally.last_answer = Some(answered);
                    if (200..300).contains(&parsed.status) {
                        tally
                            .latencies_us
                            .push((answered - started).as_micros() as u64);
                        if tally.sample_body.is_none() && !parsed.chunked {
                            let body = &buf[parsed.body_start..parsed.body_start + parsed.body_len];
                            let body = &body[..body.len().min(SAMPLE_BODY)];
                            tally.sample_body = Some(String::from_utf8_lossy(body).into_owned());
                        }
                    }
                }
                buf.drain(..parsed.len);
                if !parsed.keep_alive {
                    stream = None;
                }
            }
            Ok(Err(failure)) => {
                tally.error(counted, failure.kind());
                stream = None;
            }
            Err(_) => {
                tally.error(counted, "timeout");
                stream = None;
            }
        }
    }
    tally
}

/// Runs one load: opens the connections, sends until the count or the
/// duration is reached (or `shutdown`), and reports.
pub async fn run(
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, HttpError> {
    options.validate().map_err(HttpError::Invalid)?;
    let addr = tokio::net::lookup_host((options.url.host.as_str(), options.url.port))
        .await
        .map_err(|error| HttpError::Resolve {
            host: options.url.host.clone(),
            error,
        })?
        .next()
        .ok_or_else(|| HttpError::Resolve {
            host: options.url.host.clone(),
            error: std::io::Error::other("no address"),
        })?;
    let request = Arc::new(request_bytes(
        &options.method,
        &options.url,
        &options.headers,
        &options.body,
    ));
    let head = options.method == "HEAD";

    let start = Instant::now();
    let measure_from = start + options.warmup;
    let mut samplers: Vec<Sampler> = options.pids.iter().map(|&pid| Sampler::new(pid)).collect();
    samplers.push(Sampler::new(std::process::id()));
    let samplers = Arc::new(Mutex::new(samplers));
    let sampling = tokio::spawn(sample(samplers.clone(), measure_from, options.sample_every));
    let plan = Arc::new(Plan {
        measure_from,
        deadline: options
            .requests
            .is_none()
            .then_some(measure_from + options.duration),
        remaining: options.requests.map(AtomicU64::new),
        stop: AtomicBool::new(false),
    });
    let tasks: Vec<_> = (0..options.connections)
        .map(|_| {
            tokio::spawn(connection(
                addr,
                request.clone(),
                head,
                options.timeout,
                plan.clone(),
            ))
        })
        .collect();
    let all = futures_join(tasks);
    tokio::pin!(all);
    tokio::pin!(shutdown);
    let mut interrupted = false;
    let tallies = tokio::select! {
        tallies = &mut all => tallies,
        () = &mut shutdown => {
            interrupted = true;
            plan.stop.store(true, Ordering::Relaxed);
            all.await
        }
    };
    let end = Instant::now();
    sampling.abort();
    let mut usage: Vec<Usage> = {
        let mut samplers = samplers.lock().unwrap_or_else(PoisonError::into_inner);
        samplers.iter_mut().for_each(Sampler::sample);
        samplers.iter().map(Sampler::usage).collect()
    };
    let bench = usage.pop().unwrap_or_default();

    let mut latencies = Vec::new();
    let mut statuses = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let (mut sent, mut connects, mut bytes_read) = (0, 0, 0);
    let mut last_answer = None;
    let mut sample_body = None;
    for tally in tallies {
        latencies.extend(tally.latencies_us);
        for (status, n) in tally.statuses {
            *statuses.entry(status).or_insert(0) += n;
        }
        for (kind, n) in tally.errors {
            *errors.entry(kind).or_insert(0) += n;
        }
        sent += tally.sent;
        connects += tally.connects;
        bytes_read += tally.bytes_read;
        last_answer = last_answer.max(tally.last_answer);
        sample_body = sample_body.or(tally.sample_body);
    }
    let answered: u64 = statuses.values().sum();
    let ok: u64 = statuses
        .iter()
        .filter(|(status, _)| (200..300).contains(*status))
        .map(|(_, n)| n)
        .sum();
    let window_end = last_answer.unwrap_or(end).max(measure_from);
    let elapsed_s = (window_end - measure_from.min(window_end)).as_secs_f64();
    let per_s = |n: u64| {
        if elapsed_s > 0.0 {
            n as f64 / elapsed_s
        } else {
            0.0
        }
    };
    Ok(Report {
        label: options.label,
        method: options.method,
        url: options.url.to_string(),
        connections: options.connections,
        requests_target: options.requests,
        duration_target_s: options
            .requests
            .is_none()
            .then_some(options.duration.as_secs_f64()),
        warmup_s: options.warmup.as_secs_f64(),
        sent,
        answered,
        ok,
        non_2xx: answered - ok,
        statuses,
        errors,
        connects,
        elapsed_s,
        ok_per_s: per_s(ok),
        answered_per_s: per_s(answered),
        bytes_read,
        latency: Latency::of(&mut latencies),
        sample_body,
        interrupted,
        processes: usage,
        bench,
    })
}

/// Awaits every task; a task that panicked contributes nothing.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Vec<Tally> {
    let mut tallies = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(tally) = task.await {
            tallies.push(tally);
        }
    }
    tallies
}

/// Samples every process from `from` (the end of the warm-up) until aborted.
async fn sample(samplers: Arc<Mutex<Vec<Sampler>>>, from: Instant, every: Duration) {
    let mut ticks = tokio::time::interval_at(from.into(), every);
    loop {
        ticks.tick().await;
        samplers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
            .for_each(Sampler::sample);
    }
}

/// `wasmgate bench http`.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// The URL to load: http://HOST[:PORT]/PATH[?QUERY].
    #[arg(value_name = "URL", value_parser = Url::parse)]
    pub url: Url,
    /// The request method.
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// The request body (sent with a Content-Length).
    #[arg(long, short = 'd', value_name = "TEXT")]
    pub body: Option<String>,
    /// A request header, "Name: value"; repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Keep-alive connections, each with one request in flight.
    #[arg(long, short = 'c', default_value_t = Options::DEFAULT_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Requests to send (after the warm-up); without it, send for --duration.
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// Seconds to send for (after the warm-up), when --requests is not given.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    pub duration: Duration,
    /// Seconds to send before counting.
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_seconds_or_zero)]
    pub warmup: Duration,
    /// Seconds a request may go unanswered before it counts as an error.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// A process to sample CPU and memory of; repeatable.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// A name for the run, printed and kept in the JSON.
    #[arg(long)]
    pub label: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl HttpArgs {
    pub fn into_options(self) -> Options {
        Options {
            url: self.url,
            method: self.method,
            headers: self.headers,
            body: self.body.map(String::into_bytes).unwrap_or_default(),
            connections: self.connections,
            requests: self.requests,
            duration: self.duration,
            warmup: self.warmup,
            timeout: self.timeout,
            pids: self.pids,
            sample_every: Duration::from_millis(200),
            label: self.label,
        }
    }

    /// Runs it; returns what to print.
    pub async fn command(self, shutdown: impl Future<Output = ()>) -> Result<String, HttpError> {
        let json = self.json;
        let report = run(self.into_options(), shutdown).await?;
        Ok(if json {
            let mut text = serde_json::to_string_pretty(&report).expect("a report serializes");
            text.push('\n');
            text
        } else {
            report.to_string()
        })
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("expected \"Name: value\", got {s:?}"))?;
    let name = name.trim();
    if name.is_empty() || name.contains([' ', '\r', '\n']) {
        return Err(format!("{name:?} is not a header name"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("expected a number of seconds above 0, got {s:?}")),
    }
}

fn parse_seconds_or_zero(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "expected a number of seconds, 0 or more, got {s:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn complete(text: &str) -> Parsed {
        parse_response(text.as_bytes(), false, false)
            .expect("parses")
            .expect("complete")
    }

    #[test]
    fn a_content_length_body_is_complete_once_all_of_it_is_there() {
        let text = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"hits\":1234}";
        let parsed = complete(text);
        assert_eq!(parsed.status, 200);
        assert_eq!(parsed.len, text.len());
        assert_eq!(
            &text[parsed.body_start..parsed.body_start + parsed.body_len],
            "{\"hits\":1234}"
        );
        assert!(parsed.keep_alive && !parsed.chunked);
        for cut in 0..text.len() {
            assert_eq!(
                parse_response(&text.as_bytes()[..cut], false, false),
                Ok(None),
                "complete after {cut} bytes"
            );
        }
    }

    #[test]
    fn the_next_response_is_left_in_the_buffer() {
        let one = "HTTP/1.1 204 No Content\r\nx-request-id: 7\r\n\r\n";
        let two = format!("{one}HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let parsed = complete(&two);
        assert_eq!(
            (parsed.status, parsed.len, parsed.body_len),
            (204, one.len(), 0)
        );
        let next = complete(&two[parsed.len..]);
        assert_eq!((next.status, next.body_len), (200, 2));
    }

    #[test]
    fn header_names_are_case_insensitive_and_values_trimmed() {
        let parsed = complete("HTTP/1.1 503 Service Unavailable\r\nCONTENT-LENGTH:   3  \r\nConnection: Close\r\n\r\nbye");
        assert_eq!((parsed.status, parsed.body_len), (503, 3));
        assert!(!parsed.keep_alive);
    }

    #[test]
    fn http_1_0_closes_unless_it_asks_to_keep_alive() {
        let close = complete("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!close.keep_alive);
        let kept =
            complete("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(kept.keep_alive);
    }

    #[test]
    fn a_chunked_body_ends_at_the_zero_chunk_and_its_trailers() {
        let text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        let parsed = complete(text);
        assert!(parsed.chunked);
        assert_eq!((parsed.len, parsed.body_len), (text.len(), 12));
        for cut in 0..text.len() {
            assert_eq!(
                parse_response(&text.as_bytes()[..cut], false, false),
                Ok(None),
                "complete after {cut} bytes"
            );
        }
        let upper = "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(complete(upper).body_len, 10);
    }

    #[test]
    fn interim_answers_are_skipped() {
        let text =
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx";
        let parsed = complete(text);
        assert_eq!(
            (parsed.status, parsed.len, parsed.body_len),
            (201, text.len(), 1)
        );
    }

    #[test]
    fn bodies_without_a_length_run_to_the_close() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end";
        assert_eq!(parse_response(text, false, false), Ok(None));
        let parsed = parse_response(text, false, true).unwrap().unwrap();
        assert_eq!((parsed.body_len, parsed.keep_alive), (13, false));
    }

    #[test]
    fn head_204_and_304_have_no_body_whatever_the_headers_say() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
        let parsed = parse_response(text, true, false).unwrap().unwrap();
        assert_eq!((parsed.len, parsed.body_len), (text.len(), 0));
        let not_modified = complete("HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n");
        assert_eq!(not_modified.body_len, 0);
    }

    #[test]
    fn nonsense_is_an_error_not_a_hang() {
        let bad = [
            "ICY 200 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 abc\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd",
        ];
        for text in bad {
            assert!(
                parse_response(text.as_bytes(), false, false).is_err(),
                "{text:?} accepted"
            );
        }
        let endless = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(
            parse_response(&endless, false, false),
            Err(ParseError::HeadTooLarge)
        );
    }

    #[test]
    fn urls_give_host_port_and_target() {
        let url = Url::parse("http://127.0.0.1:8080/hello?name=Ada").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.target.as_str()),
            ("127.0.0.1", 8080, "/hello?name=Ada")
        );
        assert_eq!(url.to_string(), "http://127.0.0.1:8080/hello?name=Ada");
        let bare = Url::parse("http://gw").unwrap();
        assert_eq!(
            (bare.port, bare.target.as_str(), bare.authority().as_str()),
            (80, "/", "gw")
        );
        let v6 = Url::parse("http://[::1]:9000?x=1").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.target.as_str()),
            ("::1", 9000, "/?x=1")
        );
        assert_eq!(v6.authority(), "[::1]:9000");
        for bad in [
            "https://gw/",
            "gw:80/",
            "http://:80/",
            "http://gw:0/",
            "http://gw:x/",
            "http://[::1/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_request_carries_host_headers_and_a_length_for_its_body() {
        let url = Url::parse("http://127.0.0.1:8080/hello").unwrap();
        let get = request_bytes("GET", &url, &[], b"");
        assert_eq!(get, b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n");
        let headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
        let post = request_bytes("POST", &url, &headers, br#"{"name":"Ada"}"#);
        assert_eq!(
            String::from_utf8(post).unwrap(),
            "POST /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"name\":\"Ada\"}"
        );
        let empty_post = request_bytes("POST", &url, &[], b"");
        assert!(String::from_utf8(empty_post)
            .unwrap()
            .contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn a_counted_plan_hands_out_exactly_its_requests() {
        let plan = Plan {
            measure_from: Instant::now(),
            deadline: None,
            remaining: Some(AtomicU64::new(3)),
            stop: AtomicBool::new(false),
        };
        assert_eq!(
            (0..5).map(|_| plan.claim()).collect::<Vec<_>>(),
            [Some(true), Some(true), Some(true), None, None]
        );
        let warming = Plan {
            measure_from: Instant::now() + Duration::from_secs(60),
            deadline: None,
            remaining: Some(AtomicU64::new(1)),
            stop: AtomicBool::new(false),
        };
        assert_eq!(
            warming.claim(),
            Some(false),
            "warm-up requests are not counted"
        );
        warming.stop.store(true, Ordering::Relaxed);
        assert_eq!(warming.claim(), None);
    }

    #[test]
    fn flags_land_in_the_options() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: HttpArgs,
        }
        let parse = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("http").chain(argv.iter().copied()))
        };
        let o = parse(&["http://127.0.0.1:9/hello"])
            .unwrap()
            .args
            .into_options();
        assert_eq!(
            (o.method.as_str(), o.connections, o.requests),
            ("GET", 32, None)
        );
        assert_eq!(
            (o.duration, o.warmup),
            (Duration::from_secs(10), Duration::ZERO)
        );
        let o = parse(&[
            "http://gw:8080/x?y=1",
            "-X",
            "POST",
            "-d",
            "{}",
            "-H",
            "Content-Type: application/json",
            "-c",
            "4",
            "-n",
            "1000",
            "--warmup",
            "1.5",
            "--pid",
            "7",
            "--label",
            "l",
        ])
        .unwrap()
        .args
        .into_options();
        assert_eq!(
            (o.url.port, o.url.target.as_str(), o.method.as_str()),
            (8080, "/x?y=1", "POST")
        );
        assert_eq!(o.body, b"{}");
        assert_eq!(
            o.headers,
            [("Content-Type".to_owned(), "application/json".to_owned())]
        );
        assert_eq!(
            (o.connections, o.requests, o.pids),
            (4, Some(1000), vec![7])
        );
        assert_eq!(o.warmup, Duration::from_millis(1500));
        for bad in [
            &["ftp://gw/"][..],
            &["http://gw/", "-c", "0"],
            &["http://gw/", "-n", "0"],
            &["http://gw/", "--duration", "0"],
            &["http://gw/", "-H", "no colon"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn a_run_against_a_tiny_server_counts_statuses_and_latency() {
        use tokio::io::AsyncBufReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Answers 200 to every request but each third, which gets a 500,
        // and closes every connection after 5 answers.
        tokio::spawn(async move {
            let served = Arc::new(AtomicU64::new(0));
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let served = served.clone();
                tokio::spawn(async move {
                    let mut stream = tokio::io::BufReader::new(stream);
                    for i in 0..5 {
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let n = served.fetch_add(1, Ordering::Relaxed);
                        let status = if n % 3 == 2 { "500 Oops" } else { "200 OK" };
                        let close = if i == 4 { "Connection: close\r\n" } else { "" };
                        let answer =
                            format!("HTTP/1.1 {status}\r\n{close}Content-Length: 2\r\n\r\nok");
                        stream.get_mut().write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        let mut options = HttpArgs {
            url: Url::parse(&format!("http://{addr}/x")).unwrap(),
            method: "GET".into(),
            body: None,
            headers: vec![],
            connections: 4,
            requests: Some(300),
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(5),
            pids: vec![],
            label: Some("tiny".into()),
            json: false,
        }
        .into_options();
        options.sample_every = Duration::from_millis(10);
        let report = run(options, std::future::pending()).await.unwrap();
        assert_eq!(
            (report.sent, report.answered, report.error_count()),
            (300, 300, 0)
        );
        assert_eq!((report.ok, report.non_2xx), (200, 100));
        assert_eq!(report.statuses, BTreeMap::from([(200, 200), (500, 100)]));
        assert_eq!(report.connects, 60, "a new connection after each close");
        assert_eq!(report.latency.count, 200);
        assert_eq!(report.sample_body.as_deref(), Some("ok"));
        let table = report.to_string();
        assert!(table.contains("200: 200, 500: 100"), "{table}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["statuses"]["500"], 100);
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_counted_as_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let options = Options {
            url: Url::parse(&format!("http://{addr}/")).unwrap(),
            method: "GET".into(),
            headers: vec![],
            body: vec![],
            connections: 2,
            requests: Some(6),
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(1),
            pids: vec![],
            sample_every: Duration::from_millis(50),
            label: None,
        };
        let report = run(options, std::future::pending()).await.unwrap();
        assert_eq!((report.sent, report.answered), (6, 0));
        assert_eq!(report.errors, BTreeMap::from([("connect", 6)]));
        assert_eq!(report.ok_per_s, 0.0);
    }
}

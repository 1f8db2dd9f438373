//! Fleet deployments over the AWS IoT Jobs MQTT API: the gateway is a
//! thing (`[fleet] thing_name`, the gateway_id by default) and takes its
//! jobs on its upstream link, so AWS IoT Core, or anything that speaks
//! those topics, drives a fleet's rollouts; there is no fleet manager of
//! ours.
//!
//! The protocol (AWS IoT developer guide, "Jobs device MQTT API"):
//!
//! - `$aws/things/{thing}/jobs/notify-next`: the service says the next
//!   pending execution changed;
//! - `.../jobs/start-next` (and `/accepted`, `/rejected`): the device takes
//!   the next one, which the service marks IN_PROGRESS and answers with its
//!   job document;
//! - `.../jobs/{jobId}/update` (and `/accepted`, `/rejected`): the device
//!   reports IN_PROGRESS with progress, then SUCCEEDED or FAILED, with
//!   `statusDetails` (string values).
//!
//! A job document deploys one signed bundle (`bundle.rs`):
//!
//! ```json
//! { "operation": "wasmgate.deploy", "function": "enrich",
//!   "bundle": "<base64 of the .wgb file>", "encoding": "deflate" }
//! ```
//!
//! (`encoding` is optional: the bundle raw-DEFLATE compressed before the
//! base64, which keeps a 50 KB module within the service's 32 KB document
//! limit.) The bundle goes through the same checks as `wasmgate deploy`
//! (trusted signer, not a replay, the spec the function runs), and rolls
//! out as it says; the job succeeds when its rollout does.
//!
//! Offline-safe: a job is recorded in SQLite before its message is
//! acknowledged, each state is recorded before it is reported, and a
//! report counts as made only once the service accepted it. A gateway
//! killed mid-job takes the job up again at its next start (a rollout it
//! left half-way was rolled back by then, so the job fails with that
//! reason), and reports made while the link was down go out when it is
//! back.

use crate::control::Command;
use crate::mqtt::{Backoff, Client, Endpoint, Message, PollError, Polled, Settings};
use crate::registry::Registry;
use crate::store::deployments::JobRow;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What the jobs task needs of the gateway.
pub struct Fleet {
    pub thing: String,
    pub endpoint: Endpoint,
    pub client_id: String,
    pub store: Store,
    pub registry: Arc<Registry>,
    pub commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("thing", &self.thing)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The terminal states, as the service names them.
const SUCCEEDED: &str = "SUCCEEDED";
const FAILED: &str = "FAILED";
const IN_PROGRESS: &str = "IN_PROGRESS";

/// How long a report of a job's end waits for the service's answer
/// before it is sent again.
const REPORT_AGAIN: Duration = Duration::from_secs(10);

/// How often a job's rollout is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// What a job asks for, read from its document.
#[derive(Debug, Clone, PartialEq)]
pub struct Deploy {
    pub function: String,
    pub payload: Payload,
    /// The bundle was raw-DEFLATE compressed (`"encoding": "deflate"`).
    pub deflated: bool,
}

/// Where a job's bundle is.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// In the document, base64.
    Inline(Vec<u8>),
    /// In an AWS IoT MQTT stream (file delivery), for a bundle past the
    /// document's size limit: fetched in blocks on the same connection.
    Stream(StreamRef),
}

/// A file of an AWS IoT stream: `"stream": {"id", "file", "size", "sha256"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRef {
    pub id: String,
    pub file: u32,
    pub size: usize,
    /// Of the file as streamed (deflated, if the bundle is).
    pub sha256: String,
}

/// The largest bundle taken from a job, deflated or not.
const MAX_BUNDLE: usize = crate::files::MAX_MODULE_BYTES as usize + (1 << 20);

/// Reads a job document; the error is the job's failure reason.
pub fn parse_document(document: &serde_json::Value) -> Result<Deploy, String> {
    use base64::Engine;
    let operation = document["operation"].as_str().unwrap_or("");
    if operation != "wasmgate.deploy" {
        return Err(format!(
            "unknown operation {operation:?} (this gateway does \"wasmgate.deploy\")"
        ));
    }
    let function = document["function"]
        .as_str()
        .filter(|f| !f.is_empty())
        .ok_or("the document names no function")?
        .to_owned();
    let deflated = match document["encoding"].as_str() {
        None | Some("none") => false,
        Some("deflate") => true,
        Some(other) => return Err(format!("unknown encoding {other:?} (deflate or none)")),
    };
    let payload = match (document["bundle"].as_str(), document["stream"].as_object()) {
        (Some(text), None) => Payload::Inline(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| format!("the bundle is not base64: {e}"))?,
        ),
        (None, Some(stream)) => {
            let size = stream
                .get("size")
                .and_then(serde_json::Value::as_u64)
                .filter(|&n| n > 0 && n as usize <= MAX_BUNDLE)
                .ok_or("the stream's size is missing or too large")?;
            Payload::Stream(StreamRef {
                id: stream
                    .get("id")
                    .and_then(serde_json::Value::as_str)
                    .filter(|id| !id.is_empty() && !id.contains(['/', '+', '#']))
                    .ok_or("the stream has no usable id")?
                    .to_owned(),
                file: stream
                    .get("file")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|f| u32::try_from(f).ok())
                    .unwrap_or(0),
                size: size as usize,
                sha256: stream
                    .get("sha256")
                    .and_then(serde_json::Value::as_str)
                    .filter(|h| h.len() == 64)
                    .ok_or("the stream has no sha256")?
                    .to_ascii_lowercase(),
            })
        }
        (None, None) => return Err("the document has no bundle (base64) or stream".into()),
        (Some(_), Some(_)) => return Err("the document has both a bundle and a stream".into()),
    };
    Ok(Deploy {
        function,
        payload,
        deflated,
    })
}

/// The bundle from what a job delivered.
pub fn decode(bytes: Vec<u8>, deflated: bool) -> Result<Vec<u8>, String> {
    if !deflated {
        return Ok(bytes);
    }
    miniz_oxide::inflate::decompress_to_vec_with_limit(&bytes, MAX_BUNDLE)
        .map_err(|e| format!("the bundle does not inflate: {e:?}"))
}

/// A job document deploying `bundle` to `function`, deflated and inline:
/// what `wasmgate bundle job-document` prints (and the tests' job service
/// sends).
pub fn document(function: &str, bundle: &[u8]) -> serde_json::Value {
    use base64::Engine;
    let deflated = miniz_oxide::deflate::compress_to_vec(bundle, 9);
    serde_json::json!({
        "operation": "wasmgate.deploy",
        "function": function,
        "encoding": "deflate",
        "bundle": base64::engine::general_purpose::STANDARD.encode(deflated),
    })
}

/// For a bundle too large for a document: the file to put in an AWS IoT
/// stream (the bundle deflated) and the document naming it.
pub fn stream_document(
    function: &str,
    bundle: &[u8],
    stream: &str,
) -> (Vec<u8>, serde_json::Value) {
    let file = miniz_oxide::deflate::compress_to_vec(bundle, 9);
    let document = serde_json::json!({
        "operation": "wasmgate.deploy",
        "function": function,
        "encoding": "deflate",
        "stream": {
            "id": stream,
            "file": 0,
            "size": file.len(),
            "sha256": crate::bundle::sha256_hex(&file),
        },
    });
    (file, document)
}

/// Blocks asked for at once, and their size: 16 KiB is about 22 KB of
/// base64 per message, well within AWS IoT's 128 KB.
const BLOCK: usize = 16 * 1024;
const WINDOW: usize = 8;
/// How long blocks asked for may take before they are asked for again.
const BLOCK_WAIT: Duration = Duration::from_secs(10);
const BLOCK_TRIES: u32 = 30;

/// Fetches a stream's file in blocks (AWS IoT MQTT file delivery:
/// `$aws/things/{thing}/streams/{id}/get/json`, answered on
/// `.../data/json` one block a message, or `.../rejected/json`); asks again
/// for what does not come, and checks the whole against its SHA-256.
/// Returns the file and the bytes received.
async fn fetch(
    client: &Client,
    thing: &str,
    stream: &StreamRef,
    job_id: &str,
    data: &mut mpsc::Receiver<StreamMessage>,
) -> Result<(Vec<u8>, usize), String> {
    use base64::Engine;
    let blocks = stream.size.div_ceil(BLOCK);
    let mut got: Vec<Option<Vec<u8>>> = vec![None; blocks];
    let mut received = 0usize;
    let mut tries = 0u32;
    let request_topic = format!("$aws/things/{thing}/streams/{}/get/json", stream.id);
    while let Some(first) = got.iter().position(Option::is_none) {
        let count = got[first..]
            .iter()
            .take(WINDOW)
            .take_while(|b| b.is_none())
            .count();
        let request = serde_json::json!({
            "c": job_id, "f": stream.file, "l": BLOCK, "o": first, "n": count,
        });
        client
            .publish(
                request_topic.clone(),
                1,
                false,
                request.to_string().into_bytes(),
                None,
            )
            .await?;
        let deadline = tokio::time::Instant::now() + BLOCK_WAIT;
        while got[first..first + count].iter().any(Option::is_none) {
            let message = match tokio::time::timeout_at(deadline, data.recv()).await {
                Ok(Some(message)) => message,
                Ok(None) => return Err("the gateway is stopping".into()),
                Err(_) => break,
            };
            match message {
                StreamMessage::Rejected(why) => {
                    return Err(format!("the stream was refused: {why}"))
                }
                StreamMessage::Data(body) => {
                    received += body.len();
                    let block: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    let Some(i) = block["i"]
                        .as_u64()
                        .map(|i| i as usize)
                        .filter(|&i| i < blocks)
                    else {
                        continue;
                    };
                    let Some(bytes) = block["p"]
                        .as_str()
                        .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
                    else {
                        continue;
                    };
                    got[i] = Some(bytes);
                }
            }
        }
        if got[first..first + count].iter().any(Option::is_none) {
            tries += 1;
            if tries >= BLOCK_TRIES {
                return Err(format!(
                    "stream {}: block {first} did not come after {tries} requests",
                    stream.id
                ));
            }
        }
    }
    let file: Vec<u8> = got.into_iter().flatten().flatten().collect();
    if file.len() != stream.size || crate::bundle::sha256_hex(&file) != stream.sha256 {
        return Err(format!(
            "stream {}: {} bytes that do not match the document's size and SHA-256 (damaged or tampered)",
            stream.id,
            file.len()
        ));
    }
    Ok((file, received))
}

/// A message of a stream for the job fetching it.
#[derive(Debug)]
enum StreamMessage {
    Data(Vec<u8>),
    Rejected(String),
}

/// A report for the service: a job's status and details.
#[derive(Debug, Clone)]
struct Report {
    job_id: String,
    status: &'static str,
    details: serde_json::Value,
}

fn details(pairs: &[(&str, String)]) -> serde_json::Value {
    serde_json::Value::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

/// The status a stored state is reported as.
fn status_of(state: &str) -> &'static str {
    match state {
        "succeeded" => SUCCEEDED,
        "failed" => FAILED,
        _ => IN_PROGRESS,
    }
}

impl Fleet {
    fn topic(&self, rest: &str) -> String {
        format!("$aws/things/{}/jobs/{rest}", self.thing)
    }

    /// Runs until the gateway stops.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let settings = Settings {
            client_id: self.client_id.clone(),
            persistent: true,
            manual_acks: true,
            outgoing_window: 16,
            incoming_window: Some(16),
            capacity: 256,
        };
        let (client, mut eventloop) = Client::new(&self.endpoint, &settings);
        let (reports_tx, mut reports) = mpsc::channel::<Report>(64);
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(30),
            self.thing.len() as u64,
        );
        // The job being worked on: one at a time, as the service hands them.
        let mut working: Option<Working> = None;
        // A report the service has not answered (it was away, or the
        // answer was lost) goes again now and then.
        let mut unanswered = tokio::time::interval(REPORT_AGAIN);
        unanswered.tick().await;
        tracing::info!(thing = %self.thing, "fleet jobs: taking jobs for this thing");
        loop {
            if let Some(w) = &working {
                if w.task.is_finished() {
                    working = None;
                }
            }
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        client.disconnect().await;
                        if let Some(w) = working.take() {
                            w.task.abort();
                        }
                        return;
                    }
                }
                Some(report) = reports.recv() => {
                    self.publish_report(&client, &report).await;
                }
                _ = unanswered.tick() => {
                    self.report_again(&client).await;
                }
                polled = eventloop.poll() => match polled {
                    Ok(Polled::ConnAck { .. }) => {
                        backoff.reset();
                        let filters: Vec<(String, u8)> = [
                            "notify-next",
                            "start-next/accepted",
                            "start-next/rejected",
                            "+/update/accepted",
                            "+/update/rejected",
                        ]
                        .iter()
                        .map(|rest| (self.topic(rest), 1))
                        .chain(["data/json", "rejected/json"].iter().map(|rest| {
                            (format!("$aws/things/{}/streams/+/{rest}", self.thing), 1)
                        }))
                        .collect();
                        if let Err(e) = client.try_subscribe_many(&filters) {
                            tracing::warn!(error = %e, "fleet jobs: cannot subscribe");
                        }
                        self.resume(&client, &mut working, &reports_tx).await;
                    }
                    Ok(Polled::Publish(message)) => {
                        self.on_message(&client, &message, &mut working, &reports_tx).await;
                        let _ = client.try_ack(message.pkid);
                    }
                    Ok(_) => {}
                    Err(PollError::RequestsDone) => return,
                    Err(PollError::Connection(e)) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?delay, "fleet jobs: the job service's broker is not reachable");
                        tokio::time::sleep(delay).await;
                    }
                },
            }
        }
    }

    /// After a (re)connect: reports not yet taken go again, a job left
    /// unfinished is taken up again, else the next one is asked for.
    async fn resume(
        &self,
        client: &Client,
        working: &mut Option<Working>,
        reports: &mpsc::Sender<Report>,
    ) {
        let store = self.store.clone();
        let open = tokio::task::spawn_blocking(move || store.open_jobs())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let mut busy = working.is_some();
        for job in open {
            let finished = matches!(job.state.as_str(), "succeeded" | "failed");
            if finished {
                let details = serde_json::from_str(&job.details).unwrap_or_default();
                self.publish_report(
                    client,
                    &Report {
                        job_id: job.job_id.clone(),
                        status: status_of(&job.state),
                        details,
                    },
                )
                .await;
            } else if !busy {
                tracing::info!(job = %job.job_id, state = %job.state, "fleet jobs: taking up a job this gateway had not finished");
                *working = Some(self.work(job, reports.clone(), client.clone()));
                busy = true;
            }
        }
        if !busy {
            self.ask_next(client).await;
        }
    }

    /// Sends again the reports of ended jobs the service has not answered.
    async fn report_again(&self, client: &Client) {
        let store = self.store.clone();
        let open = tokio::task::spawn_blocking(move || store.open_jobs())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        for job in open {
            if matches!(job.state.as_str(), "succeeded" | "failed") {
                let details = serde_json::from_str(&job.details).unwrap_or_default();
                let report = Report {
                    job_id: job.job_id,
                    status: status_of(&job.state),
                    details,
                };
                self.publish_report(client, &report).await;
            }
        }
    }

    async fn ask_next(&self, client: &Client) {
        let _ = client
            .publish(
                self.topic("start-next"),
                1,
                false,
                br#"{"statusDetails":{"step":"received"}}"#.to_vec(),
                None,
            )
            .await;
    }

    async fn publish_report(&self, client: &Client, report: &Report) {
        let body = serde_json::json!({
            "status": report.status,
            "statusDetails": report.details,
        });
        let _ = client
            .publish(
                self.topic(&format!("{}/update", report.job_id)),
                1,
                false,
                body.to_string().into_bytes(),
                None,
            )
            .await;
    }

    async fn on_message(
        &self,
        client: &Client,
        message: &Message,
        working: &mut Option<Working>,
        reports: &mpsc::Sender<Report>,
    ) {
        let streams = format!("$aws/things/{}/streams/", self.thing);
        if let Some(rest) = message.topic.strip_prefix(&streams) {
            if let Some(w) = working.as_ref() {
                let forwarded = match rest.rsplit_once('/').map(|(head, _)| head) {
                    Some(head) if head.ends_with("/data") => {
                        StreamMessage::Data(message.payload.clone())
                    }
                    _ => StreamMessage::Rejected(
                        String::from_utf8_lossy(&message.payload).into_owned(),
                    ),
                };
                // A full channel drops a block: it is asked for again.
                let _ = w.streams.try_send(forwarded);
            }
            return;
        }
        let Some(rest) = message.topic.strip_prefix(&self.topic("")) else {
            return;
        };
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap_or_default();
        match rest {
            "notify-next" => {
                if working.is_none() && body["execution"].is_object() {
                    self.ask_next(client).await;
                }
            }
            "start-next/accepted" => {
                let execution = &body["execution"];
                let Some(job_id) = execution["jobId"].as_str() else {
                    return; // nothing pending
                };
                if working.as_ref().is_some_and(|w| w.id == job_id) {
                    return;
                }
                if working.is_some() {
                    return; // one at a time; asked again when this one ends
                }
                let document = execution["jobDocument"].to_string();
                let store = self.store.clone();
                let (id, doc) = (job_id.to_owned(), document.clone());
                // Recorded before the message is acknowledged (by the caller).
                let recorded = tokio::task::spawn_blocking(move || {
                    store.record_job(&id, &doc)?;
                    store.job(&id)
                })
                .await;
                match recorded {
                    // Done already (the service had not taken the report
                    // yet): report it again rather than run it again.
                    Ok(Ok(Some(job))) if matches!(job.state.as_str(), "succeeded" | "failed") => {
                        let details = serde_json::from_str(&job.details).unwrap_or_default();
                        let report = Report {
                            job_id: job.job_id,
                            status: status_of(&job.state),
                            details,
                        };
                        self.publish_report(client, &report).await;
                    }
                    Ok(Ok(Some(job))) => {
                        tracing::info!(job = %job_id, "fleet jobs: job taken");
                        *working = Some(self.work(job, reports.clone(), client.clone()));
                    }
                    _ => {
                        tracing::error!(job = %job_id, "fleet jobs: cannot record the job; it stays with the service")
                    }
                }
            }
            "start-next/rejected" => {
                tracing::warn!(answer = %body, "fleet jobs: the service refused start-next");
            }
            _ => {
                let Some((job_id, answer)) = rest.split_once("/update/") else {
                    return;
                };
                if answer == "rejected" {
                    tracing::warn!(job = %job_id, answer = %body, "fleet jobs: the service refused a report");
                }
                // Accepted, or refused for good (a job the service ended):
                // either way the report is done with.
                let store = self.store.clone();
                let id = job_id.to_owned();
                let state = tokio::task::spawn_blocking(move || {
                    let job = store.job(&id).ok().flatten()?;
                    store.job_reported(&id, &job.state).ok()?;
                    Some(job.state)
                })
                .await
                .ok()
                .flatten();
                let finished = matches!(state.as_deref(), Some("succeeded" | "failed"));
                let ours = working.as_ref().is_some_and(|w| w.id == job_id);
                if finished && (ours || working.is_none()) {
                    if ours {
                        *working = None;
                    }
                    self.ask_next(client).await;
                }
            }
        }
    }

    /// Works a job to its end on a task of its own, recording each state
    /// before sending its report.
    fn work(&self, job: JobRow, reports: mpsc::Sender<Report>, client: Client) -> Working {
        let (streams, mut stream_data) = mpsc::channel(WINDOW * 4);
        let id = job.job_id.clone();
        let thing = self.thing.clone();
        let store = self.store.clone();
        let registry = self.registry.clone();
        let commands = self.commands.clone();
        let task = tokio::spawn(async move {
            let job_id = job.job_id.clone();
            let record = |state: &'static str,
                          deployment: Option<i64>,
                          details: serde_json::Value| {
                let (store, id) = (store.clone(), job_id.clone());
                let reports = reports.clone();
                async move {
                    let text = details.to_string();
                    let job = id.clone();
                    let kept = tokio::task::spawn_blocking(move || {
                        store.update_job(&job, state, deployment, &text)
                    })
                    .await;
                    if !matches!(kept, Ok(Ok(()))) {
                        tracing::warn!(job = %id, state, "fleet jobs: cannot record the job's state");
                    }
                    let _ = reports
                        .send(Report {
                            job_id: id,
                            status: status_of(state),
                            details,
                        })
                        .await;
                }
            };
            let deployment = match job.state.as_str() {
                "rolling_out" => job.deployment,
                _ => None,
            };
            let deployment = match deployment {
                Some(id) => Some(id),
                None => {
                    let document: serde_json::Value =
                        serde_json::from_str(&job.document).unwrap_or_default();
                    let deploy = match parse_document(&document) {
                        Ok(deploy) => deploy,
                        Err(reason) => {
                            tracing::warn!(job = %job_id, %reason, "fleet jobs: job failed");
                            record("failed", None, details(&[("reason", reason)])).await;
                            return;
                        }
                    };
                    record(
                        "deploying",
                        None,
                        details(&[
                            ("step", "deploying".into()),
                            ("function", deploy.function.clone()),
                        ]),
                    )
                    .await;
                    let delivered = match deploy.payload {
                        Payload::Inline(bytes) => Ok(bytes),
                        Payload::Stream(stream) => {
                            fetch(&client, &thing, &stream, &job_id, &mut stream_data)
                                .await
                                .map(|(file, received)| {
                                    tracing::info!(job = %job_id, stream = %stream.id, bytes = file.len(), received, "fleet jobs: bundle fetched from its stream");
                                    file
                                })
                        }
                    };
                    let bundle = match delivered.and_then(|bytes| decode(bytes, deploy.deflated)) {
                        Ok(bundle) => bundle,
                        Err(reason) => {
                            tracing::warn!(job = %job_id, %reason, "fleet jobs: job failed");
                            record("failed", None, details(&[("reason", reason)])).await;
                            return;
                        }
                    };
                    let (status, body) = crate::control::deploy_bundle(
                        &registry,
                        &commands,
                        deploy.function.clone(),
                        std::collections::HashMap::new(),
                        (format!("fleet job {job_id}"), "aws-iot-jobs".to_owned()),
                        &bundle,
                    )
                    .await;
                    if !status.is_success() {
                        let reason = body["error"].as_str().unwrap_or("refused").to_owned();
                        tracing::warn!(job = %job_id, %reason, "fleet jobs: job failed");
                        record("failed", None, details(&[("reason", reason)])).await;
                        return;
                    }
                    let version = body["to"].as_str().unwrap_or("").to_owned();
                    match body["deployment"].as_i64() {
                        Some(id) => {
                            record(
                                "rolling_out",
                                Some(id),
                                details(&[
                                    ("step", "rolling_out".into()),
                                    ("version", version),
                                    ("strategy", body["strategy"].as_str().unwrap_or("").into()),
                                ]),
                            )
                            .await;
                            Some(id)
                        }
                        None => {
                            tracing::info!(job = %job_id, %version, "fleet jobs: job succeeded");
                            record("succeeded", None, details(&[("version", version)])).await;
                            return;
                        }
                    }
                }
            };
            let Some(id) = deployment else { return };
            // The rollout's end is the job's.
            let mut last_share = -1.0;
            loop {
                let store = store.clone();
                let row = tokio::task::spawn_blocking(move || {
                    store
                        .deployments(None, 1_000)
                        .map(|rows| rows.into_iter().find(|r| r.id == id))
                })
                .await;
                let row = match row {
                    Ok(Ok(Some(row))) => row,
                    _ => {
                        record(
                            "failed",
                            None,
                            details(&[("reason", format!("rollout {id} is not on record"))]),
                        )
                        .await;
                        return;
                    }
                };
                match row.state.as_str() {
                    "running" => {
                        if (row.share - last_share).abs() > f64::EPSILON {
                            last_share = row.share;
                            record(
                                "rolling_out",
                                Some(id),
                                details(&[
                                    ("step", "rolling_out".into()),
                                    ("version", row.to_version.clone()),
                                    ("strategy", row.strategy.clone()),
                                    ("share", format!("{:.2}", row.share)),
                                ]),
                            )
                            .await;
                        }
                        tokio::time::sleep(WATCH_EVERY).await;
                    }
                    "succeeded" => {
                        tracing::info!(job = %job_id, version = %row.to_version, "fleet jobs: job succeeded");
                        record(
                            "succeeded",
                            Some(id),
                            details(&[("version", row.to_version)]),
                        )
                        .await;
                        return;
                    }
                    other => {
                        let reason = row.reason.unwrap_or_else(|| other.to_owned());
                        tracing::warn!(job = %job_id, %reason, "fleet jobs: job failed: the rollout did not succeed");
                        record(
                            "failed",
                            Some(id),
                            details(&[
                                ("reason", format!("{other}: {reason}")),
                                ("version", row.to_version),
                            ]),
                        )
                        .await;
                        return;
                    }
                }
            }
        });
        Working { id, task, streams }
    }
}

/// The job being worked on.
struct Working {
    id: String,
    task: tokio::task::JoinHandle<()>,
    /// Where its stream's blocks go, while it fetches them.
    streams: mpsc::Sender<StreamMessage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_made_for_a_bundle_reads_back_to_it() {
        let bundle: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let doc = document("enrich", &bundle);
        assert!(doc.to_string().len() < bundle.len(), "deflate did not help");
        let deploy = parse_document(&doc).unwrap();
        assert_eq!(deploy.function, "enrich");
        let Payload::Inline(bytes) = deploy.payload else {
            panic!("{deploy:?}")
        };
        assert_eq!(decode(bytes, deploy.deflated).unwrap(), bundle);
        let (file, doc) = stream_document("enrich", &bundle, "s-1");
        let deploy = parse_document(&doc).unwrap();
        assert_eq!(
            deploy.payload,
            Payload::Stream(StreamRef {
                id: "s-1".into(),
                file: 0,
                size: file.len(),
                sha256: crate::bundle::sha256_hex(&file),
            })
        );
        assert_eq!(decode(file, true).unwrap(), bundle);
    }

    #[test]
    fn a_bad_document_says_what_is_wrong() {
        for (doc, says) in [
            (serde_json::json!({}), "unknown operation"),
            (
                serde_json::json!({"operation": "wasmgate.deploy"}),
                "no function",
            ),
            (
                serde_json::json!({"operation": "wasmgate.deploy", "function": "f"}),
                "no bundle",
            ),
            (
                serde_json::json!({"operation": "wasmgate.deploy", "function": "f", "stream": {"id": "a/b", "size": 5, "sha256": "0".repeat(64)}}),
                "no usable id",
            ),
            (
                serde_json::json!({"operation": "wasmgate.deploy", "function": "f", "stream": {"id": "s", "size": 5}}),
                "no sha256",
            ),
            (
                serde_json::json!({"operation": "wasmgate.deploy", "function": "f", "bundle": "%%"}),
                "not base64",
            ),
            (
                serde_json::json!({"operation": "wasmgate.deploy", "function": "f", "bundle": "AAAA", "encoding": "zstd"}),
                "unknown encoding",
            ),
        ] {
            let error = parse_document(&doc).unwrap_err();
            assert!(error.contains(says), "{doc}: {error}");
        }
        assert!(decode(vec![0xff; 8], true)
            .unwrap_err()
            .contains("does not inflate"));
    }
}

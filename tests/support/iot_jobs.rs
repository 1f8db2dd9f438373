//! A TEST DOUBLE of the AWS IoT Jobs service, not a product feature: AWS IoT
//! Core cannot be reached from the tests, so this speaks the documented
//! device side of its MQTT API on a real broker (mosquitto), as the service
//! does on AWS IoT Core:
//!
//! - it publishes `$aws/things/{thing}/jobs/notify-next` when a thing's
//!   next pending execution appears;
//! - it answers `$aws/things/{thing}/jobs/start-next` on `.../accepted`
//!   with the next QUEUED (or IN_PROGRESS) execution and its job document,
//!   marking it IN_PROGRESS, or with no `execution` when none is pending;
//! - it answers `$aws/things/{thing}/jobs/{jobId}/update` on `.../accepted`
//!   (or `.../rejected`, code `InvalidStateTransition`, for an execution
//!   that has ended) and keeps the status and `statusDetails`.
//!
//! - it serves streams (AWS IoT MQTT-based file delivery, for files past
//!   the 32 KB job document): `$aws/things/{thing}/streams/{id}/get/json`
//!   with `{"c", "f", "l", "o", "n"}` is answered with one message per
//!   block on `.../data/json` (`{"c", "f", "l", "i", "p"}`, `p` base64),
//!   or `.../rejected/json` for an unknown stream or file;
//!
//! Of a job's configuration it models what the tests use: the targets, a
//! rollout rate (`maximumPerMinute`, as executions per second here) and an
//! abort config (`CANCEL` when the failed share of ended executions passes a
//! threshold once at least a minimum number ended; queued executions are
//! then CANCELED and never delivered). Everything else (job templates,
//! timeouts, retries, the HTTPS API, presigned URLs) is not modelled.

use super::mqtt::MqttClient;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// An execution's status, as the service names it.
pub type Status = String;

#[derive(Debug, Clone)]
pub struct Execution {
    pub status: Status,
    pub details: serde_json::Value,
    pub version: u64,
    /// Every status it was reported with, in order.
    pub history: Vec<Status>,
}

#[derive(Debug, Clone)]
struct Job {
    id: String,
    document: serde_json::Value,
    targets: Vec<String>,
    per_second: f64,
    /// Abort when failed / ended > this, once `abort_min` ended.
    abort_above: Option<(f64, usize)>,
    created: Instant,
    released: usize,
    canceled: bool,
}

#[derive(Debug, Default)]
struct State {
    jobs: Vec<Job>,
    /// Stream id -> its one file (file id 0).
    streams: BTreeMap<String, Vec<u8>>,
    /// Bytes of stream messages sent to each thing.
    streamed: BTreeMap<String, usize>,
    /// (job id, thing) -> its execution, once released.
    executions: BTreeMap<(String, String), Execution>,
}

impl State {
    fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.id == id)
    }

    /// The thing's next pending execution: IN_PROGRESS first, then the
    /// oldest QUEUED one of a job not canceled.
    fn next_for(&self, thing: &str) -> Option<(String, Execution)> {
        let mine = |status: &str| {
            self.jobs.iter().find_map(|job| {
                let e = self.executions.get(&(job.id.clone(), thing.to_owned()))?;
                (e.status == status && !(job.canceled && status == "QUEUED"))
                    .then(|| (job.id.clone(), e.clone()))
            })
        };
        mine("IN_PROGRESS").or_else(|| mine("QUEUED"))
    }
}

/// The double, running on its own thread until dropped.
pub struct JobsService {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the tests ask of a new job.
pub struct JobSpec<'a> {
    pub id: &'a str,
    pub document: serde_json::Value,
    pub targets: Vec<String>,
    /// Executions released per second.
    pub per_second: f64,
    /// Cancel the job once more than this share of the ended executions
    /// failed, with at least `.1` ended.
    pub abort_above: Option<(f64, usize)>,
}

impl JobsService {
    #[track_caller]
    pub fn start(port: u16) -> JobsService {
        // A persistent session, as the service is always subscribed: what
        // a thing reports while the double reconnects waits for it.
        let client =
            MqttClient::connect_persistent(port, &super::mqtt::unique_id("iot-jobs-double"));
        client.subscribe("$aws/things/+/jobs/start-next");
        client.subscribe("$aws/things/+/jobs/+/update");
        client.subscribe("$aws/things/+/streams/+/get/json");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (state, stop) = (state.clone(), stop.clone());
            move || serve(client, state, stop)
        });
        JobsService {
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn create_job(&self, spec: JobSpec<'_>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.jobs.push(Job {
            id: spec.id.to_owned(),
            document: spec.document,
            targets: spec.targets,
            per_second: spec.per_second,
            abort_above: spec.abort_above,
            created: Instant::now(),
            released: 0,
            canceled: false,
        });
    }

    /// A stream of one file (id 0), as CreateStream makes one.
    pub fn create_stream(&self, id: &str, file: Vec<u8>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.streams.insert(id.to_owned(), file);
    }

    /// Bytes of stream messages each thing was sent.
    pub fn streamed(&self) -> BTreeMap<String, usize> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.streamed.clone()
    }

    /// Each target's execution of a job (`None`: not released yet).
    pub fn executions(&self, job: &str) -> BTreeMap<String, Option<Execution>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(j) = state.job(job) else {
            return BTreeMap::new();
        };
        j.targets
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    state.executions.get(&(job.to_owned(), t.clone())).cloned(),
                )
            })
            .collect()
    }

    /// Executions of a job by status (`NOT_RELEASED` for the rest).
    pub fn counts(&self, job: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for e in self.executions(job).values() {
            let status = e.as_ref().map_or("NOT_RELEASED", |e| e.status.as_str());
            *counts.entry(status.to_owned()).or_default() += 1;
        }
        counts
    }

    pub fn canceled(&self, job: &str) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.job(job).is_some_and(|j| j.canceled)
    }

    /// Whether every execution of the job ended (or will never run).
    pub fn settled(&self, job: &str) -> bool {
        let canceled = self.canceled(job);
        self.executions(job).values().all(|e| match e {
            None => canceled,
            Some(e) => {
                matches!(
                    e.status.as_str(),
                    "SUCCEEDED" | "FAILED" | "CANCELED" | "REJECTED"
                ) || (canceled && e.status == "QUEUED")
            }
        })
    }
}

impl Drop for JobsService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn topic(thing: &str, rest: &str) -> String {
    format!("$aws/things/{thing}/jobs/{rest}")
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn execution_json(thing: &str, job: &Job, e: &Execution) -> serde_json::Value {
    serde_json::json!({
        "jobId": job.id,
        "thingName": thing,
        "status": e.status,
        "statusDetails": e.details,
        "queuedAt": now_s(),
        "lastUpdatedAt": now_s(),
        "versionNumber": e.version,
        "executionNumber": 1,
        "jobDocument": job.document,
    })
}

fn serve(client: MqttClient, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        if let Some(m) = client.next_message(Duration::from_millis(20)) {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            handle(&client, &mut state, &m.topic, &m.payload);
        }
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        release(&client, &mut state);
    }
}

/// Releases executions at each job's rate, telling each thing whose next
/// execution it now is.
fn release(client: &MqttClient, state: &mut State) {
    let mut released = Vec::new();
    for job in &mut state.jobs {
        if job.canceled {
            continue;
        }
        let due = ((job.created.elapsed().as_secs_f64() * job.per_second) as usize + 1)
            .min(job.targets.len());
        while job.released < due {
            released.push((job.id.clone(), job.targets[job.released].clone()));
            job.released += 1;
        }
    }
    for (job_id, thing) in released {
        state.executions.insert(
            (job_id, thing.clone()),
            Execution {
                status: "QUEUED".into(),
                details: serde_json::json!({}),
                version: 1,
                history: vec!["QUEUED".into()],
            },
        );
        notify_next(client, state, &thing);
    }
}

fn notify_next(client: &MqttClient, state: &State, thing: &str) {
    let body = match state.next_for(thing) {
        Some((job_id, e)) => {
            let job = state.job(&job_id).expect("the job");
            serde_json::json!({ "timestamp": now_s(), "execution": execution_json(thing, job, &e) })
        }
        None => serde_json::json!({ "timestamp": now_s() }),
    };
    client.publish(&topic(thing, "notify-next"), body.to_string());
}

fn handle(client: &MqttClient, state: &mut State, topic_name: &str, payload: &[u8]) {
    let Some(rest) = topic_name.strip_prefix("$aws/things/") else {
        return;
    };
    if let Some((thing, rest)) = rest.split_once("/streams/") {
        serve_stream(client, state, thing, rest, payload);
        return;
    }
    let Some((thing, rest)) = rest.split_once("/jobs/") else {
        return;
    };
    let request: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    if rest == "start-next" {
        let answer = match state.next_for(thing) {
            Some((job_id, _)) => {
                let e = state
                    .executions
                    .get_mut(&(job_id.clone(), thing.to_owned()))
                    .expect("the execution");
                if e.status == "QUEUED" {
                    e.status = "IN_PROGRESS".into();
                    e.version += 1;
                    e.history.push("IN_PROGRESS".into());
                    if let Some(d) = request.get("statusDetails") {
                        e.details = d.clone();
                    }
                }
                let e = e.clone();
                let job = state.job(&job_id).expect("the job");
                serde_json::json!({ "timestamp": now_s(), "execution": execution_json(thing, job, &e) })
            }
            None => serde_json::json!({ "timestamp": now_s() }),
        };
        client.publish(&topic(thing, "start-next/accepted"), answer.to_string());
        return;
    }
    let Some(job_id) = rest.strip_suffix("/update") else {
        return;
    };
    let status = request["status"].as_str().unwrap_or("").to_owned();
    let key = (job_id.to_owned(), thing.to_owned());
    let refused = |client: &MqttClient, message: &str| {
        client.publish(
            &topic(thing, &format!("{job_id}/update/rejected")),
            serde_json::json!({ "code": "InvalidStateTransition", "message": message, "timestamp": now_s() })
                .to_string(),
        );
    };
    let Some(e) = state.executions.get_mut(&key) else {
        refused(client, "no such execution");
        return;
    };
    let ended = |s: &str| {
        matches!(
            s,
            "SUCCEEDED" | "FAILED" | "CANCELED" | "REJECTED" | "REMOVED"
        )
    };
    if ended(&e.status)
        || !matches!(
            status.as_str(),
            "IN_PROGRESS" | "SUCCEEDED" | "FAILED" | "REJECTED"
        )
    {
        let message = format!("{} -> {status}", e.status);
        refused(client, &message);
        return;
    }
    e.status = status.clone();
    e.version += 1;
    e.history.push(status.clone());
    if let Some(d) = request.get("statusDetails") {
        e.details = d.clone();
    }
    let version = e.version;
    client.publish(
        &topic(thing, &format!("{job_id}/update/accepted")),
        serde_json::json!({ "timestamp": now_s(), "executionState": { "status": status, "versionNumber": version } })
            .to_string(),
    );
    if ended(&status) {
        abort_if_failing(state, job_id);
        notify_next(client, state, thing);
    }
}

fn abort_if_failing(state: &mut State, job_id: &str) {
    let (mut failed, mut ended) = (0usize, 0usize);
    for ((job, _), e) in &state.executions {
        if job == job_id {
            match e.status.as_str() {
                "FAILED" | "REJECTED" => {
                    failed += 1;
                    ended += 1;
                }
                "SUCCEEDED" => ended += 1,
                _ => {}
            }
        }
    }
    let Some(job) = state.jobs.iter_mut().find(|j| j.id == job_id) else {
        return;
    };
    if let Some((above, min)) = job.abort_above {
        if ended >= min && failed as f64 / ended as f64 > above && !job.canceled {
            job.canceled = true;
            for ((job, _), e) in state.executions.iter_mut() {
                if job == job_id && e.status == "QUEUED" {
                    e.status = "CANCELED".into();
                    e.history.push("CANCELED".into());
                }
            }
        }
    }
}

/// Answers a stream's get request, block by block.
fn serve_stream(client: &MqttClient, state: &mut State, thing: &str, rest: &str, payload: &[u8]) {
    use base64::Engine;
    let Some(id) = rest.strip_suffix("/get/json") else {
        return;
    };
    let request: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let token = request["c"].clone();
    let file = state
        .streams
        .get(id)
        .filter(|_| request["f"].as_u64() == Some(0));
    let block = request["l"].as_u64().unwrap_or(0) as usize;
    let (Some(file), true) = (file, (256..=131_072).contains(&block)) else {
        client.publish(
            &format!("$aws/things/{thing}/streams/{id}/rejected/json"),
            serde_json::json!({ "o": "ResourceNotFound", "m": "no such stream, file or block size", "c": token }).to_string(),
        );
        return;
    };
    let first = request["o"].as_u64().unwrap_or(0) as usize;
    let count = request["n"].as_u64().unwrap_or(1) as usize;
    let mut sent = 0;
    for i in first..first + count {
        let Some(bytes) = file.chunks(block).nth(i) else {
            break;
        };
        let body = serde_json::json!({
            "c": token, "f": 0, "l": bytes.len(), "i": i,
            "p": base64::engine::general_purpose::STANDARD.encode(bytes),
        })
        .to_string();
        sent += body.len();
        client.publish(&format!("$aws/things/{thing}/streams/{id}/data/json"), body);
    }
    *state.streamed.entry(thing.to_owned()).or_default() += sent;
}

//! Files as a source (the storage trigger): `triggers = [{ file =
//! "/var/spool/wasmgate/in/*.csv" }]` runs the function on each file that
//! lands in the directory, a USB sync job's CSV of vending sales, say.
//!
//! A file is taken once it is complete: written and closed, or renamed into
//! the directory (inotify says which), or, found by a scan, unchanged in
//! size and time since the scan before (a file that arrived while the
//! gateway was down is found by the scan at start). Names starting with `.`
//! or ending in `.tmp` or `.part` are left alone: write there, then rename.
//!
//! It settles like every event, after its outcome is committed
//! ([`Settle::File`]): then it moves to `done/` beside it (or is deleted,
//! `after = "delete"`), or to `failed/` if it was dead-lettered. A crash
//! before the commit leaves it in place, to run again; a crash after the
//! commit and before the move runs it again too, but its dedup id (path,
//! size, modification time) is committed with its effects, so the rerun
//! skips them and only moves the file. A file larger than `max_file_bytes`
//! is not read: it goes to the dead-letter queue as `too_large`, and to
//! `failed/`.
//!
//! [`Settle::File`]: super::Settle::File

use super::http::Answer;
pub use super::pattern::{After, Pattern};
use super::{Intake, Job, Settle};
use crate::event::OwnedEvent;
use crate::store::{Attempt, NewDeadLetter, Store};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::sync::Notify;

/// How often the directory is scanned when inotify says nothing (and on
/// systems without it): what it missed, the scan finds.
const RESCAN: Duration = Duration::from_secs(2);

/// One file trigger of one function.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub function: String,
    /// The module version, for a `too_large` file's dead letter.
    pub version: String,
    pub pattern: Pattern,
    pub after: After,
    pub max_file_bytes: u64,
    /// Dead letters the function keeps (its `dead_letters.keep`).
    pub keep: u32,
}

/// The files of one trigger in flight, so a scan does not take one twice.
type InFlight = Arc<Mutex<HashSet<PathBuf>>>;

/// What a file's invocation settles: where the file goes.
#[derive(Debug)]
pub struct Pending {
    path: PathBuf,
    after: After,
    failed: bool,
    in_flight: InFlight,
}

impl Pending {
    pub(super) fn tell(&mut self, answer: &Answer) {
        self.failed = matches!(answer, Answer::Failed { .. });
    }

    pub(super) fn resolve(self, durable: bool) {
        if durable {
            let to = match (self.failed, self.after) {
                (true, _) => To::Failed,
                (false, After::Move) => To::Done,
                (false, After::Delete) => To::Gone,
            };
            finish(&self.path, to);
        }
        // Not durable: left where it is, for the next scan or start.
        lock(&self.in_flight).remove(&self.path);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a settled file goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum To {
    Done,
    Failed,
    Gone,
}

/// Moves a settled file to `done/` or `failed/` beside it, or deletes it.
fn finish(path: &Path, to: To) {
    let result = match to {
        To::Gone => std::fs::remove_file(path),
        To::Done | To::Failed => {
            let sub = if to == To::Failed { "failed" } else { "done" };
            let dir = path.parent().unwrap_or(Path::new(".")).join(sub);
            std::fs::create_dir_all(&dir).and_then(|()| {
                let name = path.file_name().unwrap_or_default();
                let mut target = dir.join(name);
                // A file of that name was done before: keep both.
                let mut n = 1;
                while target.exists() {
                    target = dir.join(format!("{}.{n}", name.to_string_lossy()));
                    n += 1;
                }
                std::fs::rename(path, target)
            })
        }
    };
    if let Err(e) = result {
        tracing::error!(path = %path.display(), error = %e, "cannot move the processed file away; it runs again at the next scan (its effects are kept once)");
    }
}

/// What a scan saw of a file: its size and modification time.
type Seen = HashMap<PathBuf, (u64, u64)>;

/// Watches one trigger's directory until the workers are gone or the
/// gateway drains.
pub async fn run(spec: FileSpec, store: Store, intake: Intake, draining: Arc<AtomicBool>) {
    let wake = Arc::new(Notify::new());
    // Changes wake the scan at once; inotify's thread ends with the process.
    let closed_or_moved = watch(&spec.pattern.dir, wake.clone());
    let in_flight: InFlight = Arc::default();
    let mut last: Seen = HashMap::new();
    loop {
        if draining.load(Ordering::SeqCst) {
            return;
        }
        let ready = std::mem::take(&mut *lock(&closed_or_moved));
        let now = scan(&spec.pattern);
        for (path, (size, modified_ms)) in &now {
            let stable = last.get(path) == Some(&(*size, *modified_ms)) || ready.contains(path);
            if !stable || lock(&in_flight).contains(path) {
                continue;
            }
            lock(&in_flight).insert(path.clone());
            if !offer(
                &spec,
                &store,
                &intake,
                &in_flight,
                path,
                *size,
                *modified_ms,
            )
            .await
            {
                return;
            }
        }
        last = now;
        tokio::select! {
            () = wake.notified() => {
                // Let a burst of writes settle into one scan.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            () = tokio::time::sleep(RESCAN) => {}
        }
    }
}

/// The matching regular files in the directory now.
fn scan(pattern: &Pattern) -> Seen {
    let mut seen = Seen::new();
    let Ok(entries) = std::fs::read_dir(&pattern.dir) else {
        return seen;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !pattern.matches(name) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        seen.insert(entry.path(), (meta.len(), modified_ms));
    }
    seen
}

/// Hands one complete file to the function (or, too large, to the
/// dead-letter queue); `false` when the workers are gone.
async fn offer(
    spec: &FileSpec,
    store: &Store,
    intake: &Intake,
    in_flight: &InFlight,
    path: &Path,
    size: u64,
    modified_ms: u64,
) -> bool {
    let shown = path.display().to_string();
    if size > spec.max_file_bytes {
        too_large(spec, store, in_flight, path, size);
        return true;
    }
    let contents = match crate::files::read_limited(path, spec.max_file_bytes, "file") {
        Ok(contents) => contents,
        Err(e) => {
            // Gone (another consumer), or unreadable: the next scan says.
            tracing::warn!(function = %spec.function, path = %shown, error = %e, "cannot read the file; trying again at the next scan");
            lock(in_flight).remove(path);
            return true;
        }
    };
    let job = Job {
        event: OwnedEvent::File {
            path: shown.clone(),
            size,
            modified_ms,
            contents,
        },
        arrived: Instant::now(),
        settle: Settle::File(Pending {
            path: path.to_owned(),
            after: spec.after,
            failed: false,
            in_flight: in_flight.clone(),
        }),
        // A rerun after a crash between the commit and the move skips the
        // effects it committed.
        dedup: Some(format!("file:{shown}:{size}:{modified_ms}")),
        trace: None,
    };
    intake.send(job).await
}

/// A file over `max_file_bytes`: a dead letter saying so, and `failed/`.
fn too_large(spec: &FileSpec, store: &Store, in_flight: &InFlight, path: &Path, size: u64) {
    let shown = path.display().to_string();
    let now = crate::dlq::now_ms();
    let event = OwnedEvent::File {
        path: shown.clone(),
        size,
        modified_ms: 0,
        contents: Vec::new(),
    };
    let letter = NewDeadLetter {
        function: spec.function.clone(),
        request_id: 0,
        version: spec.version.clone(),
        topic: shown.clone(),
        event_kind: "file".into(),
        event: crate::dlq::encode_event(&event.as_event()),
        dedup: None,
        attempts: vec![Attempt {
            attempt: 0,
            at_ms: now,
            kind: "too_large".into(),
            error: format!(
                "{shown} is {size} bytes, over the trigger's max_file_bytes ({}); not read",
                spec.max_file_bytes
            ),
            version: spec.version.clone(),
            logs: Vec::new(),
        }],
        received_ms: now,
        keep: spec.keep,
        publish_to: None,
        cursor: None,
    };
    let (path, in_flight) = (path.to_owned(), in_flight.clone());
    let function = spec.function.clone();
    store.dead_letter(letter, move |result| {
        match result {
            Ok(id) => {
                tracing::warn!(id, function, path = %path.display(), size, "file too large: moved to failed/ and the dead-letter queue (`wasmgate dlq show {id}`)");
                finish(&path, To::Failed);
            }
            Err(e) => tracing::error!(function, path = %path.display(), error = %e, "cannot write the dead letter of a file too large; trying again at the next scan"),
        }
        lock(&in_flight).remove(&path);
    });
}

/// Files inotify saw closed after writing or moved in, for the next scan;
/// `wake` is notified on each. Without inotify (another OS, or no watches
/// left) the periodic scan does the work alone.
fn watch(dir: &Path, wake: Arc<Notify>) -> Arc<Mutex<HashSet<PathBuf>>> {
    let ready: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
    #[cfg(target_os = "linux")]
    {
        use inotify::{Inotify, WatchMask};
        let started = Inotify::init().and_then(|inotify| {
            inotify
                .watches()
                .add(dir, WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO)?;
            Ok(inotify)
        });
        match started {
            Ok(mut inotify) => {
                let (dir, ready) = (dir.to_owned(), ready.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("file-watch".into())
                        .spawn(move || {
                            let mut buffer = [0u8; 4096];
                            while let Ok(events) = inotify.read_events_blocking(&mut buffer) {
                                for event in events {
                                    if let Some(name) = event.name {
                                        lock(&ready).insert(dir.join(name));
                                    }
                                }
                                wake.notify_one();
                            }
                        });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start the file watcher; scanning every {RESCAN:?} instead");
                }
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the directory with inotify; scanning every {RESCAN:?} instead");
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (dir, wake);
    ready
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settled_file_moves_to_done_or_failed_or_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, "a,b\n").unwrap();
            path
        };
        finish(&file("a.csv"), To::Done);
        finish(&file("a.csv"), To::Done);
        assert!(dir.path().join("done/a.csv").exists());
        assert!(dir.path().join("done/a.csv.1").exists(), "kept both");
        finish(&file("b.csv"), To::Failed);
        assert!(dir.path().join("failed/b.csv").exists());
        let c = file("c.csv");
        finish(&c, To::Gone);
        assert!(!c.exists());
    }
}

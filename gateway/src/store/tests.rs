use super::*;
use crate::runtime::{Emit, Invoke};
use std::sync::mpsc::channel;
use wasmgate_abi::EmitOptions;

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(StoreOptions::new(dir.path().join("wasmgate.db"))).expect("opens")
}

fn effects(kv: &[(&str, KvWrite)], emits: &[(&str, &str)]) -> Effects {
    Effects {
        kv: kv.iter().map(|(k, w)| (k.to_string(), w.clone())).collect(),
        emits: emits
            .iter()
            .map(|(t, p)| Emit {
                topic: t.to_string(),
                payload: p.as_bytes().to_vec(),
                options: EmitOptions::default(),
            })
            .collect(),
        ..Effects::default()
    }
}

/// Submits and waits for the commit.
#[track_caller]
fn commit(store: &Store, function: &str, fx: Effects) {
    let (tx, rx) = channel();
    store.submit(Commit {
        function: function.into(),
        effects: fx,
        dedup: Vec::new(),
        cursors: Vec::new(),
        trace: None,
        done: Box::new(move |r| tx.send(r.is_ok()).unwrap()),
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "committed"
    );
}

fn counter(n: i64) -> Option<Vec<u8>> {
    Some(n.to_le_bytes().to_vec())
}

#[test]
fn committed_effects_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    commit(
        &store,
        "vending",
        effects(
            &[
                ("total", KvWrite::Add(150)),
                ("last", KvWrite::Put(b"6.8".to_vec())),
            ],
            &[("vending/vm-1/alert", "hot")],
        ),
    );
    store.close();

    let store = open(&dir);
    assert_eq!(store.get("vending", "total").unwrap(), counter(150));
    assert_eq!(store.get("vending", "last").unwrap(), Some(b"6.8".to_vec()));
    let rows = store.outbox_after(OutboxDestination::Local, 0, 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].topic.as_str(), rows[0].payload.as_slice()),
        ("vending/vm-1/alert", &b"hot"[..])
    );
}

#[test]
fn done_runs_only_once_the_data_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let path = store.path().to_owned();
    let (tx, rx) = channel();
    store.submit(Commit {
        function: "f".into(),
        effects: effects(&[("k", KvWrite::Put(b"v".to_vec()))], &[]),
        dedup: Vec::new(),
        cursors: Vec::new(),
        trace: None,
        done: Box::new(move |r| {
            // A separate connection, as after a crash, sees the value.
            let conn = Connection::open(&path).unwrap();
            let v: Vec<u8> = conn
                .query_row(
                    "SELECT value FROM kv WHERE namespace = 'f' AND key = 'k'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            tx.send((r.is_ok(), v)).unwrap();
        }),
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        (true, b"v".to_vec())
    );
}

#[test]
fn reads_see_submitted_writes_before_they_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path().join("wasmgate.db"));
    options.group_commit_delay = Duration::from_millis(300);
    let store = Store::open(options).unwrap();
    let (tx, rx) = channel();
    store.submit(Commit {
        function: "f".into(),
        effects: effects(&[("n", KvWrite::Add(5))], &[]),
        dedup: Vec::new(),
        cursors: Vec::new(),
        trace: None,
        done: Box::new(move |_| tx.send(()).unwrap()),
    });
    // Still inside the 300 ms group-commit window.
    assert_eq!(store.get("f", "n").unwrap(), counter(5));
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        store.get("f", "n").unwrap(),
        counter(5),
        "not applied twice after commit"
    );
}

#[test]
fn increments_from_many_threads_all_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..250 {
                    store.submit(Commit {
                        function: "f".into(),
                        effects: effects(&[("n", KvWrite::Add(1))], &[]),
                        dedup: Vec::new(),
                        cursors: Vec::new(),
                        trace: None,
                        done: Box::new(|_| {}),
                    });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(store.flush(Duration::from_secs(30)));
    assert_eq!(store.get("f", "n").unwrap(), counter(1000));
}

#[test]
fn group_commit_puts_many_invocations_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path().join("wasmgate.db"));
    options.group_commit_delay = Duration::from_millis(20);
    let store = Store::open(options).unwrap();
    for i in 0..500 {
        store.submit(Commit {
            function: "f".into(),
            effects: effects(&[(&format!("k{i}"), KvWrite::Put(vec![1]))], &[("t", "p")]),
            dedup: Vec::new(),
            cursors: Vec::new(),
            trace: None,
            done: Box::new(|_| {}),
        });
    }
    assert!(store.flush(Duration::from_secs(30)));
    let stats = store.stats();
    assert_eq!(stats.commits.load(Ordering::Relaxed), 500);
    let transactions = stats.transactions.load(Ordering::Relaxed);
    assert!(
        transactions < 100,
        "{transactions} transactions for 500 commits"
    );
}

#[test]
fn outbox_keeps_order_per_destination_and_forgets_deleted_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut fx = effects(&[], &[("a", "1"), ("b", "2")]);
    fx.emits.push(Emit {
        topic: "up".into(),
        payload: b"3".to_vec(),
        options: EmitOptions::upstream(),
    });
    fx.invokes.push(Invoke {
        function: "other".into(),
        payload: b"4".to_vec(),
        whole_event: false,
    });
    commit(&store, "f", fx);
    let local = store.outbox_after(OutboxDestination::Local, 0, 10).unwrap();
    assert_eq!(
        local.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(store.outbox_len(OutboxDestination::Upstream).unwrap(), 1);
    let invokes = store
        .outbox_after(OutboxDestination::Invoke, 0, 10)
        .unwrap();
    assert_eq!(
        (invokes[0].topic.as_str(), invokes[0].function.as_str()),
        ("other", "f")
    );

    store.delete_outbox(vec![local[0].id]);
    commit(&store, "f", Effects::default());
    let left = store.outbox_after(OutboxDestination::Local, 0, 10).unwrap();
    assert_eq!(
        left.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(
        store
            .outbox_after(OutboxDestination::Local, local[0].id, 10)
            .unwrap(),
        left
    );
}

#[test]
fn outbox_callbacks_name_the_destinations_that_got_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    store.on_outbox(move |d| lock(&tx).send(d).unwrap());
    commit(&store, "f", effects(&[], &[("a", "1")]));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        OutboxDestination::Local
    );
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.db");
    let junk = b"this is not sqlite, but someone's precious file".repeat(100);
    std::fs::write(&path, &junk).unwrap();
    let error = Store::open(StoreOptions::new(&path)).unwrap_err();
    assert!(
        error.to_string().contains("not a wasmgate database"),
        "{error}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), junk, "nothing destroyed");
}

#[test]
fn sequence_numbers_continue_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    commit(&store, "f", effects(&[("n", KvWrite::Add(1))], &[]));
    store.close();
    // If sequence numbers restarted at 1, the overlay would treat this
    // pending write as already committed and hide it.
    let mut options = StoreOptions::new(dir.path().join("wasmgate.db"));
    options.group_commit_delay = Duration::from_millis(300);
    let store = Store::open(options).unwrap();
    store.submit(Commit {
        function: "f".into(),
        effects: effects(&[("n", KvWrite::Add(1))], &[]),
        dedup: Vec::new(),
        cursors: Vec::new(),
        trace: None,
        done: Box::new(|_| {}),
    });
    assert_eq!(store.get("f", "n").unwrap(), counter(2));
}

#[test]
fn submit_after_close_fails_the_commit_without_acking() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.close();
    let (tx, rx) = channel();
    store.submit(Commit {
        function: "f".into(),
        effects: Effects::default(),
        dedup: Vec::new(),
        cursors: Vec::new(),
        trace: None,
        done: Box::new(move |r| tx.send(r.is_ok()).unwrap()),
    });
    assert!(!rx.recv().unwrap());
}

#[test]
fn a_dedup_id_is_seen_from_submit_on_and_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path().join("wasmgate.db"));
    options.group_commit_delay = Duration::from_millis(200);
    let store = Store::open(options).unwrap();
    let no_wait = || -> crate::store::PendingWaiter { panic!("nothing is pending") };
    assert_eq!(store.seen("f", "msg-1", no_wait).unwrap(), Seen::New);
    let (tx, rx) = channel();
    store.submit(Commit {
        function: "f".into(),
        effects: Effects::default(),
        dedup: vec!["msg-1".into()],
        cursors: Vec::new(),
        trace: None,
        done: Box::new(move |r| tx.send(r.is_ok()).unwrap()),
    });
    let (copy_tx, copy) = channel();
    let wait = move || -> crate::store::PendingWaiter {
        Box::new(move |committed| copy_tx.send(committed).unwrap())
    };
    assert_eq!(store.seen("f", "msg-1", wait).unwrap(), Seen::Pending);
    assert_eq!(
        store.seen("g", "msg-1", no_wait).unwrap(),
        Seen::New,
        "per function"
    );
    assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    assert!(
        copy.recv_timeout(Duration::from_secs(10)).unwrap(),
        "the copy learns the original is kept"
    );
    assert_eq!(
        store.seen("f", "msg-1", no_wait).unwrap(),
        Seen::Committed,
        "durable"
    );
    store.close();
    let store = open(&dir);
    assert_eq!(
        store.seen("f", "msg-1", no_wait).unwrap(),
        Seen::Committed,
        "after a reopen"
    );
}

fn big_emit(n: usize) -> Effects {
    effects(&[], &[(&format!("t/{n}"), &"x".repeat(1_000))])
}

/// The bug this guards against: a copy of a message whose original was
/// still in its group commit used to count as processed at once, so the
/// copy was acknowledged before the original's effects were durable, and
/// a crash in between lost the message and its effects.
#[test]
fn a_copy_of_a_message_still_committing_is_settled_only_by_that_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path().join("wasmgate.db"));
    // A slow disk: the original's commit takes its time.
    options.group_commit_delay = Duration::from_millis(500);
    let store = Store::open(options).unwrap();
    store.submit(Commit {
        function: "f".into(),
        effects: effects(&[("n", KvWrite::Add(1))], &[]),
        dedup: vec!["msg-1".into()],
        cursors: Vec::new(),
        trace: None,
        done: Box::new(|_| {}),
    });
    let (copy_tx, copy) = channel();
    let wait = move || -> crate::store::PendingWaiter {
        Box::new(move |committed| copy_tx.send(committed).unwrap())
    };
    assert_eq!(store.seen("f", "msg-1", wait).unwrap(), Seen::Pending);
    assert!(
        copy.recv_timeout(Duration::from_millis(100)).is_err(),
        "the copy must not be settled while the original is uncommitted"
    );
    assert!(copy.recv_timeout(Duration::from_secs(10)).unwrap());
    // Settled after the effects, never before them.
    let reader = open_reader(&dir.path().join("wasmgate.db")).unwrap();
    let n: Vec<u8> = reader
        .query_row(
            "SELECT value FROM kv WHERE namespace = 'f' AND key = 'n'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, counter(1).unwrap());
}

#[test]
fn an_invocation_consumes_its_outbox_row_in_its_own_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut invoke = Effects::default();
    invoke.invokes.push(crate::runtime::Invoke {
        function: "g".into(),
        payload: b"job".to_vec(),
        whole_event: false,
    });
    commit(&store, "f", invoke);
    let rows = store
        .outbox_after(OutboxDestination::Invoke, 0, 10)
        .unwrap();
    assert_eq!(rows.len(), 1);
    let (tx, rx) = channel();
    store.submit(Commit {
        function: "g".into(),
        effects: effects(&[("done", KvWrite::Add(1))], &[]),
        dedup: Vec::new(),
        cursors: vec![Cursor::OutboxRow(rows[0].id)],
        trace: None,
        done: Box::new(move |r| tx.send(r.is_ok()).unwrap()),
    });
    assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    assert!(store
        .outbox_after(OutboxDestination::Invoke, 0, 10)
        .unwrap()
        .is_empty());
    assert_eq!(store.get("g", "done").unwrap(), counter(1));
    assert_eq!(store.outbox_bytes(), 0, "its bytes are counted out");
}

#[test]
fn a_delete_of_delivered_rows_reports_when_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    commit(&store, "f", effects(&[], &[("a/b", "x")]));
    let rows = store.outbox_after(OutboxDestination::Local, 0, 10).unwrap();
    let (tx, rx) = channel();
    store.delete_outbox_then(
        vec![rows[0].id],
        Some(Box::new(move |r| tx.send(r.is_ok()).unwrap())),
    );
    assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    assert!(store
        .outbox_after(OutboxDestination::Local, 0, 10)
        .unwrap()
        .is_empty());
}

#[test]
fn drop_oldest_keeps_the_outbox_within_budget_and_counts_each_drop() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path().join("wasmgate.db"));
    options.outbox_max_bytes = 10_000;
    options.local_when_full = WhenFull::DropOldest;
    let store = Store::open(options).unwrap();
    for n in 0..30 {
        commit(&store, "f", big_emit(n));
    }
    assert!(store.outbox_bytes() <= 10_000, "{}", store.outbox_bytes());
    let dropped = store.stats().outbox_dropped.load(Ordering::Relaxed);
    let left = store
        .outbox_after(OutboxDestination::Local, 0, 100)
        .unwrap();
    assert_eq!(dropped as usize + left.len(), 30);
    assert_eq!(left.last().unwrap().topic, "t/29", "the newest survive");
    assert!(
        left.first().unwrap().topic != "t/0",
        "the oldest went first"
    );
}

#[test]
fn block_holds_new_commits_until_delivery_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path().join("wasmgate.db"));
    options.outbox_max_bytes = 5_000;
    let store = Store::open(options).unwrap();
    // Five rows of 1,003 bytes: the fifth commit goes through (the budget
    // is checked before a commit) and leaves the outbox over budget.
    for n in 0..5 {
        commit(&store, "f", big_emit(n));
    }
    assert!(store.outbox_bytes() > 5_000);
    let blocked = {
        let store = store.clone();
        std::thread::spawn(move || commit(&store, "f", big_emit(99)))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !blocked.is_finished(),
        "a new commit waits while the outbox is over budget"
    );
    assert_eq!(
        store.stats().outbox_dropped.load(Ordering::Relaxed),
        0,
        "block drops nothing"
    );
    // Delivery deletes rows; the waiting commit goes through.
    let ids = store
        .outbox_after(OutboxDestination::Local, 0, 100)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    store.delete_outbox(ids);
    blocked.join().unwrap();
    assert_eq!(store.outbox_len(OutboxDestination::Local).unwrap(), 1);
}

#[test]
fn the_outbox_feed_hands_over_exactly_the_rows_the_table_holds_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    commit(&store, "f", effects(&[], &[("t/before", "0")]));
    let generation = store.outbox_feed_start(OutboxDestination::Local);
    // The drainer's read after starting the feed sees what came before.
    let read = store.outbox_after(OutboxDestination::Local, 0, 10).unwrap();
    assert_eq!(read.len(), 1);
    for n in 1..=3 {
        commit(&store, "f", effects(&[], &[(&format!("t/{n}"), "x")]));
    }
    let fed = store
        .outbox_feed(OutboxDestination::Local, generation, read[0].id, 10)
        .expect("the feed is on");
    let table = store
        .outbox_after(OutboxDestination::Local, read[0].id, 10)
        .unwrap();
    assert_eq!(fed, table, "same rows, same ids, same order");
    assert_eq!(
        store.outbox_feed(OutboxDestination::Upstream, generation, 0, 10),
        None,
        "a destination whose feed was never started reads the table"
    );
}

#[test]
fn drop_oldest_stops_the_feed_so_dropped_rows_are_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path().join("wasmgate.db"));
    options.outbox_max_bytes = 3_000;
    options.local_when_full = WhenFull::DropOldest;
    let store = Store::open(options).unwrap();
    let generation = store.outbox_feed_start(OutboxDestination::Local);
    for n in 0..5 {
        commit(&store, "f", big_emit(n));
    }
    assert!(store.stats().outbox_dropped.load(Ordering::Relaxed) > 0);
    assert_eq!(
        store.outbox_feed(OutboxDestination::Local, generation, 0, 10),
        None
    );
}

#[test]
fn rows_another_process_inserts_stop_the_feed_so_none_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let ours = open(&dir);
    commit(&ours, "f", effects(&[], &[("t/1", "x")]));
    let generation = ours.outbox_feed_start(OutboxDestination::Local);
    // `wasmgate dlq replay` commits through a store of its own.
    let other = open(&dir);
    commit(&other, "f", effects(&[], &[("t/other", "x")]));
    other.close();
    commit(&ours, "f", effects(&[], &[("t/2", "x")]));
    assert_eq!(
        ours.outbox_feed(OutboxDestination::Local, generation, 0, 10),
        None,
        "the feed holds t/2 but not t/other, so the table must be read"
    );
}

/// A queue holding `requests`, as the store thread's would.
fn queued(requests: std::ops::RangeInclusive<u32>) -> std::sync::mpsc::Receiver<u32> {
    let (tx, rx) = channel();
    for request in requests {
        tx.send(request).unwrap();
    }
    rx
}

/// Runs `next_batch` on what is queued now, recording the sleeps it asks for.
fn batch_of(
    rx: &std::sync::mpsc::Receiver<u32>,
    window: Duration,
    max: usize,
    backlog: bool,
) -> (Vec<u32>, Vec<Duration>) {
    let first = rx.try_recv().expect("a request is queued");
    let mut slept = Vec::new();
    let batch = next_batch(first, rx, window, max, backlog, |d| slept.push(d));
    (batch, slept)
}

#[test]
fn a_group_commit_sleeps_out_its_window_once_then_takes_what_is_queued() {
    let rx = queued(1..=3);
    let window = Duration::from_millis(2);
    assert_eq!(
        batch_of(&rx, window, 512, false),
        (vec![1, 2, 3], vec![window])
    );
}

#[test]
fn after_a_full_batch_the_next_does_not_wait_out_the_window() {
    let rx = queued(1..=5);
    let window = Duration::from_millis(50);
    let (batch, slept) = batch_of(&rx, window, 2, false);
    assert_eq!((batch.clone(), slept), (vec![1, 2], vec![window]));
    // Full: more may be waiting, so no sleep.
    let (batch, slept) = batch_of(&rx, window, 2, batch.len() == 2);
    assert_eq!((batch.clone(), slept), (vec![3, 4], vec![]));
    let (batch, slept) = batch_of(&rx, window, 2, batch.len() == 2);
    assert_eq!((batch, slept), (vec![5], vec![]));
}

#[test]
fn a_zero_window_commits_what_is_queued_without_sleeping() {
    let rx = queued(1..=2);
    assert_eq!(
        batch_of(&rx, Duration::ZERO, 512, false),
        (vec![1, 2], vec![])
    );
}

#[test]
fn an_operators_commit_beside_a_running_gateway_hides_none_of_its_pending_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.db");
    let mut options = StoreOptions::new(&path);
    options.group_commit_delay = Duration::from_secs(2);
    let gateway = Store::open(options).unwrap();
    commit(&gateway, "f", effects(&[("n", KvWrite::Add(1))], &[]));
    let (tx, rx) = channel();
    gateway.submit(Commit {
        function: "f".into(),
        effects: effects(&[("n", KvWrite::Add(1))], &[]),
        dedup: Vec::new(),
        cursors: Vec::new(),
        trace: None,
        done: Box::new(move |r| tx.send(r.is_ok()).unwrap()),
    });
    // Inside the gateway's 2 s window, `wasmgate kv put` commits through a
    // store of its own, with the sequence number the pending write has.
    let mut operator = StoreOptions::new(&path);
    operator.operator = true;
    let operator = Store::open(operator).unwrap();
    operator
        .commit_now("f", effects(&[("price", KvWrite::Put(b"2".to_vec()))], &[]))
        .unwrap();
    operator.close();
    assert_eq!(gateway.get("f", "price").unwrap(), Some(b"2".to_vec()));
    assert_eq!(
        gateway.get("f", "n").unwrap(),
        counter(2),
        "the pending write still counts"
    );
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "committed"
    );
    assert_eq!(gateway.get("f", "n").unwrap(), counter(2));
}

#[test]
fn an_operators_commit_is_not_held_by_a_full_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.db");
    let gateway = Store::open(StoreOptions::new(&path)).unwrap();
    commit(&gateway, "f", big_emit(4_000));
    gateway.close();
    // `wasmgate dlq replay` while the uplink is down: the outbox is over the
    // budget, and only the gateway's drainer could make room.
    let mut options = StoreOptions::new(&path);
    options.outbox_max_bytes = 1_000;
    options.operator = true;
    let operator = Store::open(options).unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let result = operator.commit_now("f", effects(&[], &[("t/replayed", "x")]));
        tx.send(result.is_ok()).unwrap();
        operator.close();
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(20)).unwrap(),
        "committed without waiting for room"
    );
}

#[test]
fn a_commit_waits_for_another_writer_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.db");
    let gateway = Store::open(StoreOptions::new(&path)).unwrap();
    commit(&gateway, "f", effects(&[("n", KvWrite::Add(1))], &[]));
    // Another process (`wasmgate kv put`) holds the write lock for 300 ms and
    // commits; meanwhile the gateway commits an increment, which reads first.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    other
        .execute(
            "INSERT INTO kv (namespace, key, value, updated_ms) VALUES ('f', 'm', x'01', 0)",
            [],
        )
        .unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        other.execute_batch("COMMIT").unwrap();
    });
    commit(&gateway, "f", effects(&[("n", KvWrite::Add(1))], &[]));
    holder.join().unwrap();
    assert_eq!(gateway.get("f", "n").unwrap(), counter(2));
    assert_eq!(
        gateway.stats().failures.load(Ordering::Relaxed),
        0,
        "waited for the lock; no failed transaction to retry"
    );
}

#[test]
fn an_increment_marks_its_value_a_counter_and_a_put_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let pos = [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat();
    commit(
        &store,
        "robot",
        effects(
            &[
                ("r-3/pos", KvWrite::Put(pos.clone())),
                ("r-3/ticks", KvWrite::Add(200)),
            ],
            &[],
        ),
    );
    let entry = |key: &str| store.kv_entry("robot", key).unwrap().unwrap();
    assert_eq!(entry("r-3/pos").counter, Some(false));
    assert_eq!(entry("r-3/pos").value, pos);
    assert_eq!(entry("r-3/ticks").counter, Some(true));
    // A put over a counter makes it plain bytes again.
    commit(
        &store,
        "robot",
        effects(&[("r-3/ticks", KvWrite::Put(pos.clone()))], &[]),
    );
    assert_eq!(entry("r-3/ticks").counter, Some(false));
    let listed: Vec<_> = store.kv_list("robot").unwrap();
    assert_eq!(listed.len(), 2);
    assert!(store.kv_entry("robot", "missing").unwrap().is_none());
}

#[test]
fn a_watched_namespace_keeps_its_changes_until_every_consumer_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path().join("wasmgate.db"));
    options.kv_streams = vec!["vending".into()];
    let store = Store::open(options).expect("opens");
    let put = |v: &str| KvWrite::Put(v.as_bytes().to_vec());
    commit(&store, "vending", effects(&[("a", put("1"))], &[]));
    commit(&store, "vending", effects(&[("a", put("2"))], &[]));
    commit(&store, "vending", effects(&[("a", KvWrite::Delete)], &[]));
    // A delete of a key that is not there changes nothing.
    commit(&store, "vending", effects(&[("b", KvWrite::Delete)], &[]));
    // Another namespace is not watched.
    commit(&store, "robots", effects(&[("a", put("x"))], &[]));
    let rows = store.kv_changes_after("vending", 0, 10).unwrap();
    type Images<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);
    let seen: Vec<Images> = rows
        .iter()
        .map(|r| (r.old.as_deref(), r.new.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (None, Some(&b"1"[..])),
            (Some(&b"1"[..]), Some(&b"2"[..])),
            (Some(&b"2"[..]), None)
        ]
    );
    assert!(store.kv_changes_after("robots", 0, 10).unwrap().is_empty());

    // Two consumers: the changes go only once both have passed them.
    let advance = |consumer: &str, seq: i64| {
        let fx = Effects::default();
        let (tx, rx) = channel();
        store.submit(Commit {
            function: "audit".into(),
            effects: fx,
            dedup: Vec::new(),
            cursors: vec![Cursor::KvStream {
                consumer: consumer.into(),
                namespace: "vending".into(),
                seq,
            }],
            trace: None,
            done: Box::new(move |r| tx.send(r.is_ok()).unwrap()),
        });
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    };
    advance("stock/0", rows[0].seq);
    advance("audit/0", rows[2].seq);
    assert_eq!(store.kv_changes_after("vending", 0, 10).unwrap().len(), 2);
    assert_eq!(
        store.kv_cursor("audit/0", "vending").unwrap(),
        (Some(rows[2].seq), rows[2].seq)
    );
    advance("stock/0", rows[2].seq);
    assert!(store.kv_changes_after("vending", 0, 10).unwrap().is_empty());

    // A consumer that is gone (its trigger removed) would hold the next
    // changes back for good; forgotten, it no longer does.
    commit(&store, "vending", effects(&[("c", put("3"))], &[]));
    commit(&store, "vending", effects(&[("c", put("4"))], &[]));
    let later = store.kv_changes_after("vending", 0, 10).unwrap();
    assert_eq!(later.len(), 2);
    advance("audit/0", later[1].seq);
    assert_eq!(
        store.kv_changes_after("vending", 0, 10).unwrap().len(),
        2,
        "stock/0 holds them"
    );
    assert_eq!(store.forget_kv_consumers(&["audit/0".into()]).unwrap(), 1);
    assert_eq!(store.kv_cursor("stock/0", "vending").unwrap().0, None);
    advance("audit/0", later[1].seq);
    assert!(store.kv_changes_after("vending", 0, 10).unwrap().is_empty());
}

#[test]
fn each_opening_starts_request_ids_past_every_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(&dir);
    let a = first.first_request_id();
    first.close();
    drop(first);
    let second = open(&dir);
    let b = second.first_request_id();
    // A trillion ids apart: a run never reaches the next one's.
    assert!(b > a && b - a >= 1 << 40, "{a} then {b}");
}

#[test]
fn a_large_transaction_of_spans_is_written_as_rows_an_export_can_take() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path().join("wasmgate.db"));
    options.span_keep = 10_000;
    let store = Store::open(options).expect("opens");
    let n = super::spans::ROW_SPANS * 2 + 76;
    for i in 0..n {
        store.span(vec![i as u8]);
    }
    commit(&store, "f", Effects::default());
    assert_eq!(store.spans_waiting().unwrap(), n as u64);
    let mut after = 0;
    let mut counts = Vec::new();
    while let Some(w) = store.spans_after(after, super::spans::ROW_SPANS).unwrap() {
        assert_eq!(w.framed.len() as u64, w.count * 3);
        counts.push(w.count);
        after = w.last;
    }
    let row = super::spans::ROW_SPANS as u64;
    assert_eq!(counts, [row, row, 76]);
    store.close();
}

#[test]
fn spans_wait_in_order_keep_only_the_newest_and_go_once_exported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.db");
    let mut options = StoreOptions::new(path.clone());
    options.span_keep = 3;
    let store = Store::open(options.clone()).expect("opens");
    for i in 0..5u8 {
        store.span(vec![i]);
    }
    // Written in the next transaction, as one row of what `keep` allows:
    // each span framed as ScopeSpans.spans (field 2).
    commit(&store, "f", Effects::default());
    let first = store.spans_after(0, 10).unwrap().expect("spans wait");
    assert_eq!(first.count, 3, "the newest 3 of 5");
    assert_eq!(first.framed, [0x12, 1, 2, 0x12, 1, 3, 0x12, 1, 4]);
    assert_eq!(store.spans_waiting().unwrap(), 3);
    assert_eq!(store.stats().spans_dropped.load(Ordering::Relaxed), 2);
    // One more is past `keep`: the oldest row goes whole.
    store.span(vec![5]);
    commit(&store, "f", Effects::default());
    let second = store.spans_after(0, 10).unwrap().expect("spans wait");
    assert_eq!(
        (second.count, second.framed.as_slice()),
        (1, &[0x12, 1, 5][..])
    );
    assert!(second.last > first.last);
    assert_eq!(store.spans_waiting().unwrap(), 1);
    assert_eq!(store.stats().spans_dropped.load(Ordering::Relaxed), 5);
    // Rows are read whole while they fit the limit.
    store.span(vec![6]);
    store.span(vec![7]);
    commit(&store, "f", Effects::default());
    assert_eq!(store.spans_after(0, 1).unwrap().unwrap(), second);
    assert_eq!(store.spans_after(0, 2).unwrap().unwrap(), second);
    let both = store.spans_after(0, 3).unwrap().unwrap();
    assert_eq!((both.count, both.framed.len()), (3, 9));
    // Exported: gone, and ids go on growing after everything is gone
    // (the exporter reads on from its last).
    store.spans_exported(both.last);
    commit(&store, "f", Effects::default());
    assert_eq!(store.spans_after(0, 10).unwrap(), None);
    assert_eq!(store.spans_waiting().unwrap(), 0);
    store.span(vec![9]);
    commit(&store, "f", Effects::default());
    let after = store.spans_after(both.last, 10).unwrap().unwrap();
    assert!(after.last > both.last);
    store.close();
    drop(store);
    // A span kept by schema 9 (one per row, unframed: count 0) is sent
    // framed like the rest.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO span_batches (count, body) VALUES (0, x'0708')",
        [],
    )
    .unwrap();
    drop(conn);
    let store = Store::open(options).expect("opens again");
    let old = store.spans_after(after.last, 10).unwrap().unwrap();
    assert_eq!(
        (old.count, old.framed.as_slice()),
        (1, &[0x12, 2, 7, 8][..])
    );
    assert_eq!(store.spans_waiting().unwrap(), 2);
    store.close();
}

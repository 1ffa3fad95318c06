//! `dlq-tool`, the real binary run as a subprocess, against the real
//! services, on both transports. Dead letters are made the way workers make
//! them: consumed with `Broker::consume` and settled with
//! `Delivery::dead_letter`.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use fleet_broker::{
    Broker, Consumer, DeadLetter, OutgoingMessage, PublishOutcome, ReplayOptions, WorkerTopology,
};
use fleet_tests::TestContext;
use serde_json::Value;
use tokio::process::Command;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);
/// The worker whose dead letters the tests operate on (a fleet worker name:
/// dlq-tool accepts only those).
const WORKER: &str = "inventory-worker";
/// Another worker bound to the same event type.
const OTHER: &str = "payment-worker";
const TYPE: &str = "order.placed";

on_both_transports!(
    peek_is_non_destructive_and_order_preserving,
    list_show_and_stats_describe_the_dead_letters,
    replay_by_id_reaches_only_that_worker_with_the_same_id,
    the_selection_is_fixed_when_the_replay_starts,
    a_replay_stops_early_when_replays_fail_again,
    purge_needs_yes_and_removes_only_the_selection,
    export_purge_import_round_trip,
    mutating_commands_are_audited,
    bad_input_exits_1_or_2_without_panicking,
    killed_mid_replay_loses_nothing,
    a_sparse_selection_is_replayed_in_place,
    reads_put_the_dead_letters_back_before_they_return,
    a_replay_hands_back_the_rest_before_it_exits,
);

// ----------------------------------------------------------------- helpers

struct Fixture {
    ctx: TestContext,
    transport: &'static str,
}

impl Fixture {
    async fn new(transport: &'static str) -> Self {
        Self {
            ctx: TestContext::new().await,
            transport,
        }
    }

    fn overrides(&self) -> Vec<(&'static str, String)> {
        vec![
            ("FLEET__TRANSPORT", self.transport.to_owned()),
            ("FLEET__REDIS__VISIBILITY_TIMEOUT_MS", "5000".to_owned()),
            ("FLEET__REDIS__BLOCK_MS", "200".to_owned()),
            ("FLEET__WORKER__PREFETCH", "100".to_owned()),
            ("FLEET__AMQP__CONFIRM_TIMEOUT_MS", "5000".to_owned()),
        ]
    }

    fn settings(&self) -> fleet_config::Settings {
        let overrides = self.overrides();
        let pairs: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.ctx.settings("dlq-tool-test", &pairs)
    }

    async fn broker(&self, replica: &str) -> Broker {
        let broker = Broker::connect(&self.settings(), replica).await.unwrap();
        broker.declare_events().await.unwrap();
        broker
    }

    /// The environment of a dlq-tool process of this test (nothing
    /// inherited: no stray FLEET__ variable of the runner leaks in).
    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), self.ctx.database_url.clone()),
            ("AMQP_URL".into(), self.ctx.amqp_url.clone()),
            ("REDIS_URL".into(), self.ctx.redis_url.clone()),
            ("FLEET__NAMESPACE".into(), self.ctx.namespace.to_string()),
            ("USER".into(), "dlq-test".into()),
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ];
        env.extend(
            self.overrides()
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value)),
        );
        env
    }

    fn command(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(binary());
        command
            .args(args)
            .env_clear()
            .envs(self.env())
            .envs(extra_env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[]).await
    }

    async fn run_with(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        // A guard against a hung process, not a speed check: generous,
        // because the chaos suite may load the shared broker meanwhile.
        let output = tokio::time::timeout(
            Duration::from_secs(300),
            self.command(args, extra_env).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("dlq-tool {args:?} did not finish"))
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("panicked"),
            "dlq-tool {args:?} panicked: {stderr}"
        );
        output
    }

    /// Runs a command that must succeed and print one JSON document.
    async fn json(&self, args: &[&str]) -> Value {
        let output = self.run(args).await;
        // The report (stdout) says which letters failed and why.
        assert_eq!(
            output.status.code(),
            Some(0),
            "dlq-tool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        parse(&output)
    }
}

fn parse(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not one JSON document ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// `target/<profile>/dlq-tool`, beside `target/<profile>/deps/it-…`.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let binary = profile_dir.join("dlq-tool");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p dlq-tool` (with the same CARGO_TARGET_DIR and \
         profile) before these tests",
        binary.display()
    );
    binary
}

fn topology(worker: &str) -> WorkerTopology {
    WorkerTopology {
        worker: worker.to_owned(),
        event_types: vec![TYPE.to_owned()],
        retry_delays: vec![Duration::from_millis(200)],
        delivery_limit: 5,
        expires_after: None,
    }
}

fn message(n: usize) -> OutgoingMessage {
    let id = Uuid::now_v7().to_string();
    OutgoingMessage {
        body: format!(r#"{{"id":"{id}","type":"{TYPE}","n":{n}}}"#).into_bytes(),
        id,
        event_type: TYPE.to_owned(),
        timestamp: 1_700_000_000,
    }
}

async fn publish(broker: &Broker, messages: &[OutgoingMessage]) {
    for chunk in messages.chunks(500) {
        for outcome in broker.publish_batch(chunk).await.unwrap() {
            assert_eq!(outcome, PublishOutcome::Confirmed);
        }
    }
}

fn id_of(body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).unwrap();
    value["id"].as_str().unwrap().to_owned()
}

/// Publishes `count` events and dead-letters them through `consumer`
/// (already started), in order, with error `error(n)`. Returns their ids in
/// publication order.
async fn dead_letter(
    broker: &Broker,
    consumer: &mut Consumer,
    count: usize,
    error: impl Fn(usize) -> String,
) -> Vec<String> {
    let sent: Vec<OutgoingMessage> = (0..count).map(message).collect();
    publish(broker, &sent).await;
    let mut ids = Vec::new();
    for (n, expected) in sent.iter().enumerate() {
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a delivery within the wait")
            .expect("the consumer ended");
        let id = id_of(delivery.body());
        assert_eq!(id, expected.id, "deliveries in publication order");
        delivery.dead_letter("handler", &error(n)).await.unwrap();
        ids.push(id);
    }
    ids
}

/// `count` dead letters of [`WORKER`] made by a consumer that is shut down
/// afterwards (so replays wait in the worker's queue or retry stream).
async fn populate(fixture: &Fixture, count: usize) -> Vec<String> {
    let broker = fixture.broker("populate").await;
    let mut consumer = broker.consume(&topology(WORKER)).await.unwrap();
    let ids = dead_letter(&broker, &mut consumer, count, |n| {
        format!("timeout after {n} ms on order {n}")
    })
    .await;
    consumer.shutdown().await;
    wait_for_depth(&broker, count as u64).await;
    ids
}

/// Many dead letters, settled concurrently (order does not matter).
async fn populate_many(fixture: &Fixture, count: usize) -> BTreeSet<String> {
    let broker = fixture.broker("populate").await;
    let mut consumer = broker.consume(&topology(WORKER)).await.unwrap();
    let sent: Vec<OutgoingMessage> = (0..count).map(message).collect();
    publish(&broker, &sent).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a delivery within the wait")
            .expect("the consumer ended");
        tasks.spawn(async move { delivery.dead_letter("handler", "boom").await.unwrap() });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    consumer.shutdown().await;
    wait_for_depth(&broker, count as u64).await;
    sent.into_iter().map(|message| message.id).collect()
}

async fn wait_for_depth(broker: &Broker, expected: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let depth = broker.dead_letter_depth(WORKER).await.unwrap();
        if depth == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters: {depth}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dead_letter_ids(broker: &Broker) -> Vec<String> {
    broker
        .peek_dead_letters(WORKER, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|letter| letter.id)
        .collect()
}

/// Everything a consumer of `worker` receives until it is quiet for
/// `quiet`, acknowledged: (event id, replays, attempt).
async fn drain(broker: &Broker, worker: &str, quiet: Duration) -> Vec<(String, u32, u32)> {
    let mut consumer = broker.consume(&topology(worker)).await.unwrap();
    let mut received = Vec::new();
    while let Ok(Some(delivery)) = tokio::time::timeout(quiet, consumer.next()).await {
        let info = delivery.info();
        received.push((id_of(delivery.body()), info.replays, info.attempt));
        delivery.ack().await.unwrap();
    }
    consumer.shutdown().await;
    received
}

fn ids_of(document: &Value) -> Vec<String> {
    document
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_owned())
        .collect()
}

// ------------------------------------------------------------------- tests

async fn peek_is_non_destructive_and_order_preserving(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let ids = populate(&fixture, 6).await;
    let broker = fixture.broker("check").await;

    let first = fixture.json(&["peek", WORKER, "-n", "100", "--json"]).await;
    let second = fixture.json(&["peek", WORKER, "-n", "100", "--json"]).await;
    assert_eq!(
        first, second,
        "peeking twice shows the same, in the same order"
    );
    assert_eq!(ids_of(&first), ids, "oldest first, in dead-letter order");
    assert_eq!(broker.dead_letter_depth(WORKER).await.unwrap(), 6);

    // The contract's fields.
    let row = &first[0];
    assert_eq!(row["type"], TYPE);
    assert_eq!(row["error_kind"], "handler");
    assert_eq!(row["error"], "timeout after 0 ms on order 0");
    assert_eq!(row["attempts"], 1);
    assert!(row["first_failed_at"].is_string());
    assert!(row["last_failed_at"].is_string());
    assert_eq!(row["event"]["id"], ids[0].as_str());

    // Limits and filters, still without removing anything.
    let two = fixture.json(&["peek", WORKER, "-n", "2", "--json"]).await;
    assert_eq!(ids_of(&two), ids[..2]);
    let filtered = fixture
        .json(&["peek", WORKER, "--error-contains", "order 3", "--json"])
        .await;
    assert_eq!(ids_of(&filtered), vec![ids[3].clone()]);
    let none = fixture
        .json(&["peek", WORKER, "--type", "stock.reserved", "--json"])
        .await;
    assert_eq!(ids_of(&none), Vec::<String>::new());
    let future = fixture
        .json(&["peek", WORKER, "--since", "2999-01-01T00:00:00Z", "--json"])
        .await;
    assert_eq!(ids_of(&future).len(), 0);

    // The table: readable, and the same dead letters.
    let table = fixture.run(&["peek", WORKER]).await;
    assert_eq!(table.status.code(), Some(0));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains(&ids[0]) && text.contains("handler"), "{text}");

    let third = fixture.json(&["peek", WORKER, "-n", "100", "--json"]).await;
    assert_eq!(first, third);
    assert_eq!(broker.dead_letter_depth(WORKER).await.unwrap(), 6);
}

async fn list_show_and_stats_describe_the_dead_letters(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let ids = populate(&fixture, 4).await;

    let list = fixture.json(&["list", "--json"]).await;
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 4, "one row per worker: {list}");
    let row = rows.iter().find(|row| row["worker"] == WORKER).unwrap();
    assert_eq!(row["transport"], transport);
    assert_eq!(row["depth"], 4);
    assert!(row["name"].as_str().unwrap().contains("dlq"));
    assert!(row["oldest_failed_at"].is_string());
    assert_eq!(row["parked_outbox_rows"], 0);
    let other = rows.iter().find(|row| row["worker"] == OTHER).unwrap();
    assert_eq!(other["depth"], 0);

    let show = fixture.json(&["show", WORKER, &ids[2], "--json"]).await;
    assert_eq!(show["id"], ids[2].as_str());
    assert_eq!(show["event"]["id"], ids[2].as_str());
    assert_eq!(show["error"], "timeout after 2 ms on order 2");
    assert_eq!(show["replays"], 0);
    assert!(show["source"].as_str().unwrap().contains(TYPE));
    assert!(show["headers"].is_object());
    assert!(show["replay_history"].is_array());

    // Four messages differing only in numbers: one group.
    let stats = fixture
        .json(&["stats", WORKER, "--by", "error", "--json"])
        .await;
    let groups = stats["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{stats}");
    assert_eq!(groups[0]["count"], 4);
    assert_eq!(groups[0]["error"], "timeout after <n> ms on order <n>");
    let fingerprint = groups[0]["fingerprint"].as_str().unwrap().to_owned();
    let by_type = fixture
        .json(&["stats", WORKER, "--by", "type", "--json"])
        .await;
    assert_eq!(by_type["groups"][0]["key"], TYPE);
    assert_eq!(by_type["groups"][0]["count"], 4);

    // The fingerprint selects the group.
    let dry = fixture
        .json(&[
            "replay",
            WORKER,
            "--group",
            &fingerprint,
            "--dry-run",
            "--json",
        ])
        .await;
    assert_eq!(dry["selected"], 4);
    assert_eq!(dry["dry_run"], true);

    let missing = fixture
        .run(&["show", WORKER, &Uuid::now_v7().to_string()])
        .await;
    assert_eq!(missing.status.code(), Some(1));
}

async fn replay_by_id_reaches_only_that_worker_with_the_same_id(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let broker = fixture.broker("test").await;
    let mut failing = broker.consume(&topology(WORKER)).await.unwrap();
    let mut other = broker.consume(&topology(OTHER)).await.unwrap();

    let ids = dead_letter(&broker, &mut failing, 3, |n| format!("failure {n}")).await;
    // The other worker handled all three fine.
    for _ in 0..3 {
        let delivery = tokio::time::timeout(WAIT, other.next())
            .await
            .unwrap()
            .unwrap();
        delivery.ack().await.unwrap();
    }
    wait_for_depth(&broker, 3).await;

    let report = fixture
        .json(&[
            "replay", WORKER, "--id", &ids[1], "--reason", "fixed", "--json",
        ])
        .await;
    assert_eq!(report["selected"], 1);
    assert_eq!(report["replayed"], 1);
    assert_eq!(report["failed"], 0);

    let delivery = tokio::time::timeout(WAIT, failing.next())
        .await
        .expect("the replay reaches the worker")
        .unwrap();
    assert_eq!(id_of(delivery.body()), ids[1], "the event id is kept");
    let info = delivery.info().clone();
    assert_eq!(info.replays, 1);
    assert_eq!(info.attempt, 1, "attempts restart");
    assert!(
        info.previous_failure
            .is_none_or(|failure| failure.attempts == 0)
    );
    assert!(info.source.contains(TYPE), "{}", info.source);
    delivery.ack().await.unwrap();

    // Only that worker: the other subscriber of the type gets nothing.
    if let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_secs(2), other.next()).await {
        panic!("the other worker received {:?}", delivery.info());
    }
    // The dead letter is gone, the others stay, in order.
    assert_eq!(
        dead_letter_ids(&broker).await,
        vec![ids[0].clone(), ids[2].clone()]
    );
    failing.shutdown().await;
    other.shutdown().await;
}

async fn the_selection_is_fixed_when_the_replay_starts(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let ids = populate(&fixture, 20).await;
    let broker = fixture.broker("test").await;

    // 20 at 10/s: about two seconds, during which 5 more dead letters arrive.
    let child = fixture
        .command(
            &["replay", WORKER, "--all", "--rate", "10/s", "--json"],
            &[],
        )
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let late: Vec<DeadLetter> = (0..5)
        .map(|n| {
            let message = message(100 + n);
            DeadLetter {
                id: message.id.clone(),
                position: String::new(),
                body: message.body,
                source: TYPE.to_owned(),
                worker: WORKER.to_owned(),
                error_kind: "handler".to_owned(),
                error: "late".to_owned(),
                attempts: 1,
                first_failed_at: None,
                last_failed_at: None,
                replica: None,
                replays: 0,
                headers: Default::default(),
            }
        })
        .collect();
    for outcome in broker
        .import_dead_letters(WORKER, &late, false)
        .await
        .unwrap()
    {
        assert_eq!(outcome, PublishOutcome::Confirmed);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = parse(&output);
    assert_eq!(report["selected"], 20);
    assert_eq!(report["replayed"], 20);

    let remaining: BTreeSet<String> = dead_letter_ids(&broker).await.into_iter().collect();
    let late_ids: BTreeSet<String> = late.iter().map(|letter| letter.id.clone()).collect();
    assert_eq!(remaining, late_ids, "only the late arrivals are left");
    let replayed: BTreeSet<String> = drain(&broker, WORKER, Duration::from_secs(2))
        .await
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(replayed, ids.into_iter().collect::<BTreeSet<_>>());
}

async fn a_replay_stops_early_when_replays_fail_again(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let broker = fixture.broker("test").await;
    let mut failing = broker.consume(&topology(WORKER)).await.unwrap();
    dead_letter(&broker, &mut failing, 40, |_| "still broken".to_owned()).await;
    wait_for_depth(&broker, 40).await;

    // The handler is still broken: every replay comes back dead-lettered.
    let keeps_failing = tokio::spawn(async move {
        while let Some(delivery) = failing.next().await {
            let _ = delivery.dead_letter("handler", "still broken").await;
        }
    });
    let output = fixture
        .run(&[
            "replay",
            WORKER,
            "--all",
            "--rate",
            "10",
            "--stop-after-failures",
            "3",
            "--json",
        ])
        .await;
    keeps_failing.abort();
    assert_eq!(
        output.status.code(),
        Some(1),
        "stopping early is not a success"
    );
    let report = parse(&output);
    assert_eq!(report["stopped_early"], true, "{report}");
    assert!(report["redead"].as_u64().unwrap() >= 3, "{report}");
    let replayed = report["replayed"].as_u64().unwrap();
    assert!((3..40).contains(&replayed), "{report}");
    // Nothing lost: the unreplayed ones are still there, plus the failures.
    assert!(broker.dead_letter_depth(WORKER).await.unwrap() >= 40 - replayed);
}

async fn purge_needs_yes_and_removes_only_the_selection(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let ids = populate(&fixture, 3).await;
    let broker = fixture.broker("test").await;

    // Not a terminal and no --yes: refused, nothing removed.
    let refused = fixture.run(&["purge", WORKER, "--all"]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(broker.dead_letter_depth(WORKER).await.unwrap(), 3);

    let one = fixture
        .json(&["purge", WORKER, "--id", &ids[1], "--yes", "--json"])
        .await;
    assert_eq!(one["purged"], 1);
    assert_eq!(
        dead_letter_ids(&broker).await,
        vec![ids[0].clone(), ids[2].clone()]
    );

    let all = fixture
        .json(&["purge", WORKER, "--all", "--yes", "--json"])
        .await;
    assert_eq!(all["purged"], 2);
    assert_eq!(broker.dead_letter_depth(WORKER).await.unwrap(), 0);
}

async fn export_purge_import_round_trip(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    populate(&fixture, 4).await;
    let broker = fixture.broker("test").await;
    let before = fixture.json(&["peek", WORKER, "--json"]).await;

    let file = std::env::temp_dir().join(format!("dlq-export-{}.jsonl", Uuid::now_v7()));
    let path = file.to_str().unwrap();
    let exported = fixture
        .json(&["export", WORKER, "--output", path, "--json"])
        .await;
    assert_eq!(exported["exported"], 4);
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 4);

    fixture
        .json(&["purge", WORKER, "--all", "--yes", "--json"])
        .await;
    assert_eq!(broker.dead_letter_depth(WORKER).await.unwrap(), 0);

    let imported = fixture.json(&["import", path, "--json"]).await;
    assert_eq!(imported["imported"], 4);
    let after = fixture.json(&["peek", WORKER, "--json"]).await;
    let strip = |document: &Value| -> Vec<Value> {
        document
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let mut row = row.clone();
                row.as_object_mut().unwrap().remove("position");
                row
            })
            .collect()
    };
    assert_eq!(
        strip(&after),
        strip(&before),
        "the dead letters are back as they were"
    );

    // Imported with --replay: straight to the worker, replays counted.
    fixture
        .json(&["purge", WORKER, "--all", "--yes", "--json"])
        .await;
    let replayed = fixture.json(&["import", path, "--replay", "--json"]).await;
    assert_eq!(replayed["imported"], 4);
    let received = drain(&broker, WORKER, Duration::from_secs(2)).await;
    assert_eq!(received.len(), 4);
    assert!(received.iter().all(|(_, replays, _)| *replays == 1));

    // A malformed file is bad usage, and imports nothing.
    std::fs::write(&file, "not json\n").unwrap();
    let bad = fixture.run(&["import", path]).await;
    assert_eq!(bad.status.code(), Some(2));
    let _ = std::fs::remove_file(&file);
}

async fn mutating_commands_are_audited(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let ids = populate(&fixture, 3).await;
    fixture
        .json(&[
            "replay",
            WORKER,
            "--id",
            &ids[0],
            "--reason",
            "bug 42 fixed",
            "--json",
        ])
        .await;
    fixture
        .json(&[
            "purge", WORKER, "--id", &ids[1], "--yes", "--reason", "junk", "--json",
        ])
        .await;
    let audit = fixture.json(&["audit", "--json"]).await;
    let records = audit.as_array().unwrap();
    assert_eq!(records.len(), 2, "{audit}");
    let purge = &records[0];
    let replay = &records[1];
    assert_eq!(replay["command"], "replay");
    assert_eq!(replay["reason"], "bug 42 fixed");
    assert_eq!(replay["os_user"], "dlq-test");
    assert!(replay["host"].is_string());
    assert_eq!(replay["event_ids"], serde_json::json!([ids[0]]));
    assert_eq!(replay["selection"]["worker"], WORKER);
    assert_eq!(replay["outcome"]["replayed"], 1);
    assert_eq!(purge["command"], "purge");
    assert_eq!(purge["event_ids"], serde_json::json!([ids[1]]));
    assert_eq!(purge["outcome"]["purged"], 1);

    // The replay shows in the history of that dead letter (it is gone, so
    // show the purged one's neighbour instead: its history is empty).
    let show = fixture.json(&["show", WORKER, &ids[2], "--json"]).await;
    assert_eq!(show["replay_history"], serde_json::json!([]));

    let table = fixture.run(&["audit"]).await;
    assert_eq!(table.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&table.stdout).contains("bug 42 fixed"));
}

async fn bad_input_exits_1_or_2_without_panicking(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let ids = populate(&fixture, 1).await;
    let broker = fixture.broker("test").await;

    let unknown = fixture.run(&["peek", "nobody-worker", "--json"]).await;
    assert_eq!(unknown.status.code(), Some(2));
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        message.contains("inventory-worker"),
        "lists the valid names: {message}"
    );
    assert!(unknown.stdout.is_empty());

    let malformed = fixture
        .run(&["replay", WORKER, "--id", "not an id", "--json"])
        .await;
    assert_eq!(malformed.status.code(), Some(2));
    let digest = fixture
        .run(&["replay", WORKER, "--id", "sha256:xyz", "--json"])
        .await;
    assert_eq!(digest.status.code(), Some(2));
    let no_selection = fixture.run(&["replay", WORKER]).await;
    assert_eq!(no_selection.status.code(), Some(2));
    let bad_rate = fixture
        .run(&["replay", WORKER, "--all", "--rate", "fast"])
        .await;
    assert_eq!(bad_rate.status.code(), Some(2));
    let bad_group = fixture
        .run(&["replay", WORKER, "--group", "nothex", "--json"])
        .await;
    assert_eq!(bad_group.status.code(), Some(2));
    let bad_namespace = fixture.run(&["--namespace", "Bad NS", "list"]).await;
    assert_eq!(bad_namespace.status.code(), Some(2));

    let not_found = fixture
        .run(&[
            "replay",
            WORKER,
            "--id",
            &Uuid::now_v7().to_string(),
            "--json",
        ])
        .await;
    assert_eq!(not_found.status.code(), Some(1));
    assert_eq!(parse(&not_found)["selected"], 0);

    let (url_key, dead_url) = match transport {
        "rabbitmq" => ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        _ => ("REDIS_URL", "redis://127.0.0.1:1"),
    };
    let unreachable = fixture
        .run_with(&["peek", WORKER, "--json"], &[(url_key, dead_url)])
        .await;
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach"));

    let no_database = fixture
        .run_with(
            &["replay", WORKER, "--all", "--json"],
            &[
                ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
                ("FLEET__DATABASE__ACQUIRE_TIMEOUT_MS", "1000"),
            ],
        )
        .await;
    assert_eq!(no_database.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_database.stderr).contains("database"));

    // None of that touched the dead letter.
    assert_eq!(dead_letter_ids(&broker).await, ids);
}

async fn killed_mid_replay_loses_nothing(transport: &'static str) {
    const COUNT: usize = 2000;
    let fixture = Fixture::new(transport).await;
    let ids = populate_many(&fixture, COUNT).await;
    let broker = fixture.broker("test").await;

    // Selecting 2000 takes a moment (longer on a loaded machine), then about
    // 4 s of replaying: a kill that came before the first replay proves
    // nothing about a kill mid-replay, so that case is tried again later.
    let delays = [2000, 3000, 4500, 6000].map(Duration::from_millis);
    let (in_dlq, delivered, seen) = 'attempt: {
        for (attempt, delay) in delays.iter().enumerate() {
            let mut child = fixture
                .command(&["replay", WORKER, "--all", "--rate", "500", "--json"], &[])
                .spawn()
                .unwrap();
            tokio::time::sleep(*delay).await;
            child.start_kill().unwrap(); // SIGKILL: no clean-up runs
            let status = child.wait().await.unwrap();
            assert!(!status.success(), "the replay was killed, not finished");

            // RabbitMQ returns the unacknowledged dead letters when it sees
            // the connection die; give it a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let in_dlq: Vec<String> = dead_letter_ids(&broker).await;
            let delivered = drain(&broker, WORKER, Duration::from_secs(3)).await;
            let mut seen: HashMap<String, u32> = HashMap::new();
            for id in in_dlq.iter().chain(delivered.iter().map(|(id, _, _)| id)) {
                *seen.entry(id.clone()).or_insert(0) += 1;
            }
            let lost: Vec<&String> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
            assert!(
                lost.is_empty(),
                "{} dead letters lost: {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            );
            let before_first_replay = delivered.is_empty() && in_dlq.len() == COUNT;
            if !before_first_replay || attempt + 1 == delays.len() {
                break 'attempt (in_dlq, delivered, seen);
            }
            eprintln!("{transport}: killed after {delay:?}, before the first replay; again");
        }
        unreachable!("the last attempt always breaks out");
    };
    assert!(
        !delivered.is_empty() && !in_dlq.is_empty(),
        "killed mid-replay: {} replayed, {} still dead letters",
        delivered.len(),
        in_dlq.len()
    );
    let duplicates = seen.values().filter(|count| **count > 1).count();
    eprintln!(
        "{transport}: killed mid-replay: {} replayed, {} still dead letters, {duplicates} both",
        delivered.len(),
        in_dlq.len()
    );
    assert!(delivered.iter().all(|(_, replays, _)| *replays == 1));
}

/// One dead letter at the end of 700: everything before it is fetched and
/// held back (RabbitMQ switches from its consumer to basic.get once the
/// held ones fill half its window); all of them stay, in order.
async fn a_sparse_selection_is_replayed_in_place(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    populate_many(&fixture, 700).await;
    let broker = fixture.broker("test").await;
    let before = dead_letter_ids(&broker).await;
    let last = before.last().unwrap().clone();

    let report = fixture
        .json(&["replay", WORKER, "--id", &last, "--json"])
        .await;
    assert_eq!(report["replayed"], 1, "{report}");
    assert_eq!(dead_letter_ids(&broker).await, before[..699]);
    let received = drain(&broker, WORKER, Duration::from_secs(2)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0, last);
}

/// A replay hands back every dead letter it fetched but did not take,
/// itself and before it exits, whichever letter it took: the first (its
/// consumer still holds a window of the others) or the last it fetched (so
/// acknowledged before the hand-back). The next command finds the rest in
/// place and in order, and nothing was left for the connection's close to
/// return (that would be logged as a warning).
async fn a_replay_hands_back_the_rest_before_it_exits(transport: &'static str) {
    // More than a replay's consumer window (1,000 on RabbitMQ).
    const COUNT: usize = 1200;
    let fixture = Fixture::new(transport).await;
    populate_many(&fixture, COUNT).await;
    let broker = fixture.broker("check").await;
    let mut expected = dead_letter_ids(&broker).await;
    assert_eq!(expected.len(), COUNT);
    for position in ["first", "last"] {
        let id = match position {
            "first" => expected.remove(0),
            _ => expected.pop().unwrap(),
        };
        let output = fixture
            .run(&["replay", WORKER, "--id", &id, "--json"])
            .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "the {position}: {stderr}");
        assert_eq!(parse(&output)["replayed"], 1, "the {position}");
        assert!(
            !stderr.contains("WARN"),
            "replaying the {position} left a warning: {stderr}"
        );
        assert_eq!(
            broker.dead_letter_depth(WORKER).await.unwrap(),
            expected.len() as u64,
            "counted right after replaying the {position}"
        );
        assert_eq!(
            dead_letter_ids(&broker).await,
            expected,
            "the rest, in order, after replaying the {position}"
        );
    }
}

/// Reads fetch dead letters without removing them; each must have them back
/// in the queue, counted, before it returns: the next command of a script
/// (a count, a browse, a replay) must find every one. RabbitMQ applies a
/// requeue asynchronously and answers a count ahead of it, so a read that
/// left the return to its connection's close made the next one come up short.
async fn reads_put_the_dead_letters_back_before_they_return(transport: &'static str) {
    const COUNT: u64 = 2000;
    let fixture = Fixture::new(transport).await;
    populate_many(&fixture, COUNT as usize).await;
    let broker = fixture.broker("check").await;
    let mut last = String::new();
    for round in 0..3 {
        let peeked = broker.peek_dead_letters(WORKER, 100_000).await.unwrap();
        assert_eq!(peeked.len() as u64, COUNT, "peek, round {round}");
        let depth = broker.dead_letter_depth(WORKER).await.unwrap();
        assert_eq!(depth, COUNT, "counted right after a peek, round {round}");
        let selection = broker
            .select_dead_letters(WORKER, None, &mut |_| true)
            .await
            .unwrap();
        assert_eq!(selection.len() as u64, COUNT, "browse, round {round}");
        let depth = broker.dead_letter_depth(WORKER).await.unwrap();
        assert_eq!(depth, COUNT, "counted right after a browse, round {round}");
        last = peeked.last().unwrap().id.clone();
    }
    // Replaying the last one holds back every other, then hands them back.
    let selection = broker
        .select_dead_letters(WORKER, None, &mut |letter| letter.id == last)
        .await
        .unwrap();
    assert_eq!(selection.len(), 1);
    let report = broker
        .replay_dead_letters(&selection, &ReplayOptions::default(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(report.replayed, 1, "{report:?}");
    let depth = broker.dead_letter_depth(WORKER).await.unwrap();
    assert_eq!(depth, COUNT - 1, "counted right after a replay");
}

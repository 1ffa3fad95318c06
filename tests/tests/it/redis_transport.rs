//! Redis-specific behaviour of the Redis Streams transport, beyond the shared
//! conformance suite (`broker.rs`), against the real Redis that the test
//! support finds (`REDIS_URL`). Each test uses its own
//! random namespace, so they run in parallel and leave nothing behind that
//! another run could see.

use std::time::Duration;

use deadpool_redis::redis::{self, aio::MultiplexedConnection};
use fleet_broker::{Broker, Consumer, Delivery, OutgoingMessage, PublishOutcome, WorkerTopology};
use fleet_config::{Environment, Settings};

const WAIT: Duration = Duration::from_secs(10);

async fn redis_url() -> String {
    fleet_tests::services().await.redis_url.clone()
}

fn namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

async fn settings(ns: &str) -> Settings {
    fleet_config::load(
        "test",
        &Environment::default()
            .with("FLEET__NAMESPACE", ns)
            .with("FLEET__TRANSPORT", "redis")
            .with("REDIS_URL", redis_url().await)
            .with("FLEET__REDIS__VISIBILITY_TIMEOUT_MS", "1000")
            .with("FLEET__REDIS__BLOCK_MS", "500"),
    )
    .unwrap()
}

async fn raw(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn topology(worker: &str, delivery_limit: u32) -> WorkerTopology {
    WorkerTopology {
        worker: worker.to_owned(),
        event_types: vec!["order.placed".to_owned()],
        retry_delays: vec![Duration::from_millis(50), Duration::from_millis(300)],
        delivery_limit,
        expires_after: None,
    }
}

fn event(id: &str) -> OutgoingMessage {
    OutgoingMessage {
        id: id.to_owned(),
        event_type: "order.placed".to_owned(),
        body: format!(r#"{{"id":"{id}","type":"order.placed"}}"#).into_bytes(),
        timestamp: 0,
    }
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("consumer still open")
}

async fn nothing_within(consumer: &mut Consumer, period: Duration) {
    if let Ok(Some(delivery)) = tokio::time::timeout(period, consumer.next()).await {
        panic!("unexpected delivery {:?}", delivery.info());
    }
}

async fn pending(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> u64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap();
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(count)) => u64::try_from(*count).unwrap(),
            other => panic!("unexpected XPENDING reply {other:?}"),
        },
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

async fn cleanup(conn: &mut MultiplexedConnection, ns: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ns}:*"))
        .query_async(conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(conn).await.unwrap();
    }
}

#[tokio::test]
async fn connect_fails_fast_when_redis_does_not_answer() {
    let settings = fleet_config::load(
        "test",
        &Environment::default()
            .with("FLEET__TRANSPORT", "redis")
            .with("REDIS_URL", "redis://127.0.0.1:1"),
    )
    .unwrap();
    let error = Broker::connect(&settings, "r-1").await.unwrap_err();
    assert!(
        matches!(error, fleet_broker::BrokerError::Unavailable { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn publish_consume_ack_round_trip() {
    let ns = namespace();
    let settings = settings(&ns).await;
    let broker = Broker::connect(&settings, "r-1").await.unwrap();
    let mut conn = raw(&redis_url().await).await;
    let topology = topology("worker-a", 5);
    let mut consumer = broker.consume(&topology).await.unwrap();

    let outcomes = broker
        .publish_batch(&[event("e-1"), event("e-2")])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [PublishOutcome::Confirmed, PublishOutcome::Confirmed]
    );

    let stream = format!("{ns}:events:order.placed");
    for expected in ["e-1", "e-2"] {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.body(), event(expected).body.as_slice());
        let info = delivery.info();
        assert_eq!(info.transport, fleet_broker::Transport::Redis);
        assert_eq!(info.worker, "worker-a");
        assert_eq!(info.source, stream);
        assert_eq!(info.attempt, 1);
        assert_eq!(info.replays, 0);
        assert_eq!(info.replica, "r-1");
        assert!(info.previous_failure.is_none());
        assert!(info.position.starts_with(&format!("{stream}/")));
        delivery.ack().await.unwrap();
    }
    assert_eq!(pending(&mut conn, &stream, "worker-a").await, 0);

    // The entry has exactly one field, `event`, as the contract says.
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(entries.ids.len(), 2);
    assert_eq!(
        entries.ids[0].map.keys().collect::<Vec<_>>(),
        [&"event".to_owned()]
    );

    consumer.shutdown().await;
    cleanup(&mut conn, &ns).await;
}

#[tokio::test]
async fn retry_returns_only_to_the_failing_worker() {
    let ns = namespace();
    let settings = settings(&ns).await;
    let broker = Broker::connect(&settings, "r-1").await.unwrap();
    let mut conn = raw(&redis_url().await).await;
    let mut failing = broker.consume(&topology("worker-a", 5)).await.unwrap();
    let mut other = broker.consume(&topology("worker-b", 5)).await.unwrap();

    // A body that is not UTF-8 must come back byte for byte too.
    let mut binary = event("e-bin");
    binary.body = vec![0xff, 0x00, b'{', 0x80, b'"'];
    broker
        .publish_batch(&[event("e-1"), binary.clone()])
        .await
        .unwrap();

    for _ in 0..2 {
        next(&mut other).await.ack().await.unwrap();
    }
    for _ in 0..2 {
        let delivery = next(&mut failing).await;
        delivery
            .retry(Duration::from_millis(10), "database down")
            .await
            .unwrap();
    }

    let retry_stream = format!("{ns}:retry:worker-a");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let delivery = next(&mut failing).await;
        let info = delivery.info().clone();
        assert_eq!(info.attempt, 2);
        assert_eq!(info.source, format!("{ns}:events:order.placed"));
        assert!(info.position.starts_with(&format!("{retry_stream}/")));
        let previous = info.previous_failure.clone().unwrap();
        assert_eq!(previous.attempts, 1);
        assert_eq!(previous.last_error, "database down");
        seen.push(delivery.body().to_vec());
        // A second failure keeps the first failure time and counts on.
        delivery
            .retry(Duration::from_millis(10), "still down")
            .await
            .unwrap();
    }
    seen.sort();
    let mut expected = vec![event("e-1").body, binary.body.clone()];
    expected.sort();
    assert_eq!(seen, expected);

    for _ in 0..2 {
        let delivery = next(&mut failing).await;
        let info = delivery.info();
        assert_eq!(info.attempt, 3);
        let previous = info.previous_failure.clone().unwrap();
        assert_eq!(previous.attempts, 2);
        assert_eq!(previous.last_error, "still down");
        assert!(previous.first_failed_at < previous.last_failed_at);
        delivery.ack().await.unwrap();
    }

    // worker-b never sees the retries, and has no retry plumbing in use.
    nothing_within(&mut other, Duration::from_millis(800)).await;
    let other_retries: u64 = redis::cmd("XLEN")
        .arg(format!("{ns}:retry:worker-b"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(other_retries, 0);
    let scheduled: u64 = redis::cmd("ZCARD")
        .arg(format!("{ns}:retry:worker-a:scheduled"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(scheduled, 0);
    assert_eq!(pending(&mut conn, &retry_stream, "worker-a").await, 0);

    failing.shutdown().await;
    other.shutdown().await;
    cleanup(&mut conn, &ns).await;
}

#[tokio::test]
async fn dead_letter_keeps_metadata_and_removes_the_original() {
    let ns = namespace();
    let settings = settings(&ns).await;
    let broker = Broker::connect(&settings, "r-1").await.unwrap();
    let mut conn = raw(&redis_url().await).await;
    let mut consumer = broker.consume(&topology("worker-a", 5)).await.unwrap();

    broker.publish_batch(&[event("e-1")]).await.unwrap();
    next(&mut consumer)
        .await
        .retry(Duration::ZERO, "first failure")
        .await
        .unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.info().attempt, 2);
    delivery.dead_letter("handler", "boom").await.unwrap();

    assert_eq!(broker.dead_letter_depth("worker-a").await.unwrap(), 1);
    assert_eq!(broker.dead_letter_depth("worker-b").await.unwrap(), 0);
    let letters = broker.peek_dead_letters("worker-a", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.id, "e-1");
    assert_eq!(letter.body, event("e-1").body);
    assert_eq!(letter.source, format!("{ns}:events:order.placed"));
    assert_eq!(letter.worker, "worker-a");
    assert_eq!(letter.error_kind, "handler");
    assert_eq!(letter.error, "boom");
    assert_eq!(letter.attempts, 2);
    assert_eq!(letter.replica.as_deref(), Some("r-1"));
    assert!(letter.first_failed_at.unwrap() < letter.last_failed_at.unwrap());
    assert_eq!(
        letter.headers.get("error").map(String::as_str),
        Some("boom")
    );
    assert!(!letter.headers.contains_key("event"));
    // Peeking removed nothing.
    assert_eq!(
        broker.peek_dead_letters("worker-a", 10).await.unwrap(),
        letters
    );

    assert_eq!(
        pending(&mut conn, &format!("{ns}:retry:worker-a"), "worker-a").await,
        0
    );
    assert_eq!(
        pending(&mut conn, &format!("{ns}:events:order.placed"), "worker-a").await,
        0
    );

    // A replayed entry (as dlq-tool writes it) carries its replay count.
    let _: String = redis::cmd("XADD")
        .arg(format!("{ns}:events:order.placed"))
        .arg("*")
        .arg("event")
        .arg(&letter.body)
        .arg("replays")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let replayed = next(&mut consumer).await;
    assert_eq!(replayed.info().replays, 1);
    assert_eq!(replayed.info().attempt, 1);
    replayed.ack().await.unwrap();

    consumer.shutdown().await;
    cleanup(&mut conn, &ns).await;
}

#[tokio::test]
async fn unsettled_entries_are_reclaimed_after_the_visibility_timeout() {
    let ns = namespace();
    let settings = settings(&ns).await;
    let crashing = Broker::connect(&settings, "r-crash").await.unwrap();
    let live = Broker::connect(&settings, "r-live").await.unwrap();
    let mut conn = raw(&redis_url().await).await;
    let topology = topology("worker-a", 5);

    let mut first = crashing.consume(&topology).await.unwrap();
    crashing.publish_batch(&[event("e-1")]).await.unwrap();
    let lost = next(&mut first).await;
    assert_eq!(lost.info().replica, "r-crash");
    // The replica dies with the delivery unsettled.
    drop(lost);
    first.shutdown().await;

    let mut second = live.consume(&topology).await.unwrap();
    let reclaimed = next(&mut second).await;
    assert_eq!(reclaimed.body(), event("e-1").body.as_slice());
    assert_eq!(reclaimed.info().replica, "r-live");
    assert_eq!(reclaimed.info().attempt, 2);
    reclaimed.ack().await.unwrap();
    assert_eq!(
        pending(&mut conn, &format!("{ns}:events:order.placed"), "worker-a").await,
        0
    );

    second.shutdown().await;
    cleanup(&mut conn, &ns).await;
}

#[tokio::test]
async fn entries_past_the_delivery_limit_are_dead_lettered() {
    let ns = namespace();
    let settings = settings(&ns).await;
    let broker = Broker::connect(&settings, "r-1").await.unwrap();
    let mut conn = raw(&redis_url().await).await;
    let mut consumer = broker.consume(&topology("worker-a", 2)).await.unwrap();

    broker.publish_batch(&[event("e-poison")]).await.unwrap();
    // Delivered, never settled (the handler "crashes"), reclaimed, again.
    for attempt in 1..=2 {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.info().attempt, attempt);
        drop(delivery);
    }
    // The third delivery exceeds the limit of 2: dead-lettered instead.
    nothing_within(&mut consumer, Duration::from_secs(3)).await;
    let letters = broker.peek_dead_letters("worker-a", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id, "e-poison");
    assert_eq!(letters[0].error_kind, "delivery_limit");
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(letters[0].replica.as_deref(), Some("r-1"));
    assert_eq!(
        pending(&mut conn, &format!("{ns}:events:order.placed"), "worker-a").await,
        0
    );

    consumer.shutdown().await;
    cleanup(&mut conn, &ns).await;
}

#[tokio::test]
async fn readers_survive_a_killed_connection() {
    let ns = namespace();
    let settings = settings(&ns).await;
    let broker = Broker::connect(&settings, "r-1").await.unwrap();
    let mut conn = raw(&redis_url().await).await;
    let mut consumer = broker.consume(&topology("worker-a", 5)).await.unwrap();

    // Wait until the readers (event stream and retry stream) are connected.
    let name = format!("{ns}:r-1:reader");
    let mut ids = Vec::new();
    for _ in 0..50 {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        ids = list
            .lines()
            .filter(|line| line.split(' ').any(|part| part == format!("name={name}")))
            .filter_map(|line| line.split(' ').find_map(|part| part.strip_prefix("id=")))
            .map(str::to_owned)
            .collect();
        if ids.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ids.len(), 2, "two reader connections named {name}");
    for id in &ids {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    broker
        .publish_batch(&[event("e-after-kill")])
        .await
        .unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.body(), event("e-after-kill").body.as_slice());
    delivery.ack().await.unwrap();

    consumer.shutdown().await;
    cleanup(&mut conn, &ns).await;
}

#[tokio::test]
async fn a_vanished_group_is_declared_again() {
    let ns = namespace();
    let settings = settings(&ns).await;
    let broker = Broker::connect(&settings, "r-1").await.unwrap();
    let mut conn = raw(&redis_url().await).await;
    let mut consumer = broker.consume(&topology("worker-a", 5)).await.unwrap();

    // As after a Redis restart without persistence.
    let stream = format!("{ns}:events:order.placed");
    let _: u64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Readers hit NOGROUP on their next read and declare the group again;
    // give them one block period to do so before publishing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.publish_batch(&[event("e-1")]).await.unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.body(), event("e-1").body.as_slice());
    delivery.ack().await.unwrap();

    consumer.shutdown().await;
    cleanup(&mut conn, &ns).await;
}

#[tokio::test]
async fn stop_drains_what_was_fetched_then_ends() {
    let ns = namespace();
    let settings = settings(&ns).await;
    let broker = Broker::connect(&settings, "r-1").await.unwrap();
    let mut conn = raw(&redis_url().await).await;
    let mut consumer = broker.consume(&topology("worker-a", 5)).await.unwrap();

    broker
        .publish_batch(&[event("e-1"), event("e-2"), event("e-3")])
        .await
        .unwrap();
    next(&mut consumer).await.ack().await.unwrap();
    consumer.stop();
    // Whatever the readers fetched still comes out, then the stream ends
    // once the in-flight reads (at most one block period) have returned.
    let drained = tokio::time::timeout(Duration::from_secs(3), async {
        let mut drained = 0;
        while let Some(delivery) = consumer.next().await {
            delivery.ack().await.unwrap();
            drained += 1;
        }
        drained
    })
    .await
    .expect("the consumer ends after stop");
    assert!(drained <= 2);
    // Nothing fetched was stranded as pending.
    assert_eq!(
        pending(&mut conn, &format!("{ns}:events:order.placed"), "worker-a").await,
        0
    );

    consumer.shutdown().await;
    cleanup(&mut conn, &ns).await;
}

#[tokio::test]
async fn a_retry_left_by_a_stopped_replica_is_moved_by_another() {
    // Each replica's mover sleeps until the earliest retry it knows of is
    // due, and only its own replica wakes it early. A retry scheduled by a
    // replica that then stops must still reach a replica whose mover went to
    // sleep on an empty schedule before the retry existed.
    let ns = namespace();
    let settings = settings(&ns).await;
    let mut conn = raw(&redis_url().await).await;
    let slow_retry = WorkerTopology {
        retry_delays: vec![Duration::from_millis(1500)],
        ..topology("worker-a", 5)
    };
    let first = Broker::connect(&settings, "r-1").await.unwrap();
    let mut stopping = first.consume(&slow_retry).await.unwrap();
    first.publish_batch(&[event("e-1")]).await.unwrap();
    let delivery = next(&mut stopping).await;

    let second = Broker::connect(&settings, "r-2").await.unwrap();
    let mut survivor = second.consume(&slow_retry).await.unwrap();
    // Let the survivor's mover find the schedule empty and go to sleep.
    tokio::time::sleep(Duration::from_millis(200)).await;

    delivery
        .retry(Duration::from_millis(1500), "database down")
        .await
        .unwrap();
    stopping.shutdown().await;
    let scheduled: u64 = redis::cmd("ZCARD")
        .arg(format!("{ns}:retry:worker-a:scheduled"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(scheduled, 1, "the stopped replica moved its retry early");

    let again = next(&mut survivor).await;
    assert_eq!(again.body(), event("e-1").body.as_slice());
    let info = again.info().clone();
    assert_eq!(info.attempt, 2);
    assert_eq!(info.previous_failure.unwrap().last_error, "database down");
    again.ack().await.unwrap();

    survivor.shutdown().await;
    cleanup(&mut conn, &ns).await;
}

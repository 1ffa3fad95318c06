//! One conformance suite for both transports (as Watermill does): every test
//! below runs once against RabbitMQ and once against Redis Streams, on the
//! real servers, in its own namespace.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use fleet_broker::{Broker, Consumer, Delivery, OutgoingMessage, PublishOutcome, WorkerTopology};
use fleet_tests::TestContext;
use uuid::Uuid;

use crate::faults;

const WAIT: Duration = Duration::from_secs(20);

on_both_transports!(
    round_trip,
    fan_out_reaches_every_bound_worker,
    competing_consumers_share_one_workers_messages,
    a_retry_after_its_delay_reaches_only_the_failing_worker,
    max_attempts_then_a_dead_letter_with_all_metadata,
    poison_is_dead_lettered_at_once,
    peeking_dead_letters_neither_removes_nor_reorders,
    a_dropped_consumers_unacked_deliveries_go_to_a_peer,
    acknowledging_together_removes_exactly_those_deliveries,
    concurrent_batches_acknowledged_together_leave_only_the_unsettled,
    a_server_side_disconnect_loses_nothing,
    a_publish_to_an_unreachable_broker_fails_fast,
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

    fn settings(&self) -> fleet_config::Settings {
        self.ctx.settings(
            "broker-test",
            &[
                ("FLEET__TRANSPORT", self.transport),
                // Short, so reclaiming a dead consumer's entries is quick.
                ("FLEET__REDIS__VISIBILITY_TIMEOUT_MS", "1000"),
                ("FLEET__REDIS__BLOCK_MS", "200"),
                ("FLEET__WORKER__PREFETCH", "10"),
                ("FLEET__WORKER__CONCURRENCY", "1"),
                ("FLEET__AMQP__CONFIRM_TIMEOUT_MS", "5000"),
            ],
        )
    }

    async fn broker(&self, replica: &str) -> Broker {
        let broker = Broker::connect(&self.settings(), replica)
            .await
            .unwrap_or_else(|error| panic!("connecting to {}: {error}", self.transport));
        broker.declare_events().await.unwrap();
        broker
    }

    async fn consumer(&self, replica: &str, topology: &WorkerTopology) -> (Broker, Consumer) {
        let broker = self.broker(replica).await;
        let consumer = broker.consume(topology).await.unwrap();
        (broker, consumer)
    }
}

fn topology(worker: &str, event_types: &[&str]) -> WorkerTopology {
    WorkerTopology {
        worker: worker.to_owned(),
        event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
        retry_delays: vec![Duration::from_millis(200), Duration::from_millis(400)],
        delivery_limit: 5,
        expires_after: None,
    }
}

fn message(event_type: &str, n: usize) -> OutgoingMessage {
    let id = Uuid::now_v7().to_string();
    OutgoingMessage {
        body: format!(r#"{{"id":"{id}","type":"{event_type}","n":{n}}}"#).into_bytes(),
        id,
        event_type: event_type.to_owned(),
        timestamp: 1_700_000_000,
    }
}

async fn publish(broker: &Broker, messages: &[OutgoingMessage]) {
    let outcomes = broker.publish_batch(messages).await.unwrap();
    assert_eq!(outcomes.len(), messages.len());
    for outcome in outcomes {
        assert_eq!(outcome, PublishOutcome::Confirmed);
    }
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("no delivery within the wait")
        .expect("the consumer ended")
}

async fn assert_quiet(consumer: &mut Consumer, period: Duration) {
    if let Ok(Some(delivery)) = tokio::time::timeout(period, consumer.next()).await {
        panic!("unexpected delivery {:?}", delivery.info());
    }
}

fn id_of(delivery: &Delivery) -> String {
    let value: serde_json::Value = serde_json::from_slice(delivery.body()).unwrap();
    value["id"].as_str().unwrap().to_owned()
}

async fn wait_for_dead_letters(broker: &Broker, worker: &str, count: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let depth = broker.dead_letter_depth(worker).await.unwrap();
        if depth >= count {
            assert_eq!(depth, count, "more dead letters than expected");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters: {depth} of {count}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------- tests

async fn round_trip(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let worker = topology("alpha-worker", &["order.placed"]);
    let (broker, mut consumer) = fixture.consumer("r1", &worker).await;

    let sent: Vec<_> = (0..5).map(|n| message("order.placed", n)).collect();
    publish(&broker, &sent).await;

    for expected in &sent {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.body(), expected.body.as_slice());
        let info = delivery.info();
        assert_eq!(info.attempt, 1);
        assert_eq!(info.worker, "alpha-worker");
        assert!(info.source.contains("order.placed"), "{}", info.source);
        assert!(info.previous_failure.is_none());
        delivery.ack().await.unwrap();
    }
    assert_quiet(&mut consumer, Duration::from_millis(500)).await;
    consumer.shutdown().await;

    // Acknowledged means gone: a new consumer of the worker gets nothing.
    let (_broker, mut again) = fixture.consumer("r2", &worker).await;
    assert_quiet(&mut again, Duration::from_secs(2)).await;
    again.shutdown().await;
}

async fn fan_out_reaches_every_bound_worker(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let (broker, mut alpha) = fixture
        .consumer("a1", &topology("alpha-worker", &["order.placed"]))
        .await;
    let (_b, mut beta) = fixture
        .consumer(
            "b1",
            &topology("beta-worker", &["order.placed", "stock.released"]),
        )
        .await;
    let (_g, mut gamma) = fixture
        .consumer("g1", &topology("gamma-worker", &["payment.captured"]))
        .await;

    let placed = message("order.placed", 1);
    publish(&broker, std::slice::from_ref(&placed)).await;

    for consumer in [&mut alpha, &mut beta] {
        let delivery = next(consumer).await;
        assert_eq!(delivery.body(), placed.body.as_slice());
        delivery.ack().await.unwrap();
    }
    assert_quiet(&mut gamma, Duration::from_millis(500)).await;
    for consumer in [alpha, beta, gamma] {
        consumer.shutdown().await;
    }
}

async fn competing_consumers_share_one_workers_messages(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let worker = topology("alpha-worker", &["order.placed"]);
    let (broker, first) = fixture.consumer("c1", &worker).await;
    let (_b, second) = fixture.consumer("c2", &worker).await;

    let sent: Vec<_> = (0..200).map(|n| message("order.placed", n)).collect();
    publish(&broker, &sent).await;

    // Both replicas take deliveries concurrently, slowly enough that neither
    // can drain the queue alone.
    let drain = |mut consumer: Consumer| async move {
        let mut ids = Vec::new();
        while let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(3), consumer.next()).await
        {
            ids.push(id_of(&delivery));
            tokio::time::sleep(Duration::from_millis(2)).await;
            delivery.ack().await.unwrap();
        }
        consumer.shutdown().await;
        ids
    };
    let (first_ids, second_ids) = tokio::join!(drain(first), drain(second));

    let all: Vec<_> = first_ids.iter().chain(&second_ids).cloned().collect();
    let distinct: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 200, "every message exactly once across replicas");
    assert_eq!(distinct.len(), 200);
    assert!(
        !first_ids.is_empty() && !second_ids.is_empty(),
        "{} / {}",
        first_ids.len(),
        second_ids.len()
    );
}

async fn a_retry_after_its_delay_reaches_only_the_failing_worker(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let (broker, mut failing) = fixture
        .consumer("f1", &topology("alpha-worker", &["order.placed"]))
        .await;
    let (_b, mut healthy) = fixture
        .consumer("h1", &topology("beta-worker", &["order.placed"]))
        .await;

    let sent = message("order.placed", 7);
    publish(&broker, std::slice::from_ref(&sent)).await;

    next(&mut healthy).await.ack().await.unwrap();
    let first = next(&mut failing).await;
    let failed_at = std::time::Instant::now();
    first
        .retry(Duration::from_millis(200), "database unavailable")
        .await
        .unwrap();

    let again = next(&mut failing).await;
    let waited = failed_at.elapsed();
    assert!(
        waited >= Duration::from_millis(150),
        "retried after {waited:?}"
    );
    assert_eq!(again.body(), sent.body.as_slice());
    let info = again.info().clone();
    assert_eq!(info.attempt, 2);
    assert!(info.source.contains("order.placed"), "{}", info.source);
    let failure = info.previous_failure.expect("failure history");
    assert_eq!(failure.attempts, 1);
    assert_eq!(failure.last_error, "database unavailable");
    again.ack().await.unwrap();

    assert_quiet(&mut healthy, Duration::from_secs(1)).await;
    assert_quiet(&mut failing, Duration::from_millis(500)).await;
    failing.shutdown().await;
    healthy.shutdown().await;
}

async fn max_attempts_then_a_dead_letter_with_all_metadata(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let (broker, mut consumer) = fixture
        .consumer("m1", &topology("alpha-worker", &["stock.reserved"]))
        .await;
    let sent = message("stock.reserved", 1);
    publish(&broker, std::slice::from_ref(&sent)).await;

    let max_attempts = 3;
    let started = chrono::Utc::now();
    loop {
        let delivery = next(&mut consumer).await;
        let attempt = delivery.info().attempt;
        if attempt < max_attempts {
            delivery
                .retry(
                    Duration::from_millis(100),
                    &format!("timeout on attempt {attempt}"),
                )
                .await
                .unwrap();
        } else {
            assert_eq!(attempt, max_attempts);
            delivery
                .dead_letter("transient", "timeout on attempt 3")
                .await
                .unwrap();
            break;
        }
    }
    wait_for_dead_letters(&broker, "alpha-worker", 1).await;
    assert_quiet(&mut consumer, Duration::from_millis(700)).await;

    let letters = broker.peek_dead_letters("alpha-worker", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.id, sent.id);
    assert_eq!(letter.body, sent.body);
    assert!(
        letter.source.contains("stock.reserved"),
        "{}",
        letter.source
    );
    assert_eq!(letter.worker, "alpha-worker");
    assert_eq!(letter.error_kind, "transient");
    assert_eq!(letter.error, "timeout on attempt 3");
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.replica.as_deref(), Some("m1"));
    let first = letter.first_failed_at.expect("first failure time");
    let last = letter.last_failed_at.expect("last failure time");
    assert!(first >= started - chrono::Duration::seconds(1));
    assert!(last > first, "{first} .. {last}");
    consumer.shutdown().await;
}

async fn poison_is_dead_lettered_at_once(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let (broker, mut consumer) = fixture
        .consumer("p1", &topology("alpha-worker", &["order.placed"]))
        .await;
    let mut poison = message("order.placed", 0);
    poison.body = b"{not json".to_vec();
    let healthy = message("order.placed", 1);
    publish(&broker, &[poison.clone(), healthy.clone()]).await;

    let first = next(&mut consumer).await;
    assert_eq!(first.body(), poison.body.as_slice());
    first
        .dead_letter("not_json", "expected a JSON object")
        .await
        .unwrap();
    // The message behind the poison is not blocked.
    let second = next(&mut consumer).await;
    assert_eq!(second.body(), healthy.body.as_slice());
    second.ack().await.unwrap();

    wait_for_dead_letters(&broker, "alpha-worker", 1).await;
    let letter = broker
        .peek_dead_letters("alpha-worker", 10)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.error_kind, "not_json");
    assert_eq!(letter.body, poison.body);
    // Not parseable, so identified by message id (RabbitMQ) or digest (Redis).
    assert!(
        letter.id == poison.id || letter.id.starts_with("sha256:"),
        "{}",
        letter.id
    );
    assert_quiet(&mut consumer, Duration::from_millis(500)).await;
    consumer.shutdown().await;
}

async fn peeking_dead_letters_neither_removes_nor_reorders(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let (broker, mut consumer) = fixture
        .consumer("k1", &topology("alpha-worker", &["order.placed"]))
        .await;
    let sent: Vec<_> = (0..6).map(|n| message("order.placed", n)).collect();
    publish(&broker, &sent).await;
    for _ in 0..sent.len() {
        next(&mut consumer)
            .await
            .dead_letter("handler", "boom")
            .await
            .unwrap();
    }
    wait_for_dead_letters(&broker, "alpha-worker", 6).await;

    let first: Vec<_> = broker.peek_dead_letters("alpha-worker", 100).await.unwrap();
    let second: Vec<_> = broker.peek_dead_letters("alpha-worker", 100).await.unwrap();
    let ids = |letters: &[fleet_broker::DeadLetter]| {
        letters.iter().map(|l| l.id.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&first),
        sent.iter().map(|m| m.id.clone()).collect::<Vec<_>>()
    );
    assert_eq!(ids(&first), ids(&second));
    assert_eq!(broker.dead_letter_depth("alpha-worker").await.unwrap(), 6);
    // A limit takes the oldest.
    let two = broker.peek_dead_letters("alpha-worker", 2).await.unwrap();
    assert_eq!(ids(&two), ids(&first[..2]));
    consumer.shutdown().await;
}

async fn a_dropped_consumers_unacked_deliveries_go_to_a_peer(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let worker = topology("alpha-worker", &["order.placed"]);
    let (broker, mut doomed) = fixture.consumer("d1", &worker).await;
    let sent: Vec<_> = (0..5).map(|n| message("order.placed", n)).collect();
    publish(&broker, &sent).await;

    // The doomed replica takes deliveries and dies without settling them.
    let mut taken = Vec::new();
    for _ in 0..sent.len() {
        taken.push(next(&mut doomed).await);
    }
    drop(taken);
    doomed.shutdown().await;

    let (_b, mut peer) = fixture.consumer("d2", &worker).await;
    let mut ids = BTreeSet::new();
    while ids.len() < sent.len() {
        let delivery = next(&mut peer).await;
        assert!(delivery.info().attempt >= 1);
        ids.insert(id_of(&delivery));
        delivery.ack().await.unwrap();
    }
    assert_eq!(ids, sent.iter().map(|m| m.id.clone()).collect());
    peer.shutdown().await;
}

/// `Delivery::ack_all` settles a batch in as few commands as it can (on
/// RabbitMQ one `multiple` ack); it must never settle a delivery outside
/// the batch, even one with a lower tag that is still being handled.
async fn acknowledging_together_removes_exactly_those_deliveries(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let worker = topology("alpha-worker", &["order.placed"]);
    let (broker, mut consumer) = fixture.consumer("t1", &worker).await;
    let sent: Vec<_> = (0..10).map(|n| message("order.placed", n)).collect();
    publish(&broker, &sent).await;
    let mut taken: Vec<Option<Delivery>> = Vec::new();
    for _ in 0..sent.len() {
        taken.push(Some(next(&mut consumer).await));
    }
    let ids: Vec<String> = taken.iter().flatten().map(id_of).collect();
    let mut together = |positions: &[usize]| -> Vec<Delivery> {
        positions
            .iter()
            .map(|&n| taken[n].take().unwrap())
            .collect()
    };
    // The oldest two: one frame may cover them.
    Delivery::ack_all(together(&[0, 1])).await.unwrap();
    // Behind the unsettled third, and around the sixth: they may not.
    Delivery::ack_all(together(&[3, 4])).await.unwrap();
    Delivery::ack_all(together(&[6, 7, 8])).await.unwrap();
    let unsettled: BTreeSet<String> = [2, 5, 9].iter().map(|&n| ids[n].clone()).collect();
    // The replica dies holding 2, 5 and 9.
    drop(taken);
    consumer.shutdown().await;

    expect_exactly_again(&fixture, &worker, "t2", &unsettled).await;
}

/// Batches handled concurrently and acknowledged together, in whatever
/// order they finish, while some deliveries stay unsettled: every
/// acknowledged one is gone, every unsettled one comes again, and the
/// channel never breaks (a double acknowledgement would close it).
async fn concurrent_batches_acknowledged_together_leave_only_the_unsettled(
    transport: &'static str,
) {
    let fixture = Fixture::new(transport).await;
    let settings = fixture.ctx.settings(
        "broker-test",
        &[
            ("FLEET__TRANSPORT", transport),
            // Long: this replica must not reclaim what it keeps unsettled
            // (the peer below, with the fixture's 1 s, does).
            ("FLEET__REDIS__VISIBILITY_TIMEOUT_MS", "60000"),
            ("FLEET__REDIS__BLOCK_MS", "200"),
            ("FLEET__WORKER__PREFETCH", "40"),
        ],
    );
    let worker = topology("alpha-worker", &["order.placed"]);
    let broker = Broker::connect(&settings, "c1").await.unwrap();
    broker.declare_events().await.unwrap();
    let mut consumer = broker.consume(&worker).await.unwrap();
    let sent: Vec<_> = (0..600).map(|n| message("order.placed", n)).collect();
    publish(&broker, &sent).await;

    let mut batches = tokio::task::JoinSet::new();
    let mut kept = Vec::new();
    let mut seen = 0;
    while seen < sent.len() {
        let mut batch = vec![next(&mut consumer).await];
        while batch.len() < 8 {
            match consumer.try_next() {
                Some(delivery) => batch.push(delivery),
                None => break,
            }
        }
        // Every 60th delivery stays unsettled to the end.
        let mut ack = Vec::with_capacity(batch.len());
        for delivery in batch {
            if seen % 60 == 7 {
                kept.push(delivery);
            } else {
                ack.push(delivery);
            }
            seen += 1;
        }
        batches.spawn(async move {
            // Finish in any order.
            let pause = Duration::from_micros(u64::from(rand::random::<u16>() % 3000));
            tokio::time::sleep(pause).await;
            let ids: Vec<String> = ack.iter().map(id_of).collect();
            Delivery::ack_all(ack).await.unwrap();
            ids
        });
    }
    let mut acknowledged = BTreeSet::new();
    while let Some(ids) = batches.join_next().await {
        acknowledged.extend(ids.unwrap());
    }
    let unsettled: BTreeSet<String> = kept.iter().map(id_of).collect();
    assert_eq!(
        unsettled.len(),
        10,
        "every 60th delivery was kept unsettled"
    );
    assert_eq!(acknowledged.len() + unsettled.len(), sent.len());
    drop(kept);
    consumer.shutdown().await;

    expect_exactly_again(&fixture, &worker, "c2", &unsettled).await;
}

/// A peer replica receives exactly `unsettled` (a dead replica's
/// deliveries), and nothing more.
async fn expect_exactly_again(
    fixture: &Fixture,
    worker: &WorkerTopology,
    peer_name: &str,
    unsettled: &BTreeSet<String>,
) {
    let (_b, mut peer) = fixture.consumer(peer_name, worker).await;
    let mut again = BTreeSet::new();
    while again.len() < unsettled.len() {
        let delivery = next(&mut peer).await;
        again.insert(id_of(&delivery));
        delivery.ack().await.unwrap();
    }
    assert_eq!(
        &again, unsettled,
        "exactly the unsettled deliveries come again"
    );
    assert_quiet(&mut peer, Duration::from_millis(1500)).await;
    peer.shutdown().await;
}

async fn a_server_side_disconnect_loses_nothing(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let worker = topology("alpha-worker", &["order.placed"]);
    let (broker, mut consumer) = fixture.consumer("x1", &worker).await;
    let sent: Vec<_> = (0..300).map(|n| message("order.placed", n)).collect();
    publish(&broker, &sent[..150]).await;

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut killed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < sent.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} arrived",
            seen.len(),
            sent.len()
        );
        if !killed && seen.len() >= 50 {
            faults::close_server_side(transport, fixture.ctx.namespace.as_str(), "x1").await;
            killed = true;
            // Published while the consumer reconnects: must not be lost either.
            publish(&broker, &sent[150..]).await;
        }
        let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        else {
            continue;
        };
        *seen.entry(id_of(&delivery)).or_default() += 1;
        // Acks on the killed connection fail; those are delivered again.
        let _ = delivery.ack().await;
    }
    assert!(killed);
    let expected: BTreeSet<_> = sent.iter().map(|m| m.id.clone()).collect();
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), expected);
    consumer.shutdown().await;
}

async fn a_publish_to_an_unreachable_broker_fails_fast(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let settings = fixture.ctx.settings(
        "broker-test",
        &[
            ("FLEET__TRANSPORT", transport),
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
            ("REDIS_URL", "redis://127.0.0.1:1"),
        ],
    );
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(15), Broker::connect(&settings, "u1"))
        .await
        .expect("connecting to a closed port must not hang");
    let error = result.expect_err("nothing listens on port 1");
    assert!(error.is_transient(), "{error}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// RabbitMQ acknowledges several publishes with one `multiple` ack, and
/// lapin hands a returned (unroutable) message to whichever of those
/// confirms it resolves first, not to the publish it belongs to. Batches
/// that share a channel would then swap outcomes: an unroutable event
/// marked published (lost) and a delivered one retried. Every outcome must
/// belong to its own message, however many batches are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_outcomes_of_concurrent_batches_belong_to_their_own_messages() {
    let fixture = Fixture::new("rabbitmq").await;
    // Only order.placed has a queue; stock.reserved, which a worker
    // consumes (so it is published mandatory), comes back unroutable.
    let (_observer, mut consumer) = fixture
        .consumer("observer", &topology("observer-worker", &["order.placed"]))
        .await;
    let publisher = fixture.broker("publisher").await;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..6 {
        let publisher = publisher.clone();
        tasks.spawn(async move {
            let mut wrong = Vec::new();
            let mut routed = Vec::new();
            for round in 0..25 {
                let batch: Vec<OutgoingMessage> = (0..16)
                    .map(|n| {
                        let kind = if (n + task + round) % 4 == 0 {
                            "stock.reserved"
                        } else {
                            "order.placed"
                        };
                        message(kind, n)
                    })
                    .collect();
                let outcomes = publisher.publish_batch(&batch).await.unwrap();
                for (message, outcome) in batch.iter().zip(outcomes) {
                    let expected = if message.event_type == "order.placed" {
                        routed.push(message.id.clone());
                        PublishOutcome::Confirmed
                    } else {
                        PublishOutcome::Unroutable
                    };
                    if outcome != expected {
                        wrong.push(format!(
                            "{} {}: {outcome:?}",
                            message.event_type, message.id
                        ));
                    }
                }
            }
            (wrong, routed)
        });
    }
    let mut wrong = Vec::new();
    let mut routed = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        let (task_wrong, task_routed) = joined.unwrap();
        wrong.extend(task_wrong);
        routed.extend(task_routed);
    }
    assert!(
        wrong.is_empty(),
        "{} outcomes belong to another message: {wrong:?}",
        wrong.len()
    );
    let mut received = BTreeSet::new();
    while received.len() < routed.len() {
        let delivery = next(&mut consumer).await;
        received.insert(id_of(&delivery));
        delivery.ack().await.unwrap();
    }
    assert_eq!(received, routed, "every confirmed message was delivered");
}

/// A consumer that lives only as long as its process (loadgen's observer)
/// declares its topology with `expires_after`. Killed before it can delete
/// its queues, it must not leave an input queue that collects every event
/// of its types for good: the broker removes all of its queues once they
/// have gone that long without a consumer, and never while it consumes.
#[tokio::test]
async fn rabbitmq_an_observers_queues_expire_once_it_is_gone() {
    let fixture = Fixture::new("rabbitmq").await;
    let mut observer = topology("observer-worker", &["order.placed"]);
    let expiry = Duration::from_millis(1500);
    observer.expires_after = Some(expiry);
    let (broker, mut consumer) = fixture.consumer("observer", &observer).await;

    // Consuming keeps the input queue past its expiry: order.placed is
    // published mandatory, so a missing queue would make it unroutable.
    tokio::time::sleep(expiry * 2).await;
    let first = message("order.placed", 1);
    publish(&broker, std::slice::from_ref(&first)).await;
    let delivery = next(&mut consumer).await;
    assert_eq!(id_of(&delivery), first.id);
    delivery.ack().await.unwrap();

    // Gone without cleaning up, as after a kill: no consumer from here on.
    consumer.shutdown().await;
    let namespace = &fixture.ctx.namespace;
    let mut queues = vec![
        fleet_messages::names::worker_queue(namespace, &observer.worker),
        fleet_messages::names::dead_letter_queue(namespace, &observer.worker),
    ];
    for delay in &observer.retry_delays {
        queues.push(fleet_messages::names::retry_queue(
            namespace,
            &observer.worker,
            *delay,
        ));
    }
    let connection = lapin::Connection::connect(
        &fixture.ctx.amqp_url,
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut left = Vec::new();
        for queue in &queues {
            // A passive declare of a missing queue closes its channel.
            let channel = connection.create_channel().await.unwrap();
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await;
            if declared.is_ok() {
                left.push(queue.clone());
                channel.close(200, "done".into()).await.ok();
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still there {WAIT:?} after the observer went: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let second = message("order.placed", 2);
    let outcomes = broker
        .publish_batch(std::slice::from_ref(&second))
        .await
        .unwrap();
    assert_eq!(outcomes, vec![PublishOutcome::Unroutable]);
    connection.close(200, "done".into()).await.ok();
}

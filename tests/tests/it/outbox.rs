//! The transactional outbox, relay and inbox on real Postgres, publishing
//! through both transports.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fleet_broker::{Broker, Consumer, WorkerTopology};
use fleet_messages::{Envelope, EventData, StockReleased};
use fleet_outbox::{
    Claim, Outgoing, Relay, RelayOptions, RelayWriter, Retention, RetentionOptions, Schema,
};
use fleet_tests::TestContext;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::faults::{self, Proxy};

on_both_transports!(
    a_commit_publishes_and_a_rollback_publishes_nothing,
    three_relays_publish_every_row_of_a_large_backlog_once,
    a_relay_killed_between_publish_and_mark_gives_a_duplicate_the_inbox_absorbs,
    a_broker_outage_delays_but_loses_nothing,
    a_relay_that_cannot_reach_postgres_at_start_publishes_once_it_can,
    a_local_writer_wakes_its_relay_in_process_and_sends_no_notify,
    handed_over_rows_are_published_without_a_claim_and_settled_before_stop,
    a_dead_replicas_handed_over_rows_are_published_when_their_lease_ends,
    handed_over_rows_the_broker_did_not_confirm_go_back_to_the_claims,
);

const EVENT_TYPE: &str = "stock.released";

/// The handoff lease of the fixture's relays (the default's value).
const HANDOFF_LEASE: Duration = Duration::from_secs(15);

struct Fixture {
    ctx: TestContext,
    transport: &'static str,
    schema: Schema,
    pool: PgPool,
}

impl Fixture {
    async fn new(transport: &'static str) -> Self {
        let ctx = TestContext::new().await;
        let schema = Schema::new("relay_test").unwrap();
        let settings = ctx.settings("outbox-test", &[("FLEET__TRANSPORT", transport)]);
        let pool = fleet_outbox::connect(&settings.database, &schema)
            .await
            .unwrap();
        fleet_outbox::migrate(&pool, &schema, &[]).await.unwrap();
        Self {
            ctx,
            transport,
            schema,
            pool,
        }
    }

    fn settings(&self, overrides: &[(&str, &str)]) -> fleet_config::Settings {
        let mut all = vec![
            ("FLEET__TRANSPORT", self.transport),
            ("FLEET__WORKER__PREFETCH", "500"),
        ];
        all.extend_from_slice(overrides);
        self.ctx.settings("outbox-test", &all)
    }

    async fn broker(&self, replica: &str) -> Broker {
        let broker = Broker::connect(&self.settings(&[]), replica).await.unwrap();
        broker.declare_events().await.unwrap();
        broker
    }

    /// A consumer bound to the event type, declared before anything is
    /// published so that RabbitMQ routes to it.
    async fn listener(&self) -> Consumer {
        let broker = self.broker("listener").await;
        let topology = WorkerTopology {
            worker: "observer-worker".to_owned(),
            event_types: vec![EVENT_TYPE.to_owned()],
            retry_delays: vec![Duration::from_secs(1)],
            delivery_limit: 5,
            expires_after: None,
        };
        broker.consume(&topology).await.unwrap()
    }

    fn relay(&self, broker: Broker, batch_size: u32) -> Relay {
        self.relay_with(
            self.pool.clone(),
            broker,
            batch_size,
            Duration::from_millis(200),
        )
    }

    /// A relay on `pool` (which may reach Postgres another way) that polls
    /// every `poll_interval`.
    fn relay_with(
        &self,
        pool: PgPool,
        broker: Broker,
        batch_size: u32,
        poll_interval: Duration,
    ) -> Relay {
        Relay::new(
            pool,
            broker,
            self.schema.clone(),
            relay_options(batch_size, poll_interval),
        )
    }

    /// Writes `events` through `writer` in one committed transaction, as a
    /// worker does; returns what to call `committed()` on.
    async fn write(&self, writer: &RelayWriter, events: &[Envelope]) -> Outgoing {
        let mut transaction = self.pool.begin().await.unwrap();
        let outgoing = writer.enqueue(&mut transaction, events).await.unwrap();
        transaction.commit().await.unwrap();
        outgoing
    }

    /// `(leased, unpublished)`: rows held from the claims (their next
    /// attempt lies in the future), and rows not published.
    async fn leased_and_unpublished(&self) -> (i64, i64) {
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE next_attempt_at > now() AND published_at IS NULL),
                    count(*) FILTER (WHERE published_at IS NULL)
             FROM outbox",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn enqueue(&self, count: usize) -> Vec<Uuid> {
        let events = events(count);
        let mut transaction = self.pool.begin().await.unwrap();
        fleet_outbox::enqueue(&mut transaction, &events)
            .await
            .unwrap();
        transaction.commit().await.unwrap();
        events.iter().map(|event| event.id).collect()
    }

    /// A broker connection through a TCP proxy in front of the real broker,
    /// so the test can cut it.
    async fn broker_through_proxy(&self, overrides: &[(&str, &str)]) -> (Proxy, Broker) {
        let (url, key, port) = match self.transport {
            "rabbitmq" => (self.ctx.amqp_url.clone(), "AMQP_URL", 5672),
            _ => (self.ctx.redis_url.clone(), "REDIS_URL", 6379),
        };
        let proxy = Proxy::start(&faults::address(&url, port)).await;
        let proxied = faults::through(&url, &proxy);
        let mut all = vec![(key, proxied.as_str())];
        all.extend_from_slice(overrides);
        let broker = Broker::connect(&self.settings(&all), "relay")
            .await
            .unwrap();
        (proxy, broker)
    }

    /// Waits until every row is marked published, failing after `within`.
    async fn wait_until_published(&self, within: Duration, what: &str) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let unpublished = self.unpublished().await;
            if unpublished == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {unpublished} rows still unpublished after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn unpublished(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

fn relay_options(batch_size: u32, poll_interval: Duration) -> RelayOptions {
    RelayOptions {
        batch_size,
        poll_interval,
        max_publish_attempts: 3,
        handoff_lease: HANDOFF_LEASE,
    }
}

/// A `payment.captured`: an event a worker consumes (so RabbitMQ publishes
/// it as mandatory), to which no queue of the test's namespace is bound.
fn unroutable_event() -> Envelope {
    let order_id = Uuid::now_v7();
    Envelope::new(
        "relay-test",
        EventData::from(fleet_messages::PaymentCaptured {
            order_id,
            payment_id: Uuid::now_v7(),
            amount_cents: 100,
        }),
        order_id,
        None,
    )
}

fn ids_of(events: &[Envelope]) -> HashSet<Uuid> {
    events.iter().map(|event| event.id).collect()
}

fn events(count: usize) -> Vec<Envelope> {
    (0..count)
        .map(|_| {
            let order_id = Uuid::now_v7();
            Envelope::new(
                "relay-test",
                EventData::from(StockReleased { order_id }),
                order_id,
                None,
            )
        })
        .collect()
}

/// Receives until `expected` distinct events arrived (or the wait ends),
/// counting copies of each.
async fn receive(consumer: &mut Consumer, expected: usize, wait: Duration) -> HashMap<Uuid, usize> {
    receive_while(consumer, wait, |seen| seen.len() < expected).await
}

/// Receives until every id of `wanted` arrived (or the wait ends).
async fn receive_all(
    consumer: &mut Consumer,
    wanted: &HashSet<Uuid>,
    wait: Duration,
) -> HashMap<Uuid, usize> {
    receive_while(consumer, wait, |seen| {
        !wanted.iter().all(|id| seen.contains_key(id))
    })
    .await
}

async fn receive_while(
    consumer: &mut Consumer,
    wait: Duration,
    more: impl Fn(&HashMap<Uuid, usize>) -> bool,
) -> HashMap<Uuid, usize> {
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + wait;
    while more(&seen) {
        let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, consumer.next()).await else {
            break;
        };
        let envelope = Envelope::decode(delivery.body(), usize::MAX).unwrap();
        *seen.entry(envelope.id).or_default() += 1;
        delivery.ack().await.unwrap();
    }
    seen
}

/// Asserts `seen` covers exactly `expected`, reporting counts, not ids.
fn assert_same(seen: &HashSet<Uuid>, expected: &HashSet<Uuid>, what: &str) {
    let missing = expected.difference(seen).count();
    let unexpected = seen.difference(expected).count();
    assert!(
        missing == 0 && unexpected == 0,
        "{what}: {missing} of {} missing, {unexpected} unexpected",
        expected.len()
    );
}

/// Whatever else arrives within `period`.
async fn receive_more(consumer: &mut Consumer, period: Duration) -> Vec<Uuid> {
    let mut more = Vec::new();
    while let Ok(Some(delivery)) = tokio::time::timeout(period, consumer.next()).await {
        more.push(Envelope::decode(delivery.body(), usize::MAX).unwrap().id);
        delivery.ack().await.unwrap();
    }
    more
}

async fn a_commit_publishes_and_a_rollback_publishes_nothing(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let mut listener = fixture.listener().await;
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(
        fixture
            .relay(fixture.broker("relay").await, 100)
            .run(shutdown.clone()),
    );

    let rolled_back = events(3);
    let mut transaction = fixture.pool.begin().await.unwrap();
    fleet_outbox::enqueue(&mut transaction, &rolled_back)
        .await
        .unwrap();
    transaction.rollback().await.unwrap();
    let committed = fixture.enqueue(3).await;

    let seen = receive(&mut listener, 3, Duration::from_secs(10)).await;
    assert_eq!(
        seen.keys().copied().collect::<HashSet<_>>(),
        committed.iter().copied().collect()
    );
    assert!(
        receive_more(&mut listener, Duration::from_millis(700))
            .await
            .is_empty()
    );
    assert_eq!(fixture.unpublished().await, 0);

    shutdown.cancel();
    relay.await.unwrap();
    listener.shutdown().await;
}

async fn three_relays_publish_every_row_of_a_large_backlog_once(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let mut listener = fixture.listener().await;
    let total = 20_000;
    let mut ids = HashSet::new();
    for _ in 0..(total / 1000) {
        ids.extend(fixture.enqueue(1000).await);
    }

    let shutdown = CancellationToken::new();
    let mut relays = Vec::new();
    for n in 0..3 {
        let relay = fixture.relay(fixture.broker(&format!("relay{n}")).await, 200);
        relays.push(tokio::spawn(relay.run(shutdown.clone())));
    }
    let seen = receive(&mut listener, total, Duration::from_secs(120)).await;
    let extra = receive_more(&mut listener, Duration::from_millis(500)).await;
    shutdown.cancel();
    for relay in relays {
        relay.await.unwrap();
    }

    assert_same(&seen.keys().copied().collect(), &ids, "every row published");
    let doubled: Vec<_> = seen.iter().filter(|(_, copies)| **copies > 1).collect();
    assert!(
        doubled.is_empty() && extra.is_empty(),
        "published twice: {doubled:?} {extra:?}"
    );
    assert_eq!(fixture.unpublished().await, 0);
    listener.shutdown().await;
}

async fn a_relay_killed_between_publish_and_mark_gives_a_duplicate_the_inbox_absorbs(
    transport: &'static str,
) {
    let fixture = Fixture::new(transport).await;
    let mut listener = fixture.listener().await;
    let ids = fixture.enqueue(5).await;

    let mut crashing = fixture.relay(fixture.broker("crash").await, 100);
    crashing.abandon_next_batch_after_publish();
    assert!(crashing.publish_batch().await.is_err());
    assert_eq!(fixture.unpublished().await, 5, "nothing was marked");

    let recovering = fixture.relay(fixture.broker("recover").await, 100);
    assert_eq!(recovering.publish_batch().await.unwrap(), 5);
    assert_eq!(fixture.unpublished().await, 0);

    let seen = receive(&mut listener, 5, Duration::from_secs(10)).await;
    let mut copies: Vec<_> = receive_more(&mut listener, Duration::from_secs(2)).await;
    for (id, count) in &seen {
        for _ in 1..*count {
            copies.push(*id);
        }
    }
    copies.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(copies, expected, "each event arrives exactly twice");

    // The inbox absorbs the second copy of each.
    for id in &ids {
        for expected in [Claim::New, Claim::Duplicate] {
            let mut transaction = fixture.pool.begin().await.unwrap();
            assert_eq!(
                fleet_outbox::claim(&mut transaction, "observer", *id)
                    .await
                    .unwrap(),
                expected
            );
            transaction.commit().await.unwrap();
        }
    }
    listener.shutdown().await;
}

async fn a_broker_outage_delays_but_loses_nothing(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let mut listener = fixture.listener().await;
    let (proxy, broker) = fixture.broker_through_proxy(&[]).await;
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(fixture.relay(broker, 50).run(shutdown.clone()));

    let mut ids: HashSet<Uuid> = fixture.enqueue(100).await.into_iter().collect();
    let before = receive(&mut listener, 100, Duration::from_secs(10)).await;
    assert_eq!(before.len(), 100);

    proxy.go_down();
    for _ in 0..5 {
        ids.extend(fixture.enqueue(100).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(fixture.unpublished().await > 0, "the outage held rows back");

    proxy.come_back();
    let held_back: HashSet<Uuid> = ids
        .difference(&before.keys().copied().collect())
        .copied()
        .collect();
    let after = receive_all(&mut listener, &held_back, Duration::from_secs(60)).await;
    let mut all: HashSet<Uuid> = before.keys().copied().collect();
    all.extend(after.keys().copied());
    assert_same(&all, &ids, "every row published once the broker is back");
    // A batch in flight when the link was cut may have reached the broker
    // without its confirm reaching us: those rows stay pending and go out
    // again after the relay's backoff (a duplicate, which the inbox absorbs).
    fixture
        .wait_until_published(Duration::from_secs(30), "backlog after the outage")
        .await;

    shutdown.cancel();
    relay.await.unwrap();
    listener.shutdown().await;
}

/// A replica may start while its database is unreachable (the pool opens
/// lazily); its relay must keep trying to listen, not give up for the life
/// of the process.
async fn a_relay_that_cannot_reach_postgres_at_start_publishes_once_it_can(
    transport: &'static str,
) {
    let fixture = Fixture::new(transport).await;
    let mut listener = fixture.listener().await;
    let proxy = Proxy::start(&faults::address(&fixture.ctx.database_url, 5432)).await;
    proxy.go_down();
    let options = (*fixture.pool.connect_options()).clone().port(proxy.port);
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(options);
    let relay = fixture.relay_with(
        unreachable,
        fixture.broker("relay").await,
        50,
        Duration::from_millis(200),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let ids: HashSet<Uuid> = fixture.enqueue(20).await.into_iter().collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !running.is_finished(),
        "the relay gave up while Postgres was away"
    );
    assert_eq!(
        fixture.unpublished().await,
        20,
        "nothing could be published yet"
    );

    proxy.come_back();
    let published = receive_all(&mut listener, &ids, Duration::from_secs(30)).await;
    assert_same(
        &published.keys().copied().collect(),
        &ids,
        "every row published once Postgres is reachable",
    );
    shutdown.cancel();
    running.await.unwrap();
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_row_is_parked_after_its_attempts_while_others_flow() {
    let fixture = Fixture::new("rabbitmq").await;
    let mut listener = fixture.listener().await;
    let shutdown = CancellationToken::new();
    let relay = fixture.relay(fixture.broker("relay").await, 100);
    let status = relay.status();
    let running = tokio::spawn(relay.run(shutdown.clone()));

    let unroutable = unroutable_event();
    let mut transaction = fixture.pool.begin().await.unwrap();
    fleet_outbox::enqueue(&mut transaction, std::slice::from_ref(&unroutable))
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    let routable: HashSet<Uuid> = fixture.enqueue(20).await.into_iter().collect();

    let seen = receive(&mut listener, 20, Duration::from_secs(10)).await;
    assert_eq!(seen.keys().copied().collect::<HashSet<_>>(), routable);

    // 3 attempts with 100 ms then 200 ms backoff.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (attempts, error, parked): (i32, Option<String>, bool) = loop {
        let row: (i32, Option<String>, bool) = sqlx::query_as(
            "SELECT attempts, last_error, parked_at IS NOT NULL FROM outbox WHERE event_id = $1",
        )
        .bind(unroutable.id)
        .fetch_one(&fixture.pool)
        .await
        .unwrap();
        if row.2 || tokio::time::Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(parked, "parked after its attempts");
    assert_eq!(attempts, 3);
    assert!(error.unwrap().contains("unroutable"));

    // Parked rows no longer count as lag, and never loop.
    let more: HashSet<Uuid> = fixture.enqueue(5).await.into_iter().collect();
    let seen = receive(&mut listener, 5, Duration::from_secs(10)).await;
    assert_eq!(seen.keys().copied().collect::<HashSet<_>>(), more);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(status.lag() < Duration::from_secs(5));
    let attempts_later: i32 = sqlx::query_scalar("SELECT attempts FROM outbox WHERE event_id = $1")
        .bind(unroutable.id)
        .fetch_one(&fixture.pool)
        .await
        .unwrap();
    assert_eq!(attempts_later, 3);

    shutdown.cancel();
    running.await.unwrap();
    listener.shutdown().await;
}

#[tokio::test]
async fn retention_deletes_old_rows_in_bounded_batches() {
    let fixture = Fixture::new("rabbitmq").await;
    fixture.enqueue(2_500).await;
    let recent = fixture.enqueue(10).await;
    sqlx::query(
        "UPDATE outbox SET published_at = now() - interval '2 days' WHERE NOT (event_id = ANY($1))",
    )
    .bind(&recent)
    .execute(&fixture.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE outbox SET published_at = now() WHERE event_id = ANY($1)")
        .bind(&recent)
        .execute(&fixture.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO inbox (consumer, event_id, processed_at)
         SELECT 'c', gen_random_uuid(), now() - interval '30 days' FROM generate_series(1, 1500)",
    )
    .execute(&fixture.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO inbox (consumer, event_id) VALUES ('c', gen_random_uuid())")
        .execute(&fixture.pool)
        .await
        .unwrap();

    let retention = Retention::new(
        fixture.pool.clone(),
        fixture.schema.clone(),
        RetentionOptions {
            outbox_retention: Duration::from_secs(24 * 3600),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            batch_size: 1000,
            interval: Duration::from_secs(3600),
        },
    );
    let swept = retention.sweep(&CancellationToken::new()).await.unwrap();
    assert_eq!(swept.outbox, 2_500);
    assert_eq!(swept.inbox, 1_500);
    // 1000 + 1000 + 500 outbox, 1000 + 500 inbox: never more than a batch.
    assert_eq!(swept.batches, 5);

    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&fixture.pool)
        .await
        .unwrap();
    assert_eq!(left, 10, "recent rows stay");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&fixture.pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "recent inbox entries stay");
}

#[tokio::test]
async fn every_replica_may_migrate_at_once() {
    let ctx = TestContext::new().await;
    let settings = ctx.settings("outbox-test", &[]);
    let schema = Schema::new("racing_replicas").unwrap();
    let mut racers = Vec::new();
    for _ in 0..6 {
        let settings = settings.clone();
        let schema = schema.clone();
        racers.push(tokio::spawn(async move {
            let pool = fleet_outbox::connect(&settings.database, &schema)
                .await
                .unwrap();
            fleet_outbox::migrate(&pool, &schema, &[]).await
        }));
    }
    for racer in racers {
        racer.await.unwrap().unwrap();
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'racing_replicas' AND tablename IN ('outbox', 'inbox', 'outbox_relay')",
    )
    .fetch_one(&ctx.db)
    .await
    .unwrap();
    assert_eq!(tables, 3);
}

#[tokio::test]
async fn concurrent_claims_of_one_event_let_exactly_one_through() {
    let fixture = Fixture::new("rabbitmq").await;
    let event_id = Uuid::now_v7();
    let mut first = fixture.pool.begin().await.unwrap();
    assert_eq!(
        fleet_outbox::claim(&mut first, "w", event_id)
            .await
            .unwrap(),
        Claim::New
    );
    let pool = fixture.pool.clone();
    let second = tokio::spawn(async move {
        let mut transaction = pool.begin().await.unwrap();
        let claim = fleet_outbox::claim(&mut transaction, "w", event_id)
            .await
            .unwrap();
        transaction.commit().await.unwrap();
        claim
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !second.is_finished(),
        "the second claim waits for the first transaction"
    );
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), Claim::Duplicate);

    // A rolled-back claim leaves the event claimable.
    let other = Uuid::now_v7();
    let mut transaction = fixture.pool.begin().await.unwrap();
    assert_eq!(
        fleet_outbox::claim(&mut transaction, "w", other)
            .await
            .unwrap(),
        Claim::New
    );
    transaction.rollback().await.unwrap();
    let mut transaction = fixture.pool.begin().await.unwrap();
    assert_eq!(
        fleet_outbox::claim(&mut transaction, "w", other)
            .await
            .unwrap(),
        Claim::New
    );
    transaction.commit().await.unwrap();
}

/// The workers' path: rows written with `enqueue_for_local_relay` send no
/// `NOTIFY` (a sleeping relay with a long poll does not see them), and the
/// wake-up rung after the commit publishes them at once.
async fn a_local_writer_wakes_its_relay_in_process_and_sends_no_notify(transport: &'static str) {
    let fixture = Fixture::new(transport).await;
    let mut listener = fixture.listener().await;
    // A poll too slow to be what publishes the rows.
    let relay = fixture.relay_with(
        fixture.pool.clone(),
        fixture.broker("relay").await,
        100,
        Duration::from_secs(60),
    );
    let wakeup = relay.wakeup();
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    // Let the relay go to sleep (flag set, waiting on LISTEN and the poll).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let quiet = events(2);
    let mut transaction = fixture.pool.begin().await.unwrap();
    fleet_outbox::enqueue_for_local_relay(&mut transaction, &quiet)
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    assert!(
        receive_more(&mut listener, Duration::from_millis(1500))
            .await
            .is_empty(),
        "published without a wake-up: a NOTIFY was sent"
    );
    assert_eq!(fixture.unpublished().await, 2);

    let started = std::time::Instant::now();
    wakeup.rows_committed();
    let seen = receive(&mut listener, 2, Duration::from_secs(10)).await;
    assert_eq!(
        seen.keys().copied().collect::<HashSet<_>>(),
        quiet.iter().map(|event| event.id).collect(),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the wake-up took {:?}",
        started.elapsed()
    );
    // Delivered before the relay marks them (after the broker's confirm).
    fixture
        .wait_until_published(Duration::from_secs(5), "woken rows")
        .await;

    shutdown.cancel();
    relay.await.unwrap();
    listener.shutdown().await;
}

/// The workers' path since the handoff: rows a replica writes go to its own
/// relay after the commit and are published without any claim (the relay
/// polls once a minute and nobody rings it), marked once confirmed, and
/// what was handed over just before a stop is settled before `run` returns.
async fn handed_over_rows_are_published_without_a_claim_and_settled_before_stop(
    transport: &'static str,
) {
    let fixture = Fixture::new(transport).await;
    let mut listener = fixture.listener().await;
    let relay = fixture.relay_with(
        fixture.pool.clone(),
        fixture.broker("relay").await,
        100,
        Duration::from_secs(60),
    );
    let writer = relay.writer();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A rolled-back transaction hands nothing over and frees its lease.
    let mut transaction = fixture.pool.begin().await.unwrap();
    let rolled_back = writer.enqueue(&mut transaction, &events(4)).await.unwrap();
    transaction.rollback().await.unwrap();
    drop(rolled_back);

    let first = events(30);
    let outgoing = fixture.write(&writer, &first).await;
    // Committed, not yet handed over: other relays' claims skip them.
    assert_eq!(fixture.leased_and_unpublished().await, (30, 30));
    let started = std::time::Instant::now();
    outgoing.committed();
    let seen = receive_all(&mut listener, &ids_of(&first), Duration::from_secs(10)).await;
    assert_same(
        &seen.keys().copied().collect(),
        &ids_of(&first),
        "handed-over rows",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "published in {:?}: the handoff, not a poll",
        started.elapsed()
    );
    fixture
        .wait_until_published(Duration::from_secs(5), "marked once confirmed")
        .await;

    // Handed over and stopped at once: settled before `run` returns.
    let last = events(50);
    fixture.write(&writer, &last).await.committed();
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(fixture.unpublished().await, 0, "settled before the stop");
    let seen = receive_all(&mut listener, &ids_of(&last), Duration::from_secs(10)).await;
    assert_same(
        &seen.keys().copied().collect(),
        &ids_of(&last),
        "rows handed over at the stop",
    );
    let again = receive_more(&mut listener, Duration::from_millis(500)).await;
    assert!(again.is_empty(), "published twice: {again:?}");
    listener.shutdown().await;
}

/// A replica that committed rows and died before its relay published them
/// (here: a relay that never runs): the lease keeps other relays off them
/// while it lasts, then another replica's relay publishes them.
async fn a_dead_replicas_handed_over_rows_are_published_when_their_lease_ends(
    transport: &'static str,
) {
    const LEASE: Duration = Duration::from_millis(2500);
    let fixture = Fixture::new(transport).await;
    let mut listener = fixture.listener().await;
    let dead = Relay::new(
        fixture.pool.clone(),
        fixture.broker("dead").await,
        fixture.schema.clone(),
        RelayOptions {
            handoff_lease: LEASE,
            ..relay_options(100, Duration::from_millis(200))
        },
    );
    let shutdown = CancellationToken::new();
    let survivor = tokio::spawn(
        fixture
            .relay(fixture.broker("survivor").await, 100)
            .run(shutdown.clone()),
    );

    let orphans = events(20);
    let written = std::time::Instant::now();
    fixture.write(&dead.writer(), &orphans).await.committed();
    assert!(
        receive_more(&mut listener, Duration::from_millis(1500))
            .await
            .is_empty(),
        "another relay took leased rows"
    );
    let seen = receive_all(&mut listener, &ids_of(&orphans), Duration::from_secs(15)).await;
    assert_same(
        &seen.keys().copied().collect(),
        &ids_of(&orphans),
        "a dead replica's rows",
    );
    assert!(
        written.elapsed() >= LEASE,
        "published after {:?}, within the lease",
        written.elapsed()
    );
    fixture
        .wait_until_published(Duration::from_secs(5), "the survivor's marks")
        .await;
    assert_eq!(
        dead.handed_over_pending(),
        20,
        "the dead relay never settled them"
    );

    shutdown.cancel();
    survivor.await.unwrap();
    listener.shutdown().await;
}

/// Handed-over rows published while the broker is unreachable get no
/// confirm: they go back to the claims at once (not after the lease), which
/// publish them once the broker is back, with their usual backoff.
async fn handed_over_rows_the_broker_did_not_confirm_go_back_to_the_claims(
    transport: &'static str,
) {
    let fixture = Fixture::new(transport).await;
    let mut listener = fixture.listener().await;
    let (proxy, broker) = fixture
        .broker_through_proxy(&[("FLEET__AMQP__CONFIRM_TIMEOUT_MS", "1000")])
        .await;
    let relay = fixture.relay(broker, 50);
    let writer = relay.writer();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));

    proxy.go_down();
    let held = events(20);
    fixture.write(&writer, &held).await.committed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (leased, unpublished) = fixture.leased_and_unpublished().await;
        if leased == 0 {
            assert_eq!(unpublished, 20, "nothing could be published");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rows without a confirm still leased ({leased})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    proxy.come_back();
    let seen = receive_all(&mut listener, &ids_of(&held), Duration::from_secs(30)).await;
    assert_same(
        &seen.keys().copied().collect(),
        &ids_of(&held),
        "every row published once the broker is back",
    );
    fixture
        .wait_until_published(Duration::from_secs(30), "backlog after the outage")
        .await;
    shutdown.cancel();
    running.await.unwrap();
    listener.shutdown().await;
}

/// A broker that routes nowhere: a handed-over row's refusal is counted as
/// a claim's would be, and the claims retry it until it is parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_handed_over_row_is_retried_by_the_claims_then_parked() {
    let fixture = Fixture::new("rabbitmq").await;
    let relay = fixture.relay(fixture.broker("relay").await, 100);
    let writer = relay.writer();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));

    let unroutable = [unroutable_event()];
    fixture.write(&writer, &unroutable).await.committed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (attempts, error, parked): (i32, Option<String>, bool) = loop {
        let row: (i32, Option<String>, bool) = sqlx::query_as(
            "SELECT attempts, last_error, parked_at IS NOT NULL FROM outbox WHERE event_id = $1",
        )
        .bind(unroutable[0].id)
        .fetch_one(&fixture.pool)
        .await
        .unwrap();
        if row.2 || tokio::time::Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(parked, "parked after its attempts ({attempts})");
    assert_eq!(attempts, 3, "one refusal by the handoff, two by the claims");
    assert!(error.unwrap().contains("unroutable"));

    shutdown.cancel();
    running.await.unwrap();
}

/// A handoff holding its maximum (20 batches) sends further rows to the
/// claims instead: a broker that stops confirming cannot grow a replica's
/// memory without bound.
#[tokio::test]
async fn a_full_handoff_leaves_further_rows_to_the_claims() {
    let fixture = Fixture::new("rabbitmq").await;
    // Never run: nothing it is handed is ever settled. Batches of 2: room
    // for 40 rows.
    let relay = fixture.relay(fixture.broker("stalled").await, 2);
    let writer = relay.writer();
    fixture.write(&writer, &events(40)).await.committed();
    assert_eq!(relay.handed_over_pending(), 40);
    let overflow = fixture.write(&writer, &events(3)).await;
    assert_eq!(relay.handed_over_pending(), 40);
    assert_eq!(
        fixture.leased_and_unpublished().await,
        (40, 43),
        "the overflow was written for the claims"
    );
    overflow.committed();
}

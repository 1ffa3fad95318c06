//! The whole fleet, end to end, on both transports: the four workers with
//! several replicas each, driven by `order.submitted` events published the
//! way any client would, checked against the contract's outcomes and
//! invariants in the workers' own schemas.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet_broker::{Broker, OutgoingMessage, WorkerTopology};
use fleet_config::Settings;
use fleet_messages::{Envelope, EventData, EventType, OrderSubmitted, SubmittedItem};
use fleet_tests::TestContext;
use fleet_workers::inventory::InventoryWorker;
use fleet_workers::notification::NotificationWorker;
use fleet_workers::order::OrderWorker;
use fleet_workers::payment::PaymentWorker;
use fleet_workers::{Handler, RunningWorker};
use rand::Rng;
use rand::seq::SliceRandom;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

on_both_transports!(
    worker_threads = 4;
    a_thousand_orders_on_two_replicas_reach_the_predicted_outcomes,
    a_duplicate_storm_changes_nothing,
    poison_lands_in_the_consuming_workers_dead_letters_without_blocking,
    sigterm_to_a_replica_under_load_loses_nothing,
);

// ------------------------------------------------------------------ fleet

pub(crate) struct Fleet {
    pub(crate) ctx: TestContext,
    transport: &'static str,
    /// Settings every replica of this fleet gets on top of [`overrides`].
    extra: Vec<(String, String)>,
    replicas: Vec<RunningWorker>,
    pub(crate) broker: Broker,
}

impl Fleet {
    pub(crate) async fn new(transport: &'static str) -> Self {
        Self::with_settings(transport, &[]).await
    }

    /// A fleet whose replicas also get `extra` settings.
    pub(crate) async fn with_settings(transport: &'static str, extra: &[(&str, &str)]) -> Self {
        Self::in_context(TestContext::new().await, transport, extra).await
    }

    /// A fleet on `ctx`, whose URLs a test may have pointed at servers of
    /// its own.
    pub(crate) async fn in_context(
        ctx: TestContext,
        transport: &'static str,
        extra: &[(&str, &str)],
    ) -> Self {
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        let settings = ctx.settings("fleet-test", &with_extra(transport, &extra));
        let broker = Broker::connect(&settings, "client").await.unwrap();
        broker.declare_events().await.unwrap();
        Self {
            ctx,
            transport,
            extra,
            replicas: Vec::new(),
            broker,
        }
    }

    pub(crate) fn settings(&self, worker: &str) -> Settings {
        self.ctx
            .settings(worker, &with_extra(self.transport, &self.extra))
    }

    /// The environment a replica of this fleet runs with as a process.
    pub(crate) fn environment(&self) -> fleet_config::Environment {
        self.ctx
            .environment(&with_extra(self.transport, &self.extra))
    }

    pub(crate) fn replicas(&self) -> &[RunningWorker] {
        &self.replicas
    }

    pub(crate) async fn add<H: Handler>(&mut self, replicas: usize) {
        for n in 0..replicas {
            let settings = self.settings(H::WORKER.name());
            let replica = format!("{}-{n}", H::WORKER.name());
            let running = fleet_workers::start::<H>(settings, replica).await.unwrap();
            self.replicas.push(running);
        }
    }

    pub(crate) async fn start_all(&mut self, replicas: usize) {
        self.add::<OrderWorker>(replicas).await;
        self.add::<InventoryWorker>(replicas).await;
        self.add::<PaymentWorker>(replicas).await;
        self.add::<NotificationWorker>(replicas).await;
    }

    pub(crate) async fn submit(&self, envelopes: &[Envelope]) {
        for chunk in envelopes.chunks(200) {
            let messages: Vec<_> = chunk.iter().map(OutgoingMessage::from_envelope).collect();
            let outcomes = self.broker.publish_batch(&messages).await.unwrap();
            assert!(
                outcomes.iter().all(|outcome| outcome.is_confirmed()),
                "{outcomes:?}"
            );
        }
    }

    pub(crate) async fn stop(self) {
        for replica in self.replicas {
            replica.stop().await.unwrap();
        }
    }

    /// Waits until `expected` orders are terminal and notified, or fails.
    pub(crate) async fn wait_until_settled(&self, expected: &Expected, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Terminal orders, notifications, and the compensations still
            // owed: inventory releases stock on payment.declined in parallel
            // with order-worker cancelling, and may finish later.
            let (terminal, notified, unreleased): (i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM order_worker.orders WHERE status <> 'placed'),
                        (SELECT count(*) FROM notification_worker.notifications),
                        (SELECT count(*) FROM order_worker.orders o
                         JOIN inventory_worker.reservations r USING (order_id)
                         WHERE o.reason = 'payment_declined' AND r.status = 'reserved')",
            )
            .fetch_one(&self.ctx.db)
            .await
            .unwrap_or((0, 0, 1));
            if terminal as usize >= expected.outcomes.len()
                && notified as usize >= expected.notified()
                && unreleased == 0
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "after {wait:?}: {terminal} of {} orders terminal, {notified} of {} notified, \
                 {unreleased} declined orders' stock not released",
                expected.outcomes.len(),
                expected.notified()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The contract's rules, checked in the workers' own schemas.
    pub(crate) async fn assert_contract_holds(&self, expected: &Expected) {
        let db = &self.ctx.db;
        let rows: Vec<(Uuid, String, Option<String>)> =
            sqlx::query_as("SELECT order_id, status, reason FROM order_worker.orders")
                .fetch_all(db)
                .await
                .unwrap();
        assert_eq!(
            rows.len(),
            expected.outcomes.len(),
            "one order row per submitted order id"
        );
        let mut wrong = Vec::new();
        for (order_id, status, reason) in &rows {
            let outcome = Outcome(status.clone(), reason.clone().unwrap_or_default());
            if expected.outcomes.get(order_id) != Some(&outcome) {
                wrong.push(format!(
                    "{order_id}: {outcome:?} vs {:?}",
                    expected.outcomes.get(order_id)
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} unexpected outcomes, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );

        // Exactly one notification per confirmed or cancelled order, with
        // the matching template, and none for rejected ones.
        let mismatched: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM order_worker.orders o
             FULL JOIN notification_worker.notifications n USING (order_id)
             WHERE (o.status IN ('confirmed', 'cancelled')) IS DISTINCT FROM (n.order_id IS NOT NULL)
                OR (n.template IS NOT NULL AND n.template <> 'order_' || o.status)",
        )
        .fetch_one(db)
        .await
        .unwrap();
        assert_eq!(
            mismatched, 0,
            "notifications match terminal orders one to one"
        );

        // Stock is conserved, per SKU: taken = still reserved = confirmed.
        let stock: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT s.sku,
                    s.initial - s.available,
                    coalesce((SELECT sum(l.quantity) FROM inventory_worker.reservation_lines l
                              JOIN inventory_worker.reservations r USING (order_id)
                              WHERE l.sku = s.sku AND r.status = 'reserved'), 0)::bigint,
                    coalesce((SELECT sum((i->>'quantity')::bigint) FROM order_worker.orders o,
                              jsonb_array_elements(o.items) i
                              WHERE o.status = 'confirmed' AND i->>'sku' = s.sku), 0)::bigint
             FROM inventory_worker.stock s",
        )
        .fetch_all(db)
        .await
        .unwrap();
        for (sku, taken, reserved, confirmed) in stock {
            assert!(
                taken == reserved && reserved == confirmed,
                "{sku}: taken {taken}, reserved {reserved}, confirmed {confirmed}"
            );
        }

        // Credit is conserved: captured = totals of confirmed orders.
        let (captured, confirmed_total, captured_payments, confirmed_orders): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT coalesce(sum(captured_cents), 0)::bigint FROM payment_worker.customers),
                    (SELECT coalesce(sum(total_cents), 0)::bigint FROM order_worker.orders WHERE status = 'confirmed'),
                    (SELECT count(*) FROM payment_worker.payments WHERE status = 'captured'),
                    (SELECT count(*) FROM order_worker.orders WHERE status = 'confirmed')",
        )
        .fetch_one(db)
        .await
        .unwrap();
        assert_eq!(
            captured, confirmed_total,
            "credit captured equals confirmed totals"
        );
        assert_eq!(captured_payments, confirmed_orders);

        // Every event the workers emitted gets published, the facts that no
        // worker consumes included; none is parked.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (unpublished, parked): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE published_at IS NULL AND parked_at IS NULL),
                        count(*) FILTER (WHERE parked_at IS NOT NULL)
                 FROM (SELECT published_at, parked_at FROM order_worker.outbox
                       UNION ALL SELECT published_at, parked_at FROM inventory_worker.outbox
                       UNION ALL SELECT published_at, parked_at FROM payment_worker.outbox
                       UNION ALL SELECT published_at, parked_at FROM notification_worker.outbox) rows",
            )
            .fetch_one(db)
            .await
            .unwrap();
            assert_eq!(parked, 0, "parked outbox rows");
            if unpublished == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{unpublished} outbox rows still unpublished"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Compensation: every payment-declined order had its stock released.
        let unreleased: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM order_worker.orders o
             JOIN inventory_worker.reservations r USING (order_id)
             WHERE o.reason = 'payment_declined' AND r.status <> 'released'",
        )
        .fetch_one(db)
        .await
        .unwrap();
        assert_eq!(unreleased, 0, "declined orders release their stock");
    }

    /// How many events the workers have written to their outboxes.
    pub(crate) async fn outbox_rows(&self) -> usize {
        let rows: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM order_worker.outbox)
                  + (SELECT count(*) FROM inventory_worker.outbox)
                  + (SELECT count(*) FROM payment_worker.outbox)
                  + (SELECT count(*) FROM notification_worker.outbox)",
        )
        .fetch_one(&self.ctx.db)
        .await
        .unwrap();
        usize::try_from(rows).unwrap()
    }

    pub(crate) async fn dead_letters(&self) -> HashMap<&'static str, u64> {
        let mut depths = HashMap::new();
        for worker in fleet_messages::Worker::ALL {
            // A connection the server dropped (a restart) fails its next
            // command once; the one after goes over a new connection.
            let mut depth = self.broker.dead_letter_depth(worker.name()).await;
            for _ in 0..3 {
                if depth.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                depth = self.broker.dead_letter_depth(worker.name()).await;
            }
            depths.insert(worker.name(), depth.unwrap());
        }
        depths
    }
}

fn with_extra<'a>(
    transport: &'static str,
    extra: &'a [(String, String)],
) -> Vec<(&'a str, &'a str)> {
    let mut settings = overrides(transport);
    settings.extend(
        extra
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str())),
    );
    settings
}

fn overrides(transport: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("FLEET__TRANSPORT", transport),
        ("FLEET__RETRY__DELAYS_MS", "100,200,400"),
        ("FLEET__DATABASE__MAX_CONNECTIONS", "5"),
        ("FLEET__WORKER__CONCURRENCY", "4"),
        ("FLEET__WORKER__PREFETCH", "32"),
        ("FLEET__WORKER__SHUTDOWN_TIMEOUT_MS", "10000"),
        ("FLEET__REDIS__VISIBILITY_TIMEOUT_MS", "5000"),
        ("FLEET__REDIS__BLOCK_MS", "500"),
    ]
}

// ------------------------------------------------------------------ orders

/// What the contract predicts for one order: status and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome(pub(crate) String, pub(crate) String);

#[derive(Debug, Default)]
pub(crate) struct Expected {
    pub(crate) outcomes: HashMap<Uuid, Outcome>,
}

impl Expected {
    fn notified(&self) -> usize {
        self.outcomes
            .values()
            .filter(|Outcome(status, _)| status == "confirmed" || status == "cancelled")
            .count()
    }
}

/// `count` submissions in a fixed mix: valid, unknown SKU, not enough stock,
/// over credit (compensation), and each kind of business-invalid order.
pub(crate) fn orders(count: usize) -> (Vec<Envelope>, Expected) {
    let mut expected = Expected::default();
    let mut envelopes = Vec::with_capacity(count);
    for n in 0..count {
        let order_id = Uuid::now_v7();
        let item = |sku: &str, quantity: i64, unit_price_cents: i64| SubmittedItem {
            sku: sku.to_owned(),
            quantity,
            unit_price_cents,
        };
        let (customer, items, outcome) = match n % 20 {
            0..=12 => (
                format!("customer-{}", n % 40),
                vec![
                    item("SKU-APPLE", 1 + (n % 3) as i64, 100),
                    item("SKU-BANANA", 1, 50),
                ],
                Outcome("confirmed".into(), String::new()),
            ),
            13 | 14 => (
                format!("customer-{}", n % 40),
                vec![item("SKU-APPLE", 1, 100), item("SKU-NOPE", 1, 100)],
                Outcome("cancelled".into(), "unknown_sku".into()),
            ),
            15 => (
                format!("customer-{}", n % 40),
                vec![item("SKU-SCARCE", 11, 100)],
                Outcome("cancelled".into(), "insufficient_stock".into()),
            ),
            16 | 17 => (
                format!("big-spender-{n}"),
                vec![item("SKU-CHERRY", 3, 50_000)],
                Outcome("cancelled".into(), "payment_declined".into()),
            ),
            18 => (
                format!("customer-{}", n % 40),
                vec![],
                Outcome("rejected".into(), "no_items".into()),
            ),
            _ => (
                format!("customer-{}", n % 40),
                vec![item("SKU-APPLE", 0, 100)],
                Outcome("rejected".into(), "invalid_quantity".into()),
            ),
        };
        expected.outcomes.insert(order_id, outcome);
        envelopes.push(submitted(order_id, customer, items));
    }
    (envelopes, expected)
}

pub(crate) fn submitted(
    order_id: Uuid,
    customer_id: String,
    items: Vec<SubmittedItem>,
) -> Envelope {
    Envelope::new(
        "fleet-test",
        EventData::from(OrderSubmitted {
            order_id,
            customer_id,
            items,
        }),
        order_id,
        None,
    )
}

// ------------------------------------------------------------------- tests

async fn a_thousand_orders_on_two_replicas_reach_the_predicted_outcomes(transport: &'static str) {
    let mut fleet = Fleet::new(transport).await;
    fleet.start_all(2).await;
    let (envelopes, expected) = orders(1000);
    fleet.submit(&envelopes).await;

    // Submitting an order id again, with a new event id, starts no second saga.
    let again: Vec<Envelope> = envelopes
        .iter()
        .take(20)
        .map(|original| {
            let EventData::OrderSubmitted(data) = &original.data else {
                unreachable!()
            };
            Envelope::new(
                "fleet-test",
                EventData::from(data.clone()),
                data.order_id,
                None,
            )
        })
        .collect();
    fleet.submit(&again).await;

    fleet
        .wait_until_settled(&expected, Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.assert_contract_holds(&expected).await;
    assert!(
        fleet.dead_letters().await.values().all(|depth| *depth == 0),
        "{:?}",
        fleet.dead_letters().await
    );
    fleet.stop().await;
}

async fn a_duplicate_storm_changes_nothing(transport: &'static str) {
    let mut fleet = Fleet::new(transport).await;
    // An echo that publishes every event of the saga 1 to 4 more times, byte
    // for byte (same event id), in shuffled batches: each worker sees each
    // of its events 2 to 5 times, out of order across orders.
    let echo_stop = CancellationToken::new();
    let echoed = Arc::new(AtomicUsize::new(0));
    let echo = {
        let settings = fleet.settings("echo");
        let stop = echo_stop.clone();
        let echoed = Arc::clone(&echoed);
        let broker = Broker::connect(&settings, "echo").await.unwrap();
        let topology = WorkerTopology {
            worker: "echo".to_owned(),
            event_types: EventType::ALL
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            retry_delays: vec![Duration::from_secs(1)],
            delivery_limit: 5,
            expires_after: None,
        };
        let mut consumer = broker.consume(&topology).await.unwrap();
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut storm: Vec<OutgoingMessage> = Vec::new();
            let mut copies = 0_usize;
            let mut flush = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = flush.tick(), if !storm.is_empty() => {
                        storm.shuffle(&mut rand::rng());
                        let outcomes = broker.publish_batch(&storm).await.unwrap();
                        assert!(outcomes.iter().all(|o| o.is_confirmed()), "{outcomes:?}");
                        storm.clear();
                        echoed.store(seen.len(), Ordering::SeqCst);
                    }
                    next = consumer.next() => {
                        let Some(delivery) = next else { break };
                        let envelope = Envelope::decode(delivery.body(), usize::MAX).unwrap();
                        if seen.insert(envelope.id) {
                            let copy = OutgoingMessage::from_envelope(&envelope);
                            assert_eq!(copy.body, delivery.body(), "the echo is byte for byte");
                            let extra = rand::rng().random_range(1..=4);
                            copies += extra;
                            storm.extend(std::iter::repeat_n(copy, extra));
                        }
                        delivery.ack().await.unwrap();
                    }
                }
            }
            consumer.shutdown().await;
            copies
        })
    };
    fleet.start_all(2).await;
    let (envelopes, expected) = orders(200);
    fleet.submit(&envelopes).await;
    fleet
        .wait_until_settled(&expected, Duration::from_secs(120))
        .await;
    // The echo runs behind the saga, so wait until it has repeated every
    // event the saga produced: the submitted orders plus every row the
    // workers wrote to their outboxes.
    let produced = envelopes.len() + fleet.outbox_rows().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while echoed.load(Ordering::SeqCst) < produced {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the echo repeated {} of the saga's {produced} events",
            echoed.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The workers keep up with the echo; give them a moment for its last.
    tokio::time::sleep(Duration::from_secs(2)).await;
    echo_stop.cancel();
    let copies = echo.await.unwrap();
    assert!(copies >= produced, "{copies} copies of {produced} events");
    assert_eq!(
        fleet.outbox_rows().await + envelopes.len(),
        produced,
        "the storm made the workers emit more events"
    );

    fleet.assert_contract_holds(&expected).await;
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM order_worker.inbox) + (SELECT count(*) FROM inventory_worker.inbox)",
    )
    .fetch_one(&fleet.ctx.db)
    .await
    .unwrap();
    assert!(duplicates > 0);
    assert!(fleet.dead_letters().await.values().all(|depth| *depth == 0));
    fleet.stop().await;
}

async fn poison_lands_in_the_consuming_workers_dead_letters_without_blocking(
    transport: &'static str,
) {
    let mut fleet = Fleet::new(transport).await;
    fleet.start_all(1).await;
    let (envelopes, expected) = orders(40);
    let (first, second) = envelopes.split_at(20);
    fleet.submit(first).await;

    // Poison of every kind, routed to inventory-worker (order.placed).
    let valid = serde_json::json!({
        "specversion": "1.0", "id": Uuid::now_v7().to_string(), "source": "test",
        "type": "order.placed", "subject": "x", "time": "2026-11-21T10:15:30.123Z",
        "correlationid": Uuid::now_v7().to_string(),
        "data": {"order_id": Uuid::now_v7().to_string(), "customer_id": "c", "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}], "total_cents": 1}
    });
    let with = |pointer: &str, value: serde_json::Value| {
        let mut poison = valid.clone();
        *poison.pointer_mut(pointer).unwrap() = value;
        poison["id"] = Uuid::now_v7().to_string().into();
        poison.to_string().into_bytes()
    };
    let without = |attribute: &str| {
        let mut poison = valid.clone();
        poison.as_object_mut().unwrap().remove(attribute);
        poison.to_string().into_bytes()
    };
    let poisons: Vec<(&str, Vec<u8>)> = vec![
        ("not_json", b"{this is not json".to_vec()),
        ("missing_attribute", without("id")),
        ("unknown_type", with("/type", "order.shipped".into())),
        (
            "unsupported_specversion",
            with("/specversion", "0.3".into()),
        ),
        ("invalid_data", with("/data/items/0/quantity", (-5).into())),
        (
            "too_large",
            with("/data/customer_id", "x".repeat(300 * 1024).into()),
        ),
    ];
    let messages: Vec<OutgoingMessage> = poisons
        .iter()
        .map(|(_, body)| OutgoingMessage {
            id: Uuid::now_v7().to_string(),
            event_type: "order.placed".to_owned(),
            body: body.clone(),
            timestamp: 0,
        })
        .collect();
    let outcomes = fleet.broker.publish_batch(&messages).await.unwrap();
    assert!(outcomes.iter().all(|outcome| outcome.is_confirmed()));
    fleet.submit(second).await;

    fleet
        .wait_until_settled(&expected, Duration::from_secs(60))
        .await;
    fleet.assert_contract_holds(&expected).await;
    let depths = fleet.dead_letters().await;
    assert_eq!(
        depths["inventory-worker"],
        poisons.len() as u64,
        "{depths:?}"
    );
    for (worker, depth) in &depths {
        if *worker != "inventory-worker" {
            assert_eq!(*depth, 0, "{worker}");
        }
    }
    let letters = fleet
        .broker
        .peek_dead_letters("inventory-worker", 100)
        .await
        .unwrap();
    let kinds: HashSet<&str> = letters
        .iter()
        .map(|letter| letter.error_kind.as_str())
        .collect();
    let wanted: HashSet<&str> = poisons.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(kinds, wanted);
    assert!(
        letters
            .iter()
            .all(|letter| letter.attempts == 1 && !letter.error.is_empty())
    );
    fleet.stop().await;
}

async fn sigterm_to_a_replica_under_load_loses_nothing(transport: &'static str) {
    let mut fleet = Fleet::new(transport).await;
    fleet.add::<OrderWorker>(1).await;
    fleet.add::<InventoryWorker>(1).await;
    fleet.add::<NotificationWorker>(1).await;
    // Two payment-worker replicas as real processes: one gets SIGTERM.
    let mut processes: Vec<crate::binaries::Process> = (0..2)
        .map(|_| {
            crate::binaries::spawn(
                "payment-worker",
                &fleet.ctx.environment(&overrides(transport)),
            )
        })
        .collect();

    let (envelopes, expected) = orders(400);
    let (first, rest) = envelopes.split_at(100);
    fleet.submit(first).await;
    for (n, chunk) in rest.chunks(50).enumerate() {
        if n == 1 {
            crate::binaries::terminate(&processes[0]);
        }
        fleet.submit(chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = crate::binaries::wait(&mut processes[0], Duration::from_secs(30));
    assert!(
        status.success(),
        "SIGTERM drains and exits 0, got {status:?}"
    );

    fleet
        .wait_until_settled(&expected, Duration::from_secs(120))
        .await;
    fleet.assert_contract_holds(&expected).await;
    assert!(fleet.dead_letters().await.values().all(|depth| *depth == 0));

    crate::binaries::terminate(&processes[1]);
    let status = crate::binaries::wait(&mut processes[1], Duration::from_secs(30));
    assert!(status.success());
    fleet.stop().await;
}

/// GET `path` from a replica's HTTP endpoint: (status, body).
pub(crate) async fn http_get(replica: &RunningWorker, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], replica.http_addr.port()));
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_serves_health_readiness_and_metrics() {
    let mut fleet = Fleet::new("rabbitmq").await;
    fleet.start_all(1).await;
    let (envelopes, expected) = orders(40);
    fleet.submit(&envelopes).await;
    fleet
        .wait_until_settled(&expected, Duration::from_secs(60))
        .await;

    for replica in &fleet.replicas {
        let (status, body) = http_get(replica, "/healthz").await;
        assert_eq!((status, body.trim()), (200, "ok"), "{}", replica.replica);
        let (status, body) = http_get(replica, "/readyz").await;
        assert_eq!(status, 200, "{}: {body}", replica.replica);
        let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(readiness["broker"], "ok");
        assert_eq!(readiness["database"], "ok");
        assert_eq!(readiness["relay"], "ok");
    }
    let (status, metrics) = http_get(&fleet.replicas[0], "/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        "fleet_consumed_total{worker=\"order-worker\"}",
        "fleet_handled_total{worker=\"order-worker\",type=\"order.submitted\"} 40",
        "fleet_handler_seconds_bucket{worker=\"inventory-worker\"",
        "fleet_outbox_published_total{schema=\"order_worker\"}",
        "fleet_outbox_backlog{schema=\"payment_worker\"}",
    ] {
        assert!(
            metrics.contains(expected),
            "/metrics lacks {expected}:\n{metrics}"
        );
    }
    let (status, _) = http_get(&fleet.replicas[0], "/nope").await;
    assert_eq!(status, 404);
    fleet.stop().await;
}

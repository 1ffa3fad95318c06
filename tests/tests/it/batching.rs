//! Deliveries that wait for a busy replica are handled together, one
//! transaction per batch: each event still takes effect exactly once, and an
//! event that fails sends its batch back to one-at-a-time handling without
//! costing the others anything.

use std::collections::HashMap;
use std::time::Duration;

use fleet_broker::WorkerTopology;
use fleet_messages::{
    Envelope, EventData, OrderItem, OrderPlaced, PaymentDeclineReason, PaymentDeclined, Worker,
};
use fleet_workers::inventory::InventoryWorker;
use uuid::Uuid;

use crate::fleet::{Fleet, http_get};

on_both_transports!(
    worker_threads = 4;
    a_backlog_is_handled_in_batches_and_a_failing_event_costs_its_batch_nothing,
);

const ORDERS: usize = 400;
const SCARCE_ORDERS: usize = 6;
/// Events the handler refuses (payment declined for an order inventory
/// never saw): permanent, dead-lettered at once.
const UNKNOWN: usize = 8;

async fn a_backlog_is_handled_in_batches_and_a_failing_event_costs_its_batch_nothing(
    transport: &'static str,
) {
    // One slot, so a backlog builds up behind it and batches form.
    let mut fleet = Fleet::with_settings(
        transport,
        &[
            ("FLEET__WORKER__CONCURRENCY", "1"),
            ("FLEET__WORKER__MAX_BATCH", "64"),
        ],
    )
    .await;
    let settings = fleet.settings(Worker::Inventory.name());
    fleet
        .broker
        .declare_worker(&WorkerTopology::for_worker(
            Worker::Inventory,
            &settings.retry,
        ))
        .await
        .unwrap();

    // A backlog waiting before the worker starts: orders for the hot SKUs,
    // with the refused events spread among them.
    let skus = ["SKU-APPLE", "SKU-BANANA", "SKU-CHERRY", "SKU-DATE"];
    let mut events = Vec::new();
    let mut unknown = Vec::new();
    for n in 0..ORDERS {
        let order_id = Uuid::now_v7();
        let items = vec![
            OrderItem {
                sku: skus[n % skus.len()].to_owned(),
                quantity: 2,
                unit_price_cents: 100,
            },
            OrderItem {
                sku: skus[(n + 1) % skus.len()].to_owned(),
                quantity: 1,
                unit_price_cents: 100,
            },
        ];
        let placed = OrderPlaced {
            order_id,
            customer_id: format!("c{n}"),
            items,
            total_cents: 300,
        };
        events.push(Envelope::new(
            "test",
            EventData::from(placed),
            order_id,
            None,
        ));
        if n % (ORDERS / UNKNOWN) == ORDERS / UNKNOWN / 2 {
            let stranger = Uuid::now_v7();
            let declined = PaymentDeclined {
                order_id: stranger,
                reason: PaymentDeclineReason::InsufficientCredit,
            };
            let declined = Envelope::new("test", EventData::from(declined), stranger, None);
            unknown.push(declined.id);
            events.push(declined);
        }
    }
    assert_eq!(unknown.len(), UNKNOWN);
    // Orders for the scarce SKU (10 in stock), 3 units each, among the
    // others: three fit, the rest are rejected, all-or-nothing, whichever
    // batch they land in.
    let mut scarce = Vec::new();
    for n in 0..SCARCE_ORDERS {
        let order_id = Uuid::now_v7();
        scarce.push(order_id);
        let placed = OrderPlaced {
            order_id,
            customer_id: format!("s{n}"),
            items: vec![OrderItem {
                sku: "SKU-SCARCE".to_owned(),
                quantity: 3,
                unit_price_cents: 100,
            }],
            total_cents: 300,
        };
        let at = (n + 1) * events.len() / (SCARCE_ORDERS + 1);
        events.insert(
            at,
            Envelope::new("test", EventData::from(placed), order_id, None),
        );
    }
    fleet.submit(&events).await;
    fleet.add::<InventoryWorker>(1).await;

    // Every order judged once, every refused event dead-lettered.
    let db = &fleet.ctx.db;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let judged: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory_worker.outbox")
            .fetch_one(db)
            .await
            .unwrap_or(0);
        let dead = fleet.dead_letters().await[Worker::Inventory.name()];
        if judged as usize >= ORDERS + SCARCE_ORDERS && dead as usize >= UNKNOWN {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{judged} of {} orders judged, {dead} of {UNKNOWN} dead letters",
            ORDERS + SCARCE_ORDERS
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let emitted: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT (convert_from(payload, 'UTF8')::jsonb #>> '{data,order_id}')::uuid, event_type
         FROM inventory_worker.outbox",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut per_order: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (order_id, event_type) in emitted {
        per_order.entry(order_id).or_default().push(event_type);
    }
    assert_eq!(
        per_order.len(),
        ORDERS + SCARCE_ORDERS,
        "one judgement per order"
    );
    let scarce_types: Vec<String> = scarce
        .iter()
        .flat_map(|order_id| per_order.remove(order_id).unwrap_or_default())
        .collect();
    assert!(
        per_order
            .values()
            .all(|types| types == &["stock.reserved".to_owned()]),
        "each order reserved exactly once: {:?}",
        per_order.values().find(|types| types.len() != 1)
    );
    assert_eq!(scarce_types.len(), SCARCE_ORDERS, "{scarce_types:?}");
    let scarce_reserved = scarce_types
        .iter()
        .filter(|event_type| *event_type == "stock.reserved")
        .count();
    assert_eq!(
        (scarce_reserved, SCARCE_ORDERS - scarce_reserved),
        (3, SCARCE_ORDERS - 3),
        "10 scarce units fit three orders of 3: {scarce_types:?}"
    );
    assert!(
        scarce_types
            .iter()
            .all(|event_type| event_type == "stock.reserved" || event_type == "stock.rejected")
    );
    let scarce_left: i64 =
        sqlx::query_scalar("SELECT available FROM inventory_worker.stock WHERE sku = 'SKU-SCARCE'")
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(scarce_left, 1);
    let (taken, lines): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT sum(initial - available) FROM inventory_worker.stock)::bigint,
                (SELECT sum(quantity) FROM inventory_worker.reservation_lines)::bigint",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(taken, (ORDERS * 3 + 9) as i64, "stock taken once per order");
    assert_eq!(lines, taken, "reservation lines match the stock taken");

    let letters = fleet
        .broker
        .peek_dead_letters(Worker::Inventory.name(), 100)
        .await
        .unwrap();
    assert_eq!(letters.len(), UNKNOWN, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter.error_kind, "unknown_reservation", "{letter:?}");
        assert_eq!(letter.attempts, 1, "dead-lettered at once: {letter:?}");
        assert!(unknown.iter().any(|id| letter.id == id.to_string()));
    }

    // Batches did form, and refused events sent some of them back to
    // one-at-a-time handling.
    let (_, metrics) = http_get(&fleet.replicas()[0], "/metrics").await;
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let batches = sample("fleet_batch_events_count");
    let batched = sample("fleet_batch_events_sum");
    assert!(
        batches > 0.0 && batched / batches > 1.5,
        "{batched} events in {batches} batches:\n{metrics}"
    );
    assert!(
        sample("fleet_batch_fallbacks_total") >= 1.0,
        "no batch fell back:\n{metrics}"
    );
    fleet.stop().await;
}

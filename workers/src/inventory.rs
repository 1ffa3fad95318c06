//! inventory-worker: reserves stock all-or-nothing for `order.placed`, and
//! releases it again on `payment.declined` (the saga's compensation).
//!
//! SKU rows are locked in SKU order, so two reservations over the same SKUs
//! never deadlock; a reservation row per order makes redeliveries harmless.

use std::collections::BTreeMap;

use sqlx::PgConnection;
use sqlx::migrate::Migration;

use fleet_config::Settings;
use fleet_messages::{
    Envelope, EventData, OrderPlaced, StockRejected, StockRejectionReason, StockReleased,
    StockReserved, Worker,
};

use crate::handler::{Handler, HandlerError};

#[derive(Debug)]
pub struct InventoryWorker {
    seed: BTreeMap<String, i64>,
}

impl Handler for InventoryWorker {
    const WORKER: Worker = Worker::Inventory;

    fn from_settings(settings: &Settings) -> Self {
        Self {
            seed: settings.inventory.seed.clone(),
        }
    }

    fn migrations() -> Vec<Migration> {
        vec![fleet_outbox::migration(
            100,
            "stock",
            include_str!("../migrations/inventory/100_stock.sql"),
        )]
    }

    /// Seeds SKUs that are not stocked yet; existing stock is never reset,
    /// so a restart (or a replica starting late) keeps what was reserved.
    async fn prepare(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let skus: Vec<&str> = self.seed.keys().map(String::as_str).collect();
        let quantities: Vec<i64> = self.seed.values().copied().collect();
        sqlx::query(
            "INSERT INTO stock (sku, initial, available)
             SELECT sku, quantity, quantity FROM UNNEST($1::text[], $2::bigint[]) AS s(sku, quantity)
             ON CONFLICT (sku) DO NOTHING",
        )
        .bind(&skus)
        .bind(&quantities)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Locks every stock row the batch touches (ordered SKUs, and the SKUs
    /// of declined orders' reservations) in SKU order, before any handler
    /// runs: the order a single reservation already uses, now across the
    /// whole batch.
    async fn lock_batch(
        &self,
        transaction: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let mut skus: Vec<&str> = Vec::new();
        let mut declined: Vec<uuid::Uuid> = Vec::new();
        for event in events {
            match &event.data {
                EventData::OrderPlaced(placed) => {
                    skus.extend(placed.items.iter().map(|item| item.sku.as_str()));
                }
                EventData::PaymentDeclined(payment) => declined.push(payment.order_id),
                _ => {}
            }
        }
        sqlx::query(
            "SELECT 1 FROM stock
             WHERE sku = ANY($1)
                OR sku IN (SELECT sku FROM reservation_lines WHERE order_id = ANY($2))
             ORDER BY sku
             FOR UPDATE",
        )
        .bind(&skus)
        .bind(&declined)
        .execute(&mut *transaction)
        .await?;
        Ok(())
    }

    async fn handle(
        &self,
        transaction: &mut PgConnection,
        event: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        let source = Self::WORKER.name();
        let data = match &event.data {
            EventData::OrderPlaced(placed) => reserve(transaction, placed).await?,
            EventData::PaymentDeclined(declined) => release(transaction, declined.order_id).await?,
            other => {
                return Err(HandlerError::permanent(
                    "unexpected_type",
                    format!("inventory-worker does not handle {}", other.event_type()),
                ));
            }
        };
        Ok(data
            .into_iter()
            .map(|data| Envelope::caused_by(event, source, data))
            .collect())
    }
}

async fn reserve(
    transaction: &mut PgConnection,
    placed: &OrderPlaced,
) -> Result<Option<EventData>, HandlerError> {
    // One line per SKU, even if the order lists a SKU twice.
    let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
    for item in &placed.items {
        *wanted.entry(item.sku.as_str()).or_default() += i64::from(item.quantity);
    }
    let skus: Vec<&str> = wanted.keys().copied().collect();
    let quantities: Vec<i64> = wanted.values().copied().collect();
    // One statement, one round trip: lock the order's stock rows (in SKU
    // order, so that two orders never deadlock), judge all-or-nothing,
    // record the reservation with its verdict (a redelivery finds it and
    // changes nothing), take the stock and record the lines. The rows stay
    // locked until commit, and a few SKUs take most orders, so every round
    // trip saved here is time other orders for the same SKUs do not wait.
    // SKUs compare byte-wise (COLLATE "C"), as Rust strings do.
    let (claimed, unknown, short): (i64, Option<String>, Option<String>) = sqlx::query_as(
        r#"WITH wanted AS (
             SELECT * FROM UNNEST($2::text[], $3::bigint[]) AS w(sku, quantity)
         ),
         locked AS (
             SELECT s.sku, s.available, w.quantity
             FROM stock s JOIN wanted w USING (sku)
             ORDER BY s.sku
             FOR UPDATE OF s
         ),
         verdict AS (
             SELECT (SELECT min(w.sku COLLATE "C") FROM wanted w
                     WHERE NOT EXISTS (SELECT 1 FROM locked l WHERE l.sku = w.sku)) AS unknown_sku,
                    (SELECT min(sku COLLATE "C") FROM locked WHERE available < quantity) AS short_sku
         ),
         judged AS (
             SELECT CASE
                        WHEN unknown_sku IS NOT NULL
                             AND (short_sku IS NULL OR unknown_sku < short_sku) THEN 'unknown_sku'
                        WHEN short_sku IS NOT NULL THEN 'insufficient_stock'
                    END AS reason
             FROM verdict
         ),
         claimed AS (
             INSERT INTO reservations (order_id, status, reason)
             SELECT $1, CASE WHEN reason IS NULL THEN 'reserved' ELSE 'rejected' END, reason
             FROM judged
             ON CONFLICT (order_id) DO NOTHING
             RETURNING status
         ),
         taken AS (
             UPDATE stock s SET available = s.available - l.quantity
             FROM locked l
             WHERE s.sku = l.sku AND EXISTS (SELECT 1 FROM claimed WHERE status = 'reserved')
             RETURNING s.sku, l.quantity
         ),
         lines AS (
             INSERT INTO reservation_lines (order_id, sku, quantity)
             SELECT $1, sku, quantity FROM taken
         )
         SELECT (SELECT count(*) FROM claimed), unknown_sku, short_sku FROM verdict"#,
    )
    .bind(placed.order_id)
    .bind(&skus)
    .bind(&quantities)
    .fetch_one(&mut *transaction)
    .await?;
    if claimed == 0 {
        tracing::info!(order_id = %placed.order_id, "order already reserved or rejected; nothing to do");
        return Ok(None);
    }

    // The first SKU (in order) that fails the order, as the statement
    // judged it.
    let shortfall = match (unknown, short) {
        (Some(unknown), Some(short)) if short < unknown => {
            Some((StockRejectionReason::InsufficientStock, short))
        }
        (Some(unknown), _) => Some((StockRejectionReason::UnknownSku, unknown)),
        (None, Some(short)) => Some((StockRejectionReason::InsufficientStock, short)),
        (None, None) => None,
    };
    if let Some((reason, sku)) = shortfall {
        return Ok(Some(EventData::from(StockRejected {
            order_id: placed.order_id,
            reason,
            sku,
        })));
    }
    Ok(Some(EventData::from(StockReserved {
        order_id: placed.order_id,
        customer_id: placed.customer_id.clone(),
        items: placed.items.clone(),
        total_cents: placed.total_cents,
    })))
}

/// Gives a declined order's stock back, once.
async fn release(
    transaction: &mut PgConnection,
    order_id: uuid::Uuid,
) -> Result<Option<EventData>, HandlerError> {
    let released = sqlx::query(
        "UPDATE reservations SET status = 'released', updated_at = now()
         WHERE order_id = $1 AND status = 'reserved'",
    )
    .bind(order_id)
    .execute(&mut *transaction)
    .await?
    .rows_affected();
    if released == 0 {
        let known: Option<(String,)> =
            sqlx::query_as("SELECT status FROM reservations WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&mut *transaction)
                .await?;
        return match known {
            Some(_) => Ok(None),
            None => Err(HandlerError::permanent(
                "unknown_reservation",
                format!("payment declined for order {order_id}, which has no reservation"),
            )),
        };
    }
    sqlx::query(
        "UPDATE stock SET available = stock.available + l.quantity
         FROM (SELECT sku, quantity FROM reservation_lines WHERE order_id = $1 ORDER BY sku) AS l
         WHERE stock.sku = l.sku",
    )
    .bind(order_id)
    .execute(&mut *transaction)
    .await?;
    Ok(Some(EventData::from(StockReleased { order_id })))
}

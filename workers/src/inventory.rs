//! inventory-worker: reserves stock all-or-nothing for `order.placed`, and
//! releases it again on `payment.declined` (the saga's compensation).
//!
//! SKU rows are locked in SKU order, so two reservations over the same SKUs
//! never deadlock; a reservation row per order makes redeliveries harmless.
//! The reservation itself is a function in the worker's schema
//! (`lock_and_reserve_orders`, migrations 101 to 103) that locks and judges
//! any number of orders in one call: a few SKUs take most orders, and every
//! round trip made while their rows are locked is time every other order
//! waits. A batch whose demand fits is judged in one statement; others
//! order by order.

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
        vec![
            fleet_outbox::migration(
                100,
                "stock",
                include_str!("../migrations/inventory/100_stock.sql"),
            ),
            fleet_outbox::migration(
                101,
                "reserve_orders",
                include_str!("../migrations/inventory/101_reserve_orders.sql"),
            ),
            fleet_outbox::migration(
                102,
                "lock_and_reserve_orders",
                include_str!("../migrations/inventory/102_lock_and_reserve_orders.sql"),
            ),
            fleet_outbox::migration(
                103,
                "reserve_fitting_batches_at_once",
                include_str!("../migrations/inventory/103_reserve_fitting_batches_at_once.sql"),
            ),
        ]
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
    /// whole batch. Only a batch with a release needs it: a batch of
    /// reservations alone is locked the same way by its one call of
    /// `lock_and_reserve_orders`, a round trip fewer while the hot rows
    /// are held.
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
        if declined.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "SELECT 1 FROM stock
             WHERE sku = ANY($1)
                OR sku IN (SELECT sku FROM reservation_lines WHERE order_id = ANY($2))
             ORDER BY sku
             FOR UPDATE",
        )
        .persistent(false) // planned for these keys (see the crate docs)
        .bind(&skus)
        .bind(&declined)
        .execute(&mut *transaction)
        .await?;
        Ok(())
    }

    /// Consecutive `order.placed` events are reserved in one call; a
    /// `payment.declined` between them is released on its own, in its place.
    async fn handle_batch(
        &self,
        transaction: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<Vec<Vec<Envelope>>, HandlerError> {
        let source = Self::WORKER.name();
        let mut emitted: Vec<Vec<Envelope>> = Vec::with_capacity(events.len());
        let mut rest = events;
        while let Some(first) = rest.first() {
            let placed: Vec<&OrderPlaced> = rest
                .iter()
                .map_while(|event| match &event.data {
                    EventData::OrderPlaced(placed) => Some(placed),
                    _ => None,
                })
                .collect();
            if placed.is_empty() {
                let data = match &first.data {
                    EventData::PaymentDeclined(declined) => {
                        release(transaction, declined.order_id).await?
                    }
                    other => {
                        return Err(HandlerError::permanent(
                            "unexpected_type",
                            format!("inventory-worker does not handle {}", other.event_type()),
                        ));
                    }
                };
                emitted.push(
                    data.into_iter()
                        .map(|data| Envelope::caused_by(first, source, data))
                        .collect(),
                );
                rest = &rest[1..];
                continue;
            }
            let verdicts = reserve(transaction, &placed).await?;
            for (event, data) in rest.iter().zip(verdicts) {
                emitted.push(
                    data.into_iter()
                        .map(|data| Envelope::caused_by(event, source, data))
                        .collect(),
                );
            }
            rest = &rest[placed.len()..];
        }
        Ok(emitted)
    }
}

/// Reserves stock for consecutive `order.placed` events: one call of the
/// schema's `lock_and_reserve_orders` (migrations 101 to 103), which locks
/// their stock rows in SKU order and judges them in order, each
/// all-or-nothing, so the hot stock rows stay locked for one round trip
/// however many orders there are. Returns what each order emits:
/// nothing for one that was already reserved or rejected (a redelivery).
async fn reserve(
    transaction: &mut PgConnection,
    orders: &[&OrderPlaced],
) -> Result<Vec<Option<EventData>>, HandlerError> {
    let order_ids: Vec<uuid::Uuid> = orders.iter().map(|placed| placed.order_id).collect();
    let mut line_order: Vec<i32> = Vec::new();
    let mut line_skus: Vec<&str> = Vec::new();
    let mut line_quantities: Vec<i64> = Vec::new();
    for (position, placed) in orders.iter().enumerate() {
        // One line per SKU, even if the order lists a SKU twice.
        let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
        for item in &placed.items {
            *wanted.entry(item.sku.as_str()).or_default() += i64::from(item.quantity);
        }
        // Batches hold at most worker.max_batch (<= 1,000) events.
        let index = i32::try_from(position + 1).unwrap_or(i32::MAX);
        for (sku, quantity) in wanted {
            line_order.push(index);
            line_skus.push(sku);
            line_quantities.push(quantity);
        }
    }
    let verdicts: Vec<(uuid::Uuid, bool, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT order_id, claimed, unknown_sku, short_sku
         FROM lock_and_reserve_orders($1::uuid[], $2::int[], $3::text[], $4::bigint[])",
    )
    .bind(&order_ids)
    .bind(&line_order)
    .bind(&line_skus)
    .bind(&line_quantities)
    .fetch_all(&mut *transaction)
    .await?;
    if verdicts.len() != orders.len() {
        return Err(HandlerError::permanent(
            "invariant",
            format!(
                "reserve_orders judged {} of {} orders",
                verdicts.len(),
                orders.len()
            ),
        ));
    }
    Ok(orders
        .iter()
        .zip(verdicts)
        .map(|(placed, (_, claimed, unknown, short))| {
            if !claimed {
                tracing::info!(order_id = %placed.order_id, "order already reserved or rejected; nothing to do");
                return None;
            }
            // The first SKU (in order) that fails the order, as the
            // function judged it.
            let shortfall = match (unknown, short) {
                (Some(unknown), Some(short)) if short < unknown => {
                    Some((StockRejectionReason::InsufficientStock, short))
                }
                (Some(unknown), _) => Some((StockRejectionReason::UnknownSku, unknown)),
                (None, Some(short)) => Some((StockRejectionReason::InsufficientStock, short)),
                (None, None) => None,
            };
            Some(match shortfall {
                Some((reason, sku)) => EventData::from(StockRejected {
                    order_id: placed.order_id,
                    reason,
                    sku,
                }),
                None => EventData::from(StockReserved {
                    order_id: placed.order_id,
                    customer_id: placed.customer_id.clone(),
                    items: placed.items.clone(),
                    total_cents: placed.total_cents,
                }),
            })
        })
        .collect())
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
    .persistent(false) // run with the stock rows locked (see the crate docs)
    .bind(order_id)
    .execute(&mut *transaction)
    .await?
    .rows_affected();
    if released == 0 {
        let known: Option<(String,)> =
            sqlx::query_as("SELECT status FROM reservations WHERE order_id = $1")
                .persistent(false)
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
    .persistent(false)
    .bind(order_id)
    .execute(&mut *transaction)
    .await?;
    Ok(Some(EventData::from(StockReleased { order_id })))
}

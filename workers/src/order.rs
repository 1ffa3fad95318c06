//! order-worker: owns the order state machine.
//!
//! `order.submitted` → `placed` (emits `order.placed`) or `rejected` (emits
//! `order.rejected`); then `stock.rejected` or `payment.declined` →
//! `cancelled` (emits `order.cancelled`), `payment.captured` → `confirmed`
//! (emits `order.confirmed`). Transitions only leave `placed`, so a late or
//! repeated event for a finished order changes nothing.

use sqlx::PgConnection;
use sqlx::migrate::Migration;

use fleet_config::Settings;
use fleet_messages::{
    CancellationReason, Envelope, EventData, OrderCancelled, OrderConfirmed, OrderItem,
    OrderPlaced, OrderRejected, OrderSubmitted, RejectionReason, StockRejectionReason, Worker,
};

use crate::handler::{Handler, HandlerError};

#[derive(Debug)]
pub struct OrderWorker {
    max_total_cents: i64,
}

impl Handler for OrderWorker {
    const WORKER: Worker = Worker::Order;

    fn from_settings(settings: &Settings) -> Self {
        Self {
            max_total_cents: settings.order.max_total_cents,
        }
    }

    fn migrations() -> Vec<Migration> {
        vec![fleet_outbox::migration(
            100,
            "orders",
            include_str!("../migrations/order/100_orders.sql"),
        )]
    }

    async fn handle(
        &self,
        transaction: &mut PgConnection,
        event: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        let source = Self::WORKER.name();
        let emit = |data: EventData| Envelope::caused_by(event, source, data);
        match &event.data {
            EventData::OrderSubmitted(submitted) => self
                .submit(transaction, event, submitted)
                .await
                .map(|data| data.map(emit).into_iter().collect()),
            EventData::StockRejected(rejected) => {
                let reason = match rejected.reason {
                    StockRejectionReason::UnknownSku => CancellationReason::UnknownSku,
                    StockRejectionReason::InsufficientStock => {
                        CancellationReason::InsufficientStock
                    }
                };
                cancel(transaction, rejected.order_id, reason)
                    .await
                    .map(|data| data.map(emit).into_iter().collect())
            }
            EventData::PaymentDeclined(declined) => cancel(
                transaction,
                declined.order_id,
                CancellationReason::PaymentDeclined,
            )
            .await
            .map(|data| data.map(emit).into_iter().collect()),
            EventData::PaymentCaptured(captured) => {
                let confirmed: Option<(i64,)> = sqlx::query_as(
                    "UPDATE orders SET status = 'confirmed', updated_at = now()
                     WHERE order_id = $1 AND status = 'placed' RETURNING total_cents",
                )
                .bind(captured.order_id)
                .fetch_optional(&mut *transaction)
                .await?;
                match confirmed {
                    Some((total_cents,)) => Ok(vec![emit(EventData::from(OrderConfirmed {
                        order_id: captured.order_id,
                        total_cents,
                    }))]),
                    None => finished_or_unknown(transaction, captured.order_id)
                        .await
                        .map(|()| Vec::new()),
                }
            }
            other => Err(HandlerError::permanent(
                "unexpected_type",
                format!("order-worker does not handle {}", other.event_type()),
            )),
        }
    }
}

impl OrderWorker {
    /// Checks the business rules and records the order. A second submission
    /// of an order id (with any event id) finds the row and emits nothing.
    async fn submit(
        &self,
        transaction: &mut PgConnection,
        event: &Envelope,
        submitted: &OrderSubmitted,
    ) -> Result<Option<EventData>, HandlerError> {
        let verdict = self.check(submitted);
        let (status, total_cents, reason) = match &verdict {
            Ok(placed) => ("placed", placed.total_cents, None),
            Err(reason) => ("rejected", 0, Some(reason.as_str())),
        };
        let items = serde_json::to_value(
            submitted
                .items
                .iter()
                .map(|item| serde_json::json!({"sku": item.sku, "quantity": item.quantity, "unit_price_cents": item.unit_price_cents}))
                .collect::<Vec<_>>(),
        )
        .map_err(|error| HandlerError::permanent("invalid_data", error.to_string()))?;
        let inserted = sqlx::query(
            "INSERT INTO orders (order_id, customer_id, status, total_cents, items, reason, submitted_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(submitted.order_id)
        .bind(&submitted.customer_id)
        .bind(status)
        .bind(total_cents)
        .bind(items)
        .bind(reason)
        .bind(event.id)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if inserted == 0 {
            tracing::info!(order_id = %submitted.order_id, "order submitted again; no second saga");
            return Ok(None);
        }
        Ok(Some(match verdict {
            Ok(placed) => EventData::from(placed),
            Err(reason) => EventData::from(OrderRejected {
                order_id: submitted.order_id,
                reason,
            }),
        }))
    }

    /// The business rules of the contract: at least one item, quantities of
    /// at least 1, prices of at least 0, a total within the maximum.
    fn check(&self, submitted: &OrderSubmitted) -> Result<OrderPlaced, RejectionReason> {
        if submitted.items.is_empty() {
            return Err(RejectionReason::NoItems);
        }
        let mut items = Vec::with_capacity(submitted.items.len());
        let mut total: i64 = 0;
        for item in &submitted.items {
            let quantity = u32::try_from(item.quantity)
                .ok()
                .filter(|quantity| *quantity >= 1)
                .ok_or(RejectionReason::InvalidQuantity)?;
            if item.unit_price_cents < 0 {
                return Err(RejectionReason::NegativePrice);
            }
            // Overflow can only mean a total far beyond any maximum.
            total = i64::from(quantity)
                .checked_mul(item.unit_price_cents)
                .and_then(|line| total.checked_add(line))
                .ok_or(RejectionReason::TotalOverLimit)?;
            items.push(OrderItem {
                sku: item.sku.clone(),
                quantity,
                unit_price_cents: item.unit_price_cents,
            });
        }
        if total > self.max_total_cents {
            return Err(RejectionReason::TotalOverLimit);
        }
        Ok(OrderPlaced {
            order_id: submitted.order_id,
            customer_id: submitted.customer_id.clone(),
            items,
            total_cents: total,
        })
    }
}

async fn cancel(
    transaction: &mut PgConnection,
    order_id: uuid::Uuid,
    reason: CancellationReason,
) -> Result<Option<EventData>, HandlerError> {
    let cancelled = sqlx::query(
        "UPDATE orders SET status = 'cancelled', reason = $2, updated_at = now()
         WHERE order_id = $1 AND status = 'placed'",
    )
    .bind(order_id)
    .bind(reason.as_str())
    .execute(&mut *transaction)
    .await?
    .rows_affected();
    if cancelled == 1 {
        return Ok(Some(EventData::from(OrderCancelled { order_id, reason })));
    }
    finished_or_unknown(transaction, order_id)
        .await
        .map(|()| None)
}

/// An event for an order that is no longer `placed` is late or repeated:
/// nothing to do. One for an order this worker never saw contradicts the
/// saga (those events are only emitted after `order.placed`): dead-letter it.
async fn finished_or_unknown(
    transaction: &mut PgConnection,
    order_id: uuid::Uuid,
) -> Result<(), HandlerError> {
    let status: Option<(String,)> = sqlx::query_as("SELECT status FROM orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(&mut *transaction)
        .await?;
    match status {
        Some((status,)) => {
            tracing::info!(%order_id, %status, "event for a finished order ignored");
            Ok(())
        }
        None => Err(HandlerError::permanent(
            "unknown_order",
            format!("order {order_id} was never placed"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_messages::SubmittedItem;

    fn submitted(items: Vec<(i64, i64)>) -> OrderSubmitted {
        OrderSubmitted {
            order_id: uuid::Uuid::now_v7(),
            customer_id: "c".to_owned(),
            items: items
                .into_iter()
                .map(|(quantity, unit_price_cents)| SubmittedItem {
                    sku: "SKU-APPLE".to_owned(),
                    quantity,
                    unit_price_cents,
                })
                .collect(),
        }
    }

    #[test]
    fn business_rules_reject_what_the_contract_lists() {
        let worker = OrderWorker {
            max_total_cents: 1000,
        };
        assert_eq!(
            worker.check(&submitted(vec![])).unwrap_err(),
            RejectionReason::NoItems
        );
        assert_eq!(
            worker.check(&submitted(vec![(0, 5)])).unwrap_err(),
            RejectionReason::InvalidQuantity
        );
        assert_eq!(
            worker.check(&submitted(vec![(-2, 5)])).unwrap_err(),
            RejectionReason::InvalidQuantity
        );
        assert_eq!(
            worker.check(&submitted(vec![(1, -1)])).unwrap_err(),
            RejectionReason::NegativePrice
        );
        assert_eq!(
            worker.check(&submitted(vec![(3, 400)])).unwrap_err(),
            RejectionReason::TotalOverLimit
        );
        assert_eq!(
            worker
                .check(&submitted(vec![(i64::from(u32::MAX), i64::MAX)]))
                .unwrap_err(),
            RejectionReason::TotalOverLimit
        );
        let placed = worker.check(&submitted(vec![(2, 300), (1, 400)])).unwrap();
        assert_eq!(placed.total_cents, 1000);
        assert_eq!(placed.items.len(), 2);
    }
}

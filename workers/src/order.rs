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

    /// One event is a batch of one: the same statements.
    /// Splits the batch into runs of one kind of transition (submit,
    /// confirm, cancel) over distinct orders, in order, and makes each run
    /// one statement: a batch of a hundred events costs a few statements,
    /// not a hundred.
    async fn handle_batch(
        &self,
        transaction: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<Vec<Vec<Envelope>>, HandlerError> {
        let source = Self::WORKER.name();
        let mut emitted = Vec::with_capacity(events.len());
        let mut rest = events;
        while let Some(run) = next_run(rest)? {
            let (now, later) = rest.split_at(run.len);
            let results = match run.kind {
                Transition::Submit => self.submit(transaction, now).await?,
                Transition::Confirm => confirm(transaction, now).await?,
                Transition::Cancel => cancel(transaction, now).await?,
            };
            emitted.extend(now.iter().zip(results).map(|(event, data)| {
                data.into_iter()
                    .map(|data| Envelope::caused_by(event, source, data))
                    .collect::<Vec<_>>()
            }));
            rest = later;
        }
        Ok(emitted)
    }
}

/// What an event does to its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transition {
    /// `order.submitted`: record the order, placed or rejected.
    Submit,
    /// `payment.captured`: placed → confirmed.
    Confirm,
    /// `stock.rejected`, `payment.declined`: placed → cancelled.
    Cancel,
}

/// The events at the head of a batch that one statement can handle: one
/// kind of transition, no order twice (a second event for an order must
/// see what the first one did).
struct Run {
    kind: Transition,
    len: usize,
}

fn next_run(events: &[&Envelope]) -> Result<Option<Run>, HandlerError> {
    let Some(first) = events.first() else {
        return Ok(None);
    };
    let kind = transition(first)?.0;
    let mut orders = std::collections::HashSet::new();
    let mut len = 0;
    for event in events {
        let (this_kind, order_id) = transition(event)?;
        if this_kind != kind || !orders.insert(order_id) {
            break;
        }
        len += 1;
    }
    Ok(Some(Run { kind, len }))
}

fn transition(event: &Envelope) -> Result<(Transition, uuid::Uuid), HandlerError> {
    match &event.data {
        EventData::OrderSubmitted(submitted) => Ok((Transition::Submit, submitted.order_id)),
        EventData::PaymentCaptured(captured) => Ok((Transition::Confirm, captured.order_id)),
        EventData::StockRejected(rejected) => Ok((Transition::Cancel, rejected.order_id)),
        EventData::PaymentDeclined(declined) => Ok((Transition::Cancel, declined.order_id)),
        other => Err(HandlerError::permanent(
            "unexpected_type",
            format!("order-worker does not handle {}", other.event_type()),
        )),
    }
}

impl OrderWorker {
    /// Checks the business rules and records the orders in one insert. A
    /// second submission of an order id (with any event id) finds the row
    /// and emits nothing.
    async fn submit(
        &self,
        transaction: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<Vec<Option<EventData>>, HandlerError> {
        let mut order_ids = Vec::with_capacity(events.len());
        let mut customers = Vec::with_capacity(events.len());
        let mut statuses = Vec::with_capacity(events.len());
        let mut totals = Vec::with_capacity(events.len());
        let mut items = Vec::with_capacity(events.len());
        let mut reasons = Vec::with_capacity(events.len());
        let mut submitted_by = Vec::with_capacity(events.len());
        let mut verdicts = Vec::with_capacity(events.len());
        for event in events {
            let EventData::OrderSubmitted(submitted) = &event.data else {
                return Err(HandlerError::permanent(
                    "invariant",
                    "a run of submissions holds another event",
                ));
            };
            let verdict = self.check(submitted);
            let (status, total_cents, reason) = match &verdict {
                Ok(placed) => ("placed", placed.total_cents, None),
                Err(reason) => ("rejected", 0, Some(reason.as_str())),
            };
            let lines: Vec<serde_json::Value> = submitted
                .items
                .iter()
                .map(|item| serde_json::json!({"sku": item.sku, "quantity": item.quantity, "unit_price_cents": item.unit_price_cents}))
                .collect();
            order_ids.push(submitted.order_id);
            customers.push(submitted.customer_id.as_str());
            statuses.push(status);
            totals.push(total_cents);
            items.push(serde_json::Value::Array(lines).to_string());
            reasons.push(reason);
            submitted_by.push(event.id);
            verdicts.push((submitted.order_id, verdict));
        }
        let inserted: Vec<(uuid::Uuid,)> = sqlx::query_as(
            "INSERT INTO orders (order_id, customer_id, status, total_cents, items, reason, submitted_by)
             SELECT o.order_id, o.customer_id, o.status, o.total_cents, o.items::jsonb, o.reason, o.submitted_by
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::uuid[])
                 AS o(order_id, customer_id, status, total_cents, items, reason, submitted_by)
             ON CONFLICT (order_id) DO NOTHING
             RETURNING order_id",
        )
        .bind(&order_ids)
        .bind(&customers)
        .bind(&statuses)
        .bind(&totals)
        .bind(&items)
        .bind(&reasons)
        .bind(&submitted_by)
        .fetch_all(&mut *transaction)
        .await?;
        let inserted: std::collections::HashSet<uuid::Uuid> =
            inserted.into_iter().map(|(order_id,)| order_id).collect();
        Ok(verdicts
            .into_iter()
            .map(|(order_id, verdict)| {
                if !inserted.contains(&order_id) {
                    tracing::info!(%order_id, "order submitted again; no second saga");
                    return None;
                }
                Some(match verdict {
                    Ok(placed) => EventData::from(placed),
                    Err(reason) => EventData::from(OrderRejected { order_id, reason }),
                })
            })
            .collect())
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

/// `payment.captured`: placed orders become confirmed, in one update.
async fn confirm(
    transaction: &mut PgConnection,
    events: &[&Envelope],
) -> Result<Vec<Option<EventData>>, HandlerError> {
    let order_ids = events
        .iter()
        .map(|event| transition(event).map(|(_, order_id)| order_id))
        .collect::<Result<Vec<_>, _>>()?;
    let confirmed: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "UPDATE orders AS o SET status = 'confirmed', updated_at = now()
         FROM UNNEST($1::uuid[]) AS c(order_id)
         WHERE o.order_id = c.order_id AND o.status = 'placed'
         RETURNING o.order_id, o.total_cents",
    )
    .persistent(false) // planned for these keys (see the crate docs)
    .bind(&order_ids)
    .fetch_all(&mut *transaction)
    .await?;
    let confirmed: std::collections::HashMap<uuid::Uuid, i64> = confirmed.into_iter().collect();
    finished_or_unknown(transaction, &order_ids, |order_id| {
        confirmed.contains_key(order_id)
    })
    .await?;
    Ok(order_ids
        .iter()
        .map(|order_id| {
            confirmed.get(order_id).map(|total_cents| {
                EventData::from(OrderConfirmed {
                    order_id: *order_id,
                    total_cents: *total_cents,
                })
            })
        })
        .collect())
}

/// `stock.rejected` and `payment.declined`: placed orders become
/// cancelled with the event's reason, in one update.
async fn cancel(
    transaction: &mut PgConnection,
    events: &[&Envelope],
) -> Result<Vec<Option<EventData>>, HandlerError> {
    let mut order_ids = Vec::with_capacity(events.len());
    let mut reasons = Vec::with_capacity(events.len());
    for event in events {
        let (order_id, reason) = match &event.data {
            EventData::StockRejected(rejected) => (
                rejected.order_id,
                match rejected.reason {
                    StockRejectionReason::UnknownSku => CancellationReason::UnknownSku,
                    StockRejectionReason::InsufficientStock => {
                        CancellationReason::InsufficientStock
                    }
                },
            ),
            EventData::PaymentDeclined(declined) => {
                (declined.order_id, CancellationReason::PaymentDeclined)
            }
            other => {
                return Err(HandlerError::permanent(
                    "invariant",
                    format!("a run of cancellations holds {}", other.event_type()),
                ));
            }
        };
        order_ids.push(order_id);
        reasons.push(reason);
    }
    let texts: Vec<&str> = reasons.iter().map(|reason| reason.as_str()).collect();
    let cancelled: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "UPDATE orders AS o SET status = 'cancelled', reason = c.reason, updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[]) AS c(order_id, reason)
         WHERE o.order_id = c.order_id AND o.status = 'placed'
         RETURNING o.order_id",
    )
    .persistent(false)
    .bind(&order_ids)
    .bind(&texts)
    .fetch_all(&mut *transaction)
    .await?;
    let cancelled: std::collections::HashSet<uuid::Uuid> =
        cancelled.into_iter().map(|(order_id,)| order_id).collect();
    finished_or_unknown(transaction, &order_ids, |order_id| {
        cancelled.contains(order_id)
    })
    .await?;
    Ok(order_ids
        .into_iter()
        .zip(reasons)
        .map(|(order_id, reason)| {
            cancelled
                .contains(&order_id)
                .then(|| EventData::from(OrderCancelled { order_id, reason }))
        })
        .collect())
}

/// An event for an order that is no longer `placed` is late or repeated:
/// nothing to do. One for an order this worker never saw contradicts the
/// saga (those events are only emitted after `order.placed`): dead-letter
/// it. Looks only at the orders `changed` says were not updated, in one
/// query, and makes none when all were.
async fn finished_or_unknown(
    transaction: &mut PgConnection,
    order_ids: &[uuid::Uuid],
    changed: impl Fn(&uuid::Uuid) -> bool,
) -> Result<(), HandlerError> {
    let unchanged: Vec<uuid::Uuid> = order_ids
        .iter()
        .filter(|order_id| !changed(order_id))
        .copied()
        .collect();
    if unchanged.is_empty() {
        return Ok(());
    }
    let known: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT order_id, status FROM orders WHERE order_id = ANY($1)")
            .persistent(false)
            .bind(&unchanged)
            .fetch_all(&mut *transaction)
            .await?;
    for (order_id, status) in &known {
        tracing::info!(%order_id, %status, "event for a finished order ignored");
    }
    match unchanged
        .iter()
        .find(|order_id| !known.iter().any(|(known, _)| known == *order_id))
    {
        Some(order_id) => Err(HandlerError::permanent(
            "unknown_order",
            format!("order {order_id} was never placed"),
        )),
        None => Ok(()),
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

//! payment-worker: captures an order's total against its customer's credit,
//! or declines it when the remaining credit is too small.
//!
//! The charge itself is a function in the worker's schema (`charge_orders`,
//! migration 101) that judges any number of orders in one call: the
//! customer row is the lock that serializes one customer's charges, and
//! every round trip made while holding it is time the next charge waits.

use sqlx::PgConnection;
use sqlx::migrate::Migration;

use fleet_config::Settings;
use fleet_messages::{
    Envelope, EventData, PaymentCaptured, PaymentDeclineReason, PaymentDeclined, StockReserved,
    Worker,
};

use crate::handler::{Handler, HandlerError};

#[derive(Debug)]
pub struct PaymentWorker {
    credit_limit_cents: i64,
}

impl Handler for PaymentWorker {
    const WORKER: Worker = Worker::Payment;

    fn from_settings(settings: &Settings) -> Self {
        Self {
            credit_limit_cents: settings.payment.credit_limit_cents,
        }
    }

    fn migrations() -> Vec<Migration> {
        vec![
            fleet_outbox::migration(
                100,
                "payments",
                include_str!("../migrations/payment/100_payments.sql"),
            ),
            fleet_outbox::migration(
                101,
                "charge_orders",
                include_str!("../migrations/payment/101_charge_orders.sql"),
            ),
        ]
    }

    /// One event is a batch of one: the same single call.
    /// Charges the whole batch in one call of `charge_orders` (migration
    /// 101), which also creates and locks the batch's customers in id order
    /// first, so no `lock_batch` is needed.
    async fn handle_batch(
        &self,
        transaction: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<Vec<Vec<Envelope>>, HandlerError> {
        let reserved = events
            .iter()
            .map(|event| match &event.data {
                EventData::StockReserved(reserved) => Ok(reserved),
                other => Err(HandlerError::permanent(
                    "unexpected_type",
                    format!("payment-worker does not handle {}", other.event_type()),
                )),
            })
            .collect::<Result<Vec<&StockReserved>, HandlerError>>()?;
        let verdicts = self.charge(transaction, &reserved).await?;
        Ok(events
            .iter()
            .zip(verdicts)
            .map(|(event, data)| {
                data.into_iter()
                    .map(|data| Envelope::caused_by(event, Self::WORKER.name(), data))
                    .collect()
            })
            .collect())
    }
}

impl PaymentWorker {
    /// Returns what each order emits: nothing for one already charged or
    /// declined (a redelivery).
    async fn charge(
        &self,
        transaction: &mut PgConnection,
        orders: &[&StockReserved],
    ) -> Result<Vec<Option<EventData>>, HandlerError> {
        let order_ids: Vec<uuid::Uuid> = orders.iter().map(|order| order.order_id).collect();
        let payment_ids: Vec<uuid::Uuid> = orders.iter().map(|_| uuid::Uuid::now_v7()).collect();
        let customer_ids: Vec<&str> = orders
            .iter()
            .map(|order| order.customer_id.as_str())
            .collect();
        let amounts: Vec<i64> = orders.iter().map(|order| order.total_cents).collect();
        let verdicts: Vec<(uuid::Uuid, bool, bool)> = sqlx::query_as(
            "SELECT order_id, claimed, captured
             FROM charge_orders($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5)",
        )
        .bind(&order_ids)
        .bind(&payment_ids)
        .bind(&customer_ids)
        .bind(&amounts)
        .bind(self.credit_limit_cents)
        .fetch_all(&mut *transaction)
        .await?;
        if verdicts.len() != orders.len() {
            return Err(HandlerError::permanent(
                "invariant",
                format!(
                    "charge_orders judged {} of {} orders",
                    verdicts.len(),
                    orders.len()
                ),
            ));
        }
        Ok(orders
            .iter()
            .zip(payment_ids)
            .zip(verdicts)
            .map(|((order, payment_id), (_, claimed, captured))| {
                if !claimed {
                    tracing::info!(order_id = %order.order_id, "order already charged or declined; nothing to do");
                    return None;
                }
                Some(if captured {
                    EventData::from(PaymentCaptured {
                        order_id: order.order_id,
                        payment_id,
                        amount_cents: order.total_cents,
                    })
                } else {
                    EventData::from(PaymentDeclined {
                        order_id: order.order_id,
                        reason: PaymentDeclineReason::InsufficientCredit,
                    })
                })
            })
            .collect())
    }
}

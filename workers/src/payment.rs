//! payment-worker: captures an order's total against its customer's credit,
//! or declines it when the remaining credit is too small.

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
        vec![fleet_outbox::migration(
            100,
            "payments",
            include_str!("../migrations/payment/100_payments.sql"),
        )]
    }

    /// Creates the batch's new customers and locks all its customers' rows
    /// in id order before any handler runs, so two batches charging the
    /// same customers queue instead of deadlocking.
    async fn lock_batch(
        &self,
        transaction: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let mut customers: Vec<&str> = events
            .iter()
            .filter_map(|event| match &event.data {
                EventData::StockReserved(reserved) => Some(reserved.customer_id.as_str()),
                _ => None,
            })
            .collect();
        customers.sort_unstable();
        customers.dedup();
        sqlx::query(
            "INSERT INTO customers (customer_id, credit_limit_cents)
             SELECT id, $2 FROM UNNEST($1::text[]) AS ids(id) ORDER BY id
             ON CONFLICT (customer_id) DO NOTHING",
        )
        .bind(&customers)
        .bind(self.credit_limit_cents)
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "SELECT 1 FROM customers WHERE customer_id = ANY($1) ORDER BY customer_id FOR UPDATE",
        )
        .bind(&customers)
        .execute(&mut *transaction)
        .await?;
        Ok(())
    }

    async fn handle(
        &self,
        transaction: &mut PgConnection,
        event: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        let EventData::StockReserved(reserved) = &event.data else {
            return Err(HandlerError::permanent(
                "unexpected_type",
                format!("payment-worker does not handle {}", event.event_type()),
            ));
        };
        let data = self.charge(transaction, reserved).await?;
        Ok(data
            .into_iter()
            .map(|data| Envelope::caused_by(event, Self::WORKER.name(), data))
            .collect())
    }
}

impl PaymentWorker {
    async fn charge(
        &self,
        transaction: &mut PgConnection,
        reserved: &StockReserved,
    ) -> Result<Option<EventData>, HandlerError> {
        let already: Option<(String,)> =
            sqlx::query_as("SELECT status FROM payments WHERE order_id = $1")
                .bind(reserved.order_id)
                .fetch_optional(&mut *transaction)
                .await?;
        if already.is_some() {
            tracing::info!(order_id = %reserved.order_id, "order already charged or declined; nothing to do");
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO customers (customer_id, credit_limit_cents) VALUES ($1, $2)
             ON CONFLICT (customer_id) DO NOTHING",
        )
        .bind(&reserved.customer_id)
        .bind(self.credit_limit_cents)
        .execute(&mut *transaction)
        .await?;
        // The customer row is the lock that serializes one customer's charges.
        let (limit, captured): (i64, i64) = sqlx::query_as(
            "SELECT credit_limit_cents, captured_cents FROM customers WHERE customer_id = $1 FOR UPDATE",
        )
        .bind(&reserved.customer_id)
        .fetch_one(&mut *transaction)
        .await?;
        let payment_id = uuid::Uuid::now_v7();
        let within_credit = captured
            .checked_add(reserved.total_cents)
            .is_some_and(|after| after <= limit);
        let status = if within_credit {
            "captured"
        } else {
            "declined"
        };
        if within_credit {
            sqlx::query(
                "UPDATE customers SET captured_cents = captured_cents + $2 WHERE customer_id = $1",
            )
            .bind(&reserved.customer_id)
            .bind(reserved.total_cents)
            .execute(&mut *transaction)
            .await?;
        }
        sqlx::query(
            "INSERT INTO payments (order_id, payment_id, customer_id, amount_cents, status)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(reserved.order_id)
        .bind(payment_id)
        .bind(&reserved.customer_id)
        .bind(reserved.total_cents)
        .bind(status)
        .execute(&mut *transaction)
        .await?;
        Ok(Some(if within_credit {
            EventData::from(PaymentCaptured {
                order_id: reserved.order_id,
                payment_id,
                amount_cents: reserved.total_cents,
            })
        } else {
            EventData::from(PaymentDeclined {
                order_id: reserved.order_id,
                reason: PaymentDeclineReason::InsufficientCredit,
            })
        }))
    }
}

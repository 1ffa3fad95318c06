//! notification-worker: exactly one notification per terminal order.
//!
//! The `notifications` row (primary key `order_id`) is the record that makes
//! it exactly one; the [`NotificationSink`] is where it goes. The sink is
//! called inside the transaction, so a sink with side effects outside the
//! database sees a notification at least once (again after a rollback); the
//! default sink only logs.

use std::sync::Arc;

use sqlx::PgConnection;
use sqlx::migrate::Migration;
use uuid::Uuid;

use fleet_config::Settings;
use fleet_messages::{Envelope, EventData, NotificationSent, NotificationTemplate, Worker};

use crate::handler::{Handler, HandlerError};

/// One notification to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub order_id: Uuid,
    pub template: NotificationTemplate,
}

/// Where notifications go: email, SMS, a webhook. Implementations must be
/// idempotent per `order_id` if they have external effects.
pub trait NotificationSink: Send + Sync + std::fmt::Debug + 'static {
    fn send(&self, notification: &Notification);
}

/// The default sink: a structured log line.
#[derive(Debug, Default)]
pub struct LogSink;

impl NotificationSink for LogSink {
    fn send(&self, notification: &Notification) {
        tracing::info!(
            order_id = %notification.order_id,
            template = notification.template.as_str(),
            "notification sent"
        );
    }
}

#[derive(Debug)]
pub struct NotificationWorker {
    sink: Arc<dyn NotificationSink>,
}

impl NotificationWorker {
    /// A worker that sends through `sink` instead of the log.
    pub fn with_sink(sink: Arc<dyn NotificationSink>) -> Self {
        Self { sink }
    }
}

impl Handler for NotificationWorker {
    const WORKER: Worker = Worker::Notification;

    fn from_settings(_: &Settings) -> Self {
        Self::with_sink(Arc::new(LogSink))
    }

    fn migrations() -> Vec<Migration> {
        vec![fleet_outbox::migration(
            100,
            "notifications",
            include_str!("../migrations/notification/100_notifications.sql"),
        )]
    }

    async fn handle(
        &self,
        transaction: &mut PgConnection,
        event: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        let (order_id, template) = match &event.data {
            EventData::OrderConfirmed(confirmed) => {
                (confirmed.order_id, NotificationTemplate::OrderConfirmed)
            }
            EventData::OrderCancelled(cancelled) => {
                (cancelled.order_id, NotificationTemplate::OrderCancelled)
            }
            other => {
                return Err(HandlerError::permanent(
                    "unexpected_type",
                    format!("notification-worker does not handle {}", other.event_type()),
                ));
            }
        };
        let recorded = sqlx::query(
            "INSERT INTO notifications (order_id, template) VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(template.as_str())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if recorded == 0 {
            tracing::info!(%order_id, "order already notified; nothing to do");
            return Ok(Vec::new());
        }
        self.sink.send(&Notification { order_id, template });
        Ok(vec![Envelope::caused_by(
            event,
            Self::WORKER.name(),
            EventData::from(NotificationSent { order_id, template }),
        )])
    }
}

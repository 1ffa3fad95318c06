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

    /// One event is a batch of one: the same statement.
    /// Records the batch's notifications in one insert; the sink hears of
    /// each one recorded now, and only those. An order named twice in a
    /// batch is notified for its first event only, as if they came apart.
    async fn handle_batch(
        &self,
        transaction: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<Vec<Vec<Envelope>>, HandlerError> {
        let mut wanted: Vec<Notification> = Vec::with_capacity(events.len());
        for event in events {
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
            wanted.push(Notification { order_id, template });
        }
        let order_ids: Vec<Uuid> = wanted.iter().map(|wanted| wanted.order_id).collect();
        let templates: Vec<&str> = wanted
            .iter()
            .map(|wanted| wanted.template.as_str())
            .collect();
        // ORDER BY keeps the batch's order, so of an order named twice the
        // first event's row is the one inserted.
        let recorded: Vec<(Uuid,)> = sqlx::query_as(
            "INSERT INTO notifications (order_id, template)
             SELECT order_id, template
             FROM UNNEST($1::uuid[], $2::text[]) WITH ORDINALITY AS n(order_id, template, position)
             ORDER BY position
             ON CONFLICT (order_id) DO NOTHING
             RETURNING order_id",
        )
        .bind(&order_ids)
        .bind(&templates)
        .fetch_all(&mut *transaction)
        .await?;
        let mut recorded: std::collections::HashSet<Uuid> =
            recorded.into_iter().map(|(order_id,)| order_id).collect();
        Ok(events
            .iter()
            .zip(wanted)
            .map(|(event, notification)| {
                // `remove`: a second event for the same order finds it gone.
                if !recorded.remove(&notification.order_id) {
                    tracing::info!(order_id = %notification.order_id, "order already notified; nothing to do");
                    return Vec::new();
                }
                self.sink.send(&notification);
                vec![Envelope::caused_by(
                    event,
                    Self::WORKER.name(),
                    EventData::from(NotificationSent {
                        order_id: notification.order_id,
                        template: notification.template,
                    }),
                )]
            })
            .collect())
    }
}

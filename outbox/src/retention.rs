//! Deleting what no longer needs keeping, a little at a time.

use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::Schema;
use crate::metrics::{INBOX_DELETED, OUTBOX_DELETED};

/// How much to keep and how fast to delete; see `[outbox]` and `[inbox]` in
/// `config/default.toml`.
#[derive(Clone, Debug)]
pub struct RetentionOptions {
    /// Published outbox rows older than this go.
    pub outbox_retention: Duration,
    /// Inbox entries older than this go. Must cover the longest retry
    /// horizon plus replays, or a late duplicate is handled twice.
    pub inbox_retention: Duration,
    /// Rows per `DELETE`.
    pub batch_size: u32,
    /// Time between sweeps.
    pub interval: Duration,
}

impl From<&fleet_config::Settings> for RetentionOptions {
    fn from(settings: &fleet_config::Settings) -> Self {
        Self {
            outbox_retention: settings.outbox.retention(),
            inbox_retention: settings.inbox.dedup_retention(),
            batch_size: settings.outbox.cleanup_batch_size,
            interval: settings.outbox.cleanup_interval(),
        }
    }
}

/// Deletes published outbox rows and old inbox entries in batches of
/// `batch_size`, each its own short transaction that skips rows other
/// sessions hold: never one unbounded `DELETE` that locks half the table
/// while the fleet is under load.
#[derive(Debug)]
pub struct Retention {
    pool: PgPool,
    schema: Schema,
    options: RetentionOptions,
}

/// Rows removed by one sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub outbox: u64,
    pub inbox: u64,
    /// `DELETE` statements issued.
    pub batches: u64,
}

/// Pause between two batches, so a large backlog of old rows drains
/// without monopolizing the database.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

impl Retention {
    pub fn new(pool: PgPool, schema: Schema, options: RetentionOptions) -> Self {
        Self {
            pool,
            schema,
            options,
        }
    }

    /// Sweeps every interval until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.options.interval) => {}
            }
            if let Err(error) = self.sweep(&shutdown).await {
                warn!(schema = %self.schema, %error, "retention sweep failed");
            }
        }
    }

    /// One sweep: batches until nothing old is left (or shutdown).
    pub async fn sweep(&self, shutdown: &CancellationToken) -> Result<Swept, sqlx::Error> {
        let mut swept = Swept::default();
        let batch = i64::from(self.options.batch_size);
        let outbox_age = self.options.outbox_retention.as_secs_f64();
        let inbox_age = self.options.inbox_retention.as_secs_f64();
        let schema = self.schema.to_string();
        loop {
            let deleted = sqlx::query(
                "DELETE FROM outbox WHERE id IN (
                     SELECT id FROM outbox
                     WHERE published_at < now() - make_interval(secs => $1)
                     ORDER BY published_at
                     LIMIT $2
                     FOR UPDATE SKIP LOCKED)",
            )
            .bind(outbox_age)
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected();
            swept.outbox += deleted;
            swept.batches += 1;
            ::metrics::counter!(OUTBOX_DELETED, "schema" => schema.clone()).increment(deleted);
            if deleted < self.options.batch_size.into() || shutdown.is_cancelled() {
                break;
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
        loop {
            let deleted = sqlx::query(
                "DELETE FROM inbox WHERE (consumer, event_id) IN (
                     SELECT consumer, event_id FROM inbox
                     WHERE processed_at < now() - make_interval(secs => $1)
                     ORDER BY processed_at
                     LIMIT $2
                     FOR UPDATE SKIP LOCKED)",
            )
            .bind(inbox_age)
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected();
            swept.inbox += deleted;
            swept.batches += 1;
            ::metrics::counter!(INBOX_DELETED, "schema" => schema.clone()).increment(deleted);
            if deleted < self.options.batch_size.into() || shutdown.is_cancelled() {
                break;
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
        Ok(swept)
    }
}

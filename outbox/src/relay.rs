//! The relay: publishes committed outbox rows and marks them published.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Postgres, Row, Transaction};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use fleet_broker::{Broker, OutgoingMessage, PublishOutcome};

use crate::Schema;
use crate::metrics::{
    OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE, OUTBOX_PARKED, OUTBOX_PUBLISHED, OUTBOX_REFUSED,
};

/// How a relay behaves; see `[outbox]` in `config/default.toml`.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    pub batch_size: u32,
    pub poll_interval: Duration,
    pub max_publish_attempts: u32,
}

impl From<&fleet_config::OutboxSettings> for RelayOptions {
    fn from(settings: &fleet_config::OutboxSettings) -> Self {
        Self {
            batch_size: settings.batch_size,
            poll_interval: settings.poll_interval(),
            max_publish_attempts: settings.max_publish_attempts,
        }
    }
}

/// What the relay last saw, for readiness probes: shared, cheap to read.
#[derive(Clone, Debug, Default)]
pub struct RelayStatus {
    /// Milliseconds since the epoch of the oldest unpublished row; 0 if none.
    oldest_unpublished_ms: Arc<AtomicI64>,
    /// Rows published since start.
    published: Arc<AtomicU64>,
}

impl RelayStatus {
    /// How far behind the relay is: the age of the oldest unpublished row.
    pub fn lag(&self) -> Duration {
        let oldest = self.oldest_unpublished_ms.load(Ordering::Relaxed);
        if oldest == 0 {
            return Duration::ZERO;
        }
        let age = Utc::now().timestamp_millis().saturating_sub(oldest);
        Duration::from_millis(u64::try_from(age).unwrap_or(0))
    }

    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

/// Publishes one schema's outbox. Every replica runs one; they share the
/// rows through `FOR UPDATE SKIP LOCKED`.
#[derive(Debug)]
pub struct Relay {
    pool: PgPool,
    broker: Broker,
    schema: Schema,
    options: RelayOptions,
    status: RelayStatus,
    /// Test hook: abandon the next batch after publishing it, before marking
    /// it, as a crash there would.
    abandon_next_batch: AtomicBool,
}

/// What one pass over the outbox found.
struct Backlog {
    pending: i64,
    oldest: Option<DateTime<Utc>>,
    next_due: Option<DateTime<Utc>>,
    parked: i64,
}

impl Relay {
    pub fn new(pool: PgPool, broker: Broker, schema: Schema, options: RelayOptions) -> Self {
        Self {
            pool,
            broker,
            schema,
            options,
            status: RelayStatus::default(),
            abandon_next_batch: AtomicBool::new(false),
        }
    }

    pub fn status(&self) -> RelayStatus {
        self.status.clone()
    }

    #[doc(hidden)]
    pub fn abandon_next_batch_after_publish(&mut self) {
        self.abandon_next_batch.store(true, Ordering::SeqCst);
    }

    /// Runs until `shutdown`, then flushes what is ready and returns.
    ///
    /// While idle it makes one query per poll interval (and none between),
    /// waking early when a writer's `NOTIFY` arrives.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.schema.wakeup_channel()).await?;
        let mut failures: u32 = 0;
        let mut drain = true;
        let mut last_look = tokio::time::Instant::now();
        loop {
            if drain {
                match self.drain().await {
                    // Rows keep coming: claim again at once, without going
                    // to sleep (no wake-up round trip, no NOTIFY from the
                    // writers), but look at the backlog (lag, metrics) at
                    // least once a second.
                    Ok(claimed)
                        if claimed > 0
                            && last_look.elapsed() < STATUS_REFRESH
                            && !shutdown.is_cancelled() =>
                    {
                        failures = 0;
                        continue;
                    }
                    Ok(_) => failures = 0,
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        let pause = backoff(failures);
                        warn!(schema = %self.schema, %error, ?pause, "outbox relay failed; pausing");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(pause) => continue,
                        }
                    }
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            last_look = tokio::time::Instant::now();
            let backlog = match self.announce_sleep().await {
                Ok(backlog) => backlog,
                Err(error) => {
                    warn!(schema = %self.schema, %error, "outbox relay cannot read its backlog");
                    Backlog {
                        pending: 0,
                        oldest: None,
                        next_due: None,
                        parked: 0,
                    }
                }
            };
            let now = Utc::now();
            let wait = match backlog.next_due {
                _ if backlog.pending == 0 => self.options.poll_interval,
                Some(due) if due <= now => Duration::ZERO,
                Some(due) => (due - now)
                    .to_std()
                    .unwrap_or_default()
                    .min(self.options.poll_interval),
                None => self.options.poll_interval,
            };
            if wait.is_zero() {
                drain = true;
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                notification = listener.recv() => {
                    if let Err(error) = notification {
                        // The listener reconnects by itself; notifications
                        // sent meanwhile are lost, which the poll covers.
                        debug!(%error, "outbox listener interrupted");
                    }
                    drain = true;
                }
                _ = tokio::time::sleep(wait) => drain = backlog.pending > 0,
            }
        }
        // Flush what is ready before the process exits.
        if let Err(error) = self.drain().await {
            warn!(schema = %self.schema, %error, "outbox relay could not flush at shutdown");
        }
        info!(schema = %self.schema, published = self.status.published(), "outbox relay stopped");
        Ok(())
    }

    /// Publishes batches until fewer than a full batch is ready; returns
    /// how many rows it claimed.
    ///
    /// Two lanes claim and publish side by side (`SKIP LOCKED` keeps their
    /// batches apart): while one waits for the broker's confirms, the other
    /// claims or marks in Postgres, so neither side idles on a backlog.
    pub async fn drain(&self) -> Result<usize, RelayError> {
        let lane = || async {
            let mut total = 0;
            loop {
                let claimed = self.publish_batch().await?;
                total += claimed;
                if claimed < self.options.batch_size as usize {
                    return Ok::<_, RelayError>(total);
                }
            }
        };
        let (first, second) = tokio::join!(lane(), lane());
        Ok(first? + second?)
    }

    /// Claims, publishes and marks one batch. Returns how many rows it
    /// claimed.
    pub async fn publish_batch(&self) -> Result<usize, RelayError> {
        let mut transaction = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, event_id, event_type, payload, attempts, created_at FROM outbox
             WHERE published_at IS NULL AND parked_at IS NULL AND next_attempt_at <= now()
             ORDER BY id
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::from(self.options.batch_size))
        .fetch_all(&mut *transaction)
        .await?;
        if rows.is_empty() {
            transaction.commit().await?;
            return Ok(0);
        }

        let mut ids = Vec::with_capacity(rows.len());
        let mut attempts = Vec::with_capacity(rows.len());
        let mut messages = Vec::with_capacity(rows.len());
        for row in &rows {
            let event_id: uuid::Uuid = row.try_get("event_id")?;
            let created_at: DateTime<Utc> = row.try_get("created_at")?;
            ids.push(row.try_get::<i64, _>("id")?);
            attempts.push(row.try_get::<i32, _>("attempts")?);
            messages.push(OutgoingMessage {
                id: event_id.to_string(),
                event_type: row.try_get("event_type")?,
                body: row.try_get("payload")?,
                timestamp: u64::try_from(created_at.timestamp()).unwrap_or(0),
            });
        }

        let outcomes = self.broker.publish_batch(&messages).await?;
        if self.abandon_next_batch.swap(false, Ordering::SeqCst) {
            // Dropping the transaction rolls it back: published, not marked.
            return Err(RelayError::Abandoned);
        }
        self.record(&mut transaction, &ids, &attempts, &outcomes)
            .await?;
        transaction.commit().await?;

        let published = outcomes
            .iter()
            .filter(|outcome| outcome.is_confirmed())
            .count();
        self.status
            .published
            .fetch_add(published as u64, Ordering::Relaxed);
        ::metrics::counter!(OUTBOX_PUBLISHED, "schema" => self.schema.to_string())
            .increment(published as u64);
        if let Some(PublishOutcome::Failed(reason)) = outcomes
            .iter()
            .find(|outcome| matches!(outcome, PublishOutcome::Failed(_)))
        {
            // The broker went away mid-batch: the unconfirmed rows stay
            // pending, and the caller backs off before the next attempt.
            return Err(RelayError::Unconfirmed(reason.clone()));
        }
        Ok(rows.len())
    }

    /// Marks confirmed rows published; counts a refusal on refused ones and
    /// parks those out of attempts. Unconfirmed rows are left as they were.
    async fn record(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        ids: &[i64],
        attempts: &[i32],
        outcomes: &[PublishOutcome],
    ) -> Result<(), sqlx::Error> {
        let mut published = Vec::new();
        let mut refused_ids = Vec::new();
        let mut refused_errors = Vec::new();
        let mut refused_delays = Vec::new();
        let mut refused_park = Vec::new();
        for ((id, attempt), outcome) in ids.iter().zip(attempts).zip(outcomes) {
            let reason = match outcome {
                PublishOutcome::Confirmed => {
                    published.push(*id);
                    continue;
                }
                PublishOutcome::Unroutable => "unroutable: no queue is bound to this event type",
                PublishOutcome::Nacked => "nacked by the broker",
                PublishOutcome::Failed(_) => continue,
            };
            let attempt = attempt.saturating_add(1);
            let park =
                u32::try_from(attempt).unwrap_or(u32::MAX) >= self.options.max_publish_attempts;
            refused_ids.push(*id);
            refused_errors.push(reason.to_owned());
            refused_delays.push(backoff(u32::try_from(attempt).unwrap_or(u32::MAX)).as_secs_f64());
            refused_park.push(park);
            if park {
                warn!(schema = %self.schema, row = id, attempts = attempt, reason, "outbox row parked");
            }
        }
        if !published.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1)")
                .bind(&published)
                .execute(&mut **transaction)
                .await?;
        }
        if !refused_ids.is_empty() {
            ::metrics::counter!(OUTBOX_REFUSED, "schema" => self.schema.to_string())
                .increment(refused_ids.len() as u64);
            sqlx::query(
                "UPDATE outbox AS o SET
                     attempts = o.attempts + 1,
                     last_error = r.error,
                     next_attempt_at = now() + make_interval(secs => r.delay),
                     parked_at = CASE WHEN r.park THEN now() END
                 FROM UNNEST($1::bigint[], $2::text[], $3::float8[], $4::bool[])
                     AS r(id, error, delay, park)
                 WHERE o.id = r.id",
            )
            .bind(&refused_ids)
            .bind(&refused_errors)
            .bind(&refused_delays)
            .bind(&refused_park)
            .execute(&mut **transaction)
            .await?;
        }
        Ok(())
    }

    /// Declares this relay asleep (so the next writer sends a `NOTIFY`) and,
    /// in the same statement, reads the backlog: if rows committed just
    /// before the flag was set, this sees them. One statement: an idle relay
    /// costs one query per poll interval.
    async fn announce_sleep(&self) -> Result<Backlog, sqlx::Error> {
        let row = sqlx::query(
            "WITH asleep AS (UPDATE outbox_relay SET sleeping = true WHERE NOT sleeping)
             SELECT count(*) AS pending, min(created_at) AS oldest, min(next_attempt_at) AS next_due,
                    (SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL) AS parked
             FROM outbox WHERE published_at IS NULL AND parked_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        let backlog = Backlog {
            pending: row.try_get("pending")?,
            oldest: row.try_get("oldest")?,
            next_due: row.try_get("next_due")?,
            parked: row.try_get("parked")?,
        };
        let schema = self.schema.to_string();
        self.status.oldest_unpublished_ms.store(
            backlog.oldest.map_or(0, |oldest| oldest.timestamp_millis()),
            Ordering::Relaxed,
        );
        ::metrics::gauge!(OUTBOX_BACKLOG, "schema" => schema.clone()).set(backlog.pending as f64);
        ::metrics::gauge!(OUTBOX_PARKED, "schema" => schema.clone()).set(backlog.parked as f64);
        ::metrics::gauge!(OUTBOX_OLDEST_AGE, "schema" => schema)
            .set(self.status.lag().as_secs_f64());
        Ok(backlog)
    }
}

/// How often a relay that never runs out of rows still reads its backlog.
const STATUS_REFRESH: Duration = Duration::from_secs(1);

/// 100 ms, doubling, at most 30 s.
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(9);
    Duration::from_millis(100u64 << exponent).min(Duration::from_secs(30))
}

/// Why one relay pass failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Broker(#[from] fleet_broker::BrokerError),
    #[error("broker did not confirm every row: {0}")]
    Unconfirmed(String),
    #[error("batch abandoned after publish (test hook)")]
    Abandoned,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(1600));
        assert_eq!(
            backoff(60),
            Duration::from_millis(51_200).min(Duration::from_secs(30))
        );
    }
}

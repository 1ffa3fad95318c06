//! One relay lane: a claim-publish-mark loop on a Postgres connection of its
//! own.
//!
//! Its own connection, not the worker's pool: under load every pooled
//! connection is busy with handlers, and a relay queueing for one adds that
//! wait to every event it publishes.
//!
//! One round trip per batch: when more rows are likely (a full batch, or
//! this replica committed since the claim), the message that marks batch N
//! published also commits, begins the next transaction and claims batch N+1
//! (`UPDATE …; COMMIT; BEGIN; SELECT … FOR UPDATE SKIP LOCKED`), sent as one
//! simple-protocol query. That needs the statement as text: the only values
//! spliced into it are integers the relay produced itself (row ids from its
//! own claim, the configured batch size), never event data. Claims still
//! hold row locks, so a relay that dies releases its rows at once.
//!
//! The lane's commits are asynchronous (`synchronous_commit = off`): losing
//! the last marks in a Postgres crash only republishes those rows, which is
//! the duplicate the inbox exists to absorb. Writers' commits are unaffected.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, Row};
use tokio::sync::Mutex;
use tracing::warn;

use fleet_broker::{OutgoingMessage, PublishOutcome};

use super::{Relay, RelayError, STATUS_REFRESH, Spill, backoff};
use crate::metrics::{OUTBOX_PUBLISHED, OUTBOX_REFUSED};

/// A lane's connection, opened on first use and dropped after an error.
#[derive(Debug, Default)]
pub(super) struct Lane {
    pub(super) connection: Mutex<Option<PgConnection>>,
}

/// How long a lane keeps going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    /// One batch, then stop.
    OneBatch,
    /// Batch after batch while claims find rows, for at most
    /// [`STATUS_REFRESH`], so the caller reads the backlog now and then.
    WhileRowsCome,
}

/// One claimed row, ready to publish.
pub(super) struct Claimed {
    pub(super) id: i64,
    pub(super) attempts: i32,
}

/// How long a rollback after a failed cycle may take before the connection
/// is given up (dropping it ends the transaction on the server too).
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(2);

impl Lane {
    /// Closes the connection, if open, ending any transaction.
    pub(super) async fn close(&self) {
        if let Some(connection) = self.connection.lock().await.take() {
            let _ = connection.close().await;
        }
    }
}

impl Relay {
    /// Runs one pass of `lane`; returns how many rows it claimed.
    /// A claim that comes back full tells `spill`, so idle lanes join.
    pub(super) async fn run_lane(
        &self,
        lane: &Lane,
        pass: Pass,
        spill: &Spill,
    ) -> Result<usize, RelayError> {
        let mut slot = lane.connection.lock().await;
        let connection = match slot.as_mut() {
            Some(connection) => connection,
            None => slot.insert(self.connect_lane().await?),
        };
        let result = self.cycle(connection, pass, spill).await;
        if result.is_err() {
            // Release the claimed rows now, so another lane (or relay) can
            // take them; if even that fails, drop the connection, which the
            // server ends the same way.
            let rolled_back = tokio::time::timeout(
                ROLLBACK_TIMEOUT,
                sqlx::raw_sql("ROLLBACK").execute(&mut *connection),
            )
            .await;
            if !matches!(rolled_back, Ok(Ok(_))) {
                *slot = None;
            }
        }
        result
    }

    pub(super) async fn connect_lane(&self) -> Result<PgConnection, sqlx::Error> {
        let mut connection = PgConnection::connect_with(&self.connect_options).await?;
        // No bitmap scans for the claim: with statistics that (rightly) see
        // almost no pending rows, the planner picks one, and a bitmap scan
        // visits the heap for every index entry of a row published since
        // the last vacuum, every time (15 ms per claim seen at 50,000). A
        // plain index scan marks those entries dead the first time and
        // skips them after (0.5 ms).
        //
        // A plan for each mark, not the cached generic one: that one is
        // made after a few marks, while the outbox is still small (a fresh
        // deployment, or one emptied by retention), and for a small table it
        // is a sequential scan. It stays until the next ANALYZE, however
        // large the table grows: seen at 9 ms per mark and 13,000 rows on a
        // server without autovacuum, a third of Postgres's time in a fleet
        // run. Planning the mark costs microseconds.
        connection
            .execute(sqlx::raw_sql(
                "SET synchronous_commit = off; SET enable_bitmapscan = off; \
                 SET plan_cache_mode = force_custom_plan",
            ))
            .await?;
        Ok(connection)
    }

    /// Claims, publishes and marks batches on `connection`.
    async fn cycle(
        &self,
        connection: &mut PgConnection,
        pass: Pass,
        spill: &Spill,
    ) -> Result<usize, RelayError> {
        let started = Instant::now();
        let claim = self.claim_statement();
        self.wakeup.claiming();
        let mut rows = sqlx::raw_sql(AssertSqlSafe(format!("BEGIN; {claim}")))
            .fetch_all(&mut *connection)
            .await?;
        let mut total = 0;
        loop {
            if rows.is_empty() {
                connection.execute(sqlx::raw_sql("COMMIT")).await?;
                return Ok(total);
            }
            total += rows.len();
            let full = rows.len() >= usize::try_from(self.options.batch_size).unwrap_or(usize::MAX);
            if full {
                spill.full_batch();
            }
            let mut claimed = Vec::with_capacity(rows.len());
            let mut messages = Vec::with_capacity(rows.len());
            for row in &rows {
                let event_id: uuid::Uuid = row.try_get("event_id")?;
                claimed.push(Claimed {
                    id: row.try_get("id")?,
                    attempts: row.try_get("attempts")?,
                });
                messages.push(OutgoingMessage {
                    id: event_id.to_string(),
                    event_type: row.try_get("event_type")?,
                    body: row.try_get("payload")?,
                    timestamp: u64::try_from(row.try_get::<i64, _>("created_secs")?).unwrap_or(0),
                });
            }

            let outcomes = self.broker.publish_batch(&messages).await?;
            if self.abandon_next_batch.swap(false, Ordering::SeqCst) {
                // The caller rolls back: published, not marked.
                return Err(RelayError::Abandoned);
            }
            let published = self
                .record_refusals(connection, &claimed, &outcomes)
                .await?;
            let failure = outcomes.iter().find_map(|outcome| match outcome {
                PublishOutcome::Failed(reason) => Some(reason.clone()),
                _ => None,
            });
            // A relay whose replica rings it claims again in the same
            // round trip only when more rows are likely: a full batch, or a
            // commit since the claim began. Otherwise an empty claim would
            // be the usual answer, and the next wake-up (or the backlog
            // reading) finds any row committed meanwhile. A relay nobody
            // rings (its writers are other processes, which NOTIFY only a
            // sleeping relay) keeps claiming until a claim comes back empty.
            let go_on = pass == Pass::WhileRowsCome
                && failure.is_none()
                && started.elapsed() < STATUS_REFRESH
                && (full || !self.wakeup.rung() || self.wakeup.unclaimed_commits());

            let mark = mark_statement(&published);
            if go_on {
                self.wakeup.claiming();
                rows = sqlx::raw_sql(AssertSqlSafe(format!("{mark}; BEGIN; {claim}")))
                    .fetch_all(&mut *connection)
                    .await?;
            } else {
                connection
                    .execute(sqlx::raw_sql(AssertSqlSafe(mark)))
                    .await?;
            }
            self.status
                .published
                .fetch_add(published.len() as u64, Ordering::Relaxed);
            ::metrics::counter!(OUTBOX_PUBLISHED, "schema" => self.schema.to_string())
                .increment(published.len() as u64);
            if let Some(reason) = failure {
                // The broker went away mid-batch: the unconfirmed rows stay
                // pending, and the caller backs off before the next attempt.
                return Err(RelayError::Unconfirmed(reason));
            }
            if !go_on {
                return Ok(total);
            }
        }
    }

    /// The claim: the oldest due rows no other lane holds.
    fn claim_statement(&self) -> String {
        format!(
            "SELECT id, event_id, event_type, payload, attempts,
                    extract(epoch FROM created_at)::bigint AS created_secs
             FROM outbox
             WHERE published_at IS NULL AND parked_at IS NULL AND next_attempt_at <= now()
             ORDER BY id
             LIMIT {}
             FOR UPDATE SKIP LOCKED",
            self.options.batch_size
        )
    }

    /// Counts a refusal on refused rows (parking those out of attempts) in
    /// the open transaction; returns the ids of the confirmed rows.
    /// Unconfirmed rows are left as they were.
    pub(super) async fn record_refusals(
        &self,
        connection: &mut PgConnection,
        claimed: &[Claimed],
        outcomes: &[PublishOutcome],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let mut published = Vec::with_capacity(claimed.len());
        let mut refused_ids = Vec::new();
        let mut refused_errors = Vec::new();
        let mut refused_delays = Vec::new();
        let mut refused_park = Vec::new();
        for (row, outcome) in claimed.iter().zip(outcomes) {
            let reason = match outcome {
                PublishOutcome::Confirmed => {
                    published.push(row.id);
                    continue;
                }
                PublishOutcome::Unroutable => "unroutable: no queue is bound to this event type",
                PublishOutcome::Nacked => "nacked by the broker",
                PublishOutcome::Failed(_) => continue,
            };
            let attempt = row.attempts.saturating_add(1);
            let park =
                u32::try_from(attempt).unwrap_or(u32::MAX) >= self.options.max_publish_attempts;
            refused_ids.push(row.id);
            refused_errors.push(reason.to_owned());
            refused_delays.push(backoff(u32::try_from(attempt).unwrap_or(u32::MAX)).as_secs_f64());
            refused_park.push(park);
            if park {
                warn!(schema = %self.schema, row = row.id, attempts = attempt, reason, "outbox row parked");
            }
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
            .execute(&mut *connection)
            .await?;
        }
        Ok(published)
    }
}

/// Marks `published` and commits; only integers go into the text.
fn mark_statement(published: &[i64]) -> String {
    if published.is_empty() {
        return "COMMIT".to_owned();
    }
    let mut ids = String::with_capacity(published.len() * 8);
    for (n, id) in published.iter().enumerate() {
        if n > 0 {
            ids.push(',');
        }
        ids.push_str(&id.to_string());
    }
    format!(
        "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY('{{{ids}}}'::bigint[]); COMMIT"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_lists_only_integers_and_commits() {
        assert_eq!(
            mark_statement(&[3, 17, -1]),
            "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY('{3,17,-1}'::bigint[]); COMMIT"
        );
        assert_eq!(mark_statement(&[]), "COMMIT");
    }
}

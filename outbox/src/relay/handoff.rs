//! The handoff: rows a replica's own writers commit go to its relay in
//! memory and are published the moment the commit returns.
//!
//! Why: a claim costs a transaction and a round trip per batch, and a lane
//! keeps its claim's transaction open until the broker confirms the batch,
//! so under load every lane waits on confirms and fresh rows wait for a
//! lane. Measured at 350 sagas/s on RabbitMQ (2026-12-01), an event took
//! 55-75 ms from its outbox insert to its consumer, of which the broker's
//! own delivery was about 20 ms. With the handoff the fleet runs about a
//! quarter fewer statements per saga.
//!
//! Why it is still safe: the writer inserts its rows with a lease
//! (`next_attempt_at` = now + lease) in its own transaction, so no relay's
//! claim takes them while this process holds them, and hands them over
//! only after the commit. The relay publishes them at once (several batches
//! in flight, none holding a transaction open), then marks the confirmed
//! rows published, records refusals as a claim would, and gives rows
//! without a confirm back to the claims (`next_attempt_at = now()`). If the
//! process dies in between, the lease runs out and any replica's relay
//! claims the rows: late, never lost, at worst a duplicate the inbox
//! absorbs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sqlx::PgConnection;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use fleet_broker::{BrokerError, OutgoingMessage, PublishOutcome};
use fleet_messages::Envelope;

use super::lane::Claimed;
use super::{Relay, RelayWakeup};
use crate::metrics::OUTBOX_PUBLISHED;

/// Batches of handed-over rows a relay has at the broker at once. Rows
/// handed over meanwhile wait and go out together in the next batch, so
/// batches grow with the load, as a claim's do: with 16 in flight every
/// commit went out alone, and the fleet sustained 10% fewer sagas/s than
/// with the claims alone (2026-12-01); with 2, 12-17% more in two of three
/// alternating runs, the third within noise.
const BATCHES_IN_FLIGHT: usize = 2;

/// How long the first confirmed batch waits for the confirms of others
/// before its rows are marked published, all in one statement. The broker
/// has delivered the events by then, so no consumer waits for a mark; the
/// wait costs only a few milliseconds of each row's lease. At 450 sagas/s
/// on RabbitMQ (one replica per worker, 16,000 orders) the fleet committed
/// 24-25% fewer transactions with it, and its p99 saga latency was lower
/// in both alternating pairs (181 and 163 ms against 230 and 239). 60 ms
/// saved few more commits.
const MARK_WINDOW: Duration = Duration::from_millis(25);

/// Rows leased and not yet settled, in batches of `outbox.batch_size`,
/// beyond which writers fall back to the claims: a broker that stops
/// confirming must not grow this process's memory without bound.
const MAX_PENDING_BATCHES: usize = 20;

/// The relay's side of the handoff: where writers' leased rows wait to be
/// published. Cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Handoff {
    inner: Arc<HandoffInner>,
}

#[derive(Debug)]
struct HandoffInner {
    /// Zero: the handoff is off.
    lease: Duration,
    max_pending: usize,
    /// Rows leased and not yet settled (published and marked, refused and
    /// recorded, or given back to the claims).
    pending: AtomicUsize,
    /// Set when the relay stops: no new leases.
    closed: AtomicBool,
    queue: std::sync::Mutex<Vec<HandedRow>>,
    ready: Notify,
}

/// A committed row on its way to the broker.
#[derive(Debug)]
struct HandedRow {
    id: i64,
    message: OutgoingMessage,
}

impl Handoff {
    pub(super) fn new(lease: Duration, batch_size: u32) -> Self {
        let batch = usize::try_from(batch_size).unwrap_or(usize::MAX);
        Self {
            inner: Arc::new(HandoffInner {
                lease,
                max_pending: batch.saturating_mul(MAX_PENDING_BATCHES),
                pending: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                queue: std::sync::Mutex::new(Vec::new()),
                ready: Notify::new(),
            }),
        }
    }

    /// A lease on `rows` rows about to be written, or `None` when the
    /// handoff is off, closed, or already holds its maximum.
    fn lease(&self, rows: usize) -> Option<Lease> {
        let inner = &self.inner;
        if inner.lease.is_zero() || rows == 0 || inner.closed.load(Ordering::SeqCst) {
            return None;
        }
        let before = inner.pending.fetch_add(rows, Ordering::SeqCst);
        // One transaction's rows always fit an empty handoff.
        if before > 0 && before + rows > inner.max_pending {
            inner.pending.fetch_sub(rows, Ordering::SeqCst);
            return None;
        }
        Some(Lease {
            handoff: self.clone(),
            rows,
        })
    }

    /// Rows leased and not yet settled.
    pub(super) fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::SeqCst)
    }

    fn settled(&self, rows: usize) {
        self.inner.pending.fetch_sub(rows, Ordering::SeqCst);
    }

    /// Up to `max` queued rows, oldest first.
    fn take(&self, max: usize) -> Vec<HandedRow> {
        let mut queue = self
            .inner
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if queue.len() <= max {
            std::mem::take(&mut *queue)
        } else {
            queue.drain(..max).collect()
        }
    }
}

/// The lease on one transaction's rows. Dropped without
/// [`Outgoing::committed`] (the transaction failed), it only gives its
/// place back; rows it covered that did commit wait for the lease to end.
#[derive(Debug)]
struct Lease {
    handoff: Handoff,
    rows: usize,
}

impl Lease {
    fn hand_over(mut self, rows: Vec<HandedRow>) {
        let inner = &self.handoff.inner;
        // Whatever the lease covered beyond these rows was never written.
        let unused = self.rows.saturating_sub(rows.len());
        self.rows = 0;
        inner.pending.fetch_sub(unused, Ordering::SeqCst);
        inner
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(rows);
        inner.ready.notify_one();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.rows > 0 {
            self.handoff.settled(self.rows);
        }
    }
}

/// How a replica's writers put events into the outbox: inside their
/// transaction, leased to this process's relay when it can take them, for
/// the claims (woken in-process, no `NOTIFY`) otherwise. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RelayWriter {
    handoff: Handoff,
    wakeup: RelayWakeup,
}

/// Rows written by [`RelayWriter::enqueue`]; call
/// [`committed`](Outgoing::committed) once their transaction committed.
/// Dropping it instead (a rollback, a failed commit) publishes nothing
/// early; rows that did commit are then published after their lease.
#[derive(Debug)]
#[must_use = "committed rows are published early only through `committed()`"]
pub struct Outgoing {
    kind: OutgoingKind,
    wakeup: RelayWakeup,
}

#[derive(Debug)]
enum OutgoingKind {
    Nothing,
    ForClaims,
    Leased(Lease, Vec<HandedRow>),
}

impl RelayWriter {
    pub(super) fn new(handoff: Handoff, wakeup: RelayWakeup) -> Self {
        Self { handoff, wakeup }
    }

    /// Writes `events` into the outbox inside `transaction`.
    pub async fn enqueue(
        &self,
        transaction: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<Outgoing, sqlx::Error> {
        let kind = if events.is_empty() {
            OutgoingKind::Nothing
        } else if let Some(lease) = self.handoff.lease(events.len()) {
            let rows = insert_leased(transaction, events, lease.handoff.inner.lease).await?;
            OutgoingKind::Leased(lease, rows)
        } else {
            crate::enqueue_for_local_relay(transaction, events).await?;
            OutgoingKind::ForClaims
        };
        Ok(Outgoing {
            kind,
            wakeup: self.wakeup.clone(),
        })
    }
}

impl Outgoing {
    /// The transaction committed: leased rows go to the relay now, others
    /// wake its claims.
    pub fn committed(self) {
        match self.kind {
            OutgoingKind::Nothing => {}
            OutgoingKind::ForClaims => self.wakeup.rows_committed(),
            OutgoingKind::Leased(lease, rows) => {
                self.wakeup.local_writer();
                lease.hand_over(rows);
            }
        }
    }
}

/// Inserts `events` held from other relays' claims for `lease`; returns
/// each row with its message, in the order of `events`.
async fn insert_leased(
    transaction: &mut PgConnection,
    events: &[Envelope],
    lease: Duration,
) -> Result<Vec<HandedRow>, sqlx::Error> {
    let messages: Vec<OutgoingMessage> =
        events.iter().map(OutgoingMessage::from_envelope).collect();
    let ids: Vec<uuid::Uuid> = events.iter().map(|event| event.id).collect();
    let types: Vec<&str> = messages
        .iter()
        .map(|message| message.event_type.as_str())
        .collect();
    let payloads: Vec<&[u8]> = messages
        .iter()
        .map(|message| message.body.as_slice())
        .collect();
    let returned: Vec<(i64, uuid::Uuid)> = sqlx::query_as(
        "INSERT INTO outbox (event_id, event_type, payload, next_attempt_at)
         SELECT e.id, e.type, e.payload, now() + make_interval(secs => $4)
         FROM UNNEST($1::uuid[], $2::text[], $3::bytea[]) AS e(id, type, payload)
         RETURNING id, event_id",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&payloads)
    .bind(lease.as_secs_f64())
    .fetch_all(&mut *transaction)
    .await?;
    let row_of: std::collections::HashMap<uuid::Uuid, i64> = returned
        .into_iter()
        .map(|(row, event)| (event, row))
        .collect();
    let mut rows = Vec::with_capacity(events.len());
    for (event, message) in events.iter().zip(messages) {
        let Some(id) = row_of.get(&event.id) else {
            return Err(sqlx::Error::Protocol(format!(
                "outbox insert returned no row for event {}",
                event.id
            )));
        };
        rows.push(HandedRow { id: *id, message });
    }
    Ok(rows)
}

/// What the broker made of one handed-over batch.
struct Published {
    rows: Vec<Claimed>,
    result: Result<Vec<PublishOutcome>, BrokerError>,
}

impl Relay {
    /// Publishes handed-over rows as they come, with up to
    /// [`BATCHES_IN_FLIGHT`] batches at the broker, and settles them on a
    /// connection of its own. On `shutdown` it takes no new leases and
    /// returns once everything handed over is settled.
    pub(super) async fn run_handoff(&self, shutdown: &CancellationToken) {
        let (settle, mut to_settle) = mpsc::unbounded_channel::<Published>();
        let publishing = async {
            let batch_size = usize::try_from(self.options.batch_size).unwrap_or(usize::MAX);
            let mut in_flight = FuturesUnordered::new();
            let mut stopping = false;
            loop {
                if in_flight.len() < BATCHES_IN_FLIGHT {
                    let rows = self.handoff.take(batch_size);
                    if !rows.is_empty() {
                        in_flight.push(self.publish_handed(rows));
                        continue;
                    }
                }
                if stopping && in_flight.is_empty() {
                    break;
                }
                tokio::select! {
                    Some(published) = in_flight.next(), if !in_flight.is_empty() => {
                        // The receiver lives until this future ends.
                        let _ = settle.send(published);
                    }
                    () = self.handoff.inner.ready.notified(), if in_flight.len() < BATCHES_IN_FLIGHT => {}
                    () = shutdown.cancelled(), if !stopping => {
                        // Writers have finished (the runtime stops the relay
                        // last); what they handed over is in the queue.
                        self.handoff.inner.closed.store(true, Ordering::SeqCst);
                        stopping = true;
                    }
                }
            }
            drop(settle);
        };
        let settling = async {
            while let Some(first) = to_settle.recv().await {
                // Confirms of the next batches arrive meanwhile and are
                // marked in the same statement (see `MARK_WINDOW`).
                tokio::time::sleep(MARK_WINDOW).await;
                let mut batches = vec![first];
                while let Ok(more) = to_settle.try_recv() {
                    batches.push(more);
                }
                self.settle_handed(batches).await;
            }
        };
        tokio::join!(publishing, settling);
    }

    async fn publish_handed(&self, rows: Vec<HandedRow>) -> Published {
        let mut claimed = Vec::with_capacity(rows.len());
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            // Never published before: a handed-over row is fresh.
            claimed.push(Claimed {
                id: row.id,
                attempts: 0,
            });
            messages.push(row.message);
        }
        let result = self.broker.publish_batch(&messages).await;
        Published {
            rows: claimed,
            result,
        }
    }

    /// Marks confirmed rows published, records refusals, and gives rows
    /// without a confirm back to the claims, in one pass over several
    /// batches. If Postgres cannot be reached the rows stay leased and are
    /// published again once the lease ends (a duplicate, never a loss).
    async fn settle_handed(&self, batches: Vec<Published>) {
        let total: usize = batches.iter().map(|batch| batch.rows.len()).sum();
        let mut slot = self.marker.connection.lock().await;
        let result = async {
            let connection = match slot.as_mut() {
                Some(connection) => connection,
                None => slot.insert(self.connect_lane().await?),
            };
            let mut published = Vec::with_capacity(total);
            let mut unconfirmed = Vec::new();
            for batch in &batches {
                match &batch.result {
                    Ok(outcomes) => {
                        published.extend(
                            self.record_refusals(connection, &batch.rows, outcomes)
                                .await?,
                        );
                        unconfirmed.extend(
                            batch.rows.iter().zip(outcomes).filter_map(|(row, outcome)| {
                                matches!(outcome, PublishOutcome::Failed(_)).then_some(row.id)
                            }),
                        );
                    }
                    Err(error) => {
                        warn!(schema = %self.schema, %error, rows = batch.rows.len(), "handed-over rows not published; the claims take them");
                        unconfirmed.extend(batch.rows.iter().map(|row| row.id));
                    }
                }
            }
            if !published.is_empty() {
                sqlx::query(
                    "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1)",
                )
                .bind(&published)
                .execute(&mut *connection)
                .await?;
            }
            if !unconfirmed.is_empty() {
                sqlx::query("UPDATE outbox SET next_attempt_at = now() WHERE id = ANY($1)")
                    .bind(&unconfirmed)
                    .execute(&mut *connection)
                    .await?;
            }
            Ok::<_, sqlx::Error>((published.len(), !unconfirmed.is_empty()))
        }
        .await;
        match result {
            Ok((published, gave_back)) => {
                self.status
                    .published
                    .fetch_add(published as u64, Ordering::Relaxed);
                ::metrics::counter!(OUTBOX_PUBLISHED, "schema" => self.schema.to_string())
                    .increment(published as u64);
                if gave_back {
                    self.wakeup.rows_committed();
                }
            }
            Err(error) => {
                warn!(schema = %self.schema, %error, rows = total, "could not settle handed-over rows; they go out again when their lease ends");
                *slot = None;
            }
        }
        self.handoff.settled(total);
    }
}

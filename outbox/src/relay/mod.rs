//! The relay: publishes committed outbox rows and marks them published.
//!
//! Rows reach it two ways. Its own replica's writers hand theirs over in
//! memory after the commit ([`handoff`]): published at once, no claim. Every
//! other row (another process's writers, a handoff that was full or off, a
//! dead replica's rows whose lease ran out, a broker refusal's retry) is
//! claimed: [`Relay::run`] sleeps on `LISTEN` (with a poll as fallback) and
//! drains the outbox through up to three [`lane`]s when woken.

mod handoff;
mod lane;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use fleet_broker::Broker;

use crate::Schema;
use crate::metrics::{OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE, OUTBOX_PARKED};
use handoff::Handoff;
pub use handoff::{Outgoing, RelayWriter};
use lane::{Lane, Pass};

/// How a relay behaves; see `[outbox]` in `config/default.toml`.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    pub batch_size: u32,
    pub poll_interval: Duration,
    pub max_publish_attempts: u32,
    /// How long rows handed over by this replica's writers are held from
    /// other relays' claims; zero turns the handoff off.
    pub handoff_lease: Duration,
}

impl From<&fleet_config::OutboxSettings> for RelayOptions {
    fn from(settings: &fleet_config::OutboxSettings) -> Self {
        Self {
            batch_size: settings.batch_size,
            poll_interval: settings.poll_interval(),
            max_publish_attempts: settings.max_publish_attempts,
            handoff_lease: settings.handoff_lease(),
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
///
/// Besides the pool it is given (for its backlog reads), a relay holds
/// connections of its own: the `LISTEN` connection, one per lane, and one
/// that marks handed-over rows.
#[derive(Debug)]
pub struct Relay {
    pool: PgPool,
    /// The pool's settings (search path included), for the lanes' own
    /// connections.
    connect_options: PgConnectOptions,
    lanes: [Lane; LANES],
    /// Settles handed-over rows: a lane that never claims.
    marker: Lane,
    handoff: Handoff,
    broker: Broker,
    schema: Schema,
    options: RelayOptions,
    status: RelayStatus,
    /// Rung by this replica's writers after they commit outbox rows.
    wakeup: RelayWakeup,
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
            connect_options: (*pool.connect_options()).clone(),
            lanes: Default::default(),
            marker: Lane::default(),
            handoff: Handoff::new(options.handoff_lease, options.batch_size),
            pool,
            broker,
            schema,
            options,
            status: RelayStatus::default(),
            wakeup: RelayWakeup::default(),
            abandon_next_batch: AtomicBool::new(false),
        }
    }

    pub fn status(&self) -> RelayStatus {
        self.status.clone()
    }

    /// What this replica's writers ring after committing outbox rows.
    pub fn wakeup(&self) -> RelayWakeup {
        self.wakeup.clone()
    }

    /// How this replica's writers enqueue events: handed over to this
    /// relay after their commit where it can take them.
    pub fn writer(&self) -> RelayWriter {
        RelayWriter::new(self.handoff.clone(), self.wakeup.clone())
    }

    /// Rows handed over (or leased for it) and not yet settled.
    pub fn handed_over_pending(&self) -> usize {
        self.handoff.pending()
    }

    #[doc(hidden)]
    pub fn abandon_next_batch_after_publish(&mut self) {
        self.abandon_next_batch.store(true, Ordering::SeqCst);
    }

    /// Runs until `shutdown`, then flushes what is ready and returns.
    ///
    /// While idle it makes one query per poll interval (and none between),
    /// waking early when a writer's `NOTIFY` arrives. Handed-over rows are
    /// published beside the claims, and settled before it returns.
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::join!(self.run_claims(&shutdown), self.run_handoff(&shutdown));
        // Flush what is ready before the process exits (rows given back by
        // the handoff included).
        if let Err(error) = self.drain().await {
            warn!(schema = %self.schema, %error, "outbox relay could not flush at shutdown");
        }
        for lane in self.lanes.iter().chain([&self.marker]) {
            lane.close().await;
        }
        info!(schema = %self.schema, published = self.status.published(), "outbox relay stopped");
    }

    /// The claims' side of [`Relay::run`], until `shutdown`.
    async fn run_claims(&self, shutdown: &CancellationToken) {
        let Some(mut listener) = self.listen(shutdown).await else {
            info!(schema = %self.schema, "outbox relay stopped before it could listen");
            return;
        };
        let mut failures: u32 = 0;
        let mut drain = true;
        let mut woken = Woken::Timer;
        // When the backlog was last read (it is read at least every
        // STATUS_REFRESH), and what was waited for after that reading.
        let mut backlog_read_at: Option<Instant> = None;
        loop {
            // Whether this pass found rows: if it did not while the backlog
            // says some are due, other relays hold them, and spinning on
            // them would only cost queries.
            let mut claimed_any = false;
            let mut saw_full_batch = false;
            if drain {
                // Lanes keep claiming while rows keep coming (full batches,
                // or this replica's commits), and come back at least once a
                // second so the backlog (lag, metrics) is read below.
                match self.drain_lanes().await {
                    Ok(pass) => {
                        failures = 0;
                        claimed_any = pass.claimed > 0;
                        saw_full_batch = pass.saw_full_batch;
                    }
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
            // Wake-ups sent while draining are answered: the backlog read
            // below sees any row they were about.
            while listener.next_buffered().is_some() {
                woken = Woken::Notify;
            }
            // After a drain this replica's own commits asked for, with a
            // fresh backlog reading and no sign of more rows, skip the
            // reading: it is a statement per wake-up, and a busy replica
            // wakes its relay for every commit. Writers of other processes
            // still reach it: their NOTIFY flag was re-armed by the last
            // reading (every NOTIFY wake-up ends in one).
            let fresh = backlog_read_at
                .map(|at| STATUS_REFRESH.saturating_sub(at.elapsed()))
                .filter(|left| !left.is_zero());
            let (wait, drain_after_wait) = match fresh {
                Some(left) if woken == Woken::Wakeup && !saw_full_batch => (left, false),
                _ => {
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
                    backlog_read_at = Some(Instant::now());
                    let now = Utc::now();
                    let wait = match backlog.next_due {
                        _ if backlog.pending == 0 => self.options.poll_interval,
                        Some(due) if due <= now && claimed_any => Duration::ZERO,
                        Some(due) if due <= now => OTHERS_BATCH_WAIT,
                        Some(due) => (due - now)
                            .to_std()
                            .unwrap_or_default()
                            .min(self.options.poll_interval),
                        None => self.options.poll_interval,
                    };
                    (wait, backlog.pending > 0)
                }
            };
            if wait.is_zero() {
                drain = true;
                woken = Woken::Timer;
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
                    woken = Woken::Notify;
                }
                () = self.wakeup.notified() => {
                    drain = true;
                    woken = Woken::Wakeup;
                }
                _ = tokio::time::sleep(wait) => {
                    drain = drain_after_wait;
                    woken = Woken::Timer;
                }
            }
        }
    }

    /// Opens the `LISTEN` connection, trying again with backoff until it
    /// opens or `shutdown` comes: a replica whose database is down at start
    /// must still publish once it is back, not run without a relay.
    async fn listen(&self, shutdown: &CancellationToken) -> Option<PgListener> {
        let mut failures: u32 = 0;
        loop {
            let attempt = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener.listen(&self.schema.wakeup_channel()).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let error = tokio::select! {
                _ = shutdown.cancelled() => return None,
                result = attempt => match result {
                    Ok(listener) => return Some(listener),
                    Err(error) => error,
                },
            };
            failures = failures.saturating_add(1);
            let pause = backoff(failures);
            warn!(schema = %self.schema, %error, ?pause, "outbox relay cannot listen; trying again");
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Publishes until no row is ready (or for at most [`STATUS_REFRESH`]);
    /// returns how many rows it claimed.
    ///
    /// The first lane always runs, until a claim finds nothing. In a relay
    /// its replica rings ([`RelayWakeup`]), the others join when a claim
    /// comes back full (more rows are waiting) or when the replica commits
    /// new rows while the first lane waits for the broker's confirms: then
    /// they claim and publish side by side (`SKIP LOCKED` keeps their
    /// batches apart), so rows do not wait for another batch's confirms.
    /// They do not claim on spec: every claim that finds nothing is a
    /// transaction Postgres pays for. In a relay nobody rings, all lanes
    /// start at once, since claiming is its only way to see new rows.
    pub async fn drain(&self) -> Result<usize, RelayError> {
        Ok(self.drain_lanes().await?.claimed)
    }

    async fn drain_lanes(&self) -> Result<DrainPass, RelayError> {
        let spill = Spill::default();
        let first = async {
            let claimed = self
                .run_lane(&self.lanes[0], Pass::WhileRowsCome, &spill)
                .await;
            spill.done.cancel();
            claimed
        };
        let others = self.lanes[1..].iter().map(|lane| {
            let spill = &spill;
            async move {
                let mut claimed = 0;
                // A relay nobody rings learns of new rows only by claiming:
                // its lanes all start at once, each claiming until empty.
                let mut wait = self.wakeup.rung();
                loop {
                    if wait {
                        tokio::select! {
                            biased;
                            () = spill.done.cancelled() => return Ok::<usize, RelayError>(claimed),
                            () = spill.more.notified() => {}
                            () = self.wakeup.notified() => {}
                        }
                    }
                    wait = true;
                    claimed += self.run_lane(lane, Pass::WhileRowsCome, spill).await?;
                }
            }
        });
        let (first, others) = tokio::join!(first, futures_util::future::join_all(others));
        let mut claimed = first?;
        for pass in others {
            claimed += pass?;
        }
        Ok(DrainPass {
            claimed,
            saw_full_batch: spill.saw_full_batch.load(Ordering::Relaxed),
        })
    }

    /// Claims, publishes and marks one batch. Returns how many rows it
    /// claimed.
    pub async fn publish_batch(&self) -> Result<usize, RelayError> {
        self.run_lane(&self.lanes[0], Pass::OneBatch, &Spill::default())
            .await
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

/// What the lanes past the first wait for during a drain: more rows than
/// one lane takes, or the first lane finding nothing more (the end).
#[derive(Debug, Default)]
struct Spill {
    /// A claim came back full.
    more: Notify,
    saw_full_batch: AtomicBool,
    /// The first lane is done: the drain is over.
    done: CancellationToken,
}

impl Spill {
    pub(super) fn full_batch(&self) {
        self.saw_full_batch.store(true, Ordering::Relaxed);
        self.more.notify_waiters();
    }
}

/// What one drain did.
struct DrainPass {
    claimed: usize,
    saw_full_batch: bool,
}

/// What woke the relay last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Woken {
    /// This replica committed rows ([`RelayWakeup`]).
    Wakeup,
    /// A writer's `NOTIFY` (a writer of another process, or a replica
    /// without its own relay).
    Notify,
    /// The poll, a backoff or a due retry.
    Timer,
}

/// Tells a relay that its own replica just committed outbox rows, so it
/// claims them now instead of when its current batch is confirmed (or when
/// the poll comes: [`enqueue_for_local_relay`](crate::enqueue_for_local_relay)
/// sends no `NOTIFY`). Costs nothing but a wake-up in the same process.
/// Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RelayWakeup {
    inner: Arc<WakeupInner>,
}

#[derive(Debug, Default)]
struct WakeupInner {
    notify: Notify,
    /// Commits rung so far.
    committed: AtomicU64,
    /// Whether this replica's writers hand rows over: they do not ring for
    /// those, but they are there.
    local_writer: AtomicBool,
    /// `committed` as read just before the latest claim began: commits
    /// counted up to here are visible to some claim.
    claimed_through: AtomicU64,
}

impl RelayWakeup {
    /// Resolves when a commit is rung (or was, while nobody waited).
    async fn notified(&self) {
        self.inner.notify.notified().await;
    }

    pub fn rows_committed(&self) {
        self.inner.committed.fetch_add(1, Ordering::SeqCst);
        // One stored permit at most: many commits while every lane is
        // busy are one extra claim, not many.
        self.inner.notify.notify_one();
    }

    /// Called before a claim starts: every commit rung so far is visible
    /// to it.
    pub(super) fn claiming(&self) {
        let committed = self.inner.committed.load(Ordering::SeqCst);
        self.inner
            .claimed_through
            .fetch_max(committed, Ordering::SeqCst);
    }

    /// Rows were handed over (see [`RelayWriter`]).
    fn local_writer(&self) {
        self.inner.local_writer.store(true, Ordering::Relaxed);
    }

    /// Whether this relay's replica writes through it at all (ringing it or
    /// handing rows over): then new rows of its own need no claim to be
    /// found.
    pub(super) fn rung(&self) -> bool {
        self.inner.committed.load(Ordering::SeqCst) > 0
            || self.inner.local_writer.load(Ordering::Relaxed)
    }

    /// Whether a commit was rung after the latest claim began, so its rows
    /// may be waiting.
    pub(super) fn unclaimed_commits(&self) -> bool {
        self.inner.committed.load(Ordering::SeqCst)
            > self.inner.claimed_through.load(Ordering::SeqCst)
    }
}

/// Lanes per relay: batches in flight at once.
const LANES: usize = 3;

/// How often a relay that never runs out of rows still reads its backlog.
const STATUS_REFRESH: Duration = Duration::from_secs(1);

/// How long a relay waits before looking again at due rows that other
/// relays hold (their locks go when they commit or die); new rows still
/// wake it at once through `NOTIFY`.
const OTHERS_BATCH_WAIT: Duration = Duration::from_millis(100);

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

//! Consuming: the tasks behind one [`Consumer`].
//!
//! - One **reader** per stream (each consumed event stream, and the worker's
//!   retry stream), each blocking in its own
//!   `XREADGROUP ... STREAMS <stream> >` on its own connection. One stream
//!   per call keeps every command single-key, as Redis Cluster will require.
//! - A **reclaimer** that hands this replica the entries other consumers
//!   left pending past the visibility timeout (`XAUTOCLAIM`), and
//!   dead-letters entries delivered more often than the delivery limit: a
//!   poison that crashes every consumer it reaches.
//! - A **mover** that turns due members of the retry schedule into entries
//!   of the retry stream.
//!
//! Readers and reclaimer forward into one channel bounded by the prefetch;
//! awaiting its `send` is the backpressure. They end when the stop token
//! fires, the mover when the close token fires (retries scheduled while
//! in-flight deliveries drain still get moved).

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff};
use chrono::Utc;
use deadpool_redis::redis::streams::{
    StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply,
};
use deadpool_redis::redis::{self, RedisError};
use fleet_messages::names;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::fields::{EVENT, EntryFields, headers};
use super::settle::Settler;
use super::topology::{declare_group, declare_worker, worker_streams};
use super::{Shared, is_no_group};
use crate::backoff::reconnect_policy;
use crate::{BrokerError, Consumer, Delivery, DeliveryInfo, Failure, Transport, WorkerTopology};

/// The longest the mover sleeps. It sleeps until the earliest scheduled
/// retry is due, and its own replica wakes it for every retry it schedules;
/// this bound is for retries scheduled by other replicas after the mover
/// went to sleep (their own movers normally take them, unless that replica
/// died meanwhile). An idle replica runs the mover script once per bound,
/// where a fixed 200 ms poll ran it five times a second.
const MOVER_MAX_SLEEP: Duration = Duration::from_secs(1);

/// Members the mover script takes per call: bounds how long one script
/// blocks Redis.
const MOVER_BATCH: usize = 100;

/// Entries one `XAUTOCLAIM` call takes.
const RECLAIM_BATCH: usize = 100;

/// The reclaimer runs every half visibility timeout, but not more often than
/// this, so that a tiny timeout (in tests) does not turn it into a busy loop.
const MIN_RECLAIM_INTERVAL: Duration = Duration::from_millis(500);

/// Everything about the worker one consumer serves, shared by its tasks and
/// by the settlers of its deliveries.
#[derive(Debug)]
pub(super) struct WorkerContext {
    pub(super) shared: Arc<Shared>,
    pub(super) topology: WorkerTopology,
    pub(super) group: String,
    pub(super) retry_stream: String,
    pub(super) schedule: String,
    pub(super) dead_letter_stream: String,
    /// Wakes the mover early when a retry is due before its next tick.
    pub(super) mover_wake: Notify,
}

/// Declares the worker's groups, then starts its readers, reclaimer and
/// mover.
pub(super) async fn consume(
    shared: &Arc<Shared>,
    topology: &WorkerTopology,
) -> Result<Consumer, BrokerError> {
    declare_worker(shared, topology).await?;
    let namespace = &shared.namespace;
    let worker = Arc::new(WorkerContext {
        shared: Arc::clone(shared),
        topology: topology.clone(),
        group: names::consumer_group(&topology.worker),
        retry_stream: names::retry_stream(namespace, &topology.worker),
        schedule: names::retry_schedule(namespace, &topology.worker),
        dead_letter_stream: names::dead_letter_stream(namespace, &topology.worker),
        mover_wake: Notify::new(),
    });
    let streams = worker_streams(shared, topology);
    let (sender, receiver) = mpsc::channel(shared.prefetch);
    let stop = CancellationToken::new();
    let close = CancellationToken::new();
    let mut tasks = JoinSet::new();

    // Entries a reader holds while it waits for room in the channel are
    // already pending (and ageing towards the visibility timeout): splitting
    // the prefetch between the readers bounds them to about one prefetch.
    let batch = (shared.prefetch / streams.len()).max(1);
    for stream in &streams {
        tasks.spawn(read_stream(
            Arc::clone(&worker),
            stream.clone(),
            batch,
            sender.clone(),
            stop.clone(),
        ));
    }
    tasks.spawn(reclaim(Arc::clone(&worker), streams, sender, stop.clone()));
    tasks.spawn(move_retries(Arc::clone(&worker), close.clone()));
    info!(
        worker = %topology.worker,
        replica = %shared.replica,
        "consuming from redis streams"
    );
    Ok(Consumer::new(receiver, stop, close, tasks))
}

/// Reads `stream` for this replica until the stop token fires.
///
/// The stop token is checked only between reads: dropping a blocked
/// `XREADGROUP` could lose its reply after Redis already recorded the
/// entries as delivered to this consumer, stranding them until the
/// visibility timeout. So a read in progress finishes, its entries are
/// forwarded, and then the reader ends.
async fn read_stream(
    worker: Arc<WorkerContext>,
    stream: String,
    batch: usize,
    sender: mpsc::Sender<Delivery>,
    stop: CancellationToken,
) {
    let shared = &worker.shared;
    let block_ms = u64::try_from(shared.block.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut connection = None;
    let mut backoff = Reconnect::default();
    while !stop.is_cancelled() {
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => match shared.reader_connection().await {
                Ok(conn) => connection.insert(conn),
                Err(error) => {
                    warn!(%stream, %error, "redis reader cannot connect; retrying");
                    if !backoff.wait(&stop).await {
                        break;
                    }
                    continue;
                }
            },
        };
        let read: Result<Option<StreamReadReply>, RedisError> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&worker.group)
            .arg(&shared.replica)
            .arg("COUNT")
            .arg(batch)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(conn)
            .await;
        match read {
            Ok(reply) => {
                backoff.reset();
                let entries = reply
                    .into_iter()
                    .flat_map(|reply| reply.keys)
                    .flat_map(|key| key.ids);
                for entry in entries {
                    // `>` hands out entries never delivered before.
                    let Some(delivery) = prepare(&worker, &stream, entry, 1).await else {
                        continue;
                    };
                    if sender.send(delivery).await.is_err() {
                        // The consumer is gone; what was read stays pending
                        // and is reclaimed after the visibility timeout.
                        return;
                    }
                }
            }
            Err(error) if is_no_group(&error) => {
                // The stream or group vanished (Redis restarted without
                // persistence, or the key was deleted): create it again and
                // keep reading on the same connection.
                warn!(%stream, group = %worker.group, "consumer group missing; creating it again");
                if let Err(error) = declare_group(shared, &stream, &worker.group).await {
                    warn!(%stream, %error, "cannot re-create consumer group; retrying");
                    if !backoff.wait(&stop).await {
                        break;
                    }
                }
            }
            Err(error) => {
                // Killed connection, Redis restart, timeout: start over on a
                // fresh connection. Entries delivered by a read whose reply
                // was lost stay pending and come back through the reclaimer.
                warn!(%stream, %error, "redis read failed; reconnecting");
                connection = None;
                if !backoff.wait(&stop).await {
                    break;
                }
            }
        }
    }
    debug!(%stream, "redis reader stopped");
}

/// Periodically claims entries idle longer than the visibility timeout on
/// any of `streams`, until the stop token fires.
async fn reclaim(
    worker: Arc<WorkerContext>,
    streams: Vec<String>,
    sender: mpsc::Sender<Delivery>,
    stop: CancellationToken,
) {
    let interval = (worker.shared.visibility_timeout / 2).max(MIN_RECLAIM_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        for stream in &streams {
            match reclaim_stream(&worker, stream, &sender, &stop).await {
                Ok(Forwarding::Open) => {}
                Ok(Forwarding::Closed) => return,
                // Nothing is lost by skipping a round: the entries stay
                // pending and the next round tries again.
                Err(error) => warn!(%stream, %error, "reclaiming idle entries failed"),
            }
        }
    }
    debug!(worker = %worker.topology.worker, "redis reclaimer stopped");
}

/// Whether the consumer still takes deliveries.
enum Forwarding {
    Open,
    Closed,
}

/// One reclaim round on one stream: `XAUTOCLAIM` page by page until the
/// cursor wraps to `0-0`.
async fn reclaim_stream(
    worker: &Arc<WorkerContext>,
    stream: &str,
    sender: &mpsc::Sender<Delivery>,
    stop: &CancellationToken,
) -> Result<Forwarding, BrokerError> {
    let shared = &worker.shared;
    let min_idle_ms = u64::try_from(shared.visibility_timeout.as_millis()).unwrap_or(u64::MAX);
    let operation = format!("XAUTOCLAIM {stream}");
    let mut cursor = "0-0".to_owned();
    loop {
        let mut conn = shared.connection(&operation).await?;
        let reply: StreamAutoClaimReply = match redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(&worker.group)
            .arg(&shared.replica)
            .arg(min_idle_ms)
            .arg(&cursor)
            .arg("COUNT")
            .arg(RECLAIM_BATCH)
            .query_async(&mut *conn)
            .await
        {
            Ok(reply) => reply,
            Err(error) if is_no_group(&error) => {
                drop(conn);
                warn!(%stream, group = %worker.group, "consumer group missing; creating it again");
                declare_group(shared, stream, &worker.group).await?;
                return Ok(Forwarding::Open);
            }
            Err(error) => return Err(BrokerError::redis(&operation, error)),
        };
        if !reply.deleted_ids.is_empty() {
            // Entries deleted from the stream (trimmed) while pending: Redis
            // 7 drops them from the pending list itself and reports their
            // ids. There is no event left to deliver; acknowledging them
            // keeps older servers' pending lists clean too.
            debug!(%stream, count = reply.deleted_ids.len(), "pending entries were deleted from the stream");
            redis::cmd("XACK")
                .arg(stream)
                .arg(&worker.group)
                .arg(&reply.deleted_ids)
                .query_async::<u64>(&mut *conn)
                .await
                .map_err(|error| BrokerError::redis(&operation, error))?;
        }
        let claimed = with_delivery_counts(worker, stream, &mut conn, reply.claimed)
            .await
            .map_err(|error| BrokerError::redis(&format!("XPENDING {stream}"), error))?;
        drop(conn);
        if !claimed.is_empty() {
            info!(%stream, count = claimed.len(), "reclaimed entries idle past the visibility timeout");
        }
        for (entry, times_delivered) in claimed {
            let Some(delivery) = prepare(worker, stream, entry, times_delivered).await else {
                continue;
            };
            if sender.send(delivery).await.is_err() {
                return Ok(Forwarding::Closed);
            }
        }
        cursor = reply.next_stream_id;
        // What was claimed is forwarded even after a stop (the consumer
        // drains it); the next page is not fetched.
        if cursor == "0-0" || stop.is_cancelled() {
            return Ok(Forwarding::Open);
        }
    }
}

/// Pairs each claimed entry with its delivery count (`XPENDING <stream>
/// <group> <id> <id> 1`, pipelined), which `XAUTOCLAIM` does not return.
/// Entries no longer pending on this replica (acknowledged meanwhile by
/// their slow original consumer) are dropped: they are settled.
async fn with_delivery_counts(
    worker: &WorkerContext,
    stream: &str,
    conn: &mut super::Commands,
    claimed: Vec<StreamId>,
) -> Result<Vec<(StreamId, u64)>, RedisError> {
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for entry in &claimed {
        pipe.cmd("XPENDING")
            .arg(stream)
            .arg(&worker.group)
            .arg(&entry.id)
            .arg(&entry.id)
            .arg(1);
    }
    let pending: Vec<StreamPendingCountReply> = pipe.query_async(&mut **conn).await?;
    Ok(claimed
        .into_iter()
        .zip(pending)
        .filter_map(|(entry, pending)| {
            let record = pending
                .ids
                .into_iter()
                .find(|record| record.id == entry.id && record.consumer == worker.shared.replica)?;
            Some((
                entry,
                u64::try_from(record.times_delivered).unwrap_or(u64::MAX),
            ))
        })
        .collect())
}

/// Turns one entry into a delivery, or dead-letters it at once when it must
/// not be delivered: it has no `event` field, or it was delivered more often
/// than the delivery limit.
async fn prepare(
    worker: &Arc<WorkerContext>,
    stream: &str,
    entry: StreamId,
    times_delivered: u64,
) -> Option<Delivery> {
    let fields = EntryFields::decode(stream, stream == worker.retry_stream, &entry.map);
    let info = DeliveryInfo {
        transport: Transport::Redis,
        worker: worker.topology.worker.clone(),
        source: fields.source.clone(),
        attempt: fields.attempt(times_delivered),
        message_id: None,
        previous_failure: fields.previous_failure.clone(),
        replays: fields.replays,
        position: format!("{stream}/{}", entry.id),
        replica: worker.shared.replica.clone(),
    };
    let settler = Settler::new(Arc::clone(worker), stream.to_owned(), entry.id.clone());
    let Some(body) = fields.body else {
        // Not written by the fleet. Its fields, as JSON, are all there is to
        // keep, so they become the dead letter's body.
        let body = serde_json::to_vec(&headers(&entry.map)).unwrap_or_default();
        let error = format!("entry {} of {stream} has no `{EVENT}` field", entry.id);
        dead_letter_now(settler, &body, &info, "malformed_entry", error).await;
        return None;
    };
    if times_delivered > u64::from(worker.topology.delivery_limit) {
        let error = format!(
            "delivered {times_delivered} times without being settled (limit {}): \
             every consumer that took it crashed or exceeded the visibility timeout of {} ms",
            worker.topology.delivery_limit,
            worker.shared.visibility_timeout.as_millis()
        );
        dead_letter_now(settler, &body, &info, "delivery_limit", error).await;
        return None;
    }
    Some(Delivery {
        body,
        info,
        settler: crate::delivery::Settler::Redis(settler),
    })
}

/// Dead-letters an entry on the transport's own initiative. On failure the
/// entry stays pending, so the next reclaim round tries again.
async fn dead_letter_now(
    settler: Settler,
    body: &[u8],
    info: &DeliveryInfo,
    kind: &str,
    error: String,
) {
    let now = Utc::now();
    let failure = Failure {
        attempts: info.attempt,
        first_failed_at: info
            .previous_failure
            .as_ref()
            .map_or(now, |previous| previous.first_failed_at),
        last_failed_at: now,
        last_error: error,
    };
    match settler.dead_letter(body, info, kind, &failure).await {
        Ok(()) => warn!(
            position = %info.position,
            error_kind = kind,
            error = %failure.last_error,
            "dead-lettered entry without delivering it"
        ),
        Err(error) => warn!(
            position = %info.position,
            error_kind = kind,
            %error,
            "could not dead-letter entry; it stays pending"
        ),
    }
}

/// Moves due retries from the schedule to the retry stream until the close
/// token fires.
async fn move_retries(worker: Arc<WorkerContext>, close: CancellationToken) {
    let mut backoff = Reconnect::default();
    while !close.is_cancelled() {
        let sleep = match move_due(&worker).await {
            Ok(Moved { taken, next_due_in }) => {
                backoff.reset();
                if taken >= MOVER_BATCH {
                    // A full batch: more may be due right now.
                    continue;
                }
                next_due_in.map_or(MOVER_MAX_SLEEP, |wait| wait.min(MOVER_MAX_SLEEP))
            }
            Err(error) => {
                warn!(schedule = %worker.schedule, %error, "moving due retries failed; retrying");
                if !backoff.wait(&close).await {
                    break;
                }
                continue;
            }
        };
        tokio::select! {
            () = close.cancelled() => break,
            () = tokio::time::sleep(sleep) => {}
            () = worker.mover_wake.notified() => {}
        }
    }
    debug!(worker = %worker.topology.worker, "redis retry mover stopped");
}

/// What one run of the mover script did.
struct Moved {
    /// Members moved to the retry stream (or dead-lettered as unreadable).
    taken: usize,
    /// How long until the earliest member left is due; `None` when the
    /// schedule is empty.
    next_due_in: Option<Duration>,
}

/// One run of the mover script.
async fn move_due(worker: &WorkerContext) -> Result<Moved, BrokerError> {
    let shared = &worker.shared;
    let operation = format!("move due retries of {}", worker.schedule);
    let mut conn = shared.connection(&operation).await?;
    shared
        .scripts
        .move_due
        .key(&worker.schedule)
        .key(&worker.retry_stream)
        .key(&worker.dead_letter_stream)
        .arg(MOVER_BATCH)
        .arg(&worker.topology.worker)
        .arg(&shared.replica)
        .invoke_async::<(usize, i64)>(&mut *conn)
        .await
        .map(|(taken, wait_ms)| Moved {
            taken,
            // -1: nothing scheduled.
            next_due_in: u64::try_from(wait_ms).ok().map(Duration::from_millis),
        })
        .map_err(|error| BrokerError::redis(&operation, error))
}

/// Reconnect delays from the shared policy, restarting after a success.
#[derive(Default)]
struct Reconnect {
    delays: Option<ExponentialBackoff>,
}

impl Reconnect {
    fn reset(&mut self) {
        self.delays = None;
    }

    /// Sleeps for the next delay; `false` if `token` fired first.
    async fn wait(&mut self, token: &CancellationToken) -> bool {
        let delay = self
            .delays
            .get_or_insert_with(|| reconnect_policy().build())
            .next()
            // The policy has no cap on attempts; this only guards a change
            // of that policy.
            .unwrap_or(Duration::from_secs(10));
        tokio::select! {
            () = token.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

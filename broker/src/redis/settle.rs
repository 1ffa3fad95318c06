//! Settling one delivery: `XACK`, or a retry or dead letter written durably
//! *before* the `XACK`. A crash between the write and the `XACK` leaves the
//! original pending, so it is reclaimed and handled again: a duplicate, which
//! the inbox absorbs, never a loss.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis;

use super::consume::WorkerContext;
use super::fields::{ScheduledRetry, dead_letter_fields};
use crate::{BrokerError, DeliveryInfo, Failure};

/// Settles one Redis delivery: knows its stream, entry and group.
#[derive(Debug)]
pub struct Settler {
    worker: Arc<WorkerContext>,
    /// The stream the entry was read from (an event stream or the worker's
    /// retry stream): where it is pending.
    stream: String,
    entry_id: String,
}

impl Settler {
    pub(super) fn new(worker: Arc<WorkerContext>, stream: String, entry_id: String) -> Self {
        Self {
            worker,
            stream,
            entry_id,
        }
    }

    /// `XACK`: removes the entry from the group's pending list.
    pub(crate) async fn ack(self) -> Result<(), BrokerError> {
        self.xack().await
    }

    /// Entries whose transaction committed together: one `XACK` per stream
    /// listing all of its entries, the streams pipelined in one round trip.
    pub(crate) async fn ack_together(settlers: &[Self]) -> Result<(), BrokerError> {
        let Some(first) = settlers.first() else {
            return Ok(());
        };
        let mut streams: Vec<(&str, &str, Vec<&str>)> = Vec::new();
        for settler in settlers {
            let group = settler.worker.group.as_str();
            match streams
                .iter_mut()
                .find(|(stream, other_group, _)| *stream == settler.stream && *other_group == group)
            {
                Some((_, _, entries)) => entries.push(&settler.entry_id),
                None => streams.push((&settler.stream, group, vec![&settler.entry_id])),
            }
        }
        let mut pipe = redis::pipe();
        for (stream, group, entries) in &streams {
            pipe.cmd("XACK").arg(stream).arg(group).arg(entries);
        }
        let operation = match settlers {
            [one] => format!("XACK {} {}", one.stream, one.entry_id),
            _ => format!("XACK of {} entries", settlers.len()),
        };
        let mut conn = first.worker.shared.connection(&operation).await?;
        let acked: Vec<u64> = pipe
            .query_async(&mut *conn)
            .await
            .map_err(|error| BrokerError::redis(&operation, error))?;
        let acked: u64 = acked.iter().sum();
        if acked < settlers.len() as u64 {
            // Not pending any more: another replica reclaimed them after the
            // visibility timeout and settled them first, or Redis lost them
            // in a restart. Either way there is nothing left to remove.
            tracing::debug!(
                operation,
                acked,
                "some acknowledged entries were no longer pending"
            );
        }
        Ok(())
    }

    /// Schedules the event for this worker only (its own sorted set and
    /// retry stream; other workers' groups never see it), due after `after`
    /// rounded up to a retry tier; then `XACK`s the original.
    pub(crate) async fn retry(
        self,
        body: &[u8],
        info: &DeliveryInfo,
        after: Duration,
        failure: &Failure,
    ) -> Result<(), BrokerError> {
        let settle_error = |reason: String| BrokerError::Settle {
            delivery: info.position.clone(),
            reason,
        };
        let delay = crate::topology::tier_delay(&self.worker.topology.retry_delays, after);
        let member = serde_json::to_string(&ScheduledRetry::new(body, info, failure))
            .map_err(|error| settle_error(format!("encode retry: {error}")))?;
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self
            .worker
            .shared
            .connection("schedule retry")
            .await
            .map_err(|error| settle_error(format!("schedule retry: {error}")))?;
        self.worker
            .shared
            .scripts
            .schedule
            .key(&self.worker.schedule)
            .arg(delay_ms)
            .arg(member)
            .invoke_async::<i64>(&mut *conn)
            .await
            .map_err(|error| {
                settle_error(format!(
                    "schedule retry in {}: {error}",
                    self.worker.schedule
                ))
            })?;
        drop(conn);
        // The mover sleeps until the earliest retry it knew of is due; this
        // one may be due sooner.
        self.worker.mover_wake.notify_one();
        self.xack().await
    }

    /// Appends the event with its failure metadata to the worker's
    /// dead-letter stream, then `XACK`s the original.
    pub(crate) async fn dead_letter(
        self,
        body: &[u8],
        info: &DeliveryInfo,
        kind: &str,
        failure: &Failure,
    ) -> Result<(), BrokerError> {
        let stream = &self.worker.dead_letter_stream;
        let settle_error = |reason: String| BrokerError::Settle {
            delivery: info.position.clone(),
            reason: format!("XADD {stream}: {reason}"),
        };
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream).arg("*");
        for (name, value) in dead_letter_fields(body, info, kind, failure) {
            cmd.arg(name).arg(value);
        }
        let mut conn = self
            .worker
            .shared
            .connection("XADD dead letter")
            .await
            .map_err(|error| settle_error(error.to_string()))?;
        cmd.query_async::<String>(&mut *conn)
            .await
            .map_err(|error| settle_error(error.to_string()))?;
        drop(conn);
        self.xack().await
    }

    async fn xack(&self) -> Result<(), BrokerError> {
        Self::ack_together(std::slice::from_ref(self)).await
    }
}

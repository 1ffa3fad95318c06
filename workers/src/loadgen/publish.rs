//! Publishing the orders: real envelopes, in batches with pipelined
//! confirms, paced to a target rate without drift.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_broker::{Broker, OutgoingMessage, PublishOutcome};
use fleet_messages::{Envelope, EventData, OrderSubmitted};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};
use uuid::Uuid;

/// The `source` of the events loadgen publishes.
pub(crate) const SOURCE: &str = "loadgen";

/// With a target rate, batches go out at least this often, so that a large
/// `--batch` does not turn a steady rate into bursts.
const BATCHES_PER_SECOND: f64 = 20.0;
/// Batches published but not yet confirmed, at most: enough that a slow
/// confirm does not hold back the next batch, bounded so a broker that
/// stops confirming stops loadgen too.
const BATCHES_IN_FLIGHT: usize = 64;
/// Attempts to get one message confirmed before the run fails.
const MAX_PUBLISH_ATTEMPTS: u32 = 8;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// How fast to publish.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Pacing {
    /// Orders per second; 0 = as fast as the broker confirms.
    pub(crate) rate: f64,
    /// Largest batch.
    pub(crate) batch: usize,
}

impl Pacing {
    /// The batch size actually used: `batch`, or less with a target rate so
    /// that batches leave at least [`BATCHES_PER_SECOND`] times a second.
    pub(crate) fn effective_batch(&self) -> usize {
        let batch = self.batch.max(1);
        if self.rate > 0.0 {
            let per_tick = (self.rate / BATCHES_PER_SECOND).ceil();
            batch.min(per_tick as usize).max(1)
        } else {
            batch
        }
    }

    /// When the order at `index` (0-based) is due, counted from the start of
    /// publishing: `index / rate`. Each batch's time derives from the start,
    /// never from the previous batch, so delays do not accumulate (a late
    /// batch is followed by earlier-due ones, which go at once).
    pub(crate) fn due_offset(&self, index: usize) -> Duration {
        if self.rate > 0.0 {
            Duration::try_from_secs_f64(index as f64 / self.rate).unwrap_or(Duration::MAX)
        } else {
            Duration::ZERO
        }
    }
}

/// What publishing did.
#[derive(Clone, Debug)]
pub(crate) struct Published {
    /// When each order's first publish attempt started.
    pub(crate) submitted_at: HashMap<Uuid, Instant>,
    /// When the first batch went out.
    pub(crate) first_publish: Option<Instant>,
    /// When the last confirm arrived.
    pub(crate) finished: Instant,
    /// Orders the broker confirmed.
    pub(crate) published: u64,
    /// Messages sent again after a publish that was not confirmed.
    pub(crate) republished: u64,
}

/// Publishes every order, batches in order of their due times. A batch
/// leaves when it is due whether or not earlier ones are confirmed yet (up
/// to [`BATCHES_IN_FLIGHT`]): the offered rate is the rate asked for, not
/// what the broker's confirm latency leaves of it. Fails when a message is
/// still not confirmed after [`MAX_PUBLISH_ATTEMPTS`].
pub(crate) async fn publish_all(
    broker: Broker,
    orders: Vec<OrderSubmitted>,
    pacing: Pacing,
) -> anyhow::Result<Published> {
    let start = Instant::now();
    let batch = pacing.effective_batch();
    let mut report = Published {
        submitted_at: HashMap::with_capacity(orders.len()),
        first_publish: None,
        finished: start,
        published: 0,
        republished: 0,
    };
    let window = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut in_flight: JoinSet<anyhow::Result<(u64, u64)>> = JoinSet::new();
    let mut first_index = 0;
    for chunk in orders.chunks(batch) {
        if let Some(due) = start.checked_add(pacing.due_offset(first_index)) {
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = window
            .clone()
            .acquire_owned()
            .await
            .context("publish window closed")?;
        let sent_at = Instant::now();
        report.first_publish.get_or_insert(sent_at);
        let messages: Vec<OutgoingMessage> = chunk
            .iter()
            .map(|order| {
                report.submitted_at.insert(order.order_id, sent_at);
                let envelope =
                    Envelope::new(SOURCE, EventData::from(order.clone()), order.order_id, None);
                OutgoingMessage::from_envelope(&envelope)
            })
            .collect();
        let last_index = first_index + chunk.len();
        let broker = broker.clone();
        in_flight.spawn(async move {
            let count = messages.len() as u64;
            let republished = publish_confirmed(&broker, messages)
                .await
                .with_context(|| format!("publishing orders {first_index}..{last_index}"))?;
            drop(permit);
            Ok((count, republished))
        });
        while let Some(done) = in_flight.try_join_next() {
            report.add(done.context("publishing task failed")??);
        }
        first_index = last_index;
    }
    while let Some(done) = in_flight.join_next().await {
        report.add(done.context("publishing task failed")??);
    }
    report.finished = Instant::now();
    Ok(report)
}

impl Published {
    /// Counts one confirmed batch: its size and how many were sent again.
    fn add(&mut self, (confirmed, republished): (u64, u64)) {
        self.published += confirmed;
        self.republished += republished;
        debug!(published = self.published, "batch confirmed");
    }
}

/// Publishes `messages` until every one is confirmed, re-sending the others
/// (same event id: the inbox absorbs a message stored twice). Returns how
/// many messages were sent again.
async fn publish_confirmed(broker: &Broker, messages: Vec<OutgoingMessage>) -> anyhow::Result<u64> {
    let mut pending = messages;
    let mut republished = 0;
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt = 1;
    loop {
        let problem = match broker.publish_batch(&pending).await {
            Ok(outcomes) => {
                let mut problem = None;
                let unconfirmed: Vec<OutgoingMessage> = std::mem::take(&mut pending)
                    .into_iter()
                    .enumerate()
                    .filter(|(index, message)| match outcomes.get(*index) {
                        Some(PublishOutcome::Confirmed) => false,
                        other => {
                            problem.get_or_insert_with(|| describe(other, message));
                            true
                        }
                    })
                    .map(|(_, message)| message)
                    .collect();
                pending = unconfirmed;
                match problem {
                    None => return Ok(republished),
                    Some(problem) => problem,
                }
            }
            Err(error) => format!("broker unavailable: {error}"),
        };
        if attempt >= MAX_PUBLISH_ATTEMPTS {
            bail!(
                "{} message(s) still not confirmed after {MAX_PUBLISH_ATTEMPTS} attempts; last \
                 problem: {problem}",
                pending.len()
            );
        }
        warn!(
            attempt,
            unconfirmed = pending.len(),
            %problem,
            "publish not confirmed, sending again in {delay:?}"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
        republished += pending.len() as u64;
        attempt += 1;
    }
}

fn describe(outcome: Option<&PublishOutcome>, message: &OutgoingMessage) -> String {
    match outcome {
        Some(PublishOutcome::Confirmed) => "confirmed".to_owned(),
        Some(PublishOutcome::Unroutable) => format!(
            "unroutable: no queue is bound to `{}` (is order-worker running with this namespace?)",
            message.event_type
        ),
        Some(PublishOutcome::Nacked) => "nacked by the broker".to_owned(),
        Some(PublishOutcome::Failed(reason)) => format!("no confirm: {reason}"),
        None => "the broker returned no outcome for it".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_rate_sends_full_batches_at_once() {
        let pacing = Pacing {
            rate: 0.0,
            batch: 200,
        };
        assert_eq!(pacing.effective_batch(), 200);
        assert_eq!(pacing.due_offset(0), Duration::ZERO);
        assert_eq!(pacing.due_offset(10_000), Duration::ZERO);
    }

    #[test]
    fn a_rate_shrinks_batches_to_twenty_per_second() {
        let batch = |rate, batch| Pacing { rate, batch }.effective_batch();
        assert_eq!(batch(100.0, 200), 5);
        assert_eq!(batch(1.0, 200), 1);
        assert_eq!(batch(0.5, 200), 1);
        assert_eq!(batch(100_000.0, 200), 200);
        assert_eq!(batch(10.0, 0), 1);
    }

    #[test]
    fn due_times_derive_from_the_start_without_drift() {
        let pacing = Pacing {
            rate: 100.0,
            batch: 5,
        };
        assert_eq!(pacing.due_offset(0), Duration::ZERO);
        assert_eq!(pacing.due_offset(5), Duration::from_millis(50));
        assert_eq!(pacing.due_offset(1000), Duration::from_secs(10));
        let slow = Pacing {
            rate: 3.0,
            batch: 1,
        };
        // 1/3 s per order, accumulated exactly rather than per step.
        assert_eq!(slow.due_offset(3), Duration::from_secs(1));
        assert_eq!(slow.due_offset(300), Duration::from_secs(100));
    }

    #[test]
    fn unroutable_says_what_to_start() {
        let message = OutgoingMessage {
            id: "x".into(),
            event_type: "order.submitted".into(),
            body: vec![],
            timestamp: 0,
        };
        let text = describe(Some(&PublishOutcome::Unroutable), &message);
        assert!(text.contains("order-worker"), "{text}");
        assert!(describe(None, &message).contains("no outcome"));
    }
}

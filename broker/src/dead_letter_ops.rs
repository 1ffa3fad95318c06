//! Operator operations on dead letters (what `dlq-tool` is built on):
//! streaming browse, a selection fixed once, then replay, purge and import of
//! exactly that selection.
//!
//! The safety rule every operation here keeps: a dead letter is removed only
//! after its replay was confirmed by the broker. A process killed at any
//! moment therefore leaves each selected dead letter in its queue, or
//! replayed, or both (a duplicate the worker's inbox absorbs, since the event
//! id is kept), never neither.
//!
//! - [`Broker::browse_dead_letters`] visits dead letters oldest first, one at
//!   a time, without removing or reordering any, and never holds more than
//!   one body: 100,000 dead letters are streamed, not loaded.
//! - [`Broker::select_dead_letters`] browses once and keeps only the
//!   identities (event id and position) of what matched: the selection is
//!   fixed when the operator asked, so dead letters that arrive later are not
//!   swept in.
//! - [`Broker::replay_dead_letters`] republishes each selected dead letter to
//!   its worker only (RabbitMQ: the worker's retry exchange with the
//!   `redeliver` key; Redis: the worker's retry stream), failure stamps
//!   stripped and the replay count raised, then removes it.
//! - [`Broker::purge_dead_letters`] removes the selection.
//! - [`Broker::import_dead_letters`] writes dead letters (from an export)
//!   back into a dead-letter queue, or replays them to the worker.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Duration;

use serde::Serialize;

use crate::{Broker, BrokerError, DeadLetter, PublishOutcome};

/// Most failures a report lists one by one; the counters stay exact.
pub(crate) const MAX_LISTED_FAILURES: usize = 100;

/// What a browse saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrowseSummary {
    /// Dead letters visited.
    pub seen: u64,
    /// Redis: the last entry id that existed when the browse started, the
    /// end of the browse. Entries after it arrived later.
    pub watermark: Option<String>,
}

/// One selected dead letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SelectedDeadLetter {
    /// The contract's dead-letter id (event id, message id or digest).
    pub id: String,
    /// Where it is: the stream entry id (Redis); empty on RabbitMQ, which
    /// selects by id (a queue has no stable positions).
    pub position: String,
}

/// Dead letters of one worker, fixed when they were selected: identities
/// only, never bodies, so that a selection of 100,000 stays small.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterSelection {
    worker: String,
    entries: Vec<SelectedDeadLetter>,
    watermark: Option<String>,
}

impl DeadLetterSelection {
    pub fn worker(&self) -> &str {
        &self.worker
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[SelectedDeadLetter] {
        &self.entries
    }

    /// Redis: the last entry id of the dead-letter stream when the selection
    /// was made. Entries after it were not considered.
    pub fn watermark(&self) -> Option<&str> {
        self.watermark.as_deref()
    }

    /// Selected ids with their multiplicity: one event may have been
    /// dead-lettered twice, and both copies are selected.
    pub(crate) fn id_counts(&self) -> HashMap<&str, u32> {
        let mut counts: HashMap<&str, u32> = HashMap::with_capacity(self.entries.len());
        for entry in &self.entries {
            *counts.entry(entry.id.as_str()).or_insert(0) += 1;
        }
        counts
    }
}

/// How a replay runs.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Dead letters per second at most; `None` is as fast as the broker
    /// confirms.
    pub rate: Option<f64>,
    /// Stop once this many replayed dead letters came back dead-lettered
    /// again (their handler still fails); `None` never stops early.
    pub stop_after_redead: Option<u64>,
}

/// One dead letter that could not be replayed (it stays in its queue).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplayFailure {
    pub id: String,
    pub reason: String,
}

/// What a replay or purge did. Counters are exact; `failures` lists the
/// first [`MAX_LISTED_FAILURES`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub selected: u64,
    /// Replayed (confirmed) and removed; for a purge, removed.
    pub replayed: u64,
    /// Not replayed: the broker did not confirm. They stay dead letters.
    pub failed: u64,
    /// Selected but no longer there (removed by someone else meanwhile).
    pub missing: u64,
    /// Replayed dead letters seen dead-lettered again during the run.
    pub redead: u64,
    /// Stopped because `redead` reached the threshold.
    pub stopped_early: bool,
    /// The connection broke: the rest of the selection was left in place.
    pub aborted: Option<String>,
    pub failures: Vec<ReplayFailure>,
}

impl ReplayReport {
    pub(crate) fn new(selected: usize) -> Self {
        Self {
            selected: u64::try_from(selected).unwrap_or(u64::MAX),
            ..Self::default()
        }
    }

    pub(crate) fn fail(&mut self, id: &str, reason: String) {
        self.failed += 1;
        if self.failures.len() < MAX_LISTED_FAILURES {
            self.failures.push(ReplayFailure {
                id: id.to_owned(),
                reason,
            });
        }
    }

    /// Dead letters handled so far, whatever the outcome.
    pub fn done(&self) -> u64 {
        self.replayed + self.failed
    }
}

/// Waits until `done` items fit into `rate` per second since `started`.
pub(crate) async fn pace(started: tokio::time::Instant, done: u64, rate: Option<f64>) {
    if let Some(rate) = rate.filter(|rate| *rate > 0.0) {
        #[allow(clippy::cast_precision_loss)]
        let due = started + Duration::from_secs_f64(done as f64 / rate);
        tokio::time::sleep_until(due).await;
    }
}

/// Whether a dead letter counts as a replayed one failing again: it was
/// replayed at least once, and it is one of the selection.
pub(crate) fn is_redead(letter_replays: u32, id: &str, selected: &HashMap<&str, u32>) -> bool {
    letter_replays > 0 && selected.contains_key(id)
}

impl Broker {
    /// Visits the dead letters of `worker` oldest first, one at a time,
    /// without removing or reordering any, until `visit` breaks or every
    /// dead letter present when the browse started was visited (later
    /// arrivals are not). A missing queue or stream has none.
    pub async fn browse_dead_letters(
        &self,
        worker: &str,
        visit: &mut (dyn FnMut(DeadLetter) -> ControlFlow<()> + Send),
    ) -> Result<BrowseSummary, BrokerError> {
        match self {
            Broker::RabbitMq(broker) => broker.browse_dead_letters(worker, visit).await,
            Broker::Redis(broker) => broker.browse_dead_letters(worker, visit).await,
        }
    }

    /// Browses once and keeps the identities of the dead letters `matches`
    /// accepts, at most `limit` of them, in queue order.
    pub async fn select_dead_letters(
        &self,
        worker: &str,
        limit: Option<u64>,
        matches: &mut (dyn FnMut(&DeadLetter) -> bool + Send),
    ) -> Result<DeadLetterSelection, BrokerError> {
        let mut entries = Vec::new();
        let limit = limit.unwrap_or(u64::MAX);
        // RabbitMQ selects by id alone: leaving its (informative) position
        // out saves an allocation per dead letter in a large selection.
        let keep_position = matches!(self, Broker::Redis(_));
        let summary = self
            .browse_dead_letters(worker, &mut |letter| {
                if u64::try_from(entries.len()).unwrap_or(u64::MAX) >= limit {
                    return ControlFlow::Break(());
                }
                if matches(&letter) {
                    entries.push(SelectedDeadLetter {
                        id: letter.id,
                        position: if keep_position {
                            letter.position
                        } else {
                            String::new()
                        },
                    });
                }
                ControlFlow::Continue(())
            })
            .await?;
        entries.shrink_to_fit();
        Ok(DeadLetterSelection {
            worker: worker.to_owned(),
            entries,
            watermark: summary.watermark,
        })
    }

    /// Replays the selection to its worker only, each dead letter removed
    /// after the broker confirmed its replay. `progress` is called after
    /// every dead letter (or batch) with the running report.
    pub async fn replay_dead_letters(
        &self,
        selection: &DeadLetterSelection,
        options: &ReplayOptions,
        progress: &mut (dyn FnMut(&ReplayReport) + Send),
    ) -> Result<ReplayReport, BrokerError> {
        match self {
            Broker::RabbitMq(broker) => {
                broker
                    .take_dead_letters(selection, Some(options), progress)
                    .await
            }
            Broker::Redis(broker) => {
                broker
                    .take_dead_letters(selection, Some(options), progress)
                    .await
            }
        }
    }

    /// Removes the selection (`replayed` in the report counts removals).
    pub async fn purge_dead_letters(
        &self,
        selection: &DeadLetterSelection,
        progress: &mut (dyn FnMut(&ReplayReport) + Send),
    ) -> Result<ReplayReport, BrokerError> {
        match self {
            Broker::RabbitMq(broker) => broker.take_dead_letters(selection, None, progress).await,
            Broker::Redis(broker) => broker.take_dead_letters(selection, None, progress).await,
        }
    }

    /// Writes `letters` (from an export) into `worker`'s dead-letter queue
    /// with their failure metadata, or with `replay` republishes them to the
    /// worker as a replay would. One outcome per letter, in order.
    pub async fn import_dead_letters(
        &self,
        worker: &str,
        letters: &[DeadLetter],
        replay: bool,
    ) -> Result<Vec<PublishOutcome>, BrokerError> {
        match self {
            Broker::RabbitMq(broker) => broker.import_dead_letters(worker, letters, replay).await,
            Broker::Redis(broker) => broker.import_dead_letters(worker, letters, replay).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_ids_are_counted() {
        let selection = DeadLetterSelection {
            worker: "w".to_owned(),
            entries: vec![
                SelectedDeadLetter {
                    id: "a".to_owned(),
                    position: "0".to_owned(),
                },
                SelectedDeadLetter {
                    id: "a".to_owned(),
                    position: "1".to_owned(),
                },
            ],
            watermark: None,
        };
        assert_eq!(selection.id_counts().get("a"), Some(&2));
        assert!(is_redead(1, "a", &selection.id_counts()));
        assert!(!is_redead(0, "a", &selection.id_counts()));
        assert!(!is_redead(1, "b", &selection.id_counts()));
    }

    #[test]
    fn failures_are_counted_beyond_the_listed_ones() {
        let mut report = ReplayReport::new(200);
        for n in 0..150 {
            report.fail(&n.to_string(), "x".to_owned());
        }
        assert_eq!(report.failed, 150);
        assert_eq!(report.failures.len(), MAX_LISTED_FAILURES);
    }
}

use std::time::Duration;

use fleet_messages::{EventType, Worker};

/// What one worker consumes and how its failures are handled: everything the
/// transports need to declare its queue or consumer group, retry tiers and
/// dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerTopology {
    /// The worker's name (`inventory-worker`): queue, group and DLQ names
    /// derive from it.
    pub worker: String,
    /// Event types (routing keys) the worker consumes.
    pub event_types: Vec<String>,
    /// Retry delay tiers; a retry after `d` waits in the tier of `d`, or the
    /// nearest longer one.
    pub retry_delays: Vec<Duration>,
    /// Redeliveries of one unacknowledged message (a consumer that crashes
    /// on it every time) before the broker dead-letters it by itself.
    pub delivery_limit: u32,
    /// For a consumer that lives only as long as its process (loadgen's
    /// observer): RabbitMQ deletes the topology's queues once they have gone
    /// this long without a consumer, so a process killed before it could
    /// clean up leaves no queue collecting events forever. `None` for the
    /// fleet's workers, whose queues outlive every replica. Redis ignores
    /// it: a consumer group holds no entries of its own.
    pub expires_after: Option<Duration>,
}

impl WorkerTopology {
    /// The topology of one of the fleet's own workers, from the contract's
    /// bindings and the retry settings.
    pub fn for_worker(worker: Worker, retry: &fleet_config::RetrySettings) -> Self {
        Self {
            worker: worker.name().to_owned(),
            event_types: worker
                .consumes()
                .iter()
                .map(|event_type: &EventType| event_type.as_str().to_owned())
                .collect(),
            retry_delays: retry.delays(),
            delivery_limit: retry.max_attempts.max(2),
            expires_after: None,
        }
    }
}

/// The delay a retry after `after` actually waits: the first tier at least
/// that long, else the longest tier (else `after` itself, with no tiers).
/// One rule for both transports, so a worker retries alike on either: the
/// RabbitMQ delay queues exist only for the configured tiers.
pub(crate) fn tier_delay(tiers: &[Duration], after: Duration) -> Duration {
    tiers
        .iter()
        .copied()
        .find(|delay| *delay >= after)
        .or_else(|| tiers.last().copied())
        .unwrap_or(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_round_up_to_a_tier_and_the_last_tier_repeats() {
        let tiers = [Duration::from_millis(100), Duration::from_millis(500)];
        assert_eq!(tier_delay(&tiers, Duration::from_millis(1)), tiers[0]);
        assert_eq!(tier_delay(&tiers, Duration::from_millis(100)), tiers[0]);
        assert_eq!(tier_delay(&tiers, Duration::from_millis(101)), tiers[1]);
        assert_eq!(tier_delay(&tiers, Duration::from_secs(9)), tiers[1]);
        assert_eq!(
            tier_delay(&[], Duration::from_secs(9)),
            Duration::from_secs(9)
        );
    }
}

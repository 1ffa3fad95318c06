//! Metric names of the worker runtime (the outbox's are in
//! `fleet_outbox::metrics`). Every one carries a `worker` label.

/// Counter: deliveries taken from the broker.
pub const CONSUMED: &str = "fleet_consumed_total";
/// Counter: events handled and committed, by `type`.
pub const HANDLED: &str = "fleet_handled_total";
/// Counter: deliveries the inbox recognised as already handled.
pub const DUPLICATES: &str = "fleet_duplicates_total";
/// Counter: deliveries scheduled for a retry.
pub const RETRIED: &str = "fleet_retried_total";
/// Counter: deliveries dead-lettered, by `kind`.
pub const DEAD_LETTERED: &str = "fleet_dead_lettered_total";
/// Histogram: seconds from taking a delivery to settling it, by `type`.
pub const HANDLER_SECONDS: &str = "fleet_handler_seconds";
/// Counter: settlements (ack, retry, dead letter) the broker refused; the
/// delivery comes again.
pub const SETTLE_FAILURES: &str = "fleet_settle_failures_total";
/// Counter: batches rolled back because one of their events failed; their
/// events were then handled one at a time.
pub const BATCH_FALLBACKS: &str = "fleet_batch_fallbacks_total";
/// Histogram: events handled together in one transaction, per batch (1
/// when a replica keeps up; more when deliveries wait for a free slot).
pub const BATCH_EVENTS: &str = "fleet_batch_events";

//! Metric names (Prometheus, through the `metrics` facade). Every outbox
//! metric carries a `schema` label: one per worker.

/// Gauge: rows waiting to be published (not parked).
pub const OUTBOX_BACKLOG: &str = "fleet_outbox_backlog";
/// Gauge: seconds since the oldest unpublished row was written: the relay lag.
pub const OUTBOX_OLDEST_AGE: &str = "fleet_outbox_oldest_unpublished_seconds";
/// Counter: rows published and confirmed.
pub const OUTBOX_PUBLISHED: &str = "fleet_outbox_published_total";
/// Counter: broker refusals (unroutable, nacked) of a row.
pub const OUTBOX_REFUSED: &str = "fleet_outbox_refused_total";
/// Gauge: rows parked after too many refusals, waiting for an operator.
pub const OUTBOX_PARKED: &str = "fleet_outbox_parked";
/// Counter: rows deleted by retention.
pub const OUTBOX_DELETED: &str = "fleet_outbox_deleted_total";
/// Counter: events a consumer had already handled.
pub const INBOX_DUPLICATES: &str = "fleet_inbox_duplicates_total";
/// Counter: inbox entries deleted by retention.
pub const INBOX_DELETED: &str = "fleet_inbox_deleted_total";

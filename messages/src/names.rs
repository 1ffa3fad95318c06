//! Every broker name of the fleet, and nothing else.
//!
//! Exchanges, queues, streams and consumer groups are part of the public
//! contract ("Transports"): operators and tests written in other languages
//! address them by name. Building them anywhere but here would let two crates
//! drift apart silently, so the broker, workers and `dlq-tool` all call these
//! functions.
//!
//! Every name starts with a [`Namespace`] so that several fleets, and parallel
//! tests, can share one broker. RabbitMQ names separate their parts with `.`,
//! Redis keys with `:`; neither separator is allowed inside a namespace, so
//! one namespace's names can never be mistaken for another's.
//!
//! Worker names are plain `&str` in the free functions so that tests can
//! declare ad-hoc workers; production code passes [`Worker::name`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::events::EventType;

/// Longest namespace accepted, in characters. Generous for a prefix, and keeps
/// the longest derived name (a retry queue) well within RabbitMQ's 255-byte
/// limit on queue names.
const MAX_NAMESPACE_CHARS: usize = 48;

/// The prefix of every broker name (configuration key `namespace`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

/// A string refused as a [`Namespace`], with the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid namespace {value:?}: {rule}")]
pub struct InvalidNamespace {
    /// The refused value.
    pub value: String,
    /// The rule it broke, as a sentence fragment.
    pub rule: &'static str,
}

impl Namespace {
    /// Validates `s`: 1 to 48 characters among lowercase ASCII letters, digits,
    /// `-` and `_`, starting with a letter or digit.
    ///
    /// The character set is the intersection of what is safe unquoted in
    /// RabbitMQ names, Redis keys, shell scripts and URLs, and excludes both
    /// name separators (`.` and `:`).
    pub fn new(s: &str) -> Result<Namespace, InvalidNamespace> {
        let invalid = |rule| InvalidNamespace {
            value: s.to_owned(),
            rule,
        };
        let Some(first) = s.chars().next() else {
            return Err(invalid("must not be empty"));
        };
        if s.chars().count() > MAX_NAMESPACE_CHARS {
            return Err(invalid("must be at most 48 characters long"));
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(invalid(
                "must start with a lowercase ASCII letter or a digit",
            ));
        }
        let allowed =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        if !s.chars().all(allowed) {
            return Err(invalid(
                "may contain only lowercase ASCII letters, digits, '-' and '_'",
            ));
        }
        Ok(Namespace(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Namespace {
    /// `fleet`, the contract's default.
    fn default() -> Self {
        Namespace("fleet".to_owned())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Namespace {
    type Err = InvalidNamespace;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Namespace::new(s)
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The four workers of the fleet. The name is also each worker's binary name,
/// its `source` attribute, and its consumer group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Worker {
    Order,
    Inventory,
    Payment,
    Notification,
}

impl Worker {
    /// Every worker.
    pub const ALL: [Worker; 4] = [
        Worker::Order,
        Worker::Inventory,
        Worker::Payment,
        Worker::Notification,
    ];

    /// `"order-worker"`, `"inventory-worker"`, `"payment-worker"` or
    /// `"notification-worker"`.
    pub fn name(self) -> &'static str {
        match self {
            Worker::Order => "order-worker",
            Worker::Inventory => "inventory-worker",
            Worker::Payment => "payment-worker",
            Worker::Notification => "notification-worker",
        }
    }

    /// The event types the worker's queue is bound to (the contract's
    /// bindings table). `stock.released` and `notification.sent` are consumed
    /// by no worker: they are facts for observers.
    pub fn consumes(self) -> &'static [EventType] {
        match self {
            Worker::Order => &[
                EventType::OrderSubmitted,
                EventType::StockRejected,
                EventType::PaymentCaptured,
                EventType::PaymentDeclined,
            ],
            Worker::Inventory => &[EventType::OrderPlaced, EventType::PaymentDeclined],
            Worker::Payment => &[EventType::StockReserved],
            Worker::Notification => &[EventType::OrderConfirmed, EventType::OrderCancelled],
        }
    }
}

impl EventType {
    /// The workers of the contract that consume this type; none for the
    /// facts only observers read (`order.rejected`, `stock.released`,
    /// `notification.sent`).
    pub fn consumers(self) -> impl Iterator<Item = Worker> {
        Worker::ALL
            .into_iter()
            .filter(move |worker| worker.consumes().contains(&self))
    }
}

impl fmt::Display for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that names none of the fleet's workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownWorker(pub String);

impl fmt::Display for UnknownWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown worker {:?}: expected one of ", self.0)?;
        for (index, worker) in Worker::ALL.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            f.write_str(worker.name())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownWorker {}

impl FromStr for Worker {
    type Err = UnknownWorker;

    /// The full worker name (`inventory-worker`), exactly as in broker names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Worker::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| UnknownWorker(s.to_owned()))
    }
}

// --- RabbitMQ --------------------------------------------------------------

/// The durable topic exchange every event is published to: `<ns>.events`.
pub fn exchange(ns: &Namespace) -> String {
    format!("{ns}.events")
}

/// The routing key of an event: its `type`.
pub fn routing_key(event_type: EventType) -> &'static str {
    event_type.as_str()
}

/// The worker's durable queue: `<ns>.<worker>`.
pub fn worker_queue(ns: &Namespace, worker: &str) -> String {
    format!("{ns}.{worker}")
}

/// The worker's dead-letter queue: `<ns>.<worker>.dlq`.
pub fn dead_letter_queue(ns: &Namespace, worker: &str) -> String {
    format!("{ns}.{worker}.dlq")
}

/// The worker's own retry exchange: `<ns>.<worker>.retry`. Per worker, so a
/// retried event returns only to the worker that failed it.
pub fn retry_exchange(ns: &Namespace, worker: &str) -> String {
    format!("{ns}.{worker}.retry")
}

/// The delay queue of one retry tier: `<ns>.<worker>.retry.<millis>ms`.
///
/// The delay is in the name because RabbitMQ refuses to redeclare a queue
/// with different arguments (its TTL): changing `retry.delays_ms` then
/// declares a new queue instead of failing at startup.
pub fn retry_queue(ns: &Namespace, worker: &str, delay: Duration) -> String {
    format!("{ns}.{worker}.retry.{}ms", delay.as_millis())
}

// --- Redis Streams ---------------------------------------------------------

/// The stream of one event type: `<ns>:events:<type>`. `event_type` is a
/// `&str` so replays can address the stream of a type read from a dead letter.
pub fn event_stream(ns: &Namespace, event_type: &str) -> String {
    format!("{ns}:events:{event_type}")
}

/// The worker's dead-letter stream: `<ns>:dlq:<worker>`.
pub fn dead_letter_stream(ns: &Namespace, worker: &str) -> String {
    format!("{ns}:dlq:{worker}")
}

/// The worker's retry stream: `<ns>:retry:<worker>`.
pub fn retry_stream(ns: &Namespace, worker: &str) -> String {
    format!("{ns}:retry:{worker}")
}

/// The worker's schedule of delayed retries (a sorted set keyed by due
/// time): `<ns>:retry:<worker>:scheduled`.
pub fn retry_schedule(ns: &Namespace, worker: &str) -> String {
    format!("{ns}:retry:{worker}:scheduled")
}

/// The worker's consumer group on every stream it reads: the worker name.
/// Not namespaced, because the streams it belongs to already are.
pub fn consumer_group(worker: &str) -> String {
    worker.to_owned()
}

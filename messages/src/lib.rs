//! The fleet's wire contract (v1) as Rust types.
//!
//! Every other crate of the fleet speaks to the broker through this one, so
//! that what goes on the wire is decided in a single place. It does no I/O:
//! it turns bytes into typed events and back, says why bytes are poison, and
//! names the broker objects.
//!
//! The crate is layered from the inside out, one file per concept:
//!
//! - [`events`]: the eleven [`EventType`]s of the saga and the `data` schema of
//!   each, one struct per type, gathered in [`EventData`]. Decoding data checks
//!   its shape, then its ranges, and reports the path of the faulty field.
//!   `order.submitted`, the one event from outside the fleet, is checked for
//!   shape only: its business rules belong to order-worker.
//! - [`envelope`]: the CloudEvents 1.0 [`Envelope`] around the data, in
//!   structured JSON mode. [`Envelope::encode`] cannot fail;
//!   [`Envelope::decode`] is the single gate every consumed body passes, and
//!   checks in a fixed order so one body always fails the same way.
//! - [`error`]: [`DecodeError`], one variant per kind of poison. Its
//!   [`kind`](DecodeError::kind) and message become the dead letter's
//!   `error_kind` and `error`.
//! - [`names`]: every exchange, queue, stream and consumer-group name, built
//!   from a validated [`Namespace`], and the [`Worker`]s with their bindings.
//!
//! A typical consumer:
//!
//! ```
//! use fleet_messages::{DEFAULT_MAX_EVENT_BYTES, Envelope, EventData, StockReleased};
//! # use uuid::Uuid;
//! # let order_id = Uuid::now_v7();
//! # let body = Envelope::new(
//! #     "inventory-worker",
//! #     StockReleased { order_id }.into(),
//! #     order_id,
//! #     None,
//! # ).encode();
//! match Envelope::decode(&body, DEFAULT_MAX_EVENT_BYTES) {
//!     Ok(event) => match &event.data {
//!         EventData::StockReleased(released) => assert_eq!(released.order_id, order_id),
//!         _ => { /* not bound to this worker */ }
//!     },
//!     // Poison: dead-letter at once, with `err.kind()` and `err.to_string()`.
//!     Err(err) => panic!("{}: {err}", err.kind()),
//! }
//! ```

pub mod envelope;
pub mod error;
pub mod events;
mod fields;
pub mod names;

pub use envelope::{
    CONTENT_TYPE, DATA_CONTENT_TYPE, DEFAULT_MAX_EVENT_BYTES, Envelope, SPEC_VERSION, peek_id,
};
pub use error::DecodeError;
pub use events::{
    CancellationReason, EventData, EventType, NotificationSent, NotificationTemplate,
    OrderCancelled, OrderConfirmed, OrderItem, OrderPlaced, OrderRejected, OrderSubmitted,
    PaymentCaptured, PaymentDeclineReason, PaymentDeclined, RejectionReason, StockRejected,
    StockRejectionReason, StockReleased, StockReserved, SubmittedItem, UnknownEventType,
};
pub use names::{
    InvalidNamespace, Namespace, UnknownWorker, Worker, consumer_group, dead_letter_queue,
    dead_letter_stream, event_stream, exchange, retry_exchange, retry_queue, retry_schedule,
    retry_stream, routing_key, worker_queue,
};

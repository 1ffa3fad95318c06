//! Reliable publishing and idempotent consuming on Postgres.
//!
//! - [`schema`]: a worker's own Postgres schema, its connection pool (every
//!   connection's `search_path` is the schema) and migrations that every
//!   replica may run at start-up at the same time.
//! - [`enqueue`]: writes events into the outbox **inside the caller's
//!   transaction**, so nothing reaches the broker unless that transaction
//!   commits. It wakes a sleeping relay with a coalesced `NOTIFY`;
//!   [`enqueue_for_local_relay`] skips that for a writer that rings its own
//!   process's relay ([`RelayWakeup`]) after committing, as the workers do.
//! - [`RelayWriter`]: how a replica's own writers enqueue: rows leased to
//!   its relay and handed over after the commit, published without a claim
//!   (the relay's `handoff` module says why this is safe).
//! - [`Relay`]: run by every replica. Claims unpublished rows with
//!   `FOR UPDATE SKIP LOCKED` (so relays share the table without publishing a
//!   row twice at once), publishes them with pipelined confirms, and marks
//!   them published. A crash between publish and mark gives a duplicate,
//!   which the inbox absorbs. Rows the broker refuses are retried with
//!   backoff, then parked with their error.
//! - [`inbox::claim`]: records an event id as handled inside the handler's
//!   transaction; a duplicate is reported so the runtime acknowledges it
//!   without effect.
//! - [`Retention`]: deletes published outbox rows and old inbox entries in
//!   small batches, never one unbounded `DELETE`.
//! - [`metrics`]: what operators watch (backlog, relay lag, parked rows,
//!   duplicates).

mod enqueue;
pub mod inbox;
pub mod metrics;
mod relay;
mod retention;
pub mod schema;

pub use enqueue::{enqueue, enqueue_for_local_relay};
pub use inbox::{Claim, claim, claim_all};
pub use relay::{Outgoing, Relay, RelayError, RelayOptions, RelayStatus, RelayWakeup, RelayWriter};
pub use retention::{Retention, RetentionOptions, Swept};
pub use schema::{Schema, connect, migrate, migration};

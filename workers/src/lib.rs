//! The worker runtime and the four saga workers.
//!
//! Every worker is a [`Handler`] (its business logic) run by the same
//! [`runtime`]:
//!
//! 1. consume a delivery ([`fleet_broker::Consumer`]);
//! 2. decode it; poison is dead-lettered at once ([`process`]);
//! 3. begin a transaction, claim the event id in the inbox (a duplicate is
//!    acknowledged without effect);
//! 4. run the handler: its state change, plus the events it emits, written to
//!    the outbox in the same transaction;
//! 5. commit, and only then acknowledge. A transient failure is retried after
//!    the configured delay tiers and dead-lettered when the attempts run out;
//!    a permanent one is dead-lettered at once; a panic is caught and counted
//!    as a failure.
//!
//! Beside the consume loop each replica runs the outbox relay, retention and
//! the HTTP endpoints (`/healthz`, `/readyz`, `/metrics`). SIGTERM drains:
//! stop consuming, finish in-flight work, let the relay flush, exit 0.
//!
//! Lookups by key in tables that grow (orders, reservations) are sent as
//! unnamed statements (`.persistent(false)`), planned for the keys at hand
//! each time. A named statement's cached generic plan is made after a few
//! runs, while the table is still small (a fresh deployment), and for a
//! small table it is a sequential scan; it stays until the next ANALYZE
//! however large the table grows. Without autovacuum that was seen to take
//! milliseconds per statement, some of them while hot stock rows were locked.
//!
//! The workers: [`order`] (the state machine), [`inventory`] (reservations and
//! their compensation), [`payment`] (per-customer credit), [`notification`]
//! (one notification per terminal order). [`loadgen`] drives them.

pub mod handler;
mod http;
pub mod inventory;
pub mod loadgen;
pub mod metrics;
pub mod notification;
pub mod order;
pub mod payment;
mod process;
pub mod runtime;
mod shutdown;
pub mod telemetry;

pub use handler::{Handler, HandlerError};
pub use runtime::{RunningWorker, start};

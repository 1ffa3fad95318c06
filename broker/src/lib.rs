//! The fleet's transports: RabbitMQ and Redis Streams behind one interface.
//!
//! Everything above this crate (the outbox relay, the worker runtime,
//! `dlq-tool`) talks to a [`Broker`] and never to lapin or redis directly:
//!
//! - **Topology** ([`Broker::declare_events`], [`Broker::declare_worker`]):
//!   idempotent declarations of the names fixed by the contract, made at
//!   start-up by whoever needs them. A worker's [`WorkerTopology`] gives its
//!   queue or consumer group, its retry tiers and its dead-letter queue.
//! - **Publishing** ([`Broker::publish_batch`]): a batch of
//!   [`OutgoingMessage`]s with pipelined confirms, one [`PublishOutcome`] per
//!   message. Nothing counts as published until the broker confirmed it.
//! - **Consuming** ([`Broker::consume`]): a [`Consumer`] yielding
//!   [`Delivery`]s, each settled exactly once as [`Delivery::ack`],
//!   [`Delivery::retry`] or [`Delivery::dead_letter`]; deliveries handled in
//!   one transaction are acknowledged in one go by [`Delivery::ack_all`]
//!   (RabbitMQ: one `multiple` ack where no other delivery is in the way,
//!   Redis: one `XACK` per stream). Settling writes any
//!   retry or dead letter durably *before* it removes the original, so a crash
//!   in between gives a duplicate, never a loss. The consumer reconnects by
//!   itself; deliveries of a lost connection come again.
//! - **Dead letters** ([`Broker::peek_dead_letters`]): read without removing
//!   or reordering, as [`DeadLetter`] records with the failure metadata.
//!
//! The two transports live in [`rabbitmq`] and [`redis`]; [`Broker`] is an
//! enum over them, so callers stay transport-agnostic without boxing.

mod backoff;
mod broker;
mod consumer;
mod dead_letter;
mod dead_letter_ops;
mod delivery;
mod error;
mod message;
pub mod rabbitmq;
pub mod redis;
mod topology;

pub use broker::Broker;
pub use consumer::Consumer;
pub use dead_letter::{DeadLetter, Failure};
pub use dead_letter_ops::{
    BrowseSummary, DeadLetterSelection, ReplayFailure, ReplayOptions, ReplayReport,
    SelectedDeadLetter,
};
pub use delivery::{Delivery, DeliveryInfo};
pub use error::BrokerError;
pub use fleet_config::Transport;
pub use message::{OutgoingMessage, PublishOutcome};
pub use topology::WorkerTopology;

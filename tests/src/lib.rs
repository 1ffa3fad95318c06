//! Support shared by the fleet's integration and end-to-end suites.
//!
//! Every test calls [`TestContext::new`] and gets what it needs to run in
//! parallel with every other test on one set of servers:
//!
//! - a fresh broker **namespace** (every exchange, queue and stream name is
//!   prefixed by it), so tests never see each other's messages;
//! - a fresh **Postgres database**, so schemas and migrations never collide;
//! - the URLs of the three services.
//!
//! Where the services come from ([`services`]): `DATABASE_URL`, `AMQP_URL` and
//! `REDIS_URL` when set (CI sets them); otherwise, when a Docker engine is
//! reachable, containers started with testcontainers; otherwise the test fails
//! with a message that says what to start. A service test never skips.
//!
//! Tests that crash and restart a server get one of their own
//! ([`PrivateRedis`], [`PrivatePostgres`], [`PrivateRabbitMq`]).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod cleanup;
mod context;
mod private_servers;
mod services;

pub use context::TestContext;
pub use private_servers::{PrivatePostgres, PrivateRabbitMq, PrivateRedis};
pub use services::{Services, services};

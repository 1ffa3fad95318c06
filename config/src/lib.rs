//! Configuration of every fleet binary: one typed [`Settings`] struct.
//!
//! Layers, each overriding the one before:
//!
//! 1. `config/default.toml`, compiled into the binary so that it runs from
//!    anywhere;
//! 2. `config/<worker>.toml`, also compiled in (the inventory seed lives there);
//! 3. the same two files under `$FLEET_CONFIG_DIR`, when that is set, so that an
//!    operator can change defaults without rebuilding;
//! 4. the conventional `DATABASE_URL`, `AMQP_URL` and `REDIS_URL`;
//! 5. `FLEET__SECTION__KEY` environment variables (`FLEET__RETRY__MAX_ATTEMPTS=5`,
//!    `FLEET__RETRY__DELAYS_MS=100,1000`).
//!
//! Loading fails on an unknown key, a value of the wrong type, or a value out of
//! range, and the error names the key and the bad value. Connection URLs are
//! [`SecretUrl`]s: their passwords never reach `Debug` output or logs.
//!
//! The environment is passed in explicitly ([`Environment`]) rather than read
//! from the process inside the loader, so tests can load many configurations
//! in parallel without touching process-global state.

mod error;
mod load;
mod secret;
mod settings;
mod validate;

pub use error::ConfigError;
pub use load::{Environment, load};
pub use secret::SecretUrl;
pub use settings::{
    AmqpSettings, DatabaseSettings, HttpSettings, InboxSettings, InventorySettings, LimitsSettings,
    LogFormat, OrderSettings, OutboxSettings, PaymentSettings, RedisSettings, RetrySettings,
    Settings, TelemetrySettings, Transport, WorkerSettings,
};

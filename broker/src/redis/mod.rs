//! The Redis Streams transport.
//!
//! Names follow the contract: one stream per event type
//! (`<ns>:events:<type>`, field `event`), one consumer group per worker with
//! one consumer per replica, dead letters in `<ns>:dlq:<worker>`, and retry
//! plumbing under `<ns>:retry:<worker>` (a sorted set of scheduled retries,
//! and a stream that only the worker's own group reads).
//!
//! Connections: a deadpool pool for every short command, and for each stream
//! a consumer reads, its own connection, because a blocking `XREADGROUP`
//! outlives the pool connections' response timeout and would stall every
//! command queued behind it on a shared multiplexed connection.
//!
//! - `topology`: consumer groups.
//! - `publish`: pipelined `XADD`s.
//! - `consume`: readers, reclaimer and retry mover behind a [`Consumer`](crate::Consumer).
//! - `settle`: ack, retry and dead-letter of one delivery.
//! - `dead_letters`: reading dead-letter streams.
//! - `fields`, `scripts`: entry encoding and the retry schedule's Lua.

mod consume;
mod dead_letter_ops;
mod dead_letters;
mod fields;
mod publish;
mod scripts;
mod settle;
mod topology;

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use deadpool_redis::redis::{self, AsyncConnectionConfig, RedisError};
use fleet_messages::{Namespace, names};

use crate::{BrokerError, WorkerTopology};

pub use settle::Settler;

const TRANSPORT: &str = "redis";

/// How long opening a connection may take. Also bounds how long
/// [`RedisBroker::connect`] waits for an unreachable Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Response timeout of pooled connections. redis-rs defaults to 500 ms,
/// which a pipelined batch of large events on a busy host can exceed; a
/// timed-out publish is reported as failed and published again, so too short
/// a limit only costs duplicates, too long one only delays the failure.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Slack added to the `BLOCK` time for a reader's response timeout, so that
/// a blocking read that returns empty is never mistaken for a dead server.
const BLOCK_SLACK: Duration = Duration::from_secs(5);

/// A connection to Redis. Cheap to clone: clones share the pool.
#[derive(Clone, Debug)]
pub struct RedisBroker {
    shared: Arc<Shared>,
}

/// What every clone of a broker, and every consumer it starts, shares.
#[derive(Debug)]
struct Shared {
    /// One multiplexed connection for every short command of this broker:
    /// concurrent commands (thousands of XACKs) are pipelined on it, and it
    /// reconnects by itself. A pool would add a PING round trip per checkout.
    commands: ConnectionManager,
    /// Opens the dedicated connections of blocking readers.
    client: redis::Client,
    namespace: Namespace,
    replica: String,
    block: Duration,
    visibility_timeout: Duration,
    prefetch: usize,
    scripts: scripts::Scripts,
}

impl RedisBroker {
    /// Connects to `settings.redis.url` and checks that Redis answers `PING`,
    /// failing fast with [`BrokerError::Unavailable`] otherwise.
    pub async fn connect(
        settings: &fleet_config::Settings,
        replica: &str,
    ) -> Result<Self, BrokerError> {
        let url = settings.redis.url.expose();
        let invalid = |error: RedisError| BrokerError::Refused {
            transport: TRANSPORT,
            operation: format!("open {}", settings.redis.url),
            reason: error.to_string(),
        };
        let client = redis::Client::open(url).map_err(invalid)?;
        let commands = tokio::time::timeout(
            CONNECT_TIMEOUT + COMMAND_TIMEOUT,
            ConnectionManager::new_with_config(
                client.clone(),
                ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(2),
            ),
        )
        .await
        .map_err(|_| BrokerError::Timeout {
            transport: TRANSPORT,
            operation: format!("connecting to {}", settings.redis.url),
        })?
        .map_err(|error| {
            BrokerError::redis(&format!("connecting to {}", settings.redis.url), error)
        })?;
        let broker = Self {
            shared: Arc::new(Shared {
                commands,
                client,
                namespace: settings.namespace(),
                replica: replica.to_owned(),
                block: settings.redis.block(),
                visibility_timeout: settings.redis.visibility_timeout(),
                prefetch: usize::from(settings.worker.prefetch.max(1)),
                scripts: scripts::Scripts::new(),
            }),
        };
        broker
            .ping()
            .await
            .map_err(|error| BrokerError::Unavailable {
                transport: TRANSPORT,
                reason: format!("no answer from {}: {error}", settings.redis.url),
            })?;
        Ok(broker)
    }

    /// Creates the worker's consumer groups (on each consumed event stream
    /// and on its retry stream), creating the streams as needed. Idempotent.
    pub async fn declare_worker(&self, topology: &WorkerTopology) -> Result<(), BrokerError> {
        topology::declare_worker(&self.shared, topology).await
    }

    /// `XADD`s every message to its event stream in one pipelined round
    /// trip.
    pub async fn publish_batch(
        &self,
        messages: &[crate::OutgoingMessage],
    ) -> Result<Vec<crate::PublishOutcome>, BrokerError> {
        publish::publish_batch(&self.shared, messages).await
    }

    /// Starts consuming for `topology.worker` as this replica.
    pub async fn consume(&self, topology: &WorkerTopology) -> Result<crate::Consumer, BrokerError> {
        consume::consume(&self.shared, topology).await
    }

    /// Up to `limit` dead letters of `worker`, oldest first, without removing
    /// any.
    pub async fn peek_dead_letters(
        &self,
        worker: &str,
        limit: usize,
    ) -> Result<Vec<crate::DeadLetter>, BrokerError> {
        dead_letters::peek(&self.shared, worker, limit).await
    }

    /// The length of `worker`'s dead-letter stream.
    pub async fn dead_letter_depth(&self, worker: &str) -> Result<u64, BrokerError> {
        dead_letters::depth(&self.shared, worker).await
    }

    /// Whether Redis answers `PING` now.
    /// Destroys the worker's consumer groups and deletes its retry and
    /// dead-letter keys. The event streams stay: other workers read them.
    pub async fn delete_worker(&self, topology: &WorkerTopology) -> Result<(), BrokerError> {
        let namespace = &self.shared.namespace;
        let worker = topology.worker.as_str();
        let group = names::consumer_group(worker);
        let mut conn = self.shared.connection("deleting a worker").await?;
        for event_type in &topology.event_types {
            let stream = names::event_stream(namespace, event_type);
            // A missing stream answers with an error; nothing to destroy then.
            let _: Result<i64, _> = redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(&stream)
                .arg(&group)
                .query_async(&mut *conn)
                .await;
        }
        redis::cmd("DEL")
            .arg(names::retry_stream(namespace, worker))
            .arg(names::retry_schedule(namespace, worker))
            .arg(names::dead_letter_stream(namespace, worker))
            .query_async::<i64>(&mut *conn)
            .await
            .map_err(|error| BrokerError::redis("DEL", error))?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), BrokerError> {
        let mut conn = self.shared.connection("PING").await?;
        redis::cmd("PING")
            .query_async::<String>(&mut *conn)
            .await
            .map_err(|error| BrokerError::redis("PING", error))?;
        Ok(())
    }
}

/// A handle on the shared command connection (cheap to clone).
pub(crate) struct Commands(ConnectionManager);

impl std::ops::Deref for Commands {
    type Target = ConnectionManager;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Commands {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Shared {
    /// The shared connection for short commands. Infallible now (it
    /// reconnects by itself; a command during a reconnect fails with an I/O
    /// error, which callers treat as transient); `Result` keeps call sites
    /// uniform with the blocking readers' connections.
    async fn connection(&self, _operation: &str) -> Result<Commands, BrokerError> {
        Ok(Commands(self.commands.clone()))
    }

    /// A new connection of its own for one blocking reader, named so that
    /// operators (and tests) can find it in `CLIENT LIST`.
    async fn reader_connection(&self) -> Result<redis::aio::MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.block + BLOCK_SLACK));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(reader_client_name(&self.namespace, &self.replica))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(conn)
    }
}

/// `<namespace>:<replica>:reader`. Redis refuses client names with spaces or
/// control characters, so those (possible in a replica id taken from a host
/// name or the command line) become `_`.
fn reader_client_name(namespace: &Namespace, replica: &str) -> String {
    let replica: String = replica
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    format!("{namespace}:{replica}:reader")
}

/// Whether `error` says the consumer group (or its stream) does not exist:
/// Redis restarted without persistence, or someone deleted the stream.
fn is_no_group(error: &RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_names_have_no_spaces() {
        let ns = Namespace::new("t42").unwrap();
        assert_eq!(reader_client_name(&ns, "host-1"), "t42:host-1:reader");
        assert_eq!(
            reader_client_name(&ns, "my host\n2"),
            "t42:my_host_2:reader"
        );
        assert_eq!(reader_client_name(&ns, "é"), "t42:_:reader");
    }
}

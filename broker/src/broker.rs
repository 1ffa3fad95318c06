use fleet_config::{Settings, Transport};

use crate::rabbitmq::RabbitMqBroker;
use crate::redis::RedisBroker;
use crate::{BrokerError, Consumer, DeadLetter, OutgoingMessage, PublishOutcome, WorkerTopology};

/// A connection to the configured transport. Cheap to clone: clones share
/// connections.
#[derive(Clone, Debug)]
pub enum Broker {
    RabbitMq(RabbitMqBroker),
    Redis(RedisBroker),
}

impl Broker {
    /// Connects to the transport `settings.transport` names. `replica` names
    /// this process in the broker (connection name, consumer name) and in the
    /// dead letters it writes.
    pub async fn connect(settings: &Settings, replica: &str) -> Result<Self, BrokerError> {
        Ok(match settings.transport {
            Transport::Rabbitmq => {
                Broker::RabbitMq(RabbitMqBroker::connect(settings, replica).await?)
            }
            Transport::Redis => Broker::Redis(RedisBroker::connect(settings, replica).await?),
        })
    }

    pub fn transport(&self) -> Transport {
        match self {
            Broker::RabbitMq(_) => Transport::Rabbitmq,
            Broker::Redis(_) => Transport::Redis,
        }
    }

    /// Declares what publishers need (the events exchange). Idempotent.
    pub async fn declare_events(&self) -> Result<(), BrokerError> {
        match self {
            Broker::RabbitMq(broker) => broker.declare_events().await,
            // Streams come into being with their first entry or group.
            Broker::Redis(_) => Ok(()),
        }
    }

    /// Declares a worker's queue or consumer groups, retry plumbing and
    /// dead-letter queue. Idempotent; every replica does it at start-up.
    pub async fn declare_worker(&self, topology: &WorkerTopology) -> Result<(), BrokerError> {
        match self {
            Broker::RabbitMq(broker) => broker.declare_worker(topology).await,
            Broker::Redis(broker) => broker.declare_worker(topology).await,
        }
    }

    /// Publishes `messages` with pipelined confirms. `Err` means nothing could
    /// be attempted (no connection); otherwise one outcome per message, in
    /// order.
    pub async fn publish_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Result<Vec<PublishOutcome>, BrokerError> {
        match self {
            Broker::RabbitMq(broker) => broker.publish_batch(messages).await,
            Broker::Redis(broker) => broker.publish_batch(messages).await,
        }
    }

    /// Starts consuming for `topology.worker` as this replica. Declares the
    /// worker's topology first (and again after every reconnect).
    pub async fn consume(&self, topology: &WorkerTopology) -> Result<Consumer, BrokerError> {
        match self {
            Broker::RabbitMq(broker) => broker.consume(topology).await,
            Broker::Redis(broker) => broker.consume(topology).await,
        }
    }

    /// Up to `limit` dead letters of `worker`, oldest first, without removing
    /// or reordering any.
    pub async fn peek_dead_letters(
        &self,
        worker: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        match self {
            Broker::RabbitMq(broker) => broker.peek_dead_letters(worker, limit).await,
            Broker::Redis(broker) => broker.peek_dead_letters(worker, limit).await,
        }
    }

    /// How many dead letters `worker` has.
    pub async fn dead_letter_depth(&self, worker: &str) -> Result<u64, BrokerError> {
        match self {
            Broker::RabbitMq(broker) => broker.dead_letter_depth(worker).await,
            Broker::Redis(broker) => broker.dead_letter_depth(worker).await,
        }
    }

    /// Removes everything [`Broker::declare_worker`] made for `topology`,
    /// dead letters included: for decommissioning a worker, and for
    /// observers (loadgen) that must not leave a queue collecting events.
    pub async fn delete_worker(&self, topology: &WorkerTopology) -> Result<(), BrokerError> {
        match self {
            Broker::RabbitMq(broker) => broker.delete_worker(topology).await,
            Broker::Redis(broker) => broker.delete_worker(topology).await,
        }
    }

    /// Whether the broker answers now (for readiness probes).
    pub async fn ping(&self) -> Result<(), BrokerError> {
        match self {
            Broker::RabbitMq(broker) => broker.ping().await,
            Broker::Redis(broker) => broker.ping().await,
        }
    }
}

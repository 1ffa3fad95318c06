//! RabbitMQ transport (lapin).
//!
//! Names (from `fleet_messages::names`), per namespace `<ns>` and worker `<w>`:
//!
//! | name | kind | role |
//! |---|---|---|
//! | `<ns>.events` | topic exchange | every event, routing key = type |
//! | `<ns>.<w>` | quorum queue | the worker's input, bound to its types |
//! | `<ns>.<w>.retry` | direct exchange | the worker's private plumbing |
//! | `<ns>.<w>.retry.<ms>ms` | quorum queue, queue TTL | one delay tier |
//! | `<ns>.<w>.dlq` | classic queue | dead letters (classic: peeking does not count deliveries) |
//!
//! A retry is published to the worker's retry exchange with the tier's key;
//! when the tier's TTL expires the message is dead-lettered back through the
//! same exchange with key `redeliver`, which only the worker's own queue is
//! bound to. Dead letters take key `dead`. The worker queue dead-letters to
//! the same place by itself once a message exceeds its delivery limit (a
//! consumer crashing on it every time), at-least-once.
//!
//! A topology with `expires_after` (loadgen's observer) gives each of its
//! queues that queue TTL (`x-expires`): killed before it deletes them, its
//! process leaves nothing that collects events for good.
//!
//! Publishing is `mandatory` (for types a worker consumes) with confirms,
//! and an unroutable message comes back before its ack; AMQP gives a return
//! no delivery tag, and the ack of another publish may come in between
//! (amqp-node/amqplib#185 discusses it). lapin attaches a return to the
//! next confirm it resolves, and when one `multiple` ack covers several
//! publishes, to whichever of them it resolves first. So each batch publishes on a confirm channel of its own, and once
//! all its confirms are in, returns are matched to publishes by message id
//! (`publish::group_outcomes`); dlq-tool's replays settle in such groups,
//! and a consumer publishes its retries and dead letters one at a time.
//!
//! Deliveries handled in one transaction are acknowledged with one
//! `multiple` ack when no other unsettled delivery of the channel lies
//! below them (`acks`): each frame is work for the broker's channel and a
//! settle command for the quorum queue.

mod acks;
mod connection;
mod consume;
mod dead_letter_ops;
mod dead_letters;
mod headers;
mod publish;
mod settle;
mod topology;

use std::sync::Arc;
use std::time::Duration;

use fleet_config::Settings;
use fleet_messages::Namespace;

use crate::{BrokerError, Consumer, DeadLetter, OutgoingMessage, PublishOutcome, WorkerTopology};

pub use settle::Settler;

/// A RabbitMQ connection for publishing, plus what consumers need to open
/// their own.
#[derive(Clone, Debug)]
pub struct RabbitMqBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ConnectionConfig,
    publisher: publish::Publisher,
}

/// What every connection of this broker is opened with.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionConfig {
    pub(crate) url: fleet_config::SecretUrl,
    pub(crate) namespace: Namespace,
    pub(crate) replica: String,
    pub(crate) prefetch: u16,
    pub(crate) confirm_timeout: Duration,
}

impl RabbitMqBroker {
    pub async fn connect(settings: &Settings, replica: &str) -> Result<Self, BrokerError> {
        let config = ConnectionConfig {
            url: settings.amqp.url.clone(),
            namespace: settings.namespace(),
            replica: replica.to_owned(),
            prefetch: settings.worker.prefetch,
            confirm_timeout: settings.amqp.confirm_timeout(),
        };
        let publisher = publish::Publisher::new(config.clone());
        // Fail fast on a wrong URL or credentials instead of at first publish.
        publisher.channel().await?;
        Ok(Self {
            inner: Arc::new(Inner { config, publisher }),
        })
    }

    pub async fn declare_events(&self) -> Result<(), BrokerError> {
        let channel = self.inner.publisher.channel().await?;
        topology::declare_events(&channel, &self.inner.config.namespace).await
    }

    pub async fn declare_worker(&self, worker: &WorkerTopology) -> Result<(), BrokerError> {
        let channel = self.inner.publisher.channel().await?;
        topology::declare_events(&channel, &self.inner.config.namespace).await?;
        topology::declare_worker(&channel, &self.inner.config.namespace, worker).await
    }

    pub async fn publish_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Result<Vec<PublishOutcome>, BrokerError> {
        self.inner.publisher.publish_batch(messages).await
    }

    pub async fn consume(&self, worker: &WorkerTopology) -> Result<Consumer, BrokerError> {
        consume::start(self.inner.config.clone(), worker.clone()).await
    }

    pub async fn peek_dead_letters(
        &self,
        worker: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        dead_letters::peek(&self.inner.config, worker, limit).await
    }

    pub async fn dead_letter_depth(&self, worker: &str) -> Result<u64, BrokerError> {
        let channel = self.inner.publisher.fresh_channel().await?;
        dead_letters::depth(&channel, &self.inner.config.namespace, worker).await
    }

    pub async fn delete_worker(&self, worker: &WorkerTopology) -> Result<(), BrokerError> {
        let channel = self.inner.publisher.fresh_channel().await?;
        topology::delete_worker(&channel, &self.inner.config.namespace, worker).await?;
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), BrokerError> {
        self.inner.publisher.channel().await.map(|_| ())
    }
}

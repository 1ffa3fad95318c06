use std::time::Duration;

use chrono::Utc;

use crate::{BrokerError, Failure, Transport};

/// What is known about one delivery besides its body.
#[derive(Clone, Debug)]
pub struct DeliveryInfo {
    pub transport: Transport,
    /// The consuming worker.
    pub worker: String,
    /// The routing key (RabbitMQ) or stream (Redis) the event was published
    /// to, which a retry or a replay goes back to.
    pub source: String,
    /// 1 on the first delivery; counts retries and redeliveries.
    pub attempt: u32,
    /// The AMQP `message_id` (RabbitMQ), if any.
    pub message_id: Option<String>,
    /// The failure history when this is a retry.
    pub previous_failure: Option<Failure>,
    /// How often an operator replayed this event from a dead-letter queue.
    pub replays: u32,
    /// Transport position, for logs: delivery tag or stream entry id.
    pub position: String,
    /// The replica that received it.
    pub replica: String,
}

/// One message handed to a worker. It must be settled exactly once, by
/// [`ack`](Delivery::ack), [`retry`](Delivery::retry) or
/// [`dead_letter`](Delivery::dead_letter); a delivery dropped unsettled is
/// delivered again (after a reconnect on RabbitMQ, after the visibility
/// timeout on Redis).
#[derive(Debug)]
pub struct Delivery {
    pub(crate) body: Vec<u8>,
    pub(crate) info: DeliveryInfo,
    pub(crate) settler: Settler,
}

/// Boxed on RabbitMQ: its acker and properties are large, and deliveries
/// are moved through channels.
#[derive(Debug)]
pub(crate) enum Settler {
    RabbitMq(Box<crate::rabbitmq::Settler>),
    Redis(crate::redis::Settler),
}

impl Delivery {
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn info(&self) -> &DeliveryInfo {
        &self.info
    }

    /// Done: remove it from the queue or pending list. Call only after the
    /// transaction that handled it committed.
    pub async fn ack(self) -> Result<(), BrokerError> {
        match self.settler {
            Settler::RabbitMq(settler) => settler.ack().await,
            Settler::Redis(settler) => settler.ack().await,
        }
    }

    /// Acknowledges deliveries handled together (one transaction that
    /// committed) in as few commands as the transport allows: on RabbitMQ one
    /// `multiple` acknowledgement where that is safe, on Redis one `XACK`
    /// per stream. On an error, those not acknowledged come again.
    pub async fn ack_all(deliveries: Vec<Delivery>) -> Result<(), BrokerError> {
        let mut rabbitmq = Vec::new();
        let mut redis = Vec::new();
        for delivery in deliveries {
            match delivery.settler {
                Settler::RabbitMq(settler) => rabbitmq.push(*settler),
                Settler::Redis(settler) => redis.push(settler),
            }
        }
        let rabbitmq = crate::rabbitmq::Settler::ack_together(rabbitmq).await;
        let redis = crate::redis::Settler::ack_together(&redis).await;
        rabbitmq.and(redis)
    }

    /// Deliver it again to this worker only, after `after` (rounded up to a
    /// retry tier). The retry is durably written before the original is
    /// removed.
    pub async fn retry(self, after: Duration, error: &str) -> Result<(), BrokerError> {
        let failure = self.failure(error);
        match self.settler {
            Settler::RabbitMq(settler) => {
                settler.retry(&self.body, &self.info, after, &failure).await
            }
            Settler::Redis(settler) => settler.retry(&self.body, &self.info, after, &failure).await,
        }
    }

    /// Move it to this worker's dead-letter queue with the reason. The dead
    /// letter is durably written before the original is removed.
    pub async fn dead_letter(self, kind: &str, error: &str) -> Result<(), BrokerError> {
        let failure = self.failure(error);
        match self.settler {
            Settler::RabbitMq(settler) => {
                settler
                    .dead_letter(&self.body, &self.info, kind, &failure)
                    .await
            }
            Settler::Redis(settler) => {
                settler
                    .dead_letter(&self.body, &self.info, kind, &failure)
                    .await
            }
        }
    }

    /// The failure history including this attempt's failure.
    fn failure(&self, error: &str) -> Failure {
        let now = Utc::now();
        Failure {
            attempts: self.info.attempt,
            first_failed_at: self
                .info
                .previous_failure
                .as_ref()
                .map_or(now, |previous| previous.first_failed_at),
            last_failed_at: now,
            last_error: error.to_owned(),
        }
    }
}

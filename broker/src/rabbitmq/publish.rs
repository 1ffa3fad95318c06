use std::fmt;
use std::sync::Arc;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout_at};

use fleet_messages::{CONTENT_TYPE, names};

use super::{ConnectionConfig, connection};
use crate::{BrokerError, OutgoingMessage, PublishOutcome};

/// Persistent delivery mode: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// A confirm-mode channel that is reopened on demand after a failure. A
/// publish never waits for a reconnect loop: if the broker is down it fails
/// at once and the caller (the relay) retries with its own backoff.
pub(crate) struct Publisher {
    config: ConnectionConfig,
    session: Mutex<Option<Session>>,
}

#[derive(Clone)]
struct Session {
    connection: Arc<Connection>,
    channel: Channel,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub(crate) fn new(config: ConnectionConfig) -> Self {
        Self {
            config,
            session: Mutex::new(None),
        }
    }

    /// The confirm-mode channel, reconnecting first if it broke.
    pub(crate) async fn channel(&self) -> Result<Channel, BrokerError> {
        Ok(self.session().await?.channel)
    }

    /// A new plain channel on the publisher's connection, for operations that
    /// may close their channel (a passive declare of a missing queue).
    pub(crate) async fn fresh_channel(&self) -> Result<Channel, BrokerError> {
        let session = self.session().await?;
        session
            .connection
            .create_channel()
            .await
            .map_err(|error| BrokerError::rabbitmq("opening a channel", error))
    }

    async fn session(&self) -> Result<Session, BrokerError> {
        let mut guard = self.session.lock().await;
        if let Some(session) = guard.as_ref()
            && session.connection.status().connected()
            && session.channel.status().connected()
        {
            return Ok(session.clone());
        }
        let connection = connection::open(&self.config, "publisher").await?;
        let channel = connection::confirm_channel(&connection).await?;
        let session = Session {
            connection: Arc::new(connection),
            channel,
        };
        *guard = Some(session.clone());
        Ok(session)
    }

    /// Drops the session so the next call reconnects.
    async fn invalidate(&self) {
        self.session.lock().await.take();
    }

    pub(crate) async fn publish_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Result<Vec<PublishOutcome>, BrokerError> {
        let channel = self.channel().await?;
        let exchange = names::exchange(&self.config.namespace);
        let deadline = Instant::now() + self.config.confirm_timeout;

        // Send everything first, then collect the confirms: the broker
        // confirms in the background while we keep sending, which is what
        // makes a batch fast (one round trip, not one per message).
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let sent = channel
                .basic_publish(
                    exchange.as_str().into(),
                    message.event_type.as_str().into(),
                    BasicPublishOptions {
                        mandatory: expects_a_consumer(&message.event_type),
                        immediate: false,
                    },
                    &message.body,
                    properties(message),
                )
                .await;
            pending.push(sent);
        }

        let mut outcomes = Vec::with_capacity(messages.len());
        let mut broken = false;
        for sent in pending {
            let outcome = match sent {
                Err(error) => {
                    broken = true;
                    PublishOutcome::Failed(format!("publish failed: {error}"))
                }
                Ok(confirm) => match timeout_at(deadline, confirm).await {
                    Err(_) => {
                        broken = true;
                        PublishOutcome::Failed(format!(
                            "no confirm within {} ms",
                            self.config.confirm_timeout.as_millis()
                        ))
                    }
                    Ok(Err(error)) => {
                        broken = true;
                        PublishOutcome::Failed(format!("confirm failed: {error}"))
                    }
                    Ok(Ok(confirmation)) => outcome(confirmation),
                },
            };
            outcomes.push(outcome);
        }
        if broken {
            self.invalidate().await;
        }
        Ok(outcomes)
    }
}

/// Whether a publish of `event_type` that no queue takes is a failure.
///
/// Where the contract names a consumer, a missing queue means that worker's
/// topology is missing: the message comes back unroutable, and the relay
/// retries and parks it where operators see it. The facts no worker consumes
/// (`order.rejected`, `stock.released`, `notification.sent`) are for whoever
/// binds to them (loadgen, an audit log, a future service); nobody listening
/// is not an error, so they are not mandatory and never park.
fn expects_a_consumer(event_type: &str) -> bool {
    event_type
        .parse::<fleet_messages::EventType>()
        .map_or(true, |event_type| event_type.consumers().next().is_some())
}

pub(crate) fn outcome(confirmation: Confirmation) -> PublishOutcome {
    match confirmation {
        // A mandatory message that no queue took comes back *and* is acked.
        Confirmation::Ack(Some(_returned)) => PublishOutcome::Unroutable,
        Confirmation::Ack(None) => PublishOutcome::Confirmed,
        Confirmation::Nack(_) => PublishOutcome::Nacked,
        Confirmation::NotRequested => {
            PublishOutcome::Failed("the channel is not in confirm mode".to_owned())
        }
    }
}

fn properties(message: &OutgoingMessage) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(message.id.as_str().into())
        .with_type(message.event_type.as_str().into())
        .with_timestamp(message.timestamp)
}

#[cfg(test)]
mod tests {
    use super::expects_a_consumer;

    #[test]
    fn only_events_a_worker_consumes_are_mandatory() {
        for consumed in [
            "order.submitted",
            "order.placed",
            "stock.reserved",
            "payment.declined",
        ] {
            assert!(expects_a_consumer(consumed), "{consumed}");
        }
        for fact in ["order.rejected", "stock.released", "notification.sent"] {
            assert!(!expects_a_consumer(fact), "{fact}");
        }
        // Unknown types must reach someone, or they come back.
        assert!(expects_a_consumer("order.shipped"));
    }
}

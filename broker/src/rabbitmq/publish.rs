use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
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
    /// Confirm channels for batches, each used by one batch at a time:
    /// returned messages can only be told apart within a channel that no
    /// other batch publishes on meanwhile (see [`group_outcomes`]).
    idle_batch_channels: Arc<std::sync::Mutex<Vec<Channel>>>,
}

impl Session {
    /// A confirm channel of this batch's own: an idle one, or a new one.
    async fn take_batch_channel(&self) -> Result<Channel, BrokerError> {
        loop {
            let idle = self
                .idle_batch_channels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            match idle {
                Some(channel) if channel.status().connected() => return Ok(channel),
                Some(_) => continue,
                None => return connection::confirm_channel(&self.connection).await,
            }
        }
    }

    fn return_batch_channel(&self, channel: Channel) {
        self.idle_batch_channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(channel);
    }
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
            idle_batch_channels: Arc::default(),
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
        let session = self.session().await?;
        let channel = session.take_batch_channel().await?;
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

        let mut confirmations = Vec::with_capacity(messages.len());
        let mut broken = false;
        for sent in pending {
            confirmations.push(confirmation(sent, deadline, self.config.confirm_timeout).await);
            broken |= confirmations.last().is_some_and(Result::is_err);
        }
        let ids: Vec<Option<&str>> = messages
            .iter()
            .map(|message| Some(message.id.as_str()))
            .collect();
        let outcomes = group_outcomes(&ids, confirmations);
        if broken {
            self.invalidate().await;
        } else {
            session.return_batch_channel(channel);
        }
        Ok(outcomes)
    }
}

/// The confirm of one publish, or why there is none by `deadline` (the end
/// of `timeout`, which the reason names).
pub(crate) async fn confirmation(
    sent: Result<PublisherConfirm, lapin::Error>,
    deadline: Instant,
    timeout: Duration,
) -> Result<Confirmation, String> {
    match sent {
        Err(error) => Err(format!("publish failed: {error}")),
        Ok(confirm) => match timeout_at(deadline, confirm).await {
            Err(_) => Err(format!("no confirm within {} ms", timeout.as_millis())),
            Ok(Err(error)) => Err(format!("confirm failed: {error}")),
            Ok(Ok(confirmation)) => Ok(confirmation),
        },
    }
}

/// What became of a group of publishes, in order, from their confirms (or
/// why one has none), given that no other publish shared their channel
/// until every confirm of the group came back.
///
/// When one `multiple` ack covers several publishes, lapin hands a returned
/// (unroutable) message to whichever of their confirms it resolves first,
/// not to the publish it belongs to. So returns are matched to publishes by
/// message id across the whole group. A return without an id cannot be
/// matched, and then every publish of the group counts as unroutable: a
/// retry is a duplicate at worst, a wrong "confirmed" would be a loss. For
/// the same reason, when any confirm of the group is missing (it timed
/// out, the channel broke), a return may have gone with it, and the acked
/// publishes of the group count as failed, to be sent again.
pub(crate) fn group_outcomes(
    message_ids: &[Option<&str>],
    confirmations: Vec<Result<Confirmation, String>>,
) -> Vec<PublishOutcome> {
    let mut returned: HashSet<String> = HashSet::new();
    let mut unmatched_return = false;
    let mut note = |message: Option<lapin::message::BasicReturnMessage>| {
        if let Some(message) = message {
            match message.delivery.properties.message_id() {
                Some(id) => {
                    returned.insert(id.as_str().to_owned());
                }
                None => unmatched_return = true,
            }
        }
    };
    let acked: Vec<Result<bool, String>> = confirmations
        .into_iter()
        .map(|confirmation| match confirmation {
            Ok(Confirmation::Ack(message)) => {
                note(message);
                Ok(true)
            }
            Ok(Confirmation::Nack(message)) => {
                note(message);
                Ok(false)
            }
            Ok(Confirmation::NotRequested) => Err("the channel is not in confirm mode".to_owned()),
            Err(reason) => Err(reason),
        })
        .collect();
    let incomplete = acked.iter().any(Result::is_err);
    message_ids
        .iter()
        .zip(acked)
        .map(|(id, acked)| match acked {
            Err(reason) => PublishOutcome::Failed(reason),
            Ok(_) if unmatched_return || id.is_some_and(|id| returned.contains(id)) => {
                PublishOutcome::Unroutable
            }
            Ok(true) if incomplete => PublishOutcome::Failed(
                "another confirm of its batch is missing, so whether it was routed is unknown"
                    .to_owned(),
            ),
            Ok(true) => PublishOutcome::Confirmed,
            Ok(false) => PublishOutcome::Nacked,
        })
        .collect()
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

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel};

use super::acks::UnsettledTags;
use super::headers;
use super::publish::group_outcomes;
use super::topology::{DEAD_KEY, tier_key};
use crate::{BrokerError, DeliveryInfo, Failure, PublishOutcome};

/// Settles one RabbitMQ delivery. Retries and dead letters are published on
/// the consumer's own confirm-mode channel and acknowledged only after the
/// broker confirmed them; if that fails, the delivery is requeued instead,
/// so it is never lost (and a message that keeps failing this way reaches
/// the queue's delivery limit and is dead-lettered by the broker).
pub struct Settler {
    pub(crate) acker: Acker,
    pub(crate) delivery_tag: u64,
    /// The consuming channel's unsettled deliveries (see [`super::acks`]).
    pub(crate) unsettled: Arc<UnsettledTags>,
    pub(crate) channel: Channel,
    pub(crate) retry_exchange: Arc<str>,
    pub(crate) retry_delays: Arc<[Duration]>,
    pub(crate) properties: BasicProperties,
    /// Held from publish to confirm, so that one republish at a time is
    /// pending on the channel and a returned message is known to be its own
    /// (see `group_outcomes`). Retries and dead letters are the rare path.
    pub(crate) publishing: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Settler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settler")
            .field("retry_exchange", &self.retry_exchange)
            .finish_non_exhaustive()
    }
}

impl Settler {
    pub(crate) async fn ack(self) -> Result<(), BrokerError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|error| settle_error(&self.properties, format!("ack failed: {error}")))?;
        self.unsettled.settled(&[self.delivery_tag]);
        Ok(())
    }

    /// Acknowledges deliveries whose transaction committed together: those
    /// one `multiple` acknowledgement may cover with one frame (see
    /// [`super::acks`]), the others one by one.
    pub(crate) async fn ack_together(settlers: Vec<Self>) -> Result<(), BrokerError> {
        let mut channels: Vec<Vec<Self>> = Vec::new();
        for settler in settlers {
            match channels
                .iter_mut()
                .find(|group| Arc::ptr_eq(&group[0].unsettled, &settler.unsettled))
            {
                Some(group) => group.push(settler),
                None => channels.push(vec![settler]),
            }
        }
        let mut result = Ok(());
        for mut group in channels {
            group.sort_by_key(|settler| settler.delivery_tag);
            let tags: Vec<u64> = group.iter().map(|settler| settler.delivery_tag).collect();
            let covered = group[0].unsettled.coverable(&tags);
            let singles = group.split_off(covered);
            if let Some(last) = group.last() {
                match last.acker.ack(BasicAckOptions { multiple: true }).await {
                    Ok(_) => last.unsettled.settled(&tags[..covered]),
                    Err(error) => {
                        result = Err(settle_error(
                            &last.properties,
                            format!("ack of {covered} deliveries failed: {error}"),
                        ));
                    }
                }
            }
            for outcome in
                futures_util::future::join_all(singles.into_iter().map(|settler| settler.ack()))
                    .await
            {
                if let Err(error) = outcome {
                    result = Err(error);
                }
            }
        }
        result
    }

    pub(crate) async fn retry(
        self,
        body: &[u8],
        info: &DeliveryInfo,
        after: Duration,
        failure: &Failure,
    ) -> Result<(), BrokerError> {
        let delay = crate::topology::tier_delay(&self.retry_delays, after);
        let mut headers = headers::carried(self.properties.headers().as_ref());
        headers::put_failure(&mut headers, &info.source, failure, info.replays);
        self.republish_then_ack(&tier_key(delay), body, headers)
            .await
    }

    pub(crate) async fn dead_letter(
        self,
        body: &[u8],
        info: &DeliveryInfo,
        kind: &str,
        failure: &Failure,
    ) -> Result<(), BrokerError> {
        let mut headers = headers::carried(self.properties.headers().as_ref());
        headers::put_failure(&mut headers, &info.source, failure, info.replays);
        headers::put_text(&mut headers, headers::ERROR_KIND, kind);
        headers::put_text(&mut headers, headers::WORKER, &info.worker);
        headers::put_text(&mut headers, headers::REPLICA, &info.replica);
        self.republish_then_ack(DEAD_KEY, body, headers).await
    }

    async fn republish_then_ack(
        self,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), BrokerError> {
        let properties = self.properties.clone().with_headers(headers);
        let exclusive = self.publishing.lock().await;
        let confirmation = match self
            .channel
            .basic_publish(
                self.retry_exchange.as_ref().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties,
            )
            .await
        {
            Ok(confirm) => confirm.await.map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        drop(exclusive);
        let id = self.properties.message_id().as_ref().map(|id| id.as_str());
        let confirmed = group_outcomes(&[id], vec![confirmation])
            .pop()
            .unwrap_or_else(|| PublishOutcome::Failed("no outcome".to_owned()));
        if confirmed != PublishOutcome::Confirmed {
            // Put the original back rather than leave it unacknowledged on a
            // live channel, where it would sit until the channel closes.
            if self
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
                .is_ok()
            {
                self.unsettled.settled(&[self.delivery_tag]);
            }
            return Err(settle_error(
                &self.properties,
                format!(
                    "publishing to {} with key {routing_key}: {confirmed:?}",
                    self.retry_exchange
                ),
            ));
        }
        self.ack().await
    }
}

fn settle_error(properties: &BasicProperties, reason: String) -> BrokerError {
    BrokerError::Settle {
        delivery: properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_else(|| "<no message id>".to_owned()),
        reason,
    }
}

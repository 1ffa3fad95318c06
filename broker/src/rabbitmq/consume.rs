use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use fleet_messages::names;

use super::acks::UnsettledTags;
use super::settle::Settler;
use super::{ConnectionConfig, connection, headers, topology};
use crate::backoff::reconnect_policy;
use crate::delivery::Settler as AnySettler;
use crate::{BrokerError, Consumer, Delivery, DeliveryInfo, Transport, WorkerTopology};

/// How long to wait, after cancelling the consumer, for deliveries the broker
/// had already sent.
const CANCEL_DRAIN: Duration = Duration::from_millis(500);

/// Opens the first session now (so a wrong URL or a topology conflict fails
/// the caller at once), then hands it to a supervisor that forwards
/// deliveries and reconnects whenever the connection breaks.
pub(crate) async fn start(
    config: ConnectionConfig,
    topology: WorkerTopology,
) -> Result<Consumer, BrokerError> {
    let session = Session::open(&config, &topology).await?;
    let (sender, receiver) = mpsc::channel(usize::from(config.prefetch.max(1)));
    let stop = CancellationToken::new();
    let close = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(supervise(
        config,
        topology,
        session,
        sender,
        stop.clone(),
        close.clone(),
    ));
    Ok(Consumer::new(receiver, stop, close, tasks))
}

/// One connection's worth of consuming.
struct Session {
    connection: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
    tag: String,
    /// The channel's deliveries not settled yet: a new channel starts
    /// with none (the old one's come again).
    unsettled: Arc<UnsettledTags>,
}

impl Session {
    async fn open(config: &ConnectionConfig, worker: &WorkerTopology) -> Result<Self, BrokerError> {
        let connection = connection::open(config, &worker.worker).await?;
        // Confirm mode: retries and dead letters are published on this
        // channel and must be confirmed before the original is acked.
        let channel = connection::confirm_channel(&connection).await?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|error| BrokerError::rabbitmq("setting prefetch", error))?;
        // Declared on every (re)connect: the broker may have lost it.
        topology::declare_events(&channel, &config.namespace).await?;
        topology::declare_worker(&channel, &config.namespace, worker).await?;
        let queue = names::worker_queue(&config.namespace, &worker.worker);
        let tag = format!("{}/{}", config.replica, worker.worker);
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|error| BrokerError::rabbitmq(&format!("consuming from {queue}"), error))?;
        Ok(Self {
            connection,
            channel,
            consumer,
            tag,
            unsettled: Arc::default(),
        })
    }

    async fn close(self) {
        let _ = self.channel.close(200, "shutdown".into()).await;
        let _ = self.connection.close(200, "shutdown".into()).await;
    }
}

/// What every delivery of this consumer shares.
struct Context {
    worker: String,
    replica: String,
    queue: String,
    retry_exchange: Arc<str>,
    retry_delays: Arc<[Duration]>,
    /// One republish (retry or dead letter) pending at a time per consumer.
    publishing: Arc<tokio::sync::Mutex<()>>,
}

async fn supervise(
    config: ConnectionConfig,
    topology: WorkerTopology,
    mut session: Session,
    sender: mpsc::Sender<Delivery>,
    stop: CancellationToken,
    close: CancellationToken,
) {
    let context = Context {
        worker: topology.worker.clone(),
        replica: config.replica.clone(),
        queue: names::worker_queue(&config.namespace, &topology.worker),
        retry_exchange: names::retry_exchange(&config.namespace, &topology.worker).into(),
        retry_delays: topology.retry_delays.clone().into(),
        publishing: Arc::default(),
    };
    loop {
        if forward(&mut session, &sender, &stop, &context).await == Forwarding::Stopped {
            break;
        }
        warn!(worker = %context.worker, "rabbitmq consumer lost its connection; reconnecting");
        // Deliveries of the lost channel still in the buffer cannot be
        // acknowledged any more; the broker delivers them again.
        let opened = tokio::select! {
            _ = stop.cancelled() => None,
            opened = (|| Session::open(&config, &topology))
                .retry(reconnect_policy())
                .notify(|error, delay| warn!(%error, ?delay, "rabbitmq reconnect failed")) => opened.ok(),
        };
        match opened {
            Some(reopened) => {
                info!(worker = %context.worker, "rabbitmq consumer reconnected");
                let lost = std::mem::replace(&mut session, reopened);
                drop(lost);
            }
            None => break,
        }
    }
    drop(sender);
    // Keep the channel open until the caller settled what it holds.
    close.cancelled().await;
    session.close().await;
}

#[derive(PartialEq, Eq)]
enum Forwarding {
    /// Stopped on request (or nobody takes deliveries any more).
    Stopped,
    /// The connection or consumer ended: reconnect.
    Lost,
}

async fn forward(
    session: &mut Session,
    sender: &mpsc::Sender<Delivery>,
    stop: &CancellationToken,
    context: &Context,
) -> Forwarding {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                let _ = session
                    .channel
                    .basic_cancel(session.tag.as_str().into(), BasicCancelOptions::default())
                    .await;
                // Hand on what the broker sent before the cancel took effect.
                while let Ok(Some(Ok(delivery))) =
                    tokio::time::timeout(CANCEL_DRAIN, session.consumer.next()).await
                {
                    if sender.send(convert(delivery, context, session)).await.is_err() {
                        break;
                    }
                }
                return Forwarding::Stopped;
            }
            next = session.consumer.next() => match next {
                Some(Ok(delivery)) => {
                    if sender.send(convert(delivery, context, session)).await.is_err() {
                        return Forwarding::Stopped;
                    }
                }
                Some(Err(error)) => {
                    warn!(%error, worker = %context.worker, "rabbitmq consumer error");
                    return Forwarding::Lost;
                }
                None => return Forwarding::Lost,
            },
        }
    }
}

fn convert(delivery: lapin::message::Delivery, context: &Context, session: &Session) -> Delivery {
    let lapin::message::Delivery {
        delivery_tag,
        routing_key,
        properties,
        data,
        acker,
        ..
    } = delivery;
    let headers = properties.headers().as_ref();
    let previous_failure = headers::previous_failure(headers);
    let redeliveries = headers::number(headers, headers::DELIVERY_COUNT).unwrap_or(0);
    let earlier_failures = previous_failure
        .as_ref()
        .map_or(0, |failure| failure.attempts);
    let attempt = u32::try_from(u64::from(earlier_failures) + 1 + redeliveries).unwrap_or(u32::MAX);
    let info = DeliveryInfo {
        transport: Transport::Rabbitmq,
        worker: context.worker.clone(),
        // Retries and replays arrive with the routing key of the plumbing;
        // the header keeps the event's own.
        source: headers::text(headers, headers::SOURCE)
            .unwrap_or_else(|| routing_key.as_str().to_owned()),
        attempt,
        message_id: properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned()),
        previous_failure,
        replays: headers::number(headers, headers::REPLAYS)
            .and_then(|replays| u32::try_from(replays).ok())
            .unwrap_or(0),
        position: format!("{}#{delivery_tag}", context.queue),
        replica: context.replica.clone(),
    };
    session.unsettled.delivered(delivery_tag);
    Delivery {
        body: data,
        info,
        settler: AnySettler::RabbitMq(Box::new(Settler {
            acker,
            delivery_tag,
            unsettled: session.unsettled.clone(),
            channel: session.channel.clone(),
            retry_exchange: context.retry_exchange.clone(),
            retry_delays: context.retry_delays.clone(),
            properties,
            publishing: context.publishing.clone(),
        })),
    }
}

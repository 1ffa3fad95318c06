//! Dead-letter operations on RabbitMQ (see `crate::dead_letter_ops`).
//!
//! A classic queue cannot be read at an offset, so every operation fetches
//! with `basic.get` *without* acknowledging, on a connection of its own:
//!
//! - browsing never acknowledges; one requeue at the end puts every fetched
//!   message back at its original position, and the browse returns once the
//!   queue counts them again (`dead_letters::give_back`: the next command
//!   must find them all);
//! - replay and purge acknowledge exactly the selected messages (a replayed
//!   one only once its republish was confirmed) and hand the others back
//!   the same way. After an error, closing the connection returns them.
//!   They fetch through a consumer with a prefetch window (fast), falling
//!   back to `basic.get` when a sparse selection would stall it (`Source`).
//!   A killed process closes its connection as well (the socket dies), so an
//!   unconfirmed replay leaves its dead letter in the queue.
//!
//! Replays go to the worker's private retry exchange with the `redeliver`
//! key, which only the worker's own queue is bound to: never to the events
//! exchange, where every subscriber of the type would get it again.
//!
//! Stopping early: a replay binds an exclusive, server-named queue of its own
//! to the retry exchange with the `dead` key, so it sees a copy of every new
//! dead letter of the worker, and counts the replayed ones among them. The
//! queue disappears with the connection.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::PublisherConfirm;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio::time::Instant;

use fleet_messages::{CONTENT_TYPE, names};

use super::publish::{confirmation, group_outcomes};
use super::topology::{DEAD_KEY, REDELIVER_KEY};
use super::{RabbitMqBroker, connection, dead_letters, headers};
use crate::dead_letter_ops::{
    BrowseSummary, DeadLetterSelection, ReplayOptions, ReplayReport, is_redead, pace,
};
use crate::{BrokerError, DeadLetter, PublishOutcome};

/// Replays published before their confirms are collected, as one group
/// (see `settle`): pipelining them is what makes a replay fast, and a
/// returned message can be matched to its replay only within such a group.
/// (500 measured no faster than 256.)
const CONFIRM_WINDOW: usize = 256;

const PERSISTENT: u8 = 2;

/// Messages a replay or purge fetches at once through its consumer.
const PREFETCH: u16 = 1000;

/// How long the consumer may stay quiet before `basic.get` is asked whether
/// the queue is empty (reached when selected dead letters vanished
/// meanwhile, or the broker is slow).
const IDLE: Duration = Duration::from_secs(1);

/// How long to wait, after cancelling the consumer, for what the broker had
/// sent already.
const CANCEL_DRAIN: Duration = Duration::from_millis(500);

/// Where a replay or purge fetches from, in queue order.
///
/// A consumer with a prefetch window first: one round trip per window
/// instead of one `basic.get` per message. Unselected messages stay
/// unacknowledged and fill that window, though; once they hold half of it
/// (a sparse selection), the consumer is cancelled, what it had received is
/// taken from a backlog, and the rest comes by `basic.get`, which never
/// stalls.
struct Source {
    consumer: Option<lapin::Consumer>,
    backlog: VecDeque<lapin::message::Delivery>,
    held: usize,
}

const CONSUMER_TAG: &str = "dlq-tool";

impl Source {
    async fn consume(channel: &Channel, queue: &str) -> Result<Self, BrokerError> {
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(|error| BrokerError::rabbitmq("setting prefetch", error))?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                CONSUMER_TAG.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|error| BrokerError::rabbitmq(&format!("consuming from {queue}"), error))?;
        Ok(Self {
            consumer: Some(consumer),
            backlog: VecDeque::new(),
            held: 0,
        })
    }

    /// The next message; `None` when the queue has no more.
    async fn next(
        &mut self,
        channel: &Channel,
        queue: &str,
    ) -> Result<Option<lapin::message::Delivery>, BrokerError> {
        loop {
            if let Some(delivery) = self.backlog.pop_front() {
                return Ok(Some(delivery));
            }
            let Some(consumer) = self.consumer.as_mut() else {
                return Ok(get(channel, queue).await?.map(|message| message.delivery));
            };
            match tokio::time::timeout(IDLE, consumer.next()).await {
                Ok(Some(Ok(delivery))) => return Ok(Some(delivery)),
                Ok(Some(Err(error))) => {
                    return Err(BrokerError::rabbitmq(
                        &format!("consuming from {queue}"),
                        error,
                    ));
                }
                // Quiet: the queue may be empty, or the broker slow;
                // `basic.get` tells for sure (an empty reply).
                Err(_) | Ok(None) => self.switch_to_get(channel).await,
            }
        }
    }

    /// Counts one unselected message held unacknowledged; switches to
    /// `basic.get` before the held ones could stall the consumer.
    async fn hold(&mut self, channel: &Channel) {
        self.held += 1;
        if self.held >= usize::from(PREFETCH / 2) {
            self.switch_to_get(channel).await;
        }
    }

    /// The tag of the last delivery waiting in the backlog (fetched ahead,
    /// never handed out, so unacknowledged).
    fn last_tag(&self) -> Option<u64> {
        self.backlog.back().map(|delivery| delivery.delivery_tag)
    }

    /// Cancels the consumer; what it had received already goes to the
    /// backlog, to be taken first, in order.
    async fn switch_to_get(&mut self, channel: &Channel) {
        let Some(mut consumer) = self.consumer.take() else {
            return;
        };
        let _ = channel
            .basic_cancel(CONSUMER_TAG.into(), BasicCancelOptions::default())
            .await;
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(CANCEL_DRAIN, consumer.next()).await
        {
            self.backlog.push_back(delivery);
        }
    }
}

/// One replay waiting for its confirm.
struct Pending {
    tag: u64,
    /// The dead letter's id, for the report.
    id: String,
    /// The republished message's id, to match a returned message to it.
    message_id: Option<String>,
    confirm: PublisherConfirm,
}

impl RabbitMqBroker {
    pub(crate) async fn browse_dead_letters(
        &self,
        worker: &str,
        visit: &mut (dyn FnMut(DeadLetter) -> ControlFlow<()> + Send),
    ) -> Result<BrowseSummary, BrokerError> {
        let config = &self.inner.config;
        let queue = names::dead_letter_queue(&config.namespace, worker);
        let connection = connection::open(config, "dlq-browse").await?;
        let result = async {
            // Only what is there now: later arrivals are not part of it.
            let depth = depth(&connection, config, worker).await?;
            let channel = plain_channel(&connection).await?;
            let mut seen = 0u64;
            let mut last_tag = None;
            while seen < depth {
                let Some(message) = get(&channel, &queue).await? else {
                    break;
                };
                last_tag = Some(message.delivery.delivery_tag);
                let position = usize::try_from(seen).unwrap_or(usize::MAX);
                seen += 1;
                let letter = dead_letters::dead_letter(position, &message.delivery, worker);
                if visit(letter).is_break() {
                    break;
                }
            }
            if let Some(tag) = last_tag {
                // A replay usually follows a browse at once: it must find
                // them all back in place.
                dead_letters::give_back(&channel, &queue, tag, seen).await?;
            }
            Ok(BrowseSummary {
                seen,
                watermark: None,
            })
        }
        .await;
        // After an error, unacknowledged messages go back, in order, when
        // the connection closes.
        let _ = connection.close(200, "browse done".into()).await;
        result
    }

    /// Replays (`options` given) or purges (`None`) the selection.
    pub(crate) async fn take_dead_letters(
        &self,
        selection: &DeadLetterSelection,
        options: Option<&ReplayOptions>,
        progress: &mut (dyn FnMut(&ReplayReport) + Send),
    ) -> Result<ReplayReport, BrokerError> {
        let config = &self.inner.config;
        let worker = selection.worker();
        let purpose = if options.is_some() {
            "dlq-replay"
        } else {
            "dlq-purge"
        };
        let connection = connection::open(config, purpose).await?;
        let result = async {
            let mut report = ReplayReport::new(selection.len());
            if selection.is_empty() {
                return Ok(report);
            }
            let queue = names::dead_letter_queue(&config.namespace, worker);
            let exchange = names::retry_exchange(&config.namespace, worker);
            // Bounded by what is there now: arrivals during the run sit
            // behind it and are never fetched.
            let depth = depth(&connection, config, worker).await?;
            let channel = connection::confirm_channel(&connection).await?;
            let mut source = Source::consume(&channel, &queue).await?;
            let mut watch = match options.and_then(|options| options.stop_after_redead) {
                Some(_) => Some(watch_dead_letters(&connection, &exchange).await?),
                None => None,
            };
            let threshold = options.and_then(|options| options.stop_after_redead);
            let rate = options.and_then(|options| options.rate);
            // Counts go down to 0 as dead letters are taken, but keys stay:
            // the same map says what was selected (for `count_redead`).
            let mut wanted = selection.id_counts();
            let mut remaining = report.selected;
            let mut pending: VecDeque<Pending> = VecDeque::new();
            let started = Instant::now();
            let mut fetched = 0u64;
            let mut taken = 0u64;
            // The highest delivery tag left unacknowledged: `give_back`
            // names it. Not simply the last fetched, which may have been
            // taken (acknowledged): RabbitMQ refuses a nack of an unknown tag
            // and closes the channel, and the rest would go back only when
            // the connection closes, after this returned.
            let mut held_tag = None;
            while remaining > 0 && fetched < depth {
                if let (Some(watch), Some(threshold)) = (watch.as_mut(), threshold) {
                    report.redead += count_redead(watch, &wanted);
                    if report.redead >= threshold {
                        report.stopped_early = true;
                        break;
                    }
                }
                if rate.is_some() {
                    // Paced: confirms are long in by the next turn, so settle
                    // them now rather than leave replayed dead letters
                    // unremoved (a kill would duplicate them) for a window.
                    if let Err(error) =
                        settle(&channel, &mut pending, config, &mut report, &mut held_tag).await
                    {
                        report.aborted = Some(error.to_string());
                    }
                    if report.aborted.is_some() {
                        break;
                    }
                    progress(&report);
                }
                pace(started, taken, rate).await;
                let delivery = match source.next(&channel, &queue).await {
                    Ok(Some(delivery)) => delivery,
                    Ok(None) => break,
                    Err(error) => {
                        report.aborted = Some(error.to_string());
                        break;
                    }
                };
                fetched += 1;
                let letter = dead_letters::dead_letter(0, &delivery, worker);
                match wanted.get_mut(letter.id.as_str()) {
                    Some(count) if *count > 0 => *count -= 1,
                    // Not selected: it stays unacknowledged, and goes back
                    // to its place at the end (`give_back`).
                    _ => {
                        held_tag = held_tag.max(Some(delivery.delivery_tag));
                        source.hold(&channel).await;
                        continue;
                    }
                }
                remaining -= 1;
                taken += 1;
                if options.is_none() {
                    match ack(&channel, delivery.delivery_tag).await {
                        Ok(()) => report.replayed += 1,
                        Err(error) => {
                            report.aborted = Some(error.to_string());
                            break;
                        }
                    }
                    progress(&report);
                    continue;
                }
                let properties = replay_properties(&delivery.properties, &letter);
                let published = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        REDELIVER_KEY.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &delivery.data,
                        properties,
                    )
                    .await;
                match published {
                    Ok(confirm) => pending.push_back(Pending {
                        tag: delivery.delivery_tag,
                        id: letter.id,
                        message_id: delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|id| id.as_str().to_owned()),
                        confirm,
                    }),
                    Err(error) => {
                        report.fail(&letter.id, format!("publish failed: {error}"));
                        report.aborted = Some(error.to_string());
                        break;
                    }
                }
                if pending.len() >= CONFIRM_WINDOW
                    && let Err(error) =
                        settle(&channel, &mut pending, config, &mut report, &mut held_tag).await
                {
                    report.aborted = Some(error.to_string());
                }
                if report.aborted.is_some() {
                    break;
                }
                progress(&report);
            }
            if let Err(error) =
                settle(&channel, &mut pending, config, &mut report, &mut held_tag).await
            {
                report.aborted.get_or_insert(error.to_string());
            }
            if report.aborted.is_none() && !report.stopped_early {
                report.missing = remaining;
            }
            progress(&report);
            // The unselected, the unconfirmed and whatever the consumer
            // fetched ahead go back in place before this returns (see
            // `give_back`); a channel broken by an error leaves that to the
            // connection's close.
            if report.aborted.is_none() {
                // A consumer left running would take them straight back;
                // what it fetched ahead is held too.
                source.switch_to_get(&channel).await;
                if let Some(tag) = held_tag.max(source.last_tag()) {
                    let left = depth.saturating_sub(report.replayed);
                    if let Err(error) = dead_letters::give_back(&channel, &queue, tag, left).await {
                        // What was done is done and reported; the close returns them.
                        tracing::warn!(%error, "returning the unselected dead letters");
                    }
                }
            }
            Ok(report)
        }
        .await;
        // Fetched but unselected (or unconfirmed) messages return to the
        // queue in order.
        let _ = connection.close(200, "dead letters done".into()).await;
        result
    }

    pub(crate) async fn import_dead_letters(
        &self,
        worker: &str,
        letters: &[DeadLetter],
        replay: bool,
    ) -> Result<Vec<PublishOutcome>, BrokerError> {
        let config = &self.inner.config;
        let connection = connection::open(config, "dlq-import").await?;
        let result = async {
            let channel = connection::confirm_channel(&connection).await?;
            let exchange = names::retry_exchange(&config.namespace, worker);
            let mut confirms = Vec::with_capacity(letters.len());
            let mut ids = Vec::with_capacity(letters.len());
            for letter in letters {
                let (key, properties) = if replay {
                    (REDELIVER_KEY, imported_replay_properties(letter))
                } else {
                    (DEAD_KEY, imported_dead_letter_properties(letter, worker))
                };
                ids.push(
                    properties
                        .message_id()
                        .as_ref()
                        .map(|id| id.as_str().to_owned()),
                );
                confirms.push(
                    channel
                        .basic_publish(
                            exchange.as_str().into(),
                            key.into(),
                            BasicPublishOptions {
                                mandatory: true,
                                immediate: false,
                            },
                            &letter.body,
                            properties,
                        )
                        .await,
                );
            }
            let deadline = Instant::now() + config.confirm_timeout;
            let mut confirmations = Vec::with_capacity(confirms.len());
            for sent in confirms {
                confirmations.push(confirmation(sent, deadline, config.confirm_timeout).await);
            }
            let ids: Vec<Option<&str>> = ids.iter().map(Option::as_deref).collect();
            Ok(group_outcomes(&ids, confirmations))
        }
        .await;
        let _ = connection.close(200, "import done".into()).await;
        result
    }
}

/// Waits for the confirms of every pending replay, then acknowledges
/// (removes) the dead letter of each one confirmed and routed. Settled as a
/// group, not one by one: a returned message may come with another
/// replay's confirm (see `group_outcomes`), so whether a replay was routed
/// is known only once the whole group's confirms are in.
async fn settle(
    channel: &Channel,
    pending: &mut VecDeque<Pending>,
    config: &super::ConnectionConfig,
    report: &mut ReplayReport,
    held_tag: &mut Option<u64>,
) -> Result<(), BrokerError> {
    let group: Vec<Pending> = pending.drain(..).collect();
    let mut confirmations = Vec::with_capacity(group.len());
    let mut settled = Vec::with_capacity(group.len());
    let deadline = Instant::now() + config.confirm_timeout;
    for replay in group {
        confirmations
            .push(confirmation(Ok(replay.confirm), deadline, config.confirm_timeout).await);
        settled.push((replay.tag, replay.id, replay.message_id));
    }
    let ids: Vec<Option<&str>> = settled
        .iter()
        .map(|(_, _, message_id)| message_id.as_deref())
        .collect();
    let outcomes = group_outcomes(&ids, confirmations);
    for ((tag, id, _), outcome) in settled.iter().zip(outcomes) {
        if !matches!(outcome, PublishOutcome::Confirmed) {
            // Not acknowledged: it stays, for `give_back`.
            *held_tag = (*held_tag).max(Some(*tag));
        }
        match outcome {
            PublishOutcome::Confirmed => {
                ack(channel, *tag).await?;
                report.replayed += 1;
            }
            PublishOutcome::Unroutable => report.fail(
                id,
                "unroutable: the worker's queue is not bound to its retry exchange (has the worker ever run?)"
                    .to_owned(),
            ),
            other => report.fail(id, format!("{other:?}")),
        }
    }
    Ok(())
}

/// The original properties (message id, type, content type, persistence)
/// with the failure stamps replaced by the replay's headers: where the event
/// came from, and one more replay. Attempts restart at 1 on the worker.
fn replay_properties(original: &BasicProperties, letter: &DeadLetter) -> BasicProperties {
    let mut table = headers::carried(original.headers().as_ref());
    headers::put_text(&mut table, headers::SOURCE, &letter.source);
    headers::put_number(
        &mut table,
        headers::REPLAYS,
        letter.replays.saturating_add(1),
    );
    original.clone().with_headers(table)
}

/// Properties for an imported event: what the publisher sets.
fn imported_properties(letter: &DeadLetter) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0));
    if !letter.id.starts_with("sha256:") {
        properties = properties.with_message_id(letter.id.as_str().into());
    }
    if let Some(event_type) = event_type(&letter.body) {
        properties = properties.with_type(event_type.as_str().into());
    }
    properties
}

fn imported_replay_properties(letter: &DeadLetter) -> BasicProperties {
    let mut table = FieldTable::default();
    headers::put_text(&mut table, headers::SOURCE, &letter.source);
    headers::put_number(
        &mut table,
        headers::REPLAYS,
        letter.replays.saturating_add(1),
    );
    imported_properties(letter).with_headers(table)
}

fn imported_dead_letter_properties(letter: &DeadLetter, worker: &str) -> BasicProperties {
    let failure = letter.failure();
    let mut table = FieldTable::default();
    headers::put_failure(&mut table, &letter.source, &failure, letter.replays);
    headers::put_text(&mut table, headers::ERROR_KIND, &letter.error_kind);
    headers::put_text(&mut table, headers::WORKER, worker);
    if let Some(replica) = &letter.replica {
        headers::put_text(&mut table, headers::REPLICA, replica);
    }
    imported_properties(letter).with_headers(table)
}

fn event_type(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("type")?.as_str().map(str::to_owned)
}

/// The dead-letter queue's depth now, on a channel of its own (a passive
/// declare of a missing queue closes its channel); 0 when it does not exist.
async fn depth(
    connection: &Connection,
    config: &super::ConnectionConfig,
    worker: &str,
) -> Result<u64, BrokerError> {
    let channel = plain_channel(connection).await?;
    dead_letters::depth(&channel, &config.namespace, worker).await
}

async fn plain_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    connection
        .create_channel()
        .await
        .map_err(|error| BrokerError::rabbitmq("opening a channel", error))
}

async fn get(
    channel: &Channel,
    queue: &str,
) -> Result<Option<lapin::message::BasicGetMessage>, BrokerError> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .map_err(|error| BrokerError::rabbitmq(&format!("reading {queue}"), error))
}

async fn ack(channel: &Channel, tag: u64) -> Result<(), BrokerError> {
    channel
        .basic_ack(tag, BasicAckOptions { multiple: false })
        .await
        .map_err(|error| BrokerError::rabbitmq("acknowledging a dead letter", error))
}

/// A copy of every new dead letter of the worker (see the module docs).
async fn watch_dead_letters(
    connection: &Connection,
    exchange: &str,
) -> Result<lapin::Consumer, BrokerError> {
    let channel = plain_channel(connection).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|error| BrokerError::rabbitmq("declaring the replay watch queue", error))?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            DEAD_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|error| {
            BrokerError::rabbitmq(&format!("watching the dead letters of {exchange}"), error)
        })?;
    channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|error| BrokerError::rabbitmq("consuming the replay watch queue", error))
}

/// Replayed dead letters of the selection that came back since the last
/// call; never waits.
fn count_redead(
    watch: &mut lapin::Consumer,
    selected: &std::collections::HashMap<&str, u32>,
) -> u64 {
    let mut redead = 0;
    while let Some(Some(Ok(delivery))) = watch.next().now_or_never() {
        let letter = dead_letters::dead_letter(0, &delivery, "");
        if is_redead(letter.replays, &letter.id, selected) {
            redead += 1;
        }
    }
    redead
}

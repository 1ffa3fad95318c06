use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use fleet_messages::{Namespace, names};

use crate::{BrokerError, WorkerTopology};

/// Routing key, on a worker's retry exchange, of messages going back to the
/// worker's own queue.
pub(crate) const REDELIVER_KEY: &str = "redeliver";
/// Routing key, on a worker's retry exchange, of dead letters.
pub(crate) const DEAD_KEY: &str = "dead";

/// Routing key of a retry tier on the worker's retry exchange.
pub(crate) fn tier_key(delay: std::time::Duration) -> String {
    format!("{}ms", delay.as_millis())
}

pub(crate) async fn declare_events(
    channel: &Channel,
    namespace: &Namespace,
) -> Result<(), BrokerError> {
    exchange(channel, &names::exchange(namespace), ExchangeKind::Topic).await
}

pub(crate) async fn declare_worker(
    channel: &Channel,
    namespace: &Namespace,
    topology: &WorkerTopology,
) -> Result<(), BrokerError> {
    let worker = topology.worker.as_str();
    let events = names::exchange(namespace);
    let retry_exchange = names::retry_exchange(namespace, worker);
    let queue_name = names::worker_queue(namespace, worker);
    let dlq = names::dead_letter_queue(namespace, worker);

    exchange(channel, &retry_exchange, ExchangeKind::Direct).await?;

    // Dead letters first: the worker queue dead-letters into it.
    let mut dlq_arguments = FieldTable::default();
    dlq_arguments.insert("x-queue-type".into(), text("classic"));
    expire(&mut dlq_arguments, topology);
    queue(channel, &dlq, dlq_arguments).await?;
    bind(channel, &dlq, &retry_exchange, DEAD_KEY).await?;

    let mut arguments = quorum_dead_lettering(&retry_exchange, DEAD_KEY);
    arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(i32::try_from(topology.delivery_limit).unwrap_or(i32::MAX)),
    );
    expire(&mut arguments, topology);
    queue(channel, &queue_name, arguments).await?;
    for event_type in &topology.event_types {
        bind(channel, &queue_name, &events, event_type).await?;
    }
    bind(channel, &queue_name, &retry_exchange, REDELIVER_KEY).await?;

    for delay in &topology.retry_delays {
        let tier = names::retry_queue(namespace, worker, *delay);
        let mut arguments = quorum_dead_lettering(&retry_exchange, REDELIVER_KEY);
        arguments.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        );
        expire(&mut arguments, topology);
        queue(channel, &tier, arguments).await?;
        bind(channel, &tier, &retry_exchange, &tier_key(*delay)).await?;
    }
    Ok(())
}

/// Deletes a worker's queues and its private exchange (not the shared
/// events exchange). Missing ones are fine: deleting is idempotent.
pub(crate) async fn delete_worker(
    channel: &Channel,
    namespace: &Namespace,
    topology: &WorkerTopology,
) -> Result<(), BrokerError> {
    let worker = topology.worker.as_str();
    let mut queues = vec![
        names::worker_queue(namespace, worker),
        names::dead_letter_queue(namespace, worker),
    ];
    queues.extend(
        topology
            .retry_delays
            .iter()
            .map(|delay| names::retry_queue(namespace, worker, *delay)),
    );
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(|error| BrokerError::rabbitmq(&format!("deleting queue {queue}"), error))?;
    }
    let exchange = names::retry_exchange(namespace, worker);
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .map_err(|error| BrokerError::rabbitmq(&format!("deleting exchange {exchange}"), error))
}

/// Quorum queue arguments that dead-letter to `exchange` with `routing_key`,
/// at-least-once: the default (at-most-once) drops a message silently when
/// its dead-letter target cannot take it.
fn quorum_dead_lettering(exchange: &str, routing_key: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), text("quorum"));
    arguments.insert("x-dead-letter-exchange".into(), text(exchange));
    arguments.insert("x-dead-letter-routing-key".into(), text(routing_key));
    arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    // Required by at-least-once dead-lettering.
    arguments.insert("x-overflow".into(), text("reject-publish"));
    arguments
}

/// Queue TTL (`x-expires`): the broker deletes the queue once it has had no
/// consumer (and no redeclare) for that long.
fn expire(arguments: &mut FieldTable, topology: &WorkerTopology) {
    if let Some(after) = topology.expires_after {
        arguments.insert(
            "x-expires".into(),
            // At least 1 ms: the broker refuses 0.
            AMQPValue::LongLongInt(i64::try_from(after.as_millis().max(1)).unwrap_or(i64::MAX)),
        );
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

async fn exchange(channel: &Channel, name: &str, kind: ExchangeKind) -> Result<(), BrokerError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(name.into(), kind, options, FieldTable::default())
        .await
        .map_err(|error| BrokerError::rabbitmq(&format!("declaring exchange {name}"), error))
}

async fn queue(channel: &Channel, name: &str, arguments: FieldTable) -> Result<(), BrokerError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), options, arguments)
        .await
        .map(|_| ())
        .map_err(|error| BrokerError::rabbitmq(&format!("declaring queue {name}"), error))
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|error| {
            BrokerError::rabbitmq(&format!("binding {queue} to {exchange} with {key}"), error)
        })
}

//! Publish and consume throughput of both transports, each measured through
//! the raw client library (lapin, redis) and through [`Broker`], on the real
//! local servers, so the broker's overhead is a ratio rather than a guess.
//!
//! ```sh
//! cargo bench -p fleet-broker --bench throughput
//! cargo bench -p fleet-broker --bench throughput -- --json --messages 50000 --batch 1000
//! ```
//!
//! Options (an argument wins over its environment variable):
//!
//! | argument | variable | default | meaning |
//! |---|---|---|---|
//! | `--messages N` | `BENCH_MESSAGES` | 20000 | messages per measurement |
//! | `--batch N` | `BENCH_BATCH` | 500 | batch size, publish window in flight, consumer prefetch |
//! | `--body-bytes N` | `BENCH_BODY_BYTES` | the envelope's size | pad each body up to N bytes |
//! | `--single N` | `BENCH_SINGLE` | 2000 | messages of the one-confirm-at-a-time baseline |
//! | `--rounds N` | `BENCH_ROUNDS` | 2 | rounds; a round has 3 publish samples and 1 consume sample per path |
//! | `--transport T` | `BENCH_TRANSPORT` | both | `rabbitmq`, `redis` or `both` |
//! | `--json` | `BENCH_JSON=1` | off | one JSON document on stdout (the table goes to stderr) |
//! | | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` | |
//! | | `REDIS_URL` | `redis://127.0.0.1:6379` | |
//!
//! What is measured, per transport, on one worker queue (RabbitMQ: the
//! quorum queue `Broker::declare_worker` declares, bound to `order.placed`;
//! Redis: the `order.placed` stream and the worker's consumer group):
//!
//! - publish: raw (lapin: one confirm-mode channel, persistent, mandatory,
//!   `--batch` in flight then their confirms; redis: `--batch` `XADD`s per
//!   pipelined round trip) against `Broker::publish_batch` in batches of
//!   `--batch`. Raw and broker alternate, which goes first alternating too;
//!   the queue is purged (the stream trimmed) after each, after checking it
//!   holds exactly what was published. RabbitMQ also gets the
//!   one-confirm-at-a-time baseline, for scale.
//! - consume: the queue or stream is filled by the raw publisher, then
//!   drained by a raw consumer (lapin consume + ack of each; `XREADGROUP
//!   COUNT --batch` + one `XACK` of what it read), by `Broker::consume` +
//!   `Delivery::ack` one delivery after the other, by the same with 16
//!   acks in flight (the default `worker.concurrency`), and by
//!   `Delivery::ack_all` of whatever was fetched (up to 32, the default
//!   `worker.max_batch`; 16 of those in flight), in rotating order.
//!
//! Each figure is the best of its samples (the median is shown too); a short
//! unreported warm-up of every path goes first. Each transport runs in a
//! fresh random namespace, one after the other (the servers and this process
//! share a small machine), and everything declared is deleted at the end,
//! also when a measurement fails. Progress goes to stderr.

// Printing the figures is this binary's whole job.
#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::streams::{StreamPendingReply, StreamReadReply};
use deadpool_redis::redis::{self, AsyncConnectionConfig};
use fleet_broker::{Broker, OutgoingMessage, PublishOutcome, WorkerTopology};
use fleet_config::{Environment, SecretUrl, Settings};
use fleet_messages::{
    CONTENT_TYPE, Envelope, EventData, EventType, Namespace, OrderItem, OrderPlaced, names,
};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use uuid::Uuid;

const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The worker whose queue (RabbitMQ) or consumer group (Redis) is measured.
const WORKER: &str = "bench-worker";
const EVENT_TYPE: EventType = EventType::OrderPlaced;
/// The name the broker knows this process by (connection and consumer names).
const REPLICA: &str = "bench";
/// Persistent delivery mode, as the broker publishes.
const PERSISTENT: u8 = 2;
/// Longest wait for one delivery before a consume measurement gives up.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);
/// Upper bound of the warm-up round's size.
const WARM_UP_MESSAGES: usize = 2000;
/// Acks in flight in the concurrent consume measurement: the default
/// `worker.concurrency`.
const ACKS_IN_FLIGHT: usize = 16;
/// Deliveries acknowledged together at most: the default `worker.max_batch`.
const ACK_TOGETHER: usize = 32;
/// Raw/broker publish pairs per round. A publish is short (a tenth of a
/// second on Redis, two seconds on RabbitMQ), so a scheduling hiccup on a
/// busy machine moves one sample a lot: publishes get more samples than
/// consumes, which take longer.
const PUBLISH_SAMPLES: usize = 3;

#[tokio::main]
async fn main() -> Result<()> {
    let options = Options::parse()?;
    let messages = build_messages(options.messages, options.body_bytes)?;
    let body_bytes = messages.iter().map(|m| m.body.len()).max().unwrap_or(0);
    let mut report = Report::new(&options, body_bytes);

    if options.rabbitmq {
        let run = Run {
            options: &options,
            messages: &messages,
            namespace: fresh_namespace()?,
        };
        report.rabbitmq = Some(rabbitmq_bench(run).await?);
    }
    if options.redis {
        let run = Run {
            options: &options,
            messages: &messages,
            namespace: fresh_namespace()?,
        };
        report.redis = Some(redis_bench(run).await?);
    }

    let table = report.table();
    if options.json {
        eprint!("{table}");
        println!("{:#}", report.json());
    } else {
        print!("{table}");
    }
    Ok(())
}

// ------------------------------------------------------------------ options

#[derive(Debug)]
struct Options {
    messages: usize,
    batch: usize,
    /// Pad bodies up to this size; `None`: the envelope as it is.
    body_bytes: Option<usize>,
    single: usize,
    rounds: usize,
    json: bool,
    rabbitmq: bool,
    redis: bool,
    amqp_url: String,
    redis_url: String,
}

impl Options {
    fn parse() -> Result<Self> {
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let number = |name: &str, default: usize| -> Result<usize> {
            env(name).map_or(Ok(default), |value| {
                value
                    .parse()
                    .with_context(|| format!("{name}={value} is not a number"))
            })
        };
        let mut options = Options {
            messages: number("BENCH_MESSAGES", 20_000)?,
            batch: number("BENCH_BATCH", 500)?,
            body_bytes: env("BENCH_BODY_BYTES")
                .map(|value| {
                    value
                        .parse()
                        .with_context(|| format!("BENCH_BODY_BYTES={value} is not a number"))
                })
                .transpose()?,
            single: number("BENCH_SINGLE", 2000)?,
            rounds: number("BENCH_ROUNDS", 2)?,
            json: env("BENCH_JSON").is_some_and(|value| value != "0" && value != "false"),
            rabbitmq: true,
            redis: true,
            amqp_url: env("AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned()),
            redis_url: env("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned()),
        };
        let mut transport = env("BENCH_TRANSPORT");

        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = || -> Result<String> {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| anyhow!("{name} needs a value"))
            };
            let mut count = || -> Result<usize> {
                let value = value()?;
                value
                    .parse()
                    .with_context(|| format!("{name} {value} is not a number"))
            };
            match name.as_str() {
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                "--json" => options.json = true,
                "--messages" => options.messages = count()?,
                "--batch" => options.batch = count()?,
                "--body-bytes" => options.body_bytes = Some(count()?),
                "--single" => options.single = count()?,
                "--rounds" => options.rounds = count()?,
                "--transport" => transport = Some(value()?),
                "--help" | "-h" => {
                    eprintln!(
                        "usage: cargo bench -p fleet-broker --bench throughput -- \
                         [--messages N] [--batch N] [--body-bytes N] [--single N] \
                         [--rounds N] [--transport rabbitmq|redis|both] [--json]\n\
                         (or BENCH_MESSAGES, BENCH_BATCH, BENCH_BODY_BYTES, BENCH_SINGLE, \
                         BENCH_ROUNDS, BENCH_TRANSPORT, BENCH_JSON=1; AMQP_URL, REDIS_URL)"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other} (try --help)"),
            }
        }
        match transport.as_deref() {
            None | Some("both") => {}
            Some("rabbitmq") => options.redis = false,
            Some("redis") => options.rabbitmq = false,
            Some(other) => bail!("unknown transport {other}: rabbitmq, redis or both"),
        }
        ensure!(options.messages > 0, "--messages must be at least 1");
        ensure!(options.batch > 0, "--batch must be at least 1");
        ensure!(options.rounds > 0, "--rounds must be at least 1");
        Ok(options)
    }

    /// The consumer prefetch: the batch size, within what the settings allow.
    fn prefetch(&self) -> u16 {
        u16::try_from(self.batch.clamp(1, 10_000)).unwrap_or(10_000)
    }

    fn warm_up(&self) -> usize {
        self.messages.min(WARM_UP_MESSAGES)
    }
}

/// `count` envelopes of `order.placed` as order-worker emits them (one item,
/// with correlation and causation ids), each with its own ids. With
/// `body_bytes`, padded up to that size with a CloudEvents extension
/// attribute, which consumers ignore.
fn build_messages(count: usize, body_bytes: Option<usize>) -> Result<Vec<OutgoingMessage>> {
    let customer = "customer-4711";
    (0..count)
        .map(|n| {
            let order_id = Uuid::now_v7();
            let data = EventData::OrderPlaced(OrderPlaced {
                order_id,
                customer_id: customer.to_owned(),
                items: vec![OrderItem {
                    sku: format!("SKU-{:05}", n % 100_000),
                    quantity: 2,
                    unit_price_cents: 1250,
                }],
                total_cents: 2500,
            });
            let envelope = Envelope::new("order-worker", data, order_id, Some(Uuid::now_v7()));
            let mut message = OutgoingMessage::from_envelope(&envelope);
            ensure!(
                message.event_type == EVENT_TYPE.as_str(),
                "unexpected event type {}",
                message.event_type
            );
            let Some(body_bytes) = body_bytes else {
                return Ok(message);
            };
            // `,"benchpadding":""` adds 18 bytes before any padding.
            let overhead = 18;
            ensure!(
                message.body.len() + overhead <= body_bytes,
                "--body-bytes {body_bytes} is too small: the envelope alone has {} bytes, \
                 padding needs {overhead} more",
                message.body.len()
            );
            let mut json = envelope.to_json();
            if let Value::Object(object) = &mut json {
                let padding = body_bytes - message.body.len() - overhead;
                object.insert("benchpadding".to_owned(), Value::from("x".repeat(padding)));
            }
            message.body = json.to_string().into_bytes();
            Ok(message)
        })
        .collect()
}

/// Settings of this benchmark for `transport` in `namespace`: the URLs from
/// the options and only what the measurements need from the environment.
fn settings(options: &Options, transport: &str, namespace: &Namespace) -> Result<Settings> {
    let environment = Environment::default()
        .with("AMQP_URL", &options.amqp_url)
        .with("REDIS_URL", &options.redis_url)
        .with("FLEET__TRANSPORT", transport)
        .with("FLEET__NAMESPACE", namespace.as_str())
        .with("FLEET__WORKER__CONCURRENCY", "1")
        .with("FLEET__WORKER__PREFETCH", options.prefetch().to_string())
        // Short, so that stopping a Redis consumer does not wait long for
        // its blocked reads; irrelevant while entries are waiting.
        .with("FLEET__REDIS__BLOCK_MS", "200");
    fleet_config::load("fleet-broker-bench", &environment)
        .with_context(|| format!("benchmark settings for {transport}"))
}

fn fresh_namespace() -> Result<Namespace> {
    let suffix = Uuid::new_v4().simple().to_string();
    Namespace::new(&format!("bench{}", &suffix[..12])).context("namespace")
}

fn topology(settings: &Settings) -> WorkerTopology {
    WorkerTopology {
        worker: WORKER.to_owned(),
        event_types: vec![EVENT_TYPE.as_str().to_owned()],
        retry_delays: settings.retry.delays(),
        delivery_limit: settings.retry.max_attempts.max(2),
        expires_after: None,
    }
}

// ------------------------------------------------------------- measurements

/// One measured figure, over its rounds.
#[derive(Debug)]
struct Measurement {
    key: &'static str,
    label: String,
    messages: usize,
    /// Messages per second, one per sample.
    runs: Vec<f64>,
}

impl Measurement {
    fn new(key: &'static str, label: String, messages: usize) -> Self {
        Self {
            key,
            label,
            messages,
            runs: Vec::new(),
        }
    }

    fn record(&mut self, elapsed: Duration) {
        let rate = self.messages as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
        eprintln!("  {:<44} {:>10.0} msg/s", self.label, rate);
        self.runs.push(rate);
    }

    fn best(&self) -> f64 {
        self.runs.iter().copied().fold(0.0, f64::max)
    }

    fn median(&self) -> f64 {
        let mut runs = self.runs.clone();
        runs.sort_by(f64::total_cmp);
        match runs.len() {
            0 => 0.0,
            len if len % 2 == 1 => runs[len / 2],
            len => (runs[len / 2 - 1] + runs[len / 2]) / 2.0,
        }
    }
}

/// What one transport's run measured.
#[derive(Debug)]
struct TransportResult {
    transport: &'static str,
    url: String,
    namespace: Namespace,
    measurements: Vec<Measurement>,
    /// (what, broker key, raw key)
    ratios: Vec<(&'static str, &'static str, &'static str)>,
}

impl TransportResult {
    fn measurement(&self, key: &str) -> Option<&Measurement> {
        self.measurements.iter().find(|m| m.key == key)
    }

    /// `statistic` of `broker` over `statistic` of `raw`.
    fn ratio(&self, broker: &str, raw: &str, statistic: fn(&Measurement) -> f64) -> Option<f64> {
        let raw = statistic(self.measurement(raw)?);
        let broker = statistic(self.measurement(broker)?);
        (raw > 0.0).then(|| broker / raw)
    }
}

/// What one transport's run works with.
struct Run<'a> {
    options: &'a Options,
    messages: &'a [OutgoingMessage],
    /// Fresh for every run.
    namespace: Namespace,
}

// ---------------------------------------------------------------- RabbitMQ

async fn rabbitmq_bench(ctx: Run<'_>) -> Result<TransportResult> {
    let options = ctx.options;
    let settings = settings(options, "rabbitmq", &ctx.namespace)?;
    let url = settings.amqp.url.clone();
    eprintln!("rabbitmq: {} (namespace {})", url.redacted(), ctx.namespace);
    let topology = topology(&settings);
    let broker = Broker::connect(&settings, REPLICA)
        .await
        .context("connecting the broker to rabbitmq")?;
    let connection = amqp_connect(&url, &ctx.namespace, "raw").await?;

    let measured = rabbitmq_measure(&ctx, &settings, &broker, &connection, &topology).await;
    let cleaned = rabbitmq_cleanup(&connection, &ctx.namespace, &topology).await;
    let _ = connection.close(200, "done".into()).await;
    let measurements = measured?;
    cleaned?;
    Ok(TransportResult {
        transport: "rabbitmq",
        url: url.redacted(),
        namespace: ctx.namespace,
        measurements,
        ratios: vec![
            ("publish", "broker_publish_batch", "raw_publish_window"),
            ("consume", "broker_consume_ack", "raw_consume_ack"),
            (
                "consume_concurrent",
                "broker_consume_ack_concurrent",
                "raw_consume_ack",
            ),
            (
                "consume_ack_all",
                "broker_consume_ack_all",
                "raw_consume_ack",
            ),
        ],
    })
}

async fn rabbitmq_measure(
    ctx: &Run<'_>,
    settings: &Settings,
    broker: &Broker,
    connection: &Connection,
    topology: &WorkerTopology,
) -> Result<Vec<Measurement>> {
    let options = ctx.options;
    let messages = ctx.messages;
    let n = messages.len();
    let batch = options.batch;
    let prefetch = options.prefetch();
    // The same quorum queue, bindings and retry plumbing a worker gets.
    broker.declare_worker(topology).await?;
    let exchange = names::exchange(&ctx.namespace);
    let queue = names::worker_queue(&ctx.namespace, WORKER);
    let publisher = amqp_confirm_channel(connection).await?;
    let purge = || async {
        let purged = publisher
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await
            .context("purging the queue")?;
        Ok::<_, anyhow::Error>(usize::try_from(purged).unwrap_or(usize::MAX))
    };

    let mut single = Measurement::new(
        "raw_publish_single",
        "raw lapin publish, one confirm at a time".to_owned(),
        options.single.min(n),
    );
    let mut raw_publish = Measurement::new(
        "raw_publish_window",
        format!("raw lapin publish, window of {batch}"),
        n,
    );
    let mut broker_publish = Measurement::new(
        "broker_publish_batch",
        format!("Broker::publish_batch, batches of {batch}"),
        n,
    );
    let mut raw_consume = Measurement::new(
        "raw_consume_ack",
        format!("raw lapin consume + ack, prefetch {prefetch}"),
        n,
    );
    let mut broker_consume = Measurement::new(
        "broker_consume_ack",
        format!("Broker::consume + Delivery::ack, prefetch {prefetch}"),
        n,
    );
    let mut broker_consume_concurrent = Measurement::new(
        "broker_consume_ack_concurrent",
        format!("  the same, {ACKS_IN_FLIGHT} acks in flight"),
        n,
    );
    let mut broker_consume_together = Measurement::new(
        "broker_consume_ack_all",
        format!("  Delivery::ack_all of up to {ACK_TOGETHER}, {ACKS_IN_FLIGHT} in flight"),
        n,
    );

    let warm = &messages[..options.warm_up()];
    eprintln!("  warm-up ({} messages per path)", warm.len());
    amqp_publish_window(&publisher, &exchange, warm, batch).await?;
    amqp_consume(&ctx.namespace, settings, &queue, warm.len(), prefetch).await?;
    broker_publish_all(broker, warm, batch).await?;
    broker_consume_all(broker, topology, warm.len(), 1, 1).await?;
    amqp_expect_empty(connection, &queue).await?;

    for sample in 0..options.rounds * PUBLISH_SAMPLES {
        if sample.is_multiple_of(PUBLISH_SAMPLES) {
            eprintln!("  publish round {}", sample / PUBLISH_SAMPLES + 1);
        }
        for raw in alternate(sample) {
            let started = Instant::now();
            if raw {
                amqp_publish_window(&publisher, &exchange, messages, batch).await?;
                raw_publish.record(started.elapsed());
            } else {
                broker_publish_all(broker, messages, batch).await?;
                broker_publish.record(started.elapsed());
            }
            let purged = purge().await?;
            ensure!(purged == n, "the queue held {purged} of {n} messages");
        }
    }

    for round in 0..options.rounds {
        eprintln!("  consume round {}", round + 1);
        for path in rotate(round) {
            // Filled the same way for every consumer.
            amqp_publish_window(&publisher, &exchange, messages, batch).await?;
            match path {
                Path::Raw => raw_consume
                    .record(amqp_consume(&ctx.namespace, settings, &queue, n, prefetch).await?),
                Path::Broker => {
                    broker_consume.record(broker_consume_all(broker, topology, n, 1, 1).await?)
                }
                Path::BrokerConcurrent => broker_consume_concurrent
                    .record(broker_consume_all(broker, topology, n, ACKS_IN_FLIGHT, 1).await?),
                Path::BrokerTogether => broker_consume_together.record(
                    broker_consume_all(broker, topology, n, ACKS_IN_FLIGHT, ACK_TOGETHER).await?,
                ),
            }
            amqp_expect_empty(connection, &queue).await?;
        }
    }

    eprintln!("  one confirm at a time");
    let started = Instant::now();
    amqp_publish_window(&publisher, &exchange, &messages[..single.messages], 1).await?;
    single.record(started.elapsed());
    purge().await?;
    let _ = publisher.close(200, "done".into()).await;

    Ok(vec![
        single,
        raw_publish,
        broker_publish,
        raw_consume,
        broker_consume,
        broker_consume_concurrent,
        broker_consume_together,
    ])
}

/// Raw first in even samples, broker first in odd ones (`true`: raw).
fn alternate(sample: usize) -> [bool; 2] {
    let raw_first = sample.is_multiple_of(2);
    [raw_first, !raw_first]
}

/// The consume paths, in an order that rotates with the round.
#[derive(Clone, Copy, Debug)]
enum Path {
    Raw,
    Broker,
    BrokerConcurrent,
    BrokerTogether,
}

fn rotate(round: usize) -> [Path; 4] {
    let mut paths = [
        Path::Raw,
        Path::Broker,
        Path::BrokerConcurrent,
        Path::BrokerTogether,
    ];
    paths.rotate_left(round % 4);
    paths
}

async fn amqp_connect(url: &SecretUrl, namespace: &Namespace, purpose: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("{namespace}/{REPLICA}/{purpose}").into());
    Connection::connect(url.expose(), properties)
        .await
        .with_context(|| format!("connecting to {}", url.redacted()))
}

async fn amqp_confirm_channel(connection: &Connection) -> Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// The properties the broker sets, so that both paths send the same frames.
fn amqp_properties(message: &OutgoingMessage) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(message.id.as_str().into())
        .with_type(message.event_type.as_str().into())
        .with_timestamp(message.timestamp)
}

/// Plain lapin: send `window` messages (persistent, mandatory), await their
/// confirms, repeat. Every message must be acked and routed.
async fn amqp_publish_window(
    channel: &Channel,
    exchange: &str,
    messages: &[OutgoingMessage],
    window: usize,
) -> Result<()> {
    let mut confirms = Vec::with_capacity(window);
    for chunk in messages.chunks(window) {
        for message in chunk {
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    message.event_type.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &message.body,
                    amqp_properties(message),
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms.drain(..) {
            match confirm.await? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_)) => bail!("a message was unroutable"),
                other => bail!("a message was not confirmed: {other:?}"),
            }
        }
    }
    Ok(())
}

/// Plain lapin on a connection of its own: consume `count` messages, acking
/// each. Returns the time from the consumer's start to the last ack.
async fn amqp_consume(
    namespace: &Namespace,
    settings: &Settings,
    queue: &str,
    count: usize,
    prefetch: u16,
) -> Result<Duration> {
    let connection = amqp_connect(&settings.amqp.url, namespace, "raw-consumer").await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let tag = "raw-consumer";
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    for received in 0..count {
        let delivery = tokio::time::timeout(DELIVERY_WAIT, consumer.next())
            .await
            .map_err(|_| anyhow!("raw consumer: no delivery after {received} of {count}"))?
            .ok_or_else(|| anyhow!("raw consumer ended after {received} of {count}"))??;
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let elapsed = started.elapsed();
    channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await?;
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(elapsed)
}

/// Fails if the queue still holds messages after a drain.
async fn amqp_expect_empty(connection: &Connection, queue: &str) -> Result<()> {
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "done".into()).await;
    ensure!(
        declared.message_count() == 0,
        "{queue} still holds {} messages after a drain",
        declared.message_count()
    );
    Ok(())
}

/// Deletes every queue and exchange `Broker::declare_worker` declared.
async fn rabbitmq_cleanup(
    connection: &Connection,
    namespace: &Namespace,
    topology: &WorkerTopology,
) -> Result<()> {
    let mut queues = vec![
        names::worker_queue(namespace, WORKER),
        names::dead_letter_queue(namespace, WORKER),
    ];
    queues.extend(
        topology
            .retry_delays
            .iter()
            .map(|delay| names::retry_queue(namespace, WORKER, *delay)),
    );
    let exchanges = [
        names::retry_exchange(namespace, WORKER),
        names::exchange(namespace),
    ];
    let mut failures = Vec::new();
    // A failed operation closes its channel: one channel per operation.
    for queue in &queues {
        let deleted = async {
            let channel = connection.create_channel().await?;
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
            let _ = channel.close(200, "done".into()).await;
            Ok::<_, lapin::Error>(())
        };
        if let Err(error) = deleted.await {
            failures.push(format!("queue {queue}: {error}"));
        }
    }
    for exchange in &exchanges {
        let deleted = async {
            let channel = connection.create_channel().await?;
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
            let _ = channel.close(200, "done".into()).await;
            Ok::<_, lapin::Error>(())
        };
        if let Err(error) = deleted.await {
            failures.push(format!("exchange {exchange}: {error}"));
        }
    }
    ensure!(
        failures.is_empty(),
        "cleaning up rabbitmq: {}",
        failures.join("; ")
    );
    eprintln!(
        "  deleted {} queues and {} exchanges",
        queues.len(),
        exchanges.len()
    );
    Ok(())
}

// -------------------------------------------------------------- the broker

/// `Broker::publish_batch` in batches of `batch`; every outcome must be
/// `Confirmed`.
async fn broker_publish_all(
    broker: &Broker,
    messages: &[OutgoingMessage],
    batch: usize,
) -> Result<()> {
    for chunk in messages.chunks(batch) {
        let outcomes = broker.publish_batch(chunk).await?;
        ensure!(
            outcomes.len() == chunk.len(),
            "{} outcomes for {} messages",
            outcomes.len(),
            chunk.len()
        );
        if let Some(outcome) = outcomes.iter().find(|o| **o != PublishOutcome::Confirmed) {
            bail!("a message was not confirmed: {outcome:?}");
        }
    }
    Ok(())
}

/// `Broker::consume`, acking `count` deliveries: one after the other as a
/// handler with concurrency 1 does, or up to `in_flight` at once as a worker
/// with that concurrency does. Returns the time from the consumer's start to
/// the last ack.
/// Drains `count` deliveries, acknowledging `together` at a time at most
/// (1: `Delivery::ack`, more: `Delivery::ack_all` of what was fetched),
/// with `in_flight` acknowledgements under way at once.
async fn broker_consume_all(
    broker: &Broker,
    topology: &WorkerTopology,
    count: usize,
    in_flight: usize,
    together: usize,
) -> Result<Duration> {
    let mut consumer = broker.consume(topology).await?;
    let started = Instant::now();
    let drained = async {
        let mut acks = JoinSet::new();
        let mut received = 0;
        while received < count {
            let delivery = tokio::time::timeout(DELIVERY_WAIT, consumer.next())
                .await
                .map_err(|_| anyhow!("no delivery after {received} of {count}"))?
                .ok_or_else(|| anyhow!("consumer ended after {received} of {count}"))?;
            received += 1;
            if in_flight <= 1 {
                delivery.ack().await?;
                continue;
            }
            let mut fetched = vec![delivery];
            while fetched.len() < together && received < count {
                match consumer.try_next() {
                    Some(delivery) => {
                        fetched.push(delivery);
                        received += 1;
                    }
                    None => break,
                }
            }
            while acks.len() >= in_flight {
                if let Some(acked) = acks.join_next().await {
                    acked??;
                }
            }
            if together <= 1 {
                for delivery in fetched {
                    acks.spawn(delivery.ack());
                }
            } else {
                acks.spawn(fleet_broker::Delivery::ack_all(fetched));
            }
        }
        while let Some(acked) = acks.join_next().await {
            acked??;
        }
        Ok::<_, anyhow::Error>(started.elapsed())
    }
    .await;
    consumer.shutdown().await;
    drained
}

// ------------------------------------------------------------------- Redis

async fn redis_bench(ctx: Run<'_>) -> Result<TransportResult> {
    let options = ctx.options;
    let settings = settings(options, "redis", &ctx.namespace)?;
    let url = settings.redis.url.clone();
    eprintln!("redis: {} (namespace {})", url.redacted(), ctx.namespace);
    let topology = topology(&settings);
    let broker = Broker::connect(&settings, REPLICA)
        .await
        .context("connecting the broker to redis")?;
    let mut connection = redis_connect(&url).await?;

    let measured = redis_measure(&ctx, &broker, &mut connection, &topology).await;
    let cleaned = redis_cleanup(&mut connection, &ctx.namespace).await;
    let measurements = measured?;
    cleaned?;
    Ok(TransportResult {
        transport: "redis",
        url: url.redacted(),
        namespace: ctx.namespace,
        measurements,
        ratios: vec![
            ("publish", "broker_publish_batch", "raw_publish_pipeline"),
            ("consume", "broker_consume_ack", "raw_consume_ack"),
            (
                "consume_concurrent",
                "broker_consume_ack_concurrent",
                "raw_consume_ack",
            ),
            (
                "consume_ack_all",
                "broker_consume_ack_all",
                "raw_consume_ack",
            ),
        ],
    })
}

async fn redis_measure(
    ctx: &Run<'_>,
    broker: &Broker,
    connection: &mut MultiplexedConnection,
    topology: &WorkerTopology,
) -> Result<Vec<Measurement>> {
    let options = ctx.options;
    let messages = ctx.messages;
    let n = messages.len();
    let batch = options.batch;
    let prefetch = options.prefetch();
    // The worker's consumer groups, as a worker declares them.
    broker.declare_worker(topology).await?;
    let stream = names::event_stream(&ctx.namespace, EVENT_TYPE.as_str());
    let group = names::consumer_group(WORKER);

    let mut raw_publish = Measurement::new(
        "raw_publish_pipeline",
        format!("raw redis XADD, pipelines of {batch}"),
        n,
    );
    let mut broker_publish = Measurement::new(
        "broker_publish_batch",
        format!("Broker::publish_batch, batches of {batch}"),
        n,
    );
    let mut raw_consume = Measurement::new(
        "raw_consume_ack",
        format!("raw XREADGROUP COUNT {batch} + XACK of the batch"),
        n,
    );
    let mut broker_consume = Measurement::new(
        "broker_consume_ack",
        format!("Broker::consume + Delivery::ack, prefetch {prefetch}"),
        n,
    );
    let mut broker_consume_concurrent = Measurement::new(
        "broker_consume_ack_concurrent",
        format!("  the same, {ACKS_IN_FLIGHT} acks in flight"),
        n,
    );
    let mut broker_consume_together = Measurement::new(
        "broker_consume_ack_all",
        format!("  Delivery::ack_all of up to {ACK_TOGETHER}, {ACKS_IN_FLIGHT} in flight"),
        n,
    );

    let warm = &messages[..options.warm_up()];
    eprintln!("  warm-up ({} messages per path)", warm.len());
    redis_publish(connection, &stream, warm, batch).await?;
    redis_consume(connection, &stream, &group, warm.len(), batch).await?;
    redis_reset(connection, &stream, &group).await?;
    broker_publish_all(broker, warm, batch).await?;
    broker_consume_all(broker, topology, warm.len(), 1, 1).await?;
    redis_reset(connection, &stream, &group).await?;

    for sample in 0..options.rounds * PUBLISH_SAMPLES {
        if sample.is_multiple_of(PUBLISH_SAMPLES) {
            eprintln!("  publish round {}", sample / PUBLISH_SAMPLES + 1);
        }
        for raw in alternate(sample) {
            let started = Instant::now();
            if raw {
                redis_publish(connection, &stream, messages, batch).await?;
                raw_publish.record(started.elapsed());
            } else {
                broker_publish_all(broker, messages, batch).await?;
                broker_publish.record(started.elapsed());
            }
            // Never delivered, so nothing is pending: trimming is all it takes.
            let trimmed = redis_reset(connection, &stream, &group).await?;
            ensure!(trimmed == n, "the stream held {trimmed} of {n} entries");
        }
    }

    for round in 0..options.rounds {
        eprintln!("  consume round {}", round + 1);
        for path in rotate(round) {
            // Filled the same way for every consumer.
            redis_publish(connection, &stream, messages, batch).await?;
            match path {
                Path::Raw => {
                    raw_consume.record(redis_consume(connection, &stream, &group, n, batch).await?)
                }
                Path::Broker => {
                    broker_consume.record(broker_consume_all(broker, topology, n, 1, 1).await?)
                }
                Path::BrokerConcurrent => broker_consume_concurrent
                    .record(broker_consume_all(broker, topology, n, ACKS_IN_FLIGHT, 1).await?),
                Path::BrokerTogether => broker_consume_together.record(
                    broker_consume_all(broker, topology, n, ACKS_IN_FLIGHT, ACK_TOGETHER).await?,
                ),
            }
            redis_reset(connection, &stream, &group).await?;
        }
    }
    Ok(vec![
        raw_publish,
        broker_publish,
        raw_consume,
        broker_consume,
        broker_consume_concurrent,
        broker_consume_together,
    ])
}

async fn redis_connect(url: &SecretUrl) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(url.expose())?;
    // Generous, like the broker's pool: a pipeline of many entries on a busy
    // machine can exceed redis-rs's default.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connecting to {}", url.redacted()))
}

/// Plain redis-rs: `XADD <stream> * event <body>`, `batch` per pipelined
/// round trip.
async fn redis_publish(
    connection: &mut MultiplexedConnection,
    stream: &str,
    messages: &[OutgoingMessage],
    batch: usize,
) -> Result<()> {
    for chunk in messages.chunks(batch) {
        let mut pipe = redis::pipe();
        for message in chunk {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("event")
                .arg(message.body.as_slice());
        }
        let ids: Vec<String> = pipe.query_async(connection).await?;
        ensure!(ids.len() == chunk.len(), "{} XADD replies", ids.len());
    }
    Ok(())
}

/// Plain redis-rs: `XREADGROUP ... COUNT <batch>`, then one `XACK` of what
/// it read, until `count` entries are acked.
async fn redis_consume(
    connection: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    count: usize,
    batch: usize,
) -> Result<Duration> {
    let started = Instant::now();
    let mut acked = 0;
    while acked < count {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg("raw-reader")
            .arg("COUNT")
            .arg(batch)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(connection)
            .await?;
        let ids: Vec<String> = reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .map(|entry| entry.id)
            .collect();
        ensure!(
            !ids.is_empty(),
            "raw reader: nothing to read after {acked} of {count}"
        );
        let done: usize = redis::cmd("XACK")
            .arg(stream)
            .arg(group)
            .arg(&ids)
            .query_async(connection)
            .await?;
        ensure!(done == ids.len(), "XACK acked {done} of {}", ids.len());
        acked += ids.len();
    }
    Ok(started.elapsed())
}

/// Checks that nothing is pending, then empties the stream so that every
/// publish starts on an empty stream. Returns how many entries it removed.
async fn redis_reset(
    connection: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Result<usize> {
    let pending: StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(connection)
        .await?;
    ensure!(
        pending.count() == 0,
        "{stream} still has {} pending entries after a drain",
        pending.count()
    );
    let trimmed = redis::cmd("XTRIM")
        .arg(stream)
        .arg("MAXLEN")
        .arg(0)
        .query_async(connection)
        .await?;
    Ok(trimmed)
}

/// Deletes every key of the namespace: the streams the publishes and
/// `declare_worker` created, and whatever else a consumer wrote there.
async fn redis_cleanup(
    connection: &mut MultiplexedConnection,
    namespace: &Namespace,
) -> Result<()> {
    let known = [
        names::event_stream(namespace, EVENT_TYPE.as_str()),
        names::retry_stream(namespace, WORKER),
        names::retry_schedule(namespace, WORKER),
        names::dead_letter_stream(namespace, WORKER),
    ];
    let mut deleted: usize = redis::cmd("DEL")
        .arg(&known)
        .query_async(&mut *connection)
        .await?;
    // Anything else under the namespace (there should be nothing).
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{namespace}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut *connection)
            .await?;
        if !keys.is_empty() {
            deleted += redis::cmd("DEL")
                .arg(&keys)
                .query_async::<usize>(&mut *connection)
                .await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    eprintln!("  deleted {deleted} keys");
    Ok(())
}

// ------------------------------------------------------------------ report

#[derive(Debug)]
struct Report {
    messages: usize,
    batch: usize,
    /// The largest body (envelopes differ by a few bytes: a time with whole
    /// seconds has no fraction).
    body_bytes: usize,
    requested_body_bytes: Option<usize>,
    single: usize,
    rounds: usize,
    prefetch: u16,
    rabbitmq: Option<TransportResult>,
    redis: Option<TransportResult>,
}

/// What the broker's publish path should reach, relative to raw.
const PUBLISH_TARGET: f64 = 0.90;

impl Report {
    fn new(options: &Options, body_bytes: usize) -> Self {
        Self {
            messages: options.messages,
            batch: options.batch,
            body_bytes,
            requested_body_bytes: options.body_bytes,
            single: options.single.min(options.messages),
            rounds: options.rounds,
            prefetch: options.prefetch(),
            rabbitmq: None,
            redis: None,
        }
    }

    fn transports(&self) -> impl Iterator<Item = &TransportResult> {
        self.rabbitmq.iter().chain(self.redis.iter())
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nfleet-broker throughput: {} messages, batch/window {}, prefetch {}, body {} bytes ({}), \
             {} round(s): {} publish and 1 consume sample(s) per path per round",
            self.messages,
            self.batch,
            self.prefetch,
            self.body_bytes,
            match self.requested_body_bytes {
                Some(_) => "order.placed envelope, padded",
                None => "order.placed envelope",
            },
            self.rounds,
            PUBLISH_SAMPLES
        );
        for result in self.transports() {
            let _ = writeln!(
                out,
                "{:<9} {} (namespace {}, deleted)",
                format!("{}:", result.transport),
                result.url,
                result.namespace
            );
        }
        let _ = writeln!(
            out,
            "\n{:<9} {:<48} {:>8} {:>10} {:>10}  {:<34} all samples (msg/s)",
            "transport", "measurement", "messages", "best", "median", "broker/raw: best (median)"
        );
        let _ = writeln!(out, "{}", "-".repeat(150));
        for result in self.transports() {
            for m in &result.measurements {
                let runs = m
                    .runs
                    .iter()
                    .map(|rate| format!("{rate:.0}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let versus = result
                    .ratios
                    .iter()
                    .find(|(_, broker, _)| *broker == m.key)
                    .and_then(|(what, broker, raw)| {
                        let best = result.ratio(broker, raw, Measurement::best)?;
                        let median = result.ratio(broker, raw, Measurement::median)?;
                        let verdict = match *what {
                            "publish" if best >= PUBLISH_TARGET => " target met",
                            "publish" => " target MISSED",
                            _ => "",
                        };
                        Some(format!(
                            "{:.1}% ({:.1}%){verdict}",
                            best * 100.0,
                            median * 100.0
                        ))
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{:<9} {:<48} {:>8} {:>10.0} {:>10.0}  {:<34} {}",
                    result.transport,
                    m.label,
                    m.messages,
                    m.best(),
                    m.median(),
                    versus,
                    runs
                );
            }
        }
        let _ = writeln!(
            out,
            "(msg/s; publish target: broker >= {:.0}% of raw, best against best)",
            PUBLISH_TARGET * 100.0
        );
        out
    }

    fn json(&self) -> Value {
        let transport = |result: &TransportResult| {
            let measurements: Vec<Value> = result
                .measurements
                .iter()
                .map(|m| {
                    json!({
                        "key": m.key,
                        "label": m.label,
                        "messages": m.messages,
                        "best_msg_per_s": m.best(),
                        "median_msg_per_s": m.median(),
                        "runs_msg_per_s": m.runs,
                    })
                })
                .collect();
            let ratios: serde_json::Map<String, Value> = result
                .ratios
                .iter()
                .map(|(what, broker, raw)| {
                    (
                        (*what).to_owned(),
                        json!({
                            "broker": broker,
                            "raw": raw,
                            "ratio_best": result.ratio(broker, raw, Measurement::best),
                            "ratio_median": result.ratio(broker, raw, Measurement::median),
                        }),
                    )
                })
                .collect();
            json!({
                "url": result.url,
                "namespace": result.namespace.as_str(),
                "measurements": measurements,
                "broker_vs_raw": ratios,
            })
        };
        json!({
            "bench": "fleet-broker throughput",
            "options": {
                "messages": self.messages,
                "batch": self.batch,
                "prefetch": self.prefetch,
                "body_bytes": self.body_bytes,
                "requested_body_bytes": self.requested_body_bytes,
                "single_confirm_messages": self.single,
                "rounds": self.rounds,
                "publish_samples_per_round": PUBLISH_SAMPLES,
            },
            "publish_target_ratio": PUBLISH_TARGET,
            "rabbitmq": self.rabbitmq.as_ref().map(transport),
            "redis": self.redis.as_ref().map(transport),
        })
    }
}

//! `loadgen`: drives the order saga end to end and checks it.
//!
//! One run:
//!
//! 1. **Plan** (`plan.rs`): N orders in a mix of categories (valid,
//!    unknown SKU, over credit, invalid), each with the outcome its saga must
//!    end with, from the fleet's own settings (inventory seed, credit limit,
//!    order maximum). An impossible plan is bad usage (exit 2).
//! 2. **Observe** first: a queue or consumer group of its own,
//!    `loadgen-<run id>`, bound to the terminal events and
//!    `notification.sent`, declared before anything is published so that no
//!    outcome can be missed. On Redis a new group starts at the beginning of
//!    the streams and replays earlier runs: events about orders this run did
//!    not submit are ignored. Everything is acknowledged.
//! 3. **Publish** (`publish.rs`): real `order.submitted` envelopes in
//!    confirmed batches, paced to `--rate` without drift; a batch leaves
//!    when due even while earlier ones wait for their confirms (open loop).
//! 4. **Wait** until every order ended (and was notified, when it notifies),
//!    plus a second for late doubles, or until `--timeout` after the last
//!    publish.
//! 5. **Judge** (`observe.rs`) and **report** (`report.rs`): outcomes,
//!    throughput, latency, and whether every order ended exactly once as
//!    expected (exit 0) or not (exit 1).

mod cli;
mod mix;
mod observe;
mod outcome;
mod plan;
mod publish;
mod report;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fleet_broker::{Broker, Consumer, Delivery, WorkerTopology};
use fleet_config::{Environment, LogFormat, Settings, TelemetrySettings};
use fleet_messages::{Envelope, EventType};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

use self::cli::Args;
use self::observe::{Observation, Recorded, Tracker};
use self::plan::{Limits, Plan, Request};
use self::publish::{Pacing, Published, publish_all};
use self::report::{RunFacts, Summary};

/// The events loadgen observes.
const OBSERVED: [EventType; 4] = [
    EventType::OrderConfirmed,
    EventType::OrderCancelled,
    EventType::OrderRejected,
    EventType::NotificationSent,
];
/// How long the observer's queues outlive their consumer. loadgen deletes
/// them when it ends; this is for when it is killed first: its queue would
/// otherwise collect every terminal event of the namespace, in the broker's
/// memory, for good. Long enough to ride out a reconnect (the backoff tops
/// out at 10 s), short enough that a dead run's backlog stays small.
const OBSERVER_EXPIRY: Duration = Duration::from_secs(60);
/// How long to keep observing after every saga ended, to catch late doubles.
const GRACE: Duration = Duration::from_secs(1);
/// Longest wait for already fetched deliveries when stopping.
const DRAIN: Duration = Duration::from_secs(5);
/// Progress lines in the log while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// At most this many fetched deliveries are acknowledged together.
const ACK_TOGETHER: usize = 64;

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Why a run could not produce a verdict.
#[derive(Debug)]
enum Failure {
    /// Bad command line, configuration or plan: exit 2.
    Usage(anyhow::Error),
    /// The broker or publishing failed: exit 1.
    Run(anyhow::Error),
}

/// Runs `loadgen` with the process's arguments and environment; the exit
/// status is 0 when every order ended exactly once as expected, 1 when not
/// or when the run failed, 2 on bad usage.
pub async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            // --help and --version are "errors" that print to stdout and exit 0.
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILED),
        Err(Failure::Usage(error)) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Run(error)) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Whether the run passed.
async fn run(args: Args) -> Result<bool, Failure> {
    let env = Environment::from_process();
    let load = |component: &str| {
        fleet_config::load(component, &env)
            .with_context(|| format!("loading the {component} configuration"))
            .map_err(Failure::Usage)
    };
    let settings = load("loadgen")?;
    init_logging(&settings.telemetry);
    let limits = Limits {
        seed: load("inventory-worker")?.inventory.seed,
        credit_limit_cents: load("payment-worker")?.payment.credit_limit_cents,
        max_total_cents: load("order-worker")?.order.max_total_cents,
    };

    let run_id: String = Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .take(8)
        .collect();
    let request = Request {
        orders: args.orders,
        mix: &args.mix,
        customers: args.customers,
        run_id: &run_id,
    };
    let plan = plan::plan(&request, &limits, &mut rand::rng())
        .context("planning the orders")
        .map_err(Failure::Usage)?;
    info!(
        run = %run_id,
        orders = plan.orders.len(),
        mix = %plan.counts,
        max_unit_price_cents = plan.max_unit_price_cents,
        "orders planned"
    );
    execute(&args, &settings, plan, &run_id)
        .await
        .map_err(Failure::Run)
}

/// Observes, publishes, waits, judges and prints the summary.
async fn execute(
    args: &Args,
    settings: &Settings,
    plan: Plan,
    run_id: &str,
) -> anyhow::Result<bool> {
    let observer = format!("loadgen-{run_id}");
    let broker = Broker::connect(settings, &observer)
        .await
        .with_context(|| format!("connecting to {}", settings.transport))?;
    broker
        .declare_events()
        .await
        .context("declaring the events exchange")?;
    let topology = WorkerTopology {
        worker: observer.clone(),
        event_types: OBSERVED.iter().map(|t| t.as_str().to_owned()).collect(),
        retry_delays: vec![Duration::from_secs(1)],
        delivery_limit: 5,
        expires_after: Some(OBSERVER_EXPIRY),
    };
    let mut consumer = broker
        .consume(&topology)
        .await
        .with_context(|| format!("consuming as {observer}"))?;
    info!(%observer, transport = %settings.transport, namespace = %settings.namespace, "observing");

    let mut tracker = Tracker::new(
        plan.orders
            .iter()
            .map(|order| (order.order_id(), order.category, order.expected)),
    );
    let orders = plan
        .orders
        .into_iter()
        .map(|order| order.submitted)
        .collect();
    let pacing = Pacing {
        rate: args.rate,
        batch: usize::try_from(args.batch).unwrap_or(usize::MAX),
    };
    let mut publisher = tokio::spawn(publish_all(broker.clone(), orders, pacing));

    let max_bytes = settings.limits.max_event_bytes;
    let timeout = Duration::from_secs(args.timeout);
    // Acknowledgements run beside the observation: awaiting each one in
    // turn would make the observer the slowest consumer of the run, and
    // its queue's backlog would count as saga latency.
    let mut acks = JoinSet::new();
    let watched = watch(
        &mut consumer,
        &mut tracker,
        &mut acks,
        &mut publisher,
        timeout,
        max_bytes,
    )
    .await;
    if watched.is_err() {
        publisher.abort();
    }
    stop(consumer, &mut tracker, &mut acks, max_bytes).await;
    // The observer's queue or groups would otherwise keep collecting every
    // terminal event of the namespace after this run.
    if let Err(error) = broker.delete_worker(&topology).await {
        warn!(%error, %observer, "could not remove the observer's queue");
    }
    let (published, ending) = watched?;
    let stopped_at = Instant::now();

    let evaluation = tracker.evaluate(&published.submitted_at);
    info!(
        ?ending,
        duplicate_deliveries = evaluation.duplicate_deliveries,
        ignored_other_orders = evaluation.foreign_events,
        republished = published.republished,
        "observation finished"
    );
    let first = published.first_publish.unwrap_or(published.finished);
    let end = evaluation.last_terminal.unwrap_or(stopped_at);
    let summary = Summary::new(
        RunFacts {
            transport: settings.transport.to_string(),
            namespace: settings.namespace.clone(),
            orders: args.orders,
            published: published.published,
            duration: end.saturating_duration_since(first),
            publish_duration: published.finished.saturating_duration_since(first),
        },
        &evaluation,
    );
    summary.print(args.json);
    Ok(evaluation.passed())
}

/// Why observation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Every saga ended (and the grace period passed).
    Complete,
    /// `--timeout` passed after the last publish.
    TimedOut,
    /// Ctrl-C after publishing.
    Interrupted,
    /// The consumer ended by itself.
    ConsumerClosed,
}

/// Consumes until the sagas are complete, the timeout passes or the user
/// interrupts, while the publisher runs. Fails when publishing fails.
async fn watch(
    consumer: &mut Consumer,
    tracker: &mut Tracker,
    acks: &mut JoinSet<()>,
    publisher: &mut JoinHandle<anyhow::Result<Published>>,
    timeout: Duration,
    max_bytes: usize,
) -> anyhow::Result<(Published, Ending)> {
    let mut published: Option<Published> = None;
    let mut deadline: Option<Instant> = None;
    let mut grace: Option<Instant> = None;
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    let ending = loop {
        if published.is_some() && grace.is_none() && tracker.is_complete() {
            debug!("every saga ended; watching for late doubles");
            grace = Some(Instant::now() + GRACE);
        }
        let wake = match (grace, deadline) {
            (Some(grace), Some(deadline)) => Some(grace.min(deadline)),
            (grace, deadline) => grace.or(deadline),
        };
        tokio::select! {
            joined = &mut *publisher, if published.is_none() => {
                let report = joined.context("the publishing task failed")??;
                info!(
                    published = report.published,
                    seconds = report.finished.saturating_duration_since(
                        report.first_publish.unwrap_or(report.finished)
                    ).as_secs_f64(),
                    "every order published and confirmed"
                );
                deadline = report.finished.checked_add(timeout);
                published = Some(report);
            }
            delivery = consumer.next() => match delivery {
                Some(first) => {
                    // And whatever else is already fetched: one
                    // acknowledgement for all of them.
                    let mut fetched = vec![first];
                    while fetched.len() < ACK_TOGETHER {
                        match consumer.try_next() {
                            Some(delivery) => fetched.push(delivery),
                            None => break,
                        }
                    }
                    observe(fetched, tracker, acks, max_bytes);
                }
                None if published.is_some() => {
                    warn!("the consumer stopped by itself");
                    break Ending::ConsumerClosed;
                }
                None => anyhow::bail!("the consumer stopped while publishing"),
            },
            () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => {
                if grace.is_some_and(|grace| Instant::now() >= grace) {
                    break Ending::Complete;
                }
                warn!(
                    ended = tracker.ended(),
                    orders = tracker.len(),
                    "timed out waiting for the sagas to end"
                );
                break Ending::TimedOut;
            }
            _ = progress.tick() => info!(
                published = published.as_ref().map(|p| p.published),
                ended = tracker.ended(),
                orders = tracker.len(),
                "progress"
            ),
            signal = &mut ctrl_c => {
                if let Err(error) = signal {
                    warn!(%error, "cannot listen for Ctrl-C");
                }
                if published.is_none() {
                    anyhow::bail!("interrupted while publishing");
                }
                warn!("interrupted: reporting what was observed so far");
                break Ending::Interrupted;
            }
        }
    };
    match published {
        Some(published) => Ok((published, ending)),
        None => anyhow::bail!("observation ended before publishing did"),
    }
}

/// Records deliveries that are about this run's orders, and starts their
/// acknowledgement (whatever they are) in `acks`.
fn observe(
    deliveries: Vec<Delivery>,
    tracker: &mut Tracker,
    acks: &mut JoinSet<()>,
    max_bytes: usize,
) {
    let at = Instant::now();
    for delivery in &deliveries {
        match Envelope::decode(delivery.body(), max_bytes) {
            Ok(envelope) => {
                if let Some(observation) = Observation::from_envelope(&envelope, at)
                    && tracker.record(observation) == Recorded::Duplicate
                {
                    debug!(event_id = %envelope.id, "redelivered event ignored");
                }
            }
            Err(error) => warn!(
                error_kind = error.kind(),
                %error,
                position = %delivery.info().position,
                "undecodable event ignored"
            ),
        }
    }
    acks.spawn(async move {
        if let Err(error) = Delivery::ack_all(deliveries).await {
            warn!(%error, "acknowledging failed; the event may come again (it is deduplicated)");
        }
    });
    while acks.try_join_next().is_some() {}
}

/// Stops fetching, records and acknowledges what was already fetched, and
/// closes the consumer.
async fn stop(
    mut consumer: Consumer,
    tracker: &mut Tracker,
    acks: &mut JoinSet<()>,
    max_bytes: usize,
) {
    consumer.stop();
    let until = tokio::time::Instant::now() + DRAIN;
    while let Ok(Some(delivery)) = tokio::time::timeout_at(until, consumer.next()).await {
        observe(vec![delivery], tracker, acks, max_bytes);
    }
    while acks.join_next().await.is_some() {}
    consumer.shutdown().await;
}

/// Logs to stderr (stdout carries the summary). `RUST_LOG` overrides
/// `telemetry.log_filter`.
fn init_logging(settings: &TelemetrySettings) {
    // lapin logs every returned (unroutable) message with its whole body;
    // the publisher reports those itself, once.
    let quiet = "lapin::returned_messages=error";
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{},{quiet}", settings.log_filter)))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{quiet}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

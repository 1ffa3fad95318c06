//! Running one worker replica: start-up, the consume loop with bounded
//! concurrency, and a graceful shutdown that loses nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use fleet_broker::{Broker, Consumer, Delivery, WorkerTopology};
use fleet_config::Settings;
use fleet_outbox::{Relay, RelayOptions, Retention, RetentionOptions, Schema};

use crate::handler::Handler;
use crate::http;
use crate::process::Processor;

/// A replica that is running; [`RunningWorker::stop`] drains it.
#[derive(Debug)]
pub struct RunningWorker {
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub http_addr: SocketAddr,
    /// This replica's name in the broker and in dead letters.
    pub replica: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    /// Graceful stop: stop consuming, finish in-flight work (within the
    /// shutdown timeout), flush the relay, close connections.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("worker task panicked")?
    }

    /// Waits until the worker ends by itself (it only does on a fatal error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await.context("worker task panicked")?
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// How long start-up waits for Postgres and the broker: about a minute.
fn startup_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(5))
        .with_total_delay(Some(std::time::Duration::from_secs(60)))
        .without_max_times()
        .with_jitter()
}

/// A name for this process: host, pid and a random suffix, so that restarts
/// and replicas on one host never share a consumer name.
pub fn replica_id(worker: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let suffix: u32 = rand::random::<u32>() % 0x10000;
    format!("{worker}@{host}-{}-{suffix:04x}", std::process::id())
}

/// Starts a replica of `H`: migrates its schema, connects, declares its
/// topology, and runs the consume loop, the relay, retention and the HTTP
/// endpoints until stopped.
pub async fn start<H: Handler>(
    settings: Settings,
    replica: String,
) -> anyhow::Result<RunningWorker> {
    let worker = H::WORKER.name();
    let schema = Schema::for_worker(worker).context("worker schema name")?;
    // Dependencies may come up after the worker (compose, Kubernetes): wait
    // for them with backoff rather than crash-loop.
    let pool = (|| fleet_outbox::connect(&settings.database, &schema))
        .retry(startup_backoff())
        .when(crate::handler::is_transient)
        .notify(|error, delay| warn!(%error, ?delay, "Postgres not reachable yet; retrying"))
        .await
        .with_context(|| format!("connecting to Postgres at {}", settings.database.url))?;
    fleet_outbox::migrate(&pool, &schema, &H::migrations())
        .await
        .with_context(|| format!("migrating schema {schema}"))?;
    let handler = H::from_settings(&settings);
    handler
        .prepare(&pool)
        .await
        .context("preparing the worker's state")?;

    let broker = (|| Broker::connect(&settings, &replica))
        .retry(startup_backoff())
        .when(fleet_broker::BrokerError::is_transient)
        .notify(|error, delay| warn!(%error, ?delay, "broker not reachable yet; retrying"))
        .await
        .with_context(|| format!("connecting to {}", settings.transport))?;
    // A broker that is up may still fail a declaration for a while (a
    // quorum queue whose Raft cluster did not start in time comes back as
    // INTERNAL_ERROR): wait for that too, with the same backoff. A
    // conflicting topology is refused, not transient, and fails the start
    // at once. Both declarations are idempotent, so a retry redoes them
    // together, in one budget rather than one each.
    let topology = WorkerTopology::for_worker(H::WORKER, &settings.retry);
    let consumer = (|| async {
        broker.declare_events().await?;
        broker.consume(&topology).await
    })
    .retry(startup_backoff())
    .when(fleet_broker::BrokerError::is_transient)
    .notify(|error, delay| warn!(%error, ?delay, "cannot declare the topology yet; retrying"))
    .await
    .with_context(|| format!("declaring the topology of {worker} and consuming"))?;

    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        pool.clone(),
        broker.clone(),
        schema.clone(),
        RelayOptions::from(&settings.outbox),
    );
    let relay_status = relay.status();
    let http = http::serve(
        &settings.http,
        http::State {
            broker: broker.clone(),
            pool: pool.clone(),
            relay: relay_status,
            max_relay_lag: settings.worker.max_relay_lag(),
        },
        shutdown.clone(),
    )
    .await?;
    info!(worker, %replica, http = %http.addr, transport = %settings.transport, "worker started");

    let processor = Arc::new(Processor {
        handler,
        pool: pool.clone(),
        retry: settings.retry.clone(),
        max_event_bytes: settings.limits.max_event_bytes,
        outbox: relay.writer(),
    });
    let task = {
        let shutdown = shutdown.clone();
        let retention = Retention::new(pool.clone(), schema, RetentionOptions::from(&settings));
        tokio::spawn(async move {
            let background = CancellationToken::new();
            let relay_task = tokio::spawn(relay.run(background.clone()));
            let retention_task = tokio::spawn(retention.run(background.clone()));
            consume(processor, consumer, &settings, shutdown).await;
            // In-flight work is committed; let the relay publish what it
            // wrote before the process goes.
            background.cancel();
            if let Err(error) = relay_task.await {
                warn!(%error, "outbox relay task failed");
            }
            let _ = retention_task.await;
            http.task.await.ok();
            pool.close().await;
            info!(worker, "worker stopped");
            Ok(())
        })
    };
    Ok(RunningWorker {
        http_addr: http.addr,
        replica,
        shutdown,
        task,
    })
}

/// A replica that started no batch for this long is idle: its next
/// delivery starts at once rather than waiting `worker.batch_wait_ms`.
const IDLE_AFTER: Duration = Duration::from_millis(100);

/// A batch: `first`, whatever is already fetched, and what arrives within
/// `wait`, up to `max_batch` deliveries; with a non-zero `gap`, only until
/// no delivery has come for that long.
///
/// Why wait at all: between idle and saturated, deliveries arrive a few
/// milliseconds apart, each finds a free slot, and each costs a
/// transaction, a commit and an acknowledgement of its own; that per-event
/// cost is what saturated two cores at half the fleet's sustained rate. At
/// 450 sagas/s on RabbitMQ (one replica per worker) a 5 ms wait cut the
/// fleet's commits from 25,000 to 9,200-9,400 per 16,000 orders, the busy
/// cores from 1.76-1.81 to 1.19-1.24, and p99 saga latency from 173-216 ms
/// to 68-73 ms, despite up to 5 ms more per hop. Counting a replica busy
/// only while a batch was in flight, or for 5 ms after one started, gave
/// back most of that: 17,000-18,000 commits per 20,000 orders at 550/s,
/// against 10,700 with [`IDLE_AFTER`]. An idle replica is given no wait:
/// its delivery starts at once. The default is 10 ms: at 610/s its p99 was
/// 97-109 ms in four runs, 5 ms gave 88-245 ms (five of nine within 150),
/// and it sustained 1,373-1,459 sagas/s against 1,202-1,226.
///
/// Why a gap, and when (see [`consume`]): deliveries come in bursts, one
/// per upstream relay batch, each within a millisecond or two, so once a
/// burst is in, the rest of the wait only delays it.
async fn gather(
    consumer: &mut Consumer,
    first: Delivery,
    max_batch: usize,
    wait: Duration,
    gap: Duration,
    shutdown: &CancellationToken,
) -> Vec<Delivery> {
    let mut batch = vec![first];
    while batch.len() < max_batch {
        match consumer.try_next() {
            Some(delivery) => batch.push(delivery),
            None => break,
        }
    }
    if wait.is_zero() {
        return batch;
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut last_arrival = tokio::time::Instant::now();
    while batch.len() < max_batch {
        let until = if gap.is_zero() {
            deadline
        } else {
            deadline.min(last_arrival + gap)
        };
        tokio::select! {
            // Shutdown handles what is fetched; no reason to wait for more.
            () = shutdown.cancelled() => break,
            next = tokio::time::timeout_at(until, consumer.next()) => match next {
                Ok(Some(delivery)) => {
                    batch.push(delivery);
                    last_arrival = tokio::time::Instant::now();
                }
                // The wait is over, or the consumer closed.
                Ok(None) | Err(_) => break,
            },
        }
    }
    batch
}

/// Takes deliveries and processes up to `worker.concurrency` batches at
/// once. A slot takes the next delivery and whatever else is already
/// fetched (up to `worker.max_batch`): on an idle replica that is one
/// delivery, handled as soon as it arrives; when every slot is busy,
/// deliveries wait in the prefetch buffer and the next free slot takes them
/// together, one commit for all. Between the two, when another batch is
/// in flight or started less than [`IDLE_AFTER`] ago, a free slot waits up
/// to `worker.batch_wait_ms` for more (see [`gather`]).
///
/// When no other batch is in flight, that wait also ends once no delivery
/// has come for `worker.batch_gap_ms` (4 ms): the burst is in. A 4 ms gap
/// keeps bursts together where 2 ms split them (more commits, a worse
/// tail). Applied to every batch, it took 5-15 ms off a RabbitMQ saga's
/// p50 at 650/s, one replica per worker, and its p99 from 90-253 to
/// 82-120 ms (18 alternating pairs, 2026-12-08). But with half a core taken
/// by another process three runs of eight went over 500 ms, against none
/// of eight without the gap: a loaded replica then made more, smaller
/// commits, and fell behind. With a batch in flight the replica is loaded,
/// so then it waits the whole wait and merges bursts, as before the gap.
/// Under that load the gap no longer hurt: p99 median 138 ms against 158,
/// nine pairs (docs/benchmarks.md).
///
/// On shutdown: stop fetching, process what was already fetched, wait for
/// in-flight work (up to `worker.shutdown_timeout_ms`), then close. Anything
/// unfinished by then was never acknowledged, so the broker delivers it again.
async fn consume<H: Handler>(
    processor: Arc<Processor<H>>,
    mut consumer: Consumer,
    settings: &Settings,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(settings.worker.concurrency));
    let max_batch = settings.worker.max_batch;
    let batch_wait = settings.worker.batch_wait();
    let batch_gap = settings.worker.batch_gap();
    // When this replica last started a batch.
    let mut last_batch: Option<tokio::time::Instant> = None;
    let mut in_flight = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = consumer.next() => match next {
                Some(delivery) => delivery,
                None => break,
            },
        };
        while in_flight.try_join_next().is_some() {}
        // Busy: a batch is in flight, or one started within IDLE_AFTER.
        // Deliveries come in bursts (each upstream relay publishes
        // batches), so between bursts the last batch has often ended.
        let busy = !in_flight.is_empty()
            || last_batch.is_some_and(|started| started.elapsed() < IDLE_AFTER);
        let wait = if busy { batch_wait } else { Duration::ZERO };
        // With a batch still in flight the replica is loaded: merging the
        // next bursts into one commit is what keeps it from falling
        // behind. Once its batches are done, a burst goes as soon as it is in.
        let gap = if in_flight.is_empty() {
            batch_gap
        } else {
            Duration::ZERO
        };
        let batch = gather(&mut consumer, first, max_batch, wait, gap, &shutdown).await;
        last_batch = Some(tokio::time::Instant::now());
        let processor = processor.clone();
        in_flight.spawn(async move {
            processor.process_batch(batch).await;
            drop(permit);
        });
        while in_flight.try_join_next().is_some() {}
    }

    consumer.stop();
    let deadline = tokio::time::Instant::now() + settings.worker.shutdown_timeout();
    // Already fetched: handle rather than strand them.
    while let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, consumer.next()).await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let processor = processor.clone();
        in_flight.spawn(async move {
            processor.process(delivery).await;
            drop(permit);
        });
    }
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, in_flight.join_next()).await {}
    if !in_flight.is_empty() {
        warn!(
            abandoned = in_flight.len(),
            "shutdown timeout reached; unfinished deliveries will be redelivered"
        );
        in_flight.abort_all();
    }
    consumer.shutdown().await;
}

/// The whole life of a worker binary: settings, telemetry, start, wait for
/// SIGTERM or SIGINT, drain, exit. Exit code 0 after a clean drain, 1 on a
/// runtime failure, 2 on bad configuration.
pub async fn main<H: Handler>() -> std::process::ExitCode {
    let stop_requested = crate::shutdown::listen();
    let worker = H::WORKER.name();
    let settings = match fleet_config::load(worker, &fleet_config::Environment::from_process()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{worker}: invalid configuration: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    crate::telemetry::init(&settings.telemetry);
    let replica = replica_id(worker);
    let running = match start::<H>(settings, replica).await {
        Ok(running) => running,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "worker failed to start");
            return std::process::ExitCode::from(1);
        }
    };
    let shutdown = running.shutdown_token();
    tokio::select! {
        () = stop_requested.cancelled() => info!(worker, "shutdown signal received; draining"),
        () = shutdown.cancelled() => {}
    }
    match running.stop().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "worker failed");
            std::process::ExitCode::from(1)
        }
    }
}

//! Relay throughput and commit-to-published latency, beside a plain confirmed
//! publish of the same events through the same broker, in one run. The
//! latency is measured for each way a relay learns of rows: a `NOTIFY` from
//! another process's writer, its own replica's in-process wake-up, and the
//! handoff.
//!
//! ```text
//! cargo bench -p fleet-outbox --bench relay              # RabbitMQ
//! BENCH_TRANSPORT=redis cargo bench -p fleet-outbox --bench relay
//! ```
//!
//! Uses `DATABASE_URL` (a database it may create others from), `AMQP_URL`,
//! `REDIS_URL` (local defaults), a fresh database and namespace, and removes
//! both at the end.

// Printing the figures is this binary's job.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use fleet_broker::{Broker, OutgoingMessage, WorkerTopology};
use fleet_config::Environment;
use fleet_messages::{Envelope, EventData, StockReleased};
use fleet_outbox::{Relay, RelayOptions, Schema};
use futures_util::StreamExt;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BACKLOG: usize = 20_000;
const ROUNDS: usize = 5;
const OFFERED_RATE: u64 = 1_000;
const OFFERED_SECONDS: u64 = 10;

fn events(count: usize) -> Vec<Envelope> {
    (0..count)
        .map(|_| {
            let order_id = Uuid::now_v7();
            Envelope::new(
                "bench",
                EventData::from(StockReleased { order_id }),
                order_id,
                None,
            )
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let transport = std::env::var("BENCH_TRANSPORT").unwrap_or_else(|_| "rabbitmq".to_owned());
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let database = format!("fleet_bench_{stamp}");
    let namespace = format!("bench{stamp}");
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .context("DATABASE_URL")?;
    admin
        .execute(AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .await?;
    let mut database_url = url::Url::parse(&admin_url)?;
    database_url.set_path(&database);

    let mut env = Environment::default()
        .with("DATABASE_URL", database_url.as_str())
        .with("FLEET__TRANSPORT", transport.as_str())
        .with("FLEET__NAMESPACE", namespace.as_str())
        .with("FLEET__WORKER__PREFETCH", "1000")
        .with("FLEET__WORKER__CONCURRENCY", "1");
    for key in ["AMQP_URL", "REDIS_URL"] {
        if let Ok(value) = std::env::var(key) {
            env = env.with(key, value);
        }
    }
    let settings = fleet_config::load("relay-bench", &env)?;
    let result = run(&settings).await;

    admin
        .execute(AssertSqlSafe(format!(
            "DROP DATABASE {database} WITH (FORCE)"
        )))
        .await?;
    result
}

async fn run(settings: &fleet_config::Settings) -> anyhow::Result<()> {
    let schema = Schema::new("bench")?;
    let pool = fleet_outbox::connect(&settings.database, &schema).await?;
    fleet_outbox::migrate(&pool, &schema, &[]).await?;
    let broker = Broker::connect(settings, "bench").await?;
    broker.declare_events().await?;
    // A bound queue, so publishes are routable (and then discarded).
    let sink = WorkerTopology {
        worker: "sink".to_owned(),
        event_types: vec!["stock.released".to_owned()],
        retry_delays: vec![Duration::from_secs(1)],
        delivery_limit: 5,
        expires_after: None,
    };
    broker.declare_worker(&sink).await?;
    let options = RelayOptions::from(&settings.outbox);
    println!(
        "outbox relay bench: {} via {}, batch {}, poll {} ms",
        settings.transport,
        settings.namespace,
        options.batch_size,
        options.poll_interval.as_millis()
    );

    // 1. Plain confirmed publish of the same kind of events, no database:
    // one publisher with a window of one batch (the raw baseline of the
    // broker bench), and two batches in flight. After a warm-up.
    let plain: Vec<OutgoingMessage> = events(BACKLOG)
        .iter()
        .map(OutgoingMessage::from_envelope)
        .collect();
    publish_plain(&broker, &plain[..2_000], options.batch_size, 2).await?;

    // 2. One relay draining a committed backlog, in rounds interleaved with
    // the plain publishes: one round lasts about a second, and the broker's
    // pace drifts by up to 2x between seconds on this shared machine, so each
    // relay round is compared with the plain rounds right before it, and the
    // figures are medians over ROUNDS.
    let relay = Relay::new(
        pool.clone(),
        broker.clone(),
        schema.clone(),
        options.clone(),
    );
    let mut plain_rates = Vec::new();
    let mut two_in_flight_rates = Vec::new();
    let mut relay_rates = Vec::new();
    let mut ratios = Vec::new();
    let mut two_in_flight_ratios = Vec::new();
    for _ in 0..ROUNDS {
        for chunk in events(BACKLOG).chunks(1000) {
            let mut transaction = pool.begin().await?;
            fleet_outbox::enqueue(&mut transaction, chunk).await?;
            transaction.commit().await?;
        }
        empty(&broker, &sink).await?;
        let started = Instant::now();
        publish_plain(&broker, &plain, options.batch_size, 1).await?;
        let one_in_flight = BACKLOG as f64 / started.elapsed().as_secs_f64();
        empty(&broker, &sink).await?;
        let started = Instant::now();
        publish_plain(&broker, &plain, options.batch_size, 2).await?;
        let two_in_flight = BACKLOG as f64 / started.elapsed().as_secs_f64();
        empty(&broker, &sink).await?;
        let started = Instant::now();
        let mut published = 0;
        while published < BACKLOG {
            published += relay.drain().await.context("relay drain")?;
        }
        let relayed = BACKLOG as f64 / started.elapsed().as_secs_f64();
        plain_rates.push(one_in_flight);
        two_in_flight_rates.push(two_in_flight);
        relay_rates.push(relayed);
        ratios.push(relayed / one_in_flight);
        two_in_flight_ratios.push(relayed / two_in_flight);
    }
    let plain_rate = median(&mut plain_rates);
    let two_in_flight_rate = median(&mut two_in_flight_rates);
    let relay_rate = median(&mut relay_rates);
    let ratio = median(&mut ratios);
    let two_in_flight_ratio = median(&mut two_in_flight_ratios);

    // 3. Latency under an offered load: one event per transaction, paced,
    // written the three ways a relay learns of rows.
    let mut latencies = Vec::new();
    for path in [WritePath::Notify, WritePath::Wakeup, WritePath::Handoff] {
        latencies.push((
            path,
            offered_latency(&pool, &broker, &schema, &options, &sink, path).await?,
        ));
    }

    // 4. Idle: statements the relay runs per poll interval with nothing to do.
    // Leave autovacuum nothing to do in the window (its transactions count
    // too), then wait out Postgres 15's statistics flush (up to 10 s after a
    // backend goes idle), or the writers' commits land in the window.
    sqlx::query("VACUUM ANALYZE outbox, outbox_relay, inbox")
        .execute(&pool)
        .await?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(
        Relay::new(
            pool.clone(),
            broker.clone(),
            schema.clone(),
            options.clone(),
        )
        .run(shutdown.clone()),
    );
    tokio::time::sleep(Duration::from_secs(12)).await;
    // Long enough that the ±1 of statistics flushed on either side of the
    // window does not blur the per-poll figure.
    let idle = Duration::from_secs(30);
    let before = relay_statements(&pool).await?;
    tokio::time::sleep(idle).await;
    // Minus the two statements of the first reading itself.
    let after = relay_statements(&pool).await? - 2;
    shutdown.cancel();
    running.await?;
    // A window of W seconds holds up to W / poll + 1 poll instants (both
    // ends may catch one).
    let polls = (idle.as_secs_f64() / options.poll_interval.as_secs_f64()).floor() + 1.0;

    println!();
    println!(
        "{:<58} {:>12}",
        format!("measurement (rates: medians of {ROUNDS} rounds)"),
        "figure"
    );
    println!("{}", "-".repeat(71));
    println!(
        "{:<58} {:>8.0} msg/s",
        "plain confirmed publish, one batch in flight (no DB)", plain_rate
    );
    println!(
        "{:<58} {:>8.0} msg/s",
        "plain confirmed publish, two batches in flight (no DB)", two_in_flight_rate
    );
    println!(
        "{:<58} {:>8.0} msg/s",
        "one relay draining a 20,000-row backlog", relay_rate
    );
    println!(
        "{:<58} {:>7.0}% of one in flight (target >= 80%), {:.0}% of two",
        "  relay / plain, round by round (median)",
        100.0 * ratio,
        100.0 * two_in_flight_ratio
    );
    for (path, latency) in &latencies {
        let (p50, p99, max) = latency.from_commit;
        println!(
            "{:<58} p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms{}",
            format!(
                "commit-to-published, {} ({OFFERED_RATE}/s, {OFFERED_SECONDS} s)",
                path.name()
            ),
            if *path == WritePath::Notify {
                "  (targets 5 / 25 ms)"
            } else {
                ""
            },
        );
        let (p50, p99, max) = latency.from_insert;
        println!(
            "{:<58} p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
            "  (from the INSERT inside the writer's transaction)",
        );
    }
    println!(
        "{:<58} {:>8.2} per poll ({} in {} s, which hold up to {polls:.0} polls; target <= 1)",
        "idle relay transactions",
        (after - before) as f64 / polls,
        after - before,
        idle.as_secs()
    );
    broker.delete_worker(&sink).await.ok();
    Ok(())
}

/// How the offered events reach the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WritePath {
    /// `enqueue` in another process's transaction: a `NOTIFY` wakes a
    /// sleeping relay, which claims.
    Notify,
    /// The replica's own writer with the handoff off: its relay is woken in
    /// process, then claims.
    Wakeup,
    /// The replica's own writer: rows handed over after the commit, no claim.
    Handoff,
}

impl WritePath {
    fn name(self) -> &'static str {
        match self {
            WritePath::Notify => "NOTIFY + claim",
            WritePath::Wakeup => "wake-up + claim",
            WritePath::Handoff => "handoff",
        }
    }
}

/// Percentiles (p50, p99, max) of commit-to-published, and of
/// insert-to-published, in milliseconds.
struct Latency {
    from_commit: (f64, f64, f64),
    from_insert: (f64, f64, f64),
}

/// Offers OFFERED_RATE one-event transactions a second for OFFERED_SECONDS
/// through `path` to a relay of its own, and measures how long each took
/// from its commit (and from its insert) to being marked published.
async fn offered_latency(
    pool: &sqlx::PgPool,
    broker: &Broker,
    schema: &Schema,
    options: &RelayOptions,
    sink: &WorkerTopology,
    path: WritePath,
) -> anyhow::Result<Latency> {
    // Start from a vacuumed table, as retention and autovacuum keep it:
    // 100,000 dead rows would otherwise slow every claim for a while.
    sqlx::query("DELETE FROM outbox").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    empty(broker, sink).await?;
    let mut options = options.clone();
    if path == WritePath::Wakeup {
        options.handoff_lease = Duration::ZERO;
    }
    let relay = Relay::new(pool.clone(), broker.clone(), schema.clone(), options);
    let writer = relay.writer();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = OFFERED_RATE * OFFERED_SECONDS;
    let interval = Duration::from_secs(1) / u32::try_from(OFFERED_RATE)?;
    let start = tokio::time::Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    // When each writer's commit returned, by event id: the start of
    // commit-to-published (the clock is the host's, as Postgres' is).
    let mut committed: HashMap<Uuid, SystemTime> = HashMap::new();
    for n in 0..total {
        tokio::time::sleep_until(start + interval * u32::try_from(n)?).await;
        let pool = pool.clone();
        let writer = writer.clone();
        writers.spawn(async move {
            let event = events(1);
            let mut transaction = pool.begin().await?;
            if path == WritePath::Notify {
                fleet_outbox::enqueue(&mut transaction, &event).await?;
                transaction.commit().await?;
            } else {
                let outgoing = writer.enqueue(&mut transaction, &event).await?;
                transaction.commit().await?;
                outgoing.committed();
            }
            anyhow::Ok((event[0].id, SystemTime::now()))
        });
        while let Some(written) = writers.try_join_next() {
            let (id, at) = written??;
            committed.insert(id, at);
        }
    }
    while let Some(written) = writers.join_next().await {
        let (id, at) = written??;
        committed.insert(id, at);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(pool)
                .await?;
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await?;
    let published: Vec<(
        Uuid,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as(
        "SELECT event_id, created_at, published_at FROM outbox WHERE published_at IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(
        published.len() == committed.len(),
        "{}: {} of {} offered events published",
        path.name(),
        published.len(),
        committed.len()
    );
    let mut from_commit = Vec::with_capacity(published.len());
    let mut from_insert = Vec::with_capacity(published.len());
    for (id, created_at, published_at) in &published {
        let commit: chrono::DateTime<chrono::Utc> = committed[id].into();
        from_commit.push((*published_at - commit).as_seconds_f64() * 1000.0);
        from_insert.push((*published_at - *created_at).as_seconds_f64() * 1000.0);
    }
    Ok(Latency {
        from_commit: percentiles(&mut from_commit),
        from_insert: percentiles(&mut from_insert),
    })
}

/// Empties the sink queue (by deleting and declaring it again): a queue
/// holding hundreds of thousands of messages slows the broker's confirms,
/// and the later phases would pay for the earlier ones.
async fn empty(broker: &Broker, sink: &WorkerTopology) -> anyhow::Result<()> {
    broker.delete_worker(sink).await?;
    broker.declare_worker(sink).await?;
    Ok(())
}

/// Publishes `messages` in batches, `in_flight` batches at a time, and
/// requires every one confirmed.
async fn publish_plain(
    broker: &Broker,
    messages: &[OutgoingMessage],
    batch_size: u32,
    in_flight: usize,
) -> anyhow::Result<()> {
    let mut batches = futures_util::stream::iter(messages.chunks(batch_size as usize))
        .map(|chunk| broker.publish_batch(chunk))
        .buffer_unordered(in_flight);
    while let Some(outcomes) = batches.next().await {
        anyhow::ensure!(
            outcomes?.iter().all(|outcome| outcome.is_confirmed()),
            "unconfirmed publish"
        );
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// p50, p99 and max of `values` (milliseconds).
fn percentiles(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |quantile: f64| {
        let rank = (quantile * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    };
    (at(0.5), at(0.99), at(1.0))
}

/// Transactions committed in the bench database so far.
async fn relay_statements(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    // pg_stat_activity has no counter; xact_commit of the database counts
    // every session, and this bench's only other session is this query.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await?;
    let commits: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?;
    Ok(commits)
}

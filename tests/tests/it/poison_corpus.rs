//! The poison corpus (`tests/poison/`, described by its `corpus.json`)
//! thrown at a running fleet between ordinary orders, on both transports.
//! Each fixture must end where the contract says (a given worker's
//! dead-letter queue with a given kind, a business rejection, a duplicate
//! absorbed, or a normal saga), within its attempts, while the orders
//! around it flow and no replica goes down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use fleet_broker::OutgoingMessage;
use fleet_config::Settings;
use fleet_messages::{Envelope, EventData};
use fleet_workers::inventory::InventoryWorker;
use fleet_workers::notification::NotificationWorker;
use fleet_workers::order::OrderWorker;
use fleet_workers::payment::PaymentWorker;
use fleet_workers::{Handler, HandlerError};
use serde::Deserialize;
use sqlx::PgConnection;
use sqlx::migrate::Migration;
use uuid::Uuid;

use crate::fleet::{Fleet, Outcome, orders};

on_both_transports!(
    worker_threads = 4;
    every_fixture_ends_where_the_contract_says,
);

/// One entry of `tests/poison/corpus.json`.
#[derive(Debug, Deserialize)]
struct Fixture {
    file: String,
    /// The routing key (RabbitMQ) or stream type (Redis) it is published under.
    publish_as: String,
    expect: Expectation,
    /// What the fixture is and why it ends where it does.
    why: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Expectation {
    /// Dead-lettered by each of `workers` with `kind`; after one attempt,
    /// or after `retry.max_attempts` when `attempts` is `"max"`.
    DeadLetter {
        kind: String,
        workers: Vec<String>,
        #[serde(default)]
        attempts: Option<String>,
    },
    /// The order of the fixture ends with this status (and reason).
    Order {
        status: String,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Reuses the event id of `fixture`: absorbed, so `order_id` never exists.
    DuplicateOf { fixture: String, order_id: Uuid },
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("poison")
}

fn load_corpus() -> Vec<(Fixture, Vec<u8>)> {
    let manifest = std::fs::read(corpus_dir().join("corpus.json")).unwrap();
    let fixtures: Vec<Fixture> = serde_json::from_slice(&manifest).unwrap();
    fixtures
        .into_iter()
        .map(|fixture| {
            let body = std::fs::read(corpus_dir().join(&fixture.file))
                .unwrap_or_else(|error| panic!("{}: {error}", fixture.file));
            (fixture, body)
        })
        .collect()
}

/// The corpus is what the issue asks for: at least 20 fixtures, every file
/// in the folder described, every kind of outcome present.
#[test]
fn the_corpus_is_complete_and_described() {
    let corpus = load_corpus();
    assert!(corpus.len() >= 20, "{} fixtures", corpus.len());
    let described: Vec<&str> = corpus.iter().map(|(f, _)| f.file.as_str()).collect();
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            name == "corpus.json" || described.contains(&name.as_str()),
            "{name} is in tests/poison/ but not in corpus.json"
        );
    }
    let kinds: Vec<&str> = corpus
        .iter()
        .filter_map(|(f, _)| match &f.expect {
            Expectation::DeadLetter { kind, .. } => Some(kind.as_str()),
            _ => None,
        })
        .collect();
    for kind in fleet_messages::DecodeError::KINDS
        .into_iter()
        .chain(["panic"])
    {
        assert!(kinds.contains(&kind), "no fixture dead-letters as {kind}");
    }
}

/// order-worker, except that it panics on any order of customer `tripwire`:
/// the corpus's stand-in for a handler bug that one input triggers.
struct Tripwire(OrderWorker);

impl Handler for Tripwire {
    const WORKER: fleet_messages::Worker = OrderWorker::WORKER;

    fn from_settings(settings: &Settings) -> Self {
        Tripwire(OrderWorker::from_settings(settings))
    }

    fn migrations() -> Vec<Migration> {
        OrderWorker::migrations()
    }

    async fn prepare(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        self.0.prepare(pool).await
    }

    async fn handle_batch(
        &self,
        transaction: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<Vec<Vec<Envelope>>, HandlerError> {
        for event in events {
            if let EventData::OrderSubmitted(order) = &event.data {
                assert_ne!(
                    order.customer_id, "tripwire",
                    "tripwire order {}",
                    order.order_id
                );
            }
        }
        self.0.handle_batch(transaction, events).await
    }
}

const MAX_ATTEMPTS: u32 = 3;

async fn every_fixture_ends_where_the_contract_says(transport: &'static str) {
    let corpus = load_corpus();
    let mut fleet = Fleet::with_settings(
        transport,
        &[
            ("FLEET__LIMITS__MAX_EVENT_BYTES", "4096"),
            ("FLEET__RETRY__MAX_ATTEMPTS", "3"),
        ],
    )
    .await;
    fleet.add::<Tripwire>(2).await;
    fleet.add::<InventoryWorker>(2).await;
    fleet.add::<PaymentWorker>(2).await;
    fleet.add::<NotificationWorker>(2).await;

    let (envelopes, mut expected) = orders(100);
    let (before, after) = envelopes.split_at(50);
    fleet.submit(before).await;

    // Every fixture but the reused id, which must come after its original
    // has been handled (otherwise either could be the one absorbed).
    let publish = |fixtures: Vec<&(Fixture, Vec<u8>)>| {
        fixtures
            .into_iter()
            .map(|(fixture, body)| OutgoingMessage {
                id: Uuid::now_v7().to_string(),
                event_type: fixture.publish_as.clone(),
                body: body.clone(),
                timestamp: 0,
            })
            .collect::<Vec<_>>()
    };
    let (reused, first): (Vec<_>, Vec<_>) = corpus
        .iter()
        .partition(|(fixture, _)| matches!(fixture.expect, Expectation::DuplicateOf { .. }));
    let outcomes = fleet.broker.publish_batch(&publish(first)).await.unwrap();
    assert!(outcomes.iter().all(|o| o.is_confirmed()), "{outcomes:?}");
    fleet.submit(after).await;

    for (fixture, body) in &corpus {
        if let Expectation::Order { status, reason } = &fixture.expect {
            let order_id = order_id_of(body);
            expected.outcomes.insert(
                order_id,
                Outcome(status.clone(), reason.clone().unwrap_or_default()),
            );
        }
    }
    fleet
        .wait_until_settled(&expected, Duration::from_secs(90))
        .await;
    let outcomes = fleet.broker.publish_batch(&publish(reused)).await.unwrap();
    assert!(outcomes.iter().all(|o| o.is_confirmed()), "{outcomes:?}");

    // Wait for every dead letter the corpus predicts (the panicking one
    // takes its retries first), then look for anything more.
    let mut wanted: HashMap<&str, u64> = HashMap::new();
    for (fixture, _) in &corpus {
        if let Expectation::DeadLetter { workers, .. } = &fixture.expect {
            for worker in workers {
                *wanted.entry(worker.as_str()).or_default() += 1;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let depths = fleet.dead_letters().await;
        let arrived = wanted
            .iter()
            .all(|(worker, count)| depths.get(worker).copied().unwrap_or(0) >= *count);
        if arrived {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters {depths:?}, expected {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The reused id and any stray dead letter get a moment to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let depths = fleet.dead_letters().await;
    for (worker, depth) in &depths {
        assert_eq!(
            *depth,
            wanted.get(worker).copied().unwrap_or(0),
            "{worker}'s dead letters: {depths:?}"
        );
    }
    let mut letters = HashMap::new();
    for worker in wanted.keys() {
        letters.insert(
            *worker,
            fleet.broker.peek_dead_letters(worker, 100).await.unwrap(),
        );
    }
    for (fixture, body) in &corpus {
        match &fixture.expect {
            Expectation::DeadLetter {
                kind,
                workers,
                attempts,
            } => {
                let attempts = match attempts.as_deref() {
                    Some("max") => MAX_ATTEMPTS,
                    _ => 1,
                };
                for worker in workers {
                    let letter = letters[worker.as_str()]
                        .iter()
                        .find(|letter| &letter.body == body)
                        .unwrap_or_else(|| {
                            panic!(
                                "{} ({}): not in {worker}'s dead letters",
                                fixture.file, fixture.why
                            )
                        });
                    let context = format!("{} ({}): {}", fixture.file, fixture.why, letter.error);
                    assert_eq!(&letter.error_kind, kind, "{context}");
                    assert_eq!(letter.attempts, attempts, "{context}");
                    assert!(!letter.error.is_empty(), "{context}");
                    assert_eq!(letter.worker, *worker, "{context}");
                }
            }
            Expectation::DuplicateOf {
                fixture: original,
                order_id,
            } => {
                let (_, original_body) = corpus
                    .iter()
                    .find(|(other, _)| &other.file == original)
                    .unwrap_or_else(|| panic!("{}: no fixture {original}", fixture.file));
                assert_eq!(
                    serde_json::from_slice::<serde_json::Value>(original_body).unwrap()["id"],
                    serde_json::from_slice::<serde_json::Value>(body).unwrap()["id"],
                    "{} reuses the id of {original}",
                    fixture.file
                );
                let rows: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM order_worker.orders WHERE order_id = $1",
                )
                .bind(order_id)
                .fetch_one(&fleet.ctx.db)
                .await
                .unwrap();
                assert_eq!(rows, 0, "{}: the reused id started a saga", fixture.file);
            }
            Expectation::Order { .. } => {}
        }
    }
    // Outcomes, notifications, stock and credit of all the rest.
    fleet.assert_contract_holds(&expected).await;

    // Nobody crash-looped: every replica still answers and is ready.
    for replica in fleet.replicas() {
        let (status, body) = crate::fleet::http_get(replica, "/readyz").await;
        assert_eq!(status, 200, "{body}");
    }
    fleet.stop().await;
}

fn order_id_of(body: &[u8]) -> Uuid {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    value["data"]["order_id"].as_str().unwrap().parse().unwrap()
}

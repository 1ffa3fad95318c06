//! Broker names are part of the contract ("Transports"): these tests spell
//! each one out literally, so that a change shows up as a failing test rather
//! than as workers that silently stop seeing each other's events.

// Test helpers outside `#[test]` functions panic on purpose: a failure here
// is a failed test, and clippy's in-test exemption does not reach them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

use std::time::Duration;

use fleet_messages::{
    EventType, InvalidNamespace, Namespace, Worker, consumer_group, dead_letter_queue,
    dead_letter_stream, event_stream, exchange, retry_exchange, retry_queue, retry_schedule,
    retry_stream, routing_key, worker_queue,
};

fn ns(s: &str) -> Namespace {
    Namespace::new(s).unwrap()
}

#[test]
fn default_namespace_is_fleet() {
    assert_eq!(Namespace::default().as_str(), "fleet");
    assert_eq!(Namespace::default(), ns("fleet"));
    assert_eq!(Namespace::default().to_string(), "fleet");
}

#[test]
fn valid_namespaces() {
    for s in [
        "fleet",
        "t123",
        "0",
        "a",
        "ci-run_42",
        "9lives",
        &"a".repeat(48),
    ] {
        let namespace = Namespace::new(s).unwrap();
        assert_eq!(namespace.as_str(), s);
        assert_eq!(s.parse::<Namespace>().unwrap(), namespace);
    }
}

#[test]
fn invalid_namespaces_name_the_value_and_the_rule() {
    let cases = [
        ("", "must not be empty"),
        (&*"a".repeat(49), "at most 48 characters"),
        ("-fleet", "must start with"),
        ("_fleet", "must start with"),
        ("Fleet", "must start with"),
        ("fleetA", "may contain only"),
        ("fleet.prod", "may contain only"),
        ("fleet:prod", "may contain only"),
        ("fleet prod", "may contain only"),
        ("flëet", "may contain only"),
        ("fleet/", "may contain only"),
    ];
    for (value, rule) in cases {
        let err: InvalidNamespace = Namespace::new(value).unwrap_err();
        assert_eq!(err.value, value);
        assert!(err.rule.contains(rule), "{value:?}: {}", err.rule);
        let message = err.to_string();
        assert!(message.contains(&format!("{value:?}")), "{message}");
        assert!(message.contains(rule), "{message}");
    }
}

#[test]
fn rabbitmq_names() {
    let ns = ns("fleet");
    assert_eq!(exchange(&ns), "fleet.events");
    assert_eq!(routing_key(EventType::OrderPlaced), "order.placed");
    assert_eq!(
        worker_queue(&ns, "inventory-worker"),
        "fleet.inventory-worker"
    );
    assert_eq!(
        dead_letter_queue(&ns, "inventory-worker"),
        "fleet.inventory-worker.dlq"
    );
    assert_eq!(
        retry_exchange(&ns, "inventory-worker"),
        "fleet.inventory-worker.retry"
    );
    assert_eq!(
        retry_queue(&ns, "inventory-worker", Duration::from_millis(1500)),
        "fleet.inventory-worker.retry.1500ms"
    );
    assert_eq!(
        retry_queue(&ns, "inventory-worker", Duration::from_secs(30)),
        "fleet.inventory-worker.retry.30000ms"
    );
}

#[test]
fn redis_names() {
    let ns = ns("fleet");
    assert_eq!(
        event_stream(&ns, "order.placed"),
        "fleet:events:order.placed"
    );
    assert_eq!(
        dead_letter_stream(&ns, "payment-worker"),
        "fleet:dlq:payment-worker"
    );
    assert_eq!(
        retry_stream(&ns, "payment-worker"),
        "fleet:retry:payment-worker"
    );
    assert_eq!(
        retry_schedule(&ns, "payment-worker"),
        "fleet:retry:payment-worker:scheduled"
    );
    assert_eq!(consumer_group("payment-worker"), "payment-worker");
}

#[test]
fn every_name_is_prefixed_by_the_namespace() {
    let ns = ns("t123");
    let worker = "test-worker";
    assert_eq!(exchange(&ns), "t123.events");
    assert_eq!(worker_queue(&ns, worker), "t123.test-worker");
    assert_eq!(dead_letter_queue(&ns, worker), "t123.test-worker.dlq");
    assert_eq!(retry_exchange(&ns, worker), "t123.test-worker.retry");
    assert_eq!(
        retry_queue(&ns, worker, Duration::from_millis(100)),
        "t123.test-worker.retry.100ms"
    );
    assert_eq!(
        event_stream(&ns, "stock.released"),
        "t123:events:stock.released"
    );
    assert_eq!(dead_letter_stream(&ns, worker), "t123:dlq:test-worker");
    assert_eq!(retry_stream(&ns, worker), "t123:retry:test-worker");
    assert_eq!(
        retry_schedule(&ns, worker),
        "t123:retry:test-worker:scheduled"
    );
}

#[test]
fn routing_keys_are_the_event_types() {
    for t in EventType::ALL {
        assert_eq!(routing_key(t), t.as_str());
    }
}

#[test]
fn worker_names() {
    let names: Vec<&str> = Worker::ALL.iter().map(|w| w.name()).collect();
    assert_eq!(
        names,
        [
            "order-worker",
            "inventory-worker",
            "payment-worker",
            "notification-worker"
        ]
    );
    for worker in Worker::ALL {
        assert_eq!(worker.to_string(), worker.name());
        assert_eq!(worker.name().parse::<Worker>(), Ok(worker));
    }
}

#[test]
fn unknown_worker_names_the_value_and_the_valid_names() {
    let err = "inventory".parse::<Worker>().unwrap_err();
    let message = err.to_string();
    assert!(message.contains("\"inventory\""), "{message}");
    for worker in Worker::ALL {
        assert!(message.contains(worker.name()), "{message}");
    }
}

#[test]
fn bindings_follow_the_contract() {
    use EventType::*;
    assert_eq!(
        Worker::Order.consumes(),
        [
            OrderSubmitted,
            StockRejected,
            PaymentCaptured,
            PaymentDeclined
        ]
    );
    assert_eq!(Worker::Inventory.consumes(), [OrderPlaced, PaymentDeclined]);
    assert_eq!(Worker::Payment.consumes(), [StockReserved]);
    assert_eq!(
        Worker::Notification.consumes(),
        [OrderConfirmed, OrderCancelled]
    );
}

#[test]
fn only_terminal_facts_are_consumed_by_no_worker() {
    let unconsumed: Vec<EventType> = EventType::ALL
        .into_iter()
        .filter(|t| Worker::ALL.iter().all(|w| !w.consumes().contains(t)))
        .collect();
    assert_eq!(
        unconsumed,
        [
            EventType::OrderRejected,
            EventType::StockReleased,
            EventType::NotificationSent
        ]
    );
}

//! Loading the real configuration files with explicit environments.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fleet_config::{ConfigError, Environment, Transport, load};

#[test]
fn defaults_load_for_every_worker() {
    for worker in [
        "order-worker",
        "inventory-worker",
        "payment-worker",
        "notification-worker",
    ] {
        let settings = load(worker, &Environment::default()).expect(worker);
        assert_eq!(settings.namespace, "fleet");
        assert_eq!(settings.transport, Transport::Rabbitmq);
        assert_eq!(settings.limits.max_event_bytes, 256 * 1024);
    }
}

#[test]
fn inventory_seed_comes_from_the_worker_file() {
    let settings = load("inventory-worker", &Environment::default()).unwrap();
    assert_eq!(settings.inventory.seed.get("SKU-SCARCE"), Some(&10));
    let other = load("order-worker", &Environment::default()).unwrap();
    assert!(other.inventory.seed.is_empty());
}

#[test]
fn fleet_variables_override_files() {
    let env = Environment::default()
        .with("FLEET__TRANSPORT", "redis")
        .with("FLEET__NAMESPACE", "t123")
        .with("FLEET__HTTP__PORT", "0")
        .with("FLEET__RETRY__MAX_ATTEMPTS", "3")
        .with("FLEET__RETRY__DELAYS_MS", "10,20,30")
        .with("FLEET__PAYMENT__CREDIT_LIMIT_CENTS", "500");
    let settings = load("payment-worker", &env).unwrap();
    assert_eq!(settings.transport, Transport::Redis);
    assert_eq!(settings.namespace, "t123");
    assert_eq!(settings.http.port, 0);
    assert_eq!(settings.retry.max_attempts, 3);
    assert_eq!(settings.retry.delays_ms, vec![10, 20, 30]);
    assert_eq!(settings.payment.credit_limit_cents, 500);
}

#[test]
fn conventional_urls_apply_below_fleet_variables() {
    let env = Environment::default()
        .with("DATABASE_URL", "postgres://app:pw@db:5432/app")
        .with("AMQP_URL", "amqp://rabbit:5672/%2f")
        .with("REDIS_URL", "redis://cache:6379");
    let settings = load("order-worker", &env).unwrap();
    assert_eq!(
        settings.database.url.expose(),
        "postgres://app:pw@db:5432/app"
    );
    assert_eq!(settings.amqp.url.expose(), "amqp://rabbit:5672/%2f");
    assert_eq!(settings.redis.url.expose(), "redis://cache:6379");

    let env = env.with("FLEET__DATABASE__URL", "postgres://other:5432/x");
    let settings = load("order-worker", &env).unwrap();
    assert_eq!(settings.database.url.expose(), "postgres://other:5432/x");
}

#[test]
fn debug_output_redacts_passwords() {
    let env = Environment::default().with("DATABASE_URL", "postgres://app:s3cret@db/app");
    let settings = load("order-worker", &env).unwrap();
    let debug = format!("{settings:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(debug.contains("app:***@db"), "{debug}");
}

fn error_of(env: Environment) -> String {
    let error: ConfigError = load("order-worker", &env).unwrap_err();
    error.to_string()
}

#[test]
fn an_unknown_key_names_the_key() {
    let message = error_of(Environment::default().with("FLEET__RETRY__MAX_ATTEMPS", "3"));
    assert!(message.contains("retry.max_attemps"), "{message}");
    assert!(message.contains("unknown"), "{message}");
    assert!(message.contains("FLEET__RETRY__MAX_ATTEMPS"), "{message}");
}

#[test]
fn a_malformed_value_names_the_key() {
    let message = error_of(Environment::default().with("FLEET__RETRY__MAX_ATTEMPTS", "many"));
    assert!(message.contains("retry.max_attempts"), "{message}");

    let message = error_of(Environment::default().with("FLEET__TRANSPORT", "kafka"));
    assert!(message.contains("transport"), "{message}");
    assert!(message.contains("kafka"), "{message}");
    assert!(message.contains("rabbitmq"), "{message}");

    let message = error_of(Environment::default().with("FLEET__RETRY__DELAYS_MS", "1,x"));
    assert!(message.contains("retry.delays_ms"), "{message}");
}

#[test]
fn out_of_range_values_name_the_key_and_value() {
    for (variable, value, key) in [
        ("FLEET__NAMESPACE", "Bad Namespace!", "namespace"),
        ("FLEET__RETRY__MAX_ATTEMPTS", "0", "retry.max_attempts"),
        ("FLEET__RETRY__DELAYS_MS", "100,0", "retry.delays_ms"),
        ("FLEET__WORKER__CONCURRENCY", "0", "worker.concurrency"),
        (
            "FLEET__WORKER__BATCH_WAIT_MS",
            "60000",
            "worker.batch_wait_ms",
        ),
        (
            "FLEET__WORKER__BATCH_GAP_MS",
            "60000",
            "worker.batch_gap_ms",
        ),
        ("FLEET__OUTBOX__BATCH_SIZE", "0", "outbox.batch_size"),
        (
            "FLEET__PAYMENT__CREDIT_LIMIT_CENTS",
            "-1",
            "payment.credit_limit_cents",
        ),
        (
            "FLEET__INBOX__DEDUP_RETENTION_HOURS",
            "0",
            "inbox.dedup_retention_hours",
        ),
        (
            "FLEET__OUTBOX__RETENTION_HOURS",
            "-0.5",
            "outbox.retention_hours",
        ),
        (
            "FLEET__OUTBOX__RETENTION_HOURS",
            "NaN",
            "outbox.retention_hours",
        ),
        ("AMQP_URL", "http://rabbit", "amqp.url"),
        // Not longer than the confirm timeout (10 s by default).
        (
            "FLEET__OUTBOX__HANDOFF_LEASE_MS",
            "5000",
            "outbox.handoff_lease_ms",
        ),
        (
            "FLEET__LIMITS__MAX_EVENT_BYTES",
            "10",
            "limits.max_event_bytes",
        ),
    ] {
        let message = error_of(Environment::default().with(variable, value));
        assert!(message.contains(key), "{variable}={value}: {message}");
    }
}

#[test]
fn a_config_dir_overlays_the_compiled_in_files() {
    let dir = std::env::temp_dir().join(format!("fleet-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("default.toml"), "namespace = \"overlay\"\n").unwrap();
    std::fs::write(
        dir.join("order-worker.toml"),
        "[order]\nmax_total_cents = 42\n",
    )
    .unwrap();
    let env = Environment::default().with("FLEET_CONFIG_DIR", dir.to_string_lossy());
    let settings = load("order-worker", &env).unwrap();
    assert_eq!(settings.namespace, "overlay");
    assert_eq!(settings.order.max_total_cents, 42);

    std::fs::write(dir.join("default.toml"), "namespace = [unclosed\n").unwrap();
    let message = load("order-worker", &env).unwrap_err().to_string();
    assert!(message.contains("default.toml"), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();

    let message = load("order-worker", &env).unwrap_err().to_string();
    assert!(message.contains("FLEET_CONFIG_DIR"), "{message}");
}

#[test]
fn retention_may_be_a_fraction_of_an_hour() {
    let settings = load(
        "order-worker",
        &Environment::default()
            .with("FLEET__OUTBOX__RETENTION_HOURS", "0.05")
            .with("FLEET__INBOX__DEDUP_RETENTION_HOURS", "0.1")
            .with("FLEET__RETRY__DELAYS_MS", "100,200"),
    )
    .unwrap();
    assert_eq!(
        settings.outbox.retention(),
        std::time::Duration::from_secs(180)
    );
    assert_eq!(
        settings.inbox.dedup_retention(),
        std::time::Duration::from_secs(360)
    );
}

#[test]
fn the_handoff_lease_may_be_turned_off() {
    let off = load(
        "order-worker",
        &Environment::default().with("FLEET__OUTBOX__HANDOFF_LEASE_MS", "0"),
    )
    .unwrap();
    assert_eq!(off.outbox.handoff_lease(), std::time::Duration::ZERO);
    let default = load("order-worker", &Environment::default()).unwrap();
    assert!(default.outbox.handoff_lease() > default.amqp.confirm_timeout());
}

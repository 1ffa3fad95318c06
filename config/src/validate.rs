//! Range checks that types alone cannot express. Each failure names the key
//! and the value, so start-up fails with something an operator can act on.

use std::time::Duration;

use crate::{ConfigError, Settings};

pub(crate) fn settings(settings: &Settings) -> Result<(), ConfigError> {
    if let Err(error) = fleet_messages::Namespace::new(&settings.namespace) {
        return invalid("namespace", &settings.namespace, error.to_string());
    }
    url(
        "database.url",
        &settings.database.url,
        &["postgres", "postgresql"],
    )?;
    url("amqp.url", &settings.amqp.url, &["amqp", "amqps"])?;
    url("redis.url", &settings.redis.url, &["redis", "rediss"])?;

    at_least(
        "database.max_connections",
        settings.database.max_connections.into(),
        1,
    )?;
    at_least(
        "database.acquire_timeout_ms",
        settings.database.acquire_timeout_ms,
        1,
    )?;
    at_least(
        "amqp.confirm_timeout_ms",
        settings.amqp.confirm_timeout_ms,
        1,
    )?;
    within("redis.block_ms", settings.redis.block_ms, 1, 60_000)?;
    at_least(
        "redis.visibility_timeout_ms",
        settings.redis.visibility_timeout_ms,
        1_000,
    )?;

    within(
        "worker.concurrency",
        settings.worker.concurrency as u64,
        1,
        1_024,
    )?;
    within(
        "worker.prefetch",
        settings.worker.prefetch.into(),
        1,
        10_000,
    )?;
    within(
        "worker.max_batch",
        settings.worker.max_batch as u64,
        1,
        1_000,
    )?;
    within(
        "worker.batch_wait_ms",
        settings.worker.batch_wait_ms,
        0,
        10_000,
    )?;
    within(
        "worker.batch_gap_ms",
        settings.worker.batch_gap_ms,
        0,
        10_000,
    )?;
    if usize::from(settings.worker.prefetch) < settings.worker.concurrency {
        return invalid(
            "worker.prefetch",
            settings.worker.prefetch,
            format!(
                "must be at least worker.concurrency ({}), or handlers sit idle",
                settings.worker.concurrency
            ),
        );
    }
    at_least(
        "worker.shutdown_timeout_ms",
        settings.worker.shutdown_timeout_ms,
        1,
    )?;
    at_least(
        "worker.max_relay_lag_ms",
        settings.worker.max_relay_lag_ms,
        1,
    )?;

    within(
        "retry.max_attempts",
        settings.retry.max_attempts.into(),
        1,
        100,
    )?;
    if settings.retry.delays_ms.is_empty() {
        return invalid("retry.delays_ms", "[]", "needs at least one delay tier");
    }
    if let Some(bad) = settings
        .retry
        .delays_ms
        .iter()
        .find(|delay| **delay == 0 || **delay > 86_400_000)
    {
        return invalid(
            "retry.delays_ms",
            format!("{:?}", settings.retry.delays_ms),
            format!("delay {bad} ms must be between 1 ms and 24 h"),
        );
    }

    within(
        "outbox.batch_size",
        settings.outbox.batch_size.into(),
        1,
        10_000,
    )?;
    within(
        "outbox.poll_interval_ms",
        settings.outbox.poll_interval_ms,
        10,
        600_000,
    )?;
    let lease = settings.outbox.handoff_lease_ms;
    if lease != 0 && lease <= settings.amqp.confirm_timeout_ms {
        return invalid(
            "outbox.handoff_lease_ms",
            lease,
            format!(
                "must be 0 (off) or longer than amqp.confirm_timeout_ms ({}): a row whose \
                 confirm is still awaited would be published again by another relay",
                settings.amqp.confirm_timeout_ms
            ),
        );
    }
    within("outbox.handoff_lease_ms", lease, 0, 3_600_000)?;
    within(
        "outbox.max_publish_attempts",
        settings.outbox.max_publish_attempts.into(),
        1,
        1_000,
    )?;
    positive_hours("outbox.retention_hours", settings.outbox.retention_hours)?;
    within(
        "outbox.cleanup_batch_size",
        settings.outbox.cleanup_batch_size.into(),
        1,
        100_000,
    )?;
    at_least(
        "outbox.cleanup_interval_ms",
        settings.outbox.cleanup_interval_ms,
        100,
    )?;

    positive_hours(
        "inbox.dedup_retention_hours",
        settings.inbox.dedup_retention_hours,
    )?;
    let horizon = settings.retry.horizon();
    if settings.inbox.dedup_retention() <= horizon {
        return invalid(
            "inbox.dedup_retention_hours",
            settings.inbox.dedup_retention_hours,
            format!(
                "must exceed the retry horizon ({}), or a late retry is processed twice",
                human(horizon)
            ),
        );
    }

    within(
        "limits.max_event_bytes",
        settings.limits.max_event_bytes as u64,
        1_024,
        16 * 1024 * 1024,
    )?;

    for (sku, quantity) in &settings.inventory.seed {
        if sku.trim().is_empty() {
            return invalid(
                "inventory.seed",
                format!("{sku:?}"),
                "a SKU must not be empty",
            );
        }
        if *quantity < 0 {
            return invalid(
                "inventory.seed",
                format!("{sku} = {quantity}"),
                "an initial quantity must not be negative",
            );
        }
    }
    if settings.payment.credit_limit_cents < 0 {
        return invalid(
            "payment.credit_limit_cents",
            settings.payment.credit_limit_cents,
            "must not be negative",
        );
    }
    if settings.order.max_total_cents < 0 {
        return invalid(
            "order.max_total_cents",
            settings.order.max_total_cents,
            "must not be negative",
        );
    }
    Ok(())
}

fn url(key: &'static str, url: &crate::SecretUrl, schemes: &[&str]) -> Result<(), ConfigError> {
    match url.scheme() {
        Ok(scheme) if schemes.contains(&scheme.as_str()) => Ok(()),
        Ok(scheme) => invalid(
            key,
            url.redacted(),
            format!("scheme `{scheme}` is not one of {}", schemes.join(", ")),
        ),
        Err(reason) => invalid(key, url.redacted(), format!("not a URL: {reason}")),
    }
}

/// A retention in hours: positive and at most ten years (so that it fits a
/// `Duration` and a Postgres interval).
fn positive_hours(key: &'static str, value: f64) -> Result<(), ConfigError> {
    if !(value.is_finite() && value > 0.0 && value <= 87_600.0) {
        return invalid(
            key,
            value,
            "must be a number of hours above 0 and at most 87600",
        );
    }
    Ok(())
}

fn at_least(key: &'static str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return invalid(key, value, format!("must be at least {min}"));
    }
    Ok(())
}

fn within(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if !(min..=max).contains(&value) {
        return invalid(key, value, format!("must be between {min} and {max}"));
    }
    Ok(())
}

fn invalid(
    key: &'static str,
    value: impl ToString,
    reason: impl Into<String>,
) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.into(),
    })
}

fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 3600 {
        format!("{:.1} h", secs as f64 / 3600.0)
    } else {
        format!("{secs} s")
    }
}

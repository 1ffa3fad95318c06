use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::SecretUrl;

/// Every setting of the fleet. Which binary reads which section is documented
/// on the section; unknown keys are rejected by [`crate::load`] so that a typo cannot silently
/// leave a default in force.
#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    /// Which broker carries events.
    pub transport: Transport,
    /// Prefix of every broker name (see the contract's naming rules).
    pub namespace: String,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub http: HttpSettings,
    pub worker: WorkerSettings,
    pub retry: RetrySettings,
    pub outbox: OutboxSettings,
    pub inbox: InboxSettings,
    pub limits: LimitsSettings,
    pub inventory: InventorySettings,
    pub payment: PaymentSettings,
    pub order: OrderSettings,
    pub telemetry: TelemetrySettings,
}

impl Settings {
    /// The namespace, already validated by [`crate::load`].
    pub fn namespace(&self) -> fleet_messages::Namespace {
        // Validation at load time guarantees this parses; fall back to the
        // default rather than panic if a caller built Settings by hand.
        fleet_messages::Namespace::new(&self.namespace).unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum Transport {
    Rabbitmq,
    Redis,
}

impl TryFrom<String> for Transport {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "rabbitmq" => Ok(Transport::Rabbitmq),
            "redis" => Ok(Transport::Redis),
            other => Err(format!(
                "unknown transport `{other}`, expected `rabbitmq` or `redis`"
            )),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Rabbitmq => "rabbitmq",
            Transport::Redis => "redis",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct DatabaseSettings {
    /// Also set by `DATABASE_URL`.
    pub url: SecretUrl,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

impl DatabaseSettings {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct AmqpSettings {
    /// Also set by `AMQP_URL`.
    pub url: SecretUrl,
    pub confirm_timeout_ms: u64,
}

impl AmqpSettings {
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct RedisSettings {
    /// Also set by `REDIS_URL`.
    pub url: SecretUrl,
    pub block_ms: u64,
    pub visibility_timeout_ms: u64,
}

impl RedisSettings {
    pub fn block(&self) -> Duration {
        Duration::from_millis(self.block_ms)
    }

    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_millis(self.visibility_timeout_ms)
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct HttpSettings {
    pub host: String,
    /// `0` picks a free port, which the binary logs.
    pub port: u16,
}

#[derive(Clone, Debug, Deserialize)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub prefetch: u16,
    /// Most deliveries handled together in one transaction when several are
    /// waiting; 1 handles each alone.
    pub max_batch: usize,
    /// How long a busy replica waits to fill a batch; 0 never waits.
    pub batch_wait_ms: u64,
    /// A filling batch of a replica with no other batch in flight closes
    /// once no delivery has come for this long, even within
    /// `batch_wait_ms`; 0 waits out the whole `batch_wait_ms`.
    pub batch_gap_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub max_relay_lag_ms: u64,
}

impl WorkerSettings {
    pub fn batch_wait(&self) -> Duration {
        Duration::from_millis(self.batch_wait_ms)
    }

    pub fn batch_gap(&self) -> Duration {
        Duration::from_millis(self.batch_gap_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn max_relay_lag(&self) -> Duration {
        Duration::from_millis(self.max_relay_lag_ms)
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub delays_ms: Vec<u64>,
}

impl RetrySettings {
    /// The retry delay tiers, in order.
    pub fn delays(&self) -> Vec<Duration> {
        self.delays_ms
            .iter()
            .copied()
            .map(Duration::from_millis)
            .collect()
    }

    /// The delay before retry number `retry` (1-based); the last tier repeats.
    pub fn delay_for(&self, retry: u32) -> Duration {
        let index = (retry.max(1) as usize - 1).min(self.delays_ms.len().saturating_sub(1));
        Duration::from_millis(self.delays_ms.get(index).copied().unwrap_or(0))
    }

    /// The longest time an event can spend between its first failure and its
    /// last attempt: what the inbox window must cover at the very least.
    pub fn horizon(&self) -> Duration {
        (1..self.max_attempts)
            .map(|retry| self.delay_for(retry))
            .sum()
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct OutboxSettings {
    pub batch_size: u32,
    pub poll_interval_ms: u64,
    /// How long rows handed to the writer's own relay are held from other
    /// relays' claims; 0: no handoff.
    pub handoff_lease_ms: u64,
    pub max_publish_attempts: u32,
    /// Fractions allowed (0.05 = 3 minutes), for soak runs.
    pub retention_hours: f64,
    pub cleanup_batch_size: u32,
    pub cleanup_interval_ms: u64,
}

impl OutboxSettings {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn handoff_lease(&self) -> Duration {
        Duration::from_millis(self.handoff_lease_ms)
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs_f64(self.retention_hours * 3600.0)
    }

    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_millis(self.cleanup_interval_ms)
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct InboxSettings {
    /// Fractions allowed, like `outbox.retention_hours`.
    pub dedup_retention_hours: f64,
}

impl InboxSettings {
    pub fn dedup_retention(&self) -> Duration {
        Duration::from_secs_f64(self.dedup_retention_hours * 3600.0)
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct LimitsSettings {
    pub max_event_bytes: usize,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct InventorySettings {
    /// SKU to initial quantity.
    #[serde(default)]
    pub seed: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PaymentSettings {
    pub credit_limit_cents: i64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct OrderSettings {
    pub max_total_cents: i64,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum LogFormat {
    Text,
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format `{other}`, expected `text` or `json`"
            )),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_filter: String,
}

//! Settings, connections, worker names and exit codes.

use std::io::Write;
use std::str::FromStr;

use anyhow::{Context as _, anyhow};
use fleet_broker::Broker;
use fleet_config::{Environment, Settings, Transport};
use fleet_messages::{Namespace, Worker};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::cli::{Global, TransportArg};

/// Bad usage: exit code 2. Everything else that fails is exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

pub(crate) fn exit_code(error: &anyhow::Error) -> u8 {
    if error.chain().any(|cause| cause.is::<UsageError>()) {
        2
    } else {
        1
    }
}

/// What every command gets.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) settings: Settings,
    pub(crate) json: bool,
}

impl Context {
    pub(crate) fn load(global: &Global) -> anyhow::Result<Self> {
        let mut settings = fleet_config::load("dlq-tool", &Environment::from_process())
            .map_err(|error| usage(format!("invalid configuration: {error}")))?;
        if let Some(transport) = global.transport {
            settings.transport = match transport {
                TransportArg::Rabbitmq => Transport::Rabbitmq,
                TransportArg::Redis => Transport::Redis,
            };
        }
        if let Some(namespace) = &global.namespace {
            Namespace::new(namespace)
                .map_err(|error| usage(format!("invalid --namespace {namespace:?}: {error}")))?;
            namespace.clone_into(&mut settings.namespace);
        }
        Ok(Self {
            settings,
            json: global.json,
        })
    }

    pub(crate) fn namespace(&self) -> Namespace {
        self.settings.namespace()
    }

    pub(crate) fn transport(&self) -> Transport {
        self.settings.transport
    }

    /// Connects to the configured broker; unreachable is a failed operation.
    pub(crate) async fn broker(&self) -> anyhow::Result<Broker> {
        let replica = format!("dlq-tool-{}-{}", host(), std::process::id());
        let url = match self.settings.transport {
            Transport::Rabbitmq => self.settings.amqp.url.redacted(),
            Transport::Redis => self.settings.redis.url.redacted(),
        };
        Broker::connect(&self.settings, &replica)
            .await
            .with_context(|| format!("cannot reach {} at {url}", self.settings.transport))
    }

    /// Connects to the database (audit, outbox counts); unreachable is a
    /// failed operation.
    pub(crate) async fn database(&self) -> anyhow::Result<PgPool> {
        let url = &self.settings.database.url;
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(self.settings.database.acquire_timeout())
            .connect(url.expose())
            .await
            .with_context(|| format!("cannot reach the database at {}", url.redacted()))
    }

    /// The name of `worker`'s dead-letter queue or stream.
    pub(crate) fn dead_letter_name(&self, worker: Worker) -> String {
        let namespace = self.namespace();
        match self.settings.transport {
            Transport::Rabbitmq => {
                fleet_messages::names::dead_letter_queue(&namespace, worker.name())
            }
            Transport::Redis => {
                fleet_messages::names::dead_letter_stream(&namespace, worker.name())
            }
        }
    }

    /// Prints `value` as the one JSON document of this run.
    pub(crate) fn print_json(&self, value: &serde_json::Value) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, value).context("writing JSON to stdout")?;
        writeln!(stdout).context("writing to stdout")
    }

    /// Prints human-readable text.
    pub(crate) fn print(&self, text: &str) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}").context("writing to stdout")
    }
}

/// A worker name given on the command line; unknown names are bad usage,
/// and the message lists the valid ones.
pub(crate) fn worker(name: &str) -> anyhow::Result<Worker> {
    Worker::from_str(name).map_err(|error| usage(error.to_string()))
}

/// The OS user running the tool, for the audit trail.
pub(crate) fn os_user() -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|user| !user.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

pub(crate) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `500` or `500/s`: dead letters per second.
pub(crate) fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let number = text.trim().trim_end_matches("/s");
    let rate: f64 = number.parse().map_err(|_| {
        usage(format!(
            "invalid --rate {text:?}: expected N or N/s, e.g. 500/s"
        ))
    })?;
    if !rate.is_finite() || rate <= 0.0 {
        return Err(anyhow!(UsageError(format!(
            "invalid --rate {text:?}: must be positive"
        ))));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_or_without_unit() {
        assert_eq!(parse_rate("500").unwrap(), 500.0);
        assert_eq!(parse_rate("2.5/s").unwrap(), 2.5);
        assert_eq!(exit_code(&parse_rate("fast").unwrap_err()), 2);
        assert_eq!(exit_code(&parse_rate("0").unwrap_err()), 2);
    }

    #[test]
    fn unknown_workers_are_usage_errors_listing_the_valid_ones() {
        let error = worker("nope").unwrap_err();
        assert_eq!(exit_code(&error), 2);
        assert!(error.to_string().contains("inventory-worker"));
    }
}

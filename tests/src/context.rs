//! One test's isolated slice of the shared services.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_config::{Environment, Settings};
use fleet_messages::Namespace;
use rand::Rng;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

use crate::services;

/// Test databases are named `fleet_t_<created unix secs>_<random>`; those
/// older than this are dropped by later runs, so aborted runs do not pile up.
const STALE_AFTER: Duration = Duration::from_secs(2 * 3600);
const DATABASE_PREFIX: &str = "fleet_t_";

/// A fresh namespace and database for one test.
#[derive(Debug)]
pub struct TestContext {
    pub namespace: Namespace,
    pub database_url: String,
    pub amqp_url: String,
    pub redis_url: String,
    pub db: PgPool,
}

impl TestContext {
    pub async fn new() -> Self {
        let services = services().await;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock before 1970")
            .as_secs();
        let suffix: String = {
            let mut rng = rand::rng();
            (0..8)
                .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                .collect()
        };
        let namespace = Namespace::new(&format!("t{created}{suffix}")).expect("valid namespace");
        let database = format!("{DATABASE_PREFIX}{created}_{suffix}");

        let mut admin = PgConnection::connect(&services.database_url)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot connect to PostgreSQL at DATABASE_URL ({}): {error}",
                    redact(&services.database_url)
                )
            });
        drop_stale_databases(&mut admin, created).await;
        crate::cleanup::sweep(&services.redis_url, created).await;
        admin
            .execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{database}""#)))
            .await
            .unwrap_or_else(|error| panic!("creating test database {database}: {error}"));
        admin.close().await.ok();

        let database_url = with_database(&services.database_url, &database);
        let db = PgPoolOptions::new()
            .max_connections(16)
            .connect(&database_url)
            .await
            .unwrap_or_else(|error| panic!("connecting to test database {database}: {error}"));
        Self {
            namespace,
            database_url,
            amqp_url: services.amqp_url.clone(),
            redis_url: services.redis_url.clone(),
            db,
        }
    }

    /// The environment a fleet binary of this test would see: its URLs, its
    /// namespace, a free HTTP port, plus `overrides` (`FLEET__…` pairs).
    pub fn environment(&self, overrides: &[(&str, &str)]) -> Environment {
        let mut env = Environment::default()
            .with("DATABASE_URL", &self.database_url)
            .with("AMQP_URL", &self.amqp_url)
            .with("REDIS_URL", &self.redis_url)
            .with("FLEET__NAMESPACE", self.namespace.as_str())
            .with("FLEET__HTTP__PORT", "0");
        for (key, value) in overrides {
            env = env.with(*key, *value);
        }
        env
    }

    /// Settings of `component` for this test (see [`TestContext::environment`]).
    pub fn settings(&self, component: &str, overrides: &[(&str, &str)]) -> Settings {
        fleet_config::load(component, &self.environment(overrides))
            .unwrap_or_else(|error| panic!("test settings for {component}: {error}"))
    }
}

async fn drop_stale_databases(admin: &mut PgConnection, now: u64) {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'fleet\\_t\\_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for (name,) in names {
        let created = name
            .strip_prefix(DATABASE_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| now.saturating_sub(created) > STALE_AFTER.as_secs()) {
            // Best effort: another process may be dropping it at the same time.
            let _ = admin
                .execute(AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                )))
                .await;
        }
    }
}

fn with_database(url: &str, database: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("DATABASE_URL is a URL");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable>".to_owned(),
    }
}

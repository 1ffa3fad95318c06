//! A worker's own schema: its name, its pool, its migrations.

use std::fmt;

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, SqlSafeStr};

/// The outbox and inbox tables, in whichever schema they run in. Embedded
/// with `include_str!` (no proc-macro needed); versions are never renumbered.
fn outbox_migrations() -> Vec<Migration> {
    vec![
        migration(1, "outbox", include_str!("../migrations/1_outbox.sql")),
        migration(2, "inbox", include_str!("../migrations/2_inbox.sql")),
        migration(
            3,
            "outbox vacuum",
            include_str!("../migrations/3_outbox_vacuum.sql"),
        ),
    ]
}

/// One migration from embedded SQL, for workers' own migration lists too.
pub fn migration(version: i64, description: &'static str, sql: &'static str) -> Migration {
    Migration::new(
        version,
        Cow::Borrowed(description),
        MigrationType::Simple,
        sql.into_sql_str(),
        false,
    )
}

/// A validated Postgres schema name: lowercase letters, digits and `_`,
/// starting with a letter, at most 63 bytes, so it never needs quoting.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Schema(String);

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid schema name {0:?}: use lowercase letters, digits and '_', starting with a letter, at most 63 characters"
)]
pub struct InvalidSchema(String);

impl Schema {
    pub fn new(name: &str) -> Result<Self, InvalidSchema> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidSchema(name.to_owned()))
        }
    }

    /// The schema of a worker: `inventory-worker` owns `inventory_worker`.
    pub fn for_worker(worker: &str) -> Result<Self, InvalidSchema> {
        Self::new(&worker.replace('-', "_"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `LISTEN`/`NOTIFY` channel of this schema's relay.
    pub(crate) fn wakeup_channel(&self) -> String {
        format!("{}_outbox", self.0)
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pool whose connections all have `search_path` set to `schema`, so the
/// worker's SQL (and this crate's) names its tables unqualified.
pub async fn connect(
    settings: &fleet_config::DatabaseSettings,
    schema: &Schema,
) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = settings
        .url
        .expose()
        .parse::<PgConnectOptions>()?
        .options([("search_path", schema.as_str())])
        .application_name(&format!("fleet/{schema}"));
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout())
        .connect_with(options)
        .await
}

/// Creates `schema` if needed and applies the outbox and inbox migrations,
/// then `extra` (the worker's own), each with its own history table in the
/// schema. Safe for every replica to run at once: the migrator holds an
/// advisory lock while it works, and the schema is created under that lock.
pub async fn migrate(
    pool: &PgPool,
    schema: &Schema,
    extra: &[Migration],
) -> Result<(), sqlx::migrate::MigrateError> {
    let mut pooled = pool.acquire().await?;
    let connection: &mut sqlx::PgConnection = &mut pooled;
    // The pool already sets search_path; set it again in case the caller's
    // pool is not one of ours.
    (&mut *connection)
        .execute(AssertSqlSafe(format!("SET search_path TO {schema}")))
        .await?;
    run(
        outbox_migrations(),
        connection,
        schema,
        "_outbox_migrations",
    )
    .await?;
    if !extra.is_empty() {
        run(extra.to_vec(), connection, schema, "_migrations").await?;
    }
    Ok(())
}

async fn run(
    migrations: Vec<Migration>,
    connection: &mut sqlx::PgConnection,
    schema: &Schema,
    table: &str,
) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name(format!("{schema}.{table}"));
    migrator.create_schema(schema.as_str().to_owned());
    // run_direct takes the connection itself; run() goes through Acquire,
    // whose higher-ranked bounds make the future not Send.
    migrator.run_direct(None, connection, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_map_to_schema_names() {
        assert_eq!(
            Schema::for_worker("inventory-worker").unwrap().as_str(),
            "inventory_worker"
        );
        assert!(Schema::new("Bad").is_err());
        assert!(Schema::new("1abc").is_err());
        assert!(Schema::new("a;drop").is_err());
        assert!(Schema::new("").is_err());
    }
}

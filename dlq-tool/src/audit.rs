//! The audit trail: `dlq_tool.audit` in the fleet's Postgres database.
//!
//! Every mutating command (replay, purge, import) writes its record
//! *before* it touches the broker (with the selection and event ids) and
//! completes it with the outcome afterwards: a run that is killed midway
//! still left a record of what it was about to do (its `outcome` stays
//! null). Dry runs are recorded too (`outcome.dry_run = true`): who looked at
//! what before replaying is part of the story, and a record costs nothing.
//! If the database is unreachable, a mutating command refuses to start.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use crate::context::{host, os_user};

/// Serializes concurrent migrations (two operators starting at once).
const MIGRATION_LOCK: i64 = 0x646c_715f_746f_6f6c; // "dlq_tool"

const CREATE_SCHEMA: &str = "CREATE SCHEMA IF NOT EXISTS dlq_tool";
const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS dlq_tool.audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    os_user text NOT NULL,
    host text NOT NULL,
    command text NOT NULL,
    selection jsonb NOT NULL,
    event_ids text[] NOT NULL DEFAULT '{}',
    reason text,
    outcome jsonb
)";

/// Creates the schema and table if needed, under an advisory lock.
pub(crate) async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await.context("starting the audit migration")?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .context("locking the audit migration")?;
    sqlx::query(CREATE_SCHEMA)
        .execute(&mut *tx)
        .await
        .context("creating schema dlq_tool")?;
    sqlx::query(CREATE_TABLE)
        .execute(&mut *tx)
        .await
        .context("creating table dlq_tool.audit")?;
    tx.commit().await.context("committing the audit migration")
}

/// Writes the record of a command about to run; returns its id.
pub(crate) async fn begin(
    pool: &PgPool,
    command: &str,
    selection: &Value,
    event_ids: &[&str],
    reason: Option<&str>,
) -> anyhow::Result<i64> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO dlq_tool.audit (os_user, host, command, selection, event_ids, reason)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(os_user())
    .bind(host())
    .bind(command)
    .bind(selection)
    .bind(event_ids)
    .bind(reason)
    .fetch_one(pool)
    .await
    .context("writing the audit record")?;
    Ok(id)
}

/// Completes a record with the outcome (and, for imports, the ids learnt
/// while running).
pub(crate) async fn finish(
    pool: &PgPool,
    id: i64,
    outcome: &Value,
    event_ids: Option<&[String]>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE dlq_tool.audit SET outcome = $2, event_ids = COALESCE($3, event_ids) WHERE id = $1",
    )
    .bind(id)
    .bind(outcome)
    .bind(event_ids)
    .execute(pool)
    .await
    .context("completing the audit record")?;
    Ok(())
}

#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) id: i64,
    pub(crate) at: DateTime<Utc>,
    pub(crate) os_user: String,
    pub(crate) host: String,
    pub(crate) command: String,
    pub(crate) selection: Value,
    pub(crate) event_ids: Vec<String>,
    pub(crate) reason: Option<String>,
    pub(crate) outcome: Option<Value>,
}

type Row = (
    i64,
    DateTime<Utc>,
    String,
    String,
    String,
    Value,
    Vec<String>,
    Option<String>,
    Option<Value>,
);

fn record(row: Row) -> Record {
    let (id, at, os_user, host, command, selection, event_ids, reason, outcome) = row;
    Record {
        id,
        at,
        os_user,
        host,
        command,
        selection,
        event_ids,
        reason,
        outcome,
    }
}

/// The newest `limit` records.
pub(crate) async fn list(pool: &PgPool, limit: i64) -> anyhow::Result<Vec<Record>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, at, os_user, host, command, selection, event_ids, reason, outcome
         FROM dlq_tool.audit ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("reading dlq_tool.audit")?;
    Ok(rows.into_iter().map(record).collect())
}

/// Records that mention `event_id` (a dead letter's replay history).
pub(crate) async fn history(pool: &PgPool, event_id: &str) -> anyhow::Result<Vec<Record>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, at, os_user, host, command, selection, event_ids, reason, outcome
         FROM dlq_tool.audit WHERE $1 = ANY(event_ids) ORDER BY id",
    )
    .bind(event_id)
    .fetch_all(pool)
    .await
    .context("reading dlq_tool.audit")?;
    Ok(rows.into_iter().map(record).collect())
}

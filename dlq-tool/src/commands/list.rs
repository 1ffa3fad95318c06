//! `list`: every dead-letter queue or stream of the namespace.

use std::process::ExitCode;

use anyhow::Context as _;
use fleet_messages::Worker;
use serde_json::json;
use sqlx::{AssertSqlSafe, PgPool};

use crate::cli::ListArgs;
use crate::context::{self, Context};
use crate::render;

pub(crate) async fn run(ctx: &Context, args: ListArgs) -> anyhow::Result<ExitCode> {
    let workers: Vec<Worker> = if args.workers.is_empty() {
        Worker::ALL.to_vec()
    } else {
        args.workers
            .iter()
            .map(|name| context::worker(name))
            .collect::<anyhow::Result<_>>()?
    };
    let broker = ctx.broker().await?;
    let database = if args.no_outbox {
        None
    } else {
        Some(
            ctx.database()
                .await
                .context("use --no-outbox to list without the database")?,
        )
    };
    let mut rows = Vec::new();
    for worker in workers {
        let depth = broker
            .dead_letter_depth(worker.name())
            .await
            .with_context(|| format!("reading the dead-letter depth of {worker}"))?;
        // The head of the queue is its oldest dead letter.
        let oldest = if depth > 0 {
            broker
                .peek_dead_letters(worker.name(), 1)
                .await
                .with_context(|| format!("reading the oldest dead letter of {worker}"))?
                .first()
                .and_then(|letter| letter.first_failed_at.or(letter.last_failed_at))
        } else {
            None
        };
        let parked = match &database {
            Some(pool) => Some(parked_rows(pool, worker).await?),
            None => None,
        };
        rows.push(json!({
            "transport": ctx.transport().as_str(),
            "worker": worker.name(),
            "name": ctx.dead_letter_name(worker),
            "depth": depth,
            "oldest_failed_at": oldest,
            "parked_outbox_rows": parked,
        }));
    }
    if ctx.json {
        ctx.print_json(&serde_json::Value::Array(rows))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = render::table(&[
        "worker",
        "dead letters",
        "depth",
        "oldest failure",
        "parked outbox rows",
    ]);
    for row in &rows {
        let oldest = row["oldest_failed_at"]
            .as_str()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map(|at| at.with_timezone(&chrono::Utc));
        table.add_row(vec![
            row["worker"].as_str().unwrap_or_default().to_owned(),
            row["name"].as_str().unwrap_or_default().to_owned(),
            row["depth"].to_string(),
            if oldest.is_some() {
                format!("{} ago", render::age(oldest))
            } else {
                "-".to_owned()
            },
            row["parked_outbox_rows"]
                .as_i64()
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ]);
    }
    ctx.print(&table.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// Outbox rows the relay gave up on (parked, never published), read
/// straight from the worker's schema: dlq-tool does not depend on the outbox
/// crate. A worker that never ran has no table: 0.
async fn parked_rows(pool: &PgPool, worker: Worker) -> anyhow::Result<i64> {
    let schema = worker.name().replace('-', "_");
    let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{schema}.outbox"))
        .fetch_one(pool)
        .await
        .context("looking for the outbox table")?;
    if !exists {
        return Ok(0);
    }
    // The schema name comes from the fixed worker list, never from input.
    let (count,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.outbox WHERE parked_at IS NOT NULL AND published_at IS NULL"
    )))
    .fetch_one(pool)
    .await
    .with_context(|| format!("counting parked rows in {schema}.outbox"))?;
    Ok(count)
}

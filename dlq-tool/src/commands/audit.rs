//! `audit`: the records of mutating commands, newest first.

use std::process::ExitCode;

use serde_json::json;

use crate::cli::AuditArgs;
use crate::context::{Context, usage};
use crate::{audit, render};

pub(crate) async fn run(ctx: &Context, args: AuditArgs) -> anyhow::Result<ExitCode> {
    if args.limit < 1 {
        return Err(usage("--limit must be at least 1"));
    }
    let pool = ctx.database().await?;
    audit::migrate(&pool).await?;
    let records = audit::list(&pool, args.limit).await?;
    if ctx.json {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .map(|record| {
                json!({
                    "id": record.id,
                    "at": record.at,
                    "os_user": record.os_user,
                    "host": record.host,
                    "command": record.command,
                    "selection": record.selection,
                    "event_ids": record.event_ids,
                    "reason": record.reason,
                    "outcome": record.outcome,
                })
            })
            .collect();
        ctx.print_json(&serde_json::Value::Array(rows))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = render::table(&[
        "#", "at", "who", "command", "worker", "events", "reason", "outcome",
    ]);
    for record in &records {
        table.add_row(vec![
            record.id.to_string(),
            record.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            format!("{}@{}", record.os_user, record.host),
            record.command.clone(),
            record.selection["worker"]
                .as_str()
                .unwrap_or("-")
                .to_owned(),
            record.event_ids.len().to_string(),
            render::truncate(record.reason.as_deref().unwrap_or(""), 30),
            render::truncate(
                &record
                    .outcome
                    .as_ref()
                    .map_or_else(|| "(unfinished)".to_owned(), ToString::to_string),
                50,
            ),
        ]);
    }
    ctx.print(&table.to_string())?;
    Ok(ExitCode::SUCCESS)
}

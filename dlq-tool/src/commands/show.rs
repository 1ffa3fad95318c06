//! `show`: one dead letter, whole, with its replay history from the audit
//! trail.

use std::ops::ControlFlow;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use fleet_broker::DeadLetter;
use serde_json::json;

use crate::cli::ShowArgs;
use crate::context::{self, Context};
use crate::filter::{self, validate_id};
use crate::{audit, render};

pub(crate) async fn run(ctx: &Context, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let worker = context::worker(&args.worker)?;
    validate_id(&args.id)?;
    let broker = ctx.broker().await?;
    let mut found: Option<DeadLetter> = None;
    let mut copies = 0u64;
    broker
        .browse_dead_letters(worker.name(), &mut |letter| {
            if letter.id == args.id {
                copies += 1;
                if found.is_none() {
                    found = Some(letter);
                }
            }
            ControlFlow::Continue(())
        })
        .await
        .with_context(|| format!("reading the dead letters of {worker}"))?;
    let Some(letter) = found else {
        return Err(anyhow!("no dead letter with id {} in {worker}", args.id));
    };
    // The history is a courtesy: without the database the dead letter is
    // still shown, with a warning.
    let history = match ctx.database().await {
        Ok(pool) => match audit::migrate(&pool).await {
            Ok(()) => audit::history(&pool, &letter.id).await.ok(),
            Err(_) => None,
        },
        Err(error) => {
            eprintln!("warning: no replay history: {error:#}");
            None
        }
    };
    let history_json: Option<Vec<serde_json::Value>> = history.as_ref().map(|records| {
        records
            .iter()
            .map(|record| {
                json!({
                    "audit_id": record.id,
                    "at": record.at,
                    "os_user": record.os_user,
                    "host": record.host,
                    "command": record.command,
                    "reason": record.reason,
                    "outcome": record.outcome,
                })
            })
            .collect()
    });
    if ctx.json {
        let mut value = render::full_json(&letter);
        value["copies"] = json!(copies);
        value["replay_history"] = json!(history_json);
        ctx.print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = render::table(&["field", "value"]);
    let rows: Vec<(&str, String)> = vec![
        ("id", letter.id.clone()),
        ("type", filter::event_type(&letter)),
        ("worker", letter.worker.clone()),
        ("position", letter.position.clone()),
        ("copies in queue", copies.to_string()),
        ("source", letter.source.clone()),
        ("error kind", letter.error_kind.clone()),
        ("error", letter.error.clone()),
        ("attempts", letter.attempts.to_string()),
        ("first failed", render::time(letter.first_failed_at)),
        ("last failed", render::time(letter.last_failed_at)),
        ("replica", letter.replica.clone().unwrap_or_default()),
        ("replays", letter.replays.to_string()),
    ];
    for (field, value) in rows {
        table.add_row(vec![field.to_owned(), value]);
    }
    for (name, value) in &letter.headers {
        table.add_row(vec![format!("header {name}"), value.clone()]);
    }
    let event = serde_json::to_string_pretty(&render::event_value(&letter.body))
        .unwrap_or_else(|_| String::from_utf8_lossy(&letter.body).into_owned());
    let mut text = format!("{table}\n\nevent:\n{event}\n");
    match history {
        Some(records) if !records.is_empty() => {
            text.push_str("\nreplay history (audit):\n");
            for record in records {
                text.push_str(&format!(
                    "  #{} {} {}@{} {} {}\n",
                    record.id,
                    record.at.format("%Y-%m-%d %H:%M:%S"),
                    record.os_user,
                    record.host,
                    record.command,
                    record.reason.unwrap_or_default()
                ));
            }
        }
        Some(_) => text.push_str("\nreplay history (audit): none\n"),
        None => {}
    }
    ctx.print(&text)?;
    Ok(ExitCode::SUCCESS)
}

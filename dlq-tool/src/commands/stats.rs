//! `stats`: dead letters counted per error fingerprint, event type or
//! routing key, so that an operator can act on one group.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::cli::{GroupBy, StatsArgs};
use crate::context::{self, Context};
use crate::filter::{event_type, fingerprint, normalize};
use crate::render;

#[derive(Debug)]
struct Group {
    count: u64,
    error_kind: String,
    /// The normalized error (by error), or an example error.
    error: String,
    first_failed_at: Option<DateTime<Utc>>,
    last_failed_at: Option<DateTime<Utc>>,
}

pub(crate) async fn run(ctx: &Context, args: StatsArgs) -> anyhow::Result<ExitCode> {
    let worker = context::worker(&args.worker)?;
    let broker = ctx.broker().await?;
    let mut groups: HashMap<String, Group> = HashMap::new();
    let mut total = 0u64;
    broker
        .browse_dead_letters(worker.name(), &mut |letter| {
            total += 1;
            let key = match args.by {
                GroupBy::Error => fingerprint(&letter.error_kind, &letter.error),
                GroupBy::Type => event_type(&letter),
                GroupBy::RoutingKey => letter.source.clone(),
            };
            let failed_at = letter.last_failed_at.or(letter.first_failed_at);
            let group = groups.entry(key).or_insert_with(|| Group {
                count: 0,
                error_kind: letter.error_kind.clone(),
                error: normalize(&letter.error),
                first_failed_at: failed_at,
                last_failed_at: failed_at,
            });
            group.count += 1;
            group.first_failed_at = match (group.first_failed_at, failed_at) {
                (Some(known), Some(new)) => Some(known.min(new)),
                (known, new) => known.or(new),
            };
            group.last_failed_at = group.last_failed_at.max(failed_at);
            ControlFlow::Continue(())
        })
        .await
        .with_context(|| format!("reading the dead letters of {worker}"))?;
    let mut groups: Vec<(String, Group)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
    let by = match args.by {
        GroupBy::Error => "error",
        GroupBy::Type => "type",
        GroupBy::RoutingKey => "routing-key",
    };
    if ctx.json {
        let rows: Vec<serde_json::Value> = groups
            .iter()
            .map(|(key, group)| {
                let mut row = json!({
                    "key": key,
                    "count": group.count,
                    "first_failed_at": group.first_failed_at,
                    "last_failed_at": group.last_failed_at,
                });
                if args.by == GroupBy::Error {
                    row["fingerprint"] = json!(key);
                    row["error_kind"] = json!(group.error_kind);
                    row["error"] = json!(group.error);
                }
                row
            })
            .collect();
        ctx.print_json(
            &json!({ "worker": worker.name(), "by": by, "total": total, "groups": rows }),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = if args.by == GroupBy::Error {
        render::table(&[
            "fingerprint",
            "count",
            "kind",
            "error (normalized)",
            "last failed",
        ])
    } else {
        render::table(&[by, "count", "first failed", "last failed"])
    };
    for (key, group) in &groups {
        if args.by == GroupBy::Error {
            table.add_row(vec![
                key.clone(),
                group.count.to_string(),
                render::truncate(&group.error_kind, 20),
                render::truncate(&group.error, 70),
                render::time(group.last_failed_at),
            ]);
        } else {
            table.add_row(vec![
                key.clone(),
                group.count.to_string(),
                render::time(group.first_failed_at),
                render::time(group.last_failed_at),
            ]);
        }
    }
    ctx.print(&format!("{table}\n{total} dead letters of {worker}"))?;
    Ok(ExitCode::SUCCESS)
}

//! `peek`: dead letters, oldest first, without removing or reordering any.

use std::ops::ControlFlow;
use std::process::ExitCode;

use anyhow::Context as _;
use fleet_broker::DeadLetter;

use crate::cli::PeekArgs;
use crate::context::{self, Context};
use crate::filter::{self, Filter};
use crate::render;

pub(crate) async fn run(ctx: &Context, args: PeekArgs) -> anyhow::Result<ExitCode> {
    let worker = context::worker(&args.worker)?;
    let filter = Filter {
        event_type: args.event_type.clone(),
        error_contains: args.error_contains.clone(),
        ..Filter::default()
    }
    .with_time(&args.time)?;
    let broker = ctx.broker().await?;
    let mut letters: Vec<DeadLetter> = Vec::new();
    let limit = args.limit;
    if limit > 0 {
        broker
            .browse_dead_letters(worker.name(), &mut |letter| {
                if filter.matches(&letter) {
                    letters.push(letter);
                }
                if letters.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await
            .with_context(|| format!("reading the dead letters of {worker}"))?;
    }
    if ctx.json {
        let rows = letters.iter().map(render::peek_json).collect();
        ctx.print_json(&serde_json::Value::Array(rows))?;
        return Ok(ExitCode::SUCCESS);
    }
    if letters.is_empty() {
        ctx.print(&format!("no dead letters of {worker} match"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = render::table(&[
        "id",
        "type",
        "error",
        "attempts",
        "replays",
        "first failed",
        "last failed",
    ]);
    for letter in &letters {
        table.add_row(vec![
            render::truncate(&letter.id, 40),
            render::truncate(&filter::event_type(letter), 24),
            render::truncate(&format!("{}: {}", letter.error_kind, letter.error), 60),
            letter.attempts.to_string(),
            letter.replays.to_string(),
            render::time(letter.first_failed_at),
            render::time(letter.last_failed_at),
        ]);
    }
    ctx.print(&table.to_string())?;
    Ok(ExitCode::SUCCESS)
}

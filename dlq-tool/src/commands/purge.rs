//! `purge`: remove dead letters for good, after a confirmation on a
//! terminal (or `--yes`). The selection is fixed first, like a replay's.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::json;

use super::code;
use super::replay::{not_found, progress_bar, report_not_found};
use crate::audit;
use crate::cli::PurgeArgs;
use crate::context::{self, Context, usage};
use crate::filter::Filter;

pub(crate) async fn run(ctx: &Context, args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let worker = context::worker(&args.worker)?;
    let filter = Filter::from_purge(&args.selector)?;
    if !args.yes && !std::io::stdin().is_terminal() {
        return Err(usage(
            "refusing to purge without confirmation: stdin is not a terminal; pass --yes",
        ));
    }
    let pool = ctx.database().await?;
    audit::migrate(&pool).await?;
    let broker = ctx.broker().await?;
    let selection = broker
        .select_dead_letters(worker.name(), None, &mut |letter| filter.matches(letter))
        .await
        .with_context(|| format!("selecting the dead letters of {worker}"))?;
    let not_found = not_found(&filter, &selection);
    if !args.yes && !selection.is_empty() && !confirm(selection.len(), worker.name())? {
        eprintln!("purge cancelled");
        return Ok(ExitCode::from(1));
    }
    // Borrowed: a copy of 100,000 ids would double their memory.
    let event_ids: Vec<&str> = selection.entries().iter().map(|e| e.id.as_str()).collect();
    let description = json!({
        "worker": worker.name(),
        "transport": ctx.transport().as_str(),
        "namespace": ctx.namespace().as_str(),
        "filter": filter.describe(),
    });
    let audit_id = audit::begin(
        &pool,
        "purge",
        &description,
        &event_ids,
        args.reason.as_deref(),
    )
    .await?;
    drop(event_ids);
    let bar = progress_bar(ctx, selection.len());
    let result = broker
        .purge_dead_letters(&selection, &mut |report| bar.set_position(report.done()))
        .await;
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            let _ = audit::finish(
                &pool,
                audit_id,
                &json!({ "error": error.to_string() }),
                None,
            )
            .await;
            return Err(error).with_context(|| format!("purging the dead letters of {worker}"));
        }
    };
    let document = json!({
        "selected": report.selected,
        "purged": report.replayed,
        "missing": report.missing,
        "aborted": report.aborted,
        "not_found": not_found,
    });
    audit::finish(&pool, audit_id, &document, None).await?;
    if ctx.json {
        ctx.print_json(&document)?;
    } else {
        ctx.print(&format!(
            "purged {} of {} selected dead letters of {worker}",
            report.replayed, report.selected
        ))?;
        report_not_found(&not_found);
    }
    Ok(code(
        report.aborted.is_some() || report.missing > 0 || !not_found.is_empty(),
    ))
}

fn confirm(count: usize, worker: &str) -> anyhow::Result<bool> {
    let mut stderr = std::io::stderr().lock();
    write!(
        stderr,
        "Purge {count} dead letters of {worker}? This cannot be undone (export first to keep a copy). [y/N] "
    )
    .context("writing the prompt")?;
    stderr.flush().context("writing the prompt")?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

//! `replay`: republish dead letters to their worker only.
//!
//! Order of events, each step safe to interrupt:
//! 1. the audit table is reachable (or nothing happens);
//! 2. the selection is fixed by one browse (identities only), so dead
//!    letters arriving later are never swept in;
//! 3. the audit record is written with the selected event ids;
//! 4. the broker crate replays the selection, removing each dead letter
//!    only after its replay was confirmed, and stops early when replays come
//!    back dead-lettered;
//! 5. the audit record gets the outcome.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context as _;
use fleet_broker::{DeadLetterSelection, ReplayOptions, ReplayReport};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::code;
use crate::audit;
use crate::cli::ReplayArgs;
use crate::context::{self, Context, parse_rate};
use crate::filter::Filter;

pub(crate) async fn run(ctx: &Context, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let worker = context::worker(&args.worker)?;
    let filter = Filter::from_selector(&args.selector)?;
    let rate = args.rate.as_deref().map(parse_rate).transpose()?;
    let pool = ctx.database().await?;
    audit::migrate(&pool).await?;
    let broker = ctx.broker().await?;
    let selection = broker
        .select_dead_letters(worker.name(), args.limit, &mut |letter| {
            filter.matches(letter)
        })
        .await
        .with_context(|| format!("selecting the dead letters of {worker}"))?;
    let not_found = not_found(&filter, &selection);
    let description = json!({
        "worker": worker.name(),
        "transport": ctx.transport().as_str(),
        "namespace": ctx.namespace().as_str(),
        "filter": filter.describe(),
        "rate": rate,
        "limit": args.limit,
        "dry_run": args.dry_run,
        "stop_after_failures": args.stop_after_failures,
    });
    // Borrowed: a copy of 100,000 ids would double their memory.
    let event_ids: Vec<&str> = selection.entries().iter().map(|e| e.id.as_str()).collect();
    let audit_id = audit::begin(
        &pool,
        "replay",
        &description,
        &event_ids,
        args.reason.as_deref(),
    )
    .await?;
    drop(event_ids);

    if args.dry_run {
        let outcome = json!({
            "selected": selection.len(),
            "replayed": 0,
            "failed": 0,
            "dry_run": true,
            "not_found": not_found,
        });
        audit::finish(&pool, audit_id, &outcome, None).await?;
        if ctx.json {
            let mut document = outcome;
            document["ids"] = json!(
                selection
                    .entries()
                    .iter()
                    .map(|e| &e.id)
                    .collect::<Vec<_>>()
            );
            ctx.print_json(&document)?;
        } else {
            ctx.print(&format!(
                "dry run: would replay {} dead letters of {worker} to {worker} only",
                selection.len()
            ))?;
            for entry in selection.entries().iter().take(20) {
                ctx.print(&format!("  {}", entry.id))?;
            }
            if selection.len() > 20 {
                ctx.print(&format!("  … and {} more", selection.len() - 20))?;
            }
            report_not_found(&not_found);
        }
        return Ok(code(!not_found.is_empty()));
    }

    let options = ReplayOptions {
        rate,
        stop_after_redead: (args.stop_after_failures > 0).then_some(args.stop_after_failures),
    };
    let bar = progress_bar(ctx, selection.len());
    let result = broker
        .replay_dead_letters(&selection, &options, &mut |report| {
            bar.set_position(report.done());
        })
        .await;
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            let outcome = json!({ "error": error.to_string() });
            let _ = audit::finish(&pool, audit_id, &outcome, None).await;
            return Err(error).with_context(|| format!("replaying the dead letters of {worker}"));
        }
    };
    let document = outcome(&report, &not_found);
    audit::finish(&pool, audit_id, &document, None).await?;
    if ctx.json {
        ctx.print_json(&document)?;
    } else {
        ctx.print(&summary(&report, worker.name()))?;
        report_not_found(&not_found);
    }
    let failed = report.failed > 0
        || report.missing > 0
        || report.aborted.is_some()
        || report.stopped_early
        || !not_found.is_empty();
    Ok(code(failed))
}

/// `--id`s that matched no dead letter.
pub(crate) fn not_found(filter: &Filter, selection: &DeadLetterSelection) -> Vec<String> {
    let Some(ids) = &filter.ids else {
        return Vec::new();
    };
    let selected: HashSet<&str> = selection.entries().iter().map(|e| e.id.as_str()).collect();
    let mut missing: Vec<String> = ids
        .iter()
        .filter(|id| !selected.contains(id.as_str()))
        .cloned()
        .collect();
    missing.sort();
    missing
}

pub(crate) fn report_not_found(not_found: &[String]) {
    for id in not_found {
        eprintln!("error: no dead letter with id {id}");
    }
}

/// The contract's `{"selected", "replayed", "failed"}` plus the details.
fn outcome(report: &ReplayReport, not_found: &[String]) -> serde_json::Value {
    json!({
        "selected": report.selected,
        "replayed": report.replayed,
        "failed": report.failed,
        "missing": report.missing,
        "redead": report.redead,
        "stopped_early": report.stopped_early,
        "aborted": report.aborted,
        "dry_run": false,
        "not_found": not_found,
        "failures": report.failures,
    })
}

fn summary(report: &ReplayReport, worker: &str) -> String {
    let mut text = format!(
        "replayed {} of {} selected dead letters to {worker}; {} failed (left in place)",
        report.replayed, report.selected, report.failed
    );
    if report.missing > 0 {
        text.push_str(&format!("; {} were gone already", report.missing));
    }
    if report.stopped_early {
        text.push_str(&format!(
            "\nstopped early: {} replayed dead letters failed again; the rest stay dead letters",
            report.redead
        ));
    }
    if let Some(reason) = &report.aborted {
        text.push_str(&format!("\naborted: {reason}; the rest stay dead letters"));
    }
    for failure in &report.failures {
        text.push_str(&format!("\n  {}: {}", failure.id, failure.reason));
    }
    text
}

/// A progress bar on an interactive terminal, nothing otherwise.
pub(crate) fn progress_bar(ctx: &Context, len: usize) -> ProgressBar {
    if ctx.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(u64::try_from(len).unwrap_or(u64::MAX));
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {pos}/{len} [{elapsed_precise}, {per_sec}, eta {eta}]",
    ) {
        bar.set_style(style);
    }
    bar
}

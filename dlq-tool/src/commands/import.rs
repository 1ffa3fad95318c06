//! `import`: an export back into a dead-letter queue (default), or replayed
//! to the worker (`--replay`).
//!
//! The file is read twice, streamed both times: first to validate every
//! line and learn the event ids for the audit record (a malformed file
//! imports nothing), then to import in batches.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use std::collections::BTreeSet;

use fleet_broker::{DeadLetter, PublishOutcome, WorkerTopology};
use fleet_messages::Worker;
use serde_json::json;

use super::code;
use super::export::Record;
use crate::audit;
use crate::cli::ImportArgs;
use crate::context::{self, Context, usage};

/// Dead letters per broker round trip.
const BATCH: usize = 500;

pub(crate) async fn run(ctx: &Context, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let target = args.worker.as_deref().map(context::worker).transpose()?;
    let event_ids = validate(&args.file, target)?;
    let pool = ctx.database().await?;
    audit::migrate(&pool).await?;
    let broker = ctx.broker().await?;
    let description = json!({
        "file": args.file.display().to_string(),
        "worker": target.map(Worker::name),
        "replay": args.replay,
        "transport": ctx.transport().as_str(),
        "namespace": ctx.namespace().as_str(),
    });
    let audit_id = audit::begin(
        &pool,
        "import",
        &description,
        &event_ids.iter().map(String::as_str).collect::<Vec<_>>(),
        args.reason.as_deref(),
    )
    .await?;
    let total = event_ids.len();
    drop(event_ids);
    // Into a fresh environment the worker may never have run: declare its
    // topology as the worker itself would at start-up (idempotent), so that
    // its dead-letter queue and retry plumbing exist.
    for worker in workers(&args.file, target)? {
        let topology = WorkerTopology::for_worker(worker, &ctx.settings.retry);
        if let Err(error) = broker.declare_worker(&topology).await {
            eprintln!("warning: could not declare {worker}'s topology: {error}");
        }
    }

    let mut imported = 0u64;
    let mut failed = 0u64;
    let mut batch: Vec<DeadLetter> = Vec::with_capacity(BATCH);
    let mut batch_worker: Option<Worker> = None;
    let mut result: anyhow::Result<()> = Ok(());
    for line in lines(&args.file)? {
        let (number, text) = line?;
        let record: Record = serde_json::from_str(&text)
            .with_context(|| format!("{}:{number}", args.file.display()))?;
        let worker = match target {
            Some(worker) => worker,
            None => context::worker(&record.worker)?,
        };
        if (batch_worker.is_some_and(|current| current != worker) || batch.len() >= BATCH)
            && let Some(current) = batch_worker
        {
            result = flush(
                &broker,
                current,
                &mut batch,
                args.replay,
                &mut imported,
                &mut failed,
            )
            .await;
            if result.is_err() {
                break;
            }
        }
        batch_worker = Some(worker);
        batch.push(record.into_letter(worker.name())?);
    }
    if result.is_ok()
        && let Some(current) = batch_worker
    {
        result = flush(
            &broker,
            current,
            &mut batch,
            args.replay,
            &mut imported,
            &mut failed,
        )
        .await;
    }
    let document = json!({
        "records": total,
        "imported": imported,
        "failed": failed,
        "replay": args.replay,
        "error": result.as_ref().err().map(|error| format!("{error:#}")),
    });
    audit::finish(&pool, audit_id, &document, None).await?;
    result?;
    if ctx.json {
        ctx.print_json(&document)?;
    } else {
        let what = if args.replay {
            "replayed"
        } else {
            "restored as dead letters"
        };
        ctx.print(&format!(
            "{imported} of {total} records {what}; {failed} failed"
        ))?;
    }
    Ok(code(failed > 0))
}

async fn flush(
    broker: &fleet_broker::Broker,
    worker: Worker,
    batch: &mut Vec<DeadLetter>,
    replay: bool,
    imported: &mut u64,
    failed: &mut u64,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let outcomes = broker
        .import_dead_letters(worker.name(), batch, replay)
        .await
        .with_context(|| format!("importing into {worker}"))?;
    for (letter, outcome) in batch.iter().zip(&outcomes) {
        if *outcome == PublishOutcome::Confirmed {
            *imported += 1;
        } else {
            *failed += 1;
            eprintln!("error: {} not imported: {outcome:?}", letter.id);
        }
    }
    batch.clear();
    Ok(())
}

/// Every non-empty line with its number.
fn lines(path: &Path) -> anyhow::Result<impl Iterator<Item = anyhow::Result<(usize, String)>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let display = path.display().to_string();
    Ok(BufReader::new(file)
        .lines()
        .enumerate()
        .map(move |(index, line)| {
            line.map(|text| (index + 1, text))
                .with_context(|| format!("reading {display}"))
        })
        .filter(|line| !matches!(line, Ok((_, text)) if text.trim().is_empty())))
}

/// Checks every line (a bad file is bad usage: exit 2, nothing imported)
/// and returns the event ids.
fn validate(path: &Path, target: Option<Worker>) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for line in lines(path).map_err(|error| usage(format!("{error:#}")))? {
        let (number, text) = line.map_err(|error| usage(format!("{error:#}")))?;
        let record: Record = serde_json::from_str(&text).map_err(|error| {
            usage(format!(
                "{}:{number}: not an export record: {error}",
                path.display()
            ))
        })?;
        if target.is_none() {
            context::worker(&record.worker)
                .map_err(|error| usage(format!("{}:{number}: {error}", path.display())))?;
        }
        let id = record.id.clone();
        record
            .into_letter("")
            .map_err(|error| usage(format!("{}:{number}: {error}", path.display())))?;
        ids.push(id);
    }
    Ok(ids)
}

/// The workers an import writes to.
fn workers(path: &Path, target: Option<Worker>) -> anyhow::Result<BTreeSet<Worker>> {
    if let Some(worker) = target {
        return Ok(BTreeSet::from([worker]));
    }
    let mut workers = BTreeSet::new();
    for line in lines(path)? {
        let (_, text) = line?;
        let record: Record = serde_json::from_str(&text).context("re-reading the import")?;
        workers.insert(context::worker(&record.worker)?);
    }
    Ok(workers)
}

//! `export`: dead letters to JSON Lines, streamed (one record per line, one
//! dead letter in memory at a time). Nothing is removed: export before a
//! purge to keep a backup, or to move dead letters to another environment
//! with `import`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use chrono::{DateTime, Utc};
use fleet_broker::DeadLetter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::cli::ExportArgs;
use crate::context::{self, Context, usage};
use crate::filter::{self, Filter};

/// One line of an export.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) worker: String,
    #[serde(default)]
    pub(crate) transport: String,
    #[serde(default, rename = "type")]
    pub(crate) event_type: String,
    #[serde(default)]
    pub(crate) source: String,
    #[serde(default)]
    pub(crate) error_kind: String,
    #[serde(default)]
    pub(crate) error: String,
    #[serde(default)]
    pub(crate) attempts: u32,
    #[serde(default)]
    pub(crate) first_failed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(crate) last_failed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(crate) replica: Option<String>,
    #[serde(default)]
    pub(crate) replays: u32,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    /// The body as text, or hex when `body_encoding` is `hex` (not UTF-8):
    /// the bytes must survive the round trip unchanged.
    pub(crate) body: String,
    #[serde(default = "utf8")]
    pub(crate) body_encoding: String,
}

fn utf8() -> String {
    "utf8".to_owned()
}

impl Record {
    pub(crate) fn from_letter(letter: &DeadLetter, transport: &str) -> Self {
        let (body, body_encoding) = match std::str::from_utf8(&letter.body) {
            Ok(text) => (text.to_owned(), utf8()),
            Err(_) => (hex::encode(&letter.body), "hex".to_owned()),
        };
        Self {
            id: letter.id.clone(),
            worker: letter.worker.clone(),
            transport: transport.to_owned(),
            event_type: filter::event_type(letter),
            source: letter.source.clone(),
            error_kind: letter.error_kind.clone(),
            error: letter.error.clone(),
            attempts: letter.attempts,
            first_failed_at: letter.first_failed_at,
            last_failed_at: letter.last_failed_at,
            replica: letter.replica.clone(),
            replays: letter.replays,
            headers: letter.headers.clone(),
            body,
            body_encoding,
        }
    }

    /// Back to a dead letter for `worker`.
    pub(crate) fn into_letter(self, worker: &str) -> anyhow::Result<DeadLetter> {
        let body = match self.body_encoding.as_str() {
            "utf8" => self.body.into_bytes(),
            "hex" => hex::decode(&self.body).map_err(|error| anyhow!("bad hex body: {error}"))?,
            other => return Err(anyhow!("unknown body_encoding {other:?}")),
        };
        Ok(DeadLetter {
            id: self.id,
            position: String::new(),
            body,
            source: self.source,
            worker: worker.to_owned(),
            error_kind: self.error_kind,
            error: self.error,
            attempts: self.attempts,
            first_failed_at: self.first_failed_at,
            last_failed_at: self.last_failed_at,
            replica: self.replica,
            replays: self.replays,
            headers: self.headers,
        })
    }
}

pub(crate) async fn run(ctx: &Context, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let worker = context::worker(&args.worker)?;
    let filter = Filter::from_export(&args.selector)?;
    if ctx.json && args.output.is_none() {
        return Err(usage(
            "export writes JSON Lines to stdout; with --json, give --output FILE",
        ));
    }
    let broker = ctx.broker().await?;
    let writer: Box<dyn Write + Send> = match &args.output {
        Some(path) => {
            Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
        None => Box::new(std::io::stdout()),
    };
    let mut writer = BufWriter::new(writer);
    let transport = ctx.transport().as_str();
    let mut exported = 0u64;
    let mut write_error: Option<anyhow::Error> = None;
    broker
        .browse_dead_letters(worker.name(), &mut |letter| {
            if !filter.matches(&letter) {
                return ControlFlow::Continue(());
            }
            let record = Record::from_letter(&letter, transport);
            let written = serde_json::to_writer(&mut writer, &record)
                .map_err(anyhow::Error::from)
                .and_then(|()| writer.write_all(b"\n").map_err(anyhow::Error::from));
            match written {
                Ok(()) => {
                    exported += 1;
                    ControlFlow::Continue(())
                }
                Err(error) => {
                    write_error = Some(error);
                    ControlFlow::Break(())
                }
            }
        })
        .await
        .with_context(|| format!("reading the dead letters of {worker}"))?;
    if let Some(error) = write_error {
        return Err(error.context("writing the export"));
    }
    writer.flush().context("writing the export")?;
    drop(writer);
    match &args.output {
        Some(path) if ctx.json => ctx.print_json(&serde_json::json!({
            "worker": worker.name(),
            "exported": exported,
            "file": path.display().to_string(),
        }))?,
        Some(path) => ctx.print(&format!(
            "exported {exported} dead letters of {worker} to {}",
            path.display()
        ))?,
        None => eprintln!("exported {exported} dead letters of {worker}"),
    }
    Ok(ExitCode::SUCCESS)
}

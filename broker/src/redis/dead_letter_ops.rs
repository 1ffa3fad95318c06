//! Dead-letter operations on Redis Streams (see `crate::dead_letter_ops`).
//!
//! A dead-letter stream is addressable by entry id, so a selection is a list
//! of entry ids, and every operation works in pipelined batches:
//!
//! - browse: `XRANGE` pages up to the last entry that existed when it
//!   started (the watermark); reads never remove or reorder;
//! - replay: `XRANGE id id` for each selected entry, `XADD` to the worker's
//!   retry stream (only the worker's own group reads it), and `XDEL` of the
//!   entries whose `XADD` Redis acknowledged, in that order. A process killed
//!   in between leaves the dead letter *and* its replay: a duplicate, which
//!   the worker's inbox absorbs, never a loss;
//! - purge: `XDEL` of the selected entries;
//! - stop-early: new entries after the watermark whose `replays` is set and
//!   whose id was selected are replays failing again.

use std::ops::ControlFlow;

use deadpool_redis::redis::streams::StreamRangeReply;
use deadpool_redis::redis::{self, RedisResult};
use fleet_messages::names;
use tokio::time::Instant;

use super::fields::{ATTEMPTS, EVENT, REPLAYS, SOURCE, dead_letter_fields, decode_dead_letter};
use super::{RedisBroker, Shared};
use crate::dead_letter_ops::{
    BrowseSummary, DeadLetterSelection, ReplayOptions, ReplayReport, is_redead, pace,
};
use crate::{BrokerError, DeadLetter, DeliveryInfo, PublishOutcome, Transport};

/// Entries per `XRANGE` page while browsing.
const PAGE: usize = 500;
/// Dead letters per replay or purge round trip (at full speed).
const BATCH: usize = 200;

impl RedisBroker {
    pub(crate) async fn browse_dead_letters(
        &self,
        worker: &str,
        visit: &mut (dyn FnMut(DeadLetter) -> ControlFlow<()> + Send),
    ) -> Result<BrowseSummary, BrokerError> {
        let shared = &self.shared;
        let stream = names::dead_letter_stream(&shared.namespace, worker);
        let Some(end) = last_entry_id(shared, &stream).await? else {
            return Ok(BrowseSummary::default());
        };
        let mut summary = BrowseSummary {
            seen: 0,
            watermark: Some(end.clone()),
        };
        let mut start = "-".to_owned();
        loop {
            let page = range(shared, &stream, &start, &end, PAGE).await?;
            let Some(last) = page.ids.last().map(|entry| entry.id.clone()) else {
                break;
            };
            for entry in page.ids {
                summary.seen += 1;
                if visit(decode_dead_letter(&entry.id, worker, &entry.map)).is_break() {
                    return Ok(summary);
                }
            }
            if last == end {
                break;
            }
            start = format!("({last}");
        }
        Ok(summary)
    }

    /// Replays (`options` given) or purges (`None`) the selection.
    pub(crate) async fn take_dead_letters(
        &self,
        selection: &DeadLetterSelection,
        options: Option<&ReplayOptions>,
        progress: &mut (dyn FnMut(&ReplayReport) + Send),
    ) -> Result<ReplayReport, BrokerError> {
        let shared = &self.shared;
        let worker = selection.worker();
        let stream = names::dead_letter_stream(&shared.namespace, worker);
        let retry_stream = names::retry_stream(&shared.namespace, worker);
        let mut report = ReplayReport::new(selection.len());
        let rate = options.and_then(|options| options.rate);
        let threshold = options.and_then(|options| options.stop_after_redead);
        // A slow rate takes small batches, so that it is smooth.
        let batch = match rate {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(rate) if rate > 0.0 => ((rate / 10.0).ceil() as usize).clamp(1, BATCH),
            _ => BATCH,
        };
        let selected_ids = selection.id_counts();
        let mut watch_from = selection.watermark().unwrap_or("0-0").to_owned();
        let started = Instant::now();
        for chunk in selection.entries().chunks(batch) {
            if let Some(threshold) = threshold {
                match count_redead(shared, &stream, worker, &mut watch_from, &selected_ids).await {
                    Ok(redead) => report.redead += redead,
                    Err(error) => {
                        report.aborted = Some(error.to_string());
                        break;
                    }
                }
                if report.redead >= threshold {
                    report.stopped_early = true;
                    break;
                }
            }
            pace(started, report.done() + report.missing, rate).await;
            if let Err(error) = take_batch(
                shared,
                &stream,
                &retry_stream,
                worker,
                chunk,
                options.is_some(),
                &mut report,
            )
            .await
            {
                report.aborted = Some(error.to_string());
                break;
            }
            progress(&report);
        }
        progress(&report);
        Ok(report)
    }

    pub(crate) async fn import_dead_letters(
        &self,
        worker: &str,
        letters: &[DeadLetter],
        replay: bool,
    ) -> Result<Vec<PublishOutcome>, BrokerError> {
        if letters.is_empty() {
            return Ok(Vec::new());
        }
        let shared = &self.shared;
        let mut pipe = redis::pipe();
        for letter in letters {
            let cmd = if replay {
                replay_command(&names::retry_stream(&shared.namespace, worker), letter)
            } else {
                dead_letter_command(
                    &names::dead_letter_stream(&shared.namespace, worker),
                    worker,
                    letter,
                )
            };
            pipe.add_command(cmd);
        }
        let mut conn = shared.connection("XADD import").await?;
        let replies: Vec<RedisResult<String>> = pipe
            .ignore_errors()
            .query_async(&mut *conn)
            .await
            .map_err(|error| BrokerError::redis("XADD import", error))?;
        Ok(replies
            .into_iter()
            .map(|reply| match reply {
                Ok(_) => PublishOutcome::Confirmed,
                Err(error) => PublishOutcome::Failed(format!("XADD refused: {error}")),
            })
            .collect())
    }
}

/// One batch of a replay or purge: fetch, republish, then delete only what
/// was republished.
async fn take_batch(
    shared: &Shared,
    stream: &str,
    retry_stream: &str,
    worker: &str,
    chunk: &[crate::SelectedDeadLetter],
    replay: bool,
    report: &mut ReplayReport,
) -> Result<(), BrokerError> {
    let operation = format!("XRANGE {stream}");
    let mut conn = shared.connection(&operation).await?;
    let mut fetch = redis::pipe();
    for entry in chunk {
        fetch
            .cmd("XRANGE")
            .arg(stream)
            .arg(&entry.position)
            .arg(&entry.position);
    }
    let replies: Vec<StreamRangeReply> = fetch
        .query_async(&mut *conn)
        .await
        .map_err(|error| BrokerError::redis(&operation, error))?;
    let mut found = Vec::with_capacity(chunk.len());
    for reply in replies {
        match reply.ids.into_iter().next() {
            Some(entry) => found.push(decode_dead_letter(&entry.id, worker, &entry.map)),
            None => report.missing += 1,
        }
    }
    let mut confirmed: Vec<&str> = Vec::with_capacity(found.len());
    if replay {
        let mut publish = redis::pipe();
        for letter in &found {
            publish.add_command(replay_command(retry_stream, letter));
        }
        let operation = format!("XADD {retry_stream}");
        let replies: Vec<RedisResult<String>> = publish
            .ignore_errors()
            .query_async(&mut *conn)
            .await
            .map_err(|error| BrokerError::redis(&operation, error))?;
        for (letter, reply) in found.iter().zip(replies) {
            match reply {
                Ok(_) => confirmed.push(letter.position.as_str()),
                Err(error) => report.fail(&letter.id, format!("XADD refused: {error}")),
            }
        }
    } else {
        confirmed.extend(found.iter().map(|letter| letter.position.as_str()));
    }
    if confirmed.is_empty() {
        return Ok(());
    }
    let operation = format!("XDEL {stream}");
    let mut delete = redis::cmd("XDEL");
    delete.arg(stream);
    for position in &confirmed {
        delete.arg(*position);
    }
    delete
        .query_async::<u64>(&mut *conn)
        .await
        .map_err(|error| BrokerError::redis(&operation, error))?;
    report.replayed += u64::try_from(confirmed.len()).unwrap_or(u64::MAX);
    Ok(())
}

/// `XADD <retry stream> * event … source … attempts 0 replays n+1`: what
/// the worker's retry reader decodes (`EntryFields::decode` with
/// `is_retry`). No failure history: attempts restart at 1.
fn replay_command(retry_stream: &str, letter: &DeadLetter) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(retry_stream)
        .arg("*")
        .arg(EVENT)
        .arg(letter.body.as_slice())
        .arg(SOURCE)
        .arg(&letter.source)
        .arg(ATTEMPTS)
        .arg("0")
        .arg(REPLAYS)
        .arg(letter.replays.saturating_add(1).to_string());
    cmd
}

/// `XADD <dead-letter stream> * …`: the fields a worker writes, from an
/// exported dead letter.
fn dead_letter_command(stream: &str, worker: &str, letter: &DeadLetter) -> redis::Cmd {
    let failure = letter.failure();
    let info = DeliveryInfo {
        transport: Transport::Redis,
        worker: worker.to_owned(),
        source: letter.source.clone(),
        attempt: letter.attempts,
        message_id: None,
        previous_failure: None,
        replays: letter.replays,
        position: String::new(),
        replica: letter.replica.clone().unwrap_or_default(),
    };
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (name, value) in dead_letter_fields(&letter.body, &info, &letter.error_kind, &failure) {
        cmd.arg(name).arg(value);
    }
    cmd
}

/// Replays of the selection dead-lettered again since `watch_from`, which
/// moves to the last entry read.
async fn count_redead(
    shared: &Shared,
    stream: &str,
    worker: &str,
    watch_from: &mut String,
    selected: &std::collections::HashMap<&str, u32>,
) -> Result<u64, BrokerError> {
    let mut redead = 0;
    loop {
        let page = range(shared, stream, &format!("({watch_from}"), "+", PAGE).await?;
        let Some(last) = page.ids.last().map(|entry| entry.id.clone()) else {
            return Ok(redead);
        };
        for entry in &page.ids {
            let letter = decode_dead_letter(&entry.id, worker, &entry.map);
            if is_redead(letter.replays, &letter.id, selected) {
                redead += 1;
            }
        }
        *watch_from = last;
        if page.ids.len() < PAGE {
            return Ok(redead);
        }
    }
}

async fn last_entry_id(shared: &Shared, stream: &str) -> Result<Option<String>, BrokerError> {
    let operation = format!("XREVRANGE {stream}");
    let mut conn = shared.connection(&operation).await?;
    let reply: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut *conn)
        .await
        .map_err(|error| BrokerError::redis(&operation, error))?;
    Ok(reply.ids.into_iter().next().map(|entry| entry.id))
}

async fn range(
    shared: &Shared,
    stream: &str,
    start: &str,
    end: &str,
    count: usize,
) -> Result<StreamRangeReply, BrokerError> {
    let operation = format!("XRANGE {stream}");
    let mut conn = shared.connection(&operation).await?;
    redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(count)
        .query_async(&mut *conn)
        .await
        .map_err(|error| BrokerError::redis(&operation, error))
}

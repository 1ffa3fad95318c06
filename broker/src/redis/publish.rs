//! Publishing: one pipelined round trip of `XADD`s.

use deadpool_redis::redis::{self, RedisResult};
use fleet_messages::names;

use super::Shared;
use super::fields::EVENT;
use crate::{BrokerError, OutgoingMessage, PublishOutcome};

/// `XADD <ns>:events:<type> * event <body>` for every message, pipelined;
/// one outcome per message, in order. An `XADD` reply is Redis's
/// confirmation that the entry is stored (as durable as the server's
/// persistence settings make it).
///
/// Never trims (`MAXLEN`): trimming deletes entries still pending in a
/// lagging group. Retention is an operator's `XTRIM MINID` job.
pub(super) async fn publish_batch(
    shared: &Shared,
    messages: &[OutgoingMessage],
) -> Result<Vec<PublishOutcome>, BrokerError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for message in messages {
        pipe.cmd("XADD")
            .arg(names::event_stream(&shared.namespace, &message.event_type))
            .arg("*")
            .arg(EVENT)
            .arg(message.body.as_slice());
    }
    let mut conn = shared.connection("XADD").await?;
    // With `ignore_errors`, an entry Redis refused (out of memory, a key of
    // the wrong type) fails alone instead of failing the whole batch; only a
    // broken connection fails the query itself.
    let replies: Vec<RedisResult<String>> = pipe
        .ignore_errors()
        .query_async(&mut *conn)
        .await
        .map_err(|error| BrokerError::redis("XADD batch", error))?;
    if replies.len() != messages.len() {
        // Cannot happen with a well-behaved server; if it does, no reply can
        // be matched to its message, so none counts as confirmed.
        let reason = format!(
            "{} replies to a pipeline of {} XADDs",
            replies.len(),
            messages.len()
        );
        return Ok(vec![PublishOutcome::Failed(reason); messages.len()]);
    }
    Ok(replies
        .into_iter()
        .map(|reply| match reply {
            Ok(_entry_id) => PublishOutcome::Confirmed,
            Err(error) => PublishOutcome::Failed(format!("XADD refused: {error}")),
        })
        .collect())
}

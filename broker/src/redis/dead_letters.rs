//! Reading a worker's dead-letter stream. Reads only: `XRANGE` and `XLEN`
//! neither remove nor reorder entries, and touch no consumer group.

use deadpool_redis::redis::{self, streams::StreamRangeReply};
use fleet_messages::names;

use super::Shared;
use super::fields::decode_dead_letter;
use crate::{BrokerError, DeadLetter};

/// `XRANGE <ns>:dlq:<worker> - + COUNT <limit>`: the oldest `limit` dead
/// letters.
pub(super) async fn peek(
    shared: &Shared,
    worker: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, BrokerError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let stream = names::dead_letter_stream(&shared.namespace, worker);
    let operation = format!("XRANGE {stream}");
    let mut conn = shared.connection(&operation).await?;
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(limit)
        .query_async(&mut *conn)
        .await
        .map_err(|error| BrokerError::redis(&operation, error))?;
    Ok(reply
        .ids
        .iter()
        .map(|entry| decode_dead_letter(&entry.id, worker, &entry.map))
        .collect())
}

/// `XLEN <ns>:dlq:<worker>` (0 when the stream does not exist).
pub(super) async fn depth(shared: &Shared, worker: &str) -> Result<u64, BrokerError> {
    let stream = names::dead_letter_stream(&shared.namespace, worker);
    let operation = format!("XLEN {stream}");
    let mut conn = shared.connection(&operation).await?;
    redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut *conn)
        .await
        .map_err(|error| BrokerError::redis(&operation, error))
}

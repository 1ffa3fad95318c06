//! Consumer groups: the only topology Redis Streams has. Streams come into
//! being with their first entry or group (`MKSTREAM`); the retry schedule and
//! the dead-letter stream with their first member or entry.

use deadpool_redis::redis::{self, RedisError, RedisResult};
use fleet_messages::names;

use super::Shared;
use crate::{BrokerError, WorkerTopology};

/// Every stream `topology.worker` reads, retry stream last.
pub(super) fn worker_streams(shared: &Shared, topology: &WorkerTopology) -> Vec<String> {
    topology
        .event_types
        .iter()
        .map(|event_type| names::event_stream(&shared.namespace, event_type))
        .chain(std::iter::once(names::retry_stream(
            &shared.namespace,
            &topology.worker,
        )))
        .collect()
}

/// `XGROUP CREATE <stream> <group> 0 MKSTREAM` for every stream of the
/// worker, pipelined. Starting at `0` means a group created after events were
/// published still sees them (the inbox absorbs what was handled already).
pub(super) async fn declare_worker(
    shared: &Shared,
    topology: &WorkerTopology,
) -> Result<(), BrokerError> {
    let group = names::consumer_group(&topology.worker);
    let streams = worker_streams(shared, topology);
    let mut pipe = redis::pipe();
    for stream in &streams {
        pipe.add_command(create_group(stream, &group));
    }
    let mut conn = shared.connection("XGROUP CREATE").await?;
    let replies: Vec<RedisResult<redis::Value>> = pipe
        .ignore_errors()
        .query_async(&mut *conn)
        .await
        .map_err(|error| BrokerError::redis("XGROUP CREATE", error))?;
    for (stream, reply) in streams.iter().zip(replies) {
        if let Err(error) = reply
            && !is_busy_group(&error)
        {
            return Err(BrokerError::redis(
                &format!("XGROUP CREATE {stream} {group}"),
                error,
            ));
        }
    }
    Ok(())
}

/// Re-creates one group, after a reader or the reclaimer found it missing.
pub(super) async fn declare_group(
    shared: &Shared,
    stream: &str,
    group: &str,
) -> Result<(), BrokerError> {
    let operation = format!("XGROUP CREATE {stream} {group}");
    let mut conn = shared.connection(&operation).await?;
    match create_group(stream, group)
        .query_async::<redis::Value>(&mut *conn)
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if is_busy_group(&error) => Ok(()),
        Err(error) => Err(BrokerError::redis(&operation, error)),
    }
}

fn create_group(stream: &str, group: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM");
    cmd
}

/// The group exists already: what a declaration wants.
fn is_busy_group(error: &RedisError) -> bool {
    error.code() == Some("BUSYGROUP")
}

//! Removing what tests of earlier runs left on the shared servers.
//!
//! Test namespaces are `t<created unix secs><random>`; broker objects (queues,
//! exchanges, Redis keys) of namespaces older than [`STALE_AFTER`] belong to
//! finished or aborted runs. Without this, quorum queues pile up until
//! RabbitMQ runs out of file descriptors.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use deadpool_redis::redis;

/// No test runs this long.
const STALE_AFTER: Duration = Duration::from_secs(20 * 60);
/// At most one sweep per this interval across all test processes.
const SWEEP_EVERY: Duration = Duration::from_secs(5 * 60);
const STAMP: &str = "fleet-tests-broker-sweep";

/// The creation time of a test namespace at the start of `name`, if any.
fn created(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('t')?.get(..10)?;
    digits.parse().ok()
}

fn stale(name: &str, now: u64) -> bool {
    created(name).is_some_and(|created| now.saturating_sub(created) > STALE_AFTER.as_secs())
}

/// Sweeps stale test namespaces from RabbitMQ (through the management API,
/// when `RABBITMQ_MANAGEMENT_URL` is set) and Redis. Best effort: a failure
/// here never fails a test.
pub(crate) async fn sweep(redis_url: &str, now: u64) {
    let stamp = std::env::temp_dir().join(STAMP);
    if recently(&stamp) {
        return;
    }
    let _ = std::fs::write(&stamp, b"");
    if let Ok(management) = std::env::var("RABBITMQ_MANAGEMENT_URL") {
        let _ = tokio::task::spawn_blocking(move || sweep_rabbitmq(&management, now)).await;
    }
    sweep_redis(redis_url, now).await;
}

fn recently(stamp: &Path) -> bool {
    std::fs::metadata(stamp)
        .and_then(|metadata| metadata.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|age| age < SWEEP_EVERY)
}

fn sweep_rabbitmq(management: &str, now: u64) {
    for kind in ["queues", "exchanges"] {
        let Some(listing) = curl(&[
            "-sSf",
            &format!("{management}/api/{kind}?columns=name,vhost"),
        ]) else {
            return;
        };
        let Ok(objects) = serde_json::from_str::<Vec<serde_json::Value>>(&listing) else {
            return;
        };
        for object in objects {
            let (Some(name), Some(vhost)) = (object["name"].as_str(), object["vhost"].as_str())
            else {
                continue;
            };
            if stale(name, now) {
                let url = format!("{management}/api/{kind}/{}/{}", encode(vhost), encode(name));
                let _ = curl(&["-sSf", "-X", "DELETE", &url]);
            }
        }
    }
}

async fn sweep_redis(url: &str, now: u64) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("t[0-9]*")
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
        else {
            return;
        };
        let doomed: Vec<&String> = keys.iter().filter(|key| stale(key, now)).collect();
        if !doomed.is_empty() {
            let _: Result<i64, _> = redis::cmd("UNLINK")
                .arg(&doomed)
                .query_async(&mut connection)
                .await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

fn curl(args: &[&str]) -> Option<String> {
    let output = Command::new("curl")
        .args(["--max-time", "30"])
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_test_namespaces_are_stale() {
        let now = 1_800_000_000;
        assert!(stale("t1799990000abcdefgh.alpha-worker", now));
        assert!(stale("t1799990000abcdefgh:events:order.placed", now));
        assert!(!stale("t1799999990abcdefgh.alpha-worker", now), "recent");
        assert!(!stale("fleet.order-worker", now), "not a test namespace");
        assert!(!stale("tally", now));
    }
}

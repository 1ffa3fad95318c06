//! Stream entry fields and the retry schedule's member documents: pure
//! encoding and decoding, kept apart from I/O so that it can be unit-tested.
//!
//! Field names are part of the wire contract for the retry and dead-letter
//! streams (operators and `dlq-tool` read them), so they are spelled once,
//! here.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_redis::redis::Value;
use serde::{Deserialize, Serialize};

use crate::{DeadLetter, DeliveryInfo, Failure};

pub(super) const EVENT: &str = "event";
pub(super) const SOURCE: &str = "source";
pub(super) const WORKER: &str = "worker";
pub(super) const ATTEMPTS: &str = "attempts";
pub(super) const FIRST_FAILED_AT: &str = "first_failed_at";
pub(super) const LAST_FAILED_AT: &str = "last_failed_at";
pub(super) const LAST_ERROR: &str = "last_error";
pub(super) const ERROR_KIND: &str = "error_kind";
pub(super) const ERROR: &str = "error";
pub(super) const REPLICA: &str = "replica";
pub(super) const REPLAYS: &str = "replays";

/// The `encoding` a [`ScheduledRetry`] uses for a body that is not UTF-8.
pub(super) const HEX_ENCODING: &str = "hex";

/// Timestamps in fields: RFC 3339, UTC, milliseconds, so that they sort as
/// text and every language parses them.
pub(super) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// The bytes of one field value. Redis replies with bulk strings for stream
/// fields; the other variants only appear if a RESP3 server or a script
/// answered with them, and are rendered as text rather than dropped.
pub(super) fn value_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.as_bytes().to_vec()),
        Value::Int(number) => Some(number.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

fn field_text(fields: &HashMap<String, Value>, name: &str) -> Option<String> {
    fields
        .get(name)
        .and_then(value_bytes)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

fn field_number(fields: &HashMap<String, Value>, name: &str) -> Option<u32> {
    field_text(fields, name).and_then(|text| text.trim().parse().ok())
}

/// Every field but `event`, as text: the `headers` of a dead letter, and
/// what a malformed entry is reported with.
pub(super) fn headers(fields: &HashMap<String, Value>) -> BTreeMap<String, String> {
    fields
        .iter()
        .filter(|(name, _)| name.as_str() != EVENT)
        .filter_map(|(name, value)| {
            value_bytes(value)
                .map(|bytes| (name.clone(), String::from_utf8_lossy(&bytes).into_owned()))
        })
        .collect()
}

/// What one stream entry says about the event it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EntryFields {
    /// The `event` field, byte for byte; `None` if the entry has none (it
    /// was not written by the fleet, and is dead-lettered as malformed).
    pub(super) body: Option<Vec<u8>>,
    /// The event stream the event was first published to.
    pub(super) source: String,
    /// The failure history a retry entry carries.
    pub(super) previous_failure: Option<Failure>,
    pub(super) replays: u32,
}

impl EntryFields {
    /// Decodes an entry read from `stream`. Entries of event streams carry
    /// only `event` (and `replays` when `dlq-tool` replayed them): their
    /// source is the stream itself. Entries of the worker's retry stream
    /// (`is_retry`) also carry the original `source` and the failure history.
    ///
    /// Missing or unreadable metadata never prevents a delivery: the event
    /// matters more than its history, so defaults stand in.
    pub(super) fn decode(stream: &str, is_retry: bool, fields: &HashMap<String, Value>) -> Self {
        let body = fields.get(EVENT).and_then(value_bytes);
        let replays = field_number(fields, REPLAYS).unwrap_or(0);
        if !is_retry {
            return Self {
                body,
                source: stream.to_owned(),
                previous_failure: None,
                replays,
            };
        }
        // Without a source a retry can still be handled and retried (retries
        // go to the worker's own schedule); a replay of its dead letter then
        // goes to the retry stream, which only this worker reads.
        let source = field_text(fields, SOURCE)
            .filter(|source| !source.is_empty())
            .unwrap_or_else(|| stream.to_owned());
        let previous_failure = field_number(fields, ATTEMPTS).map(|attempts| {
            let last_failed_at = field_text(fields, LAST_FAILED_AT)
                .as_deref()
                .and_then(parse_timestamp)
                .unwrap_or_else(Utc::now);
            Failure {
                attempts,
                first_failed_at: field_text(fields, FIRST_FAILED_AT)
                    .as_deref()
                    .and_then(parse_timestamp)
                    .unwrap_or(last_failed_at),
                last_failed_at,
                last_error: field_text(fields, LAST_ERROR).unwrap_or_default(),
            }
        });
        Self {
            body,
            source,
            previous_failure,
            replays,
        }
    }

    /// The attempt number of this delivery: the failed attempts the entry
    /// carries plus how often Redis has delivered this entry (1 for a fresh
    /// read, more once it was reclaimed from a consumer that never settled
    /// it).
    pub(super) fn attempt(&self, times_delivered: u64) -> u32 {
        let previous = self
            .previous_failure
            .as_ref()
            .map_or(0, |failure| failure.attempts);
        let delivered = u32::try_from(times_delivered.max(1)).unwrap_or(u32::MAX);
        previous.saturating_add(delivered)
    }
}

/// The fields of a dead-letter stream entry, in a stable order.
pub(super) fn dead_letter_fields(
    body: &[u8],
    info: &DeliveryInfo,
    kind: &str,
    failure: &Failure,
) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (EVENT, body.to_vec()),
        (SOURCE, info.source.clone().into_bytes()),
        (WORKER, info.worker.clone().into_bytes()),
        (ERROR_KIND, kind.as_bytes().to_vec()),
        (ERROR, failure.last_error.clone().into_bytes()),
        (ATTEMPTS, failure.attempts.to_string().into_bytes()),
        (
            FIRST_FAILED_AT,
            timestamp(failure.first_failed_at).into_bytes(),
        ),
        (
            LAST_FAILED_AT,
            timestamp(failure.last_failed_at).into_bytes(),
        ),
        (REPLICA, info.replica.clone().into_bytes()),
        (REPLAYS, info.replays.to_string().into_bytes()),
    ]
}

/// Reads one dead-letter stream entry back. `worker` stands in for a
/// missing `worker` field (the stream belongs to that worker anyway).
pub(super) fn decode_dead_letter(
    entry_id: &str,
    worker: &str,
    fields: &HashMap<String, Value>,
) -> DeadLetter {
    let body = fields.get(EVENT).and_then(value_bytes).unwrap_or_default();
    DeadLetter {
        id: crate::dead_letter::dead_letter_id(None, &body),
        position: entry_id.to_owned(),
        source: field_text(fields, SOURCE).unwrap_or_default(),
        worker: field_text(fields, WORKER).unwrap_or_else(|| worker.to_owned()),
        error_kind: field_text(fields, ERROR_KIND).unwrap_or_default(),
        error: field_text(fields, ERROR).unwrap_or_default(),
        attempts: field_number(fields, ATTEMPTS).unwrap_or(0),
        first_failed_at: field_text(fields, FIRST_FAILED_AT)
            .as_deref()
            .and_then(parse_timestamp),
        last_failed_at: field_text(fields, LAST_FAILED_AT)
            .as_deref()
            .and_then(parse_timestamp),
        replica: field_text(fields, REPLICA).filter(|replica| !replica.is_empty()),
        replays: field_number(fields, REPLAYS).unwrap_or(0),
        headers: headers(fields),
        body,
    }
}

/// One member of a worker's retry schedule (a sorted set scored by due
/// time). The mover script decodes it with `cjson` and turns it into a retry
/// stream entry, so the field names here and in `scripts.rs` must agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ScheduledRetry {
    /// Makes every member unique: the same body failing twice must be
    /// scheduled twice, and a sorted set would merge equal members.
    pub(super) id: String,
    /// The body as text, or as lowercase hex when `encoding` is `hex`: JSON
    /// strings cannot hold arbitrary bytes, and a retry must not alter the
    /// event (a lossy conversion would turn it into different bytes).
    pub(super) event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) encoding: Option<String>,
    pub(super) source: String,
    pub(super) attempts: u32,
    pub(super) first_failed_at: String,
    pub(super) last_failed_at: String,
    pub(super) last_error: String,
    pub(super) replays: u32,
}

impl ScheduledRetry {
    pub(super) fn new(body: &[u8], info: &DeliveryInfo, failure: &Failure) -> Self {
        let (event, encoding) = match std::str::from_utf8(body) {
            Ok(text) => (text.to_owned(), None),
            Err(_) => (hex::encode(body), Some(HEX_ENCODING.to_owned())),
        };
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            event,
            encoding,
            source: info.source.clone(),
            attempts: failure.attempts,
            first_failed_at: timestamp(failure.first_failed_at),
            last_failed_at: timestamp(failure.last_failed_at),
            last_error: failure.last_error.clone(),
            replays: info.replays,
        }
    }

    /// The original body bytes (the inverse of the encoding in [`Self::new`]),
    /// for tests; the mover script does the same in Lua.
    #[cfg(test)]
    pub(super) fn body(&self) -> Option<Vec<u8>> {
        match self.encoding.as_deref() {
            None => Some(self.event.clone().into_bytes()),
            Some(HEX_ENCODING) => hex::decode(&self.event).ok(),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::Transport;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, Value> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), bulk(value)))
            .collect()
    }

    fn info(attempt: u32) -> DeliveryInfo {
        DeliveryInfo {
            transport: Transport::Redis,
            worker: "inventory-worker".to_owned(),
            source: "t1:events:order.placed".to_owned(),
            attempt,
            message_id: None,
            previous_failure: None,
            replays: 2,
            position: "t1:events:order.placed/1-0".to_owned(),
            replica: "r-1".to_owned(),
        }
    }

    fn failure() -> Failure {
        Failure {
            attempts: 3,
            first_failed_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap(),
            last_failed_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 9, 5).single().unwrap(),
            last_error: "database down".to_owned(),
        }
    }

    #[test]
    fn event_stream_entries_are_first_attempts_from_their_own_stream() {
        let entry =
            EntryFields::decode("t1:events:order.placed", false, &fields(&[("event", "{}")]));
        assert_eq!(entry.body.as_deref(), Some(&b"{}"[..]));
        assert_eq!(entry.source, "t1:events:order.placed");
        assert_eq!(entry.previous_failure, None);
        assert_eq!(entry.replays, 0);
        assert_eq!(entry.attempt(1), 1);
        // Reclaimed from a dead consumer: delivered a third time.
        assert_eq!(entry.attempt(3), 3);
        // A count of 0 cannot come from Redis; never report attempt 0.
        assert_eq!(entry.attempt(0), 1);
    }

    #[test]
    fn event_stream_entries_ignore_retry_metadata_but_honour_replays() {
        let entry = EntryFields::decode(
            "t1:events:order.placed",
            false,
            &fields(&[
                ("event", "{}"),
                ("replays", "4"),
                ("source", "elsewhere"),
                ("attempts", "9"),
            ]),
        );
        assert_eq!(entry.replays, 4);
        assert_eq!(entry.source, "t1:events:order.placed");
        assert_eq!(entry.attempt(1), 1);
    }

    #[test]
    fn retry_entries_carry_source_and_failure_history() {
        let entry = EntryFields::decode(
            "t1:retry:inventory-worker",
            true,
            &fields(&[
                ("event", "{\"id\":\"x\"}"),
                ("source", "t1:events:order.placed"),
                ("attempts", "2"),
                ("first_failed_at", "2026-01-02T03:04:05.000Z"),
                ("last_failed_at", "2026-01-02T03:09:05.250Z"),
                ("last_error", "timeout"),
                ("replays", "1"),
            ]),
        );
        assert_eq!(entry.source, "t1:events:order.placed");
        assert_eq!(entry.replays, 1);
        let previous = entry.previous_failure.clone().unwrap();
        assert_eq!(previous.attempts, 2);
        assert_eq!(previous.last_error, "timeout");
        assert_eq!(
            previous.first_failed_at,
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap()
        );
        assert_eq!(
            timestamp(previous.last_failed_at),
            "2026-01-02T03:09:05.250Z"
        );
        // Two failures so far, delivered once now: the third attempt.
        assert_eq!(entry.attempt(1), 3);
        assert_eq!(entry.attempt(2), 4);
    }

    #[test]
    fn retry_entries_with_missing_metadata_still_deliver() {
        let entry = EntryFields::decode(
            "t1:retry:w",
            true,
            &fields(&[("event", "{}"), ("attempts", "not a number")]),
        );
        assert_eq!(entry.source, "t1:retry:w");
        assert_eq!(entry.previous_failure, None);
        assert_eq!(entry.attempt(1), 1);

        let entry = EntryFields::decode("t1:retry:w", true, &fields(&[("attempts", "1")]));
        assert_eq!(entry.body, None);
        let previous = entry.previous_failure.unwrap();
        assert_eq!(previous.first_failed_at, previous.last_failed_at);
    }

    #[test]
    fn attempts_saturate_instead_of_overflowing() {
        let entry = EntryFields {
            body: None,
            source: String::new(),
            previous_failure: Some(Failure {
                attempts: u32::MAX,
                ..failure()
            }),
            replays: 0,
        };
        assert_eq!(entry.attempt(u64::MAX), u32::MAX);
    }

    #[test]
    fn dead_letter_fields_round_trip() {
        let body = br#"{"id":"0192f3a4-7b1c-7cc0-9a55-3f1e2d3c4b5a","type":"order.placed"}"#;
        let written = dead_letter_fields(body, &info(3), "handler", &failure());
        let names: Vec<&str> = written.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "event",
                "source",
                "worker",
                "error_kind",
                "error",
                "attempts",
                "first_failed_at",
                "last_failed_at",
                "replica",
                "replays"
            ]
        );
        let stored: HashMap<String, Value> = written
            .into_iter()
            .map(|(name, value)| (name.to_owned(), Value::BulkString(value)))
            .collect();
        let letter = decode_dead_letter("5-1", "other", &stored);
        assert_eq!(letter.id, "0192f3a4-7b1c-7cc0-9a55-3f1e2d3c4b5a");
        assert_eq!(letter.position, "5-1");
        assert_eq!(letter.body, body.to_vec());
        assert_eq!(letter.source, "t1:events:order.placed");
        assert_eq!(letter.worker, "inventory-worker");
        assert_eq!(letter.error_kind, "handler");
        assert_eq!(letter.error, "database down");
        assert_eq!(letter.attempts, 3);
        assert_eq!(letter.first_failed_at, Some(failure().first_failed_at));
        assert_eq!(letter.last_failed_at, Some(failure().last_failed_at));
        assert_eq!(letter.replica.as_deref(), Some("r-1"));
        assert_eq!(letter.replays, 2);
        assert!(!letter.headers.contains_key("event"));
        assert_eq!(
            letter.headers.get("error_kind").map(String::as_str),
            Some("handler")
        );
        assert_eq!(letter.headers.len(), 9);
    }

    #[test]
    fn dead_letters_of_unreadable_bodies_get_a_digest_identity() {
        let mut stored = fields(&[("error_kind", "poison")]);
        stored.insert("event".to_owned(), Value::BulkString(vec![0xff, 0xfe]));
        let letter = decode_dead_letter("1-0", "w", &stored);
        assert!(letter.id.starts_with("sha256:"));
        assert_eq!(letter.body, vec![0xff, 0xfe]);
        assert_eq!(letter.worker, "w");
        assert_eq!(letter.attempts, 0);
        assert_eq!(letter.first_failed_at, None);
        assert_eq!(letter.replica, None);
    }

    #[test]
    fn scheduled_retries_keep_text_bodies_as_text() {
        let retry = ScheduledRetry::new(b"{\"a\":\"\xc3\xa9\"}", &info(3), &failure());
        let json = serde_json::to_string(&retry).unwrap();
        assert!(!json.contains("encoding"));
        let back: ScheduledRetry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, retry);
        assert_eq!(back.body().unwrap(), b"{\"a\":\"\xc3\xa9\"}".to_vec());
        assert_eq!(back.attempts, 3);
        assert_eq!(back.source, "t1:events:order.placed");
        assert_eq!(back.first_failed_at, "2026-01-02T03:04:05.000Z");
        assert_eq!(back.replays, 2);
    }

    #[test]
    fn scheduled_retries_hex_encode_binary_bodies() {
        let body = [0x00, 0xff, b'{', 0x80];
        let retry = ScheduledRetry::new(&body, &info(1), &failure());
        assert_eq!(retry.encoding.as_deref(), Some("hex"));
        assert_eq!(retry.event, "00ff7b80");
        assert_eq!(retry.body().unwrap(), body.to_vec());
    }

    #[test]
    fn scheduled_retries_are_unique_members() {
        let first = ScheduledRetry::new(b"{}", &info(1), &failure());
        let second = ScheduledRetry::new(b"{}", &info(1), &failure());
        assert_ne!(
            serde_json::to_string(&first).unwrap(),
            serde_json::to_string(&second).unwrap()
        );
    }
}

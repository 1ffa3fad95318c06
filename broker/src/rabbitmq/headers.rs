//! The `x-fleet-*` headers that carry an event's failure history through
//! retry tiers and into its dead letter.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::Failure;

pub(crate) const SOURCE: &str = "x-fleet-source";
pub(crate) const WORKER: &str = "x-fleet-worker";
pub(crate) const ATTEMPTS: &str = "x-fleet-attempts";
pub(crate) const FIRST_FAILED_AT: &str = "x-fleet-first-failed-at";
pub(crate) const LAST_FAILED_AT: &str = "x-fleet-last-failed-at";
pub(crate) const ERROR: &str = "x-fleet-error";
pub(crate) const ERROR_KIND: &str = "x-fleet-error-kind";
pub(crate) const REPLICA: &str = "x-fleet-replica";
pub(crate) const REPLAYS: &str = "x-fleet-replays";
/// Set by quorum queues on redelivery: earlier deliveries of this very message.
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";

pub(crate) fn text(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        other => Some(value_text(other)),
    }
}

pub(crate) fn number(headers: Option<&FieldTable>, key: &str) -> Option<u64> {
    match headers?.inner().get(key)? {
        AMQPValue::ShortShortUInt(value) => Some(u64::from(*value)),
        AMQPValue::ShortUInt(value) => Some(u64::from(*value)),
        AMQPValue::LongUInt(value) => Some(u64::from(*value)),
        AMQPValue::ShortShortInt(value) => u64::try_from(*value).ok(),
        AMQPValue::ShortInt(value) => u64::try_from(*value).ok(),
        AMQPValue::LongInt(value) => u64::try_from(*value).ok(),
        AMQPValue::LongLongInt(value) => u64::try_from(*value).ok(),
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

fn time(headers: Option<&FieldTable>, key: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&text(headers, key)?)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

/// The failure history of a retried message, if it is one.
pub(crate) fn previous_failure(headers: Option<&FieldTable>) -> Option<Failure> {
    let attempts = u32::try_from(number(headers, ATTEMPTS)?).ok()?;
    let last_failed_at = time(headers, LAST_FAILED_AT)?;
    Some(Failure {
        attempts,
        first_failed_at: time(headers, FIRST_FAILED_AT).unwrap_or(last_failed_at),
        last_failed_at,
        last_error: text(headers, ERROR).unwrap_or_default(),
    })
}

/// The original headers minus everything a broker or an earlier failure
/// stamped: RabbitMQ 4 ignores client-set `x-death`, and stale failure
/// headers would contradict the new ones.
pub(crate) fn carried(headers: Option<&FieldTable>) -> FieldTable {
    let mut carried = FieldTable::default();
    if let Some(headers) = headers {
        for (key, value) in headers.inner() {
            let key_text = key.as_str();
            let stamped = key_text == "x-death"
                || key_text.starts_with("x-first-death-")
                || key_text.starts_with("x-last-death-")
                || key_text.starts_with("x-fleet-")
                || key_text == DELIVERY_COUNT;
            if !stamped {
                carried.insert(key.clone(), value.clone());
            }
        }
    }
    carried
}

pub(crate) fn put_text(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
}

pub(crate) fn put_number(headers: &mut FieldTable, key: &str, value: u32) {
    headers.insert(key.into(), AMQPValue::LongLongInt(i64::from(value)));
}

/// Stamps a failure history (and where the event came from) on `headers`.
pub(crate) fn put_failure(headers: &mut FieldTable, source: &str, failure: &Failure, replays: u32) {
    put_text(headers, SOURCE, source);
    put_number(headers, ATTEMPTS, failure.attempts);
    put_text(
        headers,
        FIRST_FAILED_AT,
        &failure.first_failed_at.to_rfc3339(),
    );
    put_text(
        headers,
        LAST_FAILED_AT,
        &failure.last_failed_at.to_rfc3339(),
    );
    put_text(headers, ERROR, &failure.last_error);
    if replays > 0 {
        put_number(headers, REPLAYS, replays);
    }
}

/// Every header as text, for operators.
pub(crate) fn as_text(headers: Option<&FieldTable>) -> BTreeMap<String, String> {
    headers
        .map(|headers| {
            headers
                .inner()
                .iter()
                .map(|(key, value)| (key.as_str().to_owned(), value_text(value)))
                .collect()
        })
        .unwrap_or_default()
}

fn value_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(value) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
        AMQPValue::ShortString(value) => value.as_str().to_owned(),
        AMQPValue::FieldTable(table) => {
            let entries: Vec<String> = table
                .inner()
                .iter()
                .map(|(key, value)| format!("{}={}", key.as_str(), value_text(value)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        AMQPValue::FieldArray(array) => {
            let items: Vec<String> = array.as_slice().iter().map(value_text).collect();
            format!("[{}]", items.join(", "))
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_round_trips_through_headers() {
        let failure = Failure {
            attempts: 3,
            first_failed_at: "2026-11-21T10:00:00Z".parse().unwrap(),
            last_failed_at: "2026-11-21T10:05:00Z".parse().unwrap(),
            last_error: "database unavailable".to_owned(),
        };
        let mut headers = FieldTable::default();
        put_failure(&mut headers, "order.placed", &failure, 0);
        assert_eq!(previous_failure(Some(&headers)), Some(failure));
        assert_eq!(
            text(Some(&headers), SOURCE).as_deref(),
            Some("order.placed")
        );
    }

    #[test]
    fn carried_headers_drop_broker_and_failure_stamps() {
        let mut headers = FieldTable::default();
        put_text(&mut headers, "traceparent", "00-abc");
        put_text(&mut headers, "x-first-death-reason", "expired");
        put_text(&mut headers, ERROR, "old");
        headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        let carried = carried(Some(&headers));
        assert_eq!(carried.inner().len(), 1);
        assert!(carried.contains_key("traceparent"));
    }
}

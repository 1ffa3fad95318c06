use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The failure history an event carries from one attempt to the next (in
/// AMQP headers or stream fields), so that its dead letter can say when it
/// first failed and how often.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Failed attempts so far.
    pub attempts: u32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub last_error: String,
}

/// One dead letter as stored in a worker's dead-letter queue or stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Identity across peeks and replays: the event id; where the body cannot
    /// be read, the AMQP `message_id`; where there is none, `sha256:<hex>`.
    pub id: String,
    /// Where it sits in its queue or stream (stream entry id, or the 0-based
    /// position in the queue at the time it was read).
    pub position: String,
    /// The original message body, byte for byte.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// The routing key (RabbitMQ) or stream (Redis) it was first consumed from.
    pub source: String,
    pub worker: String,
    pub error_kind: String,
    pub error: String,
    pub attempts: u32,
    pub first_failed_at: Option<DateTime<Utc>>,
    pub last_failed_at: Option<DateTime<Utc>>,
    /// The replica that dead-lettered it.
    pub replica: Option<String>,
    /// How often an operator has replayed it already.
    pub replays: u32,
    /// Every transport header or stream field, as text, for inspection.
    pub headers: BTreeMap<String, String>,
}

impl DeadLetter {
    /// The failure record to write back when this dead letter is imported:
    /// missing times default to now (and the first to the last).
    pub(crate) fn failure(&self) -> Failure {
        let last_failed_at = self.last_failed_at.unwrap_or_else(Utc::now);
        Failure {
            attempts: self.attempts,
            first_failed_at: self.first_failed_at.unwrap_or(last_failed_at),
            last_failed_at,
            last_error: self.error.clone(),
        }
    }
}

/// The contract's dead-letter identity rule.
pub(crate) fn dead_letter_id(message_id: Option<&str>, body: &[u8]) -> String {
    if let Some(id) = fleet_messages::peek_id(body) {
        return id;
    }
    if let Some(id) = message_id.filter(|id| !id.is_empty()) {
        return id.to_owned();
    }
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_prefers_event_id_then_message_id_then_digest() {
        let body = br#"{"id":"0192f3a4-7b1c-7cc0-9a55-3f1e2d3c4b5a","type":"x"}"#;
        assert_eq!(
            dead_letter_id(Some("other"), body),
            "0192f3a4-7b1c-7cc0-9a55-3f1e2d3c4b5a"
        );
        assert_eq!(dead_letter_id(Some("m-1"), b"not json"), "m-1");
        let digest = dead_letter_id(None, b"not json");
        assert!(digest.starts_with("sha256:"));
        assert_eq!(digest.len(), "sha256:".len() + 64);
        assert_eq!(digest, dead_letter_id(Some(""), b"not json"));
    }
}

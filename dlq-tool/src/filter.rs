//! Which dead letters a command applies to, and the error fingerprint that
//! groups them.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use fleet_broker::DeadLetter;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::{ExportSelector, PurgeSelector, Selector, TimeArgs};
use crate::context::usage;

/// A predicate over dead letters, built from the command line.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub(crate) ids: Option<HashSet<String>>,
    pub(crate) event_type: Option<String>,
    pub(crate) error_contains: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) until: Option<DateTime<Utc>>,
}

impl Filter {
    pub(crate) fn from_selector(selector: &Selector) -> anyhow::Result<Self> {
        Self::build(
            &selector.ids,
            selector.event_type.clone(),
            selector.error_contains.clone(),
            selector.group.clone(),
        )
    }

    pub(crate) fn from_purge(selector: &PurgeSelector) -> anyhow::Result<Self> {
        Self::build(&selector.ids, None, None, selector.group.clone())
    }

    pub(crate) fn from_export(selector: &ExportSelector) -> anyhow::Result<Self> {
        Self::build(
            &selector.ids,
            selector.event_type.clone(),
            selector.error_contains.clone(),
            selector.group.clone(),
        )
    }

    fn build(
        ids: &[String],
        event_type: Option<String>,
        error_contains: Option<String>,
        group: Option<String>,
    ) -> anyhow::Result<Self> {
        let ids = if ids.is_empty() {
            None
        } else {
            for id in ids {
                validate_id(id)?;
            }
            Some(ids.iter().cloned().collect())
        };
        if let Some(group) = &group
            && !(group.len() == FINGERPRINT_LEN && group.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(usage(format!(
                "invalid --group {group:?}: expected the {FINGERPRINT_LEN}-hex-digit fingerprint \
                 shown by `dlq-tool stats <worker> --by error`"
            )));
        }
        Ok(Self {
            ids,
            event_type,
            error_contains,
            group: group.map(|group| group.to_ascii_lowercase()),
            since: None,
            until: None,
        })
    }

    pub(crate) fn with_time(mut self, time: &TimeArgs) -> anyhow::Result<Self> {
        self.since = time.since.as_deref().map(parse_time).transpose()?;
        self.until = time.until.as_deref().map(parse_time).transpose()?;
        Ok(self)
    }

    pub(crate) fn matches(&self, letter: &DeadLetter) -> bool {
        if let Some(ids) = &self.ids
            && !ids.contains(&letter.id)
        {
            return false;
        }
        if let Some(event_type) = &self.event_type
            && &self::event_type(letter) != event_type
        {
            return false;
        }
        if let Some(text) = &self.error_contains
            && !letter.error.contains(text.as_str())
        {
            return false;
        }
        if let Some(group) = &self.group
            && &fingerprint(&letter.error_kind, &letter.error) != group
        {
            return false;
        }
        let failed_at = letter.last_failed_at.or(letter.first_failed_at);
        if let Some(since) = self.since
            && failed_at.is_none_or(|at| at < since)
        {
            return false;
        }
        if let Some(until) = self.until
            && failed_at.is_none_or(|at| at >= until)
        {
            return false;
        }
        true
    }

    /// The selection as recorded in the audit trail.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let mut ids: Option<Vec<&String>> = self.ids.as_ref().map(|ids| ids.iter().collect());
        if let Some(ids) = ids.as_mut() {
            ids.sort();
        }
        json!({
            "ids": ids,
            "all": self.ids.is_none() && self.event_type.is_none()
                && self.error_contains.is_none() && self.group.is_none(),
            "type": self.event_type,
            "error_contains": self.error_contains,
            "group": self.group,
            "since": self.since,
            "until": self.until,
        })
    }
}

/// Ids on the command line: an event id (UUID), `sha256:` and 64 hex
/// digits, or an AMQP message id (visible ASCII, at most 255 bytes).
pub(crate) fn validate_id(id: &str) -> anyhow::Result<()> {
    if let Some(digest) = id.strip_prefix("sha256:") {
        if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        return Err(usage(format!(
            "malformed id {id:?}: sha256: must be followed by 64 hex digits"
        )));
    }
    if id.is_empty() || id.len() > 255 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(usage(format!(
            "malformed id {id:?}: expected an event id (UUID), a message id, or sha256:<hex>"
        )));
    }
    Ok(())
}

fn parse_time(text: &str) -> anyhow::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| {
            usage(format!(
                "invalid time {text:?}: {error} (expected RFC 3339, e.g. 2026-11-21T10:15:30Z)"
            ))
        })
}

/// The event type of a dead letter: the envelope's `type`, else the routing
/// key (RabbitMQ) or the type suffix of the event stream (Redis).
pub(crate) fn event_type(letter: &DeadLetter) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&letter.body)
        && let Some(event_type) = value.get("type").and_then(|t| t.as_str())
    {
        return event_type.to_owned();
    }
    match letter.source.rsplit_once(":events:") {
        Some((_, event_type)) => event_type.to_owned(),
        None => letter.source.clone(),
    }
}

/// Hex digits of a fingerprint: short enough to type, long enough not to
/// collide among the groups of one queue.
pub(crate) const FINGERPRINT_LEN: usize = 12;

/// The group an error belongs to: the kind plus the message with its
/// variable parts (uuids, hex, numbers) replaced, hashed.
pub(crate) fn fingerprint(kind: &str, error: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    hasher.update([0]);
    hasher.update(normalize(error).as_bytes());
    let digest = hex::encode(hasher.finalize());
    digest[..FINGERPRINT_LEN].to_owned()
}

/// Replaces uuids by `<uuid>`, hex strings (8+ digits, or `0x…`) by `<hex>`,
/// and numbers by `<n>`, so that "order 42 failed" and "order 7 failed" are
/// one group.
pub(crate) fn normalize(message: &str) -> String {
    let chars: Vec<char> = message.chars().collect();
    let mut out = String::with_capacity(message.len());
    let mut i = 0;
    while i < chars.len() {
        if is_uuid_at(&chars, i) {
            out.push_str("<uuid>");
            i += 36;
            continue;
        }
        if chars[i].is_ascii_alphanumeric() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push_str(&normalize_word(&word));
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

fn normalize_word(word: &str) -> String {
    let is_hex = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = word.strip_prefix("0x")
        && is_hex(rest)
    {
        return "<hex>".to_owned();
    }
    if word.len() >= 8 && is_hex(word) && word.bytes().any(|b| b.is_ascii_digit()) {
        return "<hex>".to_owned();
    }
    let mut out = String::with_capacity(word.len());
    let mut in_number = false;
    for c in word.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push_str("<n>");
                in_number = true;
            }
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

fn is_uuid_at(chars: &[char], at: usize) -> bool {
    if at + 36 > chars.len() {
        return false;
    }
    if at > 0 && chars[at - 1].is_ascii_alphanumeric() {
        return false;
    }
    chars[at..at + 36].iter().enumerate().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => *c == '-',
        _ => c.is_ascii_hexdigit(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_parts_are_normalized() {
        assert_eq!(
            normalize("order 0192f3a4-7b1c-7cc0-9a55-3f1e2d3c4b5a failed after 42 ms"),
            "order <uuid> failed after <n> ms"
        );
        assert_eq!(
            normalize("hash deadbeef12 at 0x1f, row42"),
            "hash <hex> at <hex>, row<n>"
        );
        assert_eq!(normalize("no digits here"), "no digits here");
    }

    #[test]
    fn fingerprints_group_by_kind_and_normalized_message() {
        let a = fingerprint("handler", "timeout after 30 ms on order 1");
        let b = fingerprint("handler", "timeout after 5 ms on order 99");
        let c = fingerprint("poison", "timeout after 5 ms on order 99");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), FINGERPRINT_LEN);
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("0192f3a4-7b1c-7cc0-9a55-3f1e2d3c4b5a").is_ok());
        assert!(validate_id(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(validate_id("sha256:xyz").is_err());
        assert!(validate_id("has space").is_err());
        assert!(validate_id("").is_err());
    }
}

//! The contract's JSON shapes and the human tables.

use chrono::{DateTime, Utc};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use fleet_broker::DeadLetter;
use serde_json::{Value, json};

use crate::filter::event_type;

/// The original envelope as JSON, or the body as a string when it is not
/// JSON (the contract's `event`).
pub(crate) fn event_value(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// `peek --json`: the contract's fields, plus where the dead letter came from.
pub(crate) fn peek_json(letter: &DeadLetter) -> Value {
    json!({
        "id": letter.id,
        "type": event_type(letter),
        "error_kind": letter.error_kind,
        "error": letter.error,
        "attempts": letter.attempts,
        "first_failed_at": letter.first_failed_at,
        "last_failed_at": letter.last_failed_at,
        "event": event_value(&letter.body),
        "source": letter.source,
        "replays": letter.replays,
        "position": letter.position,
    })
}

/// `show --json`: everything known about one dead letter.
pub(crate) fn full_json(letter: &DeadLetter) -> Value {
    json!({
        "id": letter.id,
        "type": event_type(letter),
        "worker": letter.worker,
        "position": letter.position,
        "source": letter.source,
        "error_kind": letter.error_kind,
        "error": letter.error,
        "attempts": letter.attempts,
        "first_failed_at": letter.first_failed_at,
        "last_failed_at": letter.last_failed_at,
        "replica": letter.replica,
        "replays": letter.replays,
        "headers": letter.headers,
        "event": event_value(&letter.body),
    })
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

/// `text` cut to `max` characters, with an ellipsis when cut: tables stay
/// readable with long errors and ids; `show` prints the whole value.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    let single_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if single_line.chars().count() <= max {
        return single_line;
    }
    let mut cut: String = single_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

pub(crate) fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |at| at.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// "3d 4h", "12m 5s": how long ago.
pub(crate) fn age(at: Option<DateTime<Utc>>) -> String {
    let Some(at) = at else {
        return "-".to_owned();
    };
    let seconds = (Utc::now() - at).num_seconds().max(0);
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    );
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_short_text_and_marks_cuts() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a\nb", 10), "a b");
        assert_eq!(truncate("0123456789abc", 5), "0123…");
    }

    #[test]
    fn non_json_bodies_are_strings() {
        assert_eq!(
            event_value(b"not json"),
            Value::String("not json".to_owned())
        );
        assert_eq!(event_value(br#"{"a":1}"#)["a"], 1);
    }
}

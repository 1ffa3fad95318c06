//! Why an event is poison.
//!
//! Every way a body can fail to be a valid event of the contract is one variant
//! of [`DecodeError`]. A decode error is never transient: the same bytes fail
//! the same way on every delivery, so the consuming worker dead-letters the
//! event at once instead of retrying it (contract, "Envelope"). The variant's
//! [`kind`](DecodeError::kind) becomes the dead letter's `error_kind` and its
//! `Display` the dead letter's `error`, so both are written for an operator
//! reading `dlq-tool peek`: they name the attribute (or data field) and the rule
//! it broke.

use crate::events::EventType;

/// An event body that is not a valid event of the wire contract.
///
/// Strings quoted from the body (`found`, parts of `reason`) are cut to a
/// short excerpt, because they end up in dead-letter metadata.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The body is larger than the configured limit; it was not parsed at all.
    #[error("event body is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },

    /// The body is not a JSON object: invalid UTF-8, a syntax error, truncated,
    /// nested too deeply, empty, or a JSON value other than an object.
    #[error("event body is not a JSON object: {reason}")]
    NotJson { reason: String },

    /// A required CloudEvents attribute is absent (or `null`).
    #[error("required attribute `{attribute}` is missing")]
    MissingAttribute { attribute: &'static str },

    /// An attribute is present but its value breaks the contract.
    #[error("attribute `{attribute}` is invalid: {reason}")]
    InvalidAttribute {
        attribute: &'static str,
        reason: String,
    },

    /// `specversion` is a string other than `"1.0"`.
    #[error("attribute `specversion` is {found:?}, only \"1.0\" is supported")]
    UnsupportedSpecVersion { found: String },

    /// `type` is a string that names none of the contract's event types.
    #[error("attribute `type` is {found:?}, which is not an event type of the contract")]
    UnknownType { found: String },

    /// `data` does not match the schema of the event's type; `reason` starts
    /// with the path of the offending field (`items[0].quantity: …`).
    #[error("attribute `data` does not match the {event_type} schema: {reason}")]
    InvalidData {
        event_type: EventType,
        reason: String,
    },
}

impl DecodeError {
    /// Every [`DecodeError::kind`], for checks that must cover them all.
    pub const KINDS: [&'static str; 7] = [
        "too_large",
        "not_json",
        "missing_attribute",
        "invalid_attribute",
        "unsupported_specversion",
        "unknown_type",
        "invalid_data",
    ];

    /// A stable snake_case name of the variant, recorded as the `error_kind`
    /// of dead letters. Operators and scripts match on it, so it never changes
    /// within v1 of the contract.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotJson { .. } => "not_json",
            DecodeError::MissingAttribute { .. } => "missing_attribute",
            DecodeError::InvalidAttribute { .. } => "invalid_attribute",
            DecodeError::UnsupportedSpecVersion { .. } => "unsupported_specversion",
            DecodeError::UnknownType { .. } => "unknown_type",
            DecodeError::InvalidData { .. } => "invalid_data",
        }
    }
}

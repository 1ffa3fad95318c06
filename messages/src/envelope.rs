//! The CloudEvents 1.0 envelope every event travels in (structured JSON mode).
//!
//! [`Envelope`] holds the attributes the fleet uses and the typed
//! [`EventData`]. [`Envelope::encode`] produces the exact JSON of the contract;
//! [`Envelope::decode`] is the single gate every consumed body passes through
//! and classifies everything it refuses as a [`DecodeError`] (poison).
//!
//! Decoding checks in a fixed order (size, UTF-8, JSON, object, `specversion`,
//! required attributes, optional attributes, `data`), so that the same body
//! always yields the same error, whichever worker or replica reads it, and the
//! cheapest checks protect the expensive ones: an oversized body is refused
//! before it is parsed.
//!
//! What is deliberately *not* kept: extension attributes other than
//! `correlationid` and `causationid`, and `datacontenttype` (always
//! `application/json` once validated). Re-encoding therefore normalises an
//! event; it never changes its meaning.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::DecodeError;
use crate::events::{EventData, EventType};
use crate::fields::{excerpt, json_kind, parse_uuid, quoted};

/// The only CloudEvents `specversion` of contract v1.
pub const SPEC_VERSION: &str = "1.0";

/// The media type of `data`.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// The media type of a whole envelope body (the AMQP `content_type`).
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// Default largest body accepted, in bytes (contract: 256 KiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 256 * 1024;

/// One event: CloudEvents attributes plus typed data.
///
/// The `type` attribute is not a field: it is derived from [`data`](Envelope::data),
/// so the two can never disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Unique per event; the deduplication key. UUIDv7 for events the fleet creates.
    pub id: Uuid,
    /// The emitter, e.g. `"order-worker"`. Never empty.
    pub source: String,
    /// The order id the event is about, as a string. Never empty.
    pub subject: String,
    /// When the event happened.
    pub time: DateTime<Utc>,
    /// The order id shared by every event of one saga.
    pub correlation_id: Uuid,
    /// The `id` of the event that caused this one; `None` on `order.submitted`.
    pub causation_id: Option<Uuid>,
    /// The typed `data`, which also determines the `type` attribute.
    pub data: EventData,
}

impl Envelope {
    /// The `type` attribute.
    pub fn event_type(&self) -> EventType {
        self.data.event_type()
    }

    /// A new event with a fresh UUIDv7 id, the current time and the data's
    /// order id as subject.
    ///
    /// The time is truncated to milliseconds, the precision of the contract's
    /// example and of most consumers' clocks, so that an event's time reads
    /// the same in every language that decodes it.
    pub fn new(
        source: impl Into<String>,
        data: EventData,
        correlation_id: Uuid,
        causation_id: Option<Uuid>,
    ) -> Envelope {
        Envelope {
            id: Uuid::now_v7(),
            source: source.into(),
            subject: data.order_id().to_string(),
            time: Utc::now().trunc_subsecs(3),
            correlation_id,
            causation_id,
            data,
        }
    }

    /// A new event caused by `parent`: same saga (correlation id), with
    /// `parent.id` as causation id.
    pub fn caused_by(parent: &Envelope, source: impl Into<String>, data: EventData) -> Envelope {
        Envelope::new(source, data, parent.correlation_id, Some(parent.id))
    }

    /// The envelope as a JSON object, with the contract's attribute names.
    /// `causationid` is omitted when absent.
    pub fn to_json(&self) -> Value {
        // Inserted in the contract's order, which is the order on the wire
        // whenever serde_json's `preserve_order` feature is enabled.
        let mut object = Map::new();
        let mut put = |name: &str, value: Value| {
            object.insert(name.to_owned(), value);
        };
        put("specversion", Value::from(SPEC_VERSION));
        put("id", Value::String(self.id.to_string()));
        put("source", Value::from(self.source.as_str()));
        put("type", Value::from(self.event_type().as_str()));
        put("subject", Value::from(self.subject.as_str()));
        // `AutoSi` keeps the precision of the time as received (0, 3, 6 or 9
        // digits), so decode -> encode does not alter it; `true` writes `Z`.
        put(
            "time",
            Value::String(self.time.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        );
        put("datacontenttype", Value::from(DATA_CONTENT_TYPE));
        put(
            "correlationid",
            Value::String(self.correlation_id.to_string()),
        );
        if let Some(causation_id) = self.causation_id {
            put("causationid", Value::String(causation_id.to_string()));
        }
        put("data", self.data.to_json());
        Value::Object(object)
    }

    /// The body to publish: the UTF-8 JSON of [`to_json`](Envelope::to_json).
    pub fn encode(&self) -> Vec<u8> {
        // `Value`'s `Display` is serde_json's compact serializer writing into a
        // `String`, which cannot fail, unlike `to_vec`, whose `Result` exists
        // for fallible `Serialize` impls and writers.
        self.to_json().to_string().into_bytes()
    }

    /// Decodes a body, refusing anything that is not a valid event of the
    /// contract or is larger than `max_bytes`.
    ///
    /// An attribute that is `null` counts as absent, as the CloudEvents JSON
    /// format prescribes; an attribute of another wrong JSON type is invalid.
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Envelope, DecodeError> {
        if bytes.len() > max_bytes {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        let mut object = parse_object(bytes)?;

        let spec_version = required_str(&object, "specversion")?;
        if spec_version != SPEC_VERSION {
            return Err(DecodeError::UnsupportedSpecVersion {
                found: excerpt(spec_version),
            });
        }

        let id = required_uuid(&object, "id")?;
        let source = required_non_empty(&object, "source")?.to_owned();
        let type_name = required_str(&object, "type")?;
        let event_type: EventType = type_name.parse().map_err(|_| DecodeError::UnknownType {
            found: excerpt(type_name),
        })?;
        let subject = required_non_empty(&object, "subject")?.to_owned();
        let time = required_time(&object, "time")?;
        let correlation_id = required_uuid(&object, "correlationid")?;
        match present(&object, "data") {
            None => return Err(DecodeError::MissingAttribute { attribute: "data" }),
            Some(Value::Object(_)) => {}
            Some(other) => {
                return Err(DecodeError::InvalidAttribute {
                    attribute: "data",
                    reason: format!("must be a JSON object, found {}", json_kind(other)),
                });
            }
        }

        let causation_id = match present(&object, "causationid") {
            None => None,
            Some(value) => Some(uuid_value("causationid", value)?),
        };
        if let Some(value) = present(&object, "datacontenttype") {
            check_data_content_type(value)?;
        }

        // Taken out rather than cloned: `data` is most of the body.
        let data = object.remove("data").unwrap_or_default();
        let data = EventData::from_json(event_type, data)?;

        Ok(Envelope {
            id,
            source,
            subject,
            time,
            correlation_id,
            causation_id,
            data,
        })
    }
}

/// The `id` attribute of `bytes` if it is a JSON object whose `id` is a
/// string, without any other validation.
///
/// Dead letters are identified by their event id even when the rest of the
/// envelope is poison; only when this returns `None` do tools fall back to the
/// message id or a digest of the body.
pub fn peek_id(bytes: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(bytes).ok()? {
        Value::Object(mut object) => match object.remove("id")? {
            Value::String(id) => Some(id),
            _ => None,
        },
        _ => None,
    }
}

/// Size is checked by the caller; this classifies every other way a body can
/// fail to be a JSON object.
fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    let not_json = |reason: String| DecodeError::NotJson { reason };
    let text = std::str::from_utf8(bytes)
        .map_err(|err| not_json(format!("invalid UTF-8 at byte {}", err.valid_up_to())))?;
    if text.trim().is_empty() {
        return Err(not_json("empty body".to_owned()));
    }
    // serde_json refuses nesting deeper than 128 levels, which bounds both the
    // stack used here and the cost of dropping the value.
    let value: Value = serde_json::from_str(text).map_err(|err| {
        let message = err.to_string();
        not_json(if message.starts_with("recursion limit exceeded") {
            format!("nested too deeply: {message}")
        } else if err.is_eof() {
            format!("truncated: {message}")
        } else {
            format!("syntax error: {message}")
        })
    })?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(not_json(format!(
            "top level is {}, not an object",
            json_kind(&other)
        ))),
    }
}

/// The attribute `name`, treating `null` as absent.
fn present<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|value| !value.is_null())
}

fn required<'a>(
    object: &'a Map<String, Value>,
    attribute: &'static str,
) -> Result<&'a Value, DecodeError> {
    present(object, attribute).ok_or(DecodeError::MissingAttribute { attribute })
}

fn string_value<'a>(attribute: &'static str, value: &'a Value) -> Result<&'a str, DecodeError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(DecodeError::InvalidAttribute {
            attribute,
            reason: format!("must be a string, found {}", json_kind(other)),
        }),
    }
}

fn required_str<'a>(
    object: &'a Map<String, Value>,
    attribute: &'static str,
) -> Result<&'a str, DecodeError> {
    string_value(attribute, required(object, attribute)?)
}

fn required_non_empty<'a>(
    object: &'a Map<String, Value>,
    attribute: &'static str,
) -> Result<&'a str, DecodeError> {
    let s = required_str(object, attribute)?;
    if s.is_empty() {
        return Err(DecodeError::InvalidAttribute {
            attribute,
            reason: "must not be empty".to_owned(),
        });
    }
    Ok(s)
}

fn uuid_value(attribute: &'static str, value: &Value) -> Result<Uuid, DecodeError> {
    let s = string_value(attribute, value)?;
    parse_uuid(s).ok_or_else(|| DecodeError::InvalidAttribute {
        attribute,
        reason: format!("must be a hyphenated UUID, found {}", quoted(s)),
    })
}

fn required_uuid(
    object: &Map<String, Value>,
    attribute: &'static str,
) -> Result<Uuid, DecodeError> {
    uuid_value(attribute, required(object, attribute)?)
}

/// RFC 3339 with any offset, normalised to UTC (re-encoded with `Z`).
fn required_time(
    object: &Map<String, Value>,
    attribute: &'static str,
) -> Result<DateTime<Utc>, DecodeError> {
    let s = required_str(object, attribute)?;
    DateTime::parse_from_rfc3339(s)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|err| DecodeError::InvalidAttribute {
            attribute,
            reason: format!("must be an RFC 3339 timestamp, found {}: {err}", quoted(s)),
        })
}

/// `application/json`, in any case, optionally with parameters
/// (`application/json; charset=utf-8`): the media type is what matters.
fn check_data_content_type(value: &Value) -> Result<(), DecodeError> {
    let attribute = "datacontenttype";
    let s = string_value(attribute, value)?;
    let media_type = s.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case(DATA_CONTENT_TYPE) {
        Ok(())
    } else {
        Err(DecodeError::InvalidAttribute {
            attribute,
            reason: format!("must be {DATA_CONTENT_TYPE:?}, found {}", quoted(s)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{OrderConfirmed, StockReleased};

    fn confirmed() -> EventData {
        OrderConfirmed {
            order_id: Uuid::now_v7(),
            total_cents: 1200,
        }
        .into()
    }

    #[test]
    fn new_fills_id_subject_and_millisecond_time() {
        let data = confirmed();
        let order_id = data.order_id();
        let envelope = Envelope::new("order-worker", data, order_id, None);
        assert_eq!(envelope.id.get_version_num(), 7);
        assert_eq!(envelope.subject, order_id.to_string());
        assert_eq!(envelope.time.timestamp_subsec_nanos() % 1_000_000, 0);
        assert_eq!(envelope.event_type(), EventType::OrderConfirmed);
    }

    #[test]
    fn caused_by_links_the_saga() {
        let parent = Envelope::new("order-worker", confirmed(), Uuid::now_v7(), None);
        let order_id = parent.data.order_id();
        let child = Envelope::caused_by(
            &parent,
            "inventory-worker",
            StockReleased { order_id }.into(),
        );
        assert_eq!(child.correlation_id, parent.correlation_id);
        assert_eq!(child.causation_id, Some(parent.id));
        assert_ne!(child.id, parent.id);
        assert_eq!(child.source, "inventory-worker");
    }

    #[test]
    fn causationid_is_omitted_when_absent() {
        let envelope = Envelope::new("order-worker", confirmed(), Uuid::now_v7(), None);
        let json = envelope.to_json();
        assert!(json.get("causationid").is_none());
        let decoded = Envelope::decode(&envelope.encode(), DEFAULT_MAX_EVENT_BYTES).unwrap();
        assert_eq!(decoded, envelope);
    }

    #[test]
    fn content_type_parameters_are_allowed() {
        let value = serde_json::json!("application/json; charset=utf-8");
        assert_eq!(check_data_content_type(&value), Ok(()));
        let value = serde_json::json!("Application/JSON");
        assert_eq!(check_data_content_type(&value), Ok(()));
        let value = serde_json::json!("text/plain");
        assert!(check_data_content_type(&value).is_err());
        let value = serde_json::json!("application/jsonx");
        assert!(check_data_content_type(&value).is_err());
    }
}

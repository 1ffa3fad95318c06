//! Reading JSON objects field by field, with the path of every error.
//!
//! The event schemas are decoded by hand through this helper rather than with
//! derived `Deserialize` impls, because a dead letter is only useful if its
//! reason says *where* the event broke its schema (`items[0].quantity: must be
//! at least 1`), and serde's derived errors do not carry a path. Everything here
//! is crate-private: the public surface is `EventData::from_json` and
//! `Envelope::decode`.

use serde_json::{Map, Value};
use uuid::Uuid;

/// Longest excerpt of untrusted input quoted in an error, in characters.
///
/// Error texts travel into dead-letter headers and operator tooling; quoting a
/// 200 KiB string from a hostile event would bloat every one of them.
const EXCERPT_CHARS: usize = 64;

/// `s` cut to [`EXCERPT_CHARS`] characters, marked with `…` when cut.
pub(crate) fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// `s` as a quoted, escaped and bounded excerpt, for error messages.
pub(crate) fn quoted(s: &str) -> String {
    format!("{:?}", excerpt(s))
}

/// The JSON type of `value`, with its article, for "found …" messages.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a UUID in its canonical hyphenated form (36 characters, either case).
///
/// `Uuid::try_parse` alone also accepts the simple, braced and `urn:uuid:`
/// forms. Event ids are deduplication keys and are compared as strings by
/// tools that cannot decode the envelope (`peek_id`), so the contract's one
/// textual form is the only one accepted.
pub(crate) fn parse_uuid(s: &str) -> Option<Uuid> {
    if s.len() == 36 {
        Uuid::try_parse(s).ok()
    } else {
        None
    }
}

/// A closed set of values carried on the wire as snake_case strings.
pub(crate) trait WireEnum: Sized + Copy + 'static {
    /// Every value, in declaration order.
    const VARIANTS: &'static [Self];

    /// The wire spelling.
    fn wire(self) -> &'static str;

    /// The value spelled `s`, if any.
    fn from_wire(s: &str) -> Option<Self> {
        Self::VARIANTS.iter().copied().find(|v| v.wire() == s)
    }

    /// `"a", "b" or "c"`, for error messages.
    fn expected() -> String {
        let names: Vec<String> = Self::VARIANTS
            .iter()
            .map(|v| format!("{:?}", v.wire()))
            .collect();
        match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

/// A JSON object being decoded, and the path that leads to it.
///
/// Errors are plain `String`s of the form `<path>: <reason>`; the caller wraps
/// them into `DecodeError::InvalidData` together with the event type.
#[derive(Debug)]
pub(crate) struct Fields<'a> {
    object: &'a Map<String, Value>,
    /// Path of this object followed by a dot (`items[2].`), or empty at the root.
    prefix: String,
}

impl<'a> Fields<'a> {
    /// Opens `value`, found at `path` (empty for the root), as an object.
    pub(crate) fn open(value: &'a Value, path: &str) -> Result<Self, String> {
        match value {
            Value::Object(object) => Ok(Fields {
                object,
                prefix: if path.is_empty() {
                    String::new()
                } else {
                    format!("{path}.")
                },
            }),
            other => {
                let reason = format!("must be a JSON object, found {}", json_kind(other));
                Err(if path.is_empty() {
                    reason
                } else {
                    format!("{path}: {reason}")
                })
            }
        }
    }

    /// An error about the field `name` of this object.
    pub(crate) fn error(&self, name: &str, reason: impl std::fmt::Display) -> String {
        format!("{}{name}: {reason}", self.prefix)
    }

    /// The full path of this object's field `name` (`items`, `order.items`).
    fn nested_path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The field `name`; absence is a shape error. `null` is returned as is and
    /// reported by the typed getters as a wrong type, because the schemas have
    /// no nullable fields.
    fn get(&self, name: &str) -> Result<&'a Value, String> {
        self.object
            .get(name)
            .ok_or_else(|| self.error(name, "missing required field"))
    }

    pub(crate) fn string(&self, name: &str) -> Result<String, String> {
        match self.get(name)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.error(
                name,
                format_args!("must be a string, found {}", json_kind(other)),
            )),
        }
    }

    pub(crate) fn uuid(&self, name: &str) -> Result<Uuid, String> {
        match self.get(name)? {
            Value::String(s) => parse_uuid(s).ok_or_else(|| {
                self.error(name, format_args!("must be a UUID, found {}", quoted(s)))
            }),
            other => Err(self.error(
                name,
                format_args!("must be a UUID string, found {}", json_kind(other)),
            )),
        }
    }

    /// An integer that fits in `i64`. `1.0` is not an integer: producers of
    /// this contract write integers, and accepting floats would let `1.5`
    /// through as well.
    pub(crate) fn int(&self, name: &str) -> Result<i64, String> {
        match self.get(name)? {
            Value::Number(n) => n.as_i64().ok_or_else(|| {
                self.error(
                    name,
                    format_args!("must be an integer within the signed 64-bit range, found {n}"),
                )
            }),
            other => Err(self.error(
                name,
                format_args!("must be an integer, found {}", json_kind(other)),
            )),
        }
    }

    pub(crate) fn one_of<T: WireEnum>(&self, name: &str) -> Result<T, String> {
        match self.get(name)? {
            Value::String(s) => T::from_wire(s).ok_or_else(|| {
                self.error(
                    name,
                    format_args!("must be {}, found {}", T::expected(), quoted(s)),
                )
            }),
            other => Err(self.error(
                name,
                format_args!("must be a string, found {}", json_kind(other)),
            )),
        }
    }

    /// An array of objects, each read by `read` with its own path (`items[0]`).
    pub(crate) fn array_of<T>(
        &self,
        name: &str,
        read: impl Fn(&Fields<'_>) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        match self.get(name)? {
            Value::Array(elements) => elements
                .iter()
                .enumerate()
                .map(|(index, element)| {
                    let path = format!("{}[{index}]", self.nested_path(name));
                    read(&Fields::open(element, &path)?)
                })
                .collect(),
            other => Err(self.error(
                name,
                format_args!("must be an array, found {}", json_kind(other)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn excerpt_bounds_long_input_on_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt("short"), "short");
    }

    #[test]
    fn only_the_hyphenated_uuid_form_is_accepted() {
        let hyphenated = "0192f3a4-7b1c-7cc0-9a55-3f1e2d3c4b5a";
        assert!(parse_uuid(hyphenated).is_some());
        assert!(parse_uuid(&hyphenated.to_uppercase()).is_some());
        assert!(parse_uuid(&hyphenated.replace('-', "")).is_none());
        assert!(parse_uuid(&format!("{{{hyphenated}}}")).is_none());
        assert!(parse_uuid(&format!("urn:uuid:{hyphenated}")).is_none());
        assert!(parse_uuid("0192f3a4-7b1c-7cc0-9a55-3f1e2d3c4b5g").is_none());
    }

    #[test]
    fn errors_carry_the_path() {
        let value = json!({"items": [{"quantity": 1}, {"quantity": "two"}]});
        let fields = Fields::open(&value, "").unwrap();
        let err = fields
            .array_of("items", |item| item.int("quantity"))
            .unwrap_err();
        assert_eq!(err, "items[1].quantity: must be an integer, found a string");

        let err = fields.string("missing").unwrap_err();
        assert_eq!(err, "missing: missing required field");

        let value = json!({"items": [3]});
        let fields = Fields::open(&value, "").unwrap();
        let err = fields.array_of("items", |item| item.int("x")).unwrap_err();
        assert_eq!(err, "items[0]: must be a JSON object, found a number");
    }

    #[test]
    fn floats_are_not_integers() {
        let value = json!({"n": 1.0, "big": u64::MAX});
        let fields = Fields::open(&value, "").unwrap();
        assert!(fields.int("n").is_err());
        assert!(fields.int("big").is_err());
    }
}

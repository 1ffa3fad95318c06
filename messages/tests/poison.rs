//! Poison: every way a body can break the contract, with the exact
//! `DecodeError` variant, its stable `kind()`, and a message that names the
//! attribute (or data field) so an operator reading the dead letter knows
//! what to fix.

// Test helpers outside `#[test]` functions panic on purpose: a failure here
// is a failed test, and clippy's in-test exemption does not reach them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

use fleet_messages::{
    DEFAULT_MAX_EVENT_BYTES, DecodeError, Envelope, EventData, EventType, peek_id,
};
use serde_json::{Value, json};

const ORDER: &str = "5b3c0d7e-2f0a-4f7e-9a1b-8d2c6e4f1a00";
const EVENT_ID: &str = "0192f3a4-7b1c-7cc0-9a55-3f1e2d3c4b53";

/// A valid `stock.reserved` envelope to break in one place at a time.
fn valid() -> Value {
    json!({
        "specversion": "1.0",
        "id": EVENT_ID,
        "source": "inventory-worker",
        "type": "stock.reserved",
        "subject": ORDER,
        "time": "2026-11-21T10:15:30.123Z",
        "datacontenttype": "application/json",
        "correlationid": ORDER,
        "causationid": "0192f3a4-7b1c-7cc0-9a55-3f1e2d3c4b51",
        "data": {
            "order_id": ORDER,
            "customer_id": "cust-4711",
            "items": [{"sku": "SKU-RED-MUG", "quantity": 2, "unit_price_cents": 1250}],
            "total_cents": 2500
        }
    })
}

fn with(attribute: &str, value: Value) -> Value {
    let mut envelope = valid();
    envelope[attribute] = value;
    envelope
}

fn without(attribute: &str) -> Value {
    let mut envelope = valid();
    envelope.as_object_mut().unwrap().remove(attribute);
    envelope
}

fn decode_bytes(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    Envelope::decode(bytes, DEFAULT_MAX_EVENT_BYTES)
}

fn decode(value: &Value) -> Result<Envelope, DecodeError> {
    decode_bytes(value.to_string().as_bytes())
}

/// Decodes `value`, expecting an error of `kind` whose message contains `mention`.
fn poison(value: &Value, kind: &str, mention: &str) -> DecodeError {
    poison_bytes(value.to_string().as_bytes(), kind, mention)
}

fn poison_bytes(bytes: &[u8], kind: &str, mention: &str) -> DecodeError {
    let err = decode_bytes(bytes).expect_err("decoded poison");
    assert_eq!(err.kind(), kind, "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(mention),
        "message {message:?} does not mention {mention:?}"
    );
    err
}

fn not_json_reason(err: DecodeError) -> String {
    match err {
        DecodeError::NotJson { reason } => reason,
        other => panic!("expected NotJson, got {other:?}"),
    }
}

fn invalid_data_reason(err: DecodeError, event_type: EventType) -> String {
    match err {
        DecodeError::InvalidData {
            event_type: found,
            reason,
        } => {
            assert_eq!(found, event_type);
            reason
        }
        other => panic!("expected InvalidData, got {other:?}"),
    }
}

#[test]
fn the_base_sample_is_valid() {
    let envelope = decode(&valid()).unwrap();
    assert_eq!(envelope.event_type(), EventType::StockReserved);
}

// --- too_large ---------------------------------------------------------------

#[test]
fn over_the_size_limit() {
    let body = valid().to_string().into_bytes();
    let limit = body.len() - 1;
    let err = Envelope::decode(&body, limit).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLarge {
            size: body.len(),
            limit
        }
    );
    assert_eq!(err.kind(), "too_large");
    assert!(err.to_string().contains(&limit.to_string()));
    assert!(
        Envelope::decode(&body, body.len()).is_ok(),
        "the limit is inclusive"
    );
}

#[test]
fn size_is_checked_before_anything_else() {
    let body = vec![0xff; DEFAULT_MAX_EVENT_BYTES + 1];
    let err = decode_bytes(&body).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLarge {
            size: DEFAULT_MAX_EVENT_BYTES + 1,
            limit: DEFAULT_MAX_EVENT_BYTES
        }
    );
}

// --- not_json ----------------------------------------------------------------

#[test]
fn not_json_at_all() {
    let err = poison_bytes(b"hello, world", "not_json", "not a JSON object");
    assert!(not_json_reason(err).starts_with("syntax error"));
}

#[test]
fn invalid_utf8() {
    let err = poison_bytes(b"{\"id\": \"\xff\xfe\"}", "not_json", "UTF-8");
    assert_eq!(not_json_reason(err), "invalid UTF-8 at byte 8");
}

#[test]
fn truncated_json() {
    let body = valid().to_string();
    let err = poison_bytes(&body.as_bytes()[..body.len() / 2], "not_json", "truncated");
    assert!(not_json_reason(err).starts_with("truncated"));
}

#[test]
fn empty_body() {
    for body in [&b""[..], b"   \n\t"] {
        let err = poison_bytes(body, "not_json", "empty body");
        assert_eq!(not_json_reason(err), "empty body");
    }
}

#[test]
fn deep_nesting() {
    let arrays = "[".repeat(10_000);
    let err = poison_bytes(arrays.as_bytes(), "not_json", "nested too deeply");
    assert!(not_json_reason(err).starts_with("nested too deeply"));

    // Also when the nesting hides inside an otherwise valid envelope.
    let mut inside = valid().to_string();
    inside.pop();
    inside.push_str(&format!(r#","x":{}{}}}"#, "[".repeat(200), "]".repeat(200)));
    poison_bytes(inside.as_bytes(), "not_json", "nested too deeply");
}

#[test]
fn top_level_not_an_object() {
    for (body, found) in [
        ("[1, 2]", "an array"),
        ("\"event\"", "a string"),
        ("42", "a number"),
        ("null", "null"),
    ] {
        let err = poison_bytes(body.as_bytes(), "not_json", found);
        assert_eq!(
            not_json_reason(err),
            format!("top level is {found}, not an object")
        );
    }
}

#[test]
fn trailing_garbage() {
    let body = format!("{} {{}}", valid());
    poison_bytes(body.as_bytes(), "not_json", "trailing");
}

// --- missing_attribute -------------------------------------------------------

#[test]
fn missing_each_required_attribute() {
    for attribute in [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "correlationid",
        "data",
    ] {
        let err = poison(
            &without(attribute),
            "missing_attribute",
            &format!("`{attribute}`"),
        );
        assert_eq!(err, DecodeError::MissingAttribute { attribute });

        // `null` counts as absent (CloudEvents JSON format).
        let err = poison(
            &with(attribute, Value::Null),
            "missing_attribute",
            attribute,
        );
        assert_eq!(err, DecodeError::MissingAttribute { attribute });
    }
}

#[test]
fn optional_attributes_may_be_absent_or_null() {
    for attribute in ["causationid", "datacontenttype"] {
        assert!(decode(&without(attribute)).is_ok(), "{attribute} absent");
        assert!(
            decode(&with(attribute, Value::Null)).is_ok(),
            "{attribute} null"
        );
    }
    assert_eq!(decode(&without("causationid")).unwrap().causation_id, None);
}

// --- invalid_attribute -------------------------------------------------------

fn invalid(value: &Value, attribute: &'static str) -> String {
    let err = poison(value, "invalid_attribute", &format!("`{attribute}`"));
    match err {
        DecodeError::InvalidAttribute {
            attribute: found,
            reason,
        } => {
            assert_eq!(found, attribute);
            reason
        }
        other => panic!("expected InvalidAttribute, got {other:?}"),
    }
}

#[test]
fn id_not_a_uuid() {
    let reason = invalid(&with("id", json!("order-42")), "id");
    assert_eq!(reason, "must be a hyphenated UUID, found \"order-42\"");

    // Only the canonical textual form: ids are compared as strings elsewhere.
    invalid(&with("id", json!(EVENT_ID.replace('-', ""))), "id");
    invalid(&with("id", json!(format!("urn:uuid:{EVENT_ID}"))), "id");
}

#[test]
fn attribute_of_the_wrong_json_type() {
    let reason = invalid(&with("id", json!(42)), "id");
    assert_eq!(reason, "must be a string, found a number");
    invalid(&with("source", json!(["order-worker"])), "source");
    invalid(&with("type", json!({"name": "stock.reserved"})), "type");
    invalid(&with("subject", json!(true)), "subject");
    invalid(&with("time", json!(1_763_720_130)), "time");
    invalid(&with("specversion", json!(1.0)), "specversion");
    invalid(&with("causationid", json!(7)), "causationid");
    invalid(&with("datacontenttype", json!(1)), "datacontenttype");
}

#[test]
fn empty_source_or_subject() {
    assert_eq!(
        invalid(&with("source", json!("")), "source"),
        "must not be empty"
    );
    assert_eq!(
        invalid(&with("subject", json!("")), "subject"),
        "must not be empty"
    );
}

#[test]
fn time_not_rfc3339() {
    for time in [
        "2026-11-21 10:15",
        "yesterday",
        "2026-11-21T10:15:30",
        "1763720130",
    ] {
        let reason = invalid(&with("time", json!(time)), "time");
        assert!(
            reason.starts_with("must be an RFC 3339 timestamp"),
            "{reason}"
        );
    }
}

#[test]
fn time_with_an_offset_is_normalised_to_utc() {
    let envelope = decode(&with("time", json!("2026-11-21T11:15:30.123+01:00"))).unwrap();
    assert_eq!(
        envelope.to_json()["time"],
        json!("2026-11-21T10:15:30.123Z")
    );
}

#[test]
fn correlation_and_causation_ids_must_be_uuids() {
    invalid(&with("correlationid", json!("not-a-uuid")), "correlationid");
    invalid(&with("causationid", json!("not-a-uuid")), "causationid");
}

#[test]
fn datacontenttype_must_be_json() {
    let reason = invalid(
        &with("datacontenttype", json!("text/plain")),
        "datacontenttype",
    );
    assert!(reason.contains("application/json"), "{reason}");
    assert!(
        decode(&with(
            "datacontenttype",
            json!("application/json; charset=utf-8")
        ))
        .is_ok()
    );
}

#[test]
fn data_not_an_object() {
    let reason = invalid(&with("data", json!("{\"order_id\": 1}")), "data");
    assert_eq!(reason, "must be a JSON object, found a string");
    invalid(&with("data", json!([])), "data");
}

// --- unsupported_specversion -------------------------------------------------

#[test]
fn other_specversion() {
    let err = poison(
        &with("specversion", json!("0.3")),
        "unsupported_specversion",
        "`specversion`",
    );
    assert_eq!(
        err,
        DecodeError::UnsupportedSpecVersion {
            found: "0.3".into()
        }
    );
}

#[test]
fn specversion_is_checked_before_other_attributes() {
    let mut envelope = with("specversion", json!("2.0"));
    envelope["id"] = json!("bad");
    poison(&envelope, "unsupported_specversion", "2.0");
}

// --- unknown_type ------------------------------------------------------------

#[test]
fn unknown_type() {
    let err = poison(
        &with("type", json!("order.shipped")),
        "unknown_type",
        "`type`",
    );
    assert_eq!(
        err,
        DecodeError::UnknownType {
            found: "order.shipped".into()
        }
    );
    // Case matters: routing keys and stream names are case-sensitive.
    poison(
        &with("type", json!("Stock.Reserved")),
        "unknown_type",
        "Stock.Reserved",
    );
}

#[test]
fn quoted_input_is_bounded() {
    let huge = "x".repeat(100_000);
    let err = decode(&with("type", json!(huge))).unwrap_err();
    assert!(err.to_string().len() < 300, "{err}");
}

// --- invalid_data ------------------------------------------------------------

#[test]
fn data_of_the_wrong_shape() {
    let mut envelope = valid();
    envelope["data"]["total_cents"] = json!("2500");
    let err = poison(&envelope, "invalid_data", "`data`");
    assert_eq!(
        invalid_data_reason(err, EventType::StockReserved),
        "total_cents: must be an integer, found a string"
    );

    let mut envelope = valid();
    envelope["data"]
        .as_object_mut()
        .unwrap()
        .remove("customer_id");
    let err = poison(&envelope, "invalid_data", "customer_id");
    assert_eq!(
        invalid_data_reason(err, EventType::StockReserved),
        "customer_id: missing required field"
    );

    // Data of another type under this type.
    let envelope = with(
        "data",
        json!({"order_id": ORDER, "template": "order_confirmed"}),
    );
    poison(&envelope, "invalid_data", "stock.reserved");
}

#[test]
fn stock_reserved_with_negative_quantity() {
    let mut envelope = valid();
    envelope["data"]["items"][0]["quantity"] = json!(-1);
    let err = poison(&envelope, "invalid_data", "items[0].quantity");
    assert_eq!(
        err,
        DecodeError::InvalidData {
            event_type: EventType::StockReserved,
            reason: "items[0].quantity: must be at least 1, found -1".into()
        }
    );
}

#[test]
fn ranges_are_schema_for_fleet_events() {
    let cases = [
        (
            json!(0),
            "/items/0/quantity",
            "items[0].quantity: must be at least 1",
        ),
        (
            json!(-1),
            "/items/0/unit_price_cents",
            "items[0].unit_price_cents: must be at least 0",
        ),
        (json!(-1), "/total_cents", "total_cents: must be at least 0"),
        (json!([]), "/items", "items: must not be empty"),
    ];
    for (bad, pointer, expected) in cases {
        let mut envelope = valid();
        *envelope["data"].pointer_mut(pointer).unwrap() = bad;
        let reason = invalid_data_reason(decode(&envelope).unwrap_err(), EventType::StockReserved);
        assert!(reason.starts_with(expected), "{reason}");
    }
}

#[test]
fn unknown_data_fields_are_ignored() {
    let mut envelope = valid();
    envelope["data"]["gift_wrap"] = json!(true);
    envelope["data"]["items"][0]["colour"] = json!("red");
    envelope["traceparent"] = json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    let decoded = decode(&envelope).unwrap();
    assert_eq!(decoded, decode(&valid()).unwrap());
}

// --- order.submitted: shape only ---------------------------------------------

fn submitted(items: Value) -> Value {
    let mut envelope = without("causationid");
    envelope["type"] = json!("order.submitted");
    envelope["source"] = json!("storefront");
    envelope["data"] = json!({"order_id": ORDER, "customer_id": "cust-4711", "items": items});
    envelope
}

#[test]
fn business_invalid_submissions_are_not_poison() {
    for items in [
        json!([]),
        json!([{"sku": "SKU-RED-MUG", "quantity": 0, "unit_price_cents": 1250}]),
        json!([{"sku": "SKU-RED-MUG", "quantity": -3, "unit_price_cents": 1250}]),
        json!([{"sku": "SKU-RED-MUG", "quantity": 1, "unit_price_cents": -1}]),
        json!([{"sku": "", "quantity": 1, "unit_price_cents": 1}]),
        json!([{"sku": "SKU-RED-MUG", "quantity": 1_000_000_000_000_i64, "unit_price_cents": 1}]),
    ] {
        let envelope =
            decode(&submitted(items.clone())).unwrap_or_else(|err| panic!("{items}: {err}"));
        let EventData::OrderSubmitted(data) = &envelope.data else {
            panic!("not order.submitted");
        };
        assert_eq!(json!(data.items), items);
    }
}

#[test]
fn badly_shaped_submissions_are_poison() {
    let cases = [
        (
            json!([{"sku": "A", "quantity": "1", "unit_price_cents": 1}]),
            "items[0].quantity: must be an integer, found a string",
        ),
        (
            json!([{"sku": "A", "quantity": 1.5, "unit_price_cents": 1}]),
            "items[0].quantity: must be an integer within the signed 64-bit range, found 1.5",
        ),
        (
            json!([{"sku": "A", "quantity": 1}]),
            "items[0].unit_price_cents: missing required field",
        ),
        (
            json!([{"sku": 7, "quantity": 1, "unit_price_cents": 1}]),
            "items[0].sku: must be a string, found a number",
        ),
        (
            json!({"sku": "A"}),
            "items: must be an array, found an object",
        ),
        (
            json!(["A"]),
            "items[0]: must be a JSON object, found a string",
        ),
    ];
    for (items, expected) in cases {
        let err = decode(&submitted(items)).unwrap_err();
        assert_eq!(err.kind(), "invalid_data");
        assert_eq!(
            invalid_data_reason(err, EventType::OrderSubmitted),
            expected
        );
    }

    let mut envelope = submitted(json!([]));
    envelope["data"]["order_id"] = json!("order-1");
    let err = decode(&envelope).unwrap_err();
    assert_eq!(
        invalid_data_reason(err, EventType::OrderSubmitted),
        "order_id: must be a UUID, found \"order-1\""
    );
}

// --- peek_id -------------------------------------------------------------------

#[test]
fn peek_id_reads_the_id_of_otherwise_poison_bodies() {
    let envelope = with("type", json!("order.shipped"));
    assert_eq!(
        peek_id(envelope.to_string().as_bytes()),
        Some(EVENT_ID.into())
    );
    assert_eq!(peek_id(br#"{"id": "anything"}"#), Some("anything".into()));
    assert_eq!(peek_id(br#"{"id": 42}"#), None);
    assert_eq!(peek_id(br#"["id"]"#), None);
    assert_eq!(peek_id(b"not json"), None);
    assert_eq!(peek_id(b""), None);
}

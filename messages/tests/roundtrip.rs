//! Property: any valid envelope, of any event type, survives
//! encode -> decode unchanged, and its data passes `validate`.

// Test helpers outside `#[test]` functions panic on purpose: a failure here
// is a failed test, and clippy's in-test exemption does not reach them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

use chrono::{DateTime, Utc};
use fleet_messages::{
    CancellationReason, DEFAULT_MAX_EVENT_BYTES, Envelope, EventData, NotificationSent,
    NotificationTemplate, OrderCancelled, OrderConfirmed, OrderItem, OrderPlaced, OrderRejected,
    OrderSubmitted, PaymentCaptured, PaymentDeclineReason, PaymentDeclined, RejectionReason,
    StockRejected, StockRejectionReason, StockReleased, StockReserved, SubmittedItem,
};
use proptest::prelude::*;
use proptest::sample::select;
use uuid::Uuid;

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// Any string, including quotes, control characters and non-ASCII text,
/// which the JSON encoding must escape and restore.
fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

fn non_empty_text() -> impl Strategy<Value = String> {
    any::<String>().prop_filter("non-empty", |s| !s.is_empty())
}

/// Times RFC 3339 can express (years 0000-9999), to the nanosecond.
fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (-62_167_219_200_i64..=253_402_300_799, 0_u32..1_000_000_000)
        .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).unwrap_or_default())
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![0_i64..100_000, 0_i64..=i64::MAX]
}

fn order_item() -> impl Strategy<Value = OrderItem> {
    (non_empty_text(), 1_u32..=u32::MAX, amount()).prop_map(|(sku, quantity, unit_price_cents)| {
        OrderItem {
            sku,
            quantity,
            unit_price_cents,
        }
    })
}

fn order_items() -> impl Strategy<Value = Vec<OrderItem>> {
    prop::collection::vec(order_item(), 1..5)
}

fn submitted_item() -> impl Strategy<Value = SubmittedItem> {
    (text(), any::<i64>(), any::<i64>()).prop_map(|(sku, quantity, unit_price_cents)| {
        SubmittedItem {
            sku,
            quantity,
            unit_price_cents,
        }
    })
}

fn event_data() -> impl Strategy<Value = EventData> {
    prop_oneof![
        (
            uuid(),
            text(),
            prop::collection::vec(submitted_item(), 0..5)
        )
            .prop_map(|(order_id, customer_id, items)| OrderSubmitted {
                order_id,
                customer_id,
                items
            }
            .into()),
        (uuid(), text(), order_items(), amount()).prop_map(
            |(order_id, customer_id, items, total_cents)| OrderPlaced {
                order_id,
                customer_id,
                items,
                total_cents
            }
            .into()
        ),
        (uuid(), select(RejectionReason::ALL)).prop_map(|(order_id, reason)| OrderRejected {
            order_id,
            reason
        }
        .into()),
        (uuid(), text(), order_items(), amount()).prop_map(
            |(order_id, customer_id, items, total_cents)| StockReserved {
                order_id,
                customer_id,
                items,
                total_cents
            }
            .into()
        ),
        (uuid(), select(StockRejectionReason::ALL), text()).prop_map(|(order_id, reason, sku)| {
            StockRejected {
                order_id,
                reason,
                sku,
            }
            .into()
        }),
        (uuid(), uuid(), amount()).prop_map(|(order_id, payment_id, amount_cents)| {
            PaymentCaptured {
                order_id,
                payment_id,
                amount_cents,
            }
            .into()
        }),
        (uuid(), select(PaymentDeclineReason::ALL))
            .prop_map(|(order_id, reason)| PaymentDeclined { order_id, reason }.into()),
        uuid().prop_map(|order_id| StockReleased { order_id }.into()),
        (uuid(), amount()).prop_map(|(order_id, total_cents)| OrderConfirmed {
            order_id,
            total_cents
        }
        .into()),
        (uuid(), select(CancellationReason::ALL)).prop_map(|(order_id, reason)| OrderCancelled {
            order_id,
            reason
        }
        .into()),
        (uuid(), select(NotificationTemplate::ALL))
            .prop_map(|(order_id, template)| NotificationSent { order_id, template }.into()),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        uuid(),
        non_empty_text(),
        non_empty_text(),
        time(),
        uuid(),
        proptest::option::of(uuid()),
        event_data(),
    )
        .prop_map(
            |(id, source, subject, time, correlation_id, causation_id, data)| Envelope {
                id,
                source,
                subject,
                time,
                correlation_id,
                causation_id,
                data,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_is_identity(envelope in envelope()) {
        prop_assert_eq!(envelope.data.validate(), Ok(()));
        let bytes = envelope.encode();
        let decoded = Envelope::decode(&bytes, DEFAULT_MAX_EVENT_BYTES);
        prop_assert_eq!(decoded, Ok(envelope.clone()));
        // The JSON value and the bytes describe the same event.
        let reparsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(reparsed, envelope.to_json());
    }

    #[test]
    fn data_json_round_trips(data in event_data()) {
        let json = data.to_json();
        prop_assert_eq!(EventData::from_json(data.event_type(), json), Ok(data));
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes, DEFAULT_MAX_EVENT_BYTES);
        let _ = fleet_messages::peek_id(&bytes);
    }
}

#[test]
fn envelopes_made_by_new_round_trip() {
    let order_id = Uuid::now_v7();
    let submitted = Envelope::new(
        "storefront",
        OrderSubmitted {
            order_id,
            customer_id: "cust-1".into(),
            items: vec![],
        }
        .into(),
        order_id,
        None,
    );
    let placed = Envelope::caused_by(
        &submitted,
        "order-worker",
        OrderPlaced {
            order_id,
            customer_id: "cust-1".into(),
            items: vec![OrderItem {
                sku: "A".into(),
                quantity: 1,
                unit_price_cents: 0,
            }],
            total_cents: 0,
        }
        .into(),
    );
    for envelope in [submitted, placed] {
        let decoded = Envelope::decode(&envelope.encode(), DEFAULT_MAX_EVENT_BYTES).unwrap();
        assert_eq!(decoded, envelope);
    }
}

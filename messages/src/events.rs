//! The event types of the saga and the `data` schema of each.
//!
//! One Rust struct per event type mirrors the contract's table ("Events").
//! Their JSON mapping is written by hand (the private `Schema` trait) rather
//! than derived, for three reasons:
//!
//! - decode errors name the exact field path, which derived serde errors
//!   cannot;
//! - the schema's ranges (amounts ≥ 0, quantities ≥ 1, non-empty items) are
//!   checked in the same pass, so a value that decodes is a value the contract
//!   allows;
//! - encoding builds a `serde_json::Value` directly and cannot fail.
//!
//! The structs still implement `Serialize` and `Deserialize`, by delegating to
//! that mapping, so other crates can store or embed them with serde and get the
//! very same JSON and the very same validation.
//!
//! Unknown fields inside `data` are ignored, never rejected, and are not kept:
//! a newer producer may add optional fields (a compatible change within v1)
//! without turning its events into poison for older consumers.
//!
//! `order.submitted` is special: it comes from outside the fleet and only its
//! *shape* is checked here (field presence and JSON types). A submitted order
//! with no items, a zero or negative quantity or a negative price is
//! well-formed; order-worker answers it with `order.rejected`. That is why its
//! items are [`SubmittedItem`]s with signed quantities, while every event the
//! fleet emits carries validated [`OrderItem`]s.

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::DecodeError;
use crate::fields::{Fields, WireEnum};

// ---------------------------------------------------------------------------
// Event types
// ---------------------------------------------------------------------------

/// The `type` attribute of an event: what happened.
///
/// The wire spelling ([`as_str`](EventType::as_str)) is also the RabbitMQ
/// routing key and part of the Redis stream name, so it is fixed by the
/// contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    OrderSubmitted,
    OrderPlaced,
    OrderRejected,
    StockReserved,
    StockRejected,
    PaymentCaptured,
    PaymentDeclined,
    StockReleased,
    OrderConfirmed,
    OrderCancelled,
    NotificationSent,
}

impl EventType {
    /// Every event type, in saga order.
    pub const ALL: [EventType; 11] = [
        EventType::OrderSubmitted,
        EventType::OrderPlaced,
        EventType::OrderRejected,
        EventType::StockReserved,
        EventType::StockRejected,
        EventType::PaymentCaptured,
        EventType::PaymentDeclined,
        EventType::StockReleased,
        EventType::OrderConfirmed,
        EventType::OrderCancelled,
        EventType::NotificationSent,
    ];

    /// The wire spelling, e.g. `"order.placed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderSubmitted => "order.submitted",
            EventType::OrderPlaced => "order.placed",
            EventType::OrderRejected => "order.rejected",
            EventType::StockReserved => "stock.reserved",
            EventType::StockRejected => "stock.rejected",
            EventType::PaymentCaptured => "payment.captured",
            EventType::PaymentDeclined => "payment.declined",
            EventType::StockReleased => "stock.released",
            EventType::OrderConfirmed => "order.confirmed",
            EventType::OrderCancelled => "order.cancelled",
            EventType::NotificationSent => "notification.sent",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not the wire spelling of any [`EventType`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    /// Exact, case-sensitive match on the wire spelling: routing keys and
    /// stream names are case-sensitive, so a lenient parse would accept a type
    /// that no worker is bound to.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(D::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Closed sets of reasons
// ---------------------------------------------------------------------------

/// Declares an enum carried on the wire as snake_case strings, with `ALL`,
/// `as_str`, `Display` and serde as that string. A macro because the five
/// reason enums differ only in their names.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling (snake_case).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $wire, )+
                }
            }
        }

        impl WireEnum for $name {
            const VARIANTS: &'static [$name] = $name::ALL;

            fn wire(self) -> &'static str {
                self.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                const NAMES: &[&str] = &[$($wire),+];
                let s = String::deserialize(deserializer)?;
                <$name as WireEnum>::from_wire(&s)
                    .ok_or_else(|| D::Error::unknown_variant(&s, NAMES))
            }
        }
    };
}

wire_enum! {
    /// Why order-worker refused a well-formed `order.submitted`.
    pub enum RejectionReason {
        /// The order has no items.
        NoItems => "no_items",
        /// An item's quantity is below 1.
        InvalidQuantity => "invalid_quantity",
        /// An item's unit price is negative.
        NegativePrice => "negative_price",
        /// The order total exceeds `order.max_total_cents`.
        TotalOverLimit => "total_over_limit",
    }
}

wire_enum! {
    /// Why inventory-worker could not reserve an order's stock.
    pub enum StockRejectionReason {
        /// The SKU is not in the inventory.
        UnknownSku => "unknown_sku",
        /// The SKU exists but has fewer units than ordered.
        InsufficientStock => "insufficient_stock",
    }
}

wire_enum! {
    /// Why payment-worker declined a payment.
    pub enum PaymentDeclineReason {
        /// The amount exceeds the customer's remaining credit.
        InsufficientCredit => "insufficient_credit",
    }
}

wire_enum! {
    /// Why a placed order was cancelled.
    pub enum CancellationReason {
        /// Stock was rejected: a SKU is unknown.
        UnknownSku => "unknown_sku",
        /// Stock was rejected: not enough units.
        InsufficientStock => "insufficient_stock",
        /// Payment was declined (after which the stock was released).
        PaymentDeclined => "payment_declined",
    }
}

wire_enum! {
    /// Which notification notification-worker sent.
    pub enum NotificationTemplate {
        /// The order was confirmed.
        OrderConfirmed => "order_confirmed",
        /// The order was cancelled.
        OrderCancelled => "order_cancelled",
    }
}

// ---------------------------------------------------------------------------
// The JSON mapping of data structs
// ---------------------------------------------------------------------------

/// The hand-written JSON mapping of one data struct.
///
/// Decoding is split in two so that producers can run the second half on a
/// struct they built themselves ([`EventData::validate`]) and never emit what
/// consumers would dead-letter.
trait Schema: Sized {
    /// The JSON object of `self`. Infallible by construction.
    fn to_object(&self) -> Map<String, Value>;

    /// Reads the fields of the object: presence and JSON types (shape).
    fn read(fields: &Fields<'_>) -> Result<Self, String>;

    /// Checks the ranges of the schema. `prefix` is the path of `self`
    /// followed by a dot (`items[0].`), or empty at the root of `data`.
    fn check(&self, prefix: &str) -> Result<(), String>;
}

/// Reads and checks the object `value` found at `path`.
fn decode_object<T: Schema>(value: &Value, path: &str) -> Result<T, String> {
    let decoded = T::read(&Fields::open(value, path)?)?;
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    };
    decoded.check(&prefix)?;
    Ok(decoded)
}

/// Implements serde for data structs by delegating to their [`Schema`], so
/// that serde users get the contract's JSON and its validation, not a
/// subtly different derived mapping.
macro_rules! serde_via_schema {
    ($($ty:ident),+ $(,)?) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.to_object().serialize(serializer)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = Value::deserialize(deserializer)?;
                decode_object(&value, "").map_err(D::Error::custom)
            }
        }
    )+};
}

/// Builds a JSON object from `(name, value)` pairs.
fn object<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

fn uuid_value(id: Uuid) -> Value {
    Value::String(id.to_string())
}

fn array<T: Schema>(items: &[T]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|item| Value::Object(item.to_object()))
            .collect(),
    )
}

/// `Err` naming `field` when `amount` is negative.
fn non_negative(prefix: &str, field: &str, amount: i64) -> Result<(), String> {
    if amount < 0 {
        Err(format!(
            "{prefix}{field}: must be at least 0, found {amount}"
        ))
    } else {
        Ok(())
    }
}

/// `Err` when `items` is empty, else the range check of every item.
fn check_items(prefix: &str, items: &[OrderItem]) -> Result<(), String> {
    if items.is_empty() {
        return Err(format!("{prefix}items: must not be empty"));
    }
    items
        .iter()
        .enumerate()
        .try_for_each(|(index, item)| item.check(&format!("{prefix}items[{index}].")))
}

// ---------------------------------------------------------------------------
// Items
// ---------------------------------------------------------------------------

/// An item of `order.submitted`, as the client sent it.
///
/// Only the shape is guaranteed: the quantity may be zero or negative, the
/// price negative, the SKU empty. order-worker turns these into
/// `order.rejected`, so they are signed here rather than poison.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SubmittedItem {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

impl Schema for SubmittedItem {
    fn to_object(&self) -> Map<String, Value> {
        object([
            ("sku", Value::from(self.sku.as_str())),
            ("quantity", Value::from(self.quantity)),
            ("unit_price_cents", Value::from(self.unit_price_cents)),
        ])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        Ok(SubmittedItem {
            sku: fields.string("sku")?,
            quantity: fields.int("quantity")?,
            unit_price_cents: fields.int("unit_price_cents")?,
        })
    }

    fn check(&self, _prefix: &str) -> Result<(), String> {
        // Business rules, not schema: see the module documentation.
        Ok(())
    }
}

/// An item of an order the fleet accepted: SKU non-empty, quantity ≥ 1,
/// unit price ≥ 0.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OrderItem {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

impl Schema for OrderItem {
    fn to_object(&self) -> Map<String, Value> {
        object([
            ("sku", Value::from(self.sku.as_str())),
            ("quantity", Value::from(self.quantity)),
            ("unit_price_cents", Value::from(self.unit_price_cents)),
        ])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        let sku = fields.string("sku")?;
        // Read as i64 so that a negative quantity is reported as the range
        // violation it is, not as a type mismatch with `u32`.
        let quantity = fields.int("quantity")?;
        let quantity = u32::try_from(quantity).map_err(|_| {
            if quantity < 1 {
                fields.error(
                    "quantity",
                    format_args!("must be at least 1, found {quantity}"),
                )
            } else {
                fields.error(
                    "quantity",
                    format_args!("must be at most {}, found {quantity}", u32::MAX),
                )
            }
        })?;
        Ok(OrderItem {
            sku,
            quantity,
            unit_price_cents: fields.int("unit_price_cents")?,
        })
    }

    fn check(&self, prefix: &str) -> Result<(), String> {
        // An empty SKU is not malformed, only unknown: inventory-worker
        // answers it with stock.rejected(unknown_sku), as for any SKU it
        // does not stock.
        if self.quantity < 1 {
            return Err(format!(
                "{prefix}quantity: must be at least 1, found {}",
                self.quantity
            ));
        }
        non_negative(prefix, "unit_price_cents", self.unit_price_cents)
    }
}

// ---------------------------------------------------------------------------
// Data of each event type
// ---------------------------------------------------------------------------

/// `order.submitted`: a client asks for an order (the saga's entry point).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderSubmitted {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<SubmittedItem>,
}

impl Schema for OrderSubmitted {
    fn to_object(&self) -> Map<String, Value> {
        object([
            ("order_id", uuid_value(self.order_id)),
            ("customer_id", Value::from(self.customer_id.as_str())),
            ("items", array(&self.items)),
        ])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        Ok(OrderSubmitted {
            order_id: fields.uuid("order_id")?,
            customer_id: fields.string("customer_id")?,
            items: fields.array_of("items", SubmittedItem::read)?,
        })
    }

    fn check(&self, _prefix: &str) -> Result<(), String> {
        // Shape only: empty items and bad quantities are business rejections.
        Ok(())
    }
}

/// `order.placed`: order-worker accepted the order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderPlaced {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
}

impl Schema for OrderPlaced {
    fn to_object(&self) -> Map<String, Value> {
        object([
            ("order_id", uuid_value(self.order_id)),
            ("customer_id", Value::from(self.customer_id.as_str())),
            ("items", array(&self.items)),
            ("total_cents", Value::from(self.total_cents)),
        ])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        Ok(OrderPlaced {
            order_id: fields.uuid("order_id")?,
            customer_id: fields.string("customer_id")?,
            items: fields.array_of("items", OrderItem::read)?,
            total_cents: fields.int("total_cents")?,
        })
    }

    fn check(&self, prefix: &str) -> Result<(), String> {
        check_items(prefix, &self.items)?;
        non_negative(prefix, "total_cents", self.total_cents)
    }
}

/// `order.rejected`: order-worker refused a well-formed submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRejected {
    pub order_id: Uuid,
    pub reason: RejectionReason,
}

impl Schema for OrderRejected {
    fn to_object(&self) -> Map<String, Value> {
        object([
            ("order_id", uuid_value(self.order_id)),
            ("reason", Value::from(self.reason.as_str())),
        ])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        Ok(OrderRejected {
            order_id: fields.uuid("order_id")?,
            reason: fields.one_of("reason")?,
        })
    }

    fn check(&self, _prefix: &str) -> Result<(), String> {
        Ok(())
    }
}

/// `stock.reserved`: inventory-worker reserved every item of the order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockReserved {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
}

impl Schema for StockReserved {
    fn to_object(&self) -> Map<String, Value> {
        object([
            ("order_id", uuid_value(self.order_id)),
            ("customer_id", Value::from(self.customer_id.as_str())),
            ("items", array(&self.items)),
            ("total_cents", Value::from(self.total_cents)),
        ])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        Ok(StockReserved {
            order_id: fields.uuid("order_id")?,
            customer_id: fields.string("customer_id")?,
            items: fields.array_of("items", OrderItem::read)?,
            total_cents: fields.int("total_cents")?,
        })
    }

    fn check(&self, prefix: &str) -> Result<(), String> {
        check_items(prefix, &self.items)?;
        non_negative(prefix, "total_cents", self.total_cents)
    }
}

/// `stock.rejected`: inventory-worker could not reserve `sku`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockRejected {
    pub order_id: Uuid,
    pub reason: StockRejectionReason,
    pub sku: String,
}

impl Schema for StockRejected {
    fn to_object(&self) -> Map<String, Value> {
        object([
            ("order_id", uuid_value(self.order_id)),
            ("reason", Value::from(self.reason.as_str())),
            ("sku", Value::from(self.sku.as_str())),
        ])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        Ok(StockRejected {
            order_id: fields.uuid("order_id")?,
            reason: fields.one_of("reason")?,
            sku: fields.string("sku")?,
        })
    }

    fn check(&self, _prefix: &str) -> Result<(), String> {
        Ok(())
    }
}

/// `payment.captured`: payment-worker charged the order total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentCaptured {
    pub order_id: Uuid,
    pub payment_id: Uuid,
    pub amount_cents: i64,
}

impl Schema for PaymentCaptured {
    fn to_object(&self) -> Map<String, Value> {
        object([
            ("order_id", uuid_value(self.order_id)),
            ("payment_id", uuid_value(self.payment_id)),
            ("amount_cents", Value::from(self.amount_cents)),
        ])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        Ok(PaymentCaptured {
            order_id: fields.uuid("order_id")?,
            payment_id: fields.uuid("payment_id")?,
            amount_cents: fields.int("amount_cents")?,
        })
    }

    fn check(&self, prefix: &str) -> Result<(), String> {
        non_negative(prefix, "amount_cents", self.amount_cents)
    }
}

/// `payment.declined`: payment-worker refused the charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentDeclined {
    pub order_id: Uuid,
    pub reason: PaymentDeclineReason,
}

impl Schema for PaymentDeclined {
    fn to_object(&self) -> Map<String, Value> {
        object([
            ("order_id", uuid_value(self.order_id)),
            ("reason", Value::from(self.reason.as_str())),
        ])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        Ok(PaymentDeclined {
            order_id: fields.uuid("order_id")?,
            reason: fields.one_of("reason")?,
        })
    }

    fn check(&self, _prefix: &str) -> Result<(), String> {
        Ok(())
    }
}

/// `stock.released`: inventory-worker gave back the stock of a declined order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockReleased {
    pub order_id: Uuid,
}

impl Schema for StockReleased {
    fn to_object(&self) -> Map<String, Value> {
        object([("order_id", uuid_value(self.order_id))])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        Ok(StockReleased {
            order_id: fields.uuid("order_id")?,
        })
    }

    fn check(&self, _prefix: &str) -> Result<(), String> {
        Ok(())
    }
}

/// `order.confirmed`: the saga succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderConfirmed {
    pub order_id: Uuid,
    pub total_cents: i64,
}

impl Schema for OrderConfirmed {
    fn to_object(&self) -> Map<String, Value> {
        object([
            ("order_id", uuid_value(self.order_id)),
            ("total_cents", Value::from(self.total_cents)),
        ])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        Ok(OrderConfirmed {
            order_id: fields.uuid("order_id")?,
            total_cents: fields.int("total_cents")?,
        })
    }

    fn check(&self, prefix: &str) -> Result<(), String> {
        non_negative(prefix, "total_cents", self.total_cents)
    }
}

/// `order.cancelled`: the saga failed after the order was placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub reason: CancellationReason,
}

impl Schema for OrderCancelled {
    fn to_object(&self) -> Map<String, Value> {
        object([
            ("order_id", uuid_value(self.order_id)),
            ("reason", Value::from(self.reason.as_str())),
        ])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        Ok(OrderCancelled {
            order_id: fields.uuid("order_id")?,
            reason: fields.one_of("reason")?,
        })
    }

    fn check(&self, _prefix: &str) -> Result<(), String> {
        Ok(())
    }
}

/// `notification.sent`: the customer was told the outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationSent {
    pub order_id: Uuid,
    pub template: NotificationTemplate,
}

impl Schema for NotificationSent {
    fn to_object(&self) -> Map<String, Value> {
        object([
            ("order_id", uuid_value(self.order_id)),
            ("template", Value::from(self.template.as_str())),
        ])
    }

    fn read(fields: &Fields<'_>) -> Result<Self, String> {
        Ok(NotificationSent {
            order_id: fields.uuid("order_id")?,
            template: fields.one_of("template")?,
        })
    }

    fn check(&self, _prefix: &str) -> Result<(), String> {
        Ok(())
    }
}

serde_via_schema!(
    SubmittedItem,
    OrderItem,
    OrderSubmitted,
    OrderPlaced,
    OrderRejected,
    StockReserved,
    StockRejected,
    PaymentCaptured,
    PaymentDeclined,
    StockReleased,
    OrderConfirmed,
    OrderCancelled,
    NotificationSent,
);

// ---------------------------------------------------------------------------
// EventData: the data of any event
// ---------------------------------------------------------------------------

/// The `data` of an event, one variant per [`EventType`].
///
/// The variant *is* the event type: an envelope cannot carry data of one type
/// under the `type` attribute of another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventData {
    OrderSubmitted(OrderSubmitted),
    OrderPlaced(OrderPlaced),
    OrderRejected(OrderRejected),
    StockReserved(StockReserved),
    StockRejected(StockRejected),
    PaymentCaptured(PaymentCaptured),
    PaymentDeclined(PaymentDeclined),
    StockReleased(StockReleased),
    OrderConfirmed(OrderConfirmed),
    OrderCancelled(OrderCancelled),
    NotificationSent(NotificationSent),
}

/// Evaluates `$body` with `$data` bound to the struct inside any variant.
macro_rules! with_data {
    ($value:expr, $data:ident => $body:expr) => {
        match $value {
            EventData::OrderSubmitted($data) => $body,
            EventData::OrderPlaced($data) => $body,
            EventData::OrderRejected($data) => $body,
            EventData::StockReserved($data) => $body,
            EventData::StockRejected($data) => $body,
            EventData::PaymentCaptured($data) => $body,
            EventData::PaymentDeclined($data) => $body,
            EventData::StockReleased($data) => $body,
            EventData::OrderConfirmed($data) => $body,
            EventData::OrderCancelled($data) => $body,
            EventData::NotificationSent($data) => $body,
        }
    };
}

impl EventData {
    /// The event type this data belongs to.
    pub fn event_type(&self) -> EventType {
        match self {
            EventData::OrderSubmitted(_) => EventType::OrderSubmitted,
            EventData::OrderPlaced(_) => EventType::OrderPlaced,
            EventData::OrderRejected(_) => EventType::OrderRejected,
            EventData::StockReserved(_) => EventType::StockReserved,
            EventData::StockRejected(_) => EventType::StockRejected,
            EventData::PaymentCaptured(_) => EventType::PaymentCaptured,
            EventData::PaymentDeclined(_) => EventType::PaymentDeclined,
            EventData::StockReleased(_) => EventType::StockReleased,
            EventData::OrderConfirmed(_) => EventType::OrderConfirmed,
            EventData::OrderCancelled(_) => EventType::OrderCancelled,
            EventData::NotificationSent(_) => EventType::NotificationSent,
        }
    }

    /// The order the event is about; every event of the contract has one.
    pub fn order_id(&self) -> Uuid {
        with_data!(self, data => data.order_id)
    }

    /// The JSON object of the `data` attribute.
    pub fn to_json(&self) -> Value {
        Value::Object(with_data!(self, data => data.to_object()))
    }

    /// Decodes the `data` of an event of type `event_type`: shape first
    /// (presence and JSON types of fields), then the schema's ranges.
    /// Unknown fields are ignored.
    pub fn from_json(event_type: EventType, value: Value) -> Result<EventData, DecodeError> {
        let value = &value;
        let decoded = match event_type {
            EventType::OrderSubmitted => decode_object(value, "").map(EventData::OrderSubmitted),
            EventType::OrderPlaced => decode_object(value, "").map(EventData::OrderPlaced),
            EventType::OrderRejected => decode_object(value, "").map(EventData::OrderRejected),
            EventType::StockReserved => decode_object(value, "").map(EventData::StockReserved),
            EventType::StockRejected => decode_object(value, "").map(EventData::StockRejected),
            EventType::PaymentCaptured => decode_object(value, "").map(EventData::PaymentCaptured),
            EventType::PaymentDeclined => decode_object(value, "").map(EventData::PaymentDeclined),
            EventType::StockReleased => decode_object(value, "").map(EventData::StockReleased),
            EventType::OrderConfirmed => decode_object(value, "").map(EventData::OrderConfirmed),
            EventType::OrderCancelled => decode_object(value, "").map(EventData::OrderCancelled),
            EventType::NotificationSent => {
                decode_object(value, "").map(EventData::NotificationSent)
            }
        };
        decoded.map_err(|reason| DecodeError::InvalidData { event_type, reason })
    }

    /// Checks the schema's ranges on data built in memory, so that a producer
    /// can refuse to emit an event its consumers would dead-letter. Data
    /// returned by [`from_json`](EventData::from_json) always passes.
    pub fn validate(&self) -> Result<(), DecodeError> {
        with_data!(self, data => data.check("")).map_err(|reason| DecodeError::InvalidData {
            event_type: self.event_type(),
            reason,
        })
    }
}

/// `impl From<Struct> for EventData` for every variant, so producers can write
/// `OrderPlaced { .. }.into()`.
macro_rules! data_from {
    ($($variant:ident),+ $(,)?) => {$(
        impl From<$variant> for EventData {
            fn from(data: $variant) -> Self {
                EventData::$variant(data)
            }
        }
    )+};
}

data_from!(
    OrderSubmitted,
    OrderPlaced,
    OrderRejected,
    StockReserved,
    StockRejected,
    PaymentCaptured,
    PaymentDeclined,
    StockReleased,
    OrderConfirmed,
    OrderCancelled,
    NotificationSent,
);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ORDER: &str = "5b3c0d7e-2f0a-4f7e-9a1b-8d2c6e4f1a00";

    fn reason(err: DecodeError) -> String {
        match err {
            DecodeError::InvalidData { reason, .. } => reason,
            other => panic!("expected InvalidData, got {other:?}"),
        }
    }

    #[test]
    fn event_type_strings_round_trip() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
            assert_eq!(
                serde_json::from_value::<EventType>(json!(t.as_str())).unwrap(),
                t
            );
        }
        assert_eq!(
            "Order.Placed".parse::<EventType>(),
            Err(UnknownEventType("Order.Placed".into()))
        );
    }

    #[test]
    fn reason_enums_are_snake_case_on_the_wire() {
        let cases: Vec<(Value, &str)> = vec![
            (json!(RejectionReason::NoItems), "no_items"),
            (json!(RejectionReason::InvalidQuantity), "invalid_quantity"),
            (json!(RejectionReason::NegativePrice), "negative_price"),
            (json!(RejectionReason::TotalOverLimit), "total_over_limit"),
            (json!(StockRejectionReason::UnknownSku), "unknown_sku"),
            (
                json!(StockRejectionReason::InsufficientStock),
                "insufficient_stock",
            ),
            (
                json!(PaymentDeclineReason::InsufficientCredit),
                "insufficient_credit",
            ),
            (json!(CancellationReason::UnknownSku), "unknown_sku"),
            (
                json!(CancellationReason::InsufficientStock),
                "insufficient_stock",
            ),
            (
                json!(CancellationReason::PaymentDeclined),
                "payment_declined",
            ),
            (
                json!(NotificationTemplate::OrderConfirmed),
                "order_confirmed",
            ),
            (
                json!(NotificationTemplate::OrderCancelled),
                "order_cancelled",
            ),
        ];
        for (value, wire) in cases {
            assert_eq!(value, json!(wire));
        }
        assert!(serde_json::from_value::<RejectionReason>(json!("NoItems")).is_err());
        assert_eq!(
            serde_json::from_value::<CancellationReason>(json!("payment_declined")).unwrap(),
            CancellationReason::PaymentDeclined
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let data = EventData::from_json(
            EventType::StockReleased,
            json!({"order_id": ORDER, "added_in_v1_1": {"anything": [1, 2]}}),
        )
        .unwrap();
        assert_eq!(data.order_id().to_string(), ORDER);
        assert_eq!(data.to_json(), json!({"order_id": ORDER}));
    }

    #[test]
    fn range_errors_name_the_field_path() {
        let err = EventData::from_json(
            EventType::StockReserved,
            json!({
                "order_id": ORDER,
                "customer_id": "c-1",
                "items": [
                    {"sku": "A", "quantity": 1, "unit_price_cents": 5},
                    {"sku": "B", "quantity": -2, "unit_price_cents": 5}
                ],
                "total_cents": 15
            }),
        )
        .unwrap_err();
        assert_eq!(err.kind(), "invalid_data");
        assert_eq!(
            reason(err),
            "items[1].quantity: must be at least 1, found -2"
        );

        let cases = [
            (json!([]), "items: must not be empty"),
            (
                json!([{"sku": "A", "quantity": 0, "unit_price_cents": 5}]),
                "items[0].quantity: must be at least 1, found 0",
            ),
            (
                json!([{"sku": "A", "quantity": 4_294_967_296_i64, "unit_price_cents": 5}]),
                "items[0].quantity: must be at most 4294967295, found 4294967296",
            ),
            (
                json!([{"sku": "A", "quantity": 1, "unit_price_cents": -1}]),
                "items[0].unit_price_cents: must be at least 0, found -1",
            ),
        ];
        for (items, expected) in cases {
            let err = EventData::from_json(
                EventType::OrderPlaced,
                json!({"order_id": ORDER, "customer_id": "c", "items": items, "total_cents": 0}),
            )
            .unwrap_err();
            assert_eq!(reason(err), expected);
        }

        let err = EventData::from_json(
            EventType::PaymentCaptured,
            json!({"order_id": ORDER, "payment_id": ORDER, "amount_cents": -5}),
        )
        .unwrap_err();
        assert_eq!(reason(err), "amount_cents: must be at least 0, found -5");
    }

    #[test]
    fn shape_errors_name_the_field() {
        let err = EventData::from_json(
            EventType::OrderRejected,
            json!({"order_id": ORDER, "reason": "because"}),
        )
        .unwrap_err();
        assert_eq!(
            reason(err),
            "reason: must be \"no_items\", \"invalid_quantity\", \"negative_price\" or \
             \"total_over_limit\", found \"because\""
        );

        let err =
            EventData::from_json(EventType::OrderConfirmed, json!({"total_cents": 1})).unwrap_err();
        assert_eq!(reason(err), "order_id: missing required field");

        let err = EventData::from_json(EventType::OrderConfirmed, json!([])).unwrap_err();
        assert_eq!(reason(err), "must be a JSON object, found an array");

        let err = EventData::from_json(
            EventType::NotificationSent,
            json!({"order_id": 7, "template": "order_confirmed"}),
        )
        .unwrap_err();
        assert_eq!(
            reason(err),
            "order_id: must be a UUID string, found a number"
        );
    }

    #[test]
    fn serde_impls_use_the_contract_mapping_and_validation() {
        let item = OrderItem {
            sku: "SKU-1".into(),
            quantity: 2,
            unit_price_cents: 150,
        };
        let value = serde_json::to_value(&item).unwrap();
        assert_eq!(
            value,
            json!({"sku": "SKU-1", "quantity": 2, "unit_price_cents": 150})
        );
        assert_eq!(serde_json::from_value::<OrderItem>(value).unwrap(), item);

        let err = serde_json::from_value::<OrderItem>(
            json!({"sku": "SKU-1", "quantity": 0, "unit_price_cents": 150}),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("quantity: must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn validate_catches_what_producers_build_wrongly() {
        let data: EventData = OrderPlaced {
            order_id: Uuid::nil(),
            customer_id: "c".into(),
            items: vec![],
            total_cents: 0,
        }
        .into();
        let err = data.validate().unwrap_err();
        assert_eq!(
            err,
            DecodeError::InvalidData {
                event_type: EventType::OrderPlaced,
                reason: "items: must not be empty".into()
            }
        );

        let ok: EventData = OrderSubmitted {
            order_id: Uuid::nil(),
            customer_id: String::new(),
            items: vec![],
        }
        .into();
        assert_eq!(ok.validate(), Ok(()));
    }
}

//! How a saga ends, as loadgen sees it from the terminal event.

use std::fmt;

use fleet_messages::{CancellationReason, NotificationTemplate, RejectionReason};

/// The terminal event of one order: `order.confirmed`, `order.cancelled` or
/// `order.rejected`, with its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    Confirmed,
    Cancelled(CancellationReason),
    Rejected(RejectionReason),
}

impl Outcome {
    /// The notification the saga ends with, if any (none for rejections).
    pub(crate) fn notification(self) -> Option<NotificationTemplate> {
        match self {
            Outcome::Confirmed => Some(NotificationTemplate::OrderConfirmed),
            Outcome::Cancelled(_) => Some(NotificationTemplate::OrderCancelled),
            Outcome::Rejected(_) => None,
        }
    }

    /// Events on the broker of one saga with this outcome, from
    /// `order.submitted` to `notification.sent`.
    pub(crate) fn saga_events(self) -> u64 {
        match self {
            // submitted, placed, reserved, captured, confirmed, sent
            Outcome::Confirmed => 6,
            // submitted, placed, stock.rejected, cancelled, sent
            Outcome::Cancelled(
                CancellationReason::UnknownSku | CancellationReason::InsufficientStock,
            ) => 5,
            // submitted, placed, reserved, declined, released, cancelled, sent
            Outcome::Cancelled(CancellationReason::PaymentDeclined) => 7,
            // submitted, rejected
            Outcome::Rejected(_) => 2,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Confirmed => f.write_str("order.confirmed"),
            Outcome::Cancelled(reason) => write!(f, "order.cancelled({reason})"),
            Outcome::Rejected(reason) => write!(f, "order.rejected({reason})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_event_and_reason() {
        assert_eq!(Outcome::Confirmed.to_string(), "order.confirmed");
        assert_eq!(
            Outcome::Cancelled(CancellationReason::PaymentDeclined).to_string(),
            "order.cancelled(payment_declined)"
        );
        assert_eq!(
            Outcome::Rejected(RejectionReason::NoItems).to_string(),
            "order.rejected(no_items)"
        );
    }

    #[test]
    fn only_confirmed_and_cancelled_sagas_notify() {
        assert_eq!(
            Outcome::Confirmed.notification(),
            Some(NotificationTemplate::OrderConfirmed)
        );
        assert_eq!(
            Outcome::Cancelled(CancellationReason::UnknownSku).notification(),
            Some(NotificationTemplate::OrderCancelled)
        );
        assert_eq!(
            Outcome::Rejected(RejectionReason::NegativePrice).notification(),
            None
        );
    }
}

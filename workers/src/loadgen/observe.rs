//! What loadgen saw of its orders' sagas, and whether each ended exactly once.
//!
//! The transport delivers at least once, so the same event (same `id`) may
//! arrive twice: that is deduplicated and is not a violation. Two *different*
//! terminal events for one order, or two different `notification.sent`, are:
//! the fleet did something twice.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use fleet_messages::{Envelope, EventData, NotificationTemplate};
use uuid::Uuid;

use super::mix::Category;
use super::outcome::Outcome;

/// The part of one consumed event that matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observation {
    pub(crate) event_id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) seen: Seen,
    /// When loadgen received it.
    pub(crate) at: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Terminal(Outcome),
    Notification(NotificationTemplate),
}

impl Observation {
    /// `None` for events that are neither terminal nor `notification.sent`.
    pub(crate) fn from_envelope(envelope: &Envelope, at: Instant) -> Option<Observation> {
        let seen = match &envelope.data {
            EventData::OrderConfirmed(_) => Seen::Terminal(Outcome::Confirmed),
            EventData::OrderCancelled(cancelled) => {
                Seen::Terminal(Outcome::Cancelled(cancelled.reason))
            }
            EventData::OrderRejected(rejected) => {
                Seen::Terminal(Outcome::Rejected(rejected.reason))
            }
            EventData::NotificationSent(sent) => Seen::Notification(sent.template),
            _ => return None,
        };
        Some(Observation {
            event_id: envelope.id,
            order_id: envelope.data.order_id(),
            seen,
            at,
        })
    }
}

/// What [`Tracker::record`] did with an observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// About an order of this run, first time this event id is seen.
    New,
    /// An event id seen before (an at-least-once redelivery).
    Duplicate,
    /// About an order this run did not submit (an earlier run, another client).
    Foreign,
}

#[derive(Clone, Debug)]
struct Terminal {
    event_id: Uuid,
    outcome: Outcome,
    at: Instant,
}

#[derive(Clone, Debug)]
struct OrderState {
    category: Category,
    expected: Outcome,
    /// Distinct terminal events, in the order observed.
    terminals: Vec<Terminal>,
    /// Distinct `notification.sent` events, in the order observed.
    notifications: Vec<NotificationTemplate>,
}

impl OrderState {
    /// Ended, and notified if its outcome notifies.
    fn is_complete(&self) -> bool {
        match self.terminals.first() {
            None => false,
            Some(terminal) => {
                terminal.outcome.notification().is_none() || !self.notifications.is_empty()
            }
        }
    }
}

/// Per-order bookkeeping of one run.
#[derive(Clone, Debug)]
pub(crate) struct Tracker {
    orders: HashMap<Uuid, OrderState>,
    /// Order ids in publishing order, so that reports are stable.
    sequence: Vec<Uuid>,
    seen_events: HashSet<Uuid>,
    complete: usize,
    ended: usize,
    duplicates: u64,
    foreign: u64,
}

/// Outcome counts of the summary (by the first terminal event of each order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct OutcomeCounts {
    pub(crate) confirmed: u64,
    pub(crate) cancelled_unknown_sku: u64,
    pub(crate) cancelled_insufficient_stock: u64,
    pub(crate) cancelled_payment_declined: u64,
    pub(crate) rejected: u64,
    pub(crate) missing: u64,
}

impl OutcomeCounts {
    fn add(&mut self, outcome: Outcome) {
        use fleet_messages::CancellationReason as Reason;
        let slot = match outcome {
            Outcome::Confirmed => &mut self.confirmed,
            Outcome::Cancelled(Reason::UnknownSku) => &mut self.cancelled_unknown_sku,
            Outcome::Cancelled(Reason::InsufficientStock) => &mut self.cancelled_insufficient_stock,
            Outcome::Cancelled(Reason::PaymentDeclined) => &mut self.cancelled_payment_declined,
            Outcome::Rejected(_) => &mut self.rejected,
        };
        *slot += 1;
    }

    /// Orders that ended (whatever the outcome).
    pub(crate) fn ended(&self) -> u64 {
        self.confirmed
            + self.cancelled_unknown_sku
            + self.cancelled_insufficient_stock
            + self.cancelled_payment_declined
            + self.rejected
    }
}

/// The verdict on a run.
#[derive(Clone, Debug)]
pub(crate) struct Evaluation {
    pub(crate) outcomes: OutcomeCounts,
    /// Orders whose outcome is not their category's.
    pub(crate) unexpected: u64,
    /// Broker events of the sagas that ended, by their outcomes.
    pub(crate) saga_events: u64,
    /// Submission to first terminal event, milliseconds, one per ended order
    /// with a known submission time. Unsorted.
    pub(crate) latencies_ms: Vec<f64>,
    /// When the last order's (first) terminal event arrived.
    pub(crate) last_terminal: Option<Instant>,
    /// Every violation, in publishing order of the orders.
    pub(crate) violations: Vec<String>,
    /// Every order ended once, as expected, and was notified once if it
    /// notifies.
    pub(crate) exactly_once: bool,
    /// Redeliveries of an already seen event id (not violations).
    pub(crate) duplicate_deliveries: u64,
    /// Events about orders of other runs (ignored).
    pub(crate) foreign_events: u64,
}

impl Evaluation {
    /// Whether the run passed: the exit status of loadgen.
    pub(crate) fn passed(&self) -> bool {
        self.exactly_once && self.outcomes.missing == 0 && self.unexpected == 0
    }
}

impl Tracker {
    /// A tracker for the orders of this run: `(order id, category, expected outcome)`.
    pub(crate) fn new(orders: impl IntoIterator<Item = (Uuid, Category, Outcome)>) -> Tracker {
        let mut map = HashMap::new();
        let mut sequence = Vec::new();
        for (order_id, category, expected) in orders {
            let state = OrderState {
                category,
                expected,
                terminals: Vec::new(),
                notifications: Vec::new(),
            };
            if map.insert(order_id, state).is_none() {
                sequence.push(order_id);
            }
        }
        Tracker {
            orders: map,
            sequence,
            seen_events: HashSet::new(),
            complete: 0,
            ended: 0,
            duplicates: 0,
            foreign: 0,
        }
    }

    pub(crate) fn record(&mut self, observation: Observation) -> Recorded {
        let Some(state) = self.orders.get_mut(&observation.order_id) else {
            self.foreign += 1;
            return Recorded::Foreign;
        };
        if !self.seen_events.insert(observation.event_id) {
            self.duplicates += 1;
            return Recorded::Duplicate;
        }
        let was_complete = state.is_complete();
        match observation.seen {
            Seen::Terminal(outcome) => {
                if state.terminals.is_empty() {
                    self.ended += 1;
                }
                state.terminals.push(Terminal {
                    event_id: observation.event_id,
                    outcome,
                    at: observation.at,
                });
            }
            Seen::Notification(template) => state.notifications.push(template),
        }
        if !was_complete && state.is_complete() {
            self.complete += 1;
        }
        Recorded::New
    }

    /// Every order ended, and every one that notifies was notified.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete == self.orders.len()
    }

    /// Orders with at least one terminal event.
    pub(crate) fn ended(&self) -> usize {
        self.ended
    }

    /// Orders of this run.
    pub(crate) fn len(&self) -> usize {
        self.orders.len()
    }

    /// The verdict. `submitted_at` gives the submission time of each order,
    /// for latencies; orders without one get no latency.
    pub(crate) fn evaluate(&self, submitted_at: &HashMap<Uuid, Instant>) -> Evaluation {
        let mut outcomes = OutcomeCounts::default();
        let mut unexpected = 0;
        let mut saga_events = 0;
        let mut latencies_ms = Vec::with_capacity(self.ended);
        let mut last_terminal: Option<Instant> = None;
        let mut violations = Vec::new();

        for order_id in &self.sequence {
            let Some(state) = self.orders.get(order_id) else {
                continue;
            };
            let category = state.category;
            let Some(first) = state.terminals.first() else {
                outcomes.missing += 1;
                violations.push(format!(
                    "order {order_id} ({category}): no terminal event, expected {}",
                    state.expected
                ));
                continue;
            };
            let outcome = first.outcome;
            outcomes.add(outcome);
            saga_events += outcome.saga_events();
            if let Some(submitted) = submitted_at.get(order_id) {
                latencies_ms
                    .push(first.at.saturating_duration_since(*submitted).as_secs_f64() * 1e3);
            }
            last_terminal = last_terminal.max(Some(first.at));

            if state.terminals.len() > 1 {
                let list: Vec<String> = state
                    .terminals
                    .iter()
                    .map(|t| format!("{} ({})", t.outcome, t.event_id))
                    .collect();
                violations.push(format!(
                    "order {order_id} ({category}): {} terminal events: {}",
                    state.terminals.len(),
                    list.join(", ")
                ));
            }
            if outcome != state.expected {
                unexpected += 1;
                violations.push(format!(
                    "order {order_id} ({category}): expected {}, got {outcome}",
                    state.expected
                ));
            }
            let notified = state.notifications.len();
            match outcome.notification() {
                Some(template) => {
                    if notified == 0 {
                        violations.push(format!(
                            "order {order_id} ({category}): {outcome} but no notification.sent"
                        ));
                    } else if notified > 1 {
                        violations.push(format!(
                            "order {order_id} ({category}): {notified} notification.sent events"
                        ));
                    }
                    if let Some(wrong) = state.notifications.iter().find(|t| **t != template) {
                        violations.push(format!(
                            "order {order_id} ({category}): notification template {wrong} \
                             after {outcome}"
                        ));
                    }
                }
                None if notified > 0 => violations.push(format!(
                    "order {order_id} ({category}): {notified} notification.sent after {outcome}"
                )),
                None => {}
            }
        }

        Evaluation {
            outcomes,
            unexpected,
            saga_events,
            latencies_ms,
            last_terminal,
            exactly_once: violations.is_empty(),
            violations,
            duplicate_deliveries: self.duplicates,
            foreign_events: self.foreign,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fleet_messages::{
        CancellationReason, NotificationSent, OrderCancelled, OrderConfirmed, OrderPlaced,
        OrderRejected, RejectionReason,
    };

    use super::*;

    const CONFIRMED: Seen = Seen::Terminal(Outcome::Confirmed);
    const UNKNOWN: Seen = Seen::Terminal(Outcome::Cancelled(CancellationReason::UnknownSku));
    const SENT_OK: Seen = Seen::Notification(NotificationTemplate::OrderConfirmed);
    const SENT_CANCEL: Seen = Seen::Notification(NotificationTemplate::OrderCancelled);
    const NO_ITEMS: Outcome = Outcome::Rejected(RejectionReason::NoItems);

    struct Run {
        start: Instant,
        valid: Uuid,
        unknown: Uuid,
        invalid: Uuid,
        tracker: Tracker,
        submitted: HashMap<Uuid, Instant>,
    }

    impl Run {
        fn new() -> Run {
            let (valid, unknown, invalid) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
            let start = Instant::now();
            let tracker = Tracker::new([
                (valid, Category::Valid, Outcome::Confirmed),
                (
                    unknown,
                    Category::UnknownSku,
                    Outcome::Cancelled(CancellationReason::UnknownSku),
                ),
                (invalid, Category::Invalid, NO_ITEMS),
            ]);
            let submitted = [valid, unknown, invalid]
                .into_iter()
                .map(|id| (id, start))
                .collect();
            Run {
                start,
                valid,
                unknown,
                invalid,
                tracker,
                submitted,
            }
        }

        /// Records a new event (fresh id) `ms` after the start.
        fn see(&mut self, order_id: Uuid, seen: Seen, ms: u64) -> Uuid {
            let event_id = Uuid::now_v7();
            self.again(event_id, order_id, seen, ms);
            event_id
        }

        /// Records the event `event_id` (again).
        fn again(&mut self, event_id: Uuid, order_id: Uuid, seen: Seen, ms: u64) -> Recorded {
            self.tracker.record(Observation {
                event_id,
                order_id,
                seen,
                at: self.start + Duration::from_millis(ms),
            })
        }

        fn happy(&mut self) {
            self.see(self.valid, CONFIRMED, 30);
            self.see(self.valid, SENT_OK, 35);
            self.see(self.unknown, UNKNOWN, 20);
            self.see(self.unknown, SENT_CANCEL, 25);
            self.see(self.invalid, Seen::Terminal(NO_ITEMS), 10);
        }

        fn evaluate(&self) -> Evaluation {
            self.tracker.evaluate(&self.submitted)
        }
    }

    #[test]
    fn a_clean_run_is_exactly_once() {
        let mut run = Run::new();
        assert!(!run.tracker.is_complete());
        run.happy();
        assert!(run.tracker.is_complete());
        assert_eq!(run.tracker.ended(), 3);
        let evaluation = run.evaluate();
        assert!(evaluation.exactly_once, "{:?}", evaluation.violations);
        assert!(evaluation.passed());
        assert_eq!(
            evaluation.outcomes,
            OutcomeCounts {
                confirmed: 1,
                cancelled_unknown_sku: 1,
                rejected: 1,
                ..OutcomeCounts::default()
            }
        );
        assert_eq!(evaluation.saga_events, 6 + 5 + 2);
        let mut latencies = evaluation.latencies_ms.clone();
        latencies.sort_by(f64::total_cmp);
        assert_eq!(latencies, vec![10.0, 20.0, 30.0]);
        assert_eq!(
            evaluation.last_terminal,
            Some(run.start + Duration::from_millis(30))
        );
    }

    #[test]
    fn completion_waits_for_the_notification() {
        let mut run = Run::new();
        run.see(run.invalid, Seen::Terminal(NO_ITEMS), 1);
        run.see(run.unknown, UNKNOWN, 1);
        run.see(run.unknown, SENT_CANCEL, 2);
        // A notification may overtake its terminal event on another stream.
        run.see(run.valid, SENT_OK, 3);
        assert!(!run.tracker.is_complete());
        run.see(run.valid, CONFIRMED, 4);
        assert!(run.tracker.is_complete());
    }

    #[test]
    fn redelivering_the_same_event_is_not_a_double() {
        let mut run = Run::new();
        let confirmed = run.see(run.valid, CONFIRMED, 30);
        let sent = run.see(run.valid, SENT_OK, 35);
        run.see(run.unknown, UNKNOWN, 20);
        run.see(run.unknown, SENT_CANCEL, 25);
        run.see(run.invalid, Seen::Terminal(NO_ITEMS), 10);
        for ms in [40, 50] {
            assert_eq!(
                run.again(confirmed, run.valid, CONFIRMED, ms),
                Recorded::Duplicate
            );
        }
        assert_eq!(run.again(sent, run.valid, SENT_OK, 60), Recorded::Duplicate);
        let evaluation = run.evaluate();
        assert!(evaluation.exactly_once, "{:?}", evaluation.violations);
        assert_eq!(evaluation.duplicate_deliveries, 3);
        assert_eq!(evaluation.outcomes.confirmed, 1);
        // The latency is the first delivery's.
        assert!(evaluation.latencies_ms.contains(&30.0));
        assert!(!evaluation.latencies_ms.contains(&40.0));
    }

    #[test]
    fn orders_without_submission_time_get_no_latency() {
        let mut run = Run::new();
        run.happy();
        let evaluation = run.tracker.evaluate(&HashMap::new());
        assert!(evaluation.passed());
        assert!(evaluation.latencies_ms.is_empty());
    }

    #[test]
    fn two_terminal_events_for_one_order_are_a_violation() {
        let mut run = Run::new();
        run.happy();
        run.see(run.valid, CONFIRMED, 40);
        let evaluation = run.evaluate();
        assert!(!evaluation.exactly_once);
        assert!(!evaluation.passed());
        assert_eq!(evaluation.violations.len(), 1);
        assert!(evaluation.violations[0].contains("2 terminal events"));
        // Counted once, by the first.
        assert_eq!(evaluation.outcomes.confirmed, 1);
    }

    #[test]
    fn two_notifications_or_none_are_violations() {
        let mut run = Run::new();
        run.happy();
        run.see(run.unknown, SENT_CANCEL, 50);
        let evaluation = run.evaluate();
        assert_eq!(evaluation.violations.len(), 1);
        assert!(evaluation.violations[0].contains("2 notification.sent"));

        let mut run = Run::new();
        run.see(run.valid, CONFIRMED, 30);
        run.see(run.unknown, UNKNOWN, 20);
        run.see(run.unknown, SENT_CANCEL, 25);
        run.see(run.invalid, Seen::Terminal(NO_ITEMS), 10);
        run.see(run.invalid, SENT_CANCEL, 11);
        let evaluation = run.evaluate();
        assert!(!evaluation.exactly_once);
        assert_eq!(evaluation.outcomes.missing, 0);
        assert_eq!(
            evaluation.violations.len(),
            2,
            "{:?}",
            evaluation.violations
        );
        assert!(evaluation.violations[0].contains("no notification.sent"));
        assert!(evaluation.violations[1].contains("after order.rejected(no_items)"));
    }

    #[test]
    fn wrong_template_is_a_violation() {
        let mut run = Run::new();
        run.see(run.valid, CONFIRMED, 30);
        run.see(run.valid, SENT_CANCEL, 31);
        let evaluation = run.evaluate();
        assert!(
            evaluation
                .violations
                .iter()
                .any(|v| v.contains("template order_cancelled"))
        );
    }

    #[test]
    fn missing_and_unexpected_outcomes_fail_the_run() {
        let mut run = Run::new();
        run.see(
            run.valid,
            Seen::Terminal(Outcome::Cancelled(CancellationReason::PaymentDeclined)),
            5,
        );
        run.see(run.valid, SENT_CANCEL, 6);
        run.see(
            run.invalid,
            Seen::Terminal(Outcome::Rejected(RejectionReason::NegativePrice)),
            7,
        );
        let evaluation = run.evaluate();
        assert_eq!(evaluation.outcomes.missing, 1);
        assert_eq!(evaluation.outcomes.cancelled_payment_declined, 1);
        assert_eq!(evaluation.outcomes.rejected, 1);
        assert_eq!(evaluation.outcomes.ended(), 2);
        assert_eq!(evaluation.unexpected, 2);
        assert_eq!(evaluation.saga_events, 7 + 2);
        assert!(!evaluation.exactly_once);
        assert!(!evaluation.passed());
        assert_eq!(
            evaluation.violations.len(),
            3,
            "{:?}",
            evaluation.violations
        );
        assert!(
            evaluation
                .violations
                .iter()
                .any(|v| v.contains("no terminal event"))
        );
        assert!(evaluation.violations.iter().any(|v| {
            v.contains("expected order.confirmed, got order.cancelled(payment_declined)")
        }));
    }

    #[test]
    fn events_of_other_runs_are_ignored() {
        let mut run = Run::new();
        run.happy();
        assert_eq!(
            run.again(Uuid::now_v7(), Uuid::now_v7(), CONFIRMED, 1),
            Recorded::Foreign
        );
        let evaluation = run.evaluate();
        assert!(evaluation.passed());
        assert_eq!(evaluation.foreign_events, 1);
    }

    #[test]
    fn envelopes_map_to_observations() {
        let order_id = Uuid::now_v7();
        let at = Instant::now();
        let cases: Vec<(EventData, Option<Seen>)> = vec![
            (
                OrderConfirmed {
                    order_id,
                    total_cents: 5,
                }
                .into(),
                Some(CONFIRMED),
            ),
            (
                OrderCancelled {
                    order_id,
                    reason: CancellationReason::UnknownSku,
                }
                .into(),
                Some(UNKNOWN),
            ),
            (
                OrderRejected {
                    order_id,
                    reason: RejectionReason::NoItems,
                }
                .into(),
                Some(Seen::Terminal(NO_ITEMS)),
            ),
            (
                NotificationSent {
                    order_id,
                    template: NotificationTemplate::OrderConfirmed,
                }
                .into(),
                Some(SENT_OK),
            ),
            (
                OrderPlaced {
                    order_id,
                    customer_id: "c".into(),
                    items: vec![],
                    total_cents: 0,
                }
                .into(),
                None,
            ),
        ];
        for (data, expected) in cases {
            let envelope = Envelope::new("test", data, order_id, None);
            let observation = Observation::from_envelope(&envelope, at);
            assert_eq!(observation.as_ref().map(|o| o.seen), expected);
            if let Some(observation) = observation {
                assert_eq!(observation.order_id, order_id);
                assert_eq!(observation.event_id, envelope.id);
            }
        }
    }
}

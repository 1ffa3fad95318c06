//! The summary of a run: one JSON document (`--json`) or a few lines for
//! people, on stdout.

use std::time::Duration;

use serde::Serialize;

use super::observe::{Evaluation, OutcomeCounts};

/// Violations listed in the summary; the rest are counted in the last entry.
pub(crate) const MAX_VIOLATIONS: usize = 20;

/// The JSON summary. Field order is the output order.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Summary {
    pub(crate) transport: String,
    pub(crate) namespace: String,
    pub(crate) orders: u64,
    pub(crate) published: u64,
    /// First publish to the last order's terminal event.
    pub(crate) duration_s: f64,
    /// First publish to the last confirm.
    pub(crate) publish_duration_s: f64,
    pub(crate) sagas_per_s: f64,
    pub(crate) events_per_s: f64,
    pub(crate) outcomes: OutcomeCounts,
    pub(crate) unexpected_outcomes: u64,
    pub(crate) latency_ms: Latency,
    pub(crate) exactly_once: bool,
    pub(crate) violations: Vec<String>,
}

/// Saga latency percentiles, milliseconds; `null` when no order ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: Option<f64>,
    pub(crate) p95: Option<f64>,
    pub(crate) p99: Option<f64>,
    pub(crate) max: Option<f64>,
}

impl Latency {
    pub(crate) fn of(mut samples_ms: Vec<f64>) -> Latency {
        samples_ms.sort_by(f64::total_cmp);
        let at = |p| percentile(&samples_ms, p).map(round3);
        Latency {
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
            max: samples_ms.last().copied().map(round3),
        }
    }
}

/// What [`Summary::new`] needs besides the evaluation.
#[derive(Clone, Debug)]
pub(crate) struct RunFacts {
    pub(crate) transport: String,
    pub(crate) namespace: String,
    pub(crate) orders: u64,
    pub(crate) published: u64,
    pub(crate) duration: Duration,
    pub(crate) publish_duration: Duration,
}

impl Summary {
    pub(crate) fn new(facts: RunFacts, evaluation: &Evaluation) -> Summary {
        let seconds = facts.duration.as_secs_f64();
        let per_second = |count: u64| {
            if seconds > 0.0 {
                round3(count as f64 / seconds)
            } else {
                0.0
            }
        };
        Summary {
            transport: facts.transport,
            namespace: facts.namespace,
            orders: facts.orders,
            published: facts.published,
            duration_s: round3(seconds),
            publish_duration_s: round3(facts.publish_duration.as_secs_f64()),
            sagas_per_s: per_second(evaluation.outcomes.ended()),
            events_per_s: per_second(evaluation.saga_events),
            outcomes: evaluation.outcomes,
            unexpected_outcomes: evaluation.unexpected,
            latency_ms: Latency::of(evaluation.latencies_ms.clone()),
            exactly_once: evaluation.exactly_once,
            violations: truncate(&evaluation.violations),
        }
    }

    /// The JSON document, pretty-printed.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|error| {
            // Serializing plain structs of numbers and strings cannot fail;
            // stay machine-readable if it ever did.
            serde_json::json!({ "error": error.to_string() }).to_string()
        })
    }

    /// The summary for people.
    pub(crate) fn to_text(&self) -> String {
        let outcomes = &self.outcomes;
        let ms = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let mut lines = vec![
            format!(
                "transport {}, namespace {}: {} orders, {} published",
                self.transport, self.namespace, self.orders, self.published
            ),
            format!(
                "duration {:.3} s (publishing {:.3} s): {:.1} sagas/s, {:.1} events/s",
                self.duration_s, self.publish_duration_s, self.sagas_per_s, self.events_per_s
            ),
            format!(
                "outcomes: confirmed {}, cancelled unknown_sku {}, cancelled insufficient_stock \
                 {}, cancelled payment_declined {}, rejected {}, missing {}",
                outcomes.confirmed,
                outcomes.cancelled_unknown_sku,
                outcomes.cancelled_insufficient_stock,
                outcomes.cancelled_payment_declined,
                outcomes.rejected,
                outcomes.missing
            ),
            format!("unexpected outcomes: {}", self.unexpected_outcomes),
            format!(
                "saga latency ms: p50 {}, p95 {}, p99 {}, max {}",
                ms(self.latency_ms.p50),
                ms(self.latency_ms.p95),
                ms(self.latency_ms.p99),
                ms(self.latency_ms.max)
            ),
            format!(
                "exactly once: {}",
                if self.exactly_once { "yes" } else { "NO" }
            ),
        ];
        lines.extend(self.violations.iter().map(|v| format!("  violation: {v}")));
        lines.join("\n")
    }

    /// Prints the summary on stdout: only the JSON document with `json`.
    // loadgen's output is its summary on stdout; logs go to stderr.
    #[allow(clippy::print_stdout, reason = "the summary is the program's output")]
    pub(crate) fn print(&self, json: bool) {
        if json {
            println!("{}", self.to_json());
        } else {
            println!("{}", self.to_text());
        }
    }
}

/// The nearest-rank percentile `p` (0–100] of `sorted` (ascending).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n) - 1).copied()
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// At most [`MAX_VIOLATIONS`] entries, the last one counting the rest.
fn truncate(violations: &[String]) -> Vec<String> {
    if violations.len() <= MAX_VIOLATIONS {
        return violations.to_vec();
    }
    let shown = MAX_VIOLATIONS - 1;
    let mut list = violations[..shown].to_vec();
    list.push(format!("… and {} more", violations.len() - shown));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 95.0), Some(95.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 50.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0], 50.0), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0], 51.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[3.0, 4.0], 0.0), Some(3.0));
    }

    #[test]
    fn latency_sorts_its_samples() {
        let latency = Latency::of(vec![30.0, 10.0, 20.0, 40.0]);
        assert_eq!(latency.p50, Some(20.0));
        assert_eq!(latency.p95, Some(40.0));
        assert_eq!(latency.max, Some(40.0));
        assert_eq!(Latency::of(vec![]), Latency::default());
    }

    fn evaluation(violations: usize) -> Evaluation {
        Evaluation {
            outcomes: OutcomeCounts {
                confirmed: 7,
                cancelled_unknown_sku: 1,
                cancelled_payment_declined: 1,
                rejected: 1,
                ..OutcomeCounts::default()
            },
            unexpected: 0,
            saga_events: 7 * 6 + 5 + 7 + 2,
            latencies_ms: vec![12.3456, 1.0],
            last_terminal: None,
            violations: (0..violations).map(|i| format!("v{i}")).collect(),
            exactly_once: violations == 0,
            duplicate_deliveries: 0,
            foreign_events: 0,
        }
    }

    fn facts() -> RunFacts {
        RunFacts {
            transport: "redis".into(),
            namespace: "fleet".into(),
            orders: 10,
            published: 10,
            duration: Duration::from_secs(2),
            publish_duration: Duration::from_millis(250),
        }
    }

    #[test]
    fn summary_json_has_the_documented_shape() {
        let summary = Summary::new(facts(), &evaluation(0));
        let json: serde_json::Value = serde_json::from_str(&summary.to_json()).unwrap();
        assert_eq!(json["transport"], "redis");
        assert_eq!(json["namespace"], "fleet");
        assert_eq!(json["orders"], 10);
        assert_eq!(json["published"], 10);
        assert_eq!(json["duration_s"], 2.0);
        assert_eq!(json["publish_duration_s"], 0.25);
        assert_eq!(json["sagas_per_s"], 5.0);
        assert_eq!(json["events_per_s"], 28.0);
        assert_eq!(json["outcomes"]["confirmed"], 7);
        assert_eq!(json["outcomes"]["cancelled_insufficient_stock"], 0);
        assert_eq!(json["outcomes"]["missing"], 0);
        assert_eq!(json["unexpected_outcomes"], 0);
        assert_eq!(json["latency_ms"]["p50"], 1.0);
        assert_eq!(json["latency_ms"]["max"], 12.346);
        assert_eq!(json["exactly_once"], true);
        assert_eq!(json["violations"], serde_json::json!([]));
        assert!(summary.to_text().contains("exactly once: yes"));
    }

    #[test]
    fn violations_are_capped() {
        let summary = Summary::new(facts(), &evaluation(25));
        assert_eq!(summary.violations.len(), MAX_VIOLATIONS);
        assert_eq!(summary.violations[18], "v18");
        assert_eq!(summary.violations[19], "… and 6 more");
        let summary = Summary::new(facts(), &evaluation(20));
        assert_eq!(summary.violations.len(), 20);
        assert_eq!(summary.violations[19], "v19");
    }

    #[test]
    fn zero_duration_gives_zero_rates() {
        let mut facts = facts();
        facts.duration = Duration::ZERO;
        let summary = Summary::new(facts, &evaluation(0));
        assert_eq!(summary.sagas_per_s, 0.0);
        assert_eq!(summary.events_per_s, 0.0);
    }
}

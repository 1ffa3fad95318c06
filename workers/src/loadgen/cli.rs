//! The command line of `loadgen`.

use clap::Parser;

use super::mix::{DEFAULT_MIX, Mix};

/// Publishes `order.submitted` events (a mix of valid, unknown-SKU,
/// over-credit and invalid orders), observes how each saga ends and prints a
/// summary: outcomes, throughput, saga latency, and whether every order ended
/// exactly once.
///
/// Transport, namespace and broker URLs come from the fleet configuration
/// (FLEET__TRANSPORT, FLEET__NAMESPACE, AMQP_URL, REDIS_URL, ...); the
/// inventory seed, credit limit and order maximum from the inventory-worker,
/// payment-worker and order-worker settings. Exit status: 0 when every order
/// ended exactly once as expected, 1 otherwise or on a failure, 2 on bad
/// usage or configuration.
#[derive(Clone, Debug, Parser)]
#[command(name = "loadgen", version)]
pub(crate) struct Args {
    /// Orders to submit.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) orders: u64,

    /// Target rate in orders per second; 0 publishes as fast as the broker
    /// confirms (up to 64 batches in flight). With a rate, batches are made
    /// smaller so that at least 20 leave per second, each when it is due,
    /// without waiting for earlier confirms.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) rate: f64,

    /// Share of each kind of order, as category=weight pairs (percentages or
    /// any weights; left-out categories get none). Categories: valid
    /// (→ order.confirmed), unknown_sku (→ order.cancelled unknown_sku),
    /// over_credit (→ order.cancelled payment_declined), invalid
    /// (→ order.rejected).
    #[arg(long, default_value = DEFAULT_MIX)]
    pub(crate) mix: Mix,

    /// Distinct customers the valid orders are spread over (fresh ids each
    /// run). Unit prices are chosen so that no customer exceeds the credit
    /// limit.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) customers: u64,

    /// Seconds to wait, after the last order is published, for every saga
    /// to end; orders still open then count as missing.
    #[arg(long, default_value_t = 60)]
    pub(crate) timeout: u64,

    /// Most orders per publish (confirms are pipelined within a batch).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) batch: u32,

    /// Print only the JSON summary on stdout (logs stay on stderr).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Largest accepted `--rate`, orders per second.
const MAX_RATE: f64 = 10_000_000.0;
/// Smallest non-zero `--rate`: slower runs would take days.
const MIN_RATE: f64 = 0.001;

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of orders per second"))?;
    if rate == 0.0 || (MIN_RATE..=MAX_RATE).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "`{s}` is out of range: 0 (as fast as possible) or {MIN_RATE} to {MAX_RATE} orders \
             per second"
        ))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;
    use crate::loadgen::mix::Category;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.orders, 1000);
        assert_eq!(args.rate, 0.0);
        assert_eq!(args.mix, Mix::default());
        assert_eq!(args.customers, 100);
        assert_eq!(args.timeout, 60);
        assert_eq!(args.batch, 200);
        assert!(!args.json);
    }

    #[test]
    fn options_parse() {
        let args = parse(&[
            "--orders",
            "5",
            "--rate",
            "12.5",
            "--mix",
            "valid=1,invalid=1",
            "--customers",
            "3",
            "--timeout",
            "9",
            "--batch",
            "7",
            "--json",
        ])
        .unwrap();
        assert_eq!(args.orders, 5);
        assert_eq!(args.rate, 12.5);
        assert_eq!(args.mix.weight(Category::Invalid), 1.0);
        assert_eq!(args.mix.weight(Category::OverCredit), 0.0);
        assert_eq!((args.customers, args.timeout, args.batch), (3, 9, 7));
        assert!(args.json);
    }

    #[test]
    fn bad_usage_is_a_usage_error_naming_the_problem() {
        for (args, needle) in [
            (&["--mix", "valid=1,nope=2"][..], "`nope`"),
            (&["--mix", "valid=abc"][..], "bad weight `abc`"),
            (&["--rate=-1"][..], "out of range"),
            (&["--rate", "fast"][..], "not a number"),
            (&["--orders", "0"][..], "--orders"),
            (&["--customers", "0"][..], "--customers"),
            (&["--batch", "0"][..], "--batch"),
        ] {
            let error = parse(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}");
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "{args:?}");
            let text = error.to_string();
            assert!(text.contains(needle), "{args:?}: {text}");
        }
    }
}

//! The reconnect policy shared by both transports.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Exponential backoff with jitter from 100 ms to 10 s, without a cap on
/// attempts: a long-running consumer keeps trying until it is stopped.
pub(crate) fn reconnect_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
}

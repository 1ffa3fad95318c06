//! The fleet's one integration test binary (one binary links once and runs
//! every suite in parallel). Each module is a suite; each test isolates itself
//! through `fleet_tests::TestContext`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Runs each listed `async fn name(transport: &'static str)` of the calling
/// suite once per transport, as `<suite>::rabbitmq::name` and
/// `<suite>::redis::name` (so `-E 'test(redis)'` selects one transport).
macro_rules! on_both_transports {
    (worker_threads = $threads:literal; $($test:ident),* $(,)?) => {
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
                async fn $test() {
                    super::$test("rabbitmq").await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
                async fn $test() {
                    super::$test("redis").await;
                }
            )*
        }
    };
    ($($test:ident),* $(,)?) => {
        on_both_transports!(worker_threads = 2; $($test),*);
    };
}

mod batching;
mod binaries;
mod broker;
mod chaos;
mod deploy;
mod dlq_tool;
mod faults;
mod fleet;
mod outbox;
mod poison_corpus;
mod redis_transport;
mod services;

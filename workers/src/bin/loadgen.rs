//! loadgen: publishes a mix of orders, observes how every saga ends and
//! prints a summary. See `fleet_workers::loadgen` and `loadgen --help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fleet_workers::loadgen::main().await
}

//! order-worker: see `fleet_workers::order`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fleet_workers::runtime::main::<fleet_workers::order::OrderWorker>().await
}

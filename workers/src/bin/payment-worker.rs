//! payment-worker: see `fleet_workers::payment`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fleet_workers::runtime::main::<fleet_workers::payment::PaymentWorker>().await
}

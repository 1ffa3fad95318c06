//! notification-worker: see `fleet_workers::notification`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fleet_workers::runtime::main::<fleet_workers::notification::NotificationWorker>().await
}

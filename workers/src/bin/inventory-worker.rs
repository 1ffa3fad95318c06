//! inventory-worker: see `fleet_workers::inventory`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fleet_workers::runtime::main::<fleet_workers::inventory::InventoryWorker>().await
}

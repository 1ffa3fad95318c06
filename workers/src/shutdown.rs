//! Listening for the signals that ask a replica to drain.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Registers for SIGTERM (Kubernetes, docker stop, scaling down) and SIGINT
/// (Ctrl-C) *now*, before anything slow happens, so that a signal during
/// start-up is not fatal: the returned token is cancelled when one arrives,
/// and the worker drains as soon as it is up.
pub(crate) fn listen() -> CancellationToken {
    let requested = CancellationToken::new();
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    let token = requested.clone();
    tokio::spawn(async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (Err(error), _) | (_, Err(error)) => {
                warn!(%error, "cannot listen for SIGTERM/SIGINT; stop the worker with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
        token.cancel();
    });
    requested
}

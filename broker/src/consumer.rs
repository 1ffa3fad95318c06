use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Delivery;

/// A stream of deliveries for one worker replica.
///
/// Transport tasks fetch from the broker (reconnecting as needed) into a
/// buffer bounded by the prefetch. Shutting down is two steps, so that
/// nothing fetched is stranded: [`Consumer::stop`] stops fetching while
/// [`Consumer::next`] still yields what was already fetched and then `None`;
/// once those are settled, [`Consumer::shutdown`] closes the connections.
#[derive(Debug)]
pub struct Consumer {
    deliveries: mpsc::Receiver<Delivery>,
    stop: CancellationToken,
    close: CancellationToken,
    tasks: JoinSet<()>,
}

impl Consumer {
    pub(crate) fn new(
        deliveries: mpsc::Receiver<Delivery>,
        stop: CancellationToken,
        close: CancellationToken,
        tasks: JoinSet<()>,
    ) -> Self {
        Self {
            deliveries,
            stop,
            close,
            tasks,
        }
    }

    /// The next delivery; `None` once stopped and drained.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }

    /// A delivery that is already fetched, without waiting; `None` if none
    /// is (for gathering what is ready into one batch).
    pub fn try_next(&mut self) -> Option<Delivery> {
        self.deliveries.try_recv().ok()
    }

    /// Stops fetching from the broker. Already fetched deliveries still come
    /// out of [`Consumer::next`].
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops fetching, releases what was fetched but not taken (it will be
    /// delivered again), and closes the connections once the tasks end.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        self.deliveries.close();
        while self.deliveries.recv().await.is_some() {}
        self.close.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

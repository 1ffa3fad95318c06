//! One delivery, start to finish: decode, transaction, inbox claim, handler,
//! outbox, commit, and only then acknowledge.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sqlx::PgPool;
use tracing::{Instrument, debug, info, info_span, warn};

use fleet_broker::Delivery;
use fleet_config::RetrySettings;
use fleet_messages::Envelope;
use fleet_outbox::Claim;

use crate::handler::{Handler, HandlerError};
use crate::metrics::{
    CONSUMED, DEAD_LETTERED, DUPLICATES, HANDLED, HANDLER_SECONDS, RETRIED, SETTLE_FAILURES,
};

/// What every delivery of one worker replica needs.
#[derive(Debug)]
pub(crate) struct Processor<H> {
    pub(crate) handler: H,
    pub(crate) pool: PgPool,
    pub(crate) retry: RetrySettings,
    pub(crate) max_event_bytes: usize,
}

/// How a delivery ended when nothing went wrong.
enum Handled {
    Done,
    Duplicate,
}

impl<H: Handler> Processor<H> {
    pub(crate) async fn process(self: Arc<Self>, delivery: Delivery) {
        let started = Instant::now();
        let worker = H::WORKER.name();
        ::metrics::counter!(CONSUMED, "worker" => worker).increment(1);
        let attempt = delivery.info().attempt;

        // Poison never reaches a transaction: it is dead-lettered at once,
        // and the messages behind it flow on.
        let envelope = match Envelope::decode(delivery.body(), self.max_event_bytes) {
            Ok(envelope) => envelope,
            Err(error) => {
                warn!(worker, %error, position = %delivery.info().position, "poison event dead-lettered");
                dead_letter(delivery, error.kind(), &error.to_string()).await;
                return;
            }
        };
        let event_type = envelope.event_type();
        if !H::WORKER.consumes().contains(&event_type) {
            let reason = format!("{worker} does not consume {event_type}");
            dead_letter(delivery, "unexpected_type", &reason).await;
            return;
        }

        let span = info_span!(
            "event",
            worker,
            event_id = %envelope.id,
            event_type = %event_type,
            correlation_id = %envelope.correlation_id,
            attempt,
        );
        async move {
            match self.handle(&envelope).await {
                Ok(Handled::Done) => {
                    settle(delivery.ack().await);
                    ::metrics::counter!(HANDLED, "worker" => worker, "type" => event_type.as_str())
                        .increment(1);
                    debug!("handled");
                }
                Ok(Handled::Duplicate) => {
                    settle(delivery.ack().await);
                    ::metrics::counter!(DUPLICATES, "worker" => worker).increment(1);
                    debug!("duplicate acknowledged without effect");
                }
                Err(HandlerError::Permanent { kind, reason }) => {
                    warn!(kind, %reason, "event dead-lettered");
                    dead_letter(delivery, kind, &reason).await;
                }
                Err(
                    error @ (HandlerError::Transient(_)
                    | HandlerError::Unavailable(_)
                    | HandlerError::Panicked(_)),
                ) => {
                    if matches!(error, HandlerError::Unavailable(_)) {
                        self.wait_for_database().await;
                    }
                    if attempt >= self.retry.max_attempts {
                        warn!(%error, "out of attempts; event dead-lettered");
                        dead_letter(delivery, error.kind(), &error.to_string()).await;
                    } else {
                        let delay = self.retry.delay_for(attempt);
                        warn!(%error, ?delay, "event will be retried");
                        ::metrics::counter!(RETRIED, "worker" => worker).increment(1);
                        settle(delivery.retry(delay, &error.to_string()).await);
                    }
                }
            }
            ::metrics::histogram!(HANDLER_SECONDS, "worker" => worker, "type" => event_type.as_str())
                .record(started.elapsed().as_secs_f64());
        }
        .instrument(span)
        .await;
    }

    /// The transaction: inbox claim, handler, outbox, commit. Nothing is
    /// acknowledged until this returned `Ok`.
    async fn handle(&self, envelope: &Envelope) -> Result<Handled, HandlerError> {
        let mut transaction = self.pool.begin().await?;
        if fleet_outbox::claim(&mut transaction, H::WORKER.name(), envelope.id).await?
            == Claim::Duplicate
        {
            transaction.commit().await?;
            return Ok(Handled::Duplicate);
        }
        let emitted = AssertUnwindSafe(self.handler.handle(&mut transaction, envelope))
            .catch_unwind()
            .await
            .map_err(|panic| HandlerError::Panicked(panic_message(panic.as_ref())))??;
        for event in &emitted {
            // What consumers would dead-letter must never leave this worker.
            event.data.validate().map_err(|error| {
                HandlerError::permanent(
                    "invalid_emitted_event",
                    format!("{}: {error}", event.event_type()),
                )
            })?;
        }
        fleet_outbox::enqueue(&mut transaction, &emitted).await?;
        transaction.commit().await?;
        Ok(Handled::Done)
    }
}

impl<H> Processor<H> {
    /// Holds the caller (and so its concurrency slot: the replica takes no
    /// new work) until the database answers, for at most
    /// [`OUTAGE_WAIT_LIMIT`]. Then the event's retry is scheduled: an outage
    /// costs each event in flight one attempt, not all of them.
    async fn wait_for_database(&self) {
        let started = Instant::now();
        let mut logged = false;
        while started.elapsed() < OUTAGE_WAIT_LIMIT {
            if sqlx::query("SELECT 1").execute(&self.pool).await.is_ok() {
                if logged {
                    info!(waited = ?started.elapsed(), "database reachable again");
                }
                return;
            }
            if !logged {
                warn!("database unreachable; holding deliveries until it answers");
                logged = true;
            }
            tokio::time::sleep(OUTAGE_PROBE_INTERVAL).await;
        }
    }
}

/// How long one delivery waits for an unreachable database before its
/// retry is scheduled anyway (its delay tiers then take over).
const OUTAGE_WAIT_LIMIT: Duration = Duration::from_secs(60);
const OUTAGE_PROBE_INTERVAL: Duration = Duration::from_millis(500);

async fn dead_letter(delivery: Delivery, kind: &str, reason: &str) {
    let worker = delivery.info().worker.clone();
    ::metrics::counter!(DEAD_LETTERED, "worker" => worker, "kind" => kind.to_owned()).increment(1);
    settle(delivery.dead_letter(kind, reason).await);
}

/// A settlement the broker refused leaves the delivery unacknowledged: it
/// comes again (to this or another replica) and the inbox absorbs it.
fn settle(result: Result<(), fleet_broker::BrokerError>) {
    if let Err(error) = result {
        ::metrics::counter!(SETTLE_FAILURES).increment(1);
        warn!(%error, "could not settle a delivery; it will be delivered again");
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

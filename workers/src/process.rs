//! One delivery, start to finish: decode, transaction, inbox claim, handler,
//! outbox, commit, and only then acknowledge; and the same for a batch of
//! deliveries that were ready together, in one transaction.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sqlx::PgPool;
use tracing::{Instrument, debug, info, info_span, warn};

use fleet_broker::Delivery;
use fleet_config::RetrySettings;
use fleet_messages::{Envelope, EventType};
use fleet_outbox::Claim;

use crate::handler::{Handler, HandlerError};
use crate::metrics::{
    BATCH_EVENTS, BATCH_FALLBACKS, CONSUMED, DEAD_LETTERED, DUPLICATES, HANDLED, HANDLER_SECONDS,
    RETRIED, SETTLE_FAILURES,
};

/// What every delivery of one worker replica needs.
#[derive(Debug)]
pub(crate) struct Processor<H> {
    pub(crate) handler: H,
    pub(crate) pool: PgPool,
    pub(crate) retry: RetrySettings,
    pub(crate) max_event_bytes: usize,
    /// Writes emitted events into the outbox; after the commit they go to
    /// this replica's relay in memory (or wake its claims), so they are
    /// published at once.
    pub(crate) outbox: fleet_outbox::RelayWriter,
}

/// How a delivery ended when nothing went wrong.
enum Handled {
    Done,
    Duplicate,
}

impl<H: Handler> Processor<H> {
    /// Handles one delivery on its own.
    pub(crate) async fn process(&self, delivery: Delivery) {
        let started = Instant::now();
        if let Some((delivery, envelope)) = self.decode(delivery).await {
            self.process_decoded(delivery, envelope, started).await;
        }
    }

    /// Handles deliveries that were ready together: one transaction, one
    /// inbox insert, one outbox insert and one commit for all of them, then
    /// each is acknowledged. If any of them fails, the transaction is
    /// rolled back and each is handled again on its own, so one bad event
    /// costs its neighbours nothing but time.
    pub(crate) async fn process_batch(&self, deliveries: Vec<Delivery>) {
        let started = Instant::now();
        let mut ready = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            if let Some(decoded) = self.decode(delivery).await {
                ready.push(decoded);
            }
        }
        ::metrics::histogram!(BATCH_EVENTS, "worker" => H::WORKER.name())
            .record(ready.len() as f64);
        if ready.len() <= 1 {
            for (delivery, envelope) in ready {
                self.process_decoded(delivery, envelope, started).await;
            }
            return;
        }
        let envelopes: Vec<&Envelope> = ready.iter().map(|(_, envelope)| envelope).collect();
        let worker = H::WORKER.name();
        match self.handle_together(&envelopes).await {
            Ok(handled) => {
                let mut deliveries = Vec::with_capacity(ready.len());
                let mut counted = Vec::with_capacity(ready.len());
                for ((delivery, envelope), handled) in ready.into_iter().zip(handled) {
                    deliveries.push(delivery);
                    counted.push((envelope.event_type(), handled));
                }
                settle(Delivery::ack_all(deliveries).await);
                for (event_type, handled) in counted {
                    count_handled::<H>(event_type, handled);
                    ::metrics::histogram!(HANDLER_SECONDS, "worker" => worker, "type" => event_type.as_str())
                        .record(started.elapsed().as_secs_f64());
                }
            }
            Err(error) => {
                debug!(worker, %error, events = ready.len(), "batch failed; handling its events one at a time");
                ::metrics::counter!(BATCH_FALLBACKS, "worker" => worker).increment(1);
                for (delivery, envelope) in ready {
                    self.process_decoded(delivery, envelope, Instant::now())
                        .await;
                }
            }
        }
    }

    /// Decodes the delivery's envelope. Poison (and an event this worker
    /// does not consume) never reaches a transaction: it is dead-lettered
    /// at once, and the messages behind it flow on.
    async fn decode(&self, delivery: Delivery) -> Option<(Delivery, Envelope)> {
        let worker = H::WORKER.name();
        ::metrics::counter!(CONSUMED, "worker" => worker).increment(1);
        match Envelope::decode(delivery.body(), self.max_event_bytes) {
            Ok(envelope) if H::WORKER.consumes().contains(&envelope.event_type()) => {
                Some((delivery, envelope))
            }
            Ok(envelope) => {
                let reason = format!("{worker} does not consume {}", envelope.event_type());
                dead_letter(delivery, "unexpected_type", &reason).await;
                None
            }
            Err(error) => {
                warn!(worker, %error, position = %delivery.info().position, "poison event dead-lettered");
                dead_letter(delivery, error.kind(), &error.to_string()).await;
                None
            }
        }
    }

    /// One decoded event on its own: its transaction, then ack, retry or
    /// dead letter.
    async fn process_decoded(&self, delivery: Delivery, envelope: Envelope, started: Instant) {
        let worker = H::WORKER.name();
        let attempt = delivery.info().attempt;
        let event_type = envelope.event_type();
        let span = event_span::<H>(&envelope, attempt);
        async move {
            match self.handle(&envelope).await {
                Ok(handled) => {
                    settle(delivery.ack().await);
                    count_handled::<H>(event_type, handled);
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
        let emitted = self.run_handler(&mut transaction, envelope).await?;
        let outgoing = self.outbox.enqueue(&mut transaction, &emitted).await?;
        transaction.commit().await?;
        outgoing.committed();
        Ok(Handled::Done)
    }

    /// The same for several events in one transaction, in the order given
    /// (each sees the state the ones before it left). Any error rolls all
    /// of them back.
    async fn handle_together(&self, envelopes: &[&Envelope]) -> Result<Vec<Handled>, HandlerError> {
        let mut transaction = self.pool.begin().await?;
        let ids: Vec<uuid::Uuid> = envelopes.iter().map(|envelope| envelope.id).collect();
        let claims = fleet_outbox::claim_all(&mut transaction, H::WORKER.name(), &ids).await?;
        let events: Vec<&Envelope> = envelopes
            .iter()
            .zip(&claims)
            .filter(|(_, claim)| **claim == Claim::New)
            .map(|(event, _)| *event)
            .collect();
        let span = info_span!("batch", worker = H::WORKER.name(), events = events.len());
        let emitted = async {
            AssertUnwindSafe(self.handler.lock_batch(&mut transaction, &events))
                .catch_unwind()
                .await
                .map_err(|panic| HandlerError::Panicked(panic_message(panic.as_ref())))??;
            AssertUnwindSafe(self.handler.handle_batch(&mut transaction, &events))
                .catch_unwind()
                .await
                .map_err(|panic| HandlerError::Panicked(panic_message(panic.as_ref())))?
        }
        .instrument(span)
        .await?;
        let emitted: Vec<Envelope> = emitted.into_iter().flatten().collect();
        validate_emitted(&emitted)?;
        let outgoing = self.outbox.enqueue(&mut transaction, &emitted).await?;
        transaction.commit().await?;
        outgoing.committed();
        Ok(claims
            .into_iter()
            .map(|claim| match claim {
                Claim::New => Handled::Done,
                Claim::Duplicate => Handled::Duplicate,
            })
            .collect())
    }

    /// The handler itself, with panics caught and what it emits checked.
    async fn run_handler(
        &self,
        transaction: &mut sqlx::PgConnection,
        envelope: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        let emitted = AssertUnwindSafe(self.handler.handle(transaction, envelope))
            .catch_unwind()
            .await
            .map_err(|panic| HandlerError::Panicked(panic_message(panic.as_ref())))??;
        validate_emitted(&emitted)?;
        Ok(emitted)
    }
}

/// Counts a delivery whose transaction committed (and that was acknowledged).
fn count_handled<H: Handler>(event_type: EventType, handled: Handled) {
    let worker = H::WORKER.name();
    match handled {
        Handled::Done => {
            ::metrics::counter!(HANDLED, "worker" => worker, "type" => event_type.as_str())
                .increment(1);
            debug!("handled");
        }
        Handled::Duplicate => {
            ::metrics::counter!(DUPLICATES, "worker" => worker).increment(1);
            debug!("duplicate acknowledged without effect");
        }
    }
}

/// What consumers would dead-letter must never leave this worker.
fn validate_emitted(emitted: &[Envelope]) -> Result<(), HandlerError> {
    for event in emitted {
        event.data.validate().map_err(|error| {
            HandlerError::permanent(
                "invalid_emitted_event",
                format!("{}: {error}", event.event_type()),
            )
        })?;
    }
    Ok(())
}

/// The tracing span of one event.
fn event_span<H: Handler>(envelope: &Envelope, attempt: u32) -> tracing::Span {
    info_span!(
        "event",
        worker = H::WORKER.name(),
        event_id = %envelope.id,
        event_type = %envelope.event_type(),
        correlation_id = %envelope.correlation_id,
        attempt,
    )
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

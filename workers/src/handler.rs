//! What a worker is: a [`Handler`] that turns one event into a state change
//! and the events it emits, and the small error model that tells the runtime
//! whether to retry or give up.

use std::future::Future;

use sqlx::PgConnection;
use sqlx::migrate::Migration;

use fleet_config::Settings;
use fleet_messages::{Envelope, Worker};

/// One worker's business logic. The runtime owns everything else: consuming,
/// the transaction, the inbox, the outbox, retries, dead letters, shutdown.
pub trait Handler: Send + Sync + Sized + 'static {
    /// Which worker of the contract this is (its name, schema and bindings).
    const WORKER: Worker;

    /// Builds the handler from the settings (limits, seeds, credit).
    fn from_settings(settings: &Settings) -> Self;

    /// The worker's own migrations, applied after the outbox's in the
    /// worker's schema. Versions start at 100 by convention.
    fn migrations() -> Vec<Migration>;

    /// Runs once per replica after migrations (seeding, for example). Must be
    /// safe when several replicas run it at once.
    fn prepare(&self, pool: &sqlx::PgPool) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = pool;
        async { Ok(()) }
    }

    /// Handles decoded events, in order, inside one transaction (search_path
    /// is the worker's schema; their inbox claims are already made; each
    /// event sees what the ones before it changed). Returns what each emits,
    /// one list per event: the runtime writes them to the outbox in the same
    /// transaction. A worker whose events queue on the same rows does a
    /// whole batch in a few statements, so those rows stay locked for less
    /// time; a single event is a batch of one.
    fn handle_batch(
        &self,
        transaction: &mut PgConnection,
        events: &[&Envelope],
    ) -> impl Future<Output = Result<Vec<Vec<Envelope>>, HandlerError>> + Send;

    /// Handles one event: a batch of one.
    fn handle(
        &self,
        transaction: &mut PgConnection,
        event: &Envelope,
    ) -> impl Future<Output = Result<Vec<Envelope>, HandlerError>> + Send {
        async move {
            let mut emitted = self.handle_batch(transaction, &[event]).await?;
            Ok(emitted.pop().unwrap_or_default())
        }
    }

    /// Runs first when several events are handled in one transaction (see
    /// `worker.max_batch`): locks the rows the batch will update in one
    /// global order, so two replicas' batches over the same rows (hot SKUs,
    /// a busy customer) queue behind each other instead of deadlocking. The
    /// default locks nothing; a deadlock is still safe (the batch is handled
    /// again one event at a time), only slow.
    fn lock_batch(
        &self,
        transaction: &mut PgConnection,
        events: &[&Envelope],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = (transaction, events);
        async { Ok(()) }
    }
}

/// Why a handler failed, which decides what happens to the event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (database unavailable, serialization failure,
    /// deadlock, timeout): retried after the configured delay tiers, then
    /// dead-lettered when the attempts run out.
    #[error("transient: {0}")]
    Transient(String),
    /// The database cannot be reached at all (connection refused or lost,
    /// pool exhausted, server shutting down). Retried like a transient
    /// error, but the runtime first waits until the database answers again,
    /// holding the delivery: a replica stops taking work during an outage
    /// instead of spending every event's attempts on it.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The handler panicked: a bug, or an input it cannot cope with. Counted
    /// as a failure and retried like a transient error (the process never
    /// goes down for it), so it ends in the dead-letter queue within its
    /// attempts if it keeps panicking.
    #[error("handler panicked: {0}")]
    Panicked(String),
    /// Will never succeed (a violated invariant, an event that contradicts
    /// the worker's state): dead-lettered at once with `kind`.
    #[error("{kind}: {reason}")]
    Permanent { kind: &'static str, reason: String },
}

impl HandlerError {
    pub fn permanent(kind: &'static str, reason: impl Into<String>) -> Self {
        HandlerError::Permanent {
            kind,
            reason: reason.into(),
        }
    }

    /// The `error_kind` a dead letter of this error carries.
    pub fn kind(&self) -> &'static str {
        match self {
            HandlerError::Transient(_) | HandlerError::Unavailable(_) => "transient",
            HandlerError::Panicked(_) => "panic",
            HandlerError::Permanent { kind, .. } => kind,
        }
    }
}

impl From<sqlx::Error> for HandlerError {
    /// Classifies database errors by what retrying can do about them.
    fn from(error: sqlx::Error) -> Self {
        if is_outage(&error) {
            HandlerError::Unavailable(error.to_string())
        } else if is_transient(&error) {
            HandlerError::Transient(error.to_string())
        } else {
            HandlerError::Permanent {
                kind: "database",
                reason: error.to_string(),
            }
        }
    }
}

/// Connection trouble, pool exhaustion, and the SQLSTATE classes a retry
/// resolves: 40 (serialization failure, deadlock), 08 (connection), 53
/// (insufficient resources), 57 (operator intervention, e.g. a restart),
/// 55P03 (lock not available) and 23505 (a unique key raced by a concurrent
/// transaction: the retry sees the winner's row).
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            ["40", "08", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "55P03"
                || code == "23505"
        }),
        _ => false,
    }
}

/// Whether `error` says the database is out of reach, rather than that one
/// transaction failed: no connection, a lost one, or a server going down
/// (SQLSTATE 08, and 57P01 to 57P03).
pub fn is_outage(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08") || ["57P01", "57P02", "57P03"].contains(&&*code)
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_trouble_is_transient_and_decoding_is_not() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_outage(&sqlx::Error::PoolTimedOut));
        assert!(!is_outage(&sqlx::Error::RowNotFound));
        assert!(matches!(
            HandlerError::from(sqlx::Error::PoolTimedOut),
            HandlerError::Unavailable(_)
        ));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert_eq!(
            HandlerError::from(sqlx::Error::PoolTimedOut).kind(),
            "transient"
        );
        assert_eq!(
            HandlerError::from(sqlx::Error::RowNotFound).kind(),
            "database"
        );
        assert_eq!(
            HandlerError::permanent("invariant", "x").kind(),
            "invariant"
        );
    }
}

//! The inbox: which events a consumer has already handled.

use sqlx::PgConnection;
use uuid::Uuid;

/// The result of [`claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// First time: handle it.
    New,
    /// Already handled (a redelivery, a retry after a lost ack, a replay):
    /// acknowledge without effect.
    Duplicate,
}

/// Records `event_id` as handled by `consumer` inside the handler's
/// transaction. Two replicas racing on the same event serialize on the
/// primary key: the second waits for the first to commit, then sees a
/// duplicate (or, if the first rolled back, claims it).
pub async fn claim(
    transaction: &mut PgConnection,
    consumer: &str,
    event_id: Uuid,
) -> Result<Claim, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .execute(transaction)
    .await?
    .rows_affected();
    if inserted == 1 {
        Ok(Claim::New)
    } else {
        ::metrics::counter!(crate::metrics::INBOX_DUPLICATES, "consumer" => consumer.to_owned())
            .increment(1);
        Ok(Claim::Duplicate)
    }
}

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

/// [`claim`] for several events at once, in one statement: returns, in the
/// order given, whether each is new. An id given twice is new only the
/// first time. Ids are inserted in sorted order, so two transactions
/// claiming overlapping sets wait for each other instead of deadlocking.
pub async fn claim_all(
    transaction: &mut PgConnection,
    consumer: &str,
    event_ids: &[Uuid],
) -> Result<Vec<Claim>, sqlx::Error> {
    let mut sorted = event_ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO inbox (consumer, event_id)
         SELECT $1, id FROM UNNEST($2::uuid[]) AS ids(id) ORDER BY id
         ON CONFLICT DO NOTHING
         RETURNING event_id",
    )
    .bind(consumer)
    .bind(&sorted)
    .fetch_all(transaction)
    .await?;
    let mut new: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
    let claims: Vec<Claim> = event_ids
        .iter()
        .map(|id| {
            if new.remove(id) {
                Claim::New
            } else {
                Claim::Duplicate
            }
        })
        .collect();
    let duplicates = claims
        .iter()
        .filter(|claim| **claim == Claim::Duplicate)
        .count();
    if duplicates > 0 {
        ::metrics::counter!(crate::metrics::INBOX_DUPLICATES, "consumer" => consumer.to_owned())
            .increment(duplicates as u64);
    }
    Ok(claims)
}

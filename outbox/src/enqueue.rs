use sqlx::PgConnection;

use fleet_messages::Envelope;

/// Writes `events` into the outbox of the connection's schema, inside the
/// caller's transaction: they are published if and only if it commits.
///
/// One statement inserts the rows and, only if a relay is waiting, clears its
/// flag and sends one `NOTIFY`. A busy relay is never waiting, so under load
/// writers send no `NOTIFY` at all and their commits do not serialize on
/// Postgres' notification lock.
pub async fn enqueue(
    transaction: &mut PgConnection,
    events: &[Envelope],
) -> Result<(), sqlx::Error> {
    insert(
        transaction,
        events,
        "WITH inserted AS (
             INSERT INTO outbox (event_id, event_type, payload)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bytea[])
             RETURNING 1
         ),
         woken AS (
             UPDATE outbox_relay SET sleeping = false WHERE sleeping RETURNING 1
         )
         SELECT pg_notify(current_schema() || '_outbox', '') FROM woken",
    )
    .await
}

/// [`enqueue`] without the `NOTIFY`, for a writer whose own process runs a
/// relay and rings its [`RelayWakeup`](crate::RelayWakeup) after the commit
/// (the worker runtime). A `NOTIFY` reaches every replica's relay, and
/// all but one of them would only find the rows taken; the flag it clears
/// is one row every writer of the schema would queue on.
pub async fn enqueue_for_local_relay(
    transaction: &mut PgConnection,
    events: &[Envelope],
) -> Result<(), sqlx::Error> {
    insert(
        transaction,
        events,
        "INSERT INTO outbox (event_id, event_type, payload)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bytea[])",
    )
    .await
}

async fn insert(
    transaction: &mut PgConnection,
    events: &[Envelope],
    statement: &'static str,
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = events.iter().map(|event| event.id).collect();
    let types: Vec<String> = events
        .iter()
        .map(|event| event.event_type().as_str().to_owned())
        .collect();
    let payloads: Vec<Vec<u8>> = events.iter().map(Envelope::encode).collect();
    sqlx::query(statement)
        .bind(ids)
        .bind(types)
        .bind(payloads)
        .execute(transaction)
        .await?;
    Ok(())
}

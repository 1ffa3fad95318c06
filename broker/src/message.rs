use fleet_messages::Envelope;

/// One event to publish: the envelope bytes plus what the transport needs to
/// route it without parsing them again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The event id: AMQP `message_id`, and the deduplication key downstream.
    pub id: String,
    /// The event type: the routing key, or the stream's suffix.
    pub event_type: String,
    /// The CloudEvents envelope, JSON.
    pub body: Vec<u8>,
    /// Seconds since the epoch, for the AMQP `timestamp` property.
    pub timestamp: u64,
}

impl OutgoingMessage {
    pub fn from_envelope(envelope: &Envelope) -> Self {
        Self {
            id: envelope.id.to_string(),
            event_type: envelope.event_type().as_str().to_owned(),
            body: envelope.encode(),
            timestamp: u64::try_from(envelope.time.timestamp()).unwrap_or(0),
        }
    }
}

/// What the broker said about one published message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored by the broker and routed to at least one queue or stream.
    Confirmed,
    /// Confirmed but routed nowhere: no queue is bound to its routing key.
    /// (RabbitMQ only: a Redis stream always stores the entry.)
    Unroutable,
    /// The broker refused to take responsibility for the message.
    Nacked,
    /// No confirm arrived (connection lost, timeout). The message may or may
    /// not have been stored: publish it again; the inbox absorbs a duplicate.
    Failed(String),
}

impl PublishOutcome {
    pub fn is_confirmed(&self) -> bool {
        matches!(self, PublishOutcome::Confirmed)
    }
}

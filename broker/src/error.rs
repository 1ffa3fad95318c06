/// What went wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached or the connection broke. Retrying later
    /// (after a reconnect) may succeed.
    #[error("{transport} unavailable: {reason}")]
    Unavailable {
        transport: &'static str,
        reason: String,
    },
    /// The broker did not answer in time (a confirm, a reply).
    #[error("{transport} timed out: {operation}")]
    Timeout {
        transport: &'static str,
        operation: String,
    },
    /// The broker refused a declaration or command: a configuration or
    /// topology conflict that retrying will not fix.
    #[error("{transport} refused {operation}: {reason}")]
    Refused {
        transport: &'static str,
        operation: String,
        reason: String,
    },
    /// A dead letter or retry could not be written, so the original delivery
    /// was left in place (it will be delivered again).
    #[error("could not settle delivery {delivery}: {reason}")]
    Settle { delivery: String, reason: String },
}

impl BrokerError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, BrokerError::Refused { .. })
    }

    pub(crate) fn rabbitmq(operation: &str, error: lapin::Error) -> Self {
        use lapin::ErrorKind;
        match error.kind() {
            ErrorKind::ProtocolError(protocol) if !is_broker_side_fault(protocol) => {
                BrokerError::Refused {
                    transport: "rabbitmq",
                    operation: operation.to_owned(),
                    reason: protocol.to_string(),
                }
            }
            _ => BrokerError::Unavailable {
                transport: "rabbitmq",
                reason: format!("{operation}: {error}"),
            },
        }
    }

    pub(crate) fn redis(operation: &str, error: deadpool_redis::redis::RedisError) -> Self {
        if error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
        {
            BrokerError::Unavailable {
                transport: "redis",
                reason: format!("{operation}: {error}"),
            }
        } else {
            BrokerError::Refused {
                transport: "redis",
                operation: operation.to_owned(),
                reason: error.to_string(),
            }
        }
    }
}

/// AMQP errors in which the broker, not the request, is at fault, so the
/// same request may succeed later on a new connection: `INTERNAL_ERROR`
/// (RabbitMQ answers a quorum queue declaration with it when the queue's
/// Raft cluster did not start in time, as on a broker busy with hundreds of
/// queues) and `CONNECTION_FORCED` (an operator or a node shutting down
/// closed the connection). Every other protocol error names something
/// wrong with the request (a topology conflict, a missing queue, access)
/// that retrying will not fix.
fn is_broker_side_fault(error: &lapin::protocol::AMQPError) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError};
    matches!(
        error.kind(),
        AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR | AMQPHardError::CONNECTIONFORCED)
    )
}

#[cfg(test)]
mod tests {
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};

    use super::BrokerError;

    fn from_protocol(kind: AMQPErrorKind) -> BrokerError {
        let error = lapin::Error::from(lapin::ErrorKind::ProtocolError(AMQPError::new(
            kind,
            "from the broker".into(),
        )));
        BrokerError::rabbitmq("declaring queue q", error)
    }

    #[test]
    fn a_broker_side_fault_is_transient() {
        for kind in [
            AMQPHardError::INTERNALERROR,
            AMQPHardError::CONNECTIONFORCED,
        ] {
            let error = from_protocol(AMQPErrorKind::Hard(kind.clone()));
            assert!(error.is_transient(), "{kind:?}: {error}");
            assert!(matches!(error, BrokerError::Unavailable { .. }), "{error}");
            assert!(error.to_string().contains("declaring queue q"), "{error}");
        }
    }

    #[test]
    fn a_fault_in_the_request_is_refused() {
        for kind in [
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
            AMQPErrorKind::Hard(AMQPHardError::COMMANDINVALID),
        ] {
            let error = from_protocol(kind.clone());
            assert!(!error.is_transient(), "{kind:?}: {error}");
            assert!(
                error.to_string().contains("refused declaring queue q"),
                "{error}"
            );
        }
    }
}

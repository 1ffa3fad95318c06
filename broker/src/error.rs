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
            ErrorKind::ProtocolError(protocol) => BrokerError::Refused {
                transport: "rabbitmq",
                operation: operation.to_owned(),
                reason: protocol.to_string(),
            },
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

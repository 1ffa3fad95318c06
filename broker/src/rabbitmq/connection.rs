use lapin::{Channel, Connection, ConnectionProperties};

use super::ConnectionConfig;
use crate::BrokerError;

/// Opens a connection named `<ns>/<replica>/<purpose>`, so an operator (and a
/// test) can find it in the management UI or `rabbitmqctl list_connections`.
pub(crate) async fn open(
    config: &ConnectionConfig,
    purpose: &str,
) -> Result<Connection, BrokerError> {
    let name = format!("{}/{}/{}", config.namespace, config.replica, purpose);
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Connection::connect(config.url.expose(), properties),
    )
    .await
    .map_err(|_| BrokerError::Timeout {
        transport: "rabbitmq",
        operation: format!("connecting to {}", config.url),
    })?
    .map_err(|error| BrokerError::rabbitmq(&format!("connecting to {}", config.url), error))
}

/// A channel in confirm mode: every publish on it is confirmed by the broker.
pub(crate) async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|error| BrokerError::rabbitmq("opening a channel", error))?;
    channel
        .confirm_select(Default::default())
        .await
        .map_err(|error| BrokerError::rabbitmq("enabling publisher confirms", error))?;
    Ok(channel)
}

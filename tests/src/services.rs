//! Finding (or starting) PostgreSQL, RabbitMQ and Redis for the tests.

use std::path::Path;

use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};
use testcontainers_modules::{postgres::Postgres, rabbitmq::RabbitMq, redis::Redis};
use tokio::sync::OnceCell;

/// Where the test services listen.
#[derive(Debug)]
pub struct Services {
    /// A database the tests may create other databases from.
    pub database_url: String,
    pub amqp_url: String,
    pub redis_url: String,
    /// Containers started for this process, kept alive until it exits.
    _containers: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

static SERVICES: OnceCell<Services> = OnceCell::const_new();

/// The services for this test process, found or started once.
pub async fn services() -> &'static Services {
    SERVICES.get_or_init(discover).await
}

async fn discover() -> Services {
    let database_url = std::env::var("DATABASE_URL").ok();
    let amqp_url = std::env::var("AMQP_URL").ok();
    let redis_url = std::env::var("REDIS_URL").ok();
    if let (Some(database_url), Some(amqp_url), Some(redis_url)) =
        (database_url.clone(), amqp_url.clone(), redis_url.clone())
    {
        return Services {
            database_url,
            amqp_url,
            redis_url,
            _containers: Vec::new(),
        };
    }

    if !docker_reachable() {
        let missing: Vec<&str> = [
            ("DATABASE_URL", database_url.is_none()),
            ("AMQP_URL", amqp_url.is_none()),
            ("REDIS_URL", redis_url.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect();
        panic!(
            "integration tests need PostgreSQL, RabbitMQ and Redis, but {} unset and no \
             Docker engine is reachable to start them. Either start the services and export, \
             for example,\n  DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres\n  \
             AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f\n  REDIS_URL=redis://127.0.0.1:6379\n\
             (`bash .ci/run` installs, starts and exports them), or start a Docker engine.",
            missing.join(", ")
        );
    }

    let mut containers: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
    let database_url = match database_url {
        Some(url) => url,
        None => {
            let container = start(Postgres::default().with_tag("16-alpine")).await;
            let port = container
                .get_host_port_ipv4(5432)
                .await
                .expect("postgres port");
            containers.push(Box::new(container));
            format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres")
        }
    };
    let amqp_url = match amqp_url {
        Some(url) => url,
        None => {
            let container = start(RabbitMq::default().with_tag("3.13-management")).await;
            let port = container
                .get_host_port_ipv4(5672)
                .await
                .expect("rabbitmq port");
            containers.push(Box::new(container));
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
        }
    };
    let redis_url = match redis_url {
        Some(url) => url,
        None => {
            let container = start(Redis::default().with_tag("7.2-alpine")).await;
            let port = container
                .get_host_port_ipv4(6379)
                .await
                .expect("redis port");
            containers.push(Box::new(container));
            format!("redis://127.0.0.1:{port}")
        }
    };
    Services {
        database_url,
        amqp_url,
        redis_url,
        _containers: containers,
    }
}

async fn start<I>(
    image: impl Into<testcontainers_modules::testcontainers::ContainerRequest<I>>,
) -> ContainerAsync<I>
where
    I: testcontainers_modules::testcontainers::Image,
{
    image
        .into()
        .start()
        .await
        .expect("starting a test container failed (is the Docker engine healthy?)")
}

fn docker_reachable() -> bool {
    if std::env::var_os("DOCKER_HOST").is_some() {
        return true;
    }
    let socket = Path::new("/var/run/docker.sock");
    socket.exists() && std::os::unix::net::UnixStream::connect(socket).is_ok()
}

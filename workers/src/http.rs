//! `/healthz`, `/readyz` and `/metrics` on the configured port.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use fleet_broker::Broker;
use fleet_config::HttpSettings;
use fleet_outbox::RelayStatus;

/// What readiness looks at.
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub(crate) broker: Broker,
    pub(crate) pool: sqlx::PgPool,
    pub(crate) relay: RelayStatus,
    pub(crate) max_relay_lag: Duration,
}

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The process-wide Prometheus recorder, installed on first use.
fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

pub(crate) async fn serve(
    settings: &HttpSettings,
    state: State,
    shutdown: CancellationToken,
) -> anyhow::Result<Server> {
    let handle = metrics_handle().clone();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind((settings.host.as_str(), settings.port))
        .await
        .with_context(|| format!("binding HTTP on {}:{}", settings.host, settings.port))?;
    let addr = listener
        .local_addr()
        .context("reading the bound HTTP address")?;
    if settings.port == 0 {
        info!(%addr, "http.port = 0: serving on a free port");
    }
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            warn!(%error, "HTTP server failed");
        }
    });
    Ok(Server { addr, task })
}

/// 200 when the broker and the database answer and the relay keeps up;
/// otherwise 503 with what is wrong, so an orchestrator stops routing work
/// here (and an operator sees why).
async fn ready(Extract(state): Extract<State>) -> impl IntoResponse {
    let broker = match tokio::time::timeout(CHECK_TIMEOUT, state.broker.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 2 s".to_owned()),
    };
    let database = match tokio::time::timeout(
        CHECK_TIMEOUT,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 2 s".to_owned()),
    };
    let lag = state.relay.lag();
    let relay = if lag <= state.max_relay_lag {
        Ok(())
    } else {
        Err(format!(
            "relay lag {} ms exceeds {} ms",
            lag.as_millis(),
            state.max_relay_lag.as_millis()
        ))
    };
    let status = if broker.is_ok() && database.is_ok() && relay.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let verdict = |check: &Result<(), String>| match check {
        Ok(()) => serde_json::Value::from("ok"),
        Err(reason) => serde_json::Value::from(reason.as_str()),
    };
    let body = serde_json::json!({
        "broker": verdict(&broker),
        "database": verdict(&database),
        "relay": verdict(&relay),
        "relay_lag_ms": u64::try_from(lag.as_millis()).unwrap_or(u64::MAX),
    });
    (status, axum::Json(body))
}

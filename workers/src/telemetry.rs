//! Logs: human-readable text, or JSON for log shippers.

use tracing_subscriber::EnvFilter;

use fleet_config::{LogFormat, TelemetrySettings};

/// Installs the global subscriber once; later calls (several workers in one
/// test process) keep the first. `RUST_LOG` overrides `telemetry.log_filter`.
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

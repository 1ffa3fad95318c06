//! Command-line definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "dlq-tool",
    version,
    about = "Inspect, replay, purge, export and import the fleet's dead letters",
    long_about = "Inspect, replay, purge, export and import the fleet's dead letters.\n\n\
        Settings come from the fleet configuration (config/default.toml, FLEET__* variables, \
        DATABASE_URL, AMQP_URL, REDIS_URL); --transport and --namespace override them.\n\
        Exit codes: 0 success, 1 failed operation, 2 bad usage."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Print exactly one JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Transport to use (overrides the configured `transport`).
    #[arg(long, global = true, value_enum)]
    pub(crate) transport: Option<TransportArg>,
    /// Namespace to use (overrides the configured `namespace`).
    #[arg(long, global = true)]
    pub(crate) namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum TransportArg {
    Rabbitmq,
    Redis,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Every dead-letter queue or stream of the namespace: depth, age of the
    /// oldest failure, and the outbox's parked rows per worker.
    List(ListArgs),
    /// Show dead letters without removing or reordering any.
    Peek(PeekArgs),
    /// Show one dead letter whole: envelope, headers, error, attempts,
    /// timestamps, source, replay history.
    Show(ShowArgs),
    /// Count dead letters per error fingerprint, event type or routing key.
    Stats(StatsArgs),
    /// Republish dead letters to their worker only, removing each after the
    /// broker confirmed its replay.
    Replay(ReplayArgs),
    /// Remove dead letters for good (export them first to keep a backup).
    Purge(PurgeArgs),
    /// Write dead letters to JSON Lines (a backup, or to move them).
    Export(ExportArgs),
    /// Read an export back into a dead-letter queue, or replay it.
    Import(ImportArgs),
    /// List the audit records of mutating commands.
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only these workers (default: all four).
    #[arg(long = "worker")]
    pub(crate) workers: Vec<String>,
    /// Do not query the outbox's parked rows (no database needed).
    #[arg(long)]
    pub(crate) no_outbox: bool,
}

/// Filters shared by peek, stats and selections.
#[derive(Debug, Args, Default, Clone)]
pub(crate) struct TimeArgs {
    /// Only dead letters that last failed at or after this time (RFC 3339).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Only dead letters that last failed before this time (RFC 3339).
    #[arg(long)]
    pub(crate) until: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PeekArgs {
    /// The worker (e.g. inventory-worker).
    pub(crate) worker: String,
    /// How many dead letters to show at most.
    #[arg(short = 'n', long = "limit", default_value_t = 20)]
    pub(crate) limit: usize,
    #[command(flatten)]
    pub(crate) time: TimeArgs,
    /// Only dead letters of this event type.
    #[arg(long = "type")]
    pub(crate) event_type: Option<String>,
    /// Only dead letters whose error contains this text.
    #[arg(long)]
    pub(crate) error_contains: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The worker: order-worker, inventory-worker, payment-worker or notification-worker.
    pub(crate) worker: String,
    /// The dead letter's id (event id, message id or sha256:<hex>).
    pub(crate) id: String,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum GroupBy {
    Error,
    Type,
    RoutingKey,
}

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// The worker: order-worker, inventory-worker, payment-worker or notification-worker.
    pub(crate) worker: String,
    /// What to group by.
    #[arg(long, value_enum, default_value = "error")]
    pub(crate) by: GroupBy,
}

/// Exactly one way of selecting dead letters.
#[derive(Debug, Args, Default, Clone)]
#[group(required = true, multiple = false)]
pub(crate) struct Selector {
    /// These dead letters (repeatable).
    #[arg(long = "id", num_args = 1..)]
    pub(crate) ids: Vec<String>,
    /// Every dead letter present when the command starts.
    #[arg(long)]
    pub(crate) all: bool,
    /// Dead letters of this event type.
    #[arg(long = "type")]
    pub(crate) event_type: Option<String>,
    /// Dead letters whose error contains this text.
    #[arg(long)]
    pub(crate) error_contains: Option<String>,
    /// Dead letters of one error fingerprint (from `stats --by error`).
    #[arg(long)]
    pub(crate) group: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The worker: order-worker, inventory-worker, payment-worker or notification-worker.
    pub(crate) worker: String,
    #[command(flatten)]
    pub(crate) selector: Selector,
    /// At most this many dead letters per second (`500` or `500/s`).
    #[arg(long)]
    pub(crate) rate: Option<String>,
    /// Replay at most this many (the first in queue order).
    #[arg(long)]
    pub(crate) limit: Option<u64>,
    /// Show what would be replayed; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Why (kept in the audit record).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Stop once this many replayed dead letters failed again (0: never).
    #[arg(long, default_value_t = 10)]
    pub(crate) stop_after_failures: u64,
}

/// Purge selects by id, everything, or one fingerprint group.
#[derive(Debug, Args, Default, Clone)]
#[group(required = true, multiple = false)]
pub(crate) struct PurgeSelector {
    /// These dead letters (repeatable).
    #[arg(long = "id", num_args = 1..)]
    pub(crate) ids: Vec<String>,
    /// Every dead letter present when the command starts.
    #[arg(long)]
    pub(crate) all: bool,
    /// Dead letters of one error fingerprint (from `stats --by error`).
    #[arg(long)]
    pub(crate) group: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// The worker: order-worker, inventory-worker, payment-worker or notification-worker.
    pub(crate) worker: String,
    #[command(flatten)]
    pub(crate) selector: PurgeSelector,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
    /// Why (kept in the audit record).
    #[arg(long)]
    pub(crate) reason: Option<String>,
}

/// Export's selection is optional: none means all.
#[derive(Debug, Args, Default, Clone)]
#[group(required = false, multiple = false)]
pub(crate) struct ExportSelector {
    /// These dead letters (repeatable).
    #[arg(long = "id", num_args = 1..)]
    pub(crate) ids: Vec<String>,
    /// Every dead letter (the default).
    #[arg(long)]
    pub(crate) all: bool,
    /// Dead letters of this event type.
    #[arg(long = "type")]
    pub(crate) event_type: Option<String>,
    /// Dead letters whose error contains this text.
    #[arg(long)]
    pub(crate) error_contains: Option<String>,
    /// Dead letters of one error fingerprint.
    #[arg(long)]
    pub(crate) group: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The worker: order-worker, inventory-worker, payment-worker or notification-worker.
    pub(crate) worker: String,
    #[command(flatten)]
    pub(crate) selector: ExportSelector,
    /// Write to this file instead of stdout.
    #[arg(long, short = 'o')]
    pub(crate) output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// A JSON Lines file written by `export`.
    pub(crate) file: PathBuf,
    /// Import into this worker (default: each record's own worker).
    #[arg(long)]
    pub(crate) worker: Option<String>,
    /// Replay the records to the worker instead of restoring dead letters.
    #[arg(long)]
    pub(crate) replay: bool,
    /// Why (kept in the audit record).
    #[arg(long)]
    pub(crate) reason: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// How many records, newest first.
    #[arg(short = 'n', long = "limit", default_value_t = 50)]
    pub(crate) limit: i64,
}

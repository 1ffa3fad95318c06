//! `dlq-tool`: the operator's CLI for the fleet's dead letters.
//!
//! Every command works on one namespace and transport (from the fleet
//! configuration, `FLEET__…` variables, or `--transport`/`--namespace`), and
//! takes `--json` for exactly one JSON document on stdout. Exit codes: 0 on
//! success, 1 when an operation failed (broker or database unreachable, some
//! replays not confirmed, ids not found), 2 on bad usage.
//!
//! Structure:
//!
//! - [`cli`]: the clap definitions (one `--help` per command).
//! - [`context`]: configuration, broker and database connections, worker
//!   names, and the error type that carries the exit code.
//! - [`filter`]: selecting dead letters (ids, type, error text, time, error
//!   fingerprint groups) and the fingerprint itself.
//! - [`render`]: the JSON shapes of the contract and the tables.
//! - [`audit`]: the `dlq_tool.audit` table every mutating command writes to.
//! - [`commands`]: one file per command.
//!
//! The dead-letter mechanics (browse, fixed selection, confirmed replay then
//! removal) live in the broker crate (`fleet_broker::Broker::replay_dead_letters`
//! and friends), so that both transports keep the same guarantees: a dead
//! letter is removed only after the broker confirmed its replay.

mod audit;
mod cli;
mod commands;
mod context;
mod filter;
mod render;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DLQ_TOOL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin=off")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(context::exit_code(&error))
        }
    }
}

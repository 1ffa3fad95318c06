//! One file per command; [`run`] dispatches.

mod audit;
mod export;
mod import;
mod list;
mod peek;
mod purge;
mod replay;
mod show;
mod stats;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::context::Context;

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Context::load(&cli.global)?;
    match cli.command {
        Command::List(args) => list::run(&ctx, args).await,
        Command::Peek(args) => peek::run(&ctx, args).await,
        Command::Show(args) => show::run(&ctx, args).await,
        Command::Stats(args) => stats::run(&ctx, args).await,
        Command::Replay(args) => replay::run(&ctx, args).await,
        Command::Purge(args) => purge::run(&ctx, args).await,
        Command::Export(args) => export::run(&ctx, args).await,
        Command::Import(args) => import::run(&ctx, args).await,
        Command::Audit(args) => audit::run(&ctx, args).await,
    }
}

/// Exit code 1 when `failed`, else 0.
pub(crate) fn code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

//! `pagedserve`: the one command that starts a router and N shards and watches them.

mod args;
mod bench;
mod cache;
mod children;
mod default_model;
mod error;
mod hub;
mod nccl;
mod output;
mod ports;
mod readiness;
mod serve;
mod supervise;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::args::{Cli, Command};

/// `pagedserve download`: resolves (fetching when needed) and prints the path to serve.
async fn download(args: args::DownloadArgs) -> error::Result<()> {
    let model = default_model::resolve_served(
        args.model.as_deref(),
        args.revision.as_deref(),
        args.hf_token,
        false,
    )
    .await?;
    println!("{}", model.path.display());
    Ok(())
}

fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        // Through a queue with its own thread: a stalled reader of our stdout must not stall
        // supervision or signal handling (see output.rs). Errors on stderr, the rest on stdout.
        .with_writer(
            output::LogWriter::stderr
                .with_max_level(tracing::Level::ERROR)
                .or_else(output::LogWriter::default),
        )
        .init();
    let command = Cli::parse().into_command();
    // Serve and download run on the main thread alone on purpose: children are spawned from
    // it, which PR_SET_PDEATHSIG ties their lifetime to (see supervise.rs). The bench spawns no
    // children and runs each request as a task of its own, so it takes every core: one thread
    // connecting, sending and reading 1,000 streams at once was itself the bottleneck of a
    // rate-inf burst (bench/runner.rs).
    let mut builder = match command {
        Command::Bench(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!("could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Serve(args) => runtime
            .block_on(serve::run(args))
            .map_err(|e| e.to_string()),
        Command::Bench(args) => runtime
            .block_on(bench::run(args))
            .map_err(|e| e.to_string()),
        Command::Download(args) => runtime.block_on(download(args)).map_err(|e| e.to_string()),
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    };
    output::flush_at_exit();
    code
}

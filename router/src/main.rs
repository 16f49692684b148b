//! `pagedserve-router` binary.

use clap::Parser;
use pagedserve_router::Args;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // No colour codes when a launcher or a file captures the logs.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(ansi)
        // Errors on stderr (the launcher passes it on as its own), the rest on stdout, as the
        // launcher and the shards do.
        .with_writer(
            std::io::stderr
                .with_max_level(tracing::Level::ERROR)
                .or_else(std::io::stdout),
        )
        .init();
    let args = Args::parse();
    match pagedserve_router::server::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "router failed");
            std::process::ExitCode::FAILURE
        }
    }
}

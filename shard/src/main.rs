//! `pagedserve-shard`: serves one model replica over gRPC.
//!
//! The gRPC server starts first, so `Health` answers NOT_SERVING while the weights load;
//! then the engine starts and `Health` turns SERVING. SIGTERM/SIGINT drain running sequences
//! (up to --shutdown-timeout-secs; a second signal exits at once).

use anyhow::Context;
use clap::Parser;
use pagedserve_shard::args::Args;
use pagedserve_shard::engine::{EngineHandle, spawn_engine};
use pagedserve_shard::model::load_model;
use pagedserve_shard::service::{ShardService, serve_grpc};
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // No colour codes when a launcher or a file captures the logs.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let signals = watch_signals();
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let service = ShardService::new(args.shard_id);
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let mut server = tokio::spawn(serve_grpc(listener, service.clone(), async {
        let _ = server_stopped.await;
    }));
    tracing::info!(%addr, model = %args.model.display(), "gRPC listening; loading model");

    if let Some(threads) = args.threads {
        pagedserve_shard::backend::cpu::set_compute_threads(threads);
    }
    let opts = args.load_options();
    let loading = tokio::task::spawn_blocking(move || load_model(&opts));
    let model = tokio::select! {
        loaded = loading => loaded.context("model loading panicked")?
            .with_context(|| format!("cannot load {}", args.model.display()))?,
        _ = signalled(signals.clone(), 1) => return Ok(()),
        ended = &mut server => return Err(server_ended(ended)),
    };
    let engine = spawn_engine(model, args.engine_config())?;
    service.set_engine(engine.clone());
    let s = engine.snapshot().await?;
    tracing::info!(
        %addr, model = %s.model.name, device = %s.model.device, kv_blocks = s.total_kv_blocks,
        block_size = s.block_size, max_context = s.max_seq_len, "shard ready"
    );

    tokio::select! {
        _ = signalled(signals.clone(), 1) => {}
        ended = &mut server => return Err(server_ended(ended)),
    }
    service.start_draining();
    let timeout = Duration::from_secs(args.shutdown_timeout_secs);
    tokio::select! {
        _ = drain(&engine, timeout) => {}
        _ = signalled(signals, 2) => tracing::info!("second signal: exiting now"),
    }
    // Stopping the engine ends every output stream, so the server can close its connections.
    let stopping = engine.clone();
    tokio::task::spawn_blocking(move || stopping.shutdown()).await?;
    let _ = stop_server.send(());
    if tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .is_err()
    {
        tracing::warn!("gRPC server did not stop within 5 s");
    }
    tracing::info!("shard stopped");
    Ok(())
}

fn server_ended(
    ended: Result<Result<(), pagedserve_shard::service::ServiceError>, tokio::task::JoinError>,
) -> anyhow::Error {
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("gRPC server stopped unexpectedly"),
        Ok(Err(e)) => e.into(),
        Err(e) => anyhow::Error::new(e).context("gRPC server task failed"),
    }
}

/// Waits until running and waiting sequences are done, or `timeout`.
async fn drain(engine: &EngineHandle, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    tracing::info!(?timeout, "draining");
    while tokio::time::Instant::now() < deadline {
        match engine.snapshot().await {
            Ok(s) if s.running + s.waiting > 0 => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!("drain timed out; cancelling remaining sequences");
}

/// Counts SIGINT/SIGTERM deliveries from process start, so none is missed between phases.
fn watch_signals() -> watch::Receiver<u32> {
    let (count, receiver) = watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            wait_for_signal().await;
            count.send_modify(|n| *n += 1);
            tracing::info!(count = *count.borrow(), "shutdown signal received");
        }
    });
    receiver
}

async fn signalled(mut signals: watch::Receiver<u32>, n: u32) {
    // An error means the signal task is gone; then never resolve.
    if signals.wait_for(|&count| count >= n).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

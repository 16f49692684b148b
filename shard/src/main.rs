//! `pagedserve-shard`: serves one model replica over gRPC.
//!
//! The gRPC server starts first, so `Health` answers NOT_SERVING while the weights load;
//! then the engine starts and `Health` turns SERVING. SIGTERM/SIGINT drain running sequences
//! (up to --shutdown-timeout-secs; a second signal exits at once).
//!
//! With `--tp-size T > 1` the shard is one rank of a tensor-parallel group: rank 0 does all of
//! the above; ranks 1.. serve no gRPC, only follow rank 0's steps until it closes the link.

use anyhow::{Context, bail};
use clap::Parser;
use pagedserve_shard::args::Args;
use pagedserve_shard::backend::cuda::{cuda_device_count, load_tp_model, parse_cuda_device};
use pagedserve_shard::engine::{EngineHandle, spawn_engine};
use pagedserve_shard::model::{CausalLm, load_model};
use pagedserve_shard::service::{ShardService, serve_grpc};
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // No colour codes when a launcher or a file captures the logs.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Errors on stderr, the rest on stdout: the reason a shard refuses to start (a
    // --max-model-len above the model's context, a model it cannot load) is what a script
    // reading stderr needs, and the launcher passes a child's stderr on to its own.
    let writer = std::io::stderr
        .with_max_level(tracing::Level::ERROR)
        .or_else(std::io::stdout);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer)
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
    check_tensor_parallel(&args)?;
    if args.tp_rank > 0 {
        return run_follower(args, signals).await;
    }
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
    let tp = args.tp_config();
    let loading = tokio::task::spawn_blocking(move || match tp.size {
        1 => load_model(&opts),
        _ => load_tp_model(&opts, &tp).map(|m| Box::new(m) as Box<dyn CausalLm>),
    });
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

/// Refuses a tensor-parallel rank that cannot work before it loads anything.
fn check_tensor_parallel(args: &Args) -> anyhow::Result<()> {
    let (size, rank) = (args.tp_size, args.tp_rank);
    if rank >= size {
        bail!("--tp-rank {rank} must be below --tp-size {size}");
    }
    if size == 1 {
        return Ok(());
    }
    let Some(gpu) = parse_cuda_device(&args.device) else {
        bail!(
            "--tp-size {size} needs a CUDA device (--device cuda:N), got `{}`",
            args.device
        );
    };
    if args.tp_addr.is_none() {
        bail!("--tp-size {size} needs --tp-addr HOST:PORT (where rank 0 listens)");
    }
    let count = cuda_device_count().map_err(anyhow::Error::msg)?;
    if gpu >= count {
        bail!(
            "tensor-parallel rank {rank} wants GPU {gpu}, but {count} CUDA device(s) were found \
             (each rank of a group needs its own GPU: tensor-parallel size x data-parallel \
             size GPUs in all)"
        );
    }
    Ok(())
}

/// Ranks 1.. of a tensor-parallel group: load this rank's slice, then run the leader's steps
/// until it closes the link. A first signal keeps following (the leader drains and then
/// closes the link; its steps need this rank); a second exits at once.
async fn run_follower(args: Args, signals: watch::Receiver<u32>) -> anyhow::Result<()> {
    let (opts, tp) = (args.load_options(), args.tp_config());
    tracing::info!(rank = tp.rank, size = tp.size, addr = ?tp.addr, model = %args.model.display(),
        "tensor-parallel follower: loading");
    let loading = tokio::task::spawn_blocking(move || load_tp_model(&opts, &tp));
    let model = tokio::select! {
        loaded = loading => loaded.context("model loading panicked")?
            .with_context(|| format!("cannot load {}", args.model.display()))?,
        // Loading may be blocked in the group's rendezvous: nothing to drain, leave now.
        _ = signalled(signals.clone(), 1) => exit_now("signal during loading"),
    };
    tracing::info!(rank = args.tp_rank, "tensor-parallel follower ready");
    let mut serving = tokio::task::spawn_blocking(move || model.serve_follower());
    tokio::select! {
        done = &mut serving => return Ok(done.context("follower panicked")??),
        _ = signalled(signals.clone(), 1) => {
            tracing::info!("signal: following until the leader closes the link");
        }
    }
    tokio::select! {
        done = serving => Ok(done.context("follower panicked")??),
        _ = signalled(signals, 2) => exit_now("second signal"),
    }
}

/// Exits without waiting for blocking tasks (a step stuck in NCCL would never return).
fn exit_now(why: &str) -> ! {
    tracing::info!("{why}: exiting now");
    std::process::exit(0)
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

/// Waits until running and waiting sequences are done, or `timeout`. A timeout past what an
/// `Instant` can hold (e.g. u64::MAX seconds, meant as "never") waits for them all; adding it
/// panicked with an overflow.
async fn drain(engine: &EngineHandle, timeout: Duration) {
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    tracing::info!(?timeout, "draining");
    while deadline.is_none_or(|d| tokio::time::Instant::now() < d) {
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

//! `pagedserve serve`: resolve the model, start the shards, then the router, then watch.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::args::{KvCacheDtype, ServeArgs};
use crate::children::{self, Plan};
use crate::default_model;
use crate::error::{LaunchError, Result};
use crate::ports;
use crate::readiness;
use crate::supervise::Supervisor;

/// Runs until a signal (Ok) or until a child dies or start-up fails (Err). Children are
/// stopped in every case.
pub async fn run(args: ServeArgs) -> Result<()> {
    // Handlers first, before the model fetch (minutes for a large model): as PID 1 in a
    // container the kernel drops a signal that has no handler, so `docker stop` or a pod
    // deletion waited for its SIGKILL; elsewhere the launcher died on the spot and left the
    // fetch script running. Dropping the fetch kills it; hf-hub resumes a cut download.
    let mut sigint = signal(SignalKind::interrupt()).map_err(LaunchError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(LaunchError::Signal)?;
    let plan = tokio::select! {
        plan = plan(&args) => plan?,
        _ = sigint.recv() => return Err(LaunchError::Interrupted),
        _ = sigterm.recv() => return Err(LaunchError::Interrupted),
    };
    let mut sup = Supervisor::default();
    // The shards drain for shutdown_timeout_secs themselves; allow a little on top.
    let grace = Duration::from_secs(args.shutdown_timeout_secs.saturating_add(5));

    let outcome = tokio::select! {
        started = start(&args, &plan, &mut sup) => match started {
            Ok(()) => watch(&mut sup, &mut sigint, &mut sigterm).await,
            Err(err) => Outcome::Failed(err),
        },
        _ = sigint.recv() => Outcome::Failed(LaunchError::Interrupted),
        _ = sigterm.recv() => Outcome::Failed(LaunchError::Interrupted),
    };
    let (signal, result) = match outcome {
        Outcome::Signalled(sig) => (sig, Ok(())),
        Outcome::Failed(err) => (libc::SIGTERM, Err(err)),
    };
    tracing::info!("stopping children (signal again to stop them at once)");
    let again = async {
        tokio::select! {
            _ = sigint.recv() => libc::SIGINT,
            _ = sigterm.recv() => libc::SIGTERM,
        }
    };
    sup.shutdown(signal, grace, again).await;
    result
}

enum Outcome {
    /// Asked to stop by this signal: forward it.
    Signalled(i32),
    Failed(LaunchError),
}

async fn plan(args: &ServeArgs) -> Result<Plan> {
    check_kv_cache_dtype(args)?;
    let bin_dir = children::bin_dir(args.bin_dir.as_deref())?;
    // Check both binaries and the router's port before the (possibly slow) model fetch.
    children::binary(&bin_dir, children::SHARD_BIN)?;
    children::binary(&bin_dir, children::ROUTER_BIN)?;
    ports::check_router_port(&args.host, args.port)?;
    let resolved = default_model::resolve_served(
        args.model.as_deref(),
        args.revision.as_deref(),
        args.hf_token.clone(),
        args.load_format.as_deref() == Some("dummy"),
    )
    .await?;
    let model = resolved.path;
    let served_name = args
        .served_model_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or(resolved.served_name);
    let shard_ports = ports::shard_ports(args.shard_base_port, args.num_shards, args.port)?;
    let tp_size = usize::from(args.tensor_parallel_size);
    let shard_env = match (tp_size, crate::cache::cache_dir()) {
        (2.., Some(cache)) => crate::nccl::shard_library_path(&cache)
            .map(|path| vec![("LD_LIBRARY_PATH".to_string(), path)])
            .unwrap_or_default(),
        _ => vec![],
    };
    let tp_ports = match tp_size {
        1 => Vec::new(),
        _ => {
            check_tensor_parallel(args)?;
            let taken: Vec<u16> = shard_ports.iter().copied().chain([args.port]).collect();
            ports::tp_ports(args.num_shards, &taken)?
        }
    };
    Ok(Plan {
        bin_dir,
        model,
        served_name,
        shard_ports,
        threads_per_shard: args.effective_threads_per_shard(),
        tp_size,
        tp_ports,
        shard_env,
    })
}

/// An fp8 KV cache on `--device cpu` is refused before the model is fetched, with the shard's
/// own words (a shard refuses it too, e.g. where `--device auto` finds no GPU): the CPU
/// backend's cache is f32, and it has no fp8 one.
fn check_kv_cache_dtype(args: &ServeArgs) -> Result<()> {
    match (args.kv_cache_dtype, args.device.as_str()) {
        (Some(KvCacheDtype::Fp8E4m3), "cpu") => Err(LaunchError::Config(
            pagedserve_proto::kv_cache_dtype::FP8_NEEDS_CUDA.into(),
        )),
        _ => Ok(()),
    }
}

/// Tensor parallelism puts every rank on its own GPU: only `--device cuda` says how. (Each
/// rank also checks that its GPU exists and names the count it found.)
fn check_tensor_parallel(args: &ServeArgs) -> Result<()> {
    let (t, d) = (args.tensor_parallel_size, args.num_shards);
    if args.device != "cuda" {
        return Err(LaunchError::Config(format!(
            "--tensor-parallel-size {t} needs --device cuda (one GPU per rank: replica d's \
             rank r on GPU d*{t} + r), not `{}`",
            args.device
        )));
    }
    tracing::info!(
        tensor_parallel_size = t,
        data_parallel_size = d,
        gpus = u32::from(t) * u32::from(d),
        "tensor parallelism: GPUs 0..{} in use",
        u32::from(t) * u32::from(d)
    );
    Ok(())
}

async fn start(args: &ServeArgs, plan: &Plan, sup: &mut Supervisor) -> Result<()> {
    // One deadline for all of start-up, shards and router alike (see StartupDeadline).
    let deadline =
        readiness::StartupDeadline::after(Duration::from_secs(args.startup_timeout_secs));
    tracing::info!(
        model = %plan.model.display(),
        shards = plan.shard_ports.len(),
        threads_per_shard = plan.threads_per_shard,
        "starting shards"
    );
    for (id, &port) in plan.shard_ports.iter().enumerate() {
        sup.spawn(children::shard_spec(args, plan, id, port)?)?;
        // Followers are supervised like shards: one dying stops everything, loudly.
        for rank in 1..plan.tp_size {
            sup.spawn(children::follower_spec(args, plan, id, rank)?)?;
        }
    }
    // Shards load in parallel; waiting on them in order costs nothing extra. A group's rank 0
    // serves only once every rank has joined and loaded.
    for (id, &port) in plan.shard_ports.iter().enumerate() {
        let what = format!("shard-{id} (127.0.0.1:{port})");
        readiness::wait_until(sup, &what, deadline, || readiness::shard_serving(port)).await?;
        tracing::info!("shard-{id} is serving on 127.0.0.1:{port}");
    }
    sup.spawn(children::router_spec(args, plan)?)?;
    let probe_host = readiness::probe_host(&args.host).to_owned();
    let what = format!("router ({}:{})", args.host, args.port);
    readiness::wait_until(sup, &what, deadline, || {
        readiness::http_healthy(&probe_host, args.port)
    })
    .await?;
    let url = format!("http://{}:{}/v1", display_host(&args.host), args.port);
    tracing::info!(url = %url, model = %plan.served_name, shards = plan.shard_ports.len(), "pagedserve ready");
    Ok(())
}

/// Runs after start-up until a signal arrives or a child dies.
async fn watch(
    sup: &mut Supervisor,
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
) -> Outcome {
    tokio::select! {
        _ = sigint.recv() => Outcome::Signalled(libc::SIGINT),
        _ = sigterm.recv() => Outcome::Signalled(libc::SIGTERM),
        exit = sup.next_exit() => {
            let (name, status) = match exit {
                Some(e) => (sup.name(e.index).to_owned(), e.describe()),
                None => ("a child".to_owned(), "unknown".to_owned()),
            };
            Outcome::Failed(LaunchError::ChildDied { name, status })
        }
    }
}

/// A host a user can paste into a client: wildcards become localhost.
fn display_host(host: &str) -> String {
    match host {
        "0.0.0.0" | "" => "127.0.0.1".into(),
        "::" | "[::]" => "[::1]".into(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(argv: &[&str]) -> ServeArgs {
        use clap::Parser;
        let argv = std::iter::once("pagedserve").chain(argv.iter().copied());
        match crate::args::Cli::try_parse_from(argv).map(crate::args::Cli::into_command) {
            Ok(crate::args::Command::Serve(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fp8_kv_cache_on_the_cpu_is_refused_before_anything_starts() {
        let check =
            |argv: &[&str]| check_kv_cache_dtype(&serve_args(argv)).map_err(|e| e.to_string());
        let err = check(&["--device", "cpu", "--kv-cache-dtype", "fp8"]).expect_err("refused");
        assert!(
            err.contains("--kv-cache-dtype fp8 needs a CUDA device") && err.contains("f32"),
            "{err}"
        );
        assert!(
            check(&["--kv-cache-dtype", "fp8_e4m3"]).is_err(),
            "cpu is the default"
        );
        for ok in [
            &["--device", "cuda", "--kv-cache-dtype", "fp8"][..],
            // `auto` may find a GPU: each shard decides.
            &["--device", "auto", "--kv-cache-dtype", "fp8"],
            &["--device", "cpu", "--kv-cache-dtype", "auto"],
            &["--device", "cpu", "--kv-cache-dtype", "bf16"],
            &["--device", "cpu"],
        ] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn display_host_is_pasteable() {
        assert_eq!(display_host("0.0.0.0"), "127.0.0.1");
        assert_eq!(display_host("::"), "[::1]");
        assert_eq!(display_host("fe80::1"), "[fe80::1]");
        assert_eq!(display_host("example.internal"), "example.internal");
    }
}

//! Startup: tokenizer, shard connections, HTTP listener, graceful shutdown.

use axum::serve::ListenerExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::args::Args;
use crate::batching::WaitingGate;
use crate::client::ShardPool;
use crate::generation_defaults::{GenerationConfigError, GenerationDefaults};
use crate::listen;
use crate::metrics::{Metrics, MetricsError};
use crate::state::AppState;
use crate::tokenize::{ModelTokenizer, TokenizeError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("loading the tokenizer from {path}: {source}")]
    Tokenizer {
        path: PathBuf,
        source: TokenizeError,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    GenerationConfig(#[from] GenerationConfigError),
}

/// Builds the shared state and starts connecting to the shards (in the background).
pub fn build_state(args: &Args) -> Result<Arc<AppState>, ServerError> {
    // A HF model directory carries tokenizer.json; a GGUF file its own vocabulary.
    let loaded = match args.model.is_dir() {
        true => ModelTokenizer::from_hf_dir(&args.model),
        false => ModelTokenizer::from_gguf(&args.model),
    };
    let tokenizer = loaded.map_err(|source| ServerError::Tokenizer {
        path: args.model.clone(),
        source,
    })?;
    let generation_defaults = GenerationDefaults::from_model_path(&args.model)?;
    if !generation_defaults.is_empty() {
        tracing::info!(
            ?generation_defaults,
            "sampling defaults from generation_config.json"
        );
    }
    let metrics = Arc::new(Metrics::new(&args.model_name())?);
    Ok(Arc::new(AppState {
        model_name: args.model_name(),
        tokenizer,
        shards: ShardPool::start(&args.shards, Arc::clone(&metrics)),
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        waiting: WaitingGate::new(args.max_waiting_requests),
        max_n: args.max_n,
        generation_defaults,
        metrics,
    }))
}

/// Serves until SIGINT/SIGTERM.
pub async fn run(args: Args) -> Result<(), ServerError> {
    let state = build_state(&args)?;
    let addr = format!("{}:{}", args.host, args.port);
    let listener = listen::bind(&addr, listen::LISTEN_BACKLOG)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?;
    if let Some(cap) = listen::somaxconn().filter(|&c| c < listen::LISTEN_BACKLOG) {
        tracing::warn!(
            somaxconn = cap,
            "net.core.somaxconn caps the listen backlog: a burst of more new connections \
             than this waits a second for its SYNs to be retried (raise the sysctl, e.g. a \
             pod's securityContext.sysctls)"
        );
    }
    let listener = no_delay(listener);
    tracing::info!(addr = %addr, shards = ?args.shards, "router listening; connecting to shards");
    let app = crate::api::router(Arc::clone(&state));
    tokio::spawn(log_ready(Arc::clone(&state), addr.clone()));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(ServerError::Serve)
}

/// Every accepted connection with TCP_NODELAY: a streamed token is one small write, and
/// Nagle's algorithm held it back until the client's delayed ACK (40 ms on Linux), which
/// doubled the time to first token at low load (45.6 ms against vLLM's 22.5 on an H100,
/// ShareGPT at 3 requests/s, 2026-11-26). uvicorn sets it too.
fn no_delay(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    fn set(tcp: &mut tokio::net::TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
        }
    }
    listener.tap_io(set)
}

/// Logs the ready line once a shard can take requests.
async fn log_ready(state: Arc<AppState>, addr: String) {
    while !state.shards.wait_ready(Duration::from_secs(30)).await {
        tracing::warn!("still waiting for a shard to become ready");
    }
    tracing::info!(
        url = %format!("http://{addr}"),
        model = %state.model_name,
        shards = state.shards.shards().len(),
        "pagedserve router ready"
    );
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod nodelay_tests {
    use axum::serve::Listener;

    #[tokio::test]
    async fn accepted_connections_have_tcp_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut listener = super::no_delay(listener);
        let client = tokio::net::TcpStream::connect(addr);
        let ((io, _), client) = tokio::join!(listener.accept(), client);
        let _client = client.expect("connect");
        assert!(io.nodelay().expect("nodelay readable"));
    }
}

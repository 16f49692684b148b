//! The connection task of one shard: connect (with backoff), check Health, read Info,
//! open the Serve stream, then pump submits out and step outputs in until it breaks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pagedserve_proto::ShardClient;
use pagedserve_proto::v1::health_response::Status;
use pagedserve_proto::v1::{HealthRequest, InfoRequest, InfoResponse, ShardInput};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::batching::{self, Outbound};
use crate::client::shard::ShardHandle;
use crate::metrics::Metrics;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The shard's own message limit (its `MAX_MESSAGE_BYTES`). tonic's client reads at most
/// 4 MiB by default, and a larger step output (one step cancelling or rejecting a few hundred
/// thousand sequences) broke the Serve stream: every sequence on the shard failed.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("connecting: {0}")]
    Transport(String),
    #[error("gRPC error: {0}")]
    Status(#[from] tonic::Status),
    #[error("shard is not serving yet")]
    NotServing,
    #[error("the Serve stream ended")]
    StreamEnded,
    #[error("the router's submit queue closed")]
    QueueClosed,
}

/// Runs forever (until the submit queue closes): keeps one Serve stream open.
pub async fn run(
    shard: Arc<ShardHandle>,
    mut queue: UnboundedReceiver<Outbound>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut logged_down = false;
    let mut served_before = false;
    metrics.register_shard(shard.index);
    loop {
        match connect(&shard.url, shard.index, &metrics).await {
            Ok((client, info)) => {
                backoff = FIRST_BACKOFF;
                logged_down = false;
                if std::mem::replace(&mut served_before, true) {
                    metrics.record_shard_restart(shard.index);
                }
                let result = serve(&shard, client, info, &mut queue, &metrics).await;
                metrics.record_shard_up(shard.index, false);
                shard.mark_down(&result.to_string());
                if matches!(result, ConnectionError::QueueClosed) {
                    return;
                }
                tracing::warn!(shard = %shard.url, error = %result, "shard stream broke; reconnecting");
            }
            Err(err) => {
                if !logged_down {
                    tracing::info!(shard = %shard.url, error = %err, "waiting for shard");
                    logged_down = true;
                }
            }
        }
        fail_queued(&shard, &mut queue);
        tokio::time::sleep(backoff).await;
        fail_queued(&shard, &mut queue);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// While the shard is down, queued submits fail instead of waiting for a reconnect.
fn fail_queued(shard: &ShardHandle, queue: &mut UnboundedReceiver<Outbound>) {
    while let Ok(item) = queue.try_recv() {
        if let Outbound::Submit(request) = item {
            shard.fail(request.id, "shard is down");
        }
    }
}

impl From<tonic::transport::Error> for ConnectionError {
    fn from(err: tonic::transport::Error) -> Self {
        // tonic's Display is just "transport error"; the cause is in the source chain.
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::Transport(message)
    }
}

async fn connect(
    url: &str,
    index: usize,
    metrics: &Metrics,
) -> Result<(ShardClient<Channel>, InfoResponse), ConnectionError> {
    let channel = Endpoint::from_shared(url.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = ShardClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let started = Instant::now();
    let health = client.health(HealthRequest {}).await?.into_inner();
    metrics.record_rpc(index, "Health", started.elapsed());
    if health.status() != Status::Serving {
        return Err(ConnectionError::NotServing);
    }
    let started = Instant::now();
    let info = client.info(InfoRequest {}).await?.into_inner();
    metrics.record_rpc(index, "Info", started.elapsed());
    Ok((client, info))
}

/// Pumps one Serve stream; returns why it stopped.
async fn serve(
    shard: &Arc<ShardHandle>,
    mut client: ShardClient<Channel>,
    info: InfoResponse,
    queue: &mut UnboundedReceiver<Outbound>,
    metrics: &Metrics,
) -> ConnectionError {
    let (out_tx, out_rx) = mpsc::channel::<ShardInput>(256);
    let mut inbound = match client.serve(ReceiverStream::new(out_rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status.into(),
    };
    tracing::info!(
        shard = %shard.url, model = %info.model, device = %info.device,
        max_context = info.max_context, block_size = info.block_size,
        kv_blocks = info.total_kv_blocks, "shard ready"
    );
    metrics.record_info(shard.index, &info);
    metrics.record_shard_up(shard.index, true);
    shard.set_client(client.clone());
    shard.mark_ready(info);
    loop {
        tokio::select! {
            item = queue.recv() => {
                let Some(first) = item else { return ConnectionError::QueueClosed };
                // Let handlers that are running in this same tick enqueue too.
                tokio::task::yield_now().await;
                for message in batching::drain_tick(first, queue, |id| shard.is_live(id)) {
                    if out_tx.send(message).await.is_err() {
                        return ConnectionError::StreamEnded;
                    }
                }
            }
            step = inbound.next() => match step {
                Some(Ok(step)) => {
                    if let Some(stats) = &step.stats {
                        metrics.record_step(shard.index, stats);
                    }
                    shard.dispatch(step)
                }
                Some(Err(status)) => return status.into(),
                None => return ConnectionError::StreamEnded,
            },
        }
    }
}

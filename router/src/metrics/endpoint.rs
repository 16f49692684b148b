//! `GET /metrics`: refreshes each ready shard's occupancy with `Info`, then renders.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pagedserve_proto::v1::InfoRequest;

use crate::state::AppState;

/// A scrape must not hang on a stuck shard.
const INFO_TIMEOUT: Duration = Duration::from_secs(1);

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let refreshes = state.shards.shards().iter().filter_map(|shard| {
        let mut client = shard.client().filter(|_| shard.is_ready())?;
        let (index, metrics) = (shard.index, Arc::clone(&state.metrics));
        Some(async move {
            let started = Instant::now();
            let info = tokio::time::timeout(INFO_TIMEOUT, client.info(InfoRequest {})).await;
            if let Ok(Ok(info)) = info {
                metrics.record_rpc(index, "Info", started.elapsed());
                metrics.record_info(index, info.get_ref());
            }
        })
    });
    futures::future::join_all(refreshes).await;
    match state.metrics.render() {
        Ok(text) => {
            let mut response = text.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(err) => {
            tracing::error!(error = %err, "rendering metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response()
        }
    }
}

//! Router HTTP requests by route, method and status (401s and 400s included: this layer
//! sits outside the API-key check).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::KeyValue;

use crate::state::AppState;

/// Unmatched paths share one label value so scanners cannot blow up the series count.
const UNMATCHED: &str = "unmatched";

/// axum middleware: counts and times every request.
pub async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED.to_string(), |p| p.as_str().to_string());
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        KeyValue::new("route", route),
        KeyValue::new("method", method),
        KeyValue::new("status", status),
    ];
    let metrics = &state.metrics;
    metrics.http_requests.add(1, &labels);
    let elapsed = started.elapsed().as_secs_f64();
    metrics.http_seconds.record(elapsed, &labels);
    response
}

//! `GET /v1/models` and `GET /health`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::api::ids;
use crate::api::types::{ModelCard, ModelList};
use crate::state::AppState;

pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.model_name.clone(),
            object: "model",
            created: ids::now_unix(),
            owned_by: "pagedserve",
            max_model_len: state.shards.max_context(),
        }],
    })
}

/// 200 when at least one shard is connected and serving, 503 otherwise.
pub async fn health(State(state): State<Arc<AppState>>) -> StatusCode {
    if state.shards.any_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

//! The one API error type: every failure a client sees is an OpenAI-shaped JSON body.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error returned to an HTTP client, rendered as `{"error": {...}}` like OpenAI.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// Malformed or out-of-range request (400).
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    /// Missing or wrong API key (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The request names a model this router does not serve (404).
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    /// Unknown route (404).
    #[error("{0}")]
    NotFound(String),
    /// Wrong HTTP method for a known route (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Too many waiting requests (429); the client should retry after `retry_after_s`.
    #[error("{message}")]
    Overloaded { message: String, retry_after_s: u32 },
    /// No shard can take the request right now (503).
    #[error("{0}")]
    Unavailable(String),
    /// A shard failed while serving the request (500).
    #[error("{0}")]
    Internal(String),
}

/// The inner object of OpenAI's error body.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

/// `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ApiError {
    /// A 400 without a specific parameter.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    /// A 400 that names the offending parameter.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::ModelNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body, also used for errors sent inside an SSE stream.
    pub fn body(&self) -> ErrorBody {
        let (kind, code, param) = match self {
            Self::BadRequest { param, .. } => ("invalid_request_error", None, param.clone()),
            Self::Unauthorized(_) => ("invalid_request_error", Some("invalid_api_key"), None),
            Self::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found"), None),
            Self::NotFound(_) | Self::MethodNotAllowed(_) => ("invalid_request_error", None, None),
            Self::Overloaded { .. } => ("rate_limit_error", Some("rate_limit_exceeded"), None),
            Self::Unavailable(_) => ("server_error", Some("service_unavailable"), None),
            Self::Internal(_) => ("server_error", Some("internal_error"), None),
        };
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        if let Self::Overloaded { retry_after_s, .. } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_not_found_matches_openai_shape() {
        let body = serde_json::to_value(ApiError::ModelNotFound("gpt-x".into()).body())
            .unwrap_or_default();
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "message": "The model `gpt-x` does not exist.",
                "type": "invalid_request_error",
                "param": null,
                "code": "model_not_found"
            }})
        );
    }

    #[test]
    fn bad_request_carries_param() {
        let err = ApiError::invalid_param("temperature", "too hot");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let body = err.body();
        assert_eq!(body.error.param.as_deref(), Some("temperature"));
        assert_eq!(body.error.message, "too hot");
        assert_eq!(body.error.code, None);
    }

    #[test]
    fn overloaded_sets_retry_after() {
        let response = ApiError::Overloaded {
            message: "busy".into(),
            retry_after_s: 2,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(2u32))
        );
    }
}

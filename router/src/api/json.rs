//! A JSON body extractor whose rejections are OpenAI error bodies, not axum's text.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Like `axum::Json`, but lenient about Content-Type (curl -d sends a form type) and
/// failing with a 400 OpenAI error body.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("Could not read the body: {e}")))?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses a request body; errors say where the JSON went wrong.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::ChatCompletionRequest;

    #[test]
    fn invalid_json_is_a_400_with_position() {
        let err = parse::<ChatCompletionRequest>(b"{not json").err();
        assert!(
            matches!(&err, Some(ApiError::BadRequest { message, .. }) if message.contains("line 1")),
            "{err:?}"
        );
        let missing = parse::<ChatCompletionRequest>(b"{}").err();
        assert!(
            matches!(&missing, Some(ApiError::BadRequest { message, .. }) if message.contains("messages"))
        );
    }
}

//! API-key check: `Authorization: Bearer <key>`, compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Routes that stay open without a key (probes must work unauthenticated).
const PUBLIC_PATHS: &[&str] = &["/health", "/metrics"];

/// True when `presented` equals `expected`. The comparison time depends only on the
/// lengths, so the key cannot be guessed byte by byte from response timing.
pub fn key_matches(presented: &[u8], expected: &[u8]) -> bool {
    presented.ct_eq(expected).into()
}

/// Extracts the token of a `Bearer` authorization header value.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Checks one request against the configured key.
pub fn check(expected: &str, authorization: Option<&str>) -> Result<(), ApiError> {
    let Some(value) = authorization else {
        return Err(ApiError::Unauthorized(
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                .into(),
        ));
    };
    match bearer_token(value) {
        Some(token) if key_matches(token.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(ApiError::Unauthorized("Incorrect API key provided.".into())),
    }
}

/// axum middleware: rejects requests without the right key when one is configured.
pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.api_key.as_deref() else {
        return next.run(request).await;
    };
    if PUBLIC_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match check(expected, authorization) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare_is_exact() {
        assert!(key_matches(b"sk-secret", b"sk-secret"));
        assert!(!key_matches(b"sk-secret", b"sk-secreT"));
        assert!(!key_matches(b"sk-secret", b"sk-secret2"));
        assert!(!key_matches(b"", b"sk-secret"));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("abc"), None);
    }

    #[test]
    fn check_distinguishes_missing_and_wrong() {
        assert!(check("k", Some("Bearer k")).is_ok());
        let missing = check("k", None);
        let wrong = check("k", Some("Bearer x"));
        assert!(
            matches!(missing, Err(ApiError::Unauthorized(ref m)) if m.contains("didn't provide"))
        );
        assert!(matches!(wrong, Err(ApiError::Unauthorized(ref m)) if m.contains("Incorrect")));
        if let Err(err) = wrong {
            assert_eq!(err.body().error.code, Some("invalid_api_key"));
        }
    }
}

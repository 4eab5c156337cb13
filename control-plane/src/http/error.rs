//! How an [`Error`] answers over HTTP: its problem document (or, from the token endpoint, the
//! OAuth 2.0 error JSON) with the headers its status calls for. `crate::error` decides the
//! status and the body; this module only writes them.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tollgate_core::problem::CONTENT_TYPE as PROBLEM_CONTENT_TYPE;

use crate::error::Error;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Storage(cause) | Error::Internal(cause) = &self {
            tracing::error!(%cause, "request failed");
        }
        if let Error::OAuth { error, description } = &self {
            return oauth_response(status_code(&self), error, description);
        }
        let status = status_code(&self);
        let unauthorized = matches!(self, Error::Unauthorized(_));
        let retry_after = match &self {
            Error::TooManyRequests { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if unauthorized {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate\""),
            );
        }
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn status_code(error: &Error) -> StatusCode {
    StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// RFC 6749 §5.2: `{"error", "error_description"}`, never cached; `invalid_client` names the
/// Basic scheme the token endpoint takes (§2.3.1).
fn oauth_response(status: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({"error": error, "error_description": description});
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tollgate\""),
        );
    }
    response
}

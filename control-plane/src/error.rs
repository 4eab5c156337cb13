//! The one error type of the control plane and the only place that decides HTTP status codes.
//! Every error answers `application/problem+json` (RFC 9457) with a stable `type`
//! `urn:tollgate:problem:<kind>` that clients may match on.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const PROBLEM_TYPE_PREFIX: &str = "urn:tollgate:problem:";
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not JSON, or not the JSON this path takes.
    #[error("{0}")]
    InvalidBody(String),
    /// A field or path segment is malformed (slug, version, routing…).
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
    /// Missing or wrong bearer token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A valid management token whose scopes do not allow this request.
    #[error("{0}")]
    Forbidden(&'static str),
    /// An OAuth 2.0 token endpoint error (RFC 6749 §5.2): answered as its JSON, not as a
    /// problem. `error` is the RFC's code.
    #[error("{description}")]
    OAuth {
        error: &'static str,
        description: String,
    },
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A lifecycle rule or uniqueness rule refuses the request; `kind` names the rule.
    #[error("{detail}")]
    Conflict { kind: &'static str, detail: String },
    /// Well-formed input that makes no sense (two limits per period, a plan not offered…).
    #[error("{detail}")]
    Unprocessable { kind: &'static str, detail: String },
    #[error("the request body is larger than this path accepts")]
    PayloadTooLarge,
    /// The request's body did not arrive within the server's request timeout.
    #[error("the request body did not arrive within the server's request timeout ({0} s)")]
    RequestTimeout(u64),
    /// Too many attempts from one client or address; retry after the given seconds.
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after: u64 },
    /// The path exists, the method does not; the `Allow` header lists the ones that do.
    #[error("{0} is not a method of this path")]
    MethodNotAllowed(String),
    /// A step of `apply`: the inner error decides the status, the path says where. Nested
    /// steps and a field read as one path (`orgs[acme].clients[mobile].versions[1]: …`).
    #[error("{at}{}{source}", at_separator(source))]
    At { at: String, source: Box<Error> },
    /// Storage itself failing (I/O, disk full, corruption, a lock held past the busy
    /// timeout…), as opposed to a query the code got wrong: the store marks itself unhealthy
    /// on it (`/healthz`). Answered like [`Error::Internal`].
    #[error("storage failing: {0}")]
    Storage(String),
    /// Storage or another internal failure; details are logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// `.` when the inner error continues the path, `: ` before what went wrong.
fn at_separator(source: &Error) -> &'static str {
    match source {
        Error::At { .. } | Error::InvalidField { .. } => ".",
        _ => ": ",
    }
}

impl Error {
    pub fn invalid_field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn conflict(kind: &'static str, detail: impl Into<String>) -> Self {
        Error::Conflict {
            kind,
            detail: detail.into(),
        }
    }

    pub fn unprocessable(kind: &'static str, detail: impl Into<String>) -> Self {
        Error::Unprocessable {
            kind,
            detail: detail.into(),
        }
    }

    pub fn at(self, at: impl Into<String>) -> Self {
        Error::At {
            at: at.into(),
            source: Box::new(self),
        }
    }

    /// The same failure for another write of a group commit that it failed too: storage
    /// failures and conflicts keep their kind; anything else is internal.
    pub fn shared(&self) -> Error {
        match self {
            Error::Storage(detail) => Error::Storage(detail.clone()),
            Error::Conflict { kind, detail } => Error::Conflict {
                kind,
                detail: detail.clone(),
            },
            Error::At { source, .. } => source.shared(),
            other => Error::Internal(other.to_string()),
        }
    }

    /// Whether this error says storage is failing rather than that the request or the code is
    /// wrong.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            Error::Storage(_) => true,
            Error::At { source, .. } => source.is_storage_failure(),
            _ => false,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidBody(_) | Error::InvalidField { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::OAuth { error, .. } if *error == "invalid_client" => StatusCode::UNAUTHORIZED,
            Error::OAuth { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::AlreadyExists(_) | Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::At { source, .. } => source.status(),
            Error::Storage(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `<kind>` of `urn:tollgate:problem:<kind>`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidBody(_) => "invalid-body",
            Error::InvalidField { .. } => "invalid-field",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::OAuth { error, .. } => error,
            Error::NotFound(_) => "not-found",
            Error::AlreadyExists(_) => "already-exists",
            Error::Conflict { kind, .. } | Error::Unprocessable { kind, .. } => kind,
            Error::PayloadTooLarge => "payload-too-large",
            Error::MethodNotAllowed(_) => "method-not-allowed",
            Error::RequestTimeout(_) => "request-timeout",
            Error::TooManyRequests { .. } => "too-many-requests",
            Error::At { source, .. } => source.kind(),
            Error::Storage(_) | Error::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "Invalid request",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "Payload too large",
            StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
            StatusCode::REQUEST_TIMEOUT => "Request timeout",
            StatusCode::TOO_MANY_REQUESTS => "Too many requests",
            StatusCode::UNPROCESSABLE_ENTITY => "Unprocessable request",
            _ => "Internal error",
        }
    }

    pub fn problem(&self) -> Problem {
        let detail = match self {
            Error::Storage(_) | Error::Internal(_) => {
                "the control plane failed to handle the request; see its log".to_owned()
            }
            other => other.to_string(),
        };
        Problem {
            r#type: format!("{PROBLEM_TYPE_PREFIX}{}", self.kind()),
            title: self.title().to_owned(),
            status: self.status().as_u16(),
            detail,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(
                SystemIoFailure
                | DiskFull
                | DatabaseCorrupt
                | NotADatabase
                | CannotOpen
                | ReadOnly
                | PermissionDenied
                | DatabaseBusy
                | DatabaseLocked
                | OutOfMemory
                | FileLockingProtocolFailed
                | NoLargeFileSupport,
            ) => Error::Storage(e.to_string()),
            // A constraint, a type, a misused statement: the code is wrong, storage is fine.
            _ => Error::Internal(format!("storage: {e}")),
        }
    }
}

/// RFC 9457 problem details.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// `urn:tollgate:problem:<kind>`, stable across releases.
    #[schema(example = "urn:tollgate:problem:plan-version-locked")]
    pub r#type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Storage(cause) | Error::Internal(cause) = &self {
            tracing::error!(%cause, "request failed");
        }
        if let Error::OAuth { error, description } = &self {
            return oauth_response(self.status(), error, description);
        }
        let status = self.status();
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

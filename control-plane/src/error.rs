//! The one error type of the control plane and the only place that decides HTTP status codes.
//! Every error answers core's RFC 9457 [`Problem`] (`application/problem+json`) with a stable
//! `type` `urn:tollgate:problem:<kind>` that clients may match on. The catalogue raises it
//! without knowing the web stack: `crate::http::error` turns it into a response.

pub use tollgate_core::problem::Problem;

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
    /// A path of a feature this server runs without (`fleet-off`: no `--redis`): 404 with
    /// its own `kind`, so a client can tell it from a missing resource.
    #[error("{detail}")]
    FeatureOff { kind: &'static str, detail: String },
    /// Something the answer depends on is unreachable for now (`redis-unavailable`); the
    /// request may succeed when retried.
    #[error("{detail}")]
    Unavailable { kind: &'static str, detail: String },
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

    /// The HTTP status this error answers.
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidBody(_) | Error::InvalidField { .. } => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::OAuth { error, .. } if *error == "invalid_client" => 401,
            Error::OAuth { .. } => 400,
            Error::NotFound(_) | Error::FeatureOff { .. } => 404,
            Error::AlreadyExists(_) | Error::Conflict { .. } => 409,
            Error::PayloadTooLarge => 413,
            Error::MethodNotAllowed(_) => 405,
            Error::RequestTimeout(_) => 408,
            Error::TooManyRequests { .. } => 429,
            Error::Unprocessable { .. } => 422,
            Error::At { source, .. } => source.status(),
            Error::Storage(_) | Error::Internal(_) => 500,
            Error::Unavailable { .. } => 503,
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
            Error::Conflict { kind, .. }
            | Error::Unprocessable { kind, .. }
            | Error::FeatureOff { kind, .. }
            | Error::Unavailable { kind, .. } => kind,
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
            400 => "Invalid request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not found",
            409 => "Conflict",
            413 => "Payload too large",
            405 => "Method not allowed",
            408 => "Request timeout",
            429 => "Too many requests",
            422 => "Unprocessable request",
            503 => "Service unavailable",
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
        Problem::new(self.kind(), self.title(), self.status(), detail)
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

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        // SQLSTATE classes of a server or connection in trouble; anything else (a constraint,
        // a type, bad SQL) means the code is wrong and storage is fine.
        let storage = match e.code() {
            None => e.is_closed() || e.as_db_error().is_none(),
            Some(code) => {
                let class = &code.code()[..2];
                matches!(class, "08" | "53" | "57" | "58" | "XX")
                    || matches!(code.code(), "40001" | "40P01")
            }
        };
        // `Display` of a server's error is only "db error"; its message says what failed.
        let what = match e.as_db_error() {
            Some(db) => db.to_string(),
            None => e.to_string(),
        };
        if storage {
            Error::Storage(format!("PostgreSQL: {what}"))
        } else {
            Error::Internal(format!("storage: {what}"))
        }
    }
}

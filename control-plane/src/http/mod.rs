//! The HTTP service: one module per resource with its routes and handlers, the shared state,
//! the extractors that turn every rejection into [`Error`], and the two bearer-token gates.

mod apis;
mod catalogue;
mod clients;
mod contracts;
mod credentials;
pub mod error;
mod issuers;
mod leases;
mod oauth;
pub mod openapi;
mod orgs;
mod owned;
mod plans;
mod service;
mod service_accounts;
mod snapshot;
pub mod throttle;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::header::{ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::error::Error;
use crate::metrics::{HttpLabels, Metrics};
use crate::model::Representation;
use crate::secrets::BearerToken;
use crate::store::Store;
use crate::tokens::{verify_management, IssuerConfig, SigningKeys, SERVICE_ACCOUNT_SUBJECT_PREFIX};
use openapi::{add_security, mark_optional_bodies, ApiDoc};

pub const SNAPSHOT_PATH: &str = "/v1/snapshot";
pub const APPLY_PATH: &str = "/v1/apply";

/// Management bodies are small; a whole catalogue for `apply` may be larger.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const MAX_APPLY_BODY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub admin_token: BearerToken,
    pub gateway_token: BearerToken,
    /// The own token issuer's configuration and private signing keys.
    pub issuer: Arc<IssuerConfig>,
    pub signing_keys: Arc<SigningKeys>,
    pub metrics: Arc<Metrics>,
    /// The lease broker, with `serve --redis`; `None` while counts are per gateway.
    pub fleet: Option<Arc<crate::fleet::Broker>>,
    /// Limits on `/oauth/token` per source address and per failing `client_id`.
    pub token_throttle: Arc<throttle::TokenThrottle>,
    /// Longest a request may take (a snapshot long poll: this plus its wait).
    pub request_timeout: std::time::Duration,
    /// Turns true when the server stops, so long polls answer at once instead of holding
    /// graceful shutdown for up to their full wait.
    pub shutdown: watch::Receiver<bool>,
}

pub fn router(state: AppState) -> Router {
    let admin = OpenApiRouter::new()
        .merge(orgs::routes())
        .merge(plans::routes())
        .merge(apis::routes())
        .merge(clients::routes())
        .merge(contracts::routes())
        .merge(catalogue::routes())
        .merge(credentials::routes())
        .merge(issuers::routes())
        .merge(service_accounts::routes())
        .merge(oauth::admin_routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let gateway =
        snapshot::routes()
            .merge(leases::routes())
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_gateway,
            ));
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(admin)
        .merge(gateway)
        .merge(service::routes())
        .merge(oauth::public_routes())
        .split_for_parts();
    add_security(&mut doc);
    mark_optional_bodies(&mut doc);
    let doc = Arc::new(doc);
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = Arc::clone(&doc);
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async { Error::NotFound("this path".to_owned()) })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_deadline,
        ))
        .layer(middleware::from_fn(refuse_declared_oversize))
        .layer(middleware::from_fn(method_not_allowed_as_problem))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

fn bearer(parts: &Request) -> Option<&str> {
    let value = parts.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    let token = match bearer(&request) {
        Some(token) if state.admin_token.matches(token) => return Ok(next.run(request).await),
        Some(token) => token,
        None => {
            return Err(Error::Unauthorized(
                "send the admin token or a management token as Authorization: Bearer <token>",
            ))
        }
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let access =
        verify_management(&state.store.shell(), &state.issuer, token, now_ms).map_err(|_| {
            Error::Unauthorized(
                "the bearer token is neither the admin token nor a valid management token",
            )
        })?;
    // A token outlives nothing it was issued for: its service account must still exist with
    // the credentials the token names (an account deleted and created again has others), and
    // only the scopes the account still holds count (deleting or narrowing an account takes
    // effect at once, not when its tokens expire).
    let account = access
        .subject
        .strip_prefix(SERVICE_ACCOUNT_SUBJECT_PREFIX)
        .map(str::to_owned)
        .ok_or(Error::Unauthorized(
            "the bearer token is neither the admin token nor a valid management token",
        ))?;
    let current = state
        .store
        .read(move |conn| crate::store::tokens::find_service_account(conn, &account))
        .await?
        .ok_or(Error::Unauthorized(
            "the service account of this management token no longer exists",
        ))?;
    let now = (now_ms / 1000) as i64;
    if !current
        .credentials
        .iter()
        .any(|c| c.client_id == access.credential && c.expires_at.is_none_or(|t| t > now))
    {
        return Err(Error::Unauthorized(
            "the credentials this management token was issued for are no longer valid",
        ));
    }
    let access = crate::tokens::ManagementToken {
        scopes: access
            .scopes
            .into_iter()
            .filter(|s| current.scopes.contains(s))
            .collect(),
        ..access
    };
    let read_only = matches!(*request.method(), Method::GET | Method::HEAD);
    if !access.allows(read_only) {
        return Err(Error::Forbidden(if read_only {
            "this management token has no tollgate:read or tollgate:admin scope"
        } else {
            "this management token may only read (tollgate:read); writes need tollgate:admin"
        }));
    }
    Ok(next.run(request).await)
}

async fn require_gateway(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    match bearer(&request) {
        Some(token) if state.gateway_token.matches(token) => Ok(next.run(request).await),
        Some(_) => Err(Error::Unauthorized(
            "the bearer token is not the gateway token",
        )),
        None => Err(Error::Unauthorized(
            "send the gateway token as Authorization: Bearer <token>",
        )),
    }
}

/// axum answers a known path with an unknown method by a bare 405; give it the same
/// problem+json body as every other error, keeping its `Allow` header.
async fn method_not_allowed_as_problem(request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let response = next.run(request).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response.headers().contains_key(CONTENT_TYPE)
    {
        return response;
    }
    let allow = response.headers().get(ALLOW).cloned();
    let mut problem = Error::MethodNotAllowed(method).into_response();
    if let Some(allow) = allow {
        problem.headers_mut().insert(ALLOW, allow);
    }
    problem
}

/// The body limit of a path: larger for a whole catalogue, small for the token endpoint.
fn body_limit(path: &str) -> usize {
    match path {
        APPLY_PATH => MAX_APPLY_BODY_BYTES,
        oauth::TOKEN_PATH => oauth::MAX_TOKEN_BODY_BYTES,
        _ => MAX_BODY_BYTES,
    }
}

/// Answers 413 before reading anything when `Content-Length` already exceeds the limit;
/// bodies without a declared length are cut at the limit by `DefaultBodyLimit` as they are read.
async fn refuse_declared_oversize(request: Request, next: Next) -> Result<Response, Error> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = body_limit(request.uri().path()) as u64;
    if declared.is_some_and(|length| length > limit) {
        return Err(Error::PayloadTooLarge);
    }
    Ok(next.run(request).await)
}

/// Answers 408 when a request's body has not arrived within the request timeout, so a client
/// trickling a body cannot hold a connection and a handler. Only receiving is timed: once the
/// body is in, the handler runs to its end, so a 408 never hides a write that committed (a
/// write cut off by a timer would go on in its blocking task and commit unseen). The body is
/// read up to the path's limit: over it, 413 as `DefaultBodyLimit` answers.
async fn request_deadline(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    let limit = body_limit(request.uri().path());
    let (parts, body) = request.into_parts();
    let collected = tokio::time::timeout(
        state.request_timeout,
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await
    .map_err(|_| Error::RequestTimeout(state.request_timeout.as_secs()))?;
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(Error::PayloadTooLarge),
        Err(e) => {
            return Err(Error::InvalidBody(format!(
                "the request body could not be read: {e}"
            )))
        }
    };
    Ok(next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await)
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let response = next.run(request).await;
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The `method` label of a request: one of the methods HTTP defines, else `other`, so made-up
/// methods cannot grow `/metrics` (every label value comes from a fixed set; `route` is the
/// matched template or `unmatched`).
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

/// `axum::Json` whose rejections are [`Error`]s (problem+json, 400 or 413).
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(Error::PayloadTooLarge)
            }
            Err(JsonRejection::JsonDataError(e)) => Err(Error::InvalidBody(format!(
                "the body does not match this path's schema: {}",
                e.body_text()
            ))),
            Err(e) => Err(Error::InvalidBody(e.body_text())),
        }
    }
}

/// A `PUT` body: the resource's representation as `GET` returns it. Its shape (JSON, no unknown
/// field, editable fields well typed) is checked when the request is read; the read-only fields
/// it gives are kept aside for [`Replacement::check_read_only`], which the handler calls once
/// the stored resource is loaded and its lifecycle allows the edit.
pub struct Replacement<T> {
    pub body: T,
    read_only: serde_json::Map<String, serde_json::Value>,
}

impl<T: Representation> Replacement<T> {
    /// Refuses a read-only field given with a value other than the stored one (400
    /// `invalid-field` naming it).
    pub fn check_read_only(&self, stored: &T) -> Result<(), Error> {
        let stored = serde_json::to_value(stored)
            .map_err(|e| Error::Internal(format!("encoding the stored resource: {e}")))?;
        for (field, given) in &self.read_only {
            let current = stored.get(field).unwrap_or(&serde_json::Value::Null);
            if current != given {
                return Err(Error::invalid_field(
                    field.as_str(),
                    format!("is read-only: it is {current} here, not {given}; leave it out or send the value GET returns"),
                ));
            }
        }
        Ok(())
    }
}

impl<T, S> FromRequest<S> for Replacement<T>
where
    T: Representation,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let Json(value) = Json::<serde_json::Value>::from_request(req, state).await?;
        let serde_json::Value::Object(fields) = &value else {
            return Err(Error::InvalidBody(
                "the body must be a JSON object: the resource as GET returns it".to_owned(),
            ));
        };
        let read_only = T::READ_ONLY
            .iter()
            .filter_map(|&f| fields.get(f).map(|v| (f.to_owned(), v.clone())))
            .collect();
        let body = serde_json::from_value(value).map_err(|e| {
            Error::InvalidBody(format!("the body does not match this path's schema: {e}"))
        })?;
        Ok(Replacement { body, read_only })
    }
}

/// `axum::extract::Path` whose rejections are [`Error`]s.
pub struct PathParams<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| PathParams(v))
            .map_err(|e: PathRejection| Error::invalid_field("path", e.body_text()))
    }
}

/// `axum::extract::Query` whose rejections are [`Error`]s.
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| QueryParams(v))
            .map_err(|e: QueryRejection| Error::invalid_field("query", e.body_text()))
    }
}

//! The own issuer's public endpoints: `POST /oauth/token` (RFC 6749 §4.4, the client
//! credentials grant) and `GET /.well-known/jwks.json`; and, behind the admin gate, its signing
//! keys (`/v1/token-keys`).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::problems::Unauthorized;
use super::throttle::{Throttled, TokenThrottle};
use super::AppState;
use crate::error::Error;
use crate::model::{RotatedTokenKey, TokenKey};
use crate::secrets::random_token;
use crate::store::tokens::{self, CredentialOwner};
use crate::tokens::{SCOPE_GATEWAY, SERVICE_ACCOUNT_SUBJECT_PREFIX};

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/oauth/token";
/// A token request is a handful of short parameters: anything larger is refused (413) before
/// it is parsed.
pub const MAX_TOKEN_BODY_BYTES: usize = 8 * 1024;
/// More parameters than any client-credentials request needs are refused (400).
pub const MAX_FORM_PARAMETERS: usize = 16;

/// Public: no token.
pub fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(token))
        .layer(DefaultBodyLimit::max(MAX_TOKEN_BODY_BYTES))
        .routes(routes!(jwks))
}

/// Behind the admin gate.
pub fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_token_keys))
        .routes(routes!(rotate_token_key))
}

/// The form `POST /oauth/token` takes (documentation of its fields).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenRequest {
    /// `client_credentials`
    grant_type: String,
    /// Space-separated; omitted: every scope the client has.
    scope: Option<String>,
    /// Only when not sent by HTTP Basic.
    client_id: Option<String>,
    /// Only when not sent by HTTP Basic.
    client_secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// A JWT signed with the own issuer's current key (EdDSA, `kid` in its header).
    pub access_token: String,
    /// `Bearer`
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
    pub scope: String,
}

/// RFC 6749 §5.2 error body.
#[derive(Serialize, ToSchema)]
pub struct OAuthError {
    /// `invalid_request`, `invalid_client`, `unsupported_grant_type`, `invalid_scope`
    pub error: String,
    pub error_description: String,
}

fn oauth(error: &'static str, description: impl Into<String>) -> Error {
    Error::OAuth {
        error,
        description: description.into(),
    }
}

/// Issues an access token for client credentials (RFC 6749 §4.4). A client version's token
/// (audience: the gateways) acts as that client version at every gateway; a service account's
/// (audience: the management API) carries its scopes. The client authenticates with HTTP Basic
/// (§2.3.1) or `client_id`/`client_secret` in the form, never both.
#[utoipa::path(post, path = "/oauth/token", tag = "tokens",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Issued (Cache-Control: no-store)", body = TokenResponse),
        (status = 400, description = "invalid_request, unsupported_grant_type, invalid_scope", body = OAuthError),
        (status = 401, description = "invalid_client (WWW-Authenticate: Basic)", body = OAuthError),
        (status = 413, description = "Body over 8 KiB", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Throttled: too many requests from this address or failures for this client_id this minute (Retry-After)",
            body = crate::error::Problem, content_type = "application/problem+json")))]
async fn token(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = issue(&state, remote.ip(), &headers, body).await;
    match answer {
        Ok(response) => response,
        Err(e) => {
            let reason = match &e {
                Error::OAuth { error, .. } => error,
                Error::TooManyRequests { .. } => "throttled",
                Error::PayloadTooLarge => "payload_too_large",
                _ => "internal",
            };
            state.metrics.token_refused(reason);
            e.into_response()
        }
    }
}

async fn issue(
    state: &AppState,
    source: IpAddr,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    // A body without a declared length is cut at the limit while it is read.
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge
        } else {
            oauth("invalid_request", "the request body could not be read")
        }
    })?;
    let form_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if form_type.as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(oauth(
            "invalid_request",
            "send the parameters as application/x-www-form-urlencoded",
        ));
    }
    let form = parse_form(&body)?;
    let get = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    match get("grant_type").as_deref() {
        None => return Err(oauth("invalid_request", "grant_type is missing")),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(oauth(
                "unsupported_grant_type",
                "only the client_credentials grant is supported",
            ))
        }
    }
    let basic = basic_credentials(headers)?;
    let (client_id, secret) =
        match (basic, get("client_id"), get("client_secret")) {
            (Some(_), _, Some(_)) => {
                return Err(oauth(
                    "invalid_request",
                    "authenticate with HTTP Basic or with client_secret in the body, not both",
                ))
            }
            (Some((id, secret)), body_id, None) => {
                if body_id.is_some_and(|b| b != id) {
                    return Err(oauth(
                        "invalid_request",
                        "client_id in the body differs from the HTTP Basic one",
                    ));
                }
                (id, secret)
            }
            (None, Some(id), Some(secret)) => (id, secret),
            (None, _, _) => return Err(oauth(
                "invalid_client",
                "client authentication is missing: send HTTP Basic or client_id and client_secret",
            )),
        };
    let requested: Option<Vec<String>> = get("scope").map(|s| {
        let mut v: Vec<String> = s
            .split(' ')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        v.sort();
        v.dedup();
        v
    });

    let now = now_seconds();
    if let Err(throttled) = state.token_throttle.admit(source, &client_id, now) {
        tracing::warn!(
            %source,
            client_id = %loggable(&client_id),
            reason = throttled.as_str(),
            "token request throttled"
        );
        return Err(Error::TooManyRequests {
            detail: match throttled {
                Throttled::Source => {
                    "too many token requests from this address; retry after the minute ends"
                }
                Throttled::Client => {
                    "too many failed authentications of this client_id; retry after the minute ends"
                }
            }
            .to_owned(),
            retry_after: TokenThrottle::retry_after(now),
        });
    }
    let credential = client_id.clone();
    let (owner, key) = state
        .store
        .read(move |conn| {
            let owner = tokens::authenticate(conn, &client_id, &secret, now as i64)?;
            Ok((owner, tokens::current_key(conn)?))
        })
        .await?;
    let Some(owner) = owner else {
        state.token_throttle.failed(&credential, now);
        // The client_id only: never the secret.
        tracing::warn!(
            %source,
            client_id = %loggable(&credential),
            "token request refused: client authentication failed"
        );
        return Err(oauth("invalid_client", "client authentication failed"));
    };
    let (kid, sealed) =
        key.ok_or_else(|| Error::Internal("the own issuer has no signing key".into()))?;
    // Another replica may have rotated: its new key is opened here, once.
    if !state.signing_keys.open(&kid, sealed.as_deref())? {
        return Err(Error::Internal(format!(
            "no private key for token key {kid}"
        )));
    }
    let (subject, audience, allowed) = match owner {
        CredentialOwner::ClientVersion(id) => (
            id,
            state.issuer.gateway_audience.clone(),
            vec![SCOPE_GATEWAY.to_owned()],
        ),
        CredentialOwner::ServiceAccount { id, scopes } => (
            format!("{SERVICE_ACCOUNT_SUBJECT_PREFIX}{id}"),
            state.issuer.management_audience.clone(),
            scopes,
        ),
    };
    let granted = match requested {
        None => allowed,
        Some(requested) => {
            if let Some(bad) = requested.iter().find(|s| !allowed.contains(s)) {
                return Err(oauth(
                    "invalid_scope",
                    format!("scope {bad:?} is not granted to this client"),
                ));
            }
            if requested.is_empty() {
                allowed
            } else {
                requested
            }
        }
    };
    let scope = granted.join(" ");
    let lifetime = state.issuer.token_lifetime_seconds;
    let claims = json!({
        "iss": state.issuer.issuer,
        "sub": subject,
        // Binds the token to these credentials: it works only while they do.
        tokens::CREDENTIAL_CLAIM: credential,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": random_token(16)?,
        "scope": scope,
    });
    let access_token = state.signing_keys.sign(&kid, &claims)?;
    Ok((
        [(CACHE_CONTROL, "no-store"), (PRAGMA, "no-cache")],
        axum::Json(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: lifetime,
            scope,
        }),
    )
        .into_response())
}

/// A `client_id` as logged: at most 64 characters, control characters escaped.
fn loggable(client_id: &str) -> String {
    client_id
        .chars()
        .take(64)
        .flat_map(char::escape_debug)
        .collect()
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Form pairs; a parameter without a value counts as omitted and none may repeat (§3.2).
/// Linear in the body: at most [`MAX_FORM_PARAMETERS`] pairs, repeats found by a set.
fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, Error> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();
    for (n, (k, v)) in form_urlencoded::parse(body).enumerate() {
        if n >= MAX_FORM_PARAMETERS {
            return Err(oauth(
                "invalid_request",
                format!("the form has more than {MAX_FORM_PARAMETERS} parameters"),
            ));
        }
        if v.is_empty() {
            continue;
        }
        if !seen.insert(k.clone()) {
            return Err(oauth(
                "invalid_request",
                format!("{k} is sent more than once"),
            ));
        }
        pairs.push((k.into_owned(), v.into_owned()));
    }
    Ok(pairs)
}

/// HTTP Basic client authentication: both halves form-urlencoded (§2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, Error> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        oauth(
            "invalid_client",
            "the Authorization header is not valid HTTP Basic",
        )
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(oauth(
            "invalid_client",
            "the token endpoint takes HTTP Basic client authentication",
        ));
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(malformed)?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let unescape = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

/// The own issuer's public keys (JWKS, RFC 7517): the current key and retired keys whose
/// tokens may still be valid. The same keys gateways get in the snapshot.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "tokens",
    responses((status = 200, description = "OK", content_type = "application/jwk-set+json", body = Object)))]
async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let catalogue = state.store.shell();
    let keys = catalogue
        .issuers
        .iter()
        .find(|i| i.issuer == state.issuer.issuer)
        .and_then(|i| serde_json::to_value(&i.jwks).ok())
        .unwrap_or_else(|| json!({"keys": []}));
    let keys: Value = keys;
    (
        [
            (CONTENT_TYPE, "application/jwk-set+json"),
            (CACHE_CONTROL, "no-cache"),
        ],
        keys.to_string(),
    )
}

/// The own issuer's signing keys (public information only).
#[utoipa::path(get, path = "/v1/token-keys", tag = "tokens",
    responses((status = 200, description = "OK", body = Vec<TokenKey>), Unauthorized))]
async fn list_token_keys(
    State(state): State<AppState>,
) -> Result<axum::Json<Vec<TokenKey>>, Error> {
    Ok(axum::Json(state.store.read(tokens::list_keys).await?))
}

/// Generates a new signing key, which signs every token from now on. The previous key stays
/// published (JWKS and snapshot) until every token it signed has expired — the token lifetime
/// plus the gateways' 30 s leeway — then drops out on its own: no token is refused meanwhile.
#[utoipa::path(post, path = "/v1/token-keys/rotate", tag = "tokens",
    responses((status = 200, description = "OK", body = RotatedTokenKey), Unauthorized))]
async fn rotate_token_key(
    State(state): State<AppState>,
) -> Result<axum::Json<RotatedTokenKey>, Error> {
    let keys = std::sync::Arc::clone(&state.signing_keys);
    let lifetime = state.issuer.token_lifetime_seconds;
    let rotated = state
        .store
        .write(move |tx| tokens::rotate_key(tx, &keys, lifetime))
        .await?;
    tracing::info!(kid = %rotated.kid, "token signing key rotated");
    Ok(axum::Json(rotated))
}

//! `/v1/orgs/{org}/clients`: clients, their versions and API keys.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::problems::{
    BadRequest, Conflict, NotFound, TooLarge, Unauthorized, Unprocessable,
};
use super::owned::{self, check_version_path};
use super::{AppState, Json, PathParams, QueryParams, Replacement};
use crate::error::Error;
use crate::model::{
    ApiKeyInfo, ClientVersion, CreateClientVersion, CreateOwned, CreatedClientVersion, Owned, Page,
    PageQuery, RotateKey, RotatedKey,
};
use crate::store::orgs::OwnedKind;
use crate::store::{clients, PageRequest};

const KIND: OwnedKind = OwnedKind::Client;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_client, list_clients))
        .routes(routes!(get_client, rename_client))
        .routes(routes!(create_client_version, list_client_versions))
        .routes(routes!(get_client_version))
        .routes(routes!(rotate_key))
        .routes(routes!(revoke_key))
}

/// Creates a client. Conflict kinds: already-exists.
#[utoipa::path(post, path = "/v1/orgs/{org}/clients", tag = "clients",
    params(("org" = String, Path)), request_body = CreateOwned,
    responses((status = 201, description = "Created", body = Owned), BadRequest, Unauthorized, NotFound, Conflict, TooLarge))]
async fn create_client(
    State(state): State<AppState>,
    PathParams(org): PathParams<String>,
    Json(body): Json<CreateOwned>,
) -> Result<(StatusCode, axum::Json<Owned>), Error> {
    owned::create(&state, KIND, org, body).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/clients", tag = "clients",
    params(("org" = String, Path), PageQuery),
    responses((status = 200, description = "OK", body = Page<Owned>), BadRequest, Unauthorized, NotFound))]
async fn list_clients(
    State(state): State<AppState>,
    PathParams(org): PathParams<String>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<axum::Json<Page<Owned>>, Error> {
    owned::list(&state, KIND, org, query).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/clients/{client}", tag = "clients",
    params(("org" = String, Path), ("client" = String, Path)),
    responses((status = 200, description = "OK", body = Owned), BadRequest, Unauthorized, NotFound))]
async fn get_client(
    State(state): State<AppState>,
    PathParams(path): PathParams<(String, String)>,
) -> Result<axum::Json<Owned>, Error> {
    owned::get(&state, KIND, path).await
}

/// Renames a client: the body is the client as GET returns it, read-only fields optional.
#[utoipa::path(put, path = "/v1/orgs/{org}/clients/{client}", tag = "clients",
    params(("org" = String, Path), ("client" = String, Path)), request_body = Owned,
    responses((status = 200, description = "OK", body = Owned), BadRequest, Unauthorized, NotFound, TooLarge))]
async fn rename_client(
    State(state): State<AppState>,
    PathParams(path): PathParams<(String, String)>,
    body: Replacement<Owned>,
) -> Result<axum::Json<Owned>, Error> {
    owned::rename(&state, KIND, path, body).await
}

/// Creates a client version with a new API key. The key is in this answer only; the control
/// plane keeps its SHA-256. Conflict kinds: already-exists.
#[utoipa::path(post, path = "/v1/orgs/{org}/clients/{client}/versions", tag = "clients",
    params(("org" = String, Path), ("client" = String, Path)), request_body = CreateClientVersion,
    responses((status = 201, description = "Created", body = CreatedClientVersion), BadRequest, Unauthorized, NotFound,
        Conflict, TooLarge))]
async fn create_client_version(
    State(state): State<AppState>,
    PathParams((org, client)): PathParams<(String, String)>,
    Json(body): Json<CreateClientVersion>,
) -> Result<(StatusCode, axum::Json<CreatedClientVersion>), Error> {
    check_version_path(KIND, &org, &client, &body.version)?;
    let created = state
        .store
        .write(move |tx| clients::create_version(tx, &org, &client, &body.version))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/clients/{client}/versions", tag = "clients",
    params(("org" = String, Path), ("client" = String, Path), PageQuery),
    responses((status = 200, description = "OK", body = Page<ClientVersion>), BadRequest, Unauthorized, NotFound))]
async fn list_client_versions(
    State(state): State<AppState>,
    PathParams((org, client)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<axum::Json<Page<ClientVersion>>, Error> {
    crate::domain::check_slug("org", &org)?;
    crate::domain::check_slug("client", &client)?;
    let page = PageRequest::from_query(&query)?;
    let versions = state
        .store
        .read(move |conn| clients::list_versions(conn, &org, &client, &page))
        .await?;
    Ok(axum::Json(versions))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/clients/{client}/versions/{version}", tag = "clients",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "OK", body = ClientVersion), BadRequest, Unauthorized, NotFound))]
async fn get_client_version(
    State(state): State<AppState>,
    PathParams((org, client, version)): PathParams<(String, String, String)>,
) -> Result<axum::Json<ClientVersion>, Error> {
    check_version_path(KIND, &org, &client, &version)?;
    let found = state
        .store
        .read(move |conn| clients::get_version(conn, &org, &client, &version))
        .await?;
    Ok(axum::Json(found))
}

/// Issues a new key; the previous one keeps working for `grace_seconds`, then stops at the
/// gateways without further action. Unprocessable kinds: invalid-grace-period.
#[utoipa::path(post, path = "/v1/orgs/{org}/clients/{client}/versions/{version}/keys/rotate",
    tag = "clients",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path)),
    request_body = RotateKey,
    responses((status = 200, description = "OK", body = RotatedKey), BadRequest, Unauthorized, NotFound, TooLarge,
        Unprocessable))]
async fn rotate_key(
    State(state): State<AppState>,
    PathParams((org, client, version)): PathParams<(String, String, String)>,
    Json(body): Json<RotateKey>,
) -> Result<axum::Json<RotatedKey>, Error> {
    check_version_path(KIND, &org, &client, &version)?;
    let rotated = state
        .store
        .write(move |tx| clients::rotate_key(tx, &org, &client, &version, body.grace_seconds))
        .await?;
    Ok(axum::Json(rotated))
}

/// Revokes one key at once, whatever grace it had: gateways refuse it with the next revision.
/// The key's id is in the client version's `keys`. Revoking a key that no longer works changes
/// nothing.
#[utoipa::path(post,
    path = "/v1/orgs/{org}/clients/{client}/versions/{version}/keys/{key_id}/revoke",
    tag = "clients",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path),
        ("key_id" = i64, Path)),
    responses((status = 200, description = "The key as it now is", body = ApiKeyInfo),
        BadRequest, Unauthorized, NotFound))]
async fn revoke_key(
    State(state): State<AppState>,
    PathParams((org, client, version, key_id)): PathParams<(String, String, String, i64)>,
) -> Result<axum::Json<ApiKeyInfo>, Error> {
    check_version_path(KIND, &org, &client, &version)?;
    let revoked = state
        .store
        .write(move |tx| clients::revoke_key(tx, &org, &client, &version, key_id))
        .await?;
    tracing::info!(key_id, "API key revoked");
    Ok(axum::Json(revoked))
}

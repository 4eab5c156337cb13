//! `/v1/orgs/{org}/apis`: APIs and their versions (draft → published → retired).

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
use crate::model::{ApiVersion, CreateApiVersion, CreateOwned, Owned, Page, PageQuery};
use crate::store::apis::{self, ApiVersionSpec};
use crate::store::orgs::OwnedKind;
use crate::store::PageRequest;

const KIND: OwnedKind = OwnedKind::Api;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_api, list_apis))
        .routes(routes!(get_api, rename_api))
        .routes(routes!(create_api_version, list_api_versions))
        .routes(routes!(get_api_version, update_api_version))
        .routes(routes!(publish_api_version))
        .routes(routes!(retire_api_version))
}

/// Creates an API. Conflict kinds: already-exists.
#[utoipa::path(post, path = "/v1/orgs/{org}/apis", tag = "apis",
    params(("org" = String, Path)), request_body = CreateOwned,
    responses((status = 201, description = "Created", body = Owned), BadRequest, Unauthorized, NotFound, Conflict, TooLarge))]
async fn create_api(
    State(state): State<AppState>,
    PathParams(org): PathParams<String>,
    Json(body): Json<CreateOwned>,
) -> Result<(StatusCode, axum::Json<Owned>), Error> {
    owned::create(&state, KIND, org, body).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/apis", tag = "apis",
    params(("org" = String, Path), PageQuery),
    responses((status = 200, description = "OK", body = Page<Owned>), BadRequest, Unauthorized, NotFound))]
async fn list_apis(
    State(state): State<AppState>,
    PathParams(org): PathParams<String>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<axum::Json<Page<Owned>>, Error> {
    owned::list(&state, KIND, org, query).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/apis/{api}", tag = "apis",
    params(("org" = String, Path), ("api" = String, Path)),
    responses((status = 200, description = "OK", body = Owned), BadRequest, Unauthorized, NotFound))]
async fn get_api(
    State(state): State<AppState>,
    PathParams(path): PathParams<(String, String)>,
) -> Result<axum::Json<Owned>, Error> {
    owned::get(&state, KIND, path).await
}

/// Renames an API: the body is the API as GET returns it, read-only fields optional.
#[utoipa::path(put, path = "/v1/orgs/{org}/apis/{api}", tag = "apis",
    params(("org" = String, Path), ("api" = String, Path)), request_body = Owned,
    responses((status = 200, description = "OK", body = Owned), BadRequest, Unauthorized, NotFound, TooLarge))]
async fn rename_api(
    State(state): State<AppState>,
    PathParams(path): PathParams<(String, String)>,
    body: Replacement<Owned>,
) -> Result<axum::Json<Owned>, Error> {
    owned::rename(&state, KIND, path, body).await
}

/// Creates a draft API version. Conflict kinds: already-exists, plan-version-not-locked.
/// Unprocessable kinds: private-api-without-plans, plan-offered-twice.
#[utoipa::path(post, path = "/v1/orgs/{org}/apis/{api}/versions", tag = "apis",
    params(("org" = String, Path), ("api" = String, Path)), request_body = CreateApiVersion,
    responses((status = 201, description = "Created", body = ApiVersion), BadRequest, Unauthorized, NotFound, Conflict,
        TooLarge, Unprocessable))]
async fn create_api_version(
    State(state): State<AppState>,
    PathParams((org, api)): PathParams<(String, String)>,
    Json(body): Json<CreateApiVersion>,
) -> Result<(StatusCode, axum::Json<ApiVersion>), Error> {
    check_version_path(KIND, &org, &api, &body.version)?;
    let created = state
        .store
        .write(move |tx| {
            let spec = ApiVersionSpec::resolve(tx, &org, &body)?;
            apis::create_version(tx, &org, &api, &body.version, &spec)
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/apis/{api}/versions", tag = "apis",
    params(("org" = String, Path), ("api" = String, Path), PageQuery),
    responses((status = 200, description = "OK", body = Page<ApiVersion>), BadRequest, Unauthorized, NotFound))]
async fn list_api_versions(
    State(state): State<AppState>,
    PathParams((org, api)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<axum::Json<Page<ApiVersion>>, Error> {
    crate::domain::check_slug("org", &org)?;
    crate::domain::check_slug("api", &api)?;
    let page = PageRequest::from_query(&query)?;
    let versions = state
        .store
        .read(move |conn| apis::list_versions(conn, &org, &api, &page))
        .await?;
    Ok(axum::Json(versions))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/apis/{api}/versions/{version}", tag = "apis",
    params(("org" = String, Path), ("api" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "OK", body = ApiVersion), BadRequest, Unauthorized, NotFound))]
async fn get_api_version(
    State(state): State<AppState>,
    PathParams((org, api, version)): PathParams<(String, String, String)>,
) -> Result<axum::Json<ApiVersion>, Error> {
    check_version_path(KIND, &org, &api, &version)?;
    let found = state
        .store
        .read(move |conn| apis::get_version(conn, &org, &api, &version))
        .await?;
    Ok(axum::Json(found))
}

/// Replaces a draft's settings. The body is the version as GET returns it; its read-only fields
/// may be left out and are refused (400 invalid-field) only when they differ from the stored
/// ones, after the lifecycle check. Conflict kinds: api-version-not-draft,
/// plan-version-not-locked. Unprocessable kinds: private-api-without-plans, plan-offered-twice.
#[utoipa::path(put, path = "/v1/orgs/{org}/apis/{api}/versions/{version}", tag = "apis",
    params(("org" = String, Path), ("api" = String, Path), ("version" = String, Path)),
    request_body = ApiVersion,
    responses((status = 200, description = "OK", body = ApiVersion), BadRequest, Unauthorized, NotFound, Conflict,
        TooLarge, Unprocessable))]
async fn update_api_version(
    State(state): State<AppState>,
    PathParams((org, api, version)): PathParams<(String, String, String)>,
    body: Replacement<ApiVersion>,
) -> Result<axum::Json<ApiVersion>, Error> {
    check_version_path(KIND, &org, &api, &version)?;
    let updated = state
        .store
        .write(move |tx| {
            let stored = apis::get_version(tx, &org, &api, &version)?;
            apis::check_editable(&stored)?;
            body.check_read_only(&stored)?;
            let spec = ApiVersionSpec::resolve(tx, &org, &body.body.settings())?;
            apis::update_version(tx, &org, &api, &version, &spec)
        })
        .await?;
    Ok(axum::Json(updated))
}

/// Publishes a draft: gateways start routing it. Conflict kinds: api-version-not-draft,
/// routing-collision (a published version already routes the same prefix on a shared host, or
/// both on any host), route-shadows-private (a public route would answer a path of a private
/// one on some host: a public prefix at or below a private one on a shared host, where
/// host-scoped beats any-host at the same prefix; in either order of publishing).
#[utoipa::path(post, path = "/v1/orgs/{org}/apis/{api}/versions/{version}/publish", tag = "apis",
    params(("org" = String, Path), ("api" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "OK", body = ApiVersion), BadRequest, Unauthorized, NotFound, Conflict))]
async fn publish_api_version(
    State(state): State<AppState>,
    PathParams((org, api, version)): PathParams<(String, String, String)>,
) -> Result<axum::Json<ApiVersion>, Error> {
    check_version_path(KIND, &org, &api, &version)?;
    let published = state
        .store
        .write(move |tx| apis::publish_version(tx, &org, &api, &version))
        .await?;
    Ok(axum::Json(published))
}

/// Retires a published version: gateways answer 410 for it from then on.
/// Conflict kinds: api-version-not-published.
#[utoipa::path(post, path = "/v1/orgs/{org}/apis/{api}/versions/{version}/retire", tag = "apis",
    params(("org" = String, Path), ("api" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "OK", body = ApiVersion), BadRequest, Unauthorized, NotFound, Conflict))]
async fn retire_api_version(
    State(state): State<AppState>,
    PathParams((org, api, version)): PathParams<(String, String, String)>,
) -> Result<axum::Json<ApiVersion>, Error> {
    check_version_path(KIND, &org, &api, &version)?;
    let retired = state
        .store
        .write(move |tx| apis::retire_version(tx, &org, &api, &version))
        .await?;
    Ok(axum::Json(retired))
}

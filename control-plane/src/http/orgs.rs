//! `/v1/orgs`: organizations.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::problems::{BadRequest, Conflict, NotFound, TooLarge, Unauthorized};
use super::{AppState, Json, PathParams, QueryParams, Replacement};
use crate::domain::{check_name, check_slug};
use crate::error::Error;
use crate::model::{CreateOrg, Org, Page, PageQuery};
use crate::store::{orgs, PageRequest};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_org, list_orgs))
        .routes(routes!(get_org, rename_org))
}

/// Creates an organization. Conflict kinds: already-exists.
#[utoipa::path(post, path = "/v1/orgs", tag = "orgs", request_body = CreateOrg,
    responses((status = 201, description = "Created", body = Org), BadRequest, Unauthorized, Conflict, TooLarge))]
async fn create_org(
    State(state): State<AppState>,
    Json(body): Json<CreateOrg>,
) -> Result<(StatusCode, axum::Json<Org>), Error> {
    check_slug("id", &body.id)?;
    let name = body.name.unwrap_or_else(|| body.id.clone());
    check_name("name", &name)?;
    let org = state
        .store
        .write(move |tx| orgs::create_org(tx, &body.id, &name))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(org)))
}

#[utoipa::path(get, path = "/v1/orgs", tag = "orgs", params(PageQuery),
    responses((status = 200, description = "OK", body = Page<Org>), BadRequest, Unauthorized))]
async fn list_orgs(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<axum::Json<Page<Org>>, Error> {
    let page = PageRequest::from_query(&query)?;
    let orgs = state
        .store
        .read(move |conn| orgs::list_orgs(conn, &page))
        .await?;
    Ok(axum::Json(orgs))
}

#[utoipa::path(get, path = "/v1/orgs/{org}", tag = "orgs", params(("org" = String, Path)),
    responses((status = 200, description = "OK", body = Org), BadRequest, Unauthorized, NotFound))]
async fn get_org(
    State(state): State<AppState>,
    PathParams(org): PathParams<String>,
) -> Result<axum::Json<Org>, Error> {
    check_slug("org", &org)?;
    let org = state
        .store
        .read(move |conn| orgs::get_org(conn, &org))
        .await?;
    Ok(axum::Json(org))
}

/// Renames an organization (its id never changes): the body is the org as GET returns it,
/// read-only fields optional.
#[utoipa::path(put, path = "/v1/orgs/{org}", tag = "orgs", params(("org" = String, Path)),
    request_body = Org,
    responses((status = 200, description = "OK", body = Org), BadRequest, Unauthorized, NotFound, TooLarge))]
async fn rename_org(
    State(state): State<AppState>,
    PathParams(org): PathParams<String>,
    body: Replacement<Org>,
) -> Result<axum::Json<Org>, Error> {
    check_slug("org", &org)?;
    check_name("name", &body.body.name)?;
    let org = state
        .store
        .write(move |tx| {
            body.check_read_only(&orgs::get_org(tx, &org)?)?;
            orgs::rename_org(tx, &org, &body.body.name)
        })
        .await?;
    Ok(axum::Json(org))
}

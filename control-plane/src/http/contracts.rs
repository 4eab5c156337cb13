//! `/v1/orgs/{org}/clients/{client}/versions/{version}/contracts`: who may call what, through
//! which plan.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::problems::{
    BadRequest, Conflict, NotFound, TooLarge, Unauthorized, Unprocessable,
};
use super::owned::check_version_path;
use super::{AppState, Json, PathParams, QueryParams};
use crate::domain::check_slug;
use crate::error::Error;
use crate::model::{Contract, CreateContract, Page, PageQuery};
use crate::store::contracts::{self, ContractTerms};
use crate::store::orgs::OwnedKind;
use crate::store::PageRequest;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_contract, list_contracts))
        .routes(routes!(get_contract, delete_contract))
}

/// Lets the client version call a published private API version through one of the plans it
/// offers (the version named by `plan_version`, or else the one it offers of `plan`). Conflict kinds: api-version-not-published, contract-with-public-api,
/// contract-exists. Unprocessable kinds: plan-not-offered.
#[utoipa::path(post, path = "/v1/orgs/{org}/clients/{client}/versions/{version}/contracts",
    tag = "contracts",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path)),
    request_body = CreateContract,
    responses((status = 201, description = "Created", body = Contract), BadRequest, Unauthorized, NotFound, Conflict,
        TooLarge, Unprocessable))]
async fn create_contract(
    State(state): State<AppState>,
    PathParams((org, client, version)): PathParams<(String, String, String)>,
    Json(body): Json<CreateContract>,
) -> Result<(StatusCode, axum::Json<Contract>), Error> {
    check_version_path(OwnedKind::Client, &org, &client, &version)?;
    let api_org = body.api_org.clone().unwrap_or_else(|| org.clone());
    check_slug("api_org", &api_org)?;
    check_slug("api", &body.api)?;
    crate::domain::check_version("api_version", &body.api_version)?;
    let plan_org = body.plan_org.clone().unwrap_or_else(|| api_org.clone());
    check_slug("plan_org", &plan_org)?;
    check_slug("plan", &body.plan)?;
    if let Some(plan_version) = &body.plan_version {
        crate::domain::check_version("plan_version", plan_version)?;
    }
    let contract = state
        .store
        .write(move |tx| {
            contracts::create(
                tx,
                &ContractTerms {
                    client_org: &org,
                    client: &client,
                    client_version: &version,
                    api_org: &api_org,
                    api: &body.api,
                    api_version: &body.api_version,
                    plan_org: &plan_org,
                    plan: &body.plan,
                    plan_version: body.plan_version.as_deref(),
                },
            )
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(contract)))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/clients/{client}/versions/{version}/contracts",
    tag = "contracts",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path),
        PageQuery),
    responses((status = 200, description = "OK", body = Page<Contract>), BadRequest, Unauthorized, NotFound))]
async fn list_contracts(
    State(state): State<AppState>,
    PathParams((org, client, version)): PathParams<(String, String, String)>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<axum::Json<Page<Contract>>, Error> {
    check_version_path(OwnedKind::Client, &org, &client, &version)?;
    let page = PageRequest::from_query(&query)?;
    let list = state
        .store
        .read(move |conn| contracts::list(conn, &org, &client, &version, &page))
        .await?;
    Ok(axum::Json(list))
}

#[utoipa::path(get,
    path = "/v1/orgs/{org}/clients/{client}/versions/{version}/contracts/{contract_id}",
    tag = "contracts",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path),
        ("contract_id" = u64, Path)),
    responses((status = 200, description = "OK", body = Contract), BadRequest, Unauthorized, NotFound))]
async fn get_contract(
    State(state): State<AppState>,
    PathParams((org, client, version, id)): PathParams<(String, String, String, u64)>,
) -> Result<axum::Json<Contract>, Error> {
    check_version_path(OwnedKind::Client, &org, &client, &version)?;
    let found = state
        .store
        .read(move |conn| contracts::get(conn, &org, &client, &version, id))
        .await?;
    Ok(axum::Json(found))
}

/// Revokes the contract: gateways refuse the client version on that API from the next
/// revision on.
#[utoipa::path(delete,
    path = "/v1/orgs/{org}/clients/{client}/versions/{version}/contracts/{contract_id}",
    tag = "contracts",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path),
        ("contract_id" = u64, Path)),
    responses((status = 204, description = "Revoked"), BadRequest, Unauthorized, NotFound))]
async fn delete_contract(
    State(state): State<AppState>,
    PathParams((org, client, version, id)): PathParams<(String, String, String, u64)>,
) -> Result<StatusCode, Error> {
    check_version_path(OwnedKind::Client, &org, &client, &version)?;
    state
        .store
        .write(move |tx| contracts::delete(tx, &org, &client, &version, id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

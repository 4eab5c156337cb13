//! `/v1/orgs/{org}/plans`: plans and their versions (draft → locked).

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::problems::{
    BadRequest, Conflict, NotFound, TooLarge, Unauthorized, Unprocessable,
};
use super::owned::{self, check_version_path};
use super::{AppState, Json, PathParams, QueryParams, Replacement};
use crate::domain::{check_version, normalize_limits};
use crate::error::Error;
use crate::model::{CreateOwned, CreatePlanVersion, Owned, Page, PageQuery, PlanVersion};
use crate::store::orgs::OwnedKind;
use crate::store::{plans, PageRequest};

const KIND: OwnedKind = OwnedKind::Plan;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_plan, list_plans))
        .routes(routes!(get_plan, rename_plan))
        .routes(routes!(create_plan_version, list_plan_versions))
        .routes(routes!(get_plan_version, update_plan_version))
        .routes(routes!(lock_plan_version))
}

/// Creates a plan. Conflict kinds: already-exists.
#[utoipa::path(post, path = "/v1/orgs/{org}/plans", tag = "plans",
    params(("org" = String, Path)), request_body = CreateOwned,
    responses((status = 201, description = "Created", body = Owned), BadRequest, Unauthorized, NotFound, Conflict, TooLarge))]
async fn create_plan(
    State(state): State<AppState>,
    PathParams(org): PathParams<String>,
    Json(body): Json<CreateOwned>,
) -> Result<(StatusCode, axum::Json<Owned>), Error> {
    owned::create(&state, KIND, org, body).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/plans", tag = "plans",
    params(("org" = String, Path), PageQuery),
    responses((status = 200, description = "OK", body = Page<Owned>), BadRequest, Unauthorized, NotFound))]
async fn list_plans(
    State(state): State<AppState>,
    PathParams(org): PathParams<String>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<axum::Json<Page<Owned>>, Error> {
    owned::list(&state, KIND, org, query).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/plans/{plan}", tag = "plans",
    params(("org" = String, Path), ("plan" = String, Path)),
    responses((status = 200, description = "OK", body = Owned), BadRequest, Unauthorized, NotFound))]
async fn get_plan(
    State(state): State<AppState>,
    PathParams(path): PathParams<(String, String)>,
) -> Result<axum::Json<Owned>, Error> {
    owned::get(&state, KIND, path).await
}

/// Renames a plan: the body is the plan as GET returns it, read-only fields optional.
#[utoipa::path(put, path = "/v1/orgs/{org}/plans/{plan}", tag = "plans",
    params(("org" = String, Path), ("plan" = String, Path)), request_body = Owned,
    responses((status = 200, description = "OK", body = Owned), BadRequest, Unauthorized, NotFound, TooLarge))]
async fn rename_plan(
    State(state): State<AppState>,
    PathParams(path): PathParams<(String, String)>,
    body: Replacement<Owned>,
) -> Result<axum::Json<Owned>, Error> {
    owned::rename(&state, KIND, path, body).await
}

/// Creates a draft plan version, with `limits` or with the limits of `copy_from`.
/// Conflict kinds: already-exists. Unprocessable kinds: invalid-limit, limits-or-copy-from.
#[utoipa::path(post, path = "/v1/orgs/{org}/plans/{plan}/versions", tag = "plans",
    params(("org" = String, Path), ("plan" = String, Path)), request_body = CreatePlanVersion,
    responses((status = 201, description = "Created", body = PlanVersion), BadRequest, Unauthorized, NotFound, Conflict,
        TooLarge, Unprocessable))]
async fn create_plan_version(
    State(state): State<AppState>,
    PathParams((org, plan)): PathParams<(String, String)>,
    Json(body): Json<CreatePlanVersion>,
) -> Result<(StatusCode, axum::Json<PlanVersion>), Error> {
    check_version_path(KIND, &org, &plan, &body.version)?;
    let limits = match &body.limits {
        Some(limits) => Some(normalize_limits("limits", limits)?),
        None => None,
    };
    if let Some(from) = &body.copy_from {
        check_version("copy_from", from)?;
    }
    let created = state
        .store
        .write(move |tx| {
            let limits = match (limits, &body.copy_from) {
                (Some(limits), None) => limits,
                (None, Some(from)) => plans::get_version(tx, &org, &plan, from)?.limits,
                _ => {
                    return Err(Error::unprocessable(
                        "limits-or-copy-from",
                        "give either limits or copy_from (the version whose limits to copy)",
                    ))
                }
            };
            plans::create_version(tx, &org, &plan, &body.version, &limits)
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/plans/{plan}/versions", tag = "plans",
    params(("org" = String, Path), ("plan" = String, Path), PageQuery),
    responses((status = 200, description = "OK", body = Page<PlanVersion>), BadRequest, Unauthorized, NotFound))]
async fn list_plan_versions(
    State(state): State<AppState>,
    PathParams((org, plan)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<axum::Json<Page<PlanVersion>>, Error> {
    crate::domain::check_slug("org", &org)?;
    crate::domain::check_slug("plan", &plan)?;
    let page = PageRequest::from_query(&query)?;
    let versions = state
        .store
        .read(move |conn| plans::list_versions(conn, &org, &plan, &page))
        .await?;
    Ok(axum::Json(versions))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/plans/{plan}/versions/{version}", tag = "plans",
    params(("org" = String, Path), ("plan" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "OK", body = PlanVersion), BadRequest, Unauthorized, NotFound))]
async fn get_plan_version(
    State(state): State<AppState>,
    PathParams((org, plan, version)): PathParams<(String, String, String)>,
) -> Result<axum::Json<PlanVersion>, Error> {
    check_version_path(KIND, &org, &plan, &version)?;
    let found = state
        .store
        .read(move |conn| plans::get_version(conn, &org, &plan, &version))
        .await?;
    Ok(axum::Json(found))
}

/// Replaces a draft's limits. The body is the version as GET returns it; its read-only fields
/// may be left out and are refused (400 invalid-field) only when they differ from the stored
/// ones, after the lifecycle check. Conflict kinds: plan-version-locked. Unprocessable kinds:
/// invalid-limit.
#[utoipa::path(put, path = "/v1/orgs/{org}/plans/{plan}/versions/{version}", tag = "plans",
    params(("org" = String, Path), ("plan" = String, Path), ("version" = String, Path)),
    request_body = PlanVersion,
    responses((status = 200, description = "OK", body = PlanVersion), BadRequest, Unauthorized, NotFound, Conflict,
        TooLarge, Unprocessable))]
async fn update_plan_version(
    State(state): State<AppState>,
    PathParams((org, plan, version)): PathParams<(String, String, String)>,
    body: Replacement<PlanVersion>,
) -> Result<axum::Json<PlanVersion>, Error> {
    check_version_path(KIND, &org, &plan, &version)?;
    let updated = state
        .store
        .write(move |tx| {
            let stored = plans::get_version(tx, &org, &plan, &version)?;
            plans::check_draft(&stored)?;
            body.check_read_only(&stored)?;
            let limits = normalize_limits("limits", &body.body.limits)?;
            plans::update_version(tx, &org, &plan, &version, &limits)
        })
        .await?;
    Ok(axum::Json(updated))
}

/// Locks a draft forever: it can then be offered and contracted, and reaches gateways.
/// Conflict kinds: plan-version-locked (already locked).
#[utoipa::path(post, path = "/v1/orgs/{org}/plans/{plan}/versions/{version}/lock", tag = "plans",
    params(("org" = String, Path), ("plan" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "OK", body = PlanVersion), BadRequest, Unauthorized, NotFound, Conflict))]
async fn lock_plan_version(
    State(state): State<AppState>,
    PathParams((org, plan, version)): PathParams<(String, String, String)>,
) -> Result<axum::Json<PlanVersion>, Error> {
    check_version_path(KIND, &org, &plan, &version)?;
    let locked = state
        .store
        .write(move |tx| plans::lock_version(tx, &org, &plan, &version))
        .await?;
    Ok(axum::Json(locked))
}

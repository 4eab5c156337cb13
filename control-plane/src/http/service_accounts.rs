//! `/v1/service-accounts`: credentials for automation. `POST /oauth/token` with them issues a
//! management token (audience `tollgate-management`) carrying the account's scopes:
//! `tollgate:admin` (everything) or `tollgate:read` (reads only).

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::problems::{BadRequest, Conflict, NotFound, TooLarge, Unauthorized};
use super::{AppState, Json, PathParams};
use crate::error::Error;
use crate::model::{CreateServiceAccount, CreatedServiceAccount, ServiceAccount};
use crate::store::tokens;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_service_account, list_service_accounts))
        .routes(routes!(get_service_account, delete_service_account))
}

/// Creates a service account with client credentials; the secret is in this answer only.
/// Conflict kinds: already-exists.
#[utoipa::path(post, path = "/v1/service-accounts", tag = "tokens",
    request_body = CreateServiceAccount,
    responses((status = 201, description = "Created", body = CreatedServiceAccount), BadRequest, Unauthorized,
        Conflict, TooLarge))]
async fn create_service_account(
    State(state): State<AppState>,
    Json(body): Json<CreateServiceAccount>,
) -> Result<(StatusCode, axum::Json<CreatedServiceAccount>), Error> {
    let created = state
        .store
        .write(move |tx| tokens::create_service_account(tx, &body.id, &body.scopes))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[utoipa::path(get, path = "/v1/service-accounts", tag = "tokens",
    responses((status = 200, description = "OK", body = Vec<ServiceAccount>), Unauthorized))]
async fn list_service_accounts(
    State(state): State<AppState>,
) -> Result<axum::Json<Vec<ServiceAccount>>, Error> {
    Ok(axum::Json(
        state.store.read(tokens::list_service_accounts).await?,
    ))
}

#[utoipa::path(get, path = "/v1/service-accounts/{id}", tag = "tokens",
    params(("id" = String, Path)),
    responses((status = 200, description = "OK", body = ServiceAccount), Unauthorized, NotFound))]
async fn get_service_account(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<axum::Json<ServiceAccount>, Error> {
    let found = state
        .store
        .read(move |conn| tokens::get_service_account(conn, &id))
        .await?;
    Ok(axum::Json(found))
}

/// Deletes the account and its credentials. Tokens it already holds stay valid until they
/// expire (at most the token lifetime).
#[utoipa::path(delete, path = "/v1/service-accounts/{id}", tag = "tokens",
    params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), Unauthorized, NotFound))]
async fn delete_service_account(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, Error> {
    state
        .store
        .write(move |tx| tokens::delete_service_account(tx, &id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

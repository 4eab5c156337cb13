//! `/v1/issuers`: external token issuers (Keycloak, Entra ID, Auth0…) gateways trust. The
//! issuer's URL is the last path segment, percent-encoded.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::problems::{
    BadRequest, Conflict, NotFound, TooLarge, Unauthorized, Unprocessable,
};
use super::{AppState, Json, PathParams, Replacement};
use crate::error::Error;
use crate::model::{ExternalIssuer, IssuerSpec};
use crate::store::issuers;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_issuer, list_issuers))
        .routes(routes!(get_issuer, update_issuer, delete_issuer))
}

/// Trusts an external issuer: gateways verify its tokens against the given JWKS (public keys
/// only; each key's algorithm from its `alg` or type). Checked with the gateways' own key
/// decoding first. Conflict kinds: already-exists, own-issuer. Unprocessable kinds:
/// invalid-issuer.
#[utoipa::path(post, path = "/v1/issuers", tag = "tokens", request_body = IssuerSpec,
    responses((status = 201, description = "Created", body = ExternalIssuer), BadRequest, Unauthorized, Conflict,
        TooLarge, Unprocessable))]
async fn create_issuer(
    State(state): State<AppState>,
    Json(body): Json<IssuerSpec>,
) -> Result<(StatusCode, axum::Json<ExternalIssuer>), Error> {
    let created = state
        .store
        .write(move |tx| issuers::create(tx, &body))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[utoipa::path(get, path = "/v1/issuers", tag = "tokens",
    responses((status = 200, description = "OK", body = Vec<ExternalIssuer>), Unauthorized))]
async fn list_issuers(
    State(state): State<AppState>,
) -> Result<axum::Json<Vec<ExternalIssuer>>, Error> {
    Ok(axum::Json(state.store.read(issuers::list).await?))
}

#[utoipa::path(get, path = "/v1/issuers/{issuer}", tag = "tokens",
    params(("issuer" = String, Path, description = "the issuer URL, percent-encoded")),
    responses((status = 200, description = "OK", body = ExternalIssuer), Unauthorized, NotFound))]
async fn get_issuer(
    State(state): State<AppState>,
    PathParams(issuer): PathParams<String>,
) -> Result<axum::Json<ExternalIssuer>, Error> {
    let found = state
        .store
        .read(move |conn| issuers::get(conn, &issuer))
        .await?;
    Ok(axum::Json(found))
}

/// Replaces the issuer's audiences, keys, client claim and token lifetime cap (e.g. after the
/// issuer rotated its keys). The body is the issuer as GET returns it, read-only fields
/// optional. Unprocessable kinds: invalid-issuer.
#[utoipa::path(put, path = "/v1/issuers/{issuer}", tag = "tokens",
    params(("issuer" = String, Path, description = "the issuer URL, percent-encoded")),
    request_body = ExternalIssuer,
    responses((status = 200, description = "OK", body = ExternalIssuer), BadRequest, Unauthorized, NotFound,
        TooLarge, Unprocessable))]
async fn update_issuer(
    State(state): State<AppState>,
    PathParams(issuer): PathParams<String>,
    body: Replacement<ExternalIssuer>,
) -> Result<axum::Json<ExternalIssuer>, Error> {
    let updated = state
        .store
        .write(move |tx| {
            body.check_read_only(&issuers::get(tx, &issuer)?)?;
            let spec = IssuerSpec {
                issuer,
                ..body.body.spec()
            };
            issuers::update(tx, &spec)
        })
        .await?;
    Ok(axum::Json(updated))
}

/// Stops trusting the issuer. Conflict kinds: issuer-in-use (client versions map subjects of
/// it; delete those first).
#[utoipa::path(delete, path = "/v1/issuers/{issuer}", tag = "tokens",
    params(("issuer" = String, Path, description = "the issuer URL, percent-encoded")),
    responses((status = 204, description = "Deleted"), Unauthorized, NotFound, Conflict))]
async fn delete_issuer(
    State(state): State<AppState>,
    PathParams(issuer): PathParams<String>,
) -> Result<StatusCode, Error> {
    state
        .store
        .write(move |tx| issuers::delete(tx, &issuer))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

//! A client version's token identities: OAuth client credentials at the own issuer
//! (`…/credentials`) and subjects at external issuers (`…/subjects`).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::problems::{
    BadRequest, Conflict, NotFound, TooLarge, Unauthorized, Unprocessable,
};
use super::owned::check_version_path;
use super::{AppState, Json, PathParams, QueryParams};
use crate::error::Error;
use crate::model::{CreateCredentials, CreateSubject, CredentialsInfo, IssuedCredentials, Subject};
use crate::store::orgs::OwnedKind;
use crate::store::{issuers, tokens};

const KIND: OwnedKind = OwnedKind::Client;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            create_credentials,
            list_credentials,
            delete_credentials
        ))
        .routes(routes!(add_subject, list_subjects, delete_subject))
}

type VersionPath = (String, String, String);

/// Issues OAuth client credentials for the client version; the secret is in this answer
/// only (the control plane keeps its SHA-256). The client version's tokens from
/// `POST /oauth/token` act as it at the gateways (`sub` = `org/client/version`), under its
/// contracts and counters. Credentials issued before keep working for `grace_seconds`.
/// Unprocessable kinds: invalid-grace-period.
#[utoipa::path(post, path = "/v1/orgs/{org}/clients/{client}/versions/{version}/credentials",
    tag = "tokens",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path)),
    request_body = CreateCredentials,
    responses((status = 201, description = "Created", body = IssuedCredentials), BadRequest, Unauthorized, NotFound,
        TooLarge, Unprocessable))]
async fn create_credentials(
    State(state): State<AppState>,
    PathParams((org, client, version)): PathParams<VersionPath>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, axum::Json<IssuedCredentials>), Error> {
    check_version_path(KIND, &org, &client, &version)?;
    // The body is optional: no body means no grace period.
    let grace = if body.iter().all(u8::is_ascii_whitespace) {
        0
    } else {
        let invalid = |e: String| {
            Error::InvalidBody(format!("the body does not match this path's schema: {e}"))
        };
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
        if !value.is_object() {
            return Err(invalid("expected a JSON object".into()));
        }
        serde_json::from_value::<CreateCredentials>(value)
            .map_err(|e| invalid(e.to_string()))?
            .grace_seconds
    };
    let issued = state
        .store
        .write(move |tx| tokens::create_client_credentials(tx, &org, &client, &version, grace))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(issued)))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/clients/{client}/versions/{version}/credentials",
    tag = "tokens",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "OK", body = Vec<CredentialsInfo>), BadRequest, Unauthorized, NotFound))]
async fn list_credentials(
    State(state): State<AppState>,
    PathParams((org, client, version)): PathParams<VersionPath>,
) -> Result<axum::Json<Vec<CredentialsInfo>>, Error> {
    check_version_path(KIND, &org, &client, &version)?;
    let found = state
        .store
        .read(move |conn| tokens::list_client_credentials(conn, &org, &client, &version))
        .await?;
    Ok(axum::Json(found))
}

/// Revokes all of the client version's credentials. Its tokens stop being accepted by the
/// gateways with the next snapshot (the client version loses its own-issuer subject).
#[utoipa::path(delete, path = "/v1/orgs/{org}/clients/{client}/versions/{version}/credentials",
    tag = "tokens",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path)),
    responses((status = 204, description = "Revoked"), BadRequest, Unauthorized, NotFound))]
async fn delete_credentials(
    State(state): State<AppState>,
    PathParams((org, client, version)): PathParams<VersionPath>,
) -> Result<StatusCode, Error> {
    check_version_path(KIND, &org, &client, &version)?;
    state
        .store
        .write(move |tx| tokens::delete_client_credentials(tx, &org, &client, &version))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Maps an identity at a registered external issuer to the client version: that issuer's
/// tokens whose client claim equals `value` act as the client version at the gateways.
/// Conflict kinds: already-exists (the identity is mapped already). Unprocessable kinds:
/// own-issuer-subject.
#[utoipa::path(post, path = "/v1/orgs/{org}/clients/{client}/versions/{version}/subjects",
    tag = "tokens",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path)),
    request_body = CreateSubject,
    responses((status = 201, description = "Created", body = Subject), BadRequest, Unauthorized, NotFound, Conflict,
        TooLarge, Unprocessable))]
async fn add_subject(
    State(state): State<AppState>,
    PathParams((org, client, version)): PathParams<VersionPath>,
    Json(body): Json<CreateSubject>,
) -> Result<(StatusCode, axum::Json<Subject>), Error> {
    check_version_path(KIND, &org, &client, &version)?;
    let added = state
        .store
        .write(move |tx| {
            issuers::add_subject(tx, &org, &client, &version, &body.issuer, &body.value)
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(added)))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/clients/{client}/versions/{version}/subjects",
    tag = "tokens",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "OK", body = Vec<Subject>), BadRequest, Unauthorized, NotFound))]
async fn list_subjects(
    State(state): State<AppState>,
    PathParams((org, client, version)): PathParams<VersionPath>,
) -> Result<axum::Json<Vec<Subject>>, Error> {
    check_version_path(KIND, &org, &client, &version)?;
    let found = state
        .store
        .read(move |conn| issuers::list_subjects(conn, &org, &client, &version))
        .await?;
    Ok(axum::Json(found))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubjectQuery {
    pub issuer: String,
    pub value: String,
}

/// Removes a mapping; that identity's tokens stop acting as the client version.
#[utoipa::path(delete, path = "/v1/orgs/{org}/clients/{client}/versions/{version}/subjects",
    tag = "tokens",
    params(("org" = String, Path), ("client" = String, Path), ("version" = String, Path), SubjectQuery),
    responses((status = 204, description = "Deleted"), BadRequest, Unauthorized, NotFound))]
async fn delete_subject(
    State(state): State<AppState>,
    PathParams((org, client, version)): PathParams<VersionPath>,
    QueryParams(query): QueryParams<SubjectQuery>,
) -> Result<StatusCode, Error> {
    check_version_path(KIND, &org, &client, &version)?;
    state
        .store
        .write(move |tx| {
            issuers::delete_subject(tx, &org, &client, &version, &query.issuer, &query.value)
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

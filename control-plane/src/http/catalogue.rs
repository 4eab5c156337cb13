//! `/v1/apply` and `/v1/export`: the whole catalogue as one declarative document.

use axum::extract::{DefaultBodyLimit, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::problems::{
    BadRequest, Conflict, NotFound, TooLarge, Unauthorized, Unprocessable,
};
use super::{AppState, Json, MAX_APPLY_BODY_BYTES};
use crate::catalogue::{self, ApplyReport, Catalogue};
use crate::error::Error;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(apply))
        .layer(DefaultBodyLimit::max(MAX_APPLY_BODY_BYTES))
        .merge(OpenApiRouter::new().routes(routes!(export)))
}

/// Converges the catalogue towards the document in one transaction: creates what is missing,
/// edits drafts, replaces issuers' settings that differ (as PUT does), moves lifecycles
/// forward, deletes nothing. Applying the same document twice changes nothing the second time
/// and leaves the revision alone. Secrets are never declared: the report carries the API keys
/// and service-account credentials this apply created, once. Errors name the entry
/// (`orgs[acme].apis[orders]: …`) and carry the kind of the rule that refused it
/// (plan-version-locked, api-version-not-draft, routing-collision, contract-exists,
/// plan-not-offered, listed-twice, invalid-issuer, own-issuer, service-account-exists, …);
/// nothing is written then.
#[utoipa::path(post, path = "/v1/apply", tag = "catalogue", request_body = Catalogue,
    responses((status = 200, description = "OK", body = ApplyReport), BadRequest, Unauthorized, NotFound, Conflict,
        TooLarge, Unprocessable))]
async fn apply(
    State(state): State<AppState>,
    Json(document): Json<Catalogue>,
) -> Result<axum::Json<ApplyReport>, Error> {
    catalogue::check(&document)?;
    let (mut report, revision) = state
        .store
        .write_at_revision(move |tx| catalogue::apply(tx, &document))
        .await?;
    report.revision = revision;
    if !report.changes.is_empty() {
        tracing::info!(
            changes = report.changes.len(),
            revision = report.revision,
            "catalogue applied"
        );
    }
    Ok(axum::Json(report))
}

/// The whole catalogue without secrets (keys and credentials are never stored in the clear);
/// applying it back is a no-op.
#[utoipa::path(get, path = "/v1/export", tag = "catalogue",
    responses((status = 200, description = "OK", body = Catalogue), Unauthorized))]
async fn export(State(state): State<AppState>) -> Result<axum::Json<Catalogue>, Error> {
    let document = state.store.read(catalogue::export).await?;
    Ok(axum::Json(document))
}

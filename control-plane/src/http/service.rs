//! Unauthenticated operational endpoints: `/healthz` and `/metrics`.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::error::Error;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the answer is 200.
    pub status: &'static str,
    /// The latest committed snapshot revision.
    pub revision: u64,
    /// When storage last answered a read or a write (unix seconds); the control plane reads it
    /// at least once a second.
    pub storage_answered_at: i64,
}

/// Answers from memory, never waiting for storage or for a write in progress (a write of a
/// large catalogue takes seconds; a liveness probe must not time out behind it). 200 with the
/// latest revision while storage is healthy as the store last saw it; 500 when the latest read
/// or the latest write failed on storage (I/O error, disk full, corruption, a lock held past
/// the busy timeout) and nothing has succeeded since on that side, or when storage has not
/// answered a read for 30 s (reads hang). A failed write stays 500 until a write commits: the
/// once-a-second expiry check tries an empty one while it is so.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "OK", body = Health), (status = 500, description = "Storage failing")))]
async fn healthz(State(state): State<AppState>) -> Result<axum::Json<Health>, Error> {
    let storage_answered_at = state
        .store
        .health()
        .map_err(|failure| Error::Storage(format!("health check: {failure}")))?;
    Ok(axum::Json(Health {
        status: "ok",
        revision: state.store.snapshot().revision,
        storage_answered_at,
    }))
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "OK", content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let snapshot = state.store.snapshot();
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state
            .metrics
            .render(snapshot.revision, &state.store.figures),
    )
}

//! Unauthenticated operational endpoints: `/healthz` and `/metrics`.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` (200), or `degraded` (503) while storage fails: this replica still serves the
    /// snapshot it holds, but cannot write and may not see what other replicas commit.
    pub status: &'static str,
    /// The latest snapshot revision in force here.
    pub revision: u64,
    /// When storage last answered a read or a write (unix seconds); the control plane reads it
    /// at least once a second.
    pub storage_answered_at: i64,
    /// What failed, when degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Answers from memory, never waiting for storage or for a write in progress (a write of a
/// large catalogue takes seconds; a liveness probe must not time out behind it). 200 `ok` with
/// the latest revision while storage is healthy as the store last saw it; 503 `degraded` when
/// the latest read or the latest write failed on storage (I/O error, disk full, corruption, a
/// lock held past the busy timeout, PostgreSQL unreachable) and nothing has succeeded since on
/// that side, or when storage has not answered a read for 30 s (reads hang). A failed write
/// stays degraded until a write commits: the once-a-second expiry check tries an empty one
/// while it is so. Gateways' health checks (`envoy-config`) take a degraded replica out of the
/// control-plane cluster while another is `ok`.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "OK", body = Health),
              (status = 503, description = "Degraded: storage failing", body = Health)))]
async fn healthz(State(state): State<AppState>) -> (StatusCode, axum::Json<Health>) {
    let revision = state.store.snapshot().revision;
    let storage_answered_at = state.store.storage_answered_at();
    match state.store.health() {
        Ok(_) => (
            StatusCode::OK,
            axum::Json(Health {
                status: "ok",
                revision,
                storage_answered_at,
                detail: None,
            }),
        ),
        Err(failure) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Health {
                status: "degraded",
                revision,
                storage_answered_at,
                detail: Some(failure),
            }),
        ),
    }
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

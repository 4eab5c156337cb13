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
}

/// 200 when the database answers.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "OK", body = Health), (status = 500, description = "Storage unavailable")))]
async fn healthz(State(state): State<AppState>) -> Result<axum::Json<Health>, Error> {
    state
        .store
        .read(|conn| Ok(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await?;
    Ok(axum::Json(Health {
        status: "ok",
        revision: state.store.snapshot().revision,
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
        state.metrics.render(snapshot.revision, snapshot.bytes()),
    )
}

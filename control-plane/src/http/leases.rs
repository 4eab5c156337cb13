//! `POST /gateway/v1/leases`: the lease broker's endpoint (`serve --redis`). A gateway asks for
//! units of a contract's current windows and gets what the fleet's count in Redis leaves room
//! for (`crate::fleet`).

use std::time::Instant;

use axum::extract::State;
use tollgate_core::fleet::{LeaseAnswer, LeaseRequest, ReturnAnswer, ReturnRequest};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::problems::{BadRequest, FleetOff, RedisUnavailable, Unauthorized};
use super::{AppState, Json};
use crate::error::Error;
use crate::metrics::LeaseLabels;

/// The broker, or 404 `fleet-off` when `serve` runs without `--redis`.
fn broker(state: &AppState) -> Result<&crate::fleet::Broker, Error> {
    state.fleet.as_deref().ok_or_else(|| Error::FeatureOff {
        kind: "fleet-off",
        detail: "counts are per gateway: this control plane runs without --redis".into(),
    })
}

/// Counts and logs a Redis failure before it is answered (503 `redis-unavailable`).
fn refused(state: &AppState, e: Error, what: &str, contract: u64) -> Error {
    if matches!(e, Error::Unavailable { .. }) {
        state.metrics.redis_errors.inc();
        tracing::warn!(error = %e, contract, "{what} refused");
    }
    e
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_lease))
        .routes(routes!(post_return))
}

/// Allows the gateway `allowed` more requests (0 when some window has no room left for it),
/// granting in each window what it lacks there, and counts the grants against the whole
/// fleet. The
/// windows are Redis's (its `TIME`), as are `now_ms` and `gateways` (gateways that asked in
/// the last minute). Only with `tollgate serve --redis`; otherwise 404 `fleet-off`. 503
/// `redis-unavailable` when Redis fails or takes more than 100 ms: nothing was granted.
#[utoipa::path(post, path = "/gateway/v1/leases", tag = "gateway", request_body = LeaseRequest,
    responses(
        (status = 200, description = "The grant", body = LeaseAnswer),
        BadRequest, Unauthorized, FleetOff, RedisUnavailable))]
async fn post_lease(
    State(state): State<AppState>,
    Json(request): Json<LeaseRequest>,
) -> Result<axum::Json<LeaseAnswer>, Error> {
    let broker = broker(&state)?;
    request
        .check()
        .map_err(|reason| Error::invalid_field("body", reason))?;
    let started = Instant::now();
    let outcome = broker.grant(&request).await;
    state
        .metrics
        .grant_seconds
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(granted) => {
            let answer = granted.answer;
            let metrics = &state.metrics;
            metrics
                .window_retries
                .inc_by(u64::from(granted.window_retries));
            metrics.units_granted.inc_by(answer.allowed);
            let outcome = if answer.allowed > 0 {
                "granted"
            } else {
                "exhausted"
            };
            metrics
                .lease_answers
                .get_or_create(&LeaseLabels { outcome })
                .inc();
            Ok(axum::Json(answer))
        }
        Err(e) => Err(refused(&state, e, "lease", request.contract)),
    }
}

/// Hands units a gateway did not use back to the fleet: subtracted from the counts of the
/// windows named, once per (gateway, `id`) — a return sent again (a retry after a lost answer,
/// or a replay) answers `applied: false` and subtracts nothing. The gateway took the units out
/// of its allowance before sending. Only with `tollgate serve --redis`.
#[utoipa::path(post, path = "/gateway/v1/leases/returns", tag = "gateway", request_body = ReturnRequest,
    responses(
        (status = 200, description = "Applied now, or before", body = ReturnAnswer),
        BadRequest, Unauthorized, FleetOff, RedisUnavailable))]
async fn post_return(
    State(state): State<AppState>,
    Json(request): Json<ReturnRequest>,
) -> Result<axum::Json<ReturnAnswer>, Error> {
    let broker = broker(&state)?;
    request
        .check()
        .map_err(|reason| Error::invalid_field("body", reason))?;
    match broker.give_back(&request).await {
        Ok(applied) => {
            let outcome = if applied {
                "returned"
            } else {
                "return_replayed"
            };
            state
                .metrics
                .lease_answers
                .get_or_create(&LeaseLabels { outcome })
                .inc();
            Ok(axum::Json(ReturnAnswer { applied }))
        }
        Err(e) => Err(refused(&state, e, "return", request.contract)),
    }
}

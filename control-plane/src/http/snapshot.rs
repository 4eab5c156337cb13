//! `GET /v1/snapshot`: the signed catalogue gateways enforce, with revision-based caching and
//! long polling. Deltas to the latest revision come from memory (the write cut them); full pages
//! are assembled from the stored buckets as of their revision, once, and cached.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tollgate_core::signing::SIGNATURE_HEADER;
use tollgate_core::snapshot::Snapshot;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::problems::{BadRequest, Unauthorized};
use super::{AppState, QueryParams};
use crate::error::Error;
use crate::store::{parse_page_cursor, PageAnswer, Revision, SignedPage};

/// Longest a long poll is held; a larger `wait` is capped to this.
pub const MAX_WAIT_SECONDS: u64 = 60;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_snapshot))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotQuery {
    /// With `If-None-Match` naming the current revision: hold the request up to this many
    /// seconds (at most 60) until a new revision commits, then answer it at once; 304 if none
    /// did.
    pub wait: Option<u64>,
    /// The `next` of the previous page: the following page of the same revision. When that
    /// revision is no longer retained, the first page of the current revision answers instead,
    /// so the gateway starts over on a newer revision rather than mixing two.
    pub cursor: Option<String>,
    /// The revision the gateway holds in full (instead of `If-None-Match`): a newer revision
    /// then comes as a delta when possible, one page defining only the key-directory buckets
    /// that changed since, with all plans and API versions; otherwise as the full revision.
    pub since: Option<u64>,
}

/// The catalogue a gateway needs, in `core`'s snapshot schema. Headers: `ETag:
/// "<revision>"`, `x-tollgate-signature: t=<issued at, unix seconds>,ed25519=<base64>`: the
/// control plane's Ed25519 signature, made when answering, over
/// `"tollgate-snapshot-v1\0" || issued_at (u64 big endian) || SHA-256(body)`.
/// `If-None-Match: "<revision>"` answers 304 while the revision is unchanged. A catalogue with
/// more keys than a page carries arrives in pages: each lists the key-directory `buckets` it
/// defines and, but the last, the `next` cursor to pass as `?cursor=`. With `?since=<held
/// revision>` a newer revision comes as a delta page when one can be cut; it names that
/// revision in `base_revision`, and gateways apply it only over exactly that revision.
#[utoipa::path(get, path = "/v1/snapshot", tag = "gateway", params(SnapshotQuery,
        ("If-None-Match" = Option<String>, Header, description = "\"<revision>\" already held")),
    responses(
        (status = 200, description = "OK", body = Snapshot, headers(
            ("ETag" = String, description = "\"<revision>\""),
            ("x-tollgate-signature" = String, description = "t=<issued at>,ed25519=<base64 signature of the issue time and the body's SHA-256>"))),
        (status = 304, description = "The revision in If-None-Match is still current"),
        BadRequest, Unauthorized))]
async fn get_snapshot(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<SnapshotQuery>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    if let Some(cursor) = &query.cursor {
        let (revision, page) = parse_page_cursor(cursor)
            .ok_or_else(|| Error::invalid_field("cursor", "not a snapshot page cursor"))?;
        let response = match state.store.page(revision, page).await? {
            PageAnswer::Page(body) => signed(&state, revision, &body),
            PageAnswer::NoSuchPage => {
                return Err(Error::invalid_field(
                    "cursor",
                    format!("revision {revision} has no page {page}"),
                ))
            }
            PageAnswer::Gone => first_page(&state, &state.store.snapshot()).await?,
        };
        state.metrics.snapshot_served("page");
        return Ok(response);
    }
    let mut updates = state.store.subscribe();
    let current = Arc::clone(&updates.borrow_and_update());
    let held = query.since.or_else(|| held_revision(&headers));
    // A gateway may hold a revision newer than this replica has seen yet (it polled another):
    // it waits here like a gateway that is current, and is never answered an older revision.
    let Some(held) = held.filter(|held| *held >= current.revision) else {
        return newer(&state, query.since, current, "full").await;
    };
    let wait = query.wait.unwrap_or(0).min(MAX_WAIT_SECONDS);
    if wait == 0 {
        state.metrics.snapshot_served("not_modified");
        return Ok(not_modified(held));
    }
    state.metrics.long_polls_waiting.inc();
    let mut shutdown = state.shutdown.clone();
    let newer_snapshot = tokio::select! {
        changed = updates.wait_for(|s| s.revision > held) => changed.ok().map(|s| Arc::clone(&s)),
        _ = tokio::time::sleep(Duration::from_secs(wait)) => None,
        _ = shutdown.wait_for(|stopping| *stopping) => None,
    };
    state.metrics.long_polls_waiting.dec();
    match newer_snapshot {
        Some(snapshot) => newer(&state, query.since, snapshot, "woken").await,
        None => {
            state.metrics.snapshot_served("not_modified");
            Ok(not_modified(held))
        }
    }
}

/// The answer for a gateway behind `snapshot`: a delta from `since` when one can be cut, else
/// the revision's first page.
async fn newer(
    state: &AppState,
    since: Option<u64>,
    snapshot: Arc<Revision>,
    outcome: &'static str,
) -> Result<Response, Error> {
    if let Some(since) = since {
        if let Some(page) = state.store.delta(since, Arc::clone(&snapshot)).await? {
            state.metrics.snapshot_served("delta");
            return Ok(signed(state, snapshot.revision, &page));
        }
    }
    state.metrics.snapshot_served(outcome);
    first_page(state, &snapshot).await
}

/// The revision named by `If-None-Match`: `"7"`, `W/"7"` or a bare `7`.
fn held_revision(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(IF_NONE_MATCH)?.to_str().ok()?.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    value.trim_matches('"').parse().ok()
}

fn etag(revision: u64) -> HeaderValue {
    // Digits and quotes only: always a valid header value.
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The first page of `snapshot`'s revision; the current one's if that is no longer kept.
async fn first_page(state: &AppState, snapshot: &Revision) -> Result<Response, Error> {
    let mut revision = snapshot.revision;
    // A write may commit (and prune) between the two; the third answer is always current.
    for _ in 0..3 {
        match state.store.page(revision, 0).await? {
            PageAnswer::Page(page) => return Ok(signed(state, revision, &page)),
            PageAnswer::Gone | PageAnswer::NoSuchPage => {
                revision = state.store.snapshot().revision;
            }
        }
    }
    Err(Error::Internal(format!(
        "revision {revision} has no first page"
    )))
}

/// The page, signed now: a fresh issue time on every answer, so that a gateway can refuse a
/// recorded one replayed later (`max_snapshot_age_seconds`).
fn signed(state: &AppState, revision: u64, page: &SignedPage) -> Response {
    let mut response = (StatusCode::OK, page.body.clone()).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ETAG, etag(revision));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(signature) = HeaderValue::from_str(&state.store.sign(page)) {
        headers.insert(SIGNATURE_HEADER, signature);
    }
    response
}

fn not_modified(revision: u64) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    response.headers_mut().insert(ETAG, etag(revision));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        for (value, expected) in [
            ("\"7\"", Some(7)),
            ("W/\"7\"", Some(7)),
            ("7", Some(7)),
            ("\"x\"", None),
            ("*", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(IF_NONE_MATCH, HeaderValue::from_static(value));
            assert_eq!(held_revision(&headers), expected, "{value}");
        }
    }
}

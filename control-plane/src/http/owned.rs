//! What plans, APIs and clients share: create, list, get and rename (`PUT` of the resource as
//! `GET` returns it) by id within an org. The
//! resource modules keep their own annotated handlers and call these.

use axum::http::StatusCode;

use super::{AppState, Replacement};
use crate::domain::{check_name, check_slug};
use crate::error::Error;
use crate::model::{CreateOwned, Owned, Page, PageQuery};
use crate::store::orgs::{self, OwnedKind};
use crate::store::PageRequest;

pub async fn create(
    state: &AppState,
    kind: OwnedKind,
    org: String,
    body: CreateOwned,
) -> Result<(StatusCode, axum::Json<Owned>), Error> {
    check_slug("org", &org)?;
    check_slug("id", &body.id)?;
    let name = body.name.unwrap_or_else(|| body.id.clone());
    check_name("name", &name)?;
    let owned = state
        .store
        .write(move |tx| orgs::create_owned(tx, kind, &org, &body.id, &name))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(owned)))
}

pub async fn list(
    state: &AppState,
    kind: OwnedKind,
    org: String,
    query: PageQuery,
) -> Result<axum::Json<Page<Owned>>, Error> {
    check_slug("org", &org)?;
    let page = PageRequest::from_query(&query)?;
    let items = state
        .store
        .read(move |conn| orgs::list_owned(conn, kind, &org, &page))
        .await?;
    Ok(axum::Json(items))
}

pub async fn get(
    state: &AppState,
    kind: OwnedKind,
    (org, id): (String, String),
) -> Result<axum::Json<Owned>, Error> {
    check_slug("org", &org)?;
    check_slug(kind.word(), &id)?;
    let owned = state
        .store
        .read(move |conn| orgs::get_owned(conn, kind, &org, &id))
        .await?;
    Ok(axum::Json(owned))
}

pub async fn rename(
    state: &AppState,
    kind: OwnedKind,
    (org, id): (String, String),
    body: Replacement<Owned>,
) -> Result<axum::Json<Owned>, Error> {
    check_slug("org", &org)?;
    check_slug(kind.word(), &id)?;
    check_name("name", &body.body.name)?;
    let owned = state
        .store
        .write(move |tx| {
            body.check_read_only(&orgs::get_owned(tx, kind, &org, &id)?)?;
            orgs::rename_owned(tx, kind, &org, &id, &body.body.name)
        })
        .await?;
    Ok(axum::Json(owned))
}

/// Checks the `{org}/{thing}/{version}` path segments of a version resource.
pub fn check_version_path(
    kind: OwnedKind,
    org: &str,
    id: &str,
    version: &str,
) -> Result<(), Error> {
    check_slug("org", org)?;
    check_slug(kind.word(), id)?;
    crate::domain::check_version("version", version)
}

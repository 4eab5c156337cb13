//! Plan versions: drafts are edited freely; `lock` makes one immutable forever, and from then on
//! it is in every snapshot and may be offered by APIs and used by contracts.

use super::db::{params, Db};
use tollgate_core::snapshot::RateLimit;

use super::orgs::{get_owned, OwnedKind};
use super::{query_opt, required, PageRequest, Tx};
use crate::domain::{period_from_str, VersionRef};
use crate::error::Error;
use crate::model::{Page, PlanVersion, PlanVersionStatus};

/// `limits` must already be normalized (`domain::normalize_limits`).
pub fn create_version(
    tx: &mut Tx<'_>,
    org: &str,
    plan: &str,
    version: &str,
    limits: &[RateLimit],
) -> Result<PlanVersion, Error> {
    get_owned(tx, OwnedKind::Plan, org, plan)?;
    if find_version(tx, org, plan, version)?.is_some() {
        return Err(Error::AlreadyExists(format!(
            "plan version {org}/{plan}/{version}"
        )));
    }
    tx.execute(
        "INSERT INTO plan_versions (org, plan, version, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![org, plan, version, tx.now],
    )?;
    write_limits(tx, org, plan, version, limits)?;
    get_version(tx, org, plan, version)
}

pub fn update_version(
    tx: &mut Tx<'_>,
    org: &str,
    plan: &str,
    version: &str,
    limits: &[RateLimit],
) -> Result<PlanVersion, Error> {
    check_draft(&get_version(tx, org, plan, version)?)?;
    tx.execute(
        "DELETE FROM plan_limits WHERE org = ?1 AND plan = ?2 AND version = ?3",
        params![org, plan, version],
    )?;
    write_limits(tx, org, plan, version, limits)?;
    get_version(tx, org, plan, version)
}

pub fn lock_version(
    tx: &mut Tx<'_>,
    org: &str,
    plan: &str,
    version: &str,
) -> Result<PlanVersion, Error> {
    let current = get_version(tx, org, plan, version)?;
    check_draft(&current)?;
    // Gateways refuse a plan version without limits; "unlimited" is not a plan.
    if current.limits.is_empty() {
        return Err(Error::unprocessable(
            "plan-version-without-limits",
            format!("plan version {org}/{plan}/{version} has no limits; add at least one before locking"),
        ));
    }
    tx.execute(
        "UPDATE plan_versions SET locked_at = ?4 WHERE org = ?1 AND plan = ?2 AND version = ?3",
        params![org, plan, version, tx.now],
    )?;
    // Locked plan versions are part of the snapshot.
    tx.gateway_changed();
    get_version(tx, org, plan, version)
}

/// Only a draft may change (409 plan-version-locked).
pub fn check_draft(current: &PlanVersion) -> Result<(), Error> {
    if current.status == PlanVersionStatus::Locked {
        let PlanVersion {
            org, plan, version, ..
        } = current;
        return Err(Error::conflict(
            "plan-version-locked",
            format!(
                "plan version {org}/{plan}/{version} is locked and can never change; create a new version"
            ),
        ));
    }
    Ok(())
}

fn write_limits(
    tx: &Tx<'_>,
    org: &str,
    plan: &str,
    version: &str,
    limits: &[RateLimit],
) -> Result<(), Error> {
    let mut insert = tx.prepare(
        "INSERT INTO plan_limits (org, plan, version, per, requests) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for limit in limits {
        let requests = i64::try_from(limit.requests)
            .map_err(|_| Error::unprocessable("invalid-limit", "requests is too large"))?;
        insert.execute(params![org, plan, version, limit.per.as_str(), requests])?;
    }
    Ok(())
}

pub fn find_version(
    conn: &Db<'_>,
    org: &str,
    plan: &str,
    version: &str,
) -> Result<Option<PlanVersion>, Error> {
    let row = query_opt(
        conn,
        "SELECT created_at, locked_at FROM plan_versions
         WHERE org = ?1 AND plan = ?2 AND version = ?3",
        [org, plan, version],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?)),
    )?;
    let Some((created_at, locked_at)) = row else {
        return Ok(None);
    };
    Ok(Some(PlanVersion {
        org: org.to_owned(),
        plan: plan.to_owned(),
        version: version.to_owned(),
        status: if locked_at.is_some() {
            PlanVersionStatus::Locked
        } else {
            PlanVersionStatus::Draft
        },
        limits: read_limits(conn, org, plan, version)?,
        created_at,
        locked_at,
    }))
}

pub fn get_version(
    conn: &Db<'_>,
    org: &str,
    plan: &str,
    version: &str,
) -> Result<PlanVersion, Error> {
    required(find_version(conn, org, plan, version)?, || {
        format!("plan version {org}/{plan}/{version}")
    })
}

/// A plan version that must be locked to be used (offered by an API, named by a contract).
pub fn get_locked(conn: &Db<'_>, plan: &VersionRef) -> Result<PlanVersion, Error> {
    let found = get_version(conn, &plan.org, &plan.name, &plan.version)?;
    if found.status != PlanVersionStatus::Locked {
        return Err(Error::conflict(
            "plan-version-not-locked",
            format!("plan version {plan} is a draft; only locked plan versions can be offered"),
        ));
    }
    Ok(found)
}

pub fn list_versions(
    conn: &Db<'_>,
    org: &str,
    plan: &str,
    page: &PageRequest,
) -> Result<Page<PlanVersion>, Error> {
    get_owned(conn, OwnedKind::Plan, org, plan)?;
    let mut stmt = conn.prepare(
        "SELECT seq, version FROM plan_versions
         WHERE org = ?1 AND plan = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
    )?;
    let keys = stmt
        .query_map(
            params![org, plan, page.after_seq()?, page.sql_limit()],
            |r| Ok((r.get::<_, i64>(0)?.to_string(), r.get::<_, String>(1)?)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::with_capacity(keys.len());
    for (seq, version) in keys {
        rows.push((seq, get_version(conn, org, plan, &version)?));
    }
    Ok(page.page(rows))
}

/// Limits sorted by period (the primary key order is not period order).
pub fn read_limits(
    conn: &Db<'_>,
    org: &str,
    plan: &str,
    version: &str,
) -> Result<Vec<RateLimit>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT per, requests FROM plan_limits WHERE org = ?1 AND plan = ?2 AND version = ?3",
    )?;
    let mut limits = stmt
        .query_map([org, plan, version], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .map(|row| {
            let (per, requests) = row?;
            let per = period_from_str(&per)
                .ok_or_else(|| Error::Internal(format!("unknown period {per:?} in storage")))?;
            Ok(RateLimit {
                requests: requests as u64,
                per,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    limits.sort_by_key(|l| l.per);
    Ok(limits)
}

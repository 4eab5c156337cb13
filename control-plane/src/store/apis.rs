//! API versions: `draft` → `published` → `retired`. Drafts are edited freely and never reach
//! gateways; publishing puts a version in the snapshot and claims its routes; retiring keeps it
//! there (gateways answer 410 on its routes) until a published version claims the same route.

use super::db::{self, params, Db, Row};
use tollgate_core::index::{covering_prefixes, public_shadows_private, RouteClaim};
use tollgate_core::snapshot::{AuthMode, Routing};

use super::orgs::{get_owned, OwnedKind};
use super::plans::get_locked;
use super::{query_opt, required, PageRequest, Tx};
use crate::domain::{normalize_routing, VersionRef};
use crate::error::Error;
use crate::model::{ApiVersion, ApiVersionStatus, CreateApiVersion, OfferedPlan, Page};

/// A validated, canonical API version configuration: equal specs mean equal behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersionSpec {
    pub public: bool,
    pub routing: Routing,
    /// Sorted, at most one version per plan, all locked.
    pub plans: Vec<OfferedPlan>,
    pub forward_api_key: bool,
    pub auth: AuthMode,
}

impl ApiVersionSpec {
    /// Validates and canonicalizes the settings every path takes (`POST`, `PUT`, `apply`) in the
    /// one shape of a create body; needs the connection to check the plans are locked.
    pub fn resolve(
        conn: &Db<'_>,
        api_org: &str,
        settings: &CreateApiVersion,
    ) -> Result<Self, Error> {
        let routing = normalize_routing("routing", &settings.routing)?;
        let mut offered = Vec::with_capacity(settings.plans.len());
        for (i, choice) in settings.plans.iter().enumerate() {
            let field = format!("plans[{i}]");
            let org = choice.org.as_deref().unwrap_or(api_org);
            crate::domain::check_slug(&format!("{field}.org"), org)?;
            crate::domain::check_slug(&format!("{field}.plan"), &choice.plan)?;
            crate::domain::check_version(&format!("{field}.version"), &choice.version)?;
            let plan = VersionRef::new(org, &choice.plan, &choice.version);
            get_locked(conn, &plan)?;
            offered.push(OfferedPlan {
                org: plan.org,
                plan: plan.name,
                version: plan.version,
            });
        }
        offered.sort();
        if let Some(pair) = offered
            .windows(2)
            .find(|w| w[0].org == w[1].org && w[0].plan == w[1].plan)
        {
            return Err(Error::unprocessable(
                "plan-offered-twice",
                format!(
                    "plans: plan {}/{} is listed twice; an API version offers one version of each plan",
                    pair[0].org, pair[0].plan
                ),
            ));
        }
        if !settings.public && offered.is_empty() {
            return Err(Error::unprocessable(
                "private-api-without-plans",
                "plans: a private API version must be offered through at least one locked plan version",
            ));
        }
        Ok(ApiVersionSpec {
            public: settings.public,
            routing,
            plans: offered,
            forward_api_key: settings.forward_api_key,
            auth: settings.auth,
        })
    }

    pub fn of(version: &ApiVersion) -> Self {
        ApiVersionSpec {
            public: version.public,
            routing: version.routing.clone(),
            plans: version.plans.clone(),
            forward_api_key: version.forward_api_key,
            auth: version.auth,
        }
    }
}

pub fn create_version(
    tx: &mut Tx<'_>,
    org: &str,
    api: &str,
    version: &str,
    spec: &ApiVersionSpec,
) -> Result<ApiVersion, Error> {
    get_owned(tx, OwnedKind::Api, org, api)?;
    if find_version(tx, org, api, version)?.is_some() {
        return Err(Error::AlreadyExists(format!(
            "api version {org}/{api}/{version}"
        )));
    }
    tx.execute(
        "INSERT INTO api_versions
             (org, api, version, status, public, path_prefix, hosts, forward_api_key, created_at,
              auth)
         VALUES (?1, ?2, ?3, 'draft', ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            org,
            api,
            version,
            spec.public,
            spec.routing.path_prefix,
            hosts_json(&spec.routing)?,
            spec.forward_api_key,
            tx.now,
            auth_name(spec.auth)
        ],
    )?;
    write_plans(tx, org, api, version, &spec.plans)?;
    get_version(tx, org, api, version)
}

pub fn update_version(
    tx: &mut Tx<'_>,
    org: &str,
    api: &str,
    version: &str,
    spec: &ApiVersionSpec,
) -> Result<ApiVersion, Error> {
    check_editable(&get_version(tx, org, api, version)?)?;
    tx.execute(
        "UPDATE api_versions SET public = ?4, path_prefix = ?5, hosts = ?6, forward_api_key = ?7,
                auth = ?8
         WHERE org = ?1 AND api = ?2 AND version = ?3",
        params![
            org,
            api,
            version,
            spec.public,
            spec.routing.path_prefix,
            hosts_json(&spec.routing)?,
            spec.forward_api_key,
            auth_name(spec.auth)
        ],
    )?;
    tx.execute(
        "DELETE FROM api_version_plans WHERE org = ?1 AND api = ?2 AND version = ?3",
        params![org, api, version],
    )?;
    write_plans(tx, org, api, version, &spec.plans)?;
    get_version(tx, org, api, version)
}

pub fn publish_version(
    tx: &mut Tx<'_>,
    org: &str,
    api: &str,
    version: &str,
) -> Result<ApiVersion, Error> {
    let current = get_version(tx, org, api, version)?;
    if current.status != ApiVersionStatus::Draft {
        return Err(not_draft(&current, "published"));
    }
    if let Some(holder) = routing_holder(tx, &current)? {
        let hosts = if current.routing.hosts.is_empty() {
            "any host".to_owned()
        } else {
            current.routing.hosts.join(", ")
        };
        return Err(Error::conflict(
            "routing-collision",
            format!(
                "published api version {holder} already routes {} on {hosts}",
                current.routing.path_prefix
            ),
        ));
    }
    if let Some(conflict) = shadowing(tx, &current)? {
        return Err(conflict);
    }
    tx.execute(
        "UPDATE api_versions SET status = 'published', published_at = ?4
         WHERE org = ?1 AND api = ?2 AND version = ?3",
        params![org, api, version, tx.now],
    )?;
    tx.gateway_changed();
    get_version(tx, org, api, version)
}

pub fn retire_version(
    tx: &mut Tx<'_>,
    org: &str,
    api: &str,
    version: &str,
) -> Result<ApiVersion, Error> {
    let current = get_version(tx, org, api, version)?;
    if current.status != ApiVersionStatus::Published {
        return Err(not_published(&current, "retired"));
    }
    tx.execute(
        "UPDATE api_versions SET status = 'retired', retired_at = ?4
         WHERE org = ?1 AND api = ?2 AND version = ?3",
        params![org, api, version, tx.now],
    )?;
    tx.gateway_changed();
    get_version(tx, org, api, version)
}

/// The published version, if any, that already claims one of `candidate`'s routes. Gateways
/// route by (host, prefix) slot, with "any host" a slot of its own, and refuse a snapshot in
/// which two published versions share a slot; a retired version yields its slot to a
/// published one (the same rule as `core`'s index).
fn routing_holder(conn: &Db<'_>, candidate: &ApiVersion) -> Result<Option<String>, Error> {
    let mut stmt = conn.prepare(
        "SELECT org || '/' || api || '/' || version, hosts FROM api_versions
         WHERE status = 'published' AND path_prefix = ?1",
    )?;
    let rows = stmt
        .query_map([&candidate.routing.path_prefix], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (holder, hosts) in rows {
        let hosts: Vec<String> = serde_json::from_str(&hosts)
            .map_err(|e| Error::Internal(format!("stored hosts of {holder}: {e}")))?;
        let shares_slot = if candidate.routing.hosts.is_empty() {
            hosts.is_empty()
        } else {
            hosts.iter().any(|h| candidate.routing.hosts.contains(h))
        };
        if shares_slot {
            return Ok(Some(holder));
        }
    }
    Ok(None)
}

/// The conflict, if publishing `candidate` would let a public route answer a path of a
/// private one on some host (core's `public_shadows_private`, the rule gateways route by): a
/// public candidate against the private versions gateways route (published, or retired: they
/// answer 410) at its prefix or above it; a private candidate against the published public
/// versions at its prefix or below it. Both lookups are ranges of the routing index.
fn shadowing(conn: &Db<'_>, candidate: &ApiVersion) -> Result<Option<Error>, Error> {
    let prefix = candidate.routing.path_prefix.as_str();
    let mut rows = Vec::new();
    if candidate.public {
        let mut stmt = conn.prepare_cached(
            "SELECT org || '/' || api || '/' || version, path_prefix, hosts FROM api_versions
             WHERE path_prefix = ?1 AND status IN ('published', 'retired') AND public = 0",
        )?;
        for above in covering_prefixes(prefix) {
            rows.extend(
                stmt.query_map([above], claim_row)?
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
    } else {
        // Prefixes below `/orders` start with `/orders/`: the range [`/orders/`, `/orders0`).
        let base = if prefix == "/" { "" } else { prefix };
        let mut stmt = conn.prepare_cached(
            "SELECT org || '/' || api || '/' || version, path_prefix, hosts FROM api_versions
             WHERE (path_prefix = ?1 OR (path_prefix >= ?2 AND path_prefix < ?3))
               AND status = 'published' AND public <> 0",
        )?;
        rows = stmt
            .query_map(
                params![prefix, format!("{base}/"), format!("{base}0")],
                claim_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
    }
    let name = format!("{}/{}/{}", candidate.org, candidate.api, candidate.version);
    let own = RouteClaim {
        path_prefix: prefix,
        hosts: &candidate.routing.hosts,
    };
    for (holder, holder_prefix, hosts) in rows {
        let hosts: Vec<String> = serde_json::from_str(&hosts)
            .map_err(|e| Error::Internal(format!("stored hosts of {holder}: {e}")))?;
        let theirs = RouteClaim {
            path_prefix: &holder_prefix,
            hosts: &hosts,
        };
        let (public, private) = if candidate.public {
            ((&name, own), (&holder, theirs))
        } else {
            ((&holder, theirs), (&name, own))
        };
        if let Some(shared) = public_shadows_private(public.1, private.1) {
            return Ok(Some(Error::conflict(
                "route-shadows-private",
                format!(
                    "public api version {} ({}) would answer requests on {shared} that private \
                     api version {} ({}) serves; a public route must not shadow a private one",
                    public.0,
                    describe(public.1),
                    private.0,
                    describe(private.1),
                ),
            )));
        }
    }
    Ok(None)
}

fn claim_row(r: &Row<'_>) -> db::Result<(String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn describe(claim: RouteClaim<'_>) -> String {
    if claim.hosts.is_empty() {
        format!("{} on any host", claim.path_prefix)
    } else {
        format!("{} on {}", claim.path_prefix, claim.hosts.join(", "))
    }
}

/// Only a draft may be edited (409 api-version-not-draft).
pub fn check_editable(current: &ApiVersion) -> Result<(), Error> {
    if current.status != ApiVersionStatus::Draft {
        return Err(not_draft(current, "edited"));
    }
    Ok(())
}

fn not_draft(current: &ApiVersion, verb: &str) -> Error {
    Error::conflict(
        "api-version-not-draft",
        format!(
            "api version {}/{}/{} is {}; only drafts can be {verb}",
            current.org,
            current.api,
            current.version,
            current.status.as_str()
        ),
    )
}

pub fn not_published(current: &ApiVersion, verb: &str) -> Error {
    Error::conflict(
        "api-version-not-published",
        format!(
            "api version {}/{}/{} is {}; only published versions can be {verb}",
            current.org,
            current.api,
            current.version,
            current.status.as_str()
        ),
    )
}

fn hosts_json(routing: &Routing) -> Result<String, Error> {
    serde_json::to_string(&routing.hosts).map_err(|e| Error::Internal(format!("hosts: {e}")))
}

fn write_plans(
    tx: &Tx<'_>,
    org: &str,
    api: &str,
    version: &str,
    plans: &[OfferedPlan],
) -> Result<(), Error> {
    let mut insert = tx.prepare(
        "INSERT INTO api_version_plans (org, api, version, plan_org, plan, plan_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for p in plans {
        insert.execute(params![org, api, version, p.org, p.plan, p.version])?;
    }
    Ok(())
}

pub fn find_version(
    conn: &Db<'_>,
    org: &str,
    api: &str,
    version: &str,
) -> Result<Option<ApiVersion>, Error> {
    let row = query_opt(
        conn,
        "SELECT status, public, path_prefix, hosts, forward_api_key, created_at, published_at,
                retired_at, auth
         FROM api_versions WHERE org = ?1 AND api = ?2 AND version = ?3",
        [org, api, version],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, String>(8)?,
            ))
        },
    )?;
    let Some((
        status,
        public,
        path_prefix,
        hosts,
        forward_api_key,
        created_at,
        published_at,
        retired_at,
        auth,
    )) = row
    else {
        return Ok(None);
    };
    let status = match status.as_str() {
        "draft" => ApiVersionStatus::Draft,
        "published" => ApiVersionStatus::Published,
        "retired" => ApiVersionStatus::Retired,
        other => return Err(Error::Internal(format!("unknown api status {other:?}"))),
    };
    let hosts: Vec<String> = serde_json::from_str(&hosts)
        .map_err(|e| Error::Internal(format!("stored hosts of {org}/{api}/{version}: {e}")))?;
    Ok(Some(ApiVersion {
        org: org.to_owned(),
        api: api.to_owned(),
        version: version.to_owned(),
        status,
        public,
        routing: Routing { path_prefix, hosts },
        plans: offered_plans(conn, org, api, version)?,
        forward_api_key,
        auth: parse_auth(&auth)?,
        created_at,
        published_at,
        retired_at,
    }))
}

pub fn get_version(
    conn: &Db<'_>,
    org: &str,
    api: &str,
    version: &str,
) -> Result<ApiVersion, Error> {
    required(find_version(conn, org, api, version)?, || {
        format!("api version {org}/{api}/{version}")
    })
}

fn offered_plans(
    conn: &Db<'_>,
    org: &str,
    api: &str,
    version: &str,
) -> Result<Vec<OfferedPlan>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT plan_org, plan, plan_version FROM api_version_plans
         WHERE org = ?1 AND api = ?2 AND version = ?3 ORDER BY plan_org, plan",
    )?;
    let plans = stmt
        .query_map([org, api, version], |r| {
            Ok(OfferedPlan {
                org: r.get(0)?,
                plan: r.get(1)?,
                version: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(plans)
}

pub fn list_versions(
    conn: &Db<'_>,
    org: &str,
    api: &str,
    page: &PageRequest,
) -> Result<Page<ApiVersion>, Error> {
    get_owned(conn, OwnedKind::Api, org, api)?;
    let mut stmt = conn.prepare(
        "SELECT seq, version FROM api_versions
         WHERE org = ?1 AND api = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
    )?;
    let keys = stmt
        .query_map(
            params![org, api, page.after_seq()?, page.sql_limit()],
            |r| Ok((r.get::<_, i64>(0)?.to_string(), r.get::<_, String>(1)?)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::with_capacity(keys.len());
    for (seq, version) in keys {
        rows.push((seq, get_version(conn, org, api, &version)?));
    }
    Ok(page.page(rows))
}

/// The stored spelling of an auth mode (core's serde names).
pub fn auth_name(auth: AuthMode) -> &'static str {
    match auth {
        AuthMode::ApiKey => "api_key",
        AuthMode::Jwt => "jwt",
        AuthMode::ApiKeyOrJwt => "api_key_or_jwt",
    }
}

pub fn parse_auth(stored: &str) -> Result<AuthMode, Error> {
    match stored {
        "api_key" => Ok(AuthMode::ApiKey),
        "jwt" => Ok(AuthMode::Jwt),
        "api_key_or_jwt" => Ok(AuthMode::ApiKeyOrJwt),
        other => Err(Error::Internal(format!("unknown auth mode {other:?}"))),
    }
}

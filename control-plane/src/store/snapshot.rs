//! Renders the catalogue into `core`'s snapshot schema: what a gateway needs and nothing more.
//! Drafts never appear; retired API versions do (gateways answer 410). Every list is sorted,
//! so equal catalogues render byte-identical bodies.

use std::collections::BTreeMap;

use rusqlite::Connection;
use tollgate_core::snapshot::{
    self, ApiKeyHash, ApiStatus, ClientVersion, Contract, Routing, Snapshot,
};

use super::plans::read_limits;
use crate::error::Error;

pub fn render(conn: &Connection, revision: u64) -> Result<Snapshot, Error> {
    let mut snapshot = Snapshot::empty(revision);

    let mut stmt = conn.prepare(
        "SELECT org, plan, version FROM plan_versions WHERE locked_at IS NOT NULL
         ORDER BY org, plan, version",
    )?;
    let locked = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (org, plan, version) in locked {
        snapshot.plans.push(snapshot::PlanVersion {
            limits: read_limits(conn, &org, &plan, &version)?,
            id: format!("{org}/{plan}/{version}"),
        });
    }

    let mut stmt = conn.prepare(
        "SELECT org || '/' || api || '/' || version, status, public, path_prefix, hosts,
                forward_api_key
         FROM api_versions WHERE status IN ('published', 'retired')
         ORDER BY org, api, version",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, bool>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (id, status, public, path_prefix, hosts, forward_api_key) in rows {
        let hosts: Vec<String> = serde_json::from_str(&hosts)
            .map_err(|e| Error::Internal(format!("stored hosts of {id}: {e}")))?;
        snapshot.apis.push(snapshot::ApiVersion {
            id,
            status: if status == "retired" {
                ApiStatus::Retired
            } else {
                ApiStatus::Published
            },
            public,
            routing: Routing { path_prefix, hosts },
            forward_api_key,
        });
    }

    // Every client version, even one without contracts: gateways tell an unknown key (401)
    // from a known key without a contract (403).
    let mut clients: BTreeMap<String, Vec<ApiKeyHash>> = BTreeMap::new();
    let mut stmt =
        conn.prepare("SELECT org || '/' || client || '/' || version FROM client_versions")?;
    for id in stmt.query_map([], |r| r.get::<_, String>(0))? {
        clients.insert(id?, Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT org || '/' || client || '/' || version, sha256, expires_at FROM api_keys
         ORDER BY id",
    )?;
    let keys = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (client, sha256, expires_at) in keys {
        clients.entry(client).or_default().push(ApiKeyHash {
            sha256,
            expires_at: expires_at.map(|t| t.max(0) as u64),
        });
    }
    snapshot.clients = clients
        .into_iter()
        .map(|(id, keys)| ClientVersion { id, keys })
        .collect();

    let mut stmt = conn.prepare(
        "SELECT id, client_org || '/' || client || '/' || client_version,
                api_org || '/' || api || '/' || api_version,
                plan_org || '/' || plan || '/' || plan_version
         FROM contracts ORDER BY id",
    )?;
    snapshot.contracts = stmt
        .query_map([], |r| {
            Ok(Contract {
                id: r.get::<_, i64>(0)? as u64,
                client: r.get(1)?,
                api: r.get(2)?,
                plan: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(snapshot)
}

//! The snapshot compiled for per-request lookups: routing, keys, contracts and plans.
//!
//! Compiling also validates: a snapshot that references what it does not contain, or whose
//! published routings collide, is refused with an error naming the field, and the gateway keeps
//! what it had.

use std::collections::HashMap;
use std::fmt;

use crate::keys::{parse_digest_hex, KeyDigest};
use crate::limits::counter_key;
use crate::snapshot::{ApiStatus, Period, RateLimit, Snapshot, SCHEMA_VERSION};

/// Why a snapshot cannot be enforced, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for IndexError {}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> IndexError {
    IndexError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiRef(u32);

#[derive(Debug)]
pub struct ApiRoute {
    pub id: String,
    pub status: ApiStatus,
    pub public: bool,
    pub forward_api_key: bool,
    /// Normalised: no trailing slash, except the root prefix `/`.
    prefix: String,
}

#[derive(Debug)]
pub struct PlanEntry {
    pub id: String,
    pub limits: Vec<RateLimit>,
}

#[derive(Debug)]
pub struct ContractEntry {
    pub id: u64,
    /// The contract's key in the counter store.
    pub counter_key: String,
    pub client: String,
    plan: u32,
}

#[derive(Debug, Clone, Copy)]
struct KeyEntry {
    client: u32,
    expires_at: Option<u64>,
}

/// What a presented API key resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLookup {
    Unknown,
    Expired,
    Client(u32),
}

#[derive(Debug)]
pub struct CatalogueIndex {
    revision: u64,
    apis: Vec<ApiRoute>,
    plans: Vec<PlanEntry>,
    /// Routes of APIs that name hosts, per lowercase host, longest prefix first.
    by_host: HashMap<String, Vec<u32>>,
    /// Routes of APIs for any host, longest prefix first.
    any_host: Vec<u32>,
    keys: HashMap<KeyDigest, KeyEntry>,
    contracts: HashMap<(u32, u32), ContractEntry>,
}

impl CatalogueIndex {
    pub fn build(snapshot: &Snapshot) -> Result<Self, IndexError> {
        if snapshot.schema != SCHEMA_VERSION {
            return Err(invalid(
                "schema",
                format!(
                    "schema version {} is not supported (this gateway reads {SCHEMA_VERSION})",
                    snapshot.schema
                ),
            ));
        }

        let mut plans = Vec::with_capacity(snapshot.plans.len());
        let mut plan_ids: HashMap<&str, u32> = HashMap::new();
        for (i, plan) in snapshot.plans.iter().enumerate() {
            let field = format!("plans[{i}]");
            check_ref(&plan.id, &format!("{field}.id"))?;
            if plan.limits.is_empty() {
                return Err(invalid(
                    format!("{field}.limits"),
                    "a plan version needs at least one limit",
                ));
            }
            let mut seen: Vec<Period> = Vec::new();
            for (j, l) in plan.limits.iter().enumerate() {
                if l.requests == 0 {
                    return Err(invalid(
                        format!("{field}.limits[{j}].requests"),
                        "must be at least 1",
                    ));
                }
                if seen.contains(&l.per) {
                    return Err(invalid(
                        format!("{field}.limits[{j}].per"),
                        format!(
                            "a second limit per {} (at most one per period)",
                            l.per.as_str()
                        ),
                    ));
                }
                seen.push(l.per);
            }
            if plan_ids.insert(&plan.id, index_u32(i)).is_some() {
                return Err(invalid(
                    format!("{field}.id"),
                    format!("duplicate plan version {}", plan.id),
                ));
            }
            plans.push(PlanEntry {
                id: plan.id.clone(),
                limits: plan.limits.clone(),
            });
        }

        let mut apis = Vec::with_capacity(snapshot.apis.len());
        let mut api_ids: HashMap<&str, u32> = HashMap::new();
        // (host or "" for any, prefix) → api index; published beats retired.
        let mut slots: HashMap<(String, String), u32> = HashMap::new();
        for (i, api) in snapshot.apis.iter().enumerate() {
            let field = format!("apis[{i}]");
            check_ref(&api.id, &format!("{field}.id"))?;
            let prefix = normalise_prefix(&api.routing.path_prefix).ok_or_else(|| {
                invalid(
                    format!("{field}.routing.path_prefix"),
                    "must start with '/' and contain no '?', '#', '//', '.' or '..' segments",
                )
            })?;
            if api_ids.insert(&api.id, index_u32(i)).is_some() {
                return Err(invalid(
                    format!("{field}.id"),
                    format!("duplicate API version {}", api.id),
                ));
            }
            let hosts: Vec<String> = if api.routing.hosts.is_empty() {
                vec![String::new()]
            } else {
                api.routing
                    .hosts
                    .iter()
                    .map(|h| normalise_host(h))
                    .collect()
            };
            for (j, host) in hosts.iter().enumerate() {
                if !api.routing.hosts.is_empty() && host.is_empty() {
                    return Err(invalid(
                        format!("{field}.routing.hosts[{j}]"),
                        "empty host name",
                    ));
                }
                let slot = (host.clone(), prefix.clone());
                match slots.get(&slot) {
                    Some(&other) => {
                        let other_api: &ApiRoute = &apis[other as usize];
                        match (other_api.status, api.status) {
                            (ApiStatus::Published, ApiStatus::Published) => {
                                return Err(invalid(
                                    format!("{field}.routing"),
                                    format!("collides with published {} (same host and path prefix {prefix})", other_api.id),
                                ))
                            }
                            (ApiStatus::Published, ApiStatus::Retired) => {}
                            _ => {
                                slots.insert(slot, index_u32(i));
                            }
                        }
                    }
                    None => {
                        slots.insert(slot, index_u32(i));
                    }
                }
            }
            apis.push(ApiRoute {
                id: api.id.clone(),
                status: api.status,
                public: api.public,
                forward_api_key: api.forward_api_key,
                prefix,
            });
        }
        let mut by_host: HashMap<String, Vec<u32>> = HashMap::new();
        let mut any_host = Vec::new();
        for ((host, _), api) in slots {
            if host.is_empty() {
                any_host.push(api);
            } else {
                by_host.entry(host).or_default().push(api);
            }
        }
        let longest_first = |list: &mut Vec<u32>| {
            list.sort_by(|a, b| {
                let (pa, pb) = (&apis[*a as usize].prefix, &apis[*b as usize].prefix);
                pb.len().cmp(&pa.len()).then_with(|| pa.cmp(pb))
            })
        };
        longest_first(&mut any_host);
        for list in by_host.values_mut() {
            longest_first(list);
        }

        let mut keys = HashMap::new();
        let mut client_ids: HashMap<&str, u32> = HashMap::new();
        for (i, client) in snapshot.clients.iter().enumerate() {
            let field = format!("clients[{i}]");
            check_ref(&client.id, &format!("{field}.id"))?;
            if client_ids.insert(&client.id, index_u32(i)).is_some() {
                return Err(invalid(
                    format!("{field}.id"),
                    format!("duplicate client version {}", client.id),
                ));
            }
            for (j, key) in client.keys.iter().enumerate() {
                let digest = parse_digest_hex(&key.sha256).ok_or_else(|| {
                    invalid(
                        format!("{field}.keys[{j}].sha256"),
                        "must be 64 hex digits (a SHA-256)",
                    )
                })?;
                let entry = KeyEntry {
                    client: index_u32(i),
                    expires_at: key.expires_at,
                };
                if keys.insert(digest, entry).is_some() {
                    return Err(invalid(
                        format!("{field}.keys[{j}].sha256"),
                        "the same key hash appears twice",
                    ));
                }
            }
        }

        let mut contracts = HashMap::new();
        let mut contract_ids: HashMap<u64, usize> = HashMap::new();
        for (i, c) in snapshot.contracts.iter().enumerate() {
            let field = format!("contracts[{i}]");
            let client = *client_ids.get(c.client.as_str()).ok_or_else(|| {
                invalid(
                    format!("{field}.client"),
                    format!("unknown client version {}", c.client),
                )
            })?;
            let api = *api_ids.get(c.api.as_str()).ok_or_else(|| {
                invalid(
                    format!("{field}.api"),
                    format!("unknown API version {}", c.api),
                )
            })?;
            let plan = *plan_ids.get(c.plan.as_str()).ok_or_else(|| {
                invalid(
                    format!("{field}.plan"),
                    format!("unknown plan version {}", c.plan),
                )
            })?;
            if apis[api as usize].public {
                return Err(invalid(
                    format!("{field}.api"),
                    format!("{} is public; contracts are for private APIs", c.api),
                ));
            }
            if contract_ids.insert(c.id, i).is_some() {
                return Err(invalid(
                    format!("{field}.id"),
                    format!("duplicate contract id {}", c.id),
                ));
            }
            let entry = ContractEntry {
                id: c.id,
                counter_key: counter_key(c.id),
                client: c.client.clone(),
                plan,
            };
            if contracts.insert((client, api), entry).is_some() {
                return Err(invalid(
                    field,
                    format!("a second contract between {} and {}", c.client, c.api),
                ));
            }
        }

        Ok(CatalogueIndex {
            revision: snapshot.revision,
            apis,
            plans,
            by_host,
            any_host,
            keys,
            contracts,
        })
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The API version serving `path` (no query string) on `authority`: APIs naming the host
    /// first, then APIs for any host; within each, the longest prefix on a segment boundary.
    pub fn route(&self, authority: &str, path: &str) -> Option<ApiRef> {
        let by_host = if self.by_host.is_empty() {
            None
        } else {
            self.by_host.get(&normalise_host(authority))
        };
        by_host
            .and_then(|list| self.longest_prefix(list, path))
            .or_else(|| self.longest_prefix(&self.any_host, path))
    }

    fn longest_prefix(&self, list: &[u32], path: &str) -> Option<ApiRef> {
        list.iter()
            .find(|&&i| prefix_matches(&self.apis[i as usize].prefix, path))
            .map(|&i| ApiRef(i))
    }

    pub fn api(&self, api: ApiRef) -> &ApiRoute {
        &self.apis[api.0 as usize]
    }

    pub fn lookup_key(&self, digest: &KeyDigest, now_ms: u64) -> KeyLookup {
        match self.keys.get(digest) {
            None => KeyLookup::Unknown,
            Some(k) if k.expires_at.is_some_and(|at| now_ms / 1000 >= at) => KeyLookup::Expired,
            Some(k) => KeyLookup::Client(k.client),
        }
    }

    pub fn contract(&self, client: u32, api: ApiRef) -> Option<&ContractEntry> {
        self.contracts.get(&(client, api.0))
    }

    pub fn plan(&self, contract: &ContractEntry) -> &PlanEntry {
        &self.plans[contract.plan as usize]
    }

    /// Every contract's counter key, e.g. to create them ahead of traffic.
    pub fn counter_keys(&self) -> impl Iterator<Item = &str> {
        self.contracts.values().map(|c| c.counter_key.as_str())
    }
}

fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// `org/name/version`: three non-empty parts, no spaces.
fn check_ref(id: &str, field: &str) -> Result<(), IndexError> {
    let parts: Vec<&str> = id.split('/').collect();
    let ok = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_graphic()));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("'{id}' is not of the form org/name/version"),
        ))
    }
}

fn normalise_prefix(prefix: &str) -> Option<String> {
    if !prefix.starts_with('/') || prefix.contains(['?', '#']) || !crate::path::is_normal(prefix) {
        return None;
    }
    let trimmed = prefix.trim_end_matches('/');
    Some(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// Lowercase, without a port (`Example.com:8080` → `example.com`; IPv6 literals keep brackets).
fn normalise_host(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    host.to_ascii_lowercase()
}

/// `/orders` matches `/orders` and `/orders/1`, never `/orders-admin`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests;

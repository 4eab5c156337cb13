//! The snapshot compiled for the gateway: the routing table every worker keeps, and the key
//! directory buckets published into shared data (see [`crate::keydir`]).
//!
//! Compiling also validates: a snapshot that references what it does not contain, or whose
//! published routings collide, is refused with an error naming the field, and the gateway keeps
//! what it had.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::keydir::{bucket_of, encode_buckets, Grant, KeyRecord};
use crate::keys::parse_digest_hex;
use crate::snapshot::{ApiStatus, ApiVersion, AuthMode, Issuer, Period, Snapshot, SCHEMA_VERSION};
use crate::token::{subject_digest, TrustedIssuers};

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
    pub auth: AuthMode,
    /// Normalised: no trailing slash, except the root prefix `/`.
    prefix: String,
}

/// Which API version serves a request: all a worker keeps of the catalogue.
#[derive(Debug)]
pub struct RouteIndex {
    revision: u64,
    apis: Vec<ApiRoute>,
    /// Routes of APIs that name hosts, per lowercase host, longest prefix first.
    by_host: HashMap<String, Vec<u32>>,
    /// Routes of APIs for any host, longest prefix first.
    any_host: Vec<u32>,
    /// The issuers whose bearer tokens are accepted.
    issuers: TrustedIssuers,
}

/// Which key buckets a snapshot defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// A complete catalogue: every bucket not written is empty.
    All,
    /// Only these buckets (a page of a live-mode revision); the others are unchanged.
    Buckets(Vec<u16>),
}

/// The key-directory buckets a snapshot defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    /// Encoded non-empty buckets.
    pub buckets: BTreeMap<u16, Vec<u8>>,
    pub coverage: Coverage,
}

/// A validated snapshot, ready to enforce.
#[derive(Debug)]
pub struct Compiled {
    pub routes: RouteIndex,
    pub directory: Directory,
}

impl Compiled {
    pub fn revision(&self) -> u64 {
        self.routes.revision
    }
}

pub fn compile(snapshot: &Snapshot) -> Result<Compiled, IndexError> {
    if snapshot.schema != SCHEMA_VERSION {
        return Err(invalid(
            "schema",
            format!(
                "schema version {} is not supported (this gateway reads {SCHEMA_VERSION})",
                snapshot.schema
            ),
        ));
    }
    let routes = RouteIndex::build(snapshot.revision, &snapshot.apis, &snapshot.issuers)?;

    let mut plans: HashMap<&str, &[crate::snapshot::RateLimit]> = HashMap::new();
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
        if plans.insert(&plan.id, &plan.limits).is_some() {
            return Err(invalid(
                format!("{field}.id"),
                format!("duplicate plan version {}", plan.id),
            ));
        }
    }

    let coverage = match &snapshot.buckets {
        None => Coverage::All,
        Some(list) => Coverage::Buckets(list.clone()),
    };
    let covered: Option<HashSet<u16>> = snapshot
        .buckets
        .as_ref()
        .map(|b| b.iter().copied().collect());

    // Contracts per client version, checked against what the snapshot holds.
    let client_ids: HashSet<&str> = snapshot.clients.iter().map(|c| c.id.as_str()).collect();
    let mut grants: HashMap<&str, Vec<Grant>> = HashMap::new();
    let mut contract_ids: HashSet<u64> = HashSet::new();
    let mut pairs: HashSet<(&str, &str)> = HashSet::new();
    for (i, c) in snapshot.contracts.iter().enumerate() {
        let field = format!("contracts[{i}]");
        if !client_ids.contains(c.client.as_str()) {
            return Err(invalid(
                format!("{field}.client"),
                format!("unknown client version {}", c.client),
            ));
        }
        let api = routes.find_id(&c.api).ok_or_else(|| {
            invalid(
                format!("{field}.api"),
                format!("unknown API version {}", c.api),
            )
        })?;
        let limits = plans.get(c.plan.as_str()).ok_or_else(|| {
            invalid(
                format!("{field}.plan"),
                format!("unknown plan version {}", c.plan),
            )
        })?;
        if routes.api(api).public {
            return Err(invalid(
                format!("{field}.api"),
                format!("{} is public; contracts are for private APIs", c.api),
            ));
        }
        if !contract_ids.insert(c.id) {
            return Err(invalid(
                format!("{field}.id"),
                format!("duplicate contract id {}", c.id),
            ));
        }
        if !pairs.insert((&c.client, &c.api)) {
            return Err(invalid(
                field,
                format!("a second contract between {} and {}", c.client, c.api),
            ));
        }
        grants.entry(&c.client).or_default().push(Grant {
            contract: c.id,
            api: c.api.clone(),
            plan: c.plan.clone(),
            limits: limits.to_vec(),
        });
    }

    let mut records = Vec::new();
    let mut seen_clients: HashSet<&str> = HashSet::new();
    let mut seen_keys = HashSet::new();
    for (i, client) in snapshot.clients.iter().enumerate() {
        let field = format!("clients[{i}]");
        check_ref(&client.id, &format!("{field}.id"))?;
        if !seen_clients.insert(&client.id) {
            return Err(invalid(
                format!("{field}.id"),
                format!("duplicate client version {}", client.id),
            ));
        }
        let client_grants = grants.remove(client.id.as_str()).unwrap_or_default();
        // API keys and token subjects: both are records of this client in the directory.
        let mut identities = Vec::with_capacity(client.keys.len() + client.subjects.len());
        for (j, key) in client.keys.iter().enumerate() {
            let field = format!("{field}.keys[{j}].sha256");
            let digest = parse_digest_hex(&key.sha256)
                .ok_or_else(|| invalid(&field, "must be 64 hex digits (a SHA-256)"))?;
            identities.push((field, digest, key.expires_at));
        }
        for (j, subject) in client.subjects.iter().enumerate() {
            let field = format!("{field}.subjects[{j}]");
            if !snapshot.issuers.iter().any(|i| i.issuer == subject.issuer) {
                return Err(invalid(
                    format!("{field}.issuer"),
                    format!("{} is not among the snapshot's issuers", subject.issuer),
                ));
            }
            if subject.value.is_empty() {
                return Err(invalid(format!("{field}.value"), "must not be empty"));
            }
            identities.push((field, subject_digest(&subject.issuer, &subject.value), None));
        }
        for (field, digest, expires_at) in identities {
            if !seen_keys.insert(digest) {
                return Err(invalid(
                    field,
                    "the same key or token subject appears twice",
                ));
            }
            if let Some(covered) = &covered {
                if !covered.contains(&bucket_of(&digest)) {
                    return Err(invalid(
                        field,
                        format!(
                            "falls in bucket {}, which this snapshot page does not cover",
                            bucket_of(&digest)
                        ),
                    ));
                }
            }
            records.push(KeyRecord {
                digest,
                expires_at,
                client: client.id.clone(),
                grants: client_grants.clone(),
            });
        }
    }

    Ok(Compiled {
        routes,
        directory: Directory {
            buckets: encode_buckets(records),
            coverage,
        },
    })
}

impl RouteIndex {
    /// The routing table of `apis`, with the token issuers it trusts; published routings must
    /// not collide.
    pub fn build(
        revision: u64,
        apis_in: &[ApiVersion],
        issuers: &[Issuer],
    ) -> Result<Self, IndexError> {
        let issuers = TrustedIssuers::build(issuers)?;
        let mut apis: Vec<ApiRoute> = Vec::with_capacity(apis_in.len());
        let mut ids: HashSet<&str> = HashSet::new();
        // (host or "" for any, prefix) → api index; published beats retired.
        let mut slots: HashMap<(String, String), u32> = HashMap::new();
        for (i, api) in apis_in.iter().enumerate() {
            let field = format!("apis[{i}]");
            check_ref(&api.id, &format!("{field}.id"))?;
            let prefix = normalise_prefix(&api.routing.path_prefix).ok_or_else(|| {
                invalid(
                    format!("{field}.routing.path_prefix"),
                    "must start with '/' and contain no '?', '#', '//', '.' or '..' segments",
                )
            })?;
            if !ids.insert(&api.id) {
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
                let replace = match slots.get(&slot).and_then(|&o| apis.get(o as usize)) {
                    None => true,
                    Some(other) => match (other.status, api.status) {
                        (ApiStatus::Published, ApiStatus::Published) => {
                            return Err(invalid(
                                format!("{field}.routing"),
                                format!(
                                "collides with published {} (same host and path prefix {prefix})",
                                other.id
                            ),
                            ))
                        }
                        (ApiStatus::Published, ApiStatus::Retired) => false,
                        _ => true,
                    },
                };
                if replace {
                    slots.insert(slot, index_u32(i));
                }
            }
            apis.push(ApiRoute {
                id: api.id.clone(),
                status: api.status,
                public: api.public,
                forward_api_key: api.forward_api_key,
                auth: api.auth,
                prefix,
            });
            if api.auth.accepts_jwt() && issuers.is_empty() && !api.public {
                return Err(invalid(
                    format!("{field}.auth"),
                    "accepts bearer tokens, but the snapshot trusts no issuer",
                ));
            }
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
        let prefix_of = |i: &u32| apis.get(*i as usize).map_or("", |a| a.prefix.as_str());
        let longest_first = |list: &mut Vec<u32>| {
            list.sort_by(|a, b| {
                let (pa, pb) = (prefix_of(a), prefix_of(b));
                pb.len().cmp(&pa.len()).then_with(|| pa.cmp(pb))
            })
        };
        longest_first(&mut any_host);
        for list in by_host.values_mut() {
            longest_first(list);
        }
        Ok(RouteIndex {
            revision,
            apis,
            by_host,
            any_host,
            issuers,
        })
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn issuers(&self) -> &TrustedIssuers {
        &self.issuers
    }

    /// Whether any API version names hosts; if none does, routing ignores `:authority`.
    pub fn routes_by_host(&self) -> bool {
        !self.by_host.is_empty()
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
            .find(|&&i| {
                self.apis
                    .get(i as usize)
                    .is_some_and(|a| prefix_matches(&a.prefix, path))
            })
            .map(|&i| ApiRef(i))
    }

    fn find_id(&self, id: &str) -> Option<ApiRef> {
        self.apis
            .iter()
            .position(|a| a.id == id)
            .map(|i| ApiRef(index_u32(i)))
    }

    pub fn api(&self, api: ApiRef) -> &ApiRoute {
        // ApiRefs are only made by this index, from positions in `apis`.
        &self.apis[api.0 as usize]
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

//! The snapshot compiled for the gateway: the routing table every worker keeps, and the key
//! directory buckets published into shared data (see [`crate::keydir`]).
//!
//! Compiling also validates: a snapshot that references what it does not contain, or whose
//! published routings collide, is refused with an error naming the field, and the gateway keeps
//! what it had.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::fleet::FleetSettings;
use crate::host::{catalogue_host, request_host};
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
    /// `org/api/version`, shared with the usage rows that name it.
    pub id: Arc<str>,
    pub status: ApiStatus,
    pub public: bool,
    pub forward_api_key: bool,
    pub auth: AuthMode,
}

/// Which API version serves a request: all a worker keeps of the catalogue.
///
/// A request is served by the version with the longest path prefix (on a segment boundary)
/// among those scoped to its host **and** those for any host; at equal prefixes a host-scoped
/// version wins. So a host-scoped version never hides a longer any-host one: `/` on
/// `status.example.com` does not take `/orders/v1/1` from an any-host `/orders/v1`. A request
/// whose host cannot be read (see [`crate::host::request_host`]) matches no host-scoped version,
/// except that a private version for some host that matches its path comes first: an unreadable
/// host fails closed.
///
/// Lookup walks the path's own prefixes, longest first (`/a/b/c`, `/a/b`, `/a`, `/`), one hash
/// lookup each, skipping lengths no prefix has: its cost depends on the path, not on the size of
/// the catalogue.
#[derive(Debug)]
pub struct RouteIndex {
    revision: u64,
    apis: Vec<ApiRoute>,
    /// Who claims each (normalised) path prefix.
    prefixes: HashMap<String, PrefixClaims>,
    /// `prefix_lengths[n]`: some prefix is `n` bytes long.
    prefix_lengths: Vec<bool>,
    /// Every host some version names, numbered: a request's host is looked up once, and a host
    /// no version names skips host-scoped claims altogether.
    hosts: HashMap<String, u32>,
    /// The issuers whose bearer tokens are accepted.
    issuers: TrustedIssuers,
    /// Counts are fleet-wide, against grants from the control plane's broker.
    fleet: Option<FleetSettings>,
}

/// The versions claiming one path prefix.
#[derive(Debug, Default)]
struct PrefixClaims {
    any_host: Option<u32>,
    /// (host number, version), sorted by host number.
    by_host: Vec<(u32, u32)>,
    /// A private version claiming it, for any host or some host (the any-host one if both), for
    /// requests whose host cannot be read.
    private: Option<u32>,
}

impl PrefixClaims {
    fn for_host(&self, host: u32) -> Option<u32> {
        self.by_host
            .binary_search_by_key(&host, |&(h, _)| h)
            .ok()
            .and_then(|i| self.by_host.get(i))
            .map(|&(_, api)| api)
    }
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
    let routes = RouteIndex::build(snapshot.revision, &snapshot.apis, &snapshot.issuers)?
        .with_fleet(snapshot.fleet);

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
        // (host or "" for any, prefix normalised: no trailing slash but for `/`) → api index;
        // published beats retired.
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
            // A name the control plane would refuse today (one stored before it checked names,
            // a hand-written static snapshot) is kept as written: no request host reads as it, so
            // the version serves no host through it. Refusing the snapshot instead would stop
            // every later change (revocations too) from reaching this gateway.
            let hosts: Vec<String> = if api.routing.hosts.is_empty() {
                vec![String::new()]
            } else {
                api.routing
                    .hosts
                    .iter()
                    .map(|h| catalogue_host(h).unwrap_or_else(|_| h.clone()))
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
                        // Two retired versions on one slot: a private one keeps it (both answer
                        // 410, but only a private one is what an unreadable host must get first).
                        (ApiStatus::Retired, ApiStatus::Retired) => other.public || !api.public,
                        _ => true,
                    },
                };
                if replace {
                    slots.insert(slot, index_u32(i));
                }
            }
            apis.push(ApiRoute {
                id: Arc::from(api.id.as_str()),
                status: api.status,
                public: api.public,
                forward_api_key: api.forward_api_key,
                auth: api.auth,
            });
            if api.auth.accepts_jwt() && issuers.is_empty() && !api.public {
                return Err(invalid(
                    format!("{field}.auth"),
                    "accepts bearer tokens, but the snapshot trusts no issuer",
                ));
            }
        }
        let mut prefixes: HashMap<String, PrefixClaims> = HashMap::new();
        let mut host_numbers: HashMap<String, u32> = HashMap::new();
        // Sorted, so that which private version an unreadable host gets never depends on hash
        // order.
        let mut slots: Vec<((String, String), u32)> = slots.into_iter().collect();
        slots.sort();
        for ((host, prefix), api) in slots {
            let private = apis.get(api as usize).is_some_and(|a| !a.public);
            let claims = prefixes.entry(prefix).or_default();
            if host.is_empty() {
                claims.any_host = Some(api);
                if private {
                    claims.private = Some(api);
                }
            } else {
                let next = index_u32(host_numbers.len());
                let number = *host_numbers.entry(host).or_insert(next);
                claims.by_host.push((number, api));
                if private && claims.private.is_none() {
                    claims.private = Some(api);
                }
            }
        }
        for claims in prefixes.values_mut() {
            claims.by_host.sort_unstable();
        }
        let longest = prefixes.keys().map(String::len).max().unwrap_or(0);
        let mut prefix_lengths = vec![false; longest + 1];
        for prefix in prefixes.keys() {
            if let Some(seen) = prefix_lengths.get_mut(prefix.len()) {
                *seen = true;
            }
        }
        Ok(RouteIndex {
            revision,
            apis,
            prefixes,
            prefix_lengths,
            hosts: host_numbers,
            issuers,
            fleet: None,
        })
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn issuers(&self) -> &TrustedIssuers {
        &self.issuers
    }

    /// This index with counts fleet-wide (`Some`) or per gateway (`None`).
    pub fn with_fleet(mut self, fleet: Option<FleetSettings>) -> Self {
        self.fleet = fleet;
        self
    }

    /// Whether counts are fleet-wide, and how a gateway falls back when the broker is away.
    pub fn fleet(&self) -> Option<FleetSettings> {
        self.fleet
    }

    /// Whether any API version names hosts; if none does, routing ignores `:authority`.
    pub fn routes_by_host(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// The API version serving `path` (no query string) on `authority` (the request's
    /// `:authority` as Envoy hands it over): see [`RouteIndex`] for the order.
    pub fn route(&self, authority: &str, path: &str) -> Option<ApiRef> {
        if self.hosts.is_empty() {
            return self.first_claim(path, |c| c.any_host);
        }
        match request_host(authority).map(|host| self.hosts.get(host.as_ref())) {
            Some(Some(&host)) => self.first_claim(path, |c| c.for_host(host).or(c.any_host)),
            Some(None) => self.first_claim(path, |c| c.any_host),
            None => self
                .first_claim(path, |c| c.private)
                .or_else(|| self.first_claim(path, |c| c.any_host)),
        }
    }

    /// The first claim `pick` finds on `path`'s prefixes, longest first.
    fn first_claim(
        &self,
        path: &str,
        pick: impl Fn(&PrefixClaims) -> Option<u32>,
    ) -> Option<ApiRef> {
        covering_prefixes(path)
            .filter(|p| self.prefix_lengths.get(p.len()).copied().unwrap_or(false))
            .find_map(|p| self.prefixes.get(p).and_then(&pick))
            .map(ApiRef)
    }

    fn find_id(&self, id: &str) -> Option<ApiRef> {
        self.apis
            .iter()
            .position(|a| &*a.id == id)
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

/// The prefixes that match `path` on a segment boundary, longest first: `/orders/v1/42`,
/// `/orders/v1`, `/orders`, `/` (`/orders` matches `/orders` and `/orders/1`, never
/// `/orders-admin`). The path itself comes first (it may be a prefix); `/` matches every path.
pub fn covering_prefixes(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('/') {
            _ if current == "/" => None,
            Some(0) | None => Some("/"),
            Some(i) => Some(&current[..i]),
        };
        Some(current)
    })
}

/// What an API version claims for routing, in normal form: a prefix as the control plane
/// stores it, hosts as [`crate::host::catalogue_host`] returns them (none: any host).
#[derive(Debug, Clone, Copy)]
pub struct RouteClaim<'a> {
    pub path_prefix: &'a str,
    pub hosts: &'a [String],
}

/// Where two claims meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedHosts<'a> {
    /// Every host.
    Any,
    /// At least this host.
    Host(&'a str),
}

impl fmt::Display for SharedHosts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharedHosts::Any => f.write_str("any host"),
            SharedHosts::Host(h) => write!(f, "host {h}"),
        }
    }
}

/// Whether a public version would answer requests on a path of a private one, and on which
/// host: both reach the host, and there the gateway picks the public version for some path the
/// private one matches (see [`RouteIndex`]) — its prefix lies below the private prefix, or is
/// the same prefix scoped to the host while the private version is for any host. The control
/// plane refuses to publish either while the other is routed, so a private API's path is never
/// answered as public. Claims on the very same hosts and prefix are a collision instead (a
/// published version replaces a retired one; two published ones are refused).
pub fn public_shadows_private<'a>(
    public: RouteClaim<'a>,
    private: RouteClaim<'a>,
) -> Option<SharedHosts<'a>> {
    let shared = match (public.hosts.is_empty(), private.hosts.is_empty()) {
        (true, true) => SharedHosts::Any,
        (true, false) => SharedHosts::Host(private.hosts.first()?.as_str()),
        (false, true) => SharedHosts::Host(public.hosts.first()?.as_str()),
        (false, false) => SharedHosts::Host(
            public
                .hosts
                .iter()
                .find(|h| private.hosts.contains(h))?
                .as_str(),
        ),
    };
    let below = public.path_prefix != private.path_prefix
        && covering_prefixes(public.path_prefix).any(|p| p == private.path_prefix);
    let wins_tie = public.path_prefix == private.path_prefix
        && !public.hosts.is_empty()
        && private.hosts.is_empty();
    (below || wins_tie).then_some(shared)
}

#[cfg(test)]
mod tests;

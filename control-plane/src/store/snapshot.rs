//! Renders the catalogue into `core`'s snapshot schema: what a gateway needs and nothing more.
//! Drafts never appear; retired API versions do (gateways answer 410). Every list is sorted,
//! so equal catalogues render byte-identical bodies.
//!
//! The write path renders the shell here and the key directory bucket by bucket
//! (`super::buckets`); the full render and pagination below are the independent reference the
//! tests hold the stored buckets to.

#[cfg(test)]
use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::db::Db;
use tollgate_core::keydir::bucket_of;
#[cfg(test)]
use tollgate_core::keys::parse_digest_hex;
use tollgate_core::snapshot::{self, ApiStatus, Routing, Snapshot};
#[cfg(test)]
use tollgate_core::snapshot::{ApiKeyHash, ClientVersion, Contract, TokenSubject};
use tollgate_core::token::subject_digest;

use super::plans::read_limits;
use crate::error::Error;

/// What every page of a revision repeats: locked plan versions, published and retired API
/// versions, trusted token issuers, and whether counts are fleet-wide. Small (it grows with the
/// API programme, not with clients), so every gateway-visible write renders it whole.
pub fn render_shell(conn: &Db<'_>, revision: u64) -> Result<Snapshot, Error> {
    let mut snapshot = Snapshot::empty(revision);

    let mut stmt = conn.prepare_cached(
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

    let mut stmt = conn.prepare_cached(
        "SELECT org || '/' || api || '/' || version, status, public, path_prefix, hosts,
                forward_api_key, auth
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
                r.get::<_, String>(6)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (id, status, public, path_prefix, hosts, forward_api_key, auth) in rows {
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
            auth: super::apis::parse_auth(&auth)?,
        });
    }

    snapshot.issuers = own_issuer(conn)?.into_iter().collect();
    snapshot.issuers.extend(super::issuers::all_core(conn)?);
    snapshot.issuers.sort_by(|a, b| a.issuer.cmp(&b.issuer));
    snapshot.fleet = super::fleet::get(conn)?;
    Ok(snapshot)
}

fn own_issuer(conn: &Db<'_>) -> Result<Option<snapshot::Issuer>, Error> {
    super::tokens::own_issuer(conn)?
        .map(|value| {
            serde_json::from_value::<snapshot::Issuer>(value)
                .map_err(|e| Error::Internal(format!("own issuer: {e}")))
        })
        .transpose()
}

/// The whole catalogue rendered from the tables in one pass, independently of the stored
/// buckets: what the stored buckets, their pages and deltas must equal byte for byte. Client
/// versions without a directory record (no key, no token subject) are left out with their
/// contracts: no request can act as them.
#[cfg(test)]
pub fn render(conn: &Db<'_>, revision: u64) -> Result<Snapshot, Error> {
    let mut snapshot = render_shell(conn, revision)?;
    let mut clients: BTreeMap<String, (Vec<ApiKeyHash>, Vec<TokenSubject>)> = BTreeMap::new();
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
        clients.entry(client).or_default().0.push(ApiKeyHash {
            sha256,
            expires_at: expires_at.map(|t| t.max(0) as u64),
        });
    }
    // Token identities: one subject of the own issuer per client credential (a token names
    // its credentials, `client_id`), then the external issuers' mappings.
    if let Some(own) = own_issuer(conn)? {
        let mut stmt = conn.prepare(
            "SELECT client_org || '/' || client || '/' || client_version, client_id
             FROM oauth_credentials WHERE client_org IS NOT NULL",
        )?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
            let (id, value) = row?;
            clients.entry(id).or_default().1.push(TokenSubject {
                issuer: own.issuer.clone(),
                value,
            });
        }
    }
    for (id, issuer, value) in super::issuers::all_subjects(conn)? {
        clients
            .entry(id)
            .or_default()
            .1
            .push(TokenSubject { issuer, value });
    }
    snapshot.clients = clients
        .into_iter()
        .map(|(id, (keys, mut subjects))| {
            subjects.sort_by(|a, b| (&a.issuer, &a.value).cmp(&(&b.issuer, &b.value)));
            ClientVersion { id, keys, subjects }
        })
        .collect();
    let with_records: HashSet<&str> = snapshot.clients.iter().map(|c| c.id.as_str()).collect();

    let mut stmt = conn.prepare(
        "SELECT id, client_org || '/' || client || '/' || client_version,
                api_org || '/' || api || '/' || api_version,
                plan_org || '/' || plan || '/' || plan_version
         FROM contracts ORDER BY id",
    )?;
    let contracts = stmt
        .query_map([], |r| {
            Ok(Contract {
                id: r.get::<_, i64>(0)? as u64,
                client: r.get(1)?,
                api: r.get(2)?,
                plan: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<Contract>, _>>()?;
    snapshot.contracts = contracts
        .into_iter()
        .filter(|c| with_records.contains(c.client.as_str()))
        .collect();
    Ok(snapshot)
}

/// How a revision is split into pages, from the number of directory records in each bucket:
/// contiguous bucket ranges, each closed before it would exceed `page_keys` records (a single
/// bucket larger than that still travels whole: its records are one atomic write at the
/// gateway). `complete` when everything fits one page: that page is then the whole catalogue
/// (`buckets` absent). Together the ranges cover every bucket once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagePlan {
    pub ranges: Vec<(u16, u16)>,
    pub complete: bool,
}

impl PagePlan {
    pub fn new(per_bucket: impl IntoIterator<Item = (u16, usize)>, page_keys: usize) -> Self {
        let page_keys = page_keys.max(1);
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        let (mut start, mut in_range, mut total) = (0u16, 0usize, 0usize);
        for (b, n) in per_bucket {
            if in_range > 0 && in_range + n > page_keys {
                ranges.push((start, b - 1));
                start = b;
                in_range = 0;
            }
            in_range += n;
            total += n;
        }
        if total <= page_keys {
            return PagePlan {
                ranges: vec![(0, u16::MAX)],
                complete: true,
            };
        }
        ranges.push((start, u16::MAX));
        PagePlan {
            ranges,
            complete: false,
        }
    }
}

/// The reference pagination of a fresh full render (what the pages assembled from stored
/// buckets must equal): each page covers a range of [`PagePlan`], carries the keys that hash into
/// it (a client version whose records straddle two ranges appears in both pages with the records
/// of each), those clients' contracts, and the whole shell, so that every page compiles on its
/// own at the gateway. The caller sets `next`.
#[cfg(test)]
pub fn paginate(full: &Snapshot, page_keys: usize) -> Vec<Snapshot> {
    let mut per_bucket: BTreeMap<u16, usize> = BTreeMap::new();
    for client in &full.clients {
        for b in identity_buckets(client) {
            *per_bucket.entry(b).or_default() += 1;
        }
    }
    let plan = PagePlan::new(per_bucket, page_keys);
    if plan.complete {
        return vec![full.clone()];
    }
    plan.ranges
        .iter()
        .map(|&(lo, hi)| page_of(full, &(lo..=hi).collect()))
        .collect()
}

/// The reference page defining only `buckets` of a fresh full render: all plans, API versions
/// and issuers, the records in those buckets, their clients' contracts.
#[cfg(test)]
pub fn page_of(full: &Snapshot, buckets: &BTreeSet<u16>) -> Snapshot {
    let clients: Vec<ClientVersion> = full
        .clients
        .iter()
        .filter_map(|c| restrict(c, |b| buckets.contains(&b)))
        .collect();
    let ids: HashSet<&str> = clients.iter().map(|c| c.id.as_str()).collect();
    Snapshot {
        contracts: full
            .contracts
            .iter()
            .filter(|k| ids.contains(k.client.as_str()))
            .cloned()
            .collect(),
        clients,
        buckets: Some(buckets.iter().copied().collect()),
        ..shell_of(full)
    }
}

/// Everything of `full` but its clients and contracts: what every page repeats.
#[cfg(test)]
pub fn shell_of(full: &Snapshot) -> Snapshot {
    Snapshot {
        clients: Vec::new(),
        contracts: Vec::new(),
        buckets: None,
        next: None,
        base_revision: None,
        ..full.clone()
    }
}

#[cfg(test)]
pub fn key_bucket(sha256: &str) -> u16 {
    parse_digest_hex(sha256).map_or(0, |d| bucket_of(&d))
}

/// Token subjects are key-directory records too (`core::token::subject_digest`).
pub fn subject_bucket(issuer: &str, value: &str) -> u16 {
    bucket_of(&subject_digest(issuer, value))
}

/// The bucket of each of a client version's directory records.
#[cfg(test)]
fn identity_buckets(client: &ClientVersion) -> impl Iterator<Item = u16> + '_ {
    let keys = client.keys.iter().map(|k| key_bucket(&k.sha256));
    keys.chain(
        client
            .subjects
            .iter()
            .map(|s| subject_bucket(&s.issuer, &s.value)),
    )
}

/// The client version with only its records in buckets `keep` accepts; `None` if none are.
#[cfg(test)]
fn restrict(client: &ClientVersion, keep: impl Fn(u16) -> bool) -> Option<ClientVersion> {
    let keys: Vec<ApiKeyHash> = client
        .keys
        .iter()
        .filter(|k| keep(key_bucket(&k.sha256)))
        .cloned()
        .collect();
    let subjects: Vec<TokenSubject> = client
        .subjects
        .iter()
        .filter(|s| keep(subject_bucket(&s.issuer, &s.value)))
        .cloned()
        .collect();
    (!keys.is_empty() || !subjects.is_empty()).then(|| ClientVersion {
        keys,
        subjects,
        ..client.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalogue_within_a_page_is_one_complete_page() {
        let plan = PagePlan::new([(3, 2), (900, 4)], 6);
        assert!(plan.complete);
        assert_eq!(plan.ranges, vec![(0, u16::MAX)]);
    }

    #[test]
    fn ranges_close_before_a_page_overflows_and_cover_every_bucket_once() {
        let plan = PagePlan::new([(3, 4), (7, 3), (9, 3), (400, 9), (401, 1)], 6);
        assert!(!plan.complete);
        assert_eq!(
            plan.ranges,
            vec![(0, 6), (7, 399), (400, 400), (401, u16::MAX)]
        );
        let mut next = 0u32;
        for (lo, hi) in plan.ranges {
            assert_eq!(u32::from(lo), next);
            next = u32::from(hi) + 1;
        }
        assert_eq!(next, 1 << 16);
    }
}

//! Renders the catalogue into `core`'s snapshot schema: what a gateway needs and nothing more.
//! Drafts never appear; retired API versions do (gateways answer 410). Every list is sorted,
//! so equal catalogues render byte-identical bodies.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use rusqlite::Connection;
use tollgate_core::keydir::bucket_of;
use tollgate_core::keys::parse_digest_hex;
use tollgate_core::snapshot::{
    self, ApiKeyHash, ApiStatus, ClientVersion, Contract, Routing, Snapshot, TokenSubject,
};
use tollgate_core::token::subject_digest;

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
    // Token identities: the own issuer's for client versions' credentials, then the
    // external issuers' mappings.
    let own = super::tokens::own_issuer(conn)?
        .map(|value| {
            serde_json::from_value::<snapshot::Issuer>(value)
                .map_err(|e| Error::Internal(format!("own issuer: {e}")))
        })
        .transpose()?;
    let mut subjects: BTreeMap<String, Vec<TokenSubject>> = BTreeMap::new();
    if let Some(own) = &own {
        // One subject per credential in force: a token names its credentials (`client_id`).
        for (id, client_id) in super::tokens::client_credentials_in_force(conn, super::unix_now())?
        {
            subjects.entry(id).or_default().push(TokenSubject {
                issuer: own.issuer.clone(),
                value: client_id,
            });
        }
    }
    for (id, issuer, value) in super::issuers::all_subjects(conn)? {
        subjects
            .entry(id)
            .or_default()
            .push(TokenSubject { issuer, value });
    }
    snapshot.clients = clients
        .into_iter()
        .map(|(id, keys)| {
            let mut subjects = subjects.remove(&id).unwrap_or_default();
            subjects.sort_by(|a, b| (&a.issuer, &a.value).cmp(&(&b.issuer, &b.value)));
            ClientVersion { id, keys, subjects }
        })
        .collect();
    snapshot.issuers = own.into_iter().collect();
    snapshot.issuers.extend(super::issuers::all_core(conn)?);
    snapshot.issuers.sort_by(|a, b| a.issuer.cmp(&b.issuer));

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

/// Splits a complete snapshot into pages of at most about `page_keys` key hashes, because
/// Envoy drops callout bodies over 32 MiB (DESIGN.md §4). A catalogue within one page stays one
/// complete document (`buckets` absent). Otherwise each page covers a contiguous range of
/// key-directory buckets (`core::keydir`): it lists them in `buckets`, carries the keys that
/// hash into them (a client version whose keys straddle two ranges appears in both pages with
/// the keys of each), those clients' contracts, and all plans and API versions, so that every
/// page compiles on its own at the gateway. Together the pages cover every bucket once. The
/// caller sets `next`.
pub fn paginate(full: &Snapshot, page_keys: usize) -> Vec<Snapshot> {
    let page_keys = page_keys.max(1);
    let total: usize = full.clients.iter().map(identity_count).sum();
    if total <= page_keys {
        return vec![full.clone()];
    }
    let mut per_bucket: BTreeMap<u16, usize> = BTreeMap::new();
    for client in &full.clients {
        for b in identity_buckets(client) {
            *per_bucket.entry(b).or_default() += 1;
        }
    }
    // Contiguous bucket ranges, closed before they would exceed `page_keys` (a single bucket
    // larger than that still travels whole: its records are one atomic write).
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    let (mut start, mut in_range) = (0u16, 0usize);
    for (&b, &n) in &per_bucket {
        if in_range > 0 && in_range + n > page_keys {
            ranges.push((start, b - 1));
            start = b;
            in_range = 0;
        }
        in_range += n;
    }
    ranges.push((start, u16::MAX));

    // One pass over clients and contracts for all pages (not one per page): each client goes to
    // the page(s) its records' buckets fall in, with its contracts, in catalogue order.
    let page_of = |b: u16| ranges.partition_point(|&(_, hi)| hi < b);
    let mut contracts_of: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, k) in full.contracts.iter().enumerate() {
        contracts_of.entry(k.client.as_str()).or_default().push(i);
    }
    let mut pages: Vec<(Vec<ClientVersion>, Vec<usize>)> = vec![Default::default(); ranges.len()];
    for client in &full.clients {
        let client_pages: BTreeSet<usize> = identity_buckets(client).map(page_of).collect();
        for p in client_pages {
            let (Some(restricted), Some(page)) =
                (restrict(client, |b| page_of(b) == p), pages.get_mut(p))
            else {
                continue;
            };
            page.0.push(restricted);
            if let Some(contracts) = contracts_of.get(client.id.as_str()) {
                page.1.extend(contracts);
            }
        }
    }
    let shell = shell_of(full);
    ranges
        .into_iter()
        .zip(pages)
        .map(|((lo, hi), (clients, mut contract_indices))| {
            contract_indices.sort_unstable();
            let contracts = contract_indices
                .into_iter()
                .filter_map(|i| full.contracts.get(i).cloned())
                .collect();
            Snapshot {
                clients,
                contracts,
                buckets: Some((lo..=hi).collect()),
                ..shell.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use tollgate_core::keys::key_hash_hex;
    use tollgate_core::snapshot::{Period, PlanVersion, RateLimit};

    fn catalogue(clients: usize) -> Snapshot {
        let mut s = Snapshot::empty(7);
        s.plans.push(PlanVersion {
            id: "acme/gold/1".into(),
            limits: vec![RateLimit {
                requests: 1,
                per: Period::Day,
            }],
        });
        for i in 0..clients {
            s.clients.push(ClientVersion {
                id: format!("acme/c{i}/1"),
                keys: vec![
                    ApiKeyHash {
                        sha256: key_hash_hex(&format!("key-{i}-a")),
                        expires_at: Some(100),
                    },
                    ApiKeyHash {
                        sha256: key_hash_hex(&format!("key-{i}-b")),
                        expires_at: None,
                    },
                ],
                subjects: Vec::new(),
            });
        }
        s
    }

    #[test]
    fn a_small_catalogue_is_one_complete_page() {
        let pages = paginate(&catalogue(3), 6);
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].buckets, None);
    }

    #[test]
    fn pages_cover_every_bucket_once_and_every_key_once() {
        let full = catalogue(50);
        let pages = paginate(&full, 7);
        assert!(pages.len() >= 100 / 7);
        let mut buckets = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for page in &pages {
            let covered = page.buckets.as_ref().unwrap();
            assert!(page.clients.iter().map(|c| c.keys.len()).sum::<usize>() <= 7);
            for b in covered {
                assert!(buckets.insert(*b), "bucket {b} in two pages");
            }
            for c in &page.clients {
                for k in &c.keys {
                    assert!(keys.insert(k.sha256.clone()));
                }
            }
            assert_eq!(page.plans, full.plans);
        }
        assert_eq!(buckets.len(), 1 << 16);
        assert_eq!(keys.len(), 100);
    }
}

/// A digest of each non-empty key-directory bucket's content (its keys, their expiry, their
/// client versions and those clients' contracts): two revisions differ in a bucket exactly
/// when the digests differ or one lacks it.
pub type BucketDigests = HashMap<u16, u64>;

/// One record of a bucket: ("key", hash, expiry, client version) for an API key,
/// (issuer, value, none, client version) for a token subject.
type KeyFact<'a> = (&'a str, &'a str, Option<u64>, &'a str);

pub fn bucket_digests(full: &Snapshot) -> BucketDigests {
    let mut grants: HashMap<&str, Vec<&Contract>> = HashMap::new();
    for c in &full.contracts {
        grants.entry(c.client.as_str()).or_default().push(c);
    }
    let mut records: BTreeMap<u16, Vec<KeyFact<'_>>> = BTreeMap::new();
    for client in &full.clients {
        for key in &client.keys {
            records.entry(key_bucket(&key.sha256)).or_default().push((
                "key",
                key.sha256.as_str(),
                key.expires_at,
                client.id.as_str(),
            ));
        }
        for subject in &client.subjects {
            records.entry(subject_bucket(subject)).or_default().push((
                subject.issuer.as_str(),
                subject.value.as_str(),
                None,
                client.id.as_str(),
            ));
        }
    }
    records
        .into_iter()
        .map(|(bucket, mut keys)| {
            keys.sort_unstable();
            let mut hasher = DefaultHasher::new();
            for (kind, identity, expires_at, client) in keys {
                (kind, identity, expires_at, client).hash(&mut hasher);
                let mut contracts: Vec<_> = grants
                    .get(client)
                    .map(|g| g.iter().map(|c| (c.id, &c.api, &c.plan)).collect())
                    .unwrap_or_default();
                contracts.sort_unstable();
                contracts.hash(&mut hasher);
            }
            (bucket, hasher.finish())
        })
        .collect()
}

/// The buckets whose content differs between two revisions.
pub fn changed_buckets(old: &BucketDigests, new: &BucketDigests) -> BTreeSet<u16> {
    let mut changed: BTreeSet<u16> = new
        .iter()
        .filter(|(bucket, digest)| old.get(bucket) != Some(digest))
        .map(|(bucket, _)| *bucket)
        .collect();
    changed.extend(old.keys().filter(|b| !new.contains_key(b)));
    changed
}

/// A page defining only `buckets` (all plans and API versions, the keys in those buckets,
/// their clients' contracts): applied over the revision it was computed against, it yields
/// the full revision at the gateway.
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

/// Everything of `full` but its clients and contracts: what every page repeats (plans, API
/// versions and whatever else the schema holds for the whole catalogue).
fn shell_of(full: &Snapshot) -> Snapshot {
    Snapshot {
        clients: Vec::new(),
        contracts: Vec::new(),
        buckets: None,
        next: None,
        base_revision: None,
        ..full.clone()
    }
}

/// How many directory records (keys and token subjects) `buckets` hold in `full`.
pub fn keys_in(full: &Snapshot, buckets: &BTreeSet<u16>) -> usize {
    full.clients
        .iter()
        .flat_map(identity_buckets)
        .filter(|b| buckets.contains(b))
        .count()
}

fn key_bucket(sha256: &str) -> u16 {
    parse_digest_hex(sha256).map_or(0, |d| bucket_of(&d))
}

/// Token subjects are key-directory records too (`core::token::subject_digest`).
fn subject_bucket(subject: &TokenSubject) -> u16 {
    bucket_of(&subject_digest(&subject.issuer, &subject.value))
}

fn identity_count(client: &ClientVersion) -> usize {
    client.keys.len() + client.subjects.len()
}

/// The bucket of each of a client version's directory records.
fn identity_buckets(client: &ClientVersion) -> impl Iterator<Item = u16> + '_ {
    let keys = client.keys.iter().map(|k| key_bucket(&k.sha256));
    keys.chain(client.subjects.iter().map(subject_bucket))
}

/// The client version with only its records in buckets `keep` accepts; `None` if none are.
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
        .filter(|s| keep(subject_bucket(s)))
        .cloned()
        .collect();
    (!keys.is_empty() || !subjects.is_empty()).then(|| ClientVersion {
        keys,
        subjects,
        ..client.clone()
    })
}

#[cfg(test)]
mod subject_tests {
    use super::*;
    use std::collections::BTreeSet;
    use tollgate_core::keys::key_hash_hex;

    /// 30 client versions, each with a key and a token subject of one trusted issuer.
    fn with_subjects() -> Snapshot {
        let mut s = Snapshot::empty(4);
        s.issuers.push(
            serde_json::from_value(serde_json::json!({
                "issuer": "https://id.example", "audiences": ["orders"], "jwks": {"keys": []}
            }))
            .unwrap(),
        );
        for i in 0..30 {
            s.clients.push(ClientVersion {
                id: format!("acme/c{i}/1"),
                keys: vec![ApiKeyHash {
                    sha256: key_hash_hex(&format!("k{i}")),
                    expires_at: None,
                }],
                subjects: vec![TokenSubject {
                    issuer: "https://id.example".into(),
                    value: format!("svc-{i}"),
                }],
            });
        }
        s
    }

    #[test]
    fn pages_split_token_subjects_by_their_bucket_and_each_page_compiles() {
        let full = with_subjects();
        let pages = paginate(&full, 7);
        assert!(pages.len() >= 60 / 7);
        let mut subjects = BTreeSet::new();
        for page in &pages {
            assert_eq!(page.issuers, full.issuers, "every page carries the issuers");
            let body = serde_json::to_vec(page).unwrap();
            tollgate_core::distribution::compile(&body)
                .unwrap_or_else(|e| panic!("core refuses a page: {e}"));
            for c in &page.clients {
                for s in &c.subjects {
                    assert!(subjects.insert(s.value.clone()), "{} twice", s.value);
                }
            }
        }
        assert_eq!(subjects.len(), 30);
    }

    #[test]
    fn a_changed_subject_changes_its_bucket_digest() {
        let before = with_subjects();
        let mut after = before.clone();
        after.clients[5].subjects[0].value = "svc-renamed".into();
        let changed = changed_buckets(&bucket_digests(&before), &bucket_digests(&after));
        let expected: BTreeSet<u16> = [
            subject_bucket(&before.clients[5].subjects[0]),
            subject_bucket(&after.clients[5].subjects[0]),
        ]
        .into();
        assert_eq!(changed, expected);
        let page = page_of(&after, &changed);
        tollgate_core::distribution::compile(&serde_json::to_vec(&page).unwrap()).unwrap();
    }
}

#[cfg(test)]
mod delta_tests {
    use super::*;
    use tollgate_core::keys::key_hash_hex;

    fn with_clients(n: usize) -> Snapshot {
        let mut s = Snapshot::empty(1);
        for i in 0..n {
            s.clients.push(ClientVersion {
                id: format!("acme/c{i}/1"),
                keys: vec![ApiKeyHash {
                    sha256: key_hash_hex(&format!("k{i}")),
                    expires_at: None,
                }],
                subjects: Vec::new(),
            });
        }
        s
    }

    #[test]
    fn only_the_buckets_of_changed_keys_differ() {
        let before = with_clients(20);
        let mut after = before.clone();
        after.clients[3].keys[0].expires_at = Some(5);
        after.contracts.push(Contract {
            id: 9,
            client: "acme/c7/1".into(),
            api: "acme/orders/1".into(),
            plan: "acme/gold/1".into(),
        });
        after.clients.remove(11);
        let changed = changed_buckets(&bucket_digests(&before), &bucket_digests(&after));
        let expected: BTreeSet<u16> = [3, 7, 11]
            .iter()
            .map(|i| key_bucket(&key_hash_hex(&format!("k{i}"))))
            .collect();
        assert_eq!(changed, expected);
        let page = page_of(&after, &changed);
        assert_eq!(page.clients.len(), 2, "c3 and c7; c11 is gone");
        assert_eq!(page.contracts.len(), 1);
        assert_eq!(keys_in(&after, &changed), 2);
    }
}

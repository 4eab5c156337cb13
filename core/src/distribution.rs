//! Live distribution at the gateway: verifying a fetched snapshot, handing it from the one
//! poller of an Envoy process to every worker through shared data, and retry timing.
//!
//! The poller (a singleton Envoy WasmService on the main thread) verifies the signature and
//! compiles the snapshot before it publishes anything, so workers only ever see snapshots that
//! passed; a rejected one leaves the last good snapshot in force.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::index::{
    compile as compile_snapshot, Compiled, Coverage, Directory, IndexError, RouteIndex,
};
use crate::keycache::Changed;
use crate::keydir::{bucket_key, BUCKETS};
use crate::shared::{SharedStore, StoreError};
use crate::signing;
use crate::snapshot::{ApiVersion, Issuer, Snapshot};

/// Shared-data key holding the routing table workers enforce ([`RoutesDocument`] JSON).
pub const ROUTES_KEY: &str = "tollgate.routes";
/// Shared-data key holding only the routes' revision (8 bytes, little endian): what workers
/// poll on every refresh tick.
pub const REVISION_KEY: &str = "tollgate.routes.revision";
/// Shared-data key holding a bitmap of the key-directory buckets that are not empty, so that
/// a complete catalogue can clear the buckets it no longer uses.
pub const MANIFEST_KEY: &str = "tollgate.keys.manifest";

/// Shared-data key holding which key-directory buckets each recent revision changed, so that
/// workers drop exactly those from their bucket caches ([`crate::keycache`]) when they adopt it.
pub const CHANGES_KEY: &str = "tollgate.keys.changes";
/// Revisions the change log keeps; a worker further behind drops its whole cache.
const CHANGES_KEPT: usize = 16;
/// A revision that changed more buckets than this is logged as "all changed".
const CHANGES_LISTED_MAX: usize = 4096;

/// What workers keep of a revision: its API versions and trusted token issuers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesDocument {
    pub revision: u64,
    pub apis: Vec<ApiVersion>,
    #[serde(default)]
    pub issuers: Vec<Issuer>,
}

impl RoutesDocument {
    pub fn compile(bytes: &[u8]) -> Result<RouteIndex, SnapshotRejected> {
        let doc: RoutesDocument =
            serde_json::from_slice(bytes).map_err(|e| SnapshotRejected::BadJson(e.to_string()))?;
        RouteIndex::build(doc.revision, &doc.apis, &doc.issuers).map_err(SnapshotRejected::Invalid)
    }
}

/// Writes a snapshot's key-directory buckets into shared data: the buckets it defines, an
/// empty value for each bucket it covers without records (a complete catalogue covers all), and
/// the manifest of non-empty buckets. Each bucket is one atomic write; a reader sees every key
/// either before or after its change.
pub fn publish_directory<S: SharedStore + ?Sized>(
    store: &mut S,
    directory: &Directory,
) -> Result<(), StoreError> {
    let mut manifest = match store.get(MANIFEST_KEY)? {
        Some((bytes, _)) if bytes.len() == BUCKETS / 8 => bytes,
        _ => vec![0u8; BUCKETS / 8],
    };
    let clear = |store: &mut S, bucket: u16, manifest: &mut [u8]| {
        let (byte, bit) = (usize::from(bucket) / 8, 1u8 << (bucket % 8));
        match manifest.get_mut(byte) {
            Some(b) if *b & bit != 0 => {
                *b &= !bit;
                store.set(&bucket_key(bucket), &[], 0).map(|_| ())
            }
            _ => Ok(()),
        }
    };
    match &directory.coverage {
        Coverage::All => {
            for bucket in 0..=u16::MAX {
                if !directory.buckets.contains_key(&bucket) {
                    clear(store, bucket, &mut manifest)?;
                }
            }
        }
        Coverage::Buckets(list) => {
            for bucket in list {
                if !directory.buckets.contains_key(bucket) {
                    clear(store, *bucket, &mut manifest)?;
                }
            }
        }
    }
    for (bucket, bytes) in &directory.buckets {
        store.set(&bucket_key(*bucket), bytes, 0)?;
        if let Some(b) = manifest.get_mut(usize::from(*bucket) / 8) {
            *b |= 1u8 << (bucket % 8);
        }
    }
    store.set(MANIFEST_KEY, &manifest, 0)?;
    Ok(())
}

/// Adds the buckets a directory (a revision, or one page of it) writes or clears.
pub fn note_changed_buckets(directory: &Directory, changed: &mut Changed) {
    match &directory.coverage {
        Coverage::All => *changed = Changed::All,
        Coverage::Buckets(list) => list.iter().for_each(|b| changed.add(*b)),
    }
    directory.buckets.keys().for_each(|b| changed.add(*b));
}

/// Appends "`from` → `to` changed these buckets" to the change log in shared data (the last
/// [`CHANGES_KEPT`] revisions). Published before the revision itself, so a worker that sees
/// the revision finds its entry.
pub fn publish_changes<S: SharedStore + ?Sized>(
    store: &mut S,
    from: Option<u64>,
    to: u64,
    changed: &Changed,
) -> Result<(), StoreError> {
    let mut entries: Vec<Vec<u8>> = match store.get(CHANGES_KEY)? {
        Some((bytes, _)) => log_entries(&bytes).map(<[u8]>::to_vec).collect(),
        None => Vec::new(),
    };
    let mut entry = Vec::new();
    entry.extend_from_slice(&from.unwrap_or(u64::MAX).to_le_bytes());
    entry.extend_from_slice(&to.to_le_bytes());
    let listed: Vec<u16> = match changed {
        Changed::All => Vec::new(),
        Changed::Buckets(_) => (0..=u16::MAX).filter(|b| changed.contains(*b)).collect(),
    };
    if matches!(changed, Changed::All) || listed.len() > CHANGES_LISTED_MAX {
        entry.push(0);
    } else {
        entry.push(1);
        entry.extend_from_slice(&(listed.len() as u16).to_le_bytes());
        listed
            .iter()
            .for_each(|b| entry.extend_from_slice(&b.to_le_bytes()));
    }
    entries.push(entry);
    let skip = entries.len().saturating_sub(CHANGES_KEPT);
    let body: Vec<u8> = entries.into_iter().skip(skip).flatten().collect();
    store.set(CHANGES_KEY, &body, 0)?;
    Ok(())
}

/// The entries of an encoded change log; stops at anything malformed.
fn log_entries(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let kind = *rest.get(16)?;
        let len = match kind {
            0 => 17,
            1 => {
                let n = u16::from_le_bytes(rest.get(17..19)?.try_into().ok()?);
                19 + 2 * usize::from(n)
            }
            _ => return None,
        };
        let entry = rest.get(..len)?;
        rest = rest.get(len..)?;
        Some(entry)
    })
}

/// The buckets changed from revision `from` to `to` according to a change log: the union along
/// the chain of entries from `from`; everything when the chain is incomplete (or `from` is
/// `None`: a worker that enforced nothing yet).
pub fn changes_between(log: &[u8], from: Option<u64>, to: u64) -> Changed {
    let Some(mut at) = from else {
        return Changed::All;
    };
    let mut changed = Changed::none();
    for _ in 0..CHANGES_KEPT {
        if at == to {
            return changed;
        }
        let next = log_entries(log).find(|e| e.get(..8).map(le_u64) == Some(at));
        let Some(entry) = next else {
            return Changed::All;
        };
        match entry.get(16) {
            Some(1) => entry
                .get(19..)
                .unwrap_or_default()
                .chunks_exact(2)
                .for_each(|b| changed.add(u16::from_le_bytes([b[0], b[1]]))),
            _ => return Changed::All,
        }
        at = entry.get(8..16).map_or(u64::MAX, le_u64);
    }
    if at == to {
        changed
    } else {
        Changed::All
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.iter_mut().zip(bytes).for_each(|(r, b)| *r = *b);
    u64::from_le_bytes(raw)
}

/// Publishes the routing table of a revision; workers adopt it on their next tick.
pub fn publish_routes<S: SharedStore + ?Sized>(
    store: &mut S,
    snapshot: &Snapshot,
) -> Result<(), StoreError> {
    let revision = snapshot.revision;
    let doc = RoutesDocument {
        revision,
        apis: snapshot.apis.clone(),
        issuers: snapshot.issuers.clone(),
    };
    let body = serde_json::to_vec(&doc).map_err(|e| StoreError(e.to_string()))?;
    store.set(ROUTES_KEY, &body, 0)?;
    store.set(REVISION_KEY, &encode_revision(revision), 0)?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRejected {
    MissingSignature,
    BadSignature,
    BadJson(String),
    Invalid(IndexError),
}

impl fmt::Display for SnapshotRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotRejected::MissingSignature => {
                write!(f, "no {} header", signing::SIGNATURE_HEADER)
            }
            SnapshotRejected::BadSignature => write!(f, "signature does not match the body"),
            SnapshotRejected::BadJson(e) => write!(f, "not a snapshot: {e}"),
            SnapshotRejected::Invalid(e) => write!(f, "cannot be enforced: {e}"),
        }
    }
}

/// Checks the signature over the exact body, then parses and compiles it.
pub fn verify_snapshot(
    secret: &[u8],
    body: &[u8],
    signature: Option<&str>,
) -> Result<(Snapshot, Compiled), SnapshotRejected> {
    let signature = signature.ok_or(SnapshotRejected::MissingSignature)?;
    if !signing::verify(secret, body, signature) {
        return Err(SnapshotRejected::BadSignature);
    }
    compile(body)
}

/// Parses and compiles a snapshot body.
pub fn compile(body: &[u8]) -> Result<(Snapshot, Compiled), SnapshotRejected> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let snapshot: Snapshot = serde_path_to_error::deserialize(de)
        .map_err(|e| SnapshotRejected::BadJson(format!("{}: {}", e.path(), e.inner())))?;
    let compiled = compile_snapshot(&snapshot).map_err(SnapshotRejected::Invalid)?;
    Ok((snapshot, compiled))
}

pub fn encode_revision(revision: u64) -> [u8; 8] {
    revision.to_le_bytes()
}

pub fn decode_revision(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Capped exponential backoff with jitter between failed polls.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    failures: u32,
}

impl Backoff {
    pub fn new(initial_ms: u32, max_ms: u32) -> Self {
        Backoff {
            initial_ms: u64::from(initial_ms.max(1)),
            max_ms: u64::from(max_ms.max(initial_ms.max(1))),
            failures: 0,
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay before the next attempt after one more failure: the capped exponential
    /// ceiling scaled into [50 %, 100 %] by `entropy`, so gateways that lost the control plane
    /// together do not come back in lockstep.
    pub fn next_delay_ms(&mut self, entropy: u64) -> u64 {
        let exp = self.failures.min(30);
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.initial_ms.saturating_mul(1u64 << exp).min(self.max_ms);
        let half = ceiling / 2;
        half + entropy % (ceiling - half + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keydir::bucket_of;
    use crate::keys::key_digest;
    use crate::shared::MemoryStore;
    use crate::snapshot::SCHEMA_VERSION;
    use crate::testkit::*;

    fn body() -> Vec<u8> {
        serde_json::to_vec(&Snapshot::empty(9)).unwrap()
    }

    #[test]
    fn a_signed_snapshot_is_accepted() {
        let b = body();
        let sig = signing::sign(b"s3cret", &b);
        let (snapshot, compiled) = verify_snapshot(b"s3cret", &b, Some(&sig)).unwrap();
        assert_eq!((snapshot.schema, compiled.revision()), (SCHEMA_VERSION, 9));
    }

    #[test]
    fn tampered_unsigned_or_foreign_snapshots_are_rejected() {
        let b = body();
        let sig = signing::sign(b"s3cret", &b);
        assert_eq!(
            verify_snapshot(b"s3cret", &b, None).unwrap_err(),
            SnapshotRejected::MissingSignature
        );
        assert_eq!(
            verify_snapshot(b"other", &b, Some(&sig)).unwrap_err(),
            SnapshotRejected::BadSignature
        );
        let mut tampered = b.clone();
        let at = tampered.len() - 2;
        tampered[at] = b'9';
        assert_eq!(
            verify_snapshot(b"s3cret", &tampered, Some(&sig)).unwrap_err(),
            SnapshotRejected::BadSignature
        );
        let garbage = b"<html>oops</html>".to_vec();
        let sig = signing::sign(b"s3cret", &garbage);
        assert!(matches!(
            verify_snapshot(b"s3cret", &garbage, Some(&sig)),
            Err(SnapshotRejected::BadJson(_))
        ));
        let future = br#"{"schema":2,"revision":1}"#.to_vec();
        let sig = signing::sign(b"s3cret", &future);
        assert!(matches!(
            verify_snapshot(b"s3cret", &future, Some(&sig)),
            Err(SnapshotRejected::Invalid(e)) if e.field == "schema"
        ));
    }

    fn bucket(store: &MemoryStore, key: &str) -> Option<Vec<u8>> {
        store
            .peek(&bucket_key(bucket_of(&key_digest(key))))
            .map(|(v, _)| v)
    }

    #[test]
    fn workers_learn_which_buckets_changed_along_the_chain_of_revisions() {
        let mut store = MemoryStore::new();
        let mut one = Changed::none();
        one.add(7);
        let mut two = Changed::none();
        two.add(9);
        two.add(300);
        publish_changes(&mut store, None, 10, &Changed::All).unwrap();
        publish_changes(&mut store, Some(10), 11, &one).unwrap();
        publish_changes(&mut store, Some(11), 14, &two).unwrap();
        let log = store.peek(CHANGES_KEY).unwrap().0;
        let between = changes_between(&log, Some(10), 14);
        assert!([7, 9, 300].iter().all(|b| between.contains(*b)));
        assert!(!between.contains(8));
        let last = changes_between(&log, Some(11), 14);
        assert!(last.contains(9) && !last.contains(7));
        assert_eq!(changes_between(&log, Some(14), 14), Changed::none());
        // Unknown starting points, a first revision and a gap: everything.
        assert_eq!(changes_between(&log, Some(12), 14), Changed::All);
        assert_eq!(changes_between(&log, None, 14), Changed::All);
        assert_eq!(changes_between(&log, Some(9), 14), Changed::All);
        assert_eq!(changes_between(b"garbage", Some(10), 14), Changed::All);
        // The log keeps the last revisions only.
        for r in 14..40 {
            publish_changes(&mut store, Some(r), r + 1, &one).unwrap();
        }
        let log = store.peek(CHANGES_KEY).unwrap().0;
        assert_eq!(changes_between(&log, Some(10), 40), Changed::All);
        assert!(changes_between(&log, Some(30), 40).contains(7));
        assert!(!changes_between(&log, Some(30), 40).contains(9));
    }

    #[test]
    fn a_complete_catalogue_clears_buckets_it_no_longer_uses() {
        let mut store = MemoryStore::new();
        let full = compile_snapshot(&acme()).unwrap();
        publish_directory(&mut store, &full.directory).unwrap();
        assert!(bucket(&store, BRONZE_KEY).is_some_and(|b| !b.is_empty()));

        let mut without_hobby = acme();
        without_hobby.clients.truncate(1);
        without_hobby.contracts.truncate(1);
        let next = compile_snapshot(&without_hobby).unwrap();
        publish_directory(&mut store, &next.directory).unwrap();
        assert_eq!(bucket(&store, BRONZE_KEY), Some(Vec::new()), "cleared");
        assert!(bucket(&store, GOLD_KEY).is_some_and(|b| !b.is_empty()));
        // Keys are bounded: buckets, manifest, nothing per revision.
        let before = store.len();
        publish_directory(&mut store, &next.directory).unwrap();
        assert_eq!(store.len(), before);
    }

    #[test]
    fn a_page_rewrites_only_the_buckets_it_covers() {
        let mut store = MemoryStore::new();
        publish_directory(&mut store, &compile_snapshot(&acme()).unwrap().directory).unwrap();
        let gold_before = bucket(&store, GOLD_KEY);
        // A page covering the Bronze key's bucket, in which that client is gone.
        let mut page = acme();
        page.clients.clear();
        page.contracts.clear();
        page.buckets = Some(vec![bucket_of(&key_digest(BRONZE_KEY))]);
        publish_directory(&mut store, &compile_snapshot(&page).unwrap().directory).unwrap();
        assert_eq!(bucket(&store, BRONZE_KEY), Some(Vec::new()));
        assert_eq!(bucket(&store, GOLD_KEY), gold_before, "untouched");
    }

    #[test]
    fn published_routes_compile_back_with_their_revision() {
        let mut store = MemoryStore::new();
        let mut s = acme();
        s.revision = 42;
        publish_routes(&mut store, &s).unwrap();
        let (revision, _) = store.peek(REVISION_KEY).unwrap();
        assert_eq!(decode_revision(&revision), Some(42));
        let routes = RoutesDocument::compile(&store.peek(ROUTES_KEY).unwrap().0).unwrap();
        assert_eq!(routes.revision(), 42);
        assert!(routes.route("h", "/orders/v1/1").is_some());
    }

    #[test]
    fn revision_round_trips() {
        assert_eq!(decode_revision(&encode_revision(42)), Some(42));
        assert_eq!(decode_revision(b"short"), None);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(100, 1_000);
        let delays: Vec<u64> = (0..6).map(|_| b.next_delay_ms(u64::MAX)).collect();
        for (d, ceiling) in delays.iter().zip([100, 200, 400, 800, 1_000, 1_000]) {
            assert!(*d >= ceiling / 2 && *d <= ceiling, "{d} vs {ceiling}");
        }
        assert_eq!(b.next_delay_ms(0), 500, "the low end of the jitter");
        b.reset();
        assert!(b.next_delay_ms(7) <= 100);
    }
}

//! Live distribution at the gateway: verifying a fetched snapshot, handing it from the one
//! poller of an Envoy process to every worker through shared data, and retry timing.
//!
//! The poller (a singleton Envoy WasmService on the main thread) verifies the signature and
//! compiles the snapshot before it publishes anything, so workers only ever see snapshots that
//! passed; a rejected one leaves the last good snapshot in force.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fleet::FleetSettings;
use crate::index::{
    compile as compile_snapshot, Compiled, Coverage, Directory, IndexError, RouteIndex,
};
use crate::keycache::Changed;
use crate::keydir::{bucket_key, BUCKETS};
use crate::shared::{SharedStore, StoreError};
use crate::signing::{self, SignatureError, TrustedKeys};
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetSettings>,
}

impl RoutesDocument {
    pub fn compile(bytes: &[u8]) -> Result<RouteIndex, SnapshotRejected> {
        let doc: RoutesDocument =
            serde_json::from_slice(bytes).map_err(|e| SnapshotRejected::BadJson(e.to_string()))?;
        RouteIndex::build(doc.revision, &doc.apis, &doc.issuers)
            .map(|index| index.with_fleet(doc.fleet))
            .map_err(SnapshotRejected::Invalid)
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
        fleet: snapshot.fleet,
    };
    let body = serde_json::to_vec(&doc).map_err(|e| StoreError(e.to_string()))?;
    store.set(ROUTES_KEY, &body, 0)?;
    store.set(REVISION_KEY, &encode_revision(revision), 0)?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRejected {
    MissingSignature,
    /// The signature header is not `t=<unix seconds>,ed25519=<base64>`.
    MalformedSignature,
    /// No trusted public key signed this body with this issue time.
    BadSignature,
    BadJson(String),
    Invalid(IndexError),
    /// Signed too long ago (or, with a clock ahead, too far in the future): a recorded answer
    /// replayed, or clocks that disagree by more than the maximum age.
    Stale {
        issued_at: u64,
        now: u64,
        max_age: u64,
    },
    /// A full revision or page not newer than the revision the gateway holds, or older than
    /// the one it is assembling (`have`: the newer of the two).
    Older {
        revision: u64,
        have: u64,
    },
    /// A delta that does not apply to the revision the gateway holds.
    WrongBase {
        revision: u64,
        base: u64,
        held: Option<u64>,
    },
    /// A page that does not continue the revision being assembled where it left off.
    OutOfSequence {
        revision: u64,
        detail: String,
    },
}

impl SnapshotRejected {
    /// Whether this refusal is the replay guard's (counted as `tollgate_snapshot_replayed_total`
    /// as well): an authentic answer that would take the gateway back, or one too old to trust.
    pub fn is_replay(&self) -> bool {
        matches!(
            self,
            SnapshotRejected::Stale { .. }
                | SnapshotRejected::Older { .. }
                | SnapshotRejected::WrongBase { .. }
                | SnapshotRejected::OutOfSequence { .. }
        )
    }
}

impl fmt::Display for SnapshotRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotRejected::MissingSignature => {
                write!(f, "no {} header", signing::SIGNATURE_HEADER)
            }
            SnapshotRejected::MalformedSignature => write!(
                f,
                "the {} header is not t=<unix seconds>,ed25519=<base64>",
                signing::SIGNATURE_HEADER
            ),
            SnapshotRejected::BadSignature => write!(
                f,
                "not signed by a trusted snapshot key (snapshot_public_keys) for this body and issue time"
            ),
            SnapshotRejected::BadJson(e) => write!(f, "not a snapshot: {e}"),
            SnapshotRejected::Invalid(e) => write!(f, "cannot be enforced: {e}"),
            SnapshotRejected::Stale {
                issued_at,
                now,
                max_age,
            } => {
                if issued_at > now {
                    write!(f, "issued {} s in the future (clocks disagree by more than max_snapshot_age_seconds, {max_age} s)", issued_at - now)
                } else {
                    write!(f, "issued {} s ago, more than max_snapshot_age_seconds ({max_age} s): a replayed answer?", now - issued_at)
                }
            }
            SnapshotRejected::Older { revision, have } => write!(
                f,
                "revision {revision} is not newer than revision {have} this gateway already has: \
                 a replayed answer? (after a control plane's catalogue is reset, restart its gateways)"
            ),
            SnapshotRejected::WrongBase {
                revision,
                base,
                held,
            } => write!(
                f,
                "a delta to revision {revision} from revision {base}, but this gateway holds {}",
                held.map_or("none".to_owned(), |h| format!("revision {h}"))
            ),
            SnapshotRejected::OutOfSequence { revision, detail } => {
                write!(f, "a page of revision {revision} out of sequence: {detail}")
            }
        }
    }
}

/// Checks the signature over the exact body and its issue time against `now` (unix seconds),
/// then parses and compiles it.
pub fn verify_snapshot(
    keys: &TrustedKeys,
    max_age_seconds: u64,
    now: u64,
    body: &[u8],
    signature: Option<&str>,
) -> Result<(Snapshot, Compiled), SnapshotRejected> {
    let signature = signature.ok_or(SnapshotRejected::MissingSignature)?;
    let issued_at = keys.verify(body, signature).map_err(|e| match e {
        SignatureError::Malformed => SnapshotRejected::MalformedSignature,
        SignatureError::NoTrustedKey => SnapshotRejected::BadSignature,
    })?;
    if issued_at.abs_diff(now) > max_age_seconds {
        return Err(SnapshotRejected::Stale {
            issued_at,
            now,
            max_age: max_age_seconds,
        });
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

/// Where a gateway stands in the sequence of revisions, and which answers may move it: never
/// back to a lower revision than it holds, a delta only from exactly the revision it holds,
/// and the pages of a revision only in order from its first bucket to its last, so that an
/// assembled revision is made of that revision's pages alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sequence {
    held: Option<u64>,
    assembling: Option<Assembly>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Assembly {
    revision: u64,
    /// The first bucket the next page must define.
    next_bucket: u32,
}

/// What a snapshot admitted by [`Sequence::admit`] does once published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The revision is complete: publish its routes too; the gateway now holds it.
    Complete(u64),
    /// One more page of a revision still being assembled.
    Page(u64),
}

impl Sequence {
    /// The revision the gateway holds in full (routes published).
    pub fn held(&self) -> Option<u64> {
        self.held
    }

    /// Whether `snapshot` (verified, compiled) may be published now, and what it completes.
    pub fn admit(&self, snapshot: &Snapshot) -> Result<Step, SnapshotRejected> {
        let revision = snapshot.revision;
        let out_of_sequence = |detail: String| SnapshotRejected::OutOfSequence { revision, detail };
        if let Some(base) = snapshot.base_revision {
            if self.assembling.is_some() || self.held != Some(base) || revision <= base {
                return Err(SnapshotRejected::WrongBase {
                    revision,
                    base,
                    held: self.held,
                });
            }
            if snapshot.next.is_some() {
                return Err(out_of_sequence("a delta is one page".into()));
            }
            return Ok(Step::Complete(revision));
        }
        // A full revision, or its first page, must be newer than the one held, and not older
        // than one being assembled (the control plane moves a gateway on to its current
        // revision when the one it was paging through is gone).
        let older = self.held.is_some_and(|h| revision <= h)
            || self.assembling.is_some_and(|a| revision < a.revision);
        let refuse_older = || SnapshotRejected::Older {
            revision,
            have: self
                .held
                .max(self.assembling.map(|a| a.revision))
                .unwrap_or(0),
        };
        let Some(buckets) = &snapshot.buckets else {
            if older {
                return Err(refuse_older());
            }
            if snapshot.next.is_some() {
                return Err(out_of_sequence(
                    "a complete catalogue has no next page".into(),
                ));
            }
            return Ok(Step::Complete(revision));
        };
        let (Some(&first), Some(&last)) = (buckets.first(), buckets.last()) else {
            return Err(out_of_sequence("it defines no buckets".into()));
        };
        if buckets
            .windows(2)
            .any(|w| w[0].checked_add(1) != Some(w[1]))
        {
            return Err(out_of_sequence(
                "its buckets are not one ascending range".into(),
            ));
        }
        if first == 0 {
            if older {
                return Err(refuse_older());
            }
        } else {
            match self.assembling {
                Some(a) if a.revision == revision && a.next_bucket == u32::from(first) => {}
                Some(a) if a.revision > revision => return Err(refuse_older()),
                Some(a) => {
                    return Err(out_of_sequence(format!(
                        "it starts at bucket {first}; revision {} is assembled up to bucket {}",
                        a.revision, a.next_bucket
                    )))
                }
                None => {
                    return Err(out_of_sequence(format!(
                        "it starts at bucket {first}, not at the first page"
                    )))
                }
            }
        }
        match (&snapshot.next, last) {
            (None, u16::MAX) => Ok(Step::Complete(revision)),
            (Some(_), l) if l < u16::MAX => Ok(Step::Page(revision)),
            (None, _) => Err(out_of_sequence(format!(
                "the last page ends at bucket {last}"
            ))),
            (Some(_), _) => Err(out_of_sequence("a page after the last bucket".into())),
        }
    }

    /// Records that the snapshot `admit` answered `step` for was published.
    pub fn advance(&mut self, snapshot: &Snapshot, step: Step) {
        match step {
            Step::Complete(revision) => {
                self.held = Some(revision);
                self.assembling = None;
            }
            Step::Page(revision) => {
                let next_bucket = snapshot
                    .buckets
                    .as_ref()
                    .and_then(|b| b.last())
                    .map_or(0, |l| u32::from(*l) + 1);
                self.assembling = Some(Assembly {
                    revision,
                    next_bucket,
                });
            }
        }
    }
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
    use crate::signing::{body_digest, SnapshotSigningKey};
    use crate::snapshot::SCHEMA_VERSION;
    use crate::testkit::*;

    const NOW: u64 = 1_700_000_000;
    const MAX_AGE: u64 = 300;

    fn key(name: &str) -> SnapshotSigningKey {
        use base64::Engine;
        let seed = [name.as_bytes()[0]; 32];
        SnapshotSigningKey::from_base64(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed),
        )
        .unwrap()
    }

    fn trusted() -> TrustedKeys {
        TrustedKeys::parse(&[key("A").public_key()]).unwrap()
    }

    fn signed(body: &[u8], issued_at: u64) -> String {
        key("A").sign(issued_at, &body_digest(body))
    }

    fn verify(
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<(Snapshot, Compiled), SnapshotRejected> {
        verify_snapshot(&trusted(), MAX_AGE, NOW, body, signature)
    }

    fn body() -> Vec<u8> {
        serde_json::to_vec(&Snapshot::empty(9)).unwrap()
    }

    #[test]
    fn a_signed_snapshot_is_accepted() {
        let b = body();
        let (snapshot, compiled) = verify(&b, Some(&signed(&b, NOW - 5))).unwrap();
        assert_eq!((snapshot.schema, compiled.revision()), (SCHEMA_VERSION, 9));
    }

    #[test]
    fn tampered_unsigned_or_foreign_snapshots_are_rejected() {
        let b = body();
        let sig = signed(&b, NOW);
        assert_eq!(
            verify(&b, None).unwrap_err(),
            SnapshotRejected::MissingSignature
        );
        let foreign = key("B").sign(NOW, &body_digest(&b));
        assert_eq!(
            verify(&b, Some(&foreign)).unwrap_err(),
            SnapshotRejected::BadSignature
        );
        let mut tampered = b.clone();
        let at = tampered.len() - 2;
        tampered[at] = b'9';
        assert_eq!(
            verify(&tampered, Some(&sig)).unwrap_err(),
            SnapshotRejected::BadSignature
        );
        assert_eq!(
            verify(&b, Some("c2lnbmF0dXJl")).unwrap_err(),
            SnapshotRejected::MalformedSignature,
            "an HMAC-style header"
        );
        let garbage = b"<html>oops</html>".to_vec();
        assert!(matches!(
            verify(&garbage, Some(&signed(&garbage, NOW))),
            Err(SnapshotRejected::BadJson(_))
        ));
        let future = br#"{"schema":2,"revision":1}"#.to_vec();
        assert!(matches!(
            verify(&future, Some(&signed(&future, NOW))),
            Err(SnapshotRejected::Invalid(e)) if e.field == "schema"
        ));
    }

    #[test]
    fn an_answer_issued_longer_ago_than_the_maximum_age_is_refused() {
        let b = body();
        assert!(verify(&b, Some(&signed(&b, NOW - MAX_AGE))).is_ok());
        let old = verify(&b, Some(&signed(&b, NOW - MAX_AGE - 1))).unwrap_err();
        assert!(old.is_replay());
        assert_eq!(
            old.to_string(),
            "issued 301 s ago, more than max_snapshot_age_seconds (300 s): a replayed answer?"
        );
        let ahead = verify(&b, Some(&signed(&b, NOW + MAX_AGE + 60))).unwrap_err();
        assert!(
            ahead.to_string().starts_with("issued 360 s in the future"),
            "{ahead}"
        );
    }

    fn full(revision: u64) -> Snapshot {
        Snapshot::empty(revision)
    }

    fn page(revision: u64, buckets: std::ops::RangeInclusive<u16>, last: bool) -> Snapshot {
        Snapshot {
            buckets: Some(buckets.collect()),
            next: (!last).then(|| format!("{revision}.x")),
            ..Snapshot::empty(revision)
        }
    }

    fn delta(base: u64, revision: u64) -> Snapshot {
        Snapshot {
            buckets: Some(vec![7, 300]),
            base_revision: Some(base),
            ..Snapshot::empty(revision)
        }
    }

    /// Admits and publishes `s`; answers the refusal otherwise.
    fn apply(seq: &mut Sequence, s: &Snapshot) -> Result<Step, SnapshotRejected> {
        let step = seq.admit(s)?;
        seq.advance(s, step);
        Ok(step)
    }

    #[test]
    fn a_gateway_never_goes_back_to_an_older_or_the_same_revision() {
        let mut seq = Sequence::default();
        assert_eq!(
            apply(&mut seq, &full(7)),
            Ok(Step::Complete(7)),
            "anything fresh at start"
        );
        assert_eq!(apply(&mut seq, &full(9)), Ok(Step::Complete(9)));
        for old in [full(7), full(9), page(8, 0..=10, false)] {
            let refused = apply(&mut seq, &old).unwrap_err();
            assert!(
                matches!(refused, SnapshotRejected::Older { have: 9, .. }),
                "{refused}"
            );
            assert!(refused.is_replay());
        }
        assert_eq!(seq.held(), Some(9), "still enforcing 9");
    }

    #[test]
    fn a_delta_applies_only_over_the_revision_it_names() {
        let mut seq = Sequence::default();
        assert!(matches!(
            apply(&mut seq, &delta(3, 4)),
            Err(SnapshotRejected::WrongBase { held: None, .. })
        ));
        apply(&mut seq, &full(4)).unwrap();
        assert_eq!(apply(&mut seq, &delta(4, 6)), Ok(Step::Complete(6)));
        for replayed in [delta(4, 6), delta(4, 5), delta(5, 6), delta(6, 6)] {
            let refused = apply(&mut seq, &replayed).unwrap_err();
            assert!(
                matches!(refused, SnapshotRejected::WrongBase { held: Some(6), .. }),
                "{refused}"
            );
        }
        assert_eq!(
            delta(4, 6).base_revision.map(|_| {
                SnapshotRejected::WrongBase {
                    revision: 6,
                    base: 4,
                    held: Some(6),
                }
                .to_string()
            }),
            Some("a delta to revision 6 from revision 4, but this gateway holds revision 6".into())
        );
        assert_eq!(seq.held(), Some(6));
    }

    #[test]
    fn pages_of_a_revision_are_taken_in_order_from_the_first() {
        let mut seq = Sequence::default();
        apply(&mut seq, &full(5)).unwrap();
        // A replayed middle page of a newer revision cannot start an assembly: the buckets
        // before it would stay at revision 5 under revision 8's name.
        assert!(matches!(
            apply(&mut seq, &page(8, 100..=200, false)),
            Err(SnapshotRejected::OutOfSequence { .. })
        ));
        let scattered = Snapshot {
            buckets: Some(vec![0, 1, 5]),
            next: Some("8.1".into()),
            ..Snapshot::empty(8)
        };
        assert!(matches!(
            apply(&mut seq, &scattered),
            Err(SnapshotRejected::OutOfSequence { .. })
        ));
        assert_eq!(apply(&mut seq, &page(8, 0..=99, false)), Ok(Step::Page(8)));
        assert!(
            matches!(
                apply(&mut seq, &page(8, 150..=200, false)),
                Err(SnapshotRejected::OutOfSequence { .. })
            ),
            "a gap"
        );
        assert!(matches!(
            apply(&mut seq, &page(7, 100..=200, false)),
            Err(SnapshotRejected::Older { have: 8, .. })
        ));
        assert!(
            matches!(
                apply(&mut seq, &delta(5, 8)),
                Err(SnapshotRejected::WrongBase { .. })
            ),
            "no delta in the middle of an assembly"
        );
        assert_eq!(
            apply(&mut seq, &page(8, 100..=200, false)),
            Ok(Step::Page(8))
        );
        assert_eq!(seq.held(), Some(5), "enforcing 5 until 8 is complete");
        assert!(
            matches!(
                apply(&mut seq, &page(8, 201..=300, true)),
                Err(SnapshotRejected::OutOfSequence { .. })
            ),
            "the last page must reach the last bucket"
        );
        assert_eq!(
            apply(&mut seq, &page(8, 201..=u16::MAX, true)),
            Ok(Step::Complete(8))
        );
        assert_eq!(seq.held(), Some(8));
    }

    #[test]
    fn a_newer_revision_may_replace_one_being_assembled() {
        let mut seq = Sequence::default();
        apply(&mut seq, &page(3, 0..=9, false)).unwrap();
        assert_eq!(apply(&mut seq, &page(4, 0..=20, false)), Ok(Step::Page(4)));
        assert_eq!(apply(&mut seq, &full(5)), Ok(Step::Complete(5)));
        assert!(apply(&mut seq, &page(4, 21..=u16::MAX, true)).is_err());
    }

    proptest::proptest! {
        /// Whatever a network replays, in any order: the revision held never goes down, and a
        /// revision is only ever completed from its own first page onwards.
        #[test]
        fn the_held_revision_never_goes_down(answers in proptest::collection::vec(
            (0u64..6, 0u8..4, 0u16..4), 1..40)
        ) {
            let mut seq = Sequence::default();
            let mut started: Option<u64> = None;
            for (revision, kind, part) in answers {
                let s = match kind {
                    0 => full(revision),
                    1 => delta(revision.saturating_sub(1 + u64::from(part % 2)), revision),
                    // Four pages of a revision: [0..=99], [100..=199], [200..=299], [300..=MAX].
                    _ => {
                        let lo = part * 100;
                        let last = part == 3;
                        page(revision, lo..=if last { u16::MAX } else { lo + 99 }, last)
                    }
                };
                let before = seq.held();
                if let Ok(step) = apply(&mut seq, &s) {
                    if s.buckets.as_ref().is_some_and(|b| b.first() == Some(&0)) && s.base_revision.is_none() {
                        started = Some(revision);
                    }
                    if let (Step::Complete(r), Some(b)) = (step, before) {
                        proptest::prop_assert!(r > b, "{b} -> {r}");
                    }
                    if let (Step::Complete(r), true) = (step, kind >= 2) {
                        proptest::prop_assert_eq!(started, Some(r), "completed without its first page");
                    }
                }
                if let (Some(b), Some(a)) = (before, seq.held()) {
                    proptest::prop_assert!(a >= b);
                }
            }
        }
    }

    /// The gateway's cost of checking one answer: the signature over the largest body Envoy
    /// delivers (32 MiB), and a whole page of 20,000 keys (the control plane's default page)
    /// verified and compiled. `cargo test --release -p tollgate-core verification_cost --
    /// --ignored --nocapture`; the bounds only catch a gross regression.
    #[test]
    #[ignore = "a measurement: run it in release, alone"]
    fn verification_cost() {
        use std::time::Instant;
        let k = key("A");
        let big = vec![b'x'; 32 * 1024 * 1024];
        let header = k.sign(NOW, &body_digest(&big));
        let started = Instant::now();
        let runs = 5;
        for _ in 0..runs {
            trusted().verify(&big, &header).unwrap();
        }
        let per_32mib = started.elapsed() / runs;

        let mut page = Snapshot::empty(9);
        page.plans = acme().plans;
        page.apis = acme().apis;
        for i in 0..20_000 {
            page.clients.push(crate::snapshot::ClientVersion {
                id: format!("acme/client-{i}/1"),
                keys: vec![crate::snapshot::ApiKeyHash {
                    sha256: crate::keys::key_hash_hex(&format!("key-{i}")),
                    expires_at: None,
                }],
                subjects: Vec::new(),
            });
            page.contracts.push(crate::snapshot::Contract {
                id: i,
                client: format!("acme/client-{i}/1"),
                api: "acme/orders/1".into(),
                plan: "acme/gold/1".into(),
            });
        }
        let body = serde_json::to_vec(&page).unwrap();
        let header = k.sign(NOW, &body_digest(&body));
        let started = Instant::now();
        trusted().verify(&body, &header).unwrap();
        let signature = started.elapsed();
        verify_snapshot(&trusted(), MAX_AGE, NOW, &body, Some(&header)).unwrap();
        let whole = started.elapsed() - signature;
        println!(
            "signature check of a 32 MiB body: {:.1} ms; a 20,000-key page ({:.1} MB): signature {:.1} ms, verify + compile {:.1} ms",
            per_32mib.as_secs_f64() * 1e3,
            body.len() as f64 / 1e6,
            signature.as_secs_f64() * 1e3,
            whole.as_secs_f64() * 1e3,
        );
        assert!(per_32mib.as_secs() < 5, "{per_32mib:?}");
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

//! Live distribution at the gateway: verifying a fetched snapshot, handing it from the one
//! poller of an Envoy process to every worker through shared data, and retry timing.
//!
//! The poller (a singleton Envoy WasmService on the main thread) verifies the signature and
//! compiles the snapshot before it publishes anything, so workers only ever see snapshots that
//! passed; a rejected one leaves the last good snapshot in force.

use std::fmt;

use crate::index::{CatalogueIndex, IndexError};
use crate::signing;
use crate::snapshot::Snapshot;

/// Shared-data key holding the verified snapshot body, prefixed by its revision.
pub const SNAPSHOT_KEY: &str = "tollgate.snapshot";
/// Shared-data key holding only the revision (8 bytes, little endian): what workers poll.
pub const REVISION_KEY: &str = "tollgate.snapshot.revision";

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
) -> Result<(Snapshot, CatalogueIndex), SnapshotRejected> {
    let signature = signature.ok_or(SnapshotRejected::MissingSignature)?;
    if !signing::verify(secret, body, signature) {
        return Err(SnapshotRejected::BadSignature);
    }
    let (snapshot, index) = compile(body)?;
    Ok((snapshot, index))
}

/// Parses and compiles a snapshot body (already verified, or read from shared data).
pub fn compile(body: &[u8]) -> Result<(Snapshot, CatalogueIndex), SnapshotRejected> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let snapshot: Snapshot = serde_path_to_error::deserialize(de)
        .map_err(|e| SnapshotRejected::BadJson(format!("{}: {}", e.path(), e.inner())))?;
    let index = CatalogueIndex::build(&snapshot).map_err(SnapshotRejected::Invalid)?;
    Ok((snapshot, index))
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
    use crate::snapshot::SCHEMA_VERSION;

    fn body() -> Vec<u8> {
        serde_json::to_vec(&Snapshot::empty(9)).unwrap()
    }

    #[test]
    fn a_signed_snapshot_is_accepted() {
        let b = body();
        let sig = signing::sign(b"s3cret", &b);
        let (snapshot, index) = verify_snapshot(b"s3cret", &b, Some(&sig)).unwrap();
        assert_eq!((snapshot.schema, index.revision()), (SCHEMA_VERSION, 9));
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

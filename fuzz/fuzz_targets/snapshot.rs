//! Snapshot parsing and signature verification, as the poller runs them on a fetched body.
//!
//! Input: a body on its own (first byte `{`), signed here with the fixed key so every input
//! reaches the parser and the compiler through the verified path; or `signature\nbody`,
//! verified as sent. Invariants: nothing panics; a body verifies only under its own signature
//! and key, and only within the maximum age; a verified snapshot re-serialises to a body that
//! compiles to the same snapshot, the routes document it publishes to workers compiles too, and
//! the replay guard answers it without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::distribution::{
    compile, publish_directory, publish_routes, verify_snapshot, RoutesDocument, Sequence,
    SnapshotRejected, ROUTES_KEY,
};
use tollgate_core::shared::{MemoryStore, SharedStore};
use tollgate_core::signing::{body_digest, SnapshotSigningKey, TrustedKeys};
use tollgate_fuzz::{snapshot_signing_key, trusted_snapshot_keys, NOW_MS};

const NOW_S: u64 = NOW_MS / 1000;
const MAX_AGE_S: u64 = 300;

fuzz_target!(|data: &[u8]| {
    if data.first() != Some(&b'{') {
        let (signature, body) = match data.iter().position(|b| *b == b'\n') {
            Some(at) => (&data[..at], &data[at + 1..]),
            None => (data, &[][..]),
        };
        let signature = String::from_utf8_lossy(signature);
        let trusted = trusted_snapshot_keys();
        let verified = verify_snapshot(&trusted, MAX_AGE_S, NOW_S, body, Some(&signature));
        if verified.is_ok() {
            let issued_at = trusted.verify(body, &signature).expect("verified");
            assert!(issued_at.abs_diff(NOW_S) <= MAX_AGE_S);
        }
        return;
    }

    let key = snapshot_signing_key();
    let trusted = trusted_snapshot_keys();
    let signature = key.sign(NOW_S, &body_digest(data));
    let other = SnapshotSigningKey::from_base64(&"A".repeat(43)).expect("a valid seed");
    let foreign = TrustedKeys::parse(&[other.public_key()]).expect("a valid public key");
    assert!(matches!(
        verify_snapshot(&foreign, MAX_AGE_S, NOW_S, data, Some(&signature)),
        Err(SnapshotRejected::BadSignature)
    ));
    assert!(matches!(
        verify_snapshot(&trusted, MAX_AGE_S, NOW_S, data, None),
        Err(SnapshotRejected::MissingSignature)
    ));
    let old = key.sign(NOW_S - MAX_AGE_S - 1, &body_digest(data));
    assert!(matches!(
        verify_snapshot(&trusted, MAX_AGE_S, NOW_S, data, Some(&old)),
        Err(SnapshotRejected::Stale { .. })
    ));
    let verified = verify_snapshot(&trusted, MAX_AGE_S, NOW_S, data, Some(&signature));
    assert_eq!(verified.is_ok(), compile(data).is_ok());
    let Ok((snapshot, compiled)) = verified else {
        return;
    };

    let again = serde_json::to_vec(&snapshot).expect("a verified snapshot serialises");
    match compile(&again) {
        Ok((reparsed, _)) => assert_eq!(reparsed, snapshot, "re-serialised snapshot differs"),
        Err(e) => panic!("a verified snapshot re-serialises to one that is refused: {e}"),
    }

    let mut sequence = Sequence::default();
    if let Ok(step) = sequence.admit(&snapshot) {
        sequence.advance(&snapshot, step);
        assert!(sequence.admit(&snapshot).is_err(), "the same answer twice moves nothing");
    }

    let mut store = MemoryStore::new();
    publish_directory(&mut store, &compiled.directory).expect("memory store never fails");
    publish_routes(&mut store, &snapshot).expect("memory store never fails");
    let routes = store
        .get(ROUTES_KEY)
        .expect("memory store never fails")
        .expect("routes were published");
    if let Err(e) = RoutesDocument::compile(&routes.0) {
        panic!("workers refuse the routes of a verified snapshot: {e}");
    }
});

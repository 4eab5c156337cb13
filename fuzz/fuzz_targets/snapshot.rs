//! Snapshot parsing and signature verification, as the poller runs them on a fetched body.
//!
//! Input: a body on its own (first byte `{`), signed here with the fixed secret so every input
//! reaches the parser and the compiler through the verified path; or `signature\nbody`,
//! verified as sent. Invariants: nothing panics; a body verifies only under its own signature
//! and secret; a verified snapshot re-serialises to a body that compiles to the same snapshot,
//! and the routes document it publishes to workers compiles too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::distribution::{
    compile, publish_directory, publish_routes, verify_snapshot, RoutesDocument, SnapshotRejected,
    ROUTES_KEY,
};
use tollgate_core::shared::{MemoryStore, SharedStore};
use tollgate_core::signing;
use tollgate_fuzz::SNAPSHOT_SECRET;

fuzz_target!(|data: &[u8]| {
    if data.first() != Some(&b'{') {
        let (signature, body) = match data.iter().position(|b| *b == b'\n') {
            Some(at) => (&data[..at], &data[at + 1..]),
            None => (data, &[][..]),
        };
        let signature = String::from_utf8_lossy(signature);
        let verified = verify_snapshot(SNAPSHOT_SECRET, body, Some(&signature));
        if verified.is_ok() {
            assert!(signing::verify(SNAPSHOT_SECRET, body, &signature));
        }
        return;
    }

    let signature = signing::sign(SNAPSHOT_SECRET, data);
    assert!(matches!(
        verify_snapshot(b"another secret", data, Some(&signature)),
        Err(SnapshotRejected::BadSignature)
    ));
    assert!(matches!(
        verify_snapshot(SNAPSHOT_SECRET, data, None),
        Err(SnapshotRejected::MissingSignature)
    ));
    let verified = verify_snapshot(SNAPSHOT_SECRET, data, Some(&signature));
    assert_eq!(verified.is_ok(), compile(data).is_ok());
    let Ok((snapshot, compiled)) = verified else {
        return;
    };

    let again = serde_json::to_vec(&snapshot).expect("a verified snapshot serialises");
    match compile(&again) {
        Ok((reparsed, _)) => assert_eq!(reparsed, snapshot, "re-serialised snapshot differs"),
        Err(e) => panic!("a verified snapshot re-serialises to one that is refused: {e}"),
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

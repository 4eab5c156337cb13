//! The stored buckets against the reference: over random edit sequences, every page and delta
//! the store assembles equals, byte for byte, the one cut from a fresh full render of the
//! tables; and a write renders only the buckets it touched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proptest::prelude::*;
use tollgate_core::keys::key_hash_hex;

use super::snapshot::{page_of, paginate, render};
use super::*;

const PAGE_KEYS: usize = 5;
const CLIENTS: usize = 8;

fn open(dir: &Path, page_keys: usize) -> Arc<Store> {
    Store::open(
        &Database::Sqlite(dir.join(DATABASE_FILE)),
        SnapshotSigningKey::from_base64(&URL_SAFE_NO_PAD.encode([7u8; 32])).unwrap(),
        SnapshotOptions {
            page_keys,
            ..SnapshotOptions::default()
        },
        |_| Ok(()),
    )
    .unwrap()
}

/// An org with a plan, two APIs, an external issuer, the own issuer and client versions
/// `c0`…: what the edits below act on.
fn seed(store: &Arc<Store>) {
    store
        .write_blocking(|tx| {
            tx.execute_batch(
                "INSERT INTO orgs VALUES ('acme', 'Acme', 0);
                 INSERT INTO plans VALUES ('acme', 'gold', 'Gold', 0);
                 INSERT INTO plan_versions (org, plan, version, created_at, locked_at)
                     VALUES ('acme', 'gold', '1', 0, 0);
                 INSERT INTO plan_limits VALUES ('acme', 'gold', '1', 'second', 10);
                 INSERT INTO apis VALUES ('acme', 'orders', 'Orders', 0), ('acme', 'billing', 'Billing', 0);
                 INSERT INTO api_versions (org, api, version, status, public, path_prefix, hosts,
                                           forward_api_key, created_at, published_at)
                     VALUES ('acme', 'orders', '1', 'published', 0, '/orders', '[]', 0, 0, 0),
                            ('acme', 'billing', '1', 'published', 0, '/billing', '[]', 0, 0, 0);
                 INSERT INTO api_version_plans VALUES ('acme', 'orders', '1', 'acme', 'gold', '1'),
                                                      ('acme', 'billing', '1', 'acme', 'gold', '1');
                 INSERT INTO issuers (issuer, audiences, jwks, client_claim, created_at, updated_at)
                     VALUES ('https://id.example', '[\"orders\"]', '{\"keys\": []}', 'azp', 0, 0);
                 INSERT INTO own_issuer VALUES (1, 'http://tollgate.test', 'gateway');",
            )?;
            for i in 0..CLIENTS {
                tx.execute(
                    "INSERT INTO clients VALUES ('acme', ?1, ?1, 0)",
                    [format!("c{i}")],
                )?;
                tx.execute(
                    "INSERT INTO client_versions (org, client, version, created_at)
                     VALUES ('acme', ?1, '1', 0)",
                    [format!("c{i}")],
                )?;
            }
            tx.gateway_changed();
            Ok(())
        })
        .unwrap();
}

#[derive(Debug, Clone)]
enum Edit {
    AddKey(usize),
    ExpireKey(usize),
    DeleteKey(usize),
    AddContract(usize, bool),
    DeleteContracts(usize),
    AddCredential(usize),
    DeleteCredential(usize),
    AddSubject(usize),
    DeleteSubject(usize),
    RenameOwnIssuer,
    /// Fleet mode off, or on with one of the fallbacks (a shell-only change).
    SetFleet(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let client = 0..CLIENTS;
    prop_oneof![
        4 => client.clone().prop_map(Edit::AddKey),
        1 => client.clone().prop_map(Edit::ExpireKey),
        2 => client.clone().prop_map(Edit::DeleteKey),
        3 => (client.clone(), any::<bool>()).prop_map(|(c, b)| Edit::AddContract(c, b)),
        1 => client.clone().prop_map(Edit::DeleteContracts),
        2 => client.clone().prop_map(Edit::AddCredential),
        1 => client.clone().prop_map(Edit::DeleteCredential),
        2 => client.clone().prop_map(Edit::AddSubject),
        1 => client.clone().prop_map(Edit::DeleteSubject),
        1 => Just(Edit::RenameOwnIssuer),
        1 => (0..4usize).prop_map(Edit::SetFleet),
    ]
}

/// Applies `edits` as one write, as raw SQL: the triggers, not the call sites, must notice.
fn apply(store: &Arc<Store>, edits: &[Edit], serial: &mut u64) -> u64 {
    let mut names = Vec::new();
    for _ in edits {
        *serial += 1;
        names.push(*serial);
    }
    let edits = edits.to_vec();
    let (_, revision) = store
        .write_blocking(move |tx| {
            for (edit, n) in edits.iter().zip(names) {
                let c = |i: &usize| format!("c{i}");
                match edit {
                    Edit::AddKey(i) => tx.execute(
                        "INSERT INTO api_keys (org, client, version, sha256, created_at)
                         VALUES ('acme', ?1, '1', ?2, 0)",
                        params![c(i), key_hash_hex(&format!("key-{n}"))],
                    )?,
                    Edit::ExpireKey(i) => tx.execute(
                        "UPDATE api_keys SET expires_at = 4102444800 WHERE id =
                             (SELECT MIN(id) FROM api_keys WHERE client = ?1)",
                        [c(i)],
                    )?,
                    Edit::DeleteKey(i) => tx.execute(
                        "DELETE FROM api_keys WHERE id =
                             (SELECT MAX(id) FROM api_keys WHERE client = ?1)",
                        [c(i)],
                    )?,
                    Edit::AddContract(i, billing) => tx.execute(
                        "INSERT OR IGNORE INTO contracts (client_org, client, client_version,
                             api_org, api, api_version, plan_org, plan, plan_version, created_at)
                         VALUES ('acme', ?1, '1', 'acme', ?2, '1', 'acme', 'gold', '1', 0)",
                        params![c(i), if *billing { "billing" } else { "orders" }],
                    )?,
                    Edit::DeleteContracts(i) => {
                        tx.execute("DELETE FROM contracts WHERE client = ?1", [c(i)])?
                    }
                    Edit::AddCredential(i) => tx.execute(
                        "INSERT INTO oauth_credentials (client_id, secret_sha256, client_org,
                             client, client_version, created_at)
                         VALUES (?2, x'00', 'acme', ?1, '1', 0)",
                        params![c(i), format!("cred-{n}")],
                    )?,
                    Edit::DeleteCredential(i) => tx.execute(
                        "DELETE FROM oauth_credentials WHERE client_id =
                             (SELECT MIN(client_id) FROM oauth_credentials WHERE client = ?1)",
                        [c(i)],
                    )?,
                    Edit::AddSubject(i) => tx.execute(
                        "INSERT INTO token_subjects (issuer, value, org, client, version, created_at)
                         VALUES ('https://id.example', ?2, 'acme', ?1, '1', 0)",
                        params![c(i), format!("svc-{n}")],
                    )?,
                    Edit::DeleteSubject(i) => tx.execute(
                        "DELETE FROM token_subjects WHERE value =
                             (SELECT MIN(value) FROM token_subjects WHERE client = ?1)",
                        [c(i)],
                    )?,
                    Edit::RenameOwnIssuer => tx.execute(
                        "UPDATE own_issuer SET issuer = ?1",
                        [format!("http://tollgate-{n}.test")],
                    )?,
                    Edit::SetFleet(0) => tx.execute("DELETE FROM fleet_settings", [])?,
                    Edit::SetFleet(f) => tx.execute(
                        "INSERT OR REPLACE INTO fleet_settings (id, fallback) VALUES (1, ?1)",
                        [["share", "closed", "local"][(f - 1) % 3]],
                    )?,
                };
            }
            // As every call site that changes gateways' view does (a shell-only change, such
            // as renaming the own issuer without credentials, touches no bucket).
            tx.gateway_changed();
            Ok(())
        })
        .unwrap();
    revision
}

/// Per bucket with records, what a page defining only it carries (the reference's view).
fn per_bucket(full: &Snapshot) -> BTreeMap<u16, Vec<u8>> {
    let mut buckets = BTreeSet::new();
    for c in &full.clients {
        buckets.extend(c.keys.iter().map(|k| snapshot::key_bucket(&k.sha256)));
        buckets.extend(
            c.subjects
                .iter()
                .map(|s| snapshot::subject_bucket(&s.issuer, &s.value)),
        );
    }
    buckets
        .into_iter()
        .map(|b| {
            let page = page_of(full, &BTreeSet::from([b]));
            (
                b,
                serde_json::to_vec(&(page.clients, page.contracts)).unwrap(),
            )
        })
        .collect()
}

fn changed(before: &Snapshot, after: &Snapshot) -> BTreeSet<u16> {
    let (a, b) = (per_bucket(before), per_bucket(after));
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(k) != b.get(k))
        .copied()
        .collect()
}

/// The reference pages of a revision, with their cursors, as bytes.
fn reference_pages(full: &Snapshot, page_keys: usize) -> Vec<Vec<u8>> {
    let mut pages = paginate(full, page_keys);
    let count = pages.len();
    for (i, page) in pages.iter_mut().enumerate() {
        page.next = (i + 1 < count).then(|| page_cursor(full.revision, i + 1));
    }
    pages
        .iter()
        .map(|p| serde_json::to_vec(p).unwrap())
        .collect()
}

fn reference_delta(full: &Snapshot, since: u64, buckets: &BTreeSet<u16>) -> Vec<u8> {
    let mut delta = page_of(full, buckets);
    delta.base_revision = Some(since);
    serde_json::to_vec(&delta).unwrap()
}

fn stored_pages(store: &Store, revision: u64) -> Vec<Vec<u8>> {
    let mut pages = Vec::new();
    loop {
        match store.page_blocking(revision, pages.len()).unwrap() {
            PageAnswer::Page(p) => pages.push(p.body.to_vec()),
            PageAnswer::NoSuchPage => return pages,
            PageAnswer::Gone => panic!("revision {revision} gone"),
        }
    }
}

struct Held {
    full: Snapshot,
    pages: Vec<Vec<u8>>,
    /// The reference's buckets changed from the revision before.
    changed: BTreeSet<u16>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn pages_and_deltas_from_stored_buckets_equal_a_fresh_full_render(
        writes in proptest::collection::vec(proptest::collection::vec(edit(), 1..4), 1..14)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), PAGE_KEYS);
        seed(&store);
        let mut serial = 0u64;
        let mut history: BTreeMap<u64, Held> = BTreeMap::new();
        let revision = store.snapshot().revision;
        let full = store.read_blocking(|conn| render(conn, revision)).unwrap();
        history.insert(revision, Held { pages: reference_pages(&full, PAGE_KEYS), full, changed: BTreeSet::new() });

        for edits in &writes {
            let revision = apply(&store, edits, &mut serial);
            let full = store.read_blocking(|conn| render(conn, revision)).unwrap();
            let pages = reference_pages(&full, PAGE_KEYS);
            prop_assert_eq!(&stored_pages(&store, revision), &pages, "pages of revision {}", revision);

            let previous = &history[&(revision - 1)];
            let step = changed(&previous.full, &full);
            let records = page_of(&full, &step).clients.iter().map(|c| c.keys.len() + c.subjects.len()).sum::<usize>();
            let cut = store.snapshot().delta.clone();
            if records <= PAGE_KEYS {
                let cut = cut.expect("a delta within a page is cut by the write");
                prop_assert_eq!(cut.body.to_vec(), reference_delta(&full, revision - 1, &step));
            } else {
                prop_assert!(cut.is_none());
            }
            // Older revisions: deltas from the change log, and their pages still whole.
            let mut since_then = step.clone();
            for (&since, held) in history.iter().rev() {
                let from_log = store.delta_blocking(since, revision).unwrap();
                let wanted = page_of(&full, &since_then);
                if wanted.clients.iter().map(|c| c.keys.len() + c.subjects.len()).sum::<usize>() <= PAGE_KEYS {
                    let from_log = from_log.expect("delta from the change log");
                    prop_assert_eq!(from_log.body.to_vec(), reference_delta(&full, since, &since_then), "delta {} → {}", since, revision);
                } else {
                    prop_assert!(from_log.is_none());
                }
                prop_assert_eq!(&stored_pages(&store, since), &held.pages, "pages of revision {} after {}", since, revision);
                since_then.extend(held.changed.iter().copied());
            }
            history.insert(revision, Held { full, pages, changed: step });
        }
        let outcome = store.check().unwrap();
        prop_assert!(outcome.drifted.is_empty() && outcome.refused.is_empty(), "{:?}", outcome);
    }
}

#[test]
fn a_write_touching_one_bucket_renders_only_that_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), PAGE_KEYS);
    seed(&store);
    let mut serial = 0;
    for i in 0..CLIENTS {
        apply(
            &store,
            &[
                Edit::AddKey(i),
                Edit::AddKey(i),
                Edit::AddContract(i, false),
            ],
            &mut serial,
        );
    }
    let before = store.figures.buckets_rendered.load(Ordering::Relaxed);
    // A client version with one key gets a contract: its key's bucket, and only it.
    apply(&store, &[Edit::AddKey(0)], &mut serial);
    let rendered = store.figures.buckets_rendered.load(Ordering::Relaxed) - before;
    assert_eq!(rendered, 1, "adding one key renders its bucket");
    let before = store.figures.buckets_rendered.load(Ordering::Relaxed);
    apply(&store, &[Edit::AddContract(3, true)], &mut serial);
    let rendered = store.figures.buckets_rendered.load(Ordering::Relaxed) - before;
    assert_eq!(
        rendered, 2,
        "a contract of a client version with two keys renders their two buckets"
    );
}

#[test]
fn a_bucket_changed_behind_the_stores_back_is_found_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), PAGE_KEYS);
    seed(&store);
    let mut serial = 0;
    apply(
        &store,
        &[Edit::AddKey(1), Edit::AddContract(1, false)],
        &mut serial,
    );
    // A stored version no longer what the tables say (a bug, or a hand edit of the file).
    store
        .write_blocking(|tx| {
            tx.execute("UPDATE snapshot_buckets SET body = CAST('{\"clients\":[],\"contracts\":[]}' AS BLOB), records = 0 WHERE superseded IS NULL", [])?;
            Ok(())
        })
        .unwrap();
    let outcome = store.check().unwrap();
    assert_eq!(outcome.drifted.len(), 1);
    assert_eq!(store.figures.drift_repaired.load(Ordering::Relaxed), 1);
    let full = store
        .read_blocking(|conn| render(conn, outcome.revision))
        .unwrap();
    assert_eq!(
        stored_pages(&store, outcome.revision),
        reference_pages(&full, PAGE_KEYS)
    );
    assert!(store.check().unwrap().drifted.is_empty());
}

#[test]
fn reopening_reads_the_stored_buckets_and_builds_them_only_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), PAGE_KEYS);
    seed(&store);
    let mut serial = 0;
    for i in 0..CLIENTS {
        apply(
            &store,
            &[
                Edit::AddKey(i),
                Edit::AddSubject(i),
                Edit::AddContract(i, true),
            ],
            &mut serial,
        );
    }
    let revision = store.snapshot().revision;
    let pages = stored_pages(&store, revision);
    drop(store);
    let reopened = open(dir.path(), PAGE_KEYS);
    assert_eq!(reopened.snapshot().revision, revision);
    assert_eq!(reopened.figures.buckets_rendered.load(Ordering::Relaxed), 0);
    assert_eq!(stored_pages(&reopened, revision), pages);
    drop(reopened);
    // Stored buckets lost (an upgrade from before them): rebuilt from the tables, same pages.
    let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    conn.execute_batch("DELETE FROM snapshot_buckets; UPDATE snapshot_state SET revision = NULL;")
        .unwrap();
    drop(conn);
    let rebuilt = open(dir.path(), PAGE_KEYS);
    assert_eq!(stored_pages(&rebuilt, revision), pages);
}

#[test]
fn concurrent_writes_commit_together_and_a_refused_one_rolls_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), PAGE_KEYS);
    seed(&store);
    let before = store.snapshot().revision;
    let outcomes: Vec<Result<u64, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..24)
            .map(|i| {
                let store = Arc::clone(&store);
                scope.spawn(move || {
                    store
                        .write_blocking(move |tx| {
                            tx.execute(
                                "INSERT INTO api_keys (org, client, version, sha256, created_at)
                                 VALUES ('acme', ?1, '1', ?2, 0)",
                                params![
                                    format!("c{}", i % CLIENTS),
                                    key_hash_hex(&format!("group-{i}"))
                                ],
                            )?;
                            tx.gateway_changed();
                            if i % 7 == 3 {
                                return Err(Error::conflict("refused-for-the-test", "no"));
                            }
                            Ok(i)
                        })
                        .map(|(_, revision)| revision)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused = outcomes.iter().filter(|o| o.is_err()).count();
    assert_eq!(
        refused,
        (0..24).filter(|i| i % 7 == 3).count(),
        "{outcomes:?}"
    );
    let revisions: BTreeSet<u64> = outcomes.iter().filter_map(|o| o.clone().ok()).collect();
    println!(
        "24 concurrent writes committed as {} revision(s) after {before}",
        revisions.len()
    );
    let keys: i64 = store
        .read_blocking(|conn| conn.query_row("SELECT COUNT(*) FROM api_keys", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(
        keys as usize,
        24 - refused,
        "a refused write leaves nothing behind"
    );
    let revision = store.snapshot().revision;
    assert_eq!(Some(&revision), revisions.iter().max());
    let full = store.read_blocking(|conn| render(conn, revision)).unwrap();
    assert_eq!(
        stored_pages(&store, revision),
        reference_pages(&full, PAGE_KEYS)
    );
    assert!(store.check().unwrap().drifted.is_empty());
}

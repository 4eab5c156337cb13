//! API keys: generated once, stored and distributed only as SHA-256, rotated with a grace
//! period that gateways see as `expires_at`.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{file_contains, Server};
use serde_json::{json, Value};
use tollgate_core::keys::key_hash_hex;

const VERSION: &str = "/v1/orgs/acme/clients/mobile/versions/1";

fn keys_in_snapshot(s: &Server) -> Value {
    let snapshot = s.snapshot().json();
    snapshot["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "acme/mobile/1")
        .unwrap()["keys"]
        .clone()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn key_is_long_url_safe_and_only_its_hash_reaches_the_snapshot() {
    let s = Server::start();
    let key = s.seed();
    let random_part = key.strip_prefix("tg_").expect("keys carry the tg_ prefix");
    // 24 random bytes, base64url: 192 bits.
    assert_eq!(random_part.len(), 32);
    assert!(random_part
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(
        keys_in_snapshot(&s),
        json!([{"sha256": key_hash_hex(&key)}])
    );
    let shown = s.get(VERSION);
    assert!(!shown.body.contains(&key), "GET echoed the key");
    assert!(!shown.body.contains(&key_hash_hex(&key)));
}

#[test]
fn plaintext_key_is_nowhere_in_the_database_or_the_logs() {
    let s = Server::start();
    let first = s.seed();
    let rotated = Server::ok(s.post(
        &format!("{VERSION}/keys/rotate"),
        json!({"grace_seconds": 600}),
    ));
    let second = rotated["api_key"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    Server::ok(s.get(VERSION));
    if let Some(db) = common::backend_database_name(&s.data_dir) {
        let dump = common::postgres_server::shared().dump(&db);
        for key in [&first, &second] {
            assert!(!dump.contains(key.as_str()), "{key} found in database {db}");
        }
        assert!(
            dump.contains(&key_hash_hex(&first)),
            "the hash itself should be stored"
        );
    }
    for file in ["tollgate.db", "tollgate.db-wal", "tollgate.db-shm"] {
        if !s.data_dir.join(file).exists() && !common::on_sqlite("no SQLite files to search") {
            continue;
        }
        let path = s.data_dir.join(file);
        for key in [&first, &second] {
            assert!(
                !file_contains(&path, key.as_bytes()),
                "{key} found in {file}"
            );
        }
    }
    assert!(
        !common::on_sqlite("the hash is looked for in the dump above")
            || file_contains(
                &s.data_dir.join("tollgate.db-wal"),
                key_hash_hex(&first).as_bytes()
            )
            || file_contains(
                &s.data_dir.join("tollgate.db"),
                key_hash_hex(&first).as_bytes()
            ),
        "the hash itself should be stored"
    );
    let logs = s.logs();
    assert!(
        logs.contains("DEBUG") || logs.contains("INFO"),
        "no logs captured"
    );
    assert!(
        !logs.contains(&first) && !logs.contains(&second),
        "a key was logged"
    );
}

#[test]
fn rotation_grace_shows_as_expires_at_in_the_snapshot() {
    let s = Server::start();
    let old = s.seed();
    let before = unix_now();
    let rotated = Server::ok(s.post(
        &format!("{VERSION}/keys/rotate"),
        json!({"grace_seconds": 3600}),
    ));
    let new = rotated["api_key"].as_str().unwrap();
    let expires_at = rotated["previous_key_expires_at"].as_u64().unwrap();
    assert!((before + 3600..=unix_now() + 3600).contains(&expires_at));
    let keys = keys_in_snapshot(&s);
    assert_eq!(
        keys,
        json!([
            {"sha256": key_hash_hex(&old), "expires_at": expires_at},
            {"sha256": key_hash_hex(new)},
        ])
    );
    let info = Server::ok(s.get(VERSION));
    assert_eq!(info["keys"][0]["expires_at"], json!(expires_at));
    assert_eq!(info["keys"][1]["expires_at"], Value::Null);
}

#[test]
fn rotation_without_grace_drops_the_old_key_at_once() {
    let s = Server::start();
    let old = s.seed();
    let rotated = Server::ok(s.post(
        &format!("{VERSION}/keys/rotate"),
        json!({"grace_seconds": 0}),
    ));
    let new = rotated["api_key"].as_str().unwrap();
    assert_eq!(keys_in_snapshot(&s), json!([{"sha256": key_hash_hex(new)}]));
    assert!(!s.snapshot().body.contains(&key_hash_hex(&old)));
}

#[test]
fn grace_longer_than_thirty_days_is_422() {
    let s = Server::start();
    s.seed();
    let answer = s.post(
        &format!("{VERSION}/keys/rotate"),
        json!({"grace_seconds": 31 * 24 * 3600}),
    );
    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.problem_type(),
        "urn:tollgate:problem:invalid-grace-period"
    );
}

#[test]
fn new_client_version_gets_a_new_key() {
    let s = Server::start();
    let first = s.seed();
    let created = Server::ok(s.post(
        "/v1/orgs/acme/clients/mobile/versions",
        json!({"version": "2"}),
    ));
    let second = created["api_key"].as_str().unwrap();
    assert_ne!(first, second);
    let again = s.post(
        "/v1/orgs/acme/clients/mobile/versions",
        json!({"version": "2"}),
    );
    assert_eq!(again.status, 409);
}

#[test]
fn every_rotation_bounds_every_older_key_by_its_grace() {
    let s = Server::start();
    let first = s.seed();
    let month = Server::ok(s.post(
        &format!("{VERSION}/keys/rotate"),
        json!({"grace_seconds": 30 * 24 * 3600}),
    ));
    let second = month["api_key"].as_str().unwrap().to_owned();
    let before = unix_now();
    let now = Server::ok(s.post(
        &format!("{VERSION}/keys/rotate"),
        json!({"grace_seconds": 0}),
    ));
    let third = now["api_key"].as_str().unwrap();
    // The answer tells the truth: every earlier key ends now, and the snapshot agrees.
    let until = now["previous_key_expires_at"].as_u64().unwrap();
    assert!((before..=unix_now()).contains(&until), "{until}");
    assert_eq!(
        keys_in_snapshot(&s),
        json!([{"sha256": key_hash_hex(third)}]),
        "the first key, still in its 30-day grace, must not survive a rotation with grace 0"
    );
    let snapshot = s.snapshot().body;
    assert!(!snapshot.contains(&key_hash_hex(&first)));
    assert!(!snapshot.contains(&key_hash_hex(&second)));
}

#[test]
fn a_later_longer_grace_does_not_extend_an_earlier_shorter_one() {
    let s = Server::start();
    let first = s.seed();
    Server::ok(s.post(
        &format!("{VERSION}/keys/rotate"),
        json!({"grace_seconds": 600}),
    ));
    Server::ok(s.post(
        &format!("{VERSION}/keys/rotate"),
        json!({"grace_seconds": 3600}),
    ));
    let keys = keys_in_snapshot(&s);
    let first_entry = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["sha256"] == key_hash_hex(&first))
        .unwrap();
    // Still its own 600 s, not the later 3600 s.
    assert!(first_entry["expires_at"].as_u64().unwrap() <= unix_now() + 600);
}

#[test]
fn one_key_can_be_revoked_at_once_through_the_api_and_the_cli() {
    let s = Server::start();
    let first = s.seed();
    let rotated = Server::ok(s.post(
        &format!("{VERSION}/keys/rotate"),
        json!({"grace_seconds": 30 * 24 * 3600}),
    ));
    let second = rotated["api_key"].as_str().unwrap().to_owned();
    let listed = Server::ok(s.get(VERSION));
    let ids: Vec<i64> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[1], rotated["key_id"].as_i64().unwrap());
    // Listings name keys by id: no key and no hash.
    assert!(!listed.to_string().contains(&key_hash_hex(&first)));

    let before = s.revision();
    let revoked = Server::ok(s.act(&format!("{VERSION}/keys/{}/revoke", ids[0])));
    assert_eq!(revoked["id"], json!(ids[0]));
    assert!(revoked["expires_at"].as_u64().unwrap() <= unix_now());
    assert!(s.revision() > before);
    assert_eq!(
        keys_in_snapshot(&s),
        json!([{"sha256": key_hash_hex(&second)}])
    );

    let unknown = s.act(&format!("{VERSION}/keys/999999/revoke"));
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(unknown.problem_type(), "urn:tollgate:problem:not-found");

    let out = s.cli(&[
        "client",
        "version",
        "revoke-key",
        "acme/mobile/1",
        "--key-id",
        &ids[1].to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("revoked key {}", ids[1])));
    // With no key (and no token subject) left, nothing can act as the client version: gateways
    // no longer get it at all.
    let snapshot = s.snapshot().json();
    assert!(
        !snapshot["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "acme/mobile/1"),
        "{snapshot}"
    );
}

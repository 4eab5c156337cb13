//! Two `tollgate serve` replicas on one real PostgreSQL (a private cluster): what either
//! acknowledges, the other serves; conflicting writes on both end as on one; a replica that
//! lags never answers a gateway an older revision than it holds; every replica signs tokens
//! with the same keys, kept sealed in the database, and one without the shared secrets refuses
//! to start.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{postgres_server, Server, BIN, SECRETS_KEY_ENV};
use serde_json::{json, Value};
use tollgate_core::snapshot::Issuer;
use tollgate_core::token::TrustedIssuers;

/// Shared secrets: replicas must agree on them (issue 14: from the environment, not each data
/// directory).
const ADMIN_TOKEN: &str = "replicas-admin-token-0123456789abcdef";
const GATEWAY_TOKEN: &str = "replicas-gateway-token-0123456789abcdef";
/// 32 bytes, base64url.
const SNAPSHOT_KEY: &str = "cmVwbGljYXMtc25hcHNob3Qta2V5LTAxMjM0NTY3ODk";
const SECRETS_KEY: &str = "replicas-secrets-key-0123456789abcdef";

fn replicas(database: &str) -> (Server, Server) {
    replicas_on(&postgres_server::shared().create_database(database))
}

/// Two replicas on the database at `url`, with the shared secrets.
fn replicas_on(url: &str) -> (Server, Server) {
    let env = [
        ("TOLLGATE_DATABASE_URL", url),
        ("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TOLLGATE_GATEWAY_TOKEN", GATEWAY_TOKEN),
        ("TOLLGATE_SNAPSHOT_SIGNING_KEY", SNAPSHOT_KEY),
        (SECRETS_KEY_ENV, SECRETS_KEY),
    ];
    (Server::start_with_env(&env), Server::start_with_env(&env))
}

/// `tollgate serve` on `url` with exactly `env` (beyond the database), expected to refuse to
/// start: its exit status and standard error.
fn refused_start(url: &str, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .env_remove("TOLLGATE_GATEWAY_TOKEN")
        .env_remove("TOLLGATE_SNAPSHOT_SIGNING_KEY")
        .env_remove(SECRETS_KEY_ENV)
        .env_remove("TOLLGATE_DATA_DIR")
        .env("TOLLGATE_DATABASE_URL", url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the replica started; stdout:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A token from `/oauth/token` of `server` for the credentials `id`/`secret`.
fn token(server: &Server, id: &str, secret: &str) -> String {
    let answer = server.request(
        "POST",
        "/oauth/token",
        None,
        Some(&format!(
            "grant_type=client_credentials&client_id={id}&client_secret={secret}"
        )),
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["access_token"].as_str().unwrap().to_owned()
}

/// Verifies `token` as a gateway of `server` does: against the issuers its snapshot publishes.
fn verifies_at_gateway(server: &Server, token: &str) -> bool {
    let issuers: Vec<Issuer> =
        serde_json::from_value(server.snapshot().json()["issuers"].clone()).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    TrustedIssuers::build(&issuers)
        .unwrap()
        .verify(token, now_ms)
        .is_ok()
}

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    serde_json::from_slice::<Value>(&header).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// How long `b` takes to serve the revision `a` just committed.
fn propagation(a: &Server, b: &Server) -> Duration {
    let revision = a.revision();
    let started = Instant::now();
    common::wait_until(
        Duration::from_secs(10),
        "the other replica's revision",
        || b.revision() >= revision,
    );
    started.elapsed()
}

#[test]
fn a_write_on_either_replica_is_served_by_the_other() {
    let (a, b) = replicas("replicas_follow");
    a.seed();
    let a_to_b = propagation(&a, &b);
    Server::ok(b.post("/v1/orgs/acme/clients", json!({"id": "web"})));
    let created = Server::ok(b.post(
        "/v1/orgs/acme/clients/web/versions",
        json!({"version": "1"}),
    ));
    assert!(created["api_key"].is_string());
    let b_to_a = propagation(&b, &a);
    println!("propagation between replicas: a→b {a_to_b:?}, b→a {b_to_a:?}");
    // Both serve the same bytes for the same revision (rendering is deterministic).
    let (from_a, from_b) = (a.snapshot(), b.snapshot());
    assert_eq!(from_a.body, from_b.body);
    // Either replica lists what the other created.
    assert_eq!(Server::ok(a.get("/v1/orgs/acme/clients/web"))["id"], "web");
}

#[test]
fn a_long_poll_on_one_replica_wakes_for_a_write_on_the_other() {
    let (a, b) = replicas("replicas_long_poll");
    a.seed();
    propagation(&a, &b);
    let revision = b.revision();
    let poll = std::thread::spawn({
        let path = format!("/v1/snapshot?since={revision}&wait=20");
        let base = b.base.clone();
        move || {
            let started = Instant::now();
            let answer = ureq::get(format!("{base}{path}"))
                .header("authorization", format!("Bearer {GATEWAY_TOKEN}"))
                .call()
                .unwrap();
            (answer.status().as_u16(), started.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let wrote = Instant::now();
    Server::ok(a.post("/v1/orgs/acme/clients", json!({"id": "web"})));
    Server::ok(a.post(
        "/v1/orgs/acme/clients/web/versions",
        json!({"version": "1"}),
    ));
    let (status, waited) = poll.join().unwrap();
    println!(
        "long poll on b woken {:?} after the write on a (waited {waited:?})",
        wrote.elapsed()
    );
    assert_eq!(status, 200);
    assert!(waited < Duration::from_secs(15), "not woken: {waited:?}");
}

#[test]
fn a_gateway_ahead_of_a_replica_is_never_answered_an_older_revision() {
    let (a, _b) = replicas("replicas_ahead");
    a.seed();
    let current = a.revision();
    let ahead = current + 5;
    let answer = a.request(
        "GET",
        &format!("/v1/snapshot?since={ahead}"),
        Some(GATEWAY_TOKEN),
        None,
        &[],
    );
    assert_eq!(answer.status, 304, "{}", answer.body);
    assert_eq!(
        answer.header("etag").as_deref(),
        Some(&*format!("\"{ahead}\""))
    );
}

#[test]
fn conflicting_writes_on_both_replicas_end_as_on_one() {
    let (a, b) = replicas("replicas_conflict");
    Server::ok(a.post("/v1/orgs", json!({"id": "acme", "name": "Acme"})));
    let (ra, rb) = std::thread::scope(|scope| {
        let on = |s: &Server| {
            s.request(
                "POST",
                "/v1/orgs/acme/plans",
                Some(ADMIN_TOKEN),
                Some(&json!({"id": "gold"}).to_string()),
                &[],
            )
        };
        let (a, b) = (&a, &b);
        let ta = scope.spawn(move || on(a));
        let tb = scope.spawn(move || on(b));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mut statuses = [ra.status, rb.status];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "{} / {}", ra.body, rb.body);
    let loser = if ra.status == 409 { &ra } else { &rb };
    assert_eq!(loser.problem_type(), "urn:tollgate:problem:already-exists");
    let plans = Server::ok(b.get("/v1/orgs/acme/plans"));
    assert_eq!(plans["items"].as_array().unwrap().len(), 1, "{plans}");
}

#[test]
fn tokens_from_either_replica_verify_and_a_rotation_on_one_signs_on_the_other() {
    let (a, b) = replicas("replicas_tokens");
    a.seed();
    let issued = Server::ok(a.act("/v1/orgs/acme/clients/mobile/versions/1/credentials"));
    let (id, secret) = (
        issued["client_id"].as_str().unwrap(),
        issued["client_secret"].as_str().unwrap(),
    );
    propagation(&a, &b);
    let (from_a, from_b) = (token(&a, id, secret), token(&b, id, secret));
    assert_eq!(kid_of(&from_a), kid_of(&from_b), "one signing key for all");
    for (server, token) in [(&a, &from_a), (&a, &from_b), (&b, &from_a), (&b, &from_b)] {
        assert!(verifies_at_gateway(server, token));
    }
    let rotated = Server::ok(a.act("/v1/token-keys/rotate"));
    let new_kid = rotated["kid"].as_str().unwrap();
    propagation(&a, &b);
    let after = token(&b, id, secret);
    assert_eq!(kid_of(&after), new_kid, "b signs with the key a rotated to");
    assert!(verifies_at_gateway(&a, &after) && verifies_at_gateway(&b, &after));
    // No private key in either data directory; in the database only sealed.
    for server in [&a, &b] {
        assert!(!server.data_dir.join("token-signing-keys").exists());
    }
    let url = postgres_server::shared().url("replicas_tokens");
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let sealed: Vec<Option<String>> = db
        .query("SELECT sealed FROM token_keys", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sealed.len(), 2, "the rotated key and the current one");
    assert!(sealed
        .iter()
        .all(|s| s.as_deref().is_some_and(|s| s.starts_with("v1."))));
}

#[test]
fn a_replica_without_the_shared_secrets_refuses_to_start_naming_them() {
    let url = postgres_server::shared().create_database("replicas_no_secrets");
    let (status, stderr) = refused_start(&url, &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    assert!(!status.success());
    for missing in [
        "TOLLGATE_GATEWAY_TOKEN",
        "TOLLGATE_SNAPSHOT_SIGNING_KEY",
        SECRETS_KEY_ENV,
    ] {
        assert!(stderr.contains(missing), "{missing} not named: {stderr}");
    }
    assert!(!stderr.contains("TOLLGATE_ADMIN_TOKEN,"), "{stderr}");
}

#[test]
fn a_replica_given_another_secrets_key_refuses_to_start() {
    let (a, _b) = replicas("replicas_other_key");
    let url = postgres_server::shared().url("replicas_other_key");
    let (status, stderr) = refused_start(
        &url,
        &[
            ("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("TOLLGATE_GATEWAY_TOKEN", GATEWAY_TOKEN),
            ("TOLLGATE_SNAPSHOT_SIGNING_KEY", SNAPSHOT_KEY),
            (SECRETS_KEY_ENV, "another-secrets-key-0123456789abcdef"),
        ],
    );
    assert!(!status.success());
    assert!(
        stderr.contains(SECRETS_KEY_ENV) && stderr.contains("same"),
        "{stderr}"
    );
    // The running replicas are unaffected: still one current key, still signing.
    assert_eq!(
        Server::ok(a.get("/v1/token-keys"))
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn while_postgresql_is_down_replicas_say_degraded_and_serve_what_they_hold() {
    // A cluster of its own: this test stops it.
    let mut cluster = postgres_server::PostgresServer::start();
    let (a, b) = replicas_on(&cluster.create_database("replicas_down"));
    a.seed();
    propagation(&a, &b);
    let held = b.revision();
    let health = |s: &Server| s.request("GET", "/healthz", None, None, &[]);
    assert_eq!(health(&a).json()["status"], "ok");

    cluster.stop();
    let stopped = Instant::now();
    let both_answer = |status: u16, deadline: u64, what: &str| {
        for s in [&a, &b] {
            common::wait_until(Duration::from_secs(deadline), what, || {
                health(s).status == status
            });
        }
    };
    both_answer(503, 20, "/healthz to say degraded");
    println!(
        "both replicas degraded {:?} after PostgreSQL stopped",
        stopped.elapsed()
    );
    let degraded = health(&b);
    assert_eq!(degraded.json()["status"], "degraded", "{}", degraded.body);
    assert_eq!(degraded.json()["revision"], held);
    assert!(degraded.json()["detail"].is_string(), "{}", degraded.body);
    // A gateway holding the revision is told it is current; a write fails, naming storage.
    let poll = b.request(
        "GET",
        &format!("/v1/snapshot?since={held}"),
        Some(GATEWAY_TOKEN),
        None,
        &[],
    );
    assert_eq!(poll.status, 304, "{}", poll.body);
    let refused = a.post("/v1/orgs", json!({"id": "beta", "name": "Beta"}));
    assert!(refused.status >= 500, "{}", refused.body);

    cluster.restart();
    let restarted = Instant::now();
    both_answer(200, 30, "/healthz to say ok again");
    println!(
        "both replicas ok {:?} after PostgreSQL restarted",
        restarted.elapsed()
    );
    let written = b.post("/v1/orgs", json!({"id": "beta", "name": "Beta"}));
    assert_eq!(
        written.status,
        201,
        "{}\n{}",
        written.body,
        b.logs()
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n")
    );
    propagation(&b, &a);
    assert_eq!(Server::ok(a.get("/v1/orgs/beta"))["id"], "beta");
}

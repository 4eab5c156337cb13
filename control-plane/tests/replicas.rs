//! Two `tollgate serve` replicas on one real PostgreSQL (a private cluster): what either
//! acknowledges, the other serves; conflicting writes on both end as on one; a replica that
//! lags never answers a gateway an older revision than it holds.

mod common;

use std::time::{Duration, Instant};

use common::{postgres_server, Server};
use serde_json::json;

/// Shared secrets: replicas must agree on them (issue 14: from the environment, not each data
/// directory).
const ADMIN_TOKEN: &str = "replicas-admin-token-0123456789abcdef";
const GATEWAY_TOKEN: &str = "replicas-gateway-token-0123456789abcdef";
/// 32 bytes, base64url.
const SNAPSHOT_KEY: &str = "cmVwbGljYXMtc25hcHNob3Qta2V5LTAxMjM0NTY3ODk";

fn replicas(database: &str) -> (Server, Server) {
    let url = postgres_server::shared().create_database(database);
    let env = [
        ("TOLLGATE_DATABASE_URL", url.as_str()),
        ("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TOLLGATE_GATEWAY_TOKEN", GATEWAY_TOKEN),
        ("TOLLGATE_SNAPSHOT_SIGNING_KEY", SNAPSHOT_KEY),
    ];
    (Server::start_with_env(&env), Server::start_with_env(&env))
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

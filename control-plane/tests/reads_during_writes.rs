//! Reads never wait for writes: `/healthz`, management GETs (admin or management token) and
//! `/oauth/token` answer in milliseconds while gateway-visible writes, each adding a thousand
//! client versions with keys and contracts (rendering a thousand key-directory buckets), run
//! back to back.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{json, Value};

/// Client versions with a key and a contract in the catalogue before the storm.
const CLIENTS: usize = 2_000;
const WRITERS: usize = 2;
const WRITES_PER_WRITER: usize = 3;
/// Client versions each storm write adds: a write costs what it changes, so a write that
/// changes this much takes a clearly measurable time in a debug build.
const PER_WRITE: usize = 1_000;

fn clients(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"id": format!("{prefix}{i}"), "versions": [{"version": "1",
                "contracts": [{"api": "acme/orders/1", "plan": "acme/gold/1"}]}]})
        })
        .collect()
}

fn catalogue() -> Value {
    json!({"orgs": [{
        "id": "acme",
        "plans": [{"id": "gold", "versions": [
            {"version": "1", "limits": [{"requests": 1000, "per": "minute"}], "locked": true}]}],
        "apis": [{"id": "orders", "versions": [
            {"version": "1", "status": "published", "routing": {"path_prefix": "/orders/v1"},
             "plans": ["acme/gold/1"]}]}],
        "clients": clients("c", CLIENTS),
    }]})
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn summary(what: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    assert!(!samples.is_empty(), "no {what} measured");
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
    println!(
        "{what}: {} samples, p50 {p50:?}, p99 {p99:?}, max {:?}",
        samples.len(),
        samples[samples.len() - 1]
    );
    (p50, p99)
}

/// `POST /oauth/token` for a service account's credentials: the token.
fn token(s: &Server, id: &str, secret: &str) -> String {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", id)
        .append_pair("client_secret", secret)
        .finish();
    let answer = s.request(
        "POST",
        "/oauth/token",
        None,
        Some(&form),
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["access_token"].as_str().unwrap().to_owned()
}

#[test]
fn reads_do_not_wait_for_a_write_storm() {
    // Seeding applies the whole catalogue in one request: more than the default request timeout
    // in a debug build on a loaded machine. The reader asks for tokens back to back.
    let s = Server::start_with_env(&[
        ("TOLLGATE_REQUEST_TIMEOUT", "600"),
        ("TOLLGATE_TOKEN_REQUESTS_PER_SOURCE", "1000000"),
    ]);
    let started = Instant::now();
    Server::ok(s.post("/v1/apply", catalogue()));
    println!(
        "applied {CLIENTS} client versions in {:?}",
        started.elapsed()
    );
    let account = Server::ok(s.post(
        "/v1/service-accounts",
        json!({"id": "dashboards", "scopes": ["tollgate:read"]}),
    ));
    let (id, secret) = (
        account["client_id"].as_str().unwrap().to_owned(),
        account["client_secret"].as_str().unwrap().to_owned(),
    );
    let management_token = token(&s, &id, &secret);

    // Each read a user or a probe makes, with how long it took; all must answer 200.
    let reads: [(&str, &(dyn Fn() -> u16 + Sync)); 4] = [
        ("GET /healthz", &|| {
            s.request("GET", "/healthz", None, None, &[]).status
        }),
        ("GET /v1/orgs/acme (admin token)", &|| {
            s.get("/v1/orgs/acme").status
        }),
        ("GET /v1/orgs/acme (management token)", &|| {
            s.request("GET", "/v1/orgs/acme", Some(&management_token), None, &[])
                .status
        }),
        ("POST /oauth/token", &|| {
            token(&s, &id, &secret);
            200
        }),
    ];

    let writing = AtomicBool::new(true);
    let (writes, read_samples) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut samples = vec![Vec::new(); reads.len()];
            while writing.load(Ordering::Relaxed) {
                for ((what, read), samples) in reads.iter().zip(&mut samples) {
                    let started = Instant::now();
                    let status = read();
                    samples.push(started.elapsed());
                    assert_eq!(status, 200, "{what}");
                }
            }
            samples
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let s = &s;
                scope.spawn(move || {
                    (0..WRITES_PER_WRITER)
                        .map(|i| {
                            let batch = clients(&format!("w{w}b{i}c"), PER_WRITE);
                            let started = Instant::now();
                            Server::ok(s.post(
                                "/v1/apply",
                                json!({"orgs": [{"id": "acme", "clients": batch}]}),
                            ));
                            started.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let writes: Vec<Duration> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        writing.store(false, Ordering::Relaxed);
        (writes, reader.join().unwrap())
    });

    let (write_p50, _) = summary(&format!("applies of {PER_WRITE} client versions"), writes);
    assert!(
        write_p50 >= Duration::from_millis(100),
        "writes took {write_p50:?} at p50: too little to show whether reads wait"
    );
    let read_p99: Vec<(&str, Duration)> = reads
        .iter()
        .zip(read_samples)
        .map(|((what, _), samples)| (*what, summary(what, samples).1))
        .collect();
    // A read that waited for the write in progress would take about half a write at p50 and a
    // whole one at p99; with two writers a write's p50 is one to two writes' work.
    for (what, p99) in read_p99 {
        assert!(
            p99 < write_p50 / 4,
            "{what} p99 {p99:?} is not well below a quarter of the write p50 {write_p50:?}: reads wait for writes"
        );
    }
}

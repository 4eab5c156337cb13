//! Reads never wait for writes: `/healthz` and management GETs answer in milliseconds while
//! gateway-visible writes, each re-rendering a catalogue of thousands of keys, run back to back.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{json, Value};

/// Client versions with a key and a contract: enough that one write (which re-renders, signs
/// and verifies the whole snapshot) takes a clearly measurable time in a debug build.
const CLIENTS: usize = 8_000;
const WRITERS: usize = 2;
const WRITES_PER_WRITER: usize = 5;

fn catalogue() -> Value {
    let with_contract = (0..CLIENTS).map(|i| {
        json!({"id": format!("c{i}"), "versions": [{"version": "1",
            "contracts": [{"api": "acme/orders/1", "plan": "acme/gold/1"}]}]})
    });
    // The storm's writes give these their contract.
    let spare = (0..WRITERS * WRITES_PER_WRITER)
        .map(|i| json!({"id": format!("spare{i}"), "versions": [{"version": "1"}]}));
    json!({"orgs": [{
        "id": "acme",
        "plans": [{"id": "gold", "versions": [
            {"version": "1", "limits": [{"requests": 1000, "per": "minute"}], "locked": true}]}],
        "apis": [{"id": "orders", "versions": [
            {"version": "1", "status": "published", "routing": {"path_prefix": "/orders/v1"},
             "plans": ["acme/gold/1"]}]}],
        "clients": with_contract.chain(spare).collect::<Vec<_>>(),
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

#[test]
fn healthz_and_gets_do_not_wait_for_a_write_storm() {
    // Seeding applies the whole catalogue in one request: more than the default request timeout
    // in a debug build on a loaded machine.
    let s = Server::start_with_env(&[("TOLLGATE_REQUEST_TIMEOUT", "600")]);
    let started = Instant::now();
    Server::ok(s.post("/v1/apply", catalogue()));
    println!(
        "applied {CLIENTS} client versions in {:?}",
        started.elapsed()
    );

    let writing = AtomicBool::new(true);
    let (writes, (healthz, gets)) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let (mut healthz, mut gets) = (Vec::new(), Vec::new());
            while writing.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answer = s.request("GET", "/healthz", None, None, &[]);
                healthz.push(started.elapsed());
                assert_eq!(answer.status, 200, "{}", answer.body);
                let started = Instant::now();
                let answer = s.get("/v1/orgs/acme");
                gets.push(started.elapsed());
                assert_eq!(answer.status, 200, "{}", answer.body);
            }
            (healthz, gets)
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let s = &s;
                scope.spawn(move || {
                    (0..WRITES_PER_WRITER)
                        .map(|i| {
                            let client = format!("spare{}", w * WRITES_PER_WRITER + i);
                            let started = Instant::now();
                            Server::ok(s.post(
                                &format!("/v1/orgs/acme/clients/{client}/versions/1/contracts"),
                                json!({"api": "orders", "api_version": "1", "plan": "gold"}),
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

    let (write_p50, _) = summary("contract creations", writes);
    let (_, healthz_p99) = summary("GET /healthz", healthz);
    let (_, get_p99) = summary("GET /v1/orgs/acme", gets);
    assert!(
        write_p50 >= Duration::from_millis(100),
        "writes took {write_p50:?} at p50: the catalogue is too small to show whether reads wait"
    );
    // A read that waited for the write in progress would take about half a render at p50 and a
    // whole one at p99; with two writers a write's p50 is one to two renders.
    for (what, p99) in [("/healthz", healthz_p99), ("GET /v1/orgs/acme", get_p99)] {
        assert!(
            p99 < write_p50 / 4,
            "{what} p99 {p99:?} is not well below a quarter of the write p50 {write_p50:?}: reads wait for writes"
        );
    }
}

//! Fleet-wide limits (`tollgate serve --redis`): the lease broker against a real Redis, its
//! endpoint, and the fleet setting in snapshots across restarts.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::Server;
use serde_json::{json, Value};
use tollgate_control_plane::fleet::{counter_key, return_key, Broker};
use tollgate_core::fleet::{LeaseAnswer, LeaseRequest, LEASE_PATH, RETURN_PATH};
use tollgate_core::snapshot::{Period, RateLimit};
use tollgate_core::time::{civil_from_days, window};

fn request(gateway: u64, contract: u64, limits: &[(u64, Period)], want: u64) -> LeaseRequest {
    LeaseRequest {
        gateway: format!("{gateway:016x}"),
        contract,
        limits: limits
            .iter()
            .map(|&(requests, per)| RateLimit { requests, per })
            .collect(),
        want,
        held: Vec::new(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Grants from two brokers (two control planes on one Redis) and 16 gateways asking at once
/// until their windows are spent: per window, the grants add up to the limit and never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grants_never_exceed_the_limit_and_add_up_to_it() {
    let redis = RedisServer::start();
    let brokers = [
        Arc::new(Broker::connect(&redis.url()).unwrap()),
        Arc::new(Broker::connect(&redis.url()).unwrap()),
    ];
    const LIMIT: u64 = 2_000;
    let mut tasks = Vec::new();
    for gateway in 0..16u64 {
        let broker = Arc::clone(&brokers[gateway as usize % 2]);
        tasks.push(tokio::spawn(async move {
            let mut granted: Vec<(u64, u64)> = Vec::new();
            loop {
                let ask = request(gateway + 1, 7, &[(LIMIT, Period::Month)], 1 + gateway * 3);
                let answer = broker.grant(&ask).await.unwrap().answer;
                assert!(answer.allowed <= ask.want);
                if answer.allowed == 0 {
                    assert_eq!(answer.windows[0].remaining, 0);
                    return (granted, answer.windows[0].start);
                }
                granted.push((answer.windows[0].start, answer.allowed));
            }
        }));
    }
    let mut per_window: BTreeMap<u64, u64> = BTreeMap::new();
    let mut exhausted = Vec::new();
    for task in tasks {
        let (granted, spent_window) = task.await.unwrap();
        for (start, g) in granted {
            *per_window.entry(start).or_default() += g;
        }
        exhausted.push(spent_window);
    }
    for (start, sum) in &per_window {
        assert!(*sum <= LIMIT, "window {start} granted {sum} > {LIMIT}");
    }
    // Every task stopped on a window with no room: it was granted exactly the limit.
    for start in exhausted {
        assert_eq!(per_window.get(&start), Some(&LIMIT), "window {start}");
    }
    let key = counter_key(7, Period::Month, *per_window.keys().last().unwrap());
    assert_eq!(redis.command(&["GET", &key]), LIMIT.to_string());
}

/// A grant takes the same units from every limit of the plan, sized by the tightest.
#[tokio::test]
async fn two_limits_move_together() {
    let redis = RedisServer::start();
    let broker = Broker::connect(&redis.url()).unwrap();
    let limits = [(50, Period::Month), (8, Period::Day)];
    let ask = request(1, 9, &limits, 100);
    assert_eq!(ask.check(), Ok(()));
    let mut total = 0;
    let mut answers: Vec<LeaseAnswer> = Vec::new();
    loop {
        let answer = broker.grant(&ask).await.unwrap().answer;
        if answer.allowed == 0 {
            answers.push(answer);
            break;
        }
        total += answer.allowed;
        let [month, day] = [answer.windows[0], answer.windows[1]];
        assert_eq!(month.remaining, 50 - total, "{answer:?}");
        assert_eq!(day.remaining, 8 - total, "{answer:?}");
        answers.push(answer);
    }
    assert_eq!(total, 8);
    // One gateway: each grant is half the room left, at least 1 (4, 2, 1, 1).
    let grants: Vec<u64> = answers.iter().map(|a| a.allowed).collect();
    assert_eq!(grants, vec![4, 2, 1, 1, 0]);
    let last = answers.last().unwrap();
    assert_eq!(
        (last.windows[0].remaining, last.windows[1].remaining),
        (42, 0)
    );
    let month = counter_key(9, Period::Month, last.windows[0].start);
    let day = counter_key(9, Period::Day, last.windows[1].start);
    assert_eq!(redis.command(&["GET", &month]), "8");
    assert_eq!(redis.command(&["GET", &day]), "8");
}

/// What a gateway holds in a window is not granted again there: a day's units granted beside
/// a second's that ended unused let the gateway admit more with a grant of the second only.
#[tokio::test]
async fn what_a_gateway_holds_in_a_window_is_not_granted_again() {
    let redis = RedisServer::start();
    let broker = Broker::connect(&redis.url()).unwrap();
    let limits = [(100, Period::Month), (10, Period::Day)];
    let mut ask = request(1, 11, &limits, 4);
    ask.held = vec![0, 3];
    let answer = broker.grant(&ask).await.unwrap().answer;
    assert_eq!(answer.allowed, 4, "{answer:?}");
    assert_eq!(answer.windows[0].granted, 4);
    assert_eq!(
        answer.windows[1].granted, 1,
        "3 of the 4 are held in the day already"
    );
    assert_eq!(
        (answer.windows[0].remaining, answer.windows[1].remaining),
        (96, 9)
    );
    // Holding what it wants in the day, the day's room does not bound the grant.
    ask.held = vec![0, 9];
    ask.want = 9;
    let answer = broker.grant(&ask).await.unwrap().answer;
    assert_eq!(answer.windows[1].granted, 0, "{answer:?}");
    let mut bad = ask.clone();
    bad.held = vec![1];
    assert!(bad.check().unwrap_err().contains("held"));
}

/// Windows are Redis's calendar windows (its `TIME`): a second is one second, a month starts
/// on the 1st at 00:00 UTC, and each counter expires a minute after its window.
#[tokio::test]
async fn windows_are_calendar_windows_of_redis_time() {
    let redis = RedisServer::start();
    let broker = Broker::connect(&redis.url()).unwrap();
    let ask = request(
        3,
        11,
        &[(1_000, Period::Second), (1_000_000, Period::Month)],
        10,
    );
    let answer = broker.grant(&ask).await.unwrap().answer;
    assert!(answer.now_ms.abs_diff(now_ms()) < 5_000, "{answer:?}");
    let [second, month] = [answer.windows[0], answer.windows[1]];
    let expect_second = window(Period::Second, answer.now_ms);
    let expect_month = window(Period::Month, answer.now_ms);
    assert_eq!(
        (second.start, second.end),
        (expect_second.start, expect_second.end)
    );
    assert_eq!(
        (month.start, month.end),
        (expect_month.start, expect_month.end)
    );
    assert_eq!(second.end - second.start, 1);
    let (_, _, first_day) = civil_from_days(month.start / 86_400);
    let (_, _, next_first_day) = civil_from_days(month.end / 86_400);
    assert_eq!((first_day, next_first_day), (1, 1));
    assert_eq!((month.start % 86_400, month.end % 86_400), (0, 0));
    assert!((28..=31).contains(&((month.end - month.start) / 86_400)));
    for (w, period) in [(second, Period::Second), (month, Period::Month)] {
        let key = counter_key(11, period, w.start);
        assert_eq!(
            redis.command(&["PEXPIRETIME", &key]),
            format!(":{}", (w.end + 60) * 1000),
            "{key}"
        );
    }
    assert_eq!(answer.gateways, 1);
}

/// The broker computes windows from its guess of Redis's clock; when the guess is on the
/// other side of a boundary (here a stale one: last month, two seconds ago), the script
/// refuses, the broker recomputes from Redis's own clock, and nothing is counted in the
/// windows the guess named.
#[tokio::test]
async fn a_window_boundary_crossed_since_the_guess_is_recomputed_from_redis_time() {
    let redis = RedisServer::start();
    let broker = Broker::connect(&redis.url()).unwrap();
    let ask = request(4, 12, &[(100, Period::Second), (1_000, Period::Month)], 5);
    let stale = now_ms() - 40 * 86_400 * 1000;
    let granted = broker.grant_from(&ask, stale).await.unwrap();
    assert!(granted.window_retries >= 1, "{granted:?}");
    let answer = granted.answer;
    assert!(answer.allowed > 0);
    for (w, period) in answer.windows.iter().zip([Period::Second, Period::Month]) {
        let now_s = answer.now_ms / 1000;
        assert!(w.start <= now_s && now_s < w.end, "{answer:?}");
        let current = window(period, answer.now_ms);
        assert_eq!((w.start, w.end), (current.start, current.end));
    }
    for (period, at) in [(Period::Second, stale), (Period::Month, stale)] {
        let key = counter_key(12, period, window(period, at).start);
        assert_eq!(redis.command(&["EXISTS", &key]), ":0", "{key}");
    }
    // A guess ahead of Redis (the next second) is refused the same way.
    let ahead = answer.now_ms + 2_000;
    let granted = broker.grant_from(&ask, ahead).await.unwrap();
    assert!(granted.window_retries >= 1);
    let second = granted.answer.windows[0];
    assert!(second.end * 1000 <= ahead, "{granted:?}");
}

/// N, the gateways seen in the last minute, shrinks the grants: each is at most the room
/// left over 2 N.
#[tokio::test]
async fn grants_shrink_as_more_gateways_ask() {
    let redis = RedisServer::start();
    let broker = Broker::connect(&redis.url()).unwrap();
    let limits = [(1_000, Period::Month)];
    let first = broker.grant(&request(1, 13, &limits, 1_000)).await.unwrap();
    assert_eq!((first.answer.allowed, first.answer.gateways), (500, 1));
    for gateway in 2..=4 {
        broker
            .grant(&request(gateway, 13, &limits, 1))
            .await
            .unwrap();
    }
    // 497 left, 4 gateways: ⌊497 / 8⌋.
    let answer = broker
        .grant(&request(1, 13, &limits, 1_000))
        .await
        .unwrap()
        .answer;
    assert_eq!((answer.allowed, answer.gateways), (62, 4));
    assert_eq!(redis.command(&["ZCARD", "tollgate:fleet:gateways"]), ":4");
}

fn lease(server: &Server, body: &Value, token: Option<&str>) -> common::Answer {
    server.request("POST", LEASE_PATH, token, Some(&body.to_string()), &[])
}

fn lease_body(want: u64) -> Value {
    json!({"gateway": "00000000000000aa", "contract": 5,
           "limits": [{"requests": 10, "per": "minute"}], "want": want})
}

#[test]
fn the_endpoint_grants_with_the_gateway_token_and_counts_in_metrics() {
    let redis = RedisServer::start();
    let server = Server::start_with_env(&[("TOLLGATE_REDIS_URL", &redis.url())]);
    let answer = lease(&server, &lease_body(3), Some(&server.gateway_token));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let grant: LeaseAnswer = serde_json::from_str(&answer.body).unwrap();
    assert!(grant.allowed >= 1 && grant.allowed <= 3, "{grant:?}");
    assert_eq!(grant.windows.len(), 1);
    assert_eq!(grant.windows[0].end - grant.windows[0].start, 60);

    let missing = lease(&server, &lease_body(3), None);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.problem_type(), "urn:tollgate:problem:unauthorized");
    let admin = lease(&server, &lease_body(3), Some(&server.admin_token));
    assert_eq!(
        admin.status, 401,
        "the admin token is not the gateway token"
    );

    let metrics = server.request("GET", "/metrics", None, None, &[]).body;
    assert!(
        metrics.contains(&format!(
            "tollgate_fleet_units_granted_total {}",
            grant.allowed
        )),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_fleet_lease_answers_total{outcome=\"granted\"} 1"));
    assert!(metrics.contains("tollgate_fleet_grant_seconds_count 1"));
}

/// Units handed back leave the fleet's count once: the same return again (a retry after a lost
/// answer, or a replay) answers `applied: false` and subtracts nothing, and the units can be
/// granted to another gateway.
#[test]
fn a_return_is_applied_once_however_often_it_is_sent() {
    let redis = RedisServer::start();
    let server = Server::start_with_env(&[("TOLLGATE_REDIS_URL", &redis.url())]);
    let token = server.gateway_token.clone();
    let answer = lease(&server, &lease_body(5), Some(&token));
    let grant: LeaseAnswer = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(grant.allowed, 5, "{grant:?}");
    let start = grant.windows[0].start;
    let key = counter_key(5, Period::Minute, start);
    assert_eq!(redis.command(&["GET", &key]), "5");

    let back = json!({"gateway": "00000000000000aa", "contract": 5, "id": "0123456789abcdef",
                      "windows": [{"per": "minute", "start": start, "units": 3}]});
    let post = |body: &Value| {
        server.request(
            "POST",
            RETURN_PATH,
            Some(&token),
            Some(&body.to_string()),
            &[],
        )
    };
    let first = post(&back);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["applied"], true);
    assert_eq!(redis.command(&["GET", &key]), "2");
    for _ in 0..3 {
        let again = post(&back);
        assert_eq!(again.json()["applied"], false, "{}", again.body);
    }
    assert_eq!(
        redis.command(&["GET", &key]),
        "2",
        "a replayed return was subtracted again"
    );
    // No more than the gateway was granted and has not handed back, whatever a return claims:
    // another gateway's units stay counted.
    let other = lease(
        &server,
        &json!({"gateway": "00000000000000bb", "contract": 5,
                "limits": [{"requests": 10, "per": "minute"}], "want": 2}),
        Some(&token),
    );
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(redis.command(&["GET", &key]), "4");
    let mut greedy = back.clone();
    greedy["id"] = json!("00000000000000ff");
    greedy["windows"][0]["units"] = json!(50);
    assert_eq!(post(&greedy).json()["applied"], true);
    assert_eq!(
        redis.command(&["GET", &key]),
        "2",
        "gateway aa held 2 more, bb's 2 stay"
    );
    let mut stranger = back.clone();
    stranger["gateway"] = json!("00000000000000cc");
    stranger["id"] = json!("00000000000000ee");
    assert_eq!(post(&stranger).json()["applied"], true);
    assert_eq!(
        redis.command(&["GET", &key]),
        "2",
        "a gateway that held nothing gave some back"
    );
    // The marker lives in the contract's slot and dies after the window.
    let marker = return_key(5, "00000000000000aa", "0123456789abcdef");
    let ttl: i64 = redis
        .command(&["PTTL", &marker])
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 121_000, "{ttl}");

    let mut bad = back.clone();
    bad["id"] = json!("nope");
    let refused = post(&bad);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("id must be 16 hex digits"),
        "{}",
        refused.body
    );
    let metrics = server.request("GET", "/metrics", None, None, &[]).body;
    assert!(
        metrics.contains("tollgate_fleet_lease_answers_total{outcome=\"return_replayed\"} 3"),
        "{metrics}"
    );
}

#[test]
fn malformed_lease_requests_are_refused_naming_the_problem() {
    let redis = RedisServer::start();
    let server = Server::start_with_env(&[("TOLLGATE_REDIS_URL", &redis.url())]);
    let token = server.gateway_token.clone();
    let mut bad_gateway = lease_body(1);
    bad_gateway["gateway"] = json!("not-hex");
    let mut no_want = lease_body(1);
    no_want["want"] = json!(0);
    let mut twice = lease_body(1);
    twice["limits"] = json!([{"requests": 1, "per": "minute"}, {"requests": 2, "per": "minute"}]);
    let mut no_limits = lease_body(1);
    no_limits["limits"] = json!([]);
    let mut unknown = lease_body(1);
    unknown["extra"] = json!(true);
    let mut missing = lease_body(1);
    missing.as_object_mut().unwrap().remove("contract");
    let mut bad_period = lease_body(1);
    bad_period["limits"] = json!([{"requests": 1, "per": "week"}]);
    for (body, kind, says) in [
        (bad_gateway, "invalid-field", "gateway"),
        (no_want, "invalid-field", "want"),
        (twice, "invalid-field", "twice"),
        (no_limits, "invalid-field", "limits"),
        (unknown, "invalid-body", "extra"),
        (missing, "invalid-body", "contract"),
        (bad_period, "invalid-body", "week"),
    ] {
        let answer = lease(&server, &body, Some(&token));
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert_eq!(
            answer.problem_type(),
            format!("urn:tollgate:problem:{kind}")
        );
        let detail = answer.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains(says), "{body}: {detail}");
    }
    let not_json = server.request("POST", LEASE_PATH, Some(&token), Some("{"), &[]);
    assert_eq!(not_json.status, 400);
}

#[test]
fn without_redis_leases_are_fleet_off() {
    let server = Server::start();
    let answer = lease(&server, &lease_body(1), Some(&server.gateway_token));
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert_eq!(answer.problem_type(), "urn:tollgate:problem:fleet-off");
    assert!(answer.json()["detail"]
        .as_str()
        .unwrap()
        .contains("--redis"));
    assert!(server.snapshot().json().get("fleet").is_none());
    let back = json!({"gateway": "00000000000000aa", "contract": 5, "id": "0123456789abcdef",
                      "windows": [{"per": "minute", "start": 1_764_650_000u64 / 60 * 60, "units": 1}]});
    let answer = server.request(
        "POST",
        RETURN_PATH,
        Some(&server.gateway_token),
        Some(&back.to_string()),
        &[],
    );
    assert_eq!(answer.status, 404, "{}", answer.body);
}

/// A killed Redis (connections refused) and a silent one (accepts, never answers) both get a
/// 503 `redis-unavailable` within the broker's short timeout, never a hanging callout; the
/// snapshot is still served.
#[test]
fn an_unreachable_redis_answers_503_quickly() {
    let mut redis = RedisServer::start();
    let server = Server::start_with_env(&[("TOLLGATE_REDIS_URL", &redis.url())]);
    let token = server.gateway_token.clone();
    assert_eq!(lease(&server, &lease_body(1), Some(&token)).status, 200);
    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let answer = lease(&server, &lease_body(1), Some(&token));
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert_eq!(
            answer.problem_type(),
            "urn:tollgate:problem:redis-unavailable"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(server.snapshot().status, 200);

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let server = Server::start_with_env(&[("TOLLGATE_REDIS_URL", &url)]);
    for _ in 0..3 {
        let started = Instant::now();
        let answer = lease(&server, &lease_body(1), Some(&server.gateway_token));
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    let metrics = server.request("GET", "/metrics", None, None, &[]).body;
    assert!(
        metrics.contains("tollgate_fleet_redis_errors_total 3"),
        "{metrics}"
    );
}

#[test]
fn a_url_that_is_not_redis_stops_serve_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis",
            "http://localhost:1",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("TOLLGATE_REDIS_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--redis") && stderr.contains("redis://"),
        "{stderr}"
    );

    let output = std::process::Command::new(common::BIN)
        .args(["serve", "--fleet-fallback", "shared"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("share, closed or local"), "{stderr}");
}

fn fleet_of(snapshot: &Value) -> Option<String> {
    snapshot
        .get("fleet")
        .map(|f| f["fallback"].as_str().unwrap().to_owned())
}

/// Fleet mode is catalogue state: a restart that turns it on, changes the fallback or turns
/// it off is a new revision; a gateway holding the revision before gets a delta carrying the
/// setting, and every page of a paged catalogue carries it.
#[test]
fn a_restart_with_another_fleet_setting_reaches_gateways_as_a_delta() {
    let redis = RedisServer::start();
    let server = Server::start_with_env(&[("TOLLGATE_SNAPSHOT_PAGE_KEYS", "1")]);
    server.seed();
    for version in ["2", "3"] {
        Server::ok(server.post(
            "/v1/orgs/acme/clients/mobile/versions",
            json!({"version": version}),
        ));
    }
    let held = server.revision();
    assert_eq!(fleet_of(&server.snapshot().json()), None);

    let url = redis.url();
    let on = [
        ("TOLLGATE_REDIS_URL", url.as_str()),
        ("TOLLGATE_SNAPSHOT_PAGE_KEYS", "1"),
    ];
    let server = server.kill9_and_restart_with_env(&on);
    let delta = server.request(
        "GET",
        &format!("/v1/snapshot?since={held}"),
        Some(&server.gateway_token),
        None,
        &[],
    );
    assert_eq!(delta.status, 200, "{}", delta.body);
    let (doc, _) = server.verify_snapshot(&delta).unwrap();
    assert_eq!(doc.base_revision, Some(held), "{}", delta.body);
    assert_eq!(doc.revision, held + 1);
    assert_eq!(fleet_of(&delta.json()).as_deref(), Some("share"));

    // Every page of the full revision says so too.
    let mut page = server.snapshot();
    let mut pages = 0;
    loop {
        assert_eq!(page.status, 200);
        server.verify_snapshot(&page).unwrap();
        let body = page.json();
        assert_eq!(fleet_of(&body).as_deref(), Some("share"), "page {pages}");
        pages += 1;
        let Some(next) = body.get("next").and_then(Value::as_str) else {
            break;
        };
        page = server.request(
            "GET",
            &format!("/v1/snapshot?cursor={next}"),
            Some(&server.gateway_token),
            None,
            &[],
        );
    }
    assert!(pages >= 3, "the catalogue came in {pages} pages");

    // The same setting again: no new revision.
    let server = server.kill9_and_restart_with_env(&on);
    assert_eq!(server.revision(), held + 1);

    let closed = [
        ("TOLLGATE_REDIS_URL", url.as_str()),
        ("TOLLGATE_FLEET_FALLBACK", "closed"),
    ];
    let server = server.kill9_and_restart_with_env(&closed);
    assert_eq!(server.revision(), held + 2);
    assert_eq!(
        fleet_of(&server.snapshot().json()).as_deref(),
        Some("closed")
    );

    let server = server.kill9_and_restart_with_env(&[]);
    let delta = server.request(
        "GET",
        &format!("/v1/snapshot?since={}", held + 2),
        Some(&server.gateway_token),
        None,
        &[],
    );
    let (doc, _) = server.verify_snapshot(&delta).unwrap();
    assert_eq!(doc.base_revision, Some(held + 2));
    assert_eq!(doc.fleet, None);
    assert_eq!(fleet_of(&delta.json()), None);
}

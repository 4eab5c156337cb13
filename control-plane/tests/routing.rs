//! Publish rules for routing (control-plane/README.md, issue 18 items 1-2): a public route never
//! shadows a private one for any host, in either order of publishing, through the API and `apply`;
//! host names are checked and stored in the form gateways read requests in.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Answer, Server};
use serde_json::{json, Value};

const SHADOWS: &str = "urn:tollgate:problem:route-shadows-private";

/// `acme/orders/1` (private, /orders/v1, any host) published, as `Server::seed` makes it.
fn seeded() -> Server {
    let s = Server::start();
    s.seed();
    for api in ["status", "admin"] {
        Server::ok(s.post("/v1/orgs/acme/apis", json!({"id": api})));
    }
    s
}

fn draft(s: &Server, api: &str, version: &str, public: bool, prefix: &str, hosts: &[&str]) {
    let mut body = json!({"version": version, "public": public,
                          "routing": {"path_prefix": prefix, "hosts": hosts}});
    if !public {
        body["plans"] = json!([{"plan": "gold", "version": "1"}]);
    }
    Server::ok(s.post(&format!("/v1/orgs/acme/apis/{api}/versions"), body));
}

fn publish(s: &Server, api: &str, version: &str) -> Answer {
    s.act(&format!(
        "/v1/orgs/acme/apis/{api}/versions/{version}/publish"
    ))
}

fn assert_shadow_refused(answer: &Answer, public: &str, private: &str) {
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.problem_type(), SHADOWS, "{}", answer.body);
    let detail = answer.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains(&format!("public api version {public}"))
            && detail.contains(&format!("private api version {private}")),
        "{detail}"
    );
}

#[test]
fn host_scoped_public_route_at_a_private_prefix_is_409() {
    // Any-host public at /orders/v1 was already refused (a collision); scoped to one host it
    // was accepted and took /orders/v1 from the private API on that host.
    let s = seeded();
    draft(
        &s,
        "status",
        "1",
        true,
        "/orders/v1",
        &["status.example.com"],
    );
    let answer = publish(&s, "status", "1");
    assert_shadow_refused(&answer, "acme/status/1", "acme/orders/1");
    let detail = answer.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("host status.example.com"), "{detail}");
    assert_eq!(
        Server::ok(s.get("/v1/orgs/acme/apis/status/versions/1"))["status"],
        "draft"
    );
}

#[test]
fn public_route_nested_in_a_private_prefix_is_409_on_any_shared_host() {
    let s = seeded();
    draft(&s, "status", "1", true, "/orders/v1/docs", &[]);
    assert_shadow_refused(
        &publish(&s, "status", "1"),
        "acme/status/1",
        "acme/orders/1",
    );
    draft(
        &s,
        "status",
        "2",
        true,
        "/orders/v1/docs/deep",
        &["a.example"],
    );
    assert_shadow_refused(
        &publish(&s, "status", "2"),
        "acme/status/2",
        "acme/orders/1",
    );
}

#[test]
fn public_routes_that_shadow_nothing_are_published() {
    let s = seeded();
    // Above the private prefix: the gateway still picks the longer private one.
    draft(&s, "status", "1", true, "/", &["status.example.com"]);
    Server::ok(publish(&s, "status", "1"));
    draft(&s, "status", "2", true, "/", &[]);
    Server::ok(publish(&s, "status", "2"));
    // A sibling prefix, not a segment below /orders/v1.
    draft(&s, "status", "3", true, "/orders/v10", &[]);
    Server::ok(publish(&s, "status", "3"));
    // Below a private prefix scoped to another host.
    draft(&s, "admin", "1", false, "/admin", &["admin.example.com"]);
    Server::ok(publish(&s, "admin", "1"));
    draft(
        &s,
        "status",
        "4",
        true,
        "/admin/health",
        &["www.example.com"],
    );
    Server::ok(publish(&s, "status", "4"));
    // Any-host public at a host-scoped private prefix: the host keeps its private one.
    draft(&s, "status", "5", true, "/admin", &[]);
    Server::ok(publish(&s, "status", "5"));
}

#[test]
fn private_route_published_over_an_existing_public_one_is_409() {
    let s = seeded();
    draft(&s, "status", "1", true, "/admin/health", &[]);
    Server::ok(publish(&s, "status", "1"));
    draft(&s, "admin", "1", false, "/admin", &[]);
    assert_shadow_refused(&publish(&s, "admin", "1"), "acme/status/1", "acme/admin/1");
    // The same on a host the public route reaches.
    draft(&s, "admin", "2", false, "/", &["a.example"]);
    assert_shadow_refused(&publish(&s, "admin", "2"), "acme/status/1", "acme/admin/2");
    // A host-scoped public route at the private prefix, any-host private: the tie goes to the
    // host-scoped one.
    draft(&s, "status", "2", true, "/billing", &["b.example"]);
    Server::ok(publish(&s, "status", "2"));
    draft(&s, "admin", "3", false, "/billing", &[]);
    assert_shadow_refused(&publish(&s, "admin", "3"), "acme/status/2", "acme/admin/3");
    // Once the public route is retired (gateways answer 410 there), the private one may come.
    Server::ok(s.act("/v1/orgs/acme/apis/status/versions/1/retire"));
    Server::ok(publish(&s, "admin", "1"));
}

#[test]
fn a_retired_private_route_stays_protected() {
    let s = seeded();
    Server::ok(s.act("/v1/orgs/acme/apis/orders/versions/1/retire"));
    draft(&s, "status", "1", true, "/orders/v1/x", &[]);
    assert_shadow_refused(
        &publish(&s, "status", "1"),
        "acme/status/1",
        "acme/orders/1",
    );
    // Taking over the very same route is how a retired version is replaced.
    draft(&s, "status", "2", true, "/orders/v1", &[]);
    Server::ok(publish(&s, "status", "2"));
}

fn apply_catalogue(apis: Value) -> Value {
    json!({"orgs": [{
        "id": "acme",
        "plans": [{"id": "gold", "versions": [
            {"version": "1", "limits": [{"requests": 10, "per": "day"}], "locked": true}]}],
        "apis": apis
    }]})
}

#[test]
fn apply_refuses_a_shadowing_catalogue_and_applies_an_export_of_a_legal_history() {
    let s = Server::start();
    let before = s.revision();
    let shadowing = apply_catalogue(json!([
        {"id": "orders", "versions": [{"version": "1", "status": "published",
            "routing": {"path_prefix": "/orders/v1"}, "plans": ["acme/gold/1"]}]},
        {"id": "status", "versions": [{"version": "1", "status": "published", "public": true,
            "routing": {"path_prefix": "/", "hosts": ["status.example.com"]}},
            {"version": "2", "status": "published", "public": true,
            "routing": {"path_prefix": "/orders/v1/docs", "hosts": ["status.example.com"]}}]}
    ]));
    let answer = s.post("/v1/apply", shadowing);
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.problem_type(), SHADOWS);
    assert_eq!(s.revision(), before, "nothing of a refused apply is kept");
    assert_eq!(s.get("/v1/orgs/acme").status, 404);

    // Public /orders/v1/docs retired, then private /orders/v1 published: legal in that order,
    // and an export of it applies to an empty store (the publish waits for the retirement).
    let history = apply_catalogue(json!([
        {"id": "status", "versions": [{"version": "1", "status": "retired", "public": true,
            "routing": {"path_prefix": "/orders/v1/docs"}}]},
        {"id": "orders", "versions": [{"version": "1", "status": "published",
            "routing": {"path_prefix": "/orders/v1"}, "plans": ["acme/gold/1"]}]}
    ]));
    let report = Server::ok(s.post("/v1/apply", history));
    assert!(report["revision"].as_u64().unwrap() > before, "{report}");
    assert_eq!(
        Server::ok(s.get("/v1/orgs/acme/apis/orders/versions/1"))["status"],
        "published"
    );
}

#[test]
fn invalid_host_names_are_400_naming_the_field() {
    let s = seeded();
    for bad in [
        ".",
        "-",
        "..",
        "a..example",
        "api.example.com:8080",
        "*.example.com",
        "u@a.example",
    ] {
        let answer = s.post(
            "/v1/orgs/acme/apis/status/versions",
            json!({"version": "1", "public": true,
                   "routing": {"path_prefix": "/s", "hosts": ["ok.example", bad]}}),
        );
        assert_eq!(answer.status, 400, "{bad:?}: {}", answer.body);
        assert!(
            answer.body.contains("routing.hosts[1]"),
            "{bad:?}: {}",
            answer.body
        );
    }
    let long_label = format!("{}.example", "a".repeat(64));
    let answer = s.post(
        "/v1/orgs/acme/apis/status/versions",
        json!({"version": "1", "public": true,
               "routing": {"path_prefix": "/s", "hosts": [long_label]}}),
    );
    assert_eq!(answer.status, 400, "{}", answer.body);
}

#[test]
fn host_names_are_stored_as_gateways_read_them() {
    let s = seeded();
    let created = Server::ok(s.post(
        "/v1/orgs/acme/apis/status/versions",
        json!({"version": "1", "public": true,
               "routing": {"path_prefix": "/s", "hosts": ["Status.Example.COM.", "bücher.example"]}}),
    ));
    assert_eq!(
        created["routing"]["hosts"],
        json!(["status.example.com", "xn--bcher-kva.example"])
    );
    // The trailing-dot spelling of a stored host is the same host: a collision.
    Server::ok(publish(&s, "status", "1"));
    draft(&s, "status", "2", true, "/s", &["status.example.com"]);
    let answer = publish(&s, "status", "2");
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(
        answer.problem_type(),
        "urn:tollgate:problem:routing-collision"
    );
}

#[test]
fn concurrent_public_and_private_publishes_that_shadow_each_other_let_exactly_one_win() {
    let s = seeded();
    for round in 0..5 {
        let prefix = format!("/contested-{round}");
        draft(&s, "admin", &format!("{round}"), false, &prefix, &[]);
        draft(
            &s,
            "status",
            &format!("{round}"),
            true,
            &format!("{prefix}/docs"),
            &["a.example"],
        );
        let (private, public) = std::thread::scope(|scope| {
            let private = scope.spawn(|| publish(&s, "admin", &format!("{round}")));
            let public = scope.spawn(|| publish(&s, "status", &format!("{round}")));
            (private.join().unwrap(), public.join().unwrap())
        });
        let mut statuses = [private.status, public.status];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "{} / {}", private.body, public.body);
        let loser = if private.status == 409 {
            &private
        } else {
            &public
        };
        assert_eq!(loser.problem_type(), SHADOWS, "{}", loser.body);
    }
}

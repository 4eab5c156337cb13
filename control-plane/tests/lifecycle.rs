//! Lifecycle rules (control-plane/README.md, "Lifecycle rules"), each observed through the HTTP
//! API of a real server.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Server;
use serde_json::{json, Value};

const PROBLEM: &str = "urn:tollgate:problem:";

fn kind(answer: &common::Answer) -> String {
    answer
        .problem_type()
        .strip_prefix(PROBLEM)
        .unwrap()
        .to_owned()
}

fn plan_with_draft(s: &Server) {
    Server::ok(s.post("/v1/orgs", json!({"id": "acme"})));
    Server::ok(s.post("/v1/orgs/acme/plans", json!({"id": "gold", "name": "Gold"})));
    Server::ok(s.post(
        "/v1/orgs/acme/plans/gold/versions",
        json!({"version": "1", "limits": [{"requests": 10000, "per": "day"}]}),
    ));
}

fn snapshot_of(s: &Server) -> Value {
    s.snapshot().json()
}

#[test]
fn org_is_created_listed_and_a_duplicate_is_409() {
    let s = Server::start();
    let created = s.post("/v1/orgs", json!({"id": "acme", "name": "Acme Corp"}));
    assert_eq!(created.status, 201);
    assert_eq!(created.json()["name"], "Acme Corp");
    assert_eq!(Server::ok(s.get("/v1/orgs/acme"))["id"], "acme");
    let list = Server::ok(s.get("/v1/orgs"));
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let again = s.post("/v1/orgs", json!({"id": "acme"}));
    assert_eq!(again.status, 409);
    assert_eq!(kind(&again), "already-exists");
    let missing = s.get("/v1/orgs/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(kind(&missing), "not-found");
}

#[test]
fn bad_slug_is_400_naming_the_field() {
    let s = Server::start();
    let answer = s.post("/v1/orgs", json!({"id": "Acme!"}));
    assert_eq!(answer.status, 400);
    assert_eq!(kind(&answer), "invalid-field");
    assert!(
        answer.json()["detail"].as_str().unwrap().starts_with("id:"),
        "{}",
        answer.body
    );
    Server::ok(s.post("/v1/orgs", json!({"id": "acme"})));
    let bad_version = s.post("/v1/orgs/acme/plans", json!({"id": "gold"}));
    assert_eq!(bad_version.status, 201);
    let answer = s.post(
        "/v1/orgs/acme/plans/gold/versions",
        json!({"version": "1/2", "limits": []}),
    );
    assert_eq!(answer.status, 400);
    assert!(answer.body.contains("version"), "{}", answer.body);
}

#[test]
fn malformed_json_and_unknown_fields_are_400() {
    let s = Server::start();
    let token = s.admin_token.clone();
    let broken = s.request("POST", "/v1/orgs", Some(&token), Some("{\"id\": "), &[]);
    assert_eq!(broken.status, 400);
    assert_eq!(kind(&broken), "invalid-body");
    let unknown = s.post("/v1/orgs", json!({"id": "acme", "colour": "red"}));
    assert_eq!(unknown.status, 400);
    assert!(unknown.body.contains("colour"), "{}", unknown.body);
}

#[test]
fn oversized_body_is_413() {
    let s = Server::start();
    let (status, body) = s.post_announcing("/v1/orgs", 2 * 1024 * 1024);
    assert_eq!(status, 413);
    assert!(
        body.contains("urn:tollgate:problem:payload-too-large"),
        "{body}"
    );
}

#[test]
fn admin_and_gateway_tokens_each_refuse_the_other() {
    let s = Server::start();
    let none = s.request("GET", "/v1/orgs", None, None, &[]);
    assert_eq!(none.status, 401);
    assert_eq!(kind(&none), "unauthorized");
    assert!(none.header("www-authenticate").is_some());
    let gateway_on_admin = s.request("GET", "/v1/orgs", Some(&s.gateway_token), None, &[]);
    assert_eq!(gateway_on_admin.status, 401);
    let admin_on_snapshot = s.request("GET", "/v1/snapshot", Some(&s.admin_token), None, &[]);
    assert_eq!(admin_on_snapshot.status, 401);
    assert_eq!(s.snapshot().status, 200);
    assert_eq!(s.get("/v1/orgs").status, 200);
}

#[test]
fn draft_plan_version_is_editable() {
    let s = Server::start();
    plan_with_draft(&s);
    let edited = Server::ok(s.put(
        "/v1/orgs/acme/plans/gold/versions/1",
        json!({"limits": [{"requests": 5, "per": "second"}, {"requests": 500, "per": "day"}]}),
    ));
    assert_eq!(edited["status"], "draft");
    assert_eq!(edited["limits"][0], json!({"requests": 5, "per": "second"}));
}

#[test]
fn locked_plan_version_rejects_edit_with_409() {
    let s = Server::start();
    plan_with_draft(&s);
    let locked = Server::ok(s.act("/v1/orgs/acme/plans/gold/versions/1/lock"));
    assert_eq!(locked["status"], "locked");
    let edit = s.put(
        "/v1/orgs/acme/plans/gold/versions/1",
        json!({"limits": [{"requests": 1, "per": "day"}]}),
    );
    assert_eq!(edit.status, 409);
    assert_eq!(kind(&edit), "plan-version-locked");
    let unchanged = Server::ok(s.get("/v1/orgs/acme/plans/gold/versions/1"));
    assert_eq!(
        unchanged["limits"],
        json!([{"requests": 10000, "per": "day"}])
    );
}

#[test]
fn lock_is_one_way_and_locking_twice_is_409() {
    let s = Server::start();
    plan_with_draft(&s);
    Server::ok(s.act("/v1/orgs/acme/plans/gold/versions/1/lock"));
    let again = s.act("/v1/orgs/acme/plans/gold/versions/1/lock");
    assert_eq!(again.status, 409);
    assert_eq!(kind(&again), "plan-version-locked");
}

#[test]
fn new_plan_version_can_copy_an_old_one() {
    let s = Server::start();
    plan_with_draft(&s);
    Server::ok(s.act("/v1/orgs/acme/plans/gold/versions/1/lock"));
    let copy = s.post(
        "/v1/orgs/acme/plans/gold/versions",
        json!({"version": "2", "copy_from": "1"}),
    );
    assert_eq!(copy.status, 201);
    let copy = copy.json();
    assert_eq!(copy["status"], "draft");
    assert_eq!(copy["limits"], json!([{"requests": 10000, "per": "day"}]));
    let versions = Server::ok(s.get("/v1/orgs/acme/plans/gold/versions"));
    assert_eq!(versions["items"].as_array().unwrap().len(), 2);
}

#[test]
fn two_limits_for_one_period_are_422() {
    let s = Server::start();
    plan_with_draft(&s);
    let answer = s.post(
        "/v1/orgs/acme/plans/gold/versions",
        json!({"version": "2", "limits": [{"requests": 1, "per": "day"}, {"requests": 2, "per": "day"}]}),
    );
    assert_eq!(answer.status, 422);
    assert_eq!(kind(&answer), "invalid-limit");
}

#[test]
fn plan_version_without_limits_cannot_be_locked() {
    let s = Server::start();
    plan_with_draft(&s);
    Server::ok(s.post(
        "/v1/orgs/acme/plans/gold/versions",
        json!({"version": "empty", "limits": []}),
    ));
    let answer = s.act("/v1/orgs/acme/plans/gold/versions/empty/lock");
    assert_eq!(answer.status, 422);
    assert_eq!(kind(&answer), "plan-version-without-limits");
}

#[test]
fn private_api_version_needs_a_plan() {
    let s = Server::start();
    plan_with_draft(&s);
    Server::ok(s.post("/v1/orgs/acme/apis", json!({"id": "orders"})));
    let answer = s.post(
        "/v1/orgs/acme/apis/orders/versions",
        json!({"version": "1", "routing": {"path_prefix": "/orders/v1"}}),
    );
    assert_eq!(answer.status, 422);
    assert_eq!(kind(&answer), "private-api-without-plans");
    let public = s.post(
        "/v1/orgs/acme/apis/orders/versions",
        json!({"version": "1", "public": true, "routing": {"path_prefix": "/orders/v1"}}),
    );
    assert_eq!(public.status, 201, "{}", public.body);
}

#[test]
fn draft_plan_version_cannot_be_offered() {
    let s = Server::start();
    plan_with_draft(&s);
    Server::ok(s.post("/v1/orgs/acme/apis", json!({"id": "orders"})));
    let answer = s.post(
        "/v1/orgs/acme/apis/orders/versions",
        json!({"version": "1", "routing": {"path_prefix": "/orders/v1"},
               "plans": [{"plan": "gold", "version": "1"}]}),
    );
    assert_eq!(answer.status, 409);
    assert_eq!(kind(&answer), "plan-version-not-locked");
}

#[test]
fn published_api_version_is_immutable_and_publishing_twice_is_409() {
    let s = Server::start();
    s.seed();
    let edit = s.put(
        "/v1/orgs/acme/apis/orders/versions/1",
        json!({"routing": {"path_prefix": "/elsewhere"}, "plans": [{"plan": "gold", "version": "1"}]}),
    );
    assert_eq!(edit.status, 409);
    assert_eq!(kind(&edit), "api-version-not-draft");
    let again = s.act("/v1/orgs/acme/apis/orders/versions/1/publish");
    assert_eq!(again.status, 409);
    assert_eq!(kind(&again), "api-version-not-draft");
}

#[test]
fn draft_api_version_is_editable_and_not_in_the_snapshot() {
    let s = Server::start();
    s.seed();
    Server::ok(s.post(
        "/v1/orgs/acme/apis/orders/versions",
        json!({"version": "2", "routing": {"path_prefix": "/orders/v2"},
               "plans": [{"plan": "gold", "version": "1"}]}),
    ));
    let edited = Server::ok(s.put(
        "/v1/orgs/acme/apis/orders/versions/2",
        json!({"routing": {"path_prefix": "/orders/v2", "hosts": ["API.example.com"]},
               "plans": [{"plan": "gold", "version": "1"}], "forward_api_key": true}),
    ));
    assert_eq!(edited["routing"]["hosts"], json!(["api.example.com"]));
    assert_eq!(edited["forward_api_key"], true);
    let ids: Vec<Value> = snapshot_of(&s)["apis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("acme/orders/1")]);
}

#[test]
fn retire_needs_a_published_version_and_stays_in_the_snapshot() {
    let s = Server::start();
    s.seed();
    Server::ok(s.post(
        "/v1/orgs/acme/apis/orders/versions",
        json!({"version": "2", "public": true, "routing": {"path_prefix": "/orders/v2"}}),
    ));
    let draft = s.act("/v1/orgs/acme/apis/orders/versions/2/retire");
    assert_eq!(draft.status, 409);
    assert_eq!(kind(&draft), "api-version-not-published");
    let retired = Server::ok(s.act("/v1/orgs/acme/apis/orders/versions/1/retire"));
    assert_eq!(retired["status"], "retired");
    let again = s.act("/v1/orgs/acme/apis/orders/versions/1/retire");
    assert_eq!(again.status, 409);
    let republish = s.act("/v1/orgs/acme/apis/orders/versions/1/publish");
    assert_eq!(republish.status, 409);
    let apis = snapshot_of(&s)["apis"].clone();
    assert_eq!(apis[0]["id"], "acme/orders/1");
    assert_eq!(apis[0]["status"], "retired");
}

#[test]
fn colliding_published_routings_are_409() {
    let s = Server::start();
    s.seed();
    Server::ok(s.post("/v1/orgs/acme/apis", json!({"id": "billing"})));
    Server::ok(s.post(
        "/v1/orgs/acme/apis/billing/versions",
        json!({"version": "1", "public": true, "routing": {"path_prefix": "/orders/v1"}}),
    ));
    let answer = s.act("/v1/orgs/acme/apis/billing/versions/1/publish");
    assert_eq!(answer.status, 409);
    assert_eq!(kind(&answer), "routing-collision");
    assert!(answer.body.contains("acme/orders/1"), "{}", answer.body);

    // Overlapping host sets share a gateway route slot: also a collision.
    Server::ok(s.post(
        "/v1/orgs/acme/apis/billing/versions",
        json!({"version": "2", "public": true,
               "routing": {"path_prefix": "/billing", "hosts": ["a.example", "b.example"]}}),
    ));
    Server::ok(s.act("/v1/orgs/acme/apis/billing/versions/2/publish"));
    Server::ok(s.post(
        "/v1/orgs/acme/apis/billing/versions",
        json!({"version": "3", "public": true,
               "routing": {"path_prefix": "/billing", "hosts": ["b.example", "c.example"]}}),
    ));
    let overlap = s.act("/v1/orgs/acme/apis/billing/versions/3/publish");
    assert_eq!(overlap.status, 409);
    assert_eq!(kind(&overlap), "routing-collision");

    // The same prefix on another host, or on any host, is a different route.
    Server::ok(s.post(
        "/v1/orgs/acme/apis/billing/versions",
        json!({"version": "4", "public": true,
               "routing": {"path_prefix": "/billing", "hosts": ["c.example"]}}),
    ));
    Server::ok(s.act("/v1/orgs/acme/apis/billing/versions/4/publish"));
}

#[test]
fn retired_routing_can_be_taken_over_by_a_new_version() {
    let s = Server::start();
    s.seed();
    Server::ok(s.act("/v1/orgs/acme/apis/orders/versions/1/retire"));
    Server::ok(s.post(
        "/v1/orgs/acme/apis/orders/versions",
        json!({"version": "1b", "routing": {"path_prefix": "/orders/v1"},
               "plans": [{"plan": "gold", "version": "1"}]}),
    ));
    let published = s.act("/v1/orgs/acme/apis/orders/versions/1b/publish");
    assert_eq!(published.status, 200, "{}", published.body);
}

fn contract_body() -> Value {
    json!({"api": "orders", "api_version": "1", "plan": "gold"})
}

const CONTRACTS: &str = "/v1/orgs/acme/clients/mobile/versions/1/contracts";

#[test]
fn contract_grants_a_client_version_access_and_appears_in_the_snapshot() {
    let s = Server::start();
    s.seed();
    let created = s.post(CONTRACTS, contract_body());
    assert_eq!(created.status, 201, "{}", created.body);
    let contract = created.json();
    assert_eq!(contract["plan_version"], "1");
    let snapshot = snapshot_of(&s);
    assert_eq!(
        snapshot["contracts"],
        json!([{"id": contract["id"], "client": "acme/mobile/1", "api": "acme/orders/1",
                "plan": "acme/gold/1"}])
    );
    let list = Server::ok(s.get(CONTRACTS));
    assert_eq!(list["items"][0]["id"], contract["id"]);
}

#[test]
fn duplicate_contract_is_409() {
    let s = Server::start();
    s.seed();
    Server::ok(s.post(CONTRACTS, contract_body()));
    let again = s.post(CONTRACTS, contract_body());
    assert_eq!(again.status, 409);
    assert_eq!(kind(&again), "contract-exists");
}

#[test]
fn contract_with_a_public_api_is_409() {
    let s = Server::start();
    s.seed();
    Server::ok(s.post("/v1/orgs/acme/apis", json!({"id": "status"})));
    Server::ok(s.post(
        "/v1/orgs/acme/apis/status/versions",
        json!({"version": "1", "public": true, "routing": {"path_prefix": "/status"},
               "plans": [{"plan": "gold", "version": "1"}]}),
    ));
    Server::ok(s.act("/v1/orgs/acme/apis/status/versions/1/publish"));
    let answer = s.post(
        CONTRACTS,
        json!({"api": "status", "api_version": "1", "plan": "gold"}),
    );
    assert_eq!(answer.status, 409);
    assert_eq!(kind(&answer), "contract-with-public-api");
}

#[test]
fn contract_with_an_unpublished_api_version_is_409() {
    let s = Server::start();
    s.seed();
    Server::ok(s.post(
        "/v1/orgs/acme/apis/orders/versions",
        json!({"version": "2", "routing": {"path_prefix": "/orders/v2"},
               "plans": [{"plan": "gold", "version": "1"}]}),
    ));
    let answer = s.post(
        CONTRACTS,
        json!({"api": "orders", "api_version": "2", "plan": "gold"}),
    );
    assert_eq!(answer.status, 409);
    assert_eq!(kind(&answer), "api-version-not-published");
}

#[test]
fn contract_through_a_plan_the_api_does_not_offer_is_422() {
    let s = Server::start();
    s.seed();
    Server::ok(s.post("/v1/orgs/acme/plans", json!({"id": "silver"})));
    Server::ok(s.post(
        "/v1/orgs/acme/plans/silver/versions",
        json!({"version": "1", "limits": [{"requests": 10, "per": "day"}]}),
    ));
    Server::ok(s.act("/v1/orgs/acme/plans/silver/versions/1/lock"));
    let answer = s.post(
        CONTRACTS,
        json!({"api": "orders", "api_version": "1", "plan": "silver"}),
    );
    assert_eq!(answer.status, 422);
    assert_eq!(kind(&answer), "plan-not-offered");
    // A plan it offers, in a version it does not: refused, never another version instead.
    let answer = s.post(
        CONTRACTS,
        json!({"api": "orders", "api_version": "1", "plan": "gold", "plan_version": "9"}),
    );
    assert_eq!(answer.status, 422);
    assert_eq!(kind(&answer), "plan-not-offered");
}

#[test]
fn deleting_a_contract_revokes_it_and_its_id_is_never_reused() {
    let s = Server::start();
    s.seed();
    let first = Server::ok(s.post(CONTRACTS, contract_body()));
    let id = first["id"].as_u64().unwrap();
    let deleted = s.delete(&format!("{CONTRACTS}/{id}"));
    assert_eq!(deleted.status, 204);
    assert_eq!(snapshot_of(&s)["contracts"], json!([]));
    assert_eq!(s.get(&format!("{CONTRACTS}/{id}")).status, 404);
    assert_eq!(s.delete(&format!("{CONTRACTS}/{id}")).status, 404);
    let second = Server::ok(s.post(CONTRACTS, contract_body()));
    assert!(
        second["id"].as_u64().unwrap() > id,
        "contract id {id} was reused"
    );
}

#[test]
fn lists_are_paginated_with_a_cursor() {
    let s = Server::start();
    for id in ["a", "b", "c", "d", "e"] {
        Server::ok(s.post("/v1/orgs", json!({"id": id})));
    }
    let mut seen = Vec::new();
    let mut path = "/v1/orgs?limit=2".to_owned();
    loop {
        let page = Server::ok(s.get(&path));
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|o| o["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/orgs?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    let bad = s.get("/v1/orgs?limit=0");
    assert_eq!(bad.status, 400);
    let bad_cursor = s.get("/v1/orgs?cursor=@@@");
    assert_eq!(bad_cursor.status, 400);
}

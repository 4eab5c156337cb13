//! `POST /v1/apply`: declarative convergence, one transaction, forward-only lifecycles.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Server;
use serde_json::{json, Value};

fn catalogue(plan_limit: u64, plan_locked: bool, api_status: &str) -> Value {
    json!({"orgs": [{
        "id": "acme",
        "plans": [{"id": "gold", "versions": [
            {"version": "1", "limits": [{"requests": plan_limit, "per": "day"}], "locked": plan_locked}
        ]}],
        "apis": [{"id": "orders", "versions": [
            {"version": "1", "status": api_status, "routing": {"path_prefix": "/orders/v1"},
             "plans": ["acme/gold/1"]}
        ]}]
    }]})
}

fn apply(s: &Server, document: Value) -> common::Answer {
    s.post("/v1/apply", document)
}

#[test]
fn apply_edits_drafts_and_moves_lifecycles_forward() {
    let s = Server::start();
    // A draft plan cannot be offered yet, so start with plans only.
    let drafts = json!({"orgs": [{"id": "acme", "plans": [{"id": "gold", "versions": [
        {"version": "1", "limits": [{"requests": 5, "per": "day"}]}]}]}]});
    let report = Server::ok(apply(&s, drafts));
    assert_eq!(report["revision"], 1, "drafts are invisible to gateways");

    let report = Server::ok(apply(&s, catalogue(50, true, "published")));
    let changes: Vec<&str> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        changes.contains(&"updated plan version acme/gold/1"),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"locked plan version acme/gold/1"),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"published api version acme/orders/1"),
        "{changes:?}"
    );
    assert_eq!(report["revision"], 2, "one transaction, one revision");
    let plan = Server::ok(s.get("/v1/orgs/acme/plans/gold/versions/1"));
    assert_eq!(plan["limits"], json!([{"requests": 50, "per": "day"}]));

    let report = Server::ok(apply(&s, catalogue(50, true, "retired")));
    assert_eq!(
        report["changes"],
        json!(["retired api version acme/orders/1"])
    );
    assert_eq!(s.revision(), 3);
}

#[test]
fn apply_refuses_to_change_a_locked_plan_version_and_names_it() {
    let s = Server::start();
    Server::ok(apply(&s, catalogue(50, true, "published")));
    let revision = s.revision();
    let answer = apply(&s, catalogue(60, true, "published"));
    assert_eq!(answer.status, 409);
    assert_eq!(
        answer.problem_type(),
        "urn:tollgate:problem:plan-version-locked"
    );
    let detail = answer.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.starts_with("orgs[acme].plans[gold]"), "{detail}");
    assert_eq!(s.revision(), revision);
}

#[test]
fn apply_never_moves_a_lifecycle_backwards() {
    let s = Server::start();
    Server::ok(apply(&s, catalogue(50, true, "published")));
    let unlock = apply(&s, catalogue(50, false, "published"));
    assert_eq!(unlock.status, 409);
    let unpublish = apply(&s, catalogue(50, true, "draft"));
    assert_eq!(unpublish.status, 409);
    assert_eq!(
        unpublish.problem_type(),
        "urn:tollgate:problem:api-version-not-draft"
    );
}

#[test]
fn apply_refuses_to_change_a_contracts_plan() {
    let s = Server::start();
    let mut document = catalogue(50, true, "published");
    document["orgs"][0]["plans"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "silver", "versions": [
            {"version": "1", "limits": [{"requests": 5, "per": "day"}], "locked": true}]}));
    document["orgs"][0]["apis"][0]["versions"][0]["plans"] =
        json!(["acme/gold/1", "acme/silver/1"]);
    document["orgs"][0]["clients"] = json!([{"id": "mobile", "versions": [{"version": "1",
        "contracts": [{"api": "acme/orders/1", "plan": "acme/gold/1"}]}]}]);
    let report = Server::ok(apply(&s, document.clone()));
    assert_eq!(report["issued_keys"].as_array().unwrap().len(), 1);
    document["orgs"][0]["clients"][0]["versions"][0]["contracts"][0]["plan"] =
        json!("acme/silver/1");
    let answer = apply(&s, document);
    assert_eq!(answer.status, 409);
    assert_eq!(
        answer.problem_type(),
        "urn:tollgate:problem:contract-exists"
    );
}

#[test]
fn apply_renames_and_leaves_unnamed_entries_alone() {
    let s = Server::start();
    Server::ok(apply(&s, json!({"orgs": [{"id": "acme", "name": "Acme"}]})));
    let report = Server::ok(apply(&s, json!({"orgs": [{"id": "acme"}]})));
    assert_eq!(report["changes"], json!([]));
    let report = Server::ok(apply(
        &s,
        json!({"orgs": [{"id": "acme", "name": "Acme Corp"}]}),
    ));
    assert_eq!(report["changes"], json!(["renamed org acme"]));
    assert_eq!(Server::ok(s.get("/v1/orgs/acme"))["name"], "Acme Corp");
}

#[test]
fn apply_refuses_an_entry_listed_twice() {
    let s = Server::start();
    let answer = apply(&s, json!({"orgs": [{"id": "acme"}, {"id": "acme"}]}));
    assert_eq!(answer.status, 422);
    assert_eq!(answer.problem_type(), "urn:tollgate:problem:listed-twice");
}

#[test]
fn an_export_applies_to_an_empty_store_even_with_retired_routes_and_their_contracts() {
    let source = Server::start();
    source.seed();
    let contracts = "/v1/orgs/acme/clients/mobile/versions/1/contracts";
    Server::ok(source.post(
        contracts,
        json!({"api": "orders", "api_version": "1", "plan": "gold"}),
    ));
    Server::ok(source.act("/v1/orgs/acme/apis/orders/versions/1/retire"));
    // v2 takes over the route v1 held, and has a contract of its own.
    Server::ok(source.post(
        "/v1/orgs/acme/apis/orders/versions",
        json!({"version": "2", "routing": {"path_prefix": "/orders/v1"},
               "plans": [{"plan": "gold", "version": "1"}]}),
    ));
    Server::ok(source.act("/v1/orgs/acme/apis/orders/versions/2/publish"));
    Server::ok(source.post(
        contracts,
        json!({"api": "orders", "api_version": "2", "plan": "gold"}),
    ));
    let exported = Server::ok(source.get("/v1/export"));

    let target = Server::start();
    let report = Server::ok(apply(&target, exported.clone()));
    assert_eq!(report["revision"], 2, "{report}");
    assert_eq!(Server::ok(target.get("/v1/export")), exported);
    let snapshot = target.snapshot().json();
    assert_eq!(snapshot["contracts"].as_array().unwrap().len(), 2);
    assert_eq!(Server::ok(apply(&target, exported))["changes"], json!([]));
}

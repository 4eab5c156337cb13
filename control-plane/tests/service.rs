//! The operational surface: OpenAPI document, health, metrics, problem answers for unknown
//! paths.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Server;

#[test]
fn openapi_documents_every_path_with_its_token() {
    let s = Server::start();
    let doc = s.request("GET", "/openapi.json", None, None, &[]).json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/orgs",
        "/v1/orgs/{org}",
        "/v1/orgs/{org}/plans",
        "/v1/orgs/{org}/plans/{plan}",
        "/v1/orgs/{org}/plans/{plan}/versions",
        "/v1/orgs/{org}/plans/{plan}/versions/{version}",
        "/v1/orgs/{org}/plans/{plan}/versions/{version}/lock",
        "/v1/orgs/{org}/apis",
        "/v1/orgs/{org}/apis/{api}/versions/{version}/publish",
        "/v1/orgs/{org}/apis/{api}/versions/{version}/retire",
        "/v1/orgs/{org}/clients/{client}/versions",
        "/v1/orgs/{org}/clients/{client}/versions/{version}/keys/rotate",
        "/v1/orgs/{org}/clients/{client}/versions/{version}/keys/{key_id}/revoke",
        "/v1/orgs/{org}/clients/{client}/versions/{version}/contracts",
        "/v1/orgs/{org}/clients/{client}/versions/{version}/contracts/{contract_id}",
        "/v1/snapshot",
        "/v1/apply",
        "/v1/export",
        "/healthz",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    let lock = &paths["/v1/orgs/{org}/plans/{plan}/versions/{version}/lock"]["post"];
    assert_eq!(
        lock["security"][0]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap(),
        "admin_token"
    );
    assert!(lock["responses"]["409"].is_object());
    let snapshot = &paths["/v1/snapshot"]["get"];
    assert_eq!(
        snapshot["security"][0]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap(),
        "gateway_token"
    );
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    // OpenAPI requires a description on every response.
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {status} has no description"
                );
            }
        }
    }
}

#[test]
fn healthz_and_metrics_answer_without_a_token() {
    let s = Server::start();
    let health = s.request("GET", "/healthz", None, None, &[]);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    s.get("/v1/orgs");
    let metrics = s.request("GET", "/metrics", None, None, &[]);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("tollgate_http_requests_total{"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("route=\"/v1/orgs\""),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("tollgate_snapshot_revision 1"),
        "{}",
        metrics.body
    );
}

#[test]
fn unknown_path_is_a_problem_404() {
    let s = Server::start();
    let answer = s.get("/v1/nothing-here");
    assert_eq!(answer.status, 404);
    assert_eq!(answer.problem_type(), "urn:tollgate:problem:not-found");
}

#[test]
fn apply_accepts_larger_bodies_than_other_paths() {
    let s = Server::start();
    let token = s.admin_token.clone();
    // 2 MiB: over the 1 MiB of ordinary paths, under the 64 MiB of apply. The unknown field
    // makes it a 400, which proves the body was read rather than refused for its size.
    let padded = format!(
        "{{\"orgs\": [], \"padding\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let answer = s.request("POST", "/v1/apply", Some(&token), Some(&padded), &[]);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("padding"), "{}", answer.body);
    assert_eq!(s.post_announcing("/v1/apply", 65 * 1024 * 1024).0, 413);
}

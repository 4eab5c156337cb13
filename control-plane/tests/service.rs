//! The operational surface: OpenAPI document, health, metrics, problem answers for unknown
//! paths.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Server;
use serde_json::{json, Value};
use tollgate_core::fleet::{Fallback, FleetSettings};
use tollgate_core::snapshot;

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
        tollgate_core::fleet::LEASE_PATH,
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
    for path in [
        tollgate_core::fleet::LEASE_PATH,
        tollgate_core::fleet::RETURN_PATH,
    ] {
        let leases = &paths[path]["post"];
        assert_eq!(
            leases["security"][0]
                .as_object()
                .unwrap()
                .keys()
                .next()
                .unwrap(),
            "gateway_token",
            "{path}"
        );
        for status in ["200", "400", "401", "404", "503"] {
            assert!(leases["responses"][status].is_object(), "{path} {status}");
        }
    }
    assert!(doc["components"]["schemas"]["LeaseRequest"].is_object());
    assert!(doc["components"]["schemas"]["LeaseAnswer"].is_object());
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

/// A snapshot with every field core can write set (a struct literal, so a new field fails to
/// compile here until it is documented).
fn snapshot_with_every_field() -> snapshot::Snapshot {
    use snapshot::*;
    let jwks = serde_json::from_value(json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "k1",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    }]}))
    .unwrap();
    Snapshot {
        schema: SCHEMA_VERSION,
        revision: 7,
        plans: vec![PlanVersion {
            id: "acme/gold/1".into(),
            limits: vec![RateLimit {
                requests: 10,
                per: Period::Minute,
            }],
        }],
        apis: vec![ApiVersion {
            id: "acme/orders/1".into(),
            status: ApiStatus::Published,
            public: false,
            routing: Routing {
                path_prefix: "/orders/v1".into(),
                hosts: vec!["api.test".into()],
            },
            forward_api_key: true,
            auth: AuthMode::ApiKeyOrJwt,
        }],
        clients: vec![ClientVersion {
            id: "acme/mobile/1".into(),
            keys: vec![ApiKeyHash {
                sha256: "ab".repeat(32),
                expires_at: Some(1_900_000_000),
            }],
            subjects: vec![TokenSubject {
                issuer: "https://idp.test".into(),
                value: "svc".into(),
            }],
        }],
        contracts: vec![Contract {
            id: 1,
            client: "acme/mobile/1".into(),
            api: "acme/orders/1".into(),
            plan: "acme/gold/1".into(),
        }],
        issuers: vec![Issuer {
            issuer: "https://idp.test".into(),
            audiences: vec!["orders".into()],
            jwks,
            client_claim: "azp".into(),
            max_token_lifetime_seconds: Some(3600),
        }],
        buckets: Some(vec![3]),
        next: Some("cursor".into()),
        base_revision: Some(6),
        fleet: Some(FleetSettings {
            fallback: Fallback::Closed,
        }),
    }
}

/// The schema `schema` stands for: `$ref`s followed, and of a `oneOf`/`anyOf` (an `Option`)
/// the alternative that is not `null`.
fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    loop {
        if let Some(reference) = schema["$ref"].as_str() {
            let name = reference.trim_start_matches("#/components/schemas/");
            schema = &doc["components"]["schemas"][name];
            assert!(
                schema.is_object(),
                "{reference} is not in components.schemas"
            );
        } else if let Some(options) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
            schema = options
                .iter()
                .find(|o| o["type"] != "null")
                .unwrap_or_else(|| panic!("no non-null alternative in {schema}"));
        } else {
            return schema;
        }
    }
}

/// Every key of `value` is a property of `schema`, recursively; returns the paths where the
/// schema is a free-form object.
fn undocumented(doc: &Value, schema: &Value, value: &Value, at: &str, free: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    match value {
        Value::Object(fields) => {
            let Some(properties) = schema["properties"].as_object() else {
                free.push(at.to_owned());
                return;
            };
            for (key, field) in fields {
                let property = properties
                    .get(key)
                    .unwrap_or_else(|| panic!("{at}.{key} is served but not documented"));
                undocumented(doc, property, field, &format!("{at}.{key}"), free);
            }
        }
        Value::Array(items) => {
            for item in items {
                undocumented(doc, &schema["items"], item, &format!("{at}[]"), free);
            }
        }
        _ => {}
    }
}

#[test]
fn openapi_snapshot_schema_is_cores() {
    let s = Server::start();
    let doc = s.request("GET", "/openapi.json", None, None, &[]).json();
    let body = &doc["paths"]["/v1/snapshot"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    let schema = resolve(&doc, body);
    let properties = schema["properties"].as_object().unwrap();
    assert!(properties.contains_key("issuers"), "{schema}");
    let client = resolve(&doc, &properties["clients"]["items"]);
    assert!(client["properties"]["subjects"].is_object(), "{client}");

    let served = serde_json::to_value(snapshot_with_every_field()).unwrap();
    let mut free = Vec::new();
    undocumented(&doc, body, &served, "snapshot", &mut free);
    // A key set's JWK fields are RFC 7517's, documented there.
    assert_eq!(free, ["snapshot.issuers[].jwks"]);
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

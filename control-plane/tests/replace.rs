//! `PUT` takes what `GET` returns (control-plane/README.md, issue 12 §3): every resource with a
//! `PUT` survives a GET → edit → PUT round trip; a read-only field repeated unchanged is accepted,
//! one that differs is 400 `invalid-field` naming it; an unknown field is 400 `invalid-body`; and a
//! lifecycle conflict (409) is answered before any complaint about read-only fields.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{Answer, Server};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};

const PROBLEM: &str = "urn:tollgate:problem:";

fn kind(answer: &Answer) -> String {
    answer
        .problem_type()
        .strip_prefix(PROBLEM)
        .unwrap()
        .to_owned()
}

/// The representation `GET` returns, with `edit` applied to it.
fn edited(s: &Server, path: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut body = Server::ok(s.get(path));
    edit(&mut body);
    body
}

/// PUTs `body` and checks the answer is 400 `invalid-field` naming `field`.
fn refused_naming(s: &Server, path: &str, body: Value, field: &str) {
    let answer = s.put(path, body);
    assert_eq!(answer.status, 400, "{field}: {}", answer.body);
    assert_eq!(kind(&answer), "invalid-field", "{}", answer.body);
    let detail = answer.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.starts_with(&format!("{field}: ")),
        "the detail names {field}: {detail}"
    );
}

/// Every read-only field of the GET body, changed one at a time, is refused naming it; the
/// stored resource is unchanged afterwards.
fn each_changed_read_only_field_is_refused(s: &Server, path: &str, fields: &[&str]) {
    let before = Server::ok(s.get(path));
    for field in fields {
        let body = edited(s, path, |b| {
            b[*field] = match &b[*field] {
                Value::String(v) => json!(format!("{v}x")),
                Value::Number(n) => json!(n.as_i64().unwrap() + 1),
                Value::Null => json!(1),
                other => panic!("{field} is {other}"),
            }
        });
        refused_naming(s, path, body, field);
    }
    assert_eq!(Server::ok(s.get(path)), before);
}

fn unknown_field_is_invalid_body(s: &Server, path: &str) {
    let body = edited(s, path, |b| b["colour"] = json!("blue"));
    let answer = s.put(path, body);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(kind(&answer), "invalid-body");
    assert!(answer.body.contains("colour"), "{}", answer.body);
}

#[test]
fn plan_version_round_trips_through_get_and_put() {
    let s = Server::start();
    Server::ok(s.post("/v1/orgs", json!({"id": "acme"})));
    Server::ok(s.post("/v1/orgs/acme/plans", json!({"id": "gold"})));
    Server::ok(s.post(
        "/v1/orgs/acme/plans/gold/versions",
        json!({"version": "1", "limits": [{"requests": 100, "per": "day"}]}),
    ));
    let path = "/v1/orgs/acme/plans/gold/versions/1";
    let body = edited(&s, path, |b| {
        b["limits"] = json!([{"requests": 5, "per": "second"}])
    });
    let answer = Server::ok(s.put(path, body.clone()));
    assert_eq!(answer, body, "PUT answers what it was given");
    assert_eq!(Server::ok(s.get(path)), body);
    // The answer of a PUT can be PUT again.
    assert_eq!(Server::ok(s.put(path, answer.clone())), answer);
    // Read-only fields may still be left out.
    let short = Server::ok(s.put(path, json!({"limits": [{"requests": 7, "per": "minute"}]})));
    assert_eq!(short["limits"], json!([{"requests": 7, "per": "minute"}]));
}

#[test]
fn plan_version_put_refuses_a_changed_read_only_field_naming_it() {
    let s = Server::start();
    Server::ok(s.post("/v1/orgs", json!({"id": "acme"})));
    Server::ok(s.post("/v1/orgs/acme/plans", json!({"id": "gold"})));
    Server::ok(s.post(
        "/v1/orgs/acme/plans/gold/versions",
        json!({"version": "1", "limits": [{"requests": 100, "per": "day"}]}),
    ));
    let path = "/v1/orgs/acme/plans/gold/versions/1";
    each_changed_read_only_field_is_refused(
        &s,
        path,
        &["org", "plan", "version", "created_at", "locked_at"],
    );
    let locking = edited(&s, path, |b| b["status"] = json!("locked"));
    refused_naming(&s, path, locking, "status");
    unknown_field_is_invalid_body(&s, path);
}

#[test]
fn locked_plan_version_answers_409_to_its_own_get_body() {
    let s = Server::start();
    s.seed();
    let path = "/v1/orgs/acme/plans/gold/versions/1";
    let unchanged = Server::ok(s.get(path));
    let answer = s.put(path, unchanged.clone());
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(kind(&answer), "plan-version-locked");
    // The lifecycle comes first: a changed read-only field on a locked version is still 409.
    let relabelled = edited(&s, path, |b| {
        b["status"] = json!("draft");
        b["limits"] = json!([{"requests": 1, "per": "day"}]);
    });
    let answer = s.put(path, relabelled);
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(kind(&answer), "plan-version-locked");
    assert_eq!(Server::ok(s.get(path)), unchanged);
}

#[test]
fn api_version_round_trips_through_get_and_put() {
    let s = Server::start();
    s.seed();
    Server::ok(s.post(
        "/v1/orgs/acme/apis/orders/versions",
        json!({"version": "2", "routing": {"path_prefix": "/orders/v2"},
               "plans": [{"plan": "gold", "version": "1"}]}),
    ));
    let path = "/v1/orgs/acme/apis/orders/versions/2";
    let body = edited(&s, path, |b| {
        b["routing"]["hosts"] = json!(["api.example.com"]);
        b["forward_api_key"] = json!(true);
    });
    let answer = Server::ok(s.put(path, body.clone()));
    assert_eq!(answer, body, "PUT answers what it was given");
    assert_eq!(Server::ok(s.get(path)), body);
    assert_eq!(Server::ok(s.put(path, answer.clone())), answer);
    // A plan may still name no org (the API's), and read-only fields may be left out.
    let short = Server::ok(s.put(
        path,
        json!({"routing": {"path_prefix": "/orders/v2"}, "plans": [{"plan": "gold", "version": "1"}]}),
    ));
    assert_eq!(
        short["plans"],
        json!([{"org": "acme", "plan": "gold", "version": "1"}])
    );
}

#[test]
fn api_version_put_refuses_a_changed_read_only_field_naming_it() {
    let s = Server::start();
    s.seed();
    Server::ok(s.post(
        "/v1/orgs/acme/apis/orders/versions",
        json!({"version": "2", "routing": {"path_prefix": "/orders/v2"},
               "plans": [{"plan": "gold", "version": "1"}]}),
    ));
    let path = "/v1/orgs/acme/apis/orders/versions/2";
    each_changed_read_only_field_is_refused(
        &s,
        path,
        &[
            "org",
            "api",
            "version",
            "created_at",
            "published_at",
            "retired_at",
        ],
    );
    let publishing = edited(&s, path, |b| b["status"] = json!("published"));
    refused_naming(&s, path, publishing, "status");
    unknown_field_is_invalid_body(&s, path);
}

#[test]
fn published_api_version_answers_409_to_its_own_get_body() {
    let s = Server::start();
    s.seed();
    let path = "/v1/orgs/acme/apis/orders/versions/1";
    let unchanged = Server::ok(s.get(path));
    let answer = s.put(path, unchanged.clone());
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(kind(&answer), "api-version-not-draft");
    let relabelled = edited(&s, path, |b| b["status"] = json!("draft"));
    let answer = s.put(path, relabelled);
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(kind(&answer), "api-version-not-draft");
    assert_eq!(Server::ok(s.get(path)), unchanged);
}

#[test]
fn org_plan_api_and_client_rename_round_trips_through_get_and_put() {
    let s = Server::start();
    s.seed();
    for path in [
        "/v1/orgs/acme",
        "/v1/orgs/acme/plans/gold",
        "/v1/orgs/acme/apis/orders",
        "/v1/orgs/acme/clients/mobile",
    ] {
        let body = edited(&s, path, |b| b["name"] = json!("Renamed"));
        assert_eq!(Server::ok(s.put(path, body.clone())), body, "{path}");
        assert_eq!(Server::ok(s.get(path)), body, "{path}");
        let read_only: &[&str] = if path == "/v1/orgs/acme" {
            &["id", "created_at"]
        } else {
            &["org", "id", "created_at"]
        };
        each_changed_read_only_field_is_refused(&s, path, read_only);
        unknown_field_is_invalid_body(&s, path);
        let short = Server::ok(s.put(path, json!({"name": "Short"})));
        assert_eq!(short["name"], "Short", "{path}");
    }
}

#[test]
fn external_issuer_round_trips_through_get_and_put() {
    let s = Server::start();
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA",
        "x": URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes())}]});
    Server::ok(s.post(
        "/v1/issuers",
        json!({"issuer": "https://idp.test", "audiences": ["orders"], "jwks": jwks}),
    ));
    let path = "/v1/issuers/https%3A%2F%2Fidp.test";
    let body = edited(&s, path, |b| {
        b["audiences"] = json!(["orders", "billing"]);
        b["max_token_lifetime_seconds"] = json!(600);
    });
    let answer = Server::ok(s.put(path, body.clone()));
    assert_eq!(answer["audiences"], json!(["orders", "billing"]));
    assert_eq!(answer["max_token_lifetime_seconds"], 600);
    assert_eq!(answer["issuer"], "https://idp.test");
    // `updated_at` moves with each PUT, so the answer (not the earlier GET) is what PUTs again.
    Server::ok(s.put(path, answer));
    each_changed_read_only_field_is_refused(&s, path, &["issuer", "created_at", "updated_at"]);
    unknown_field_is_invalid_body(&s, path);
}

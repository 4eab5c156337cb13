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

// ---- issuers, token subjects and service accounts ----

const IDP: &str = "https://idp.example.test/realms/acme";
const IDP_PATH: &str = "/v1/issuers/https%3A%2F%2Fidp.example.test%2Frealms%2Facme";

/// A JWKS with one Ed25519 public key, as an identity provider publishes it.
fn jwks() -> Value {
    use base64::Engine;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
    json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]})
}

/// A catalogue with an external issuer, a client version mapped to an identity at it, and a
/// service account.
fn identities() -> Value {
    let mut document = catalogue(50, true, "published");
    document["issuers"] = json!([{"issuer": IDP, "audiences": ["orders"], "jwks": jwks(),
                                   "max_token_lifetime_seconds": 600}]);
    document["orgs"][0]["clients"] = json!([{"id": "mobile", "versions": [{"version": "1",
        "contracts": [{"api": "acme/orders/1", "plan": "acme/gold/1"}],
        "subjects": [{"issuer": IDP, "value": "svc-mobile"}]}]}]);
    document["service_accounts"] = json!([{"id": "ci", "scopes": ["tollgate:read"]}]);
    document
}

fn changes(report: &Value) -> Vec<String> {
    report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

fn detail(answer: &common::Answer) -> String {
    answer.json()["detail"].as_str().unwrap().to_owned()
}

#[test]
fn issuers_subjects_and_service_accounts_apply_and_round_trip_through_export() {
    let source = Server::start();
    let report = Server::ok(apply(&source, identities()));
    let made = changes(&report);
    // Issuers come first: the subject names one.
    assert_eq!(made[0], format!("created issuer {IDP}"), "{made:?}");
    assert!(
        made.contains(&format!(
            "added subject svc-mobile@{IDP} to client version acme/mobile/1"
        )),
        "{made:?}"
    );
    assert!(
        made.contains(&"created service account ci".to_owned()),
        "{made:?}"
    );
    // The account's credentials are issued once, in the report, and they are its own.
    let issued = &report["issued_credentials"][0];
    assert_eq!(issued["id"], "ci");
    assert!(issued["client_secret"]
        .as_str()
        .unwrap()
        .starts_with("tgs_"));
    let account = Server::ok(source.get("/v1/service-accounts/ci"));
    assert_eq!(account["scopes"], json!(["tollgate:read"]));
    assert_eq!(account["credentials"][0]["client_id"], issued["client_id"]);
    // Gateways see the issuer and the mapping.
    let snapshot = source.snapshot().json();
    let external: Vec<&Value> = snapshot["issuers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["issuer"] == IDP)
        .collect();
    assert_eq!(external.len(), 1, "{snapshot}");
    assert_eq!(
        snapshot["clients"][0]["subjects"],
        json!([{"issuer": IDP, "value": "svc-mobile"}])
    );

    // The export declares them, with no secret of any kind.
    let exported = Server::ok(source.get("/v1/export"));
    assert_eq!(
        exported["issuers"],
        json!([{"issuer": IDP, "audiences": ["orders"], "jwks": jwks(), "client_claim": "sub",
                "max_token_lifetime_seconds": 600}])
    );
    assert_eq!(
        exported["orgs"][0]["clients"][0]["versions"][0]["subjects"],
        json!([{"issuer": IDP, "value": "svc-mobile"}])
    );
    assert_eq!(
        exported["service_accounts"],
        json!([{"id": "ci", "scopes": ["tollgate:read"]}])
    );
    let text = exported.to_string();
    for secret in [
        "\"client_secret\"",
        "\"client_id\"",
        "\"api_key\"",
        "tgs_",
        "tga_",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }

    // Applied to an empty store, the export rebuilds the same catalogue …
    let target = Server::start();
    let report = Server::ok(apply(&target, exported.clone()));
    assert_eq!(report["issued_credentials"].as_array().unwrap().len(), 1);
    assert_eq!(Server::ok(target.get("/v1/export")), exported);
    // … and applying it again changes nothing, issues nothing, moves no revision.
    let revision = target.revision();
    let again = Server::ok(apply(&target, exported));
    assert_eq!(again["changes"], json!([]));
    assert_eq!(again["issued_keys"], json!([]));
    assert_eq!(again["issued_credentials"], json!([]));
    assert_eq!(again["revision"], revision);
    assert_eq!(target.revision(), revision);
}

#[test]
fn an_issuer_whose_settings_differ_is_replaced_as_put_does() {
    let s = Server::start();
    Server::ok(apply(&s, identities()));
    let created_at = Server::ok(s.get(IDP_PATH))["created_at"].clone();
    let revision = s.revision();
    let mut document = identities();
    // Audiences changed and the lifetime cap left out: it goes back to the default, as PUT.
    document["issuers"] = json!([{"issuer": IDP, "audiences": ["orders", "billing"],
                                   "jwks": jwks()}]);
    let report = Server::ok(apply(&s, document.clone()));
    assert_eq!(report["changes"], json!([format!("updated issuer {IDP}")]));
    assert_eq!(s.revision(), revision + 1);
    let issuer = Server::ok(s.get(IDP_PATH));
    assert_eq!(issuer["audiences"], json!(["orders", "billing"]));
    assert!(
        issuer.get("max_token_lifetime_seconds").is_none(),
        "{issuer}"
    );
    assert_eq!(issuer["created_at"], created_at);
    assert_eq!(Server::ok(apply(&s, document))["changes"], json!([]));
}

#[test]
fn a_subject_already_mapped_elsewhere_or_left_out_is_not_moved_or_removed() {
    let s = Server::start();
    Server::ok(apply(&s, identities()));
    // Leaving the subject out deletes nothing, as everywhere in apply.
    let mut document = identities();
    document["orgs"][0]["clients"][0]["versions"][0]["subjects"] = json!([]);
    assert_eq!(
        Server::ok(apply(&s, document.clone()))["changes"],
        json!([])
    );
    // The same identity declared on another client version is refused: one identity acts as
    // one client version.
    document["orgs"][0]["clients"][0]["versions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"version": "2", "subjects": [{"issuer": IDP, "value": "svc-mobile"}]}));
    let revision = s.revision();
    let answer = apply(&s, document);
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.problem_type(), "urn:tollgate:problem:already-exists");
    let detail = detail(&answer);
    assert!(
        detail.starts_with(&format!(
            "orgs[acme].clients[mobile].versions[2].subjects[svc-mobile@{IDP}]"
        )),
        "{detail}"
    );
    assert!(detail.contains("acme/mobile/1"), "{detail}");
    assert_eq!(s.revision(), revision);
    assert_eq!(s.get("/v1/orgs/acme/clients/mobile/versions/2").status, 404);
}

#[test]
fn a_service_account_with_other_scopes_is_refused_not_changed() {
    let s = Server::start();
    Server::ok(apply(&s, identities()));
    let mut document = identities();
    // Order and repetition do not matter: scopes are a set.
    document["service_accounts"] =
        json!([{"id": "ci", "scopes": ["tollgate:read", "tollgate:read"]}]);
    assert_eq!(
        Server::ok(apply(&s, document.clone()))["changes"],
        json!([])
    );
    document["service_accounts"] = json!([{"id": "ci", "scopes": ["tollgate:admin"]}]);
    let answer = apply(&s, document);
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(
        answer.problem_type(),
        "urn:tollgate:problem:service-account-exists"
    );
    assert!(
        detail(&answer).starts_with("service_accounts[ci]: "),
        "{}",
        answer.body
    );
    let account = Server::ok(s.get("/v1/service-accounts/ci"));
    assert_eq!(account["scopes"], json!(["tollgate:read"]));
}

#[test]
fn a_subject_of_an_unknown_issuer_is_refused_and_nothing_is_written() {
    let s = Server::start();
    let revision = s.revision();
    let mut document = identities();
    document["orgs"][0]["clients"][0]["versions"][0]["subjects"] =
        json!([{"issuer": "https://nowhere.test", "value": "svc-mobile"}]);
    let answer = apply(&s, document);
    assert_eq!(answer.status, 404, "{}", answer.body);
    let detail = detail(&answer);
    assert!(
        detail.starts_with(
            "orgs[acme].clients[mobile].versions[1].subjects[svc-mobile@https://nowhere.test]: \
             issuer https://nowhere.test does not exist"
        ),
        "{detail}"
    );
    // The issuer, the org and the account declared before it were rolled back with it.
    assert_eq!(s.get(IDP_PATH).status, 404);
    assert_eq!(s.get("/v1/orgs/acme").status, 404);
    assert_eq!(s.get("/v1/service-accounts/ci").status, 404);
    assert_eq!(s.revision(), revision);
}

#[test]
fn identities_listed_twice_are_refused_naming_where() {
    let s = Server::start();
    let revision = s.revision();
    let issuer = json!({"issuer": IDP, "audiences": ["orders"], "jwks": jwks()});

    let mut document = identities();
    document["issuers"] = json!([issuer, issuer]);
    let answer = apply(&s, document);
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(answer.problem_type(), "urn:tollgate:problem:listed-twice");
    assert_eq!(detail(&answer), format!("issuers: {IDP} is listed twice"));

    let mut document = identities();
    document["service_accounts"] = json!([{"id": "ci", "scopes": ["tollgate:read"]},
                                          {"id": "ci", "scopes": ["tollgate:admin"]}]);
    let answer = apply(&s, document);
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(detail(&answer), "service_accounts: ci is listed twice");

    let mut document = identities();
    document["orgs"][0]["clients"][0]["versions"][0]["subjects"] =
        json!([{"issuer": IDP, "value": "svc-mobile"}, {"issuer": IDP, "value": "svc-mobile"}]);
    let answer = apply(&s, document);
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(
        detail(&answer).starts_with("orgs[acme].clients[mobile].versions[1].subjects[svc-mobile@"),
        "{}",
        answer.body
    );

    // One identity on two client versions of the same document.
    let mut document = identities();
    document["orgs"][0]["clients"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "web", "versions": [{"version": "1",
            "subjects": [{"issuer": IDP, "value": "svc-mobile"}]}]}));
    let answer = apply(&s, document);
    assert_eq!(answer.status, 422, "{}", answer.body);
    let detail = detail(&answer);
    assert!(
        detail.starts_with("orgs[acme].clients[web].versions[1].subjects[svc-mobile@"),
        "{detail}"
    );
    assert!(
        detail.contains("also under orgs[acme].clients[mobile].versions[1]"),
        "{detail}"
    );
    assert_eq!(s.revision(), revision);
    assert_eq!(s.get("/v1/orgs/acme").status, 404);
}

#[test]
fn invalid_scopes_issuers_and_subjects_are_refused_naming_the_field() {
    let s = Server::start();
    let revision = s.revision();
    let refused = |document: Value, status: u16, kind: &str, starts: &str| {
        let answer = apply(&s, document);
        assert_eq!(answer.status, status, "{}", answer.body);
        assert_eq!(
            answer.problem_type(),
            format!("urn:tollgate:problem:{kind}")
        );
        let detail = detail(&answer);
        assert!(detail.starts_with(starts), "{detail}");
    };

    let mut document = identities();
    document["service_accounts"] = json!([{"id": "ci", "scopes": ["tollgate:root"]}]);
    refused(
        document,
        400,
        "invalid-field",
        "service_accounts[ci].scopes: unknown scope \"tollgate:root\"",
    );
    let mut document = identities();
    document["service_accounts"] = json!([{"id": "ci", "scopes": []}]);
    refused(
        document,
        400,
        "invalid-field",
        "service_accounts[ci].scopes: name at least one scope",
    );
    let mut document = identities();
    document["service_accounts"] = json!([{"id": "CI!", "scopes": ["tollgate:read"]}]);
    refused(document, 400, "invalid-field", "service_accounts[].id");

    // A shared secret is not a key gateways can verify with.
    let mut document = identities();
    document["issuers"][0]["jwks"] =
        json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]});
    refused(
        document,
        422,
        "invalid-issuer",
        &format!("issuers[{IDP}]: jwks.keys[0]"),
    );
    let mut document = identities();
    document["issuers"][0]["max_token_lifetime_seconds"] = json!(0);
    refused(
        document,
        400,
        "invalid-field",
        &format!("issuers[{IDP}].max_token_lifetime_seconds: 1 to"),
    );

    let mut document = identities();
    document["orgs"][0]["clients"][0]["versions"][0]["subjects"] =
        json!([{"issuer": IDP, "value": ""}]);
    refused(
        document,
        400,
        "invalid-field",
        &format!("orgs[acme].clients[mobile].versions[1].subjects[@{IDP}].value"),
    );
    assert_eq!(s.revision(), revision);
}

#[test]
fn secrets_cannot_be_declared() {
    let s = Server::start();
    let mut document = identities();
    document["service_accounts"] = json!([{"id": "ci", "scopes": ["tollgate:read"],
                                           "client_secret": "tgs_chosen"}]);
    let answer = apply(&s, document);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("client_secret"), "{}", answer.body);
    let mut document = identities();
    document["orgs"][0]["clients"][0]["versions"][0]["api_key"] = json!("tg_chosen");
    let answer = apply(&s, document);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("api_key"), "{}", answer.body);
    assert_eq!(s.get("/v1/orgs/acme").status, 404);
}

//! Tokens: the own issuer's keys and JWKS, client credentials and `POST /oauth/token`
//! (RFC 6749 §4.4, errors per §5.2), key rotation, external issuers, management tokens.
//! Tokens are checked with `core`'s own verifier on the snapshot's issuers, as gateways do.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::{file_contains, wait_until, Answer, Server, TEST_ISSUER};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use tollgate_core::snapshot::Issuer;
use tollgate_core::token::{TokenRejected, TrustedIssuers};

const VERSION: &str = "/v1/orgs/acme/clients/mobile/versions/1";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `POST /oauth/token` with a form body and extra headers.
fn token_request(s: &Server, form: &str, headers: &[(&str, &str)]) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut builder = ureq::http::Request::builder()
        .method("POST")
        .uri(s.url("/oauth/token"));
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        builder = builder.header("content-type", "application/x-www-form-urlencoded");
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let mut response = agent.run(builder.body(form.to_owned()).unwrap()).unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

fn credentials(s: &Server) -> (String, String) {
    let issued = Server::ok(s.act(&format!("{VERSION}/credentials")));
    (
        issued["client_id"].as_str().unwrap().to_owned(),
        issued["client_secret"].as_str().unwrap().to_owned(),
    )
}

fn token(s: &Server, id: &str, secret: &str) -> String {
    let answer = token_request(
        s,
        "grant_type=client_credentials",
        &[("authorization", &basic(id, secret))],
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["access_token"].as_str().unwrap().to_owned()
}

fn issuers(s: &Server) -> Vec<Issuer> {
    serde_json::from_value(s.snapshot().json()["issuers"].clone()).unwrap()
}

fn kid_of(token: &str) -> String {
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

fn jwks_kids(s: &Server) -> Vec<String> {
    let answer = s.request("GET", "/.well-known/jwks.json", None, None, &[]);
    assert_eq!(answer.status, 200);
    let mut kids: Vec<String> = answer.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

#[test]
fn credentials_give_a_token_that_verifies_against_the_snapshot_issuers() {
    let s = Server::start();
    s.seed();
    let before = s.revision();
    let (id, secret) = credentials(&s);
    // 32 CSPRNG bytes after the prefix: 256 bits.
    assert_eq!(secret.strip_prefix("tgs_").unwrap().len(), 43);
    assert_eq!(
        s.revision(),
        before + 1,
        "the first credentials add a subject"
    );
    let snapshot = s.snapshot().json();
    let client = snapshot["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "acme/mobile/1")
        .unwrap();
    // The credentials' client_id is the subject: a token names the credentials it came from.
    assert_eq!(
        client["subjects"],
        json!([{"issuer": TEST_ISSUER, "value": id}])
    );

    let answer = token_request(
        &s,
        "grant_type=client_credentials",
        &[("authorization", &basic(&id, &secret))],
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("cache-control").as_deref(), Some("no-store"));
    let body = answer.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "tollgate:gateway");
    let access_token = body["access_token"].as_str().unwrap().to_owned();

    let verified = TrustedIssuers::build(&issuers(&s))
        .unwrap()
        .verify(&access_token, now_ms())
        .unwrap();
    assert_eq!(verified.issuer, TEST_ISSUER);
    assert_eq!(verified.client_subject, id);
    assert_eq!(verified.subject.as_deref(), Some("acme/mobile/1"));
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(access_token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    for claim in [
        "iss",
        "sub",
        "client_id",
        "aud",
        "exp",
        "iat",
        "jti",
        "scope",
    ] {
        assert!(claims.get(claim).is_some(), "{claim} missing: {claims}");
    }
    assert_eq!(claims["aud"], "tollgate-gateway");
    assert_eq!(jwks_kids(&s), vec![kid_of(&access_token)]);

    // Body credentials work too; new credentials move the revision (their subject replaces
    // the old one).
    let form = format!("grant_type=client_credentials&client_id={id}&client_secret={secret}");
    assert_eq!(token_request(&s, &form, &[]).status, 200);
    let revision = s.revision();
    let (id2, secret2) = credentials(&s);
    assert!(s.revision() > revision);
    token(&s, &id2, &secret2);
    // Replaced without grace: the old secret stops at once.
    let old = token_request(
        &s,
        "grant_type=client_credentials",
        &[("authorization", &basic(&id, &secret))],
    );
    assert_eq!(old.status, 401);

    // Secrets are stored hashed and never logged; the signing key file is private (on
    // PostgreSQL there is none: the key is in the database, sealed).
    for secret in [&secret, &secret2] {
        assert!(!s.logs().contains(secret.as_str()));
    }
    assert!(!s.logs().contains(&access_token));
    if let Some(db) = common::backend_database_name(&s.data_dir) {
        let dump = common::postgres_server::shared().dump(&db);
        for secret in [&secret, &secret2] {
            assert!(!dump.contains(secret.as_str()), "a client secret in {db}");
        }
        assert!(dump.contains("\tv1."), "the sealed signing key in {db}");
        assert!(!s.data_dir.join("token-signing-keys").exists());
        return;
    }
    let db = s.data_dir.join("tollgate.db");
    for secret in [&secret, &secret2] {
        assert!(!file_contains(&db, secret.as_bytes()));
        assert!(!file_contains(
            &db.with_extension("db-wal"),
            secret.as_bytes()
        ));
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.data_dir.join("token-signing-keys"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn token_endpoint_errors_follow_rfc_6749() {
    let s = Server::start();
    s.seed();
    let (id, secret) = credentials(&s);
    let auth = basic(&id, &secret);
    let grant = "grant_type=client_credentials";
    // (case, form, headers, status, error)
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "JSON body",
            "{}".into(),
            vec![("content-type", "application/json".into())],
            400,
            "invalid_request",
        ),
        (
            "no grant_type",
            "".into(),
            vec![("authorization", auth.clone())],
            400,
            "invalid_request",
        ),
        (
            "another grant",
            "grant_type=password&username=a&password=b".into(),
            vec![("authorization", auth.clone())],
            400,
            "unsupported_grant_type",
        ),
        (
            "no client authentication",
            grant.into(),
            vec![],
            401,
            "invalid_client",
        ),
        (
            "wrong secret",
            grant.into(),
            vec![("authorization", basic(&id, "tgs_wrong"))],
            401,
            "invalid_client",
        ),
        (
            "unknown client",
            grant.into(),
            vec![("authorization", basic("tgc_unknown", &secret))],
            401,
            "invalid_client",
        ),
        (
            "bearer instead of basic",
            grant.into(),
            vec![("authorization", format!("Bearer {secret}"))],
            401,
            "invalid_client",
        ),
        (
            "two client authentications",
            format!("{grant}&client_secret={secret}"),
            vec![("authorization", auth.clone())],
            400,
            "invalid_request",
        ),
        (
            "repeated parameter",
            format!("{grant}&{grant}"),
            vec![("authorization", auth.clone())],
            400,
            "invalid_request",
        ),
        (
            "scope not granted",
            format!("{grant}&scope=tollgate:admin"),
            vec![("authorization", auth.clone())],
            400,
            "invalid_scope",
        ),
    ];
    for (case, form, headers, status, error) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = token_request(&s, &form, &headers);
        assert_eq!(answer.status, status, "{case}: {}", answer.body);
        assert_eq!(answer.json()["error"], error, "{case}");
        assert!(answer.json()["error_description"].is_string(), "{case}");
        assert_eq!(
            answer.header("cache-control").as_deref(),
            Some("no-store"),
            "{case}"
        );
        if status == 401 {
            assert_eq!(
                answer.header("www-authenticate").as_deref(),
                Some("Basic realm=\"tollgate\""),
                "{case}"
            );
        }
        assert!(!answer.body.contains(&secret), "{case}");
    }
    let ok = token_request(
        &s,
        &format!("{grant}&scope=tollgate:gateway"),
        &[("authorization", &auth)],
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[test]
fn rotation_keeps_the_old_key_until_its_tokens_expire() {
    let lifetime = 2;
    let s = Server::start_with_env(&[("TOLLGATE_TOKEN_LIFETIME", "2")]);
    s.seed();
    let (id, secret) = credentials(&s);
    let before = token(&s, &id, &secret);
    let old_kid = kid_of(&before);
    let revision = s.revision();
    let rotated_at = Instant::now();
    let rotated = Server::ok(s.act("/v1/token-keys/rotate"));
    assert_eq!(s.revision(), revision + 1);
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    let after = token(&s, &id, &secret);
    assert_eq!(kid_of(&after), new_kid);
    let mut both = vec![old_kid.clone(), new_kid.clone()];
    both.sort();
    assert_eq!(jwks_kids(&s), both);
    // Both verify against what gateways hold now.
    let trusted = TrustedIssuers::build(&issuers(&s)).unwrap();
    trusted.verify(&before, now_ms()).unwrap();
    trusted.verify(&after, now_ms()).unwrap();

    // The old key leaves once its last token is past expiry and the gateways' leeway.
    wait_until(
        Duration::from_secs(60),
        "the retired key to drop out",
        || jwks_kids(&s) == vec![new_kid.clone()],
    );
    assert!(rotated_at.elapsed() >= Duration::from_secs(lifetime + 30 - 1));
    let snapshot_kids: Vec<String> = issuers(&s)[0]
        .jwks
        .keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .collect();
    assert_eq!(snapshot_kids, vec![new_kid]);
    assert_eq!(s.revision(), revision + 2);
}

#[test]
fn signing_keys_survive_a_restart() {
    let s = Server::start();
    s.seed();
    let kids = jwks_kids(&s);
    let revision = s.revision();
    let s = s.kill9_and_restart();
    assert_eq!(jwks_kids(&s), kids);
    assert_eq!(
        s.revision(),
        revision,
        "an unchanged issuer does not move the revision"
    );
    let (id, secret) = credentials(&s);
    assert_eq!(vec![kid_of(&token(&s, &id, &secret))], kids);
}

fn service_token(s: &Server, account: &str, scopes: &[&str]) -> String {
    let created = Server::ok(s.post(
        "/v1/service-accounts",
        json!({"id": account, "scopes": scopes}),
    ));
    token(
        s,
        created["client_id"].as_str().unwrap(),
        created["client_secret"].as_str().unwrap(),
    )
}

#[test]
fn management_tokens_carry_scopes_and_their_own_audience() {
    let s = Server::start();
    s.seed();
    let org = json!({"id": "other"}).to_string();

    let reader = service_token(&s, "dashboards", &["tollgate:read"]);
    assert_eq!(
        s.request("GET", "/v1/orgs", Some(&reader), None, &[])
            .status,
        200
    );
    let refused = s.request("POST", "/v1/orgs", Some(&reader), Some(&org), &[]);
    assert_eq!(refused.status, 403);
    assert_eq!(refused.problem_type(), "urn:tollgate:problem:forbidden");
    assert_eq!(s.get("/v1/orgs/other").status, 404);

    let admin = service_token(&s, "ci", &["tollgate:admin"]);
    assert_eq!(
        s.request("POST", "/v1/orgs", Some(&admin), Some(&org), &[])
            .status,
        201
    );

    // A gateway token is no management token, and a management token no gateway token.
    let (id, secret) = credentials(&s);
    let gateway = token(&s, &id, &secret);
    let answer = s.request("GET", "/v1/orgs", Some(&gateway), None, &[]);
    assert_eq!(answer.status, 401);
    assert_eq!(answer.problem_type(), "urn:tollgate:problem:unauthorized");
    assert_eq!(
        TrustedIssuers::build(&issuers(&s))
            .unwrap()
            .verify(&admin, now_ms())
            .unwrap_err(),
        TokenRejected::WrongAudience
    );
    // Neither reaches the snapshot, and the static admin token still works.
    assert_eq!(
        s.request("GET", "/v1/snapshot", Some(&admin), None, &[])
            .status,
        401
    );
    assert_eq!(s.get("/v1/orgs").status, 200);
    // Unknown scopes are refused when the account is created.
    let bad = s.post(
        "/v1/service-accounts",
        json!({"id": "x", "scopes": ["root"]}),
    );
    assert_eq!(bad.status, 400);
}

#[test]
fn deleting_a_service_account_stops_its_tokens_at_once() {
    let s = Server::start();
    s.seed();
    let admin = service_token(&s, "ci", &["tollgate:admin"]);
    assert_eq!(
        s.request("GET", "/v1/orgs", Some(&admin), None, &[]).status,
        200
    );
    let deleted = s.delete("/v1/service-accounts/ci");
    assert!(deleted.status < 300, "{}", deleted.body);
    let answer = s.request("GET", "/v1/orgs", Some(&admin), None, &[]);
    assert_eq!(
        answer.status, 401,
        "a still-valid token of a deleted account"
    );
    assert_eq!(answer.problem_type(), "urn:tollgate:problem:unauthorized");
}

#[test]
fn external_issuers_are_checked_and_map_to_client_versions() {
    let s = Server::start();
    s.seed();
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let x = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
    let issuer = "https://idp.example.test";
    let jwks =
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]});

    // A shared secret has no place in a JWKS: refused, naming the key.
    let hs = s.post(
        "/v1/issuers",
        json!({"issuer": issuer, "audiences": ["orders"],
               "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}}),
    );
    assert_eq!(hs.status, 422, "{}", hs.body);
    assert_eq!(hs.problem_type(), "urn:tollgate:problem:invalid-issuer");
    assert!(hs.json()["detail"]
        .as_str()
        .unwrap()
        .contains("jwks.keys[0]"));
    let own = s.post(
        "/v1/issuers",
        json!({"issuer": TEST_ISSUER, "audiences": ["x"], "jwks": jwks}),
    );
    assert_eq!(own.status, 409);

    let revision = s.revision();
    Server::ok(s.post(
        "/v1/issuers",
        json!({"issuer": issuer, "audiences": ["orders"], "jwks": jwks}),
    ));
    assert_eq!(s.revision(), revision + 1);
    Server::ok(s.post(
        &format!("{VERSION}/subjects"),
        json!({"issuer": issuer, "value": "svc-42"}),
    ));
    let taken = s.post(
        &format!("{VERSION}/subjects"),
        json!({"issuer": issuer, "value": "svc-42"}),
    );
    assert_eq!(taken.status, 409);

    // A token the issuer signs acts as the client version.
    let now = now_ms() / 1000;
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "kid": "k1"}).to_string());
    let claims = URL_SAFE_NO_PAD.encode(
        json!({"iss": issuer, "aud": "orders", "sub": "svc-42", "exp": now + 60}).to_string(),
    );
    let input = format!("{header}.{claims}");
    let jwt = format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).to_bytes())
    );
    let verified = TrustedIssuers::build(&issuers(&s))
        .unwrap()
        .verify(&jwt, now_ms())
        .unwrap();
    assert_eq!(verified.client_subject, "svc-42");
    let client = s.snapshot().json()["clients"][0].clone();
    assert_eq!(
        client["subjects"],
        json!([{"issuer": issuer, "value": "svc-42"}])
    );

    let encoded = "https%3A%2F%2Fidp.example.test";
    assert_eq!(s.get(&format!("/v1/issuers/{encoded}")).status, 200);
    let in_use = s.delete(&format!("/v1/issuers/{encoded}"));
    assert_eq!(in_use.problem_type(), "urn:tollgate:problem:issuer-in-use");
    assert_eq!(
        s.delete(&format!("{VERSION}/subjects?issuer={encoded}&value=svc-42"))
            .status,
        204
    );
    assert_eq!(s.delete(&format!("/v1/issuers/{encoded}")).status, 204);
    assert_eq!(issuers(&s).len(), 1);
}

#[test]
fn api_versions_choose_their_auth_mode() {
    let s = Server::start();
    s.seed();
    Server::ok(s.post(
        "/v1/orgs/acme/apis/orders/versions",
        json!({"version": "2", "routing": {"path_prefix": "/orders/v2"},
               "plans": [{"plan": "gold", "version": "1"}], "auth": "jwt"}),
    ));
    assert_eq!(
        s.get("/v1/orgs/acme/apis/orders/versions/2").json()["auth"],
        "jwt"
    );
    Server::ok(s.act("/v1/orgs/acme/apis/orders/versions/2/publish"));
    let apis = s.snapshot().json()["apis"].clone();
    assert_eq!(
        apis[0].get("auth"),
        None,
        "api_key, the default, is omitted"
    );
    assert_eq!(apis[1]["auth"], "jwt");
    let bad = s.post(
        "/v1/orgs/acme/apis/orders/versions",
        json!({"version": "3", "routing": {"path_prefix": "/orders/v3"},
               "plans": [{"plan": "gold", "version": "1"}], "auth": "basic"}),
    );
    assert_eq!(bad.status, 400);
    // export → apply round trip keeps it.
    let export = s.cli(&["export"]);
    let text = String::from_utf8(export.stdout).unwrap();
    assert!(text.contains("auth: jwt"), "{text}");
}

/// What a gateway does with a bearer token: verify it against the snapshot's issuers, then
/// find the client version whose token subject it names.
fn gateway_client(s: &Server, token: &str) -> Option<String> {
    let snapshot = s.snapshot().json();
    let trusted: Vec<Issuer> = serde_json::from_value(snapshot["issuers"].clone()).unwrap();
    let verified = TrustedIssuers::build(&trusted)
        .unwrap()
        .verify(token, now_ms())
        .ok()?;
    snapshot["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["subjects"].as_array().is_some_and(|subjects| {
                subjects.iter().any(|x| {
                    x["issuer"] == verified.issuer.as_str()
                        && x["value"] == verified.client_subject.as_str()
                })
            })
        })
        .map(|c| c["id"].as_str().unwrap().to_owned())
}

#[test]
fn new_credentials_do_not_revive_the_tokens_of_revoked_ones() {
    let s = Server::start();
    s.seed();
    let (id, secret) = credentials(&s);
    let old = token(&s, &id, &secret);
    assert_eq!(gateway_client(&s, &old).as_deref(), Some("acme/mobile/1"));

    Server::ok(s.delete(&format!("{VERSION}/credentials")));
    assert_eq!(gateway_client(&s, &old), None, "revoked credentials' token");

    let (id2, secret2) = credentials(&s);
    let new = token(&s, &id2, &secret2);
    assert_eq!(gateway_client(&s, &new).as_deref(), Some("acme/mobile/1"));
    assert_eq!(
        gateway_client(&s, &old),
        None,
        "new credentials brought back a token of revoked ones"
    );
}

#[test]
fn replaced_credentials_take_their_tokens_along_when_their_grace_ends() {
    let s = Server::start();
    s.seed();
    let (id, secret) = credentials(&s);
    let old = token(&s, &id, &secret);
    let replaced = Server::ok(s.post(
        &format!("{VERSION}/credentials"),
        json!({"grace_seconds": 2}),
    ));
    let new = token(
        &s,
        replaced["client_id"].as_str().unwrap(),
        replaced["client_secret"].as_str().unwrap(),
    );
    assert_eq!(gateway_client(&s, &old).as_deref(), Some("acme/mobile/1"));
    assert_eq!(gateway_client(&s, &new).as_deref(), Some("acme/mobile/1"));
    let started = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "the old credentials' subject to go",
        || gateway_client(&s, &old).is_none(),
    );
    println!(
        "old credentials' tokens refused {:?} after the rotation",
        started.elapsed()
    );
    assert_eq!(gateway_client(&s, &new).as_deref(), Some("acme/mobile/1"));
}

#[test]
fn a_service_account_created_again_does_not_revive_its_old_tokens() {
    let s = Server::start();
    s.seed();
    let old = service_token(&s, "ci", &["tollgate:admin"]);
    assert_eq!(
        s.request("GET", "/v1/orgs", Some(&old), None, &[]).status,
        200
    );
    Server::ok(s.delete("/v1/service-accounts/ci"));
    let new = service_token(&s, "ci", &["tollgate:admin"]);
    assert_eq!(
        s.request("GET", "/v1/orgs", Some(&new), None, &[]).status,
        200
    );
    let answer = s.request("GET", "/v1/orgs", Some(&old), None, &[]);
    assert_eq!(
        answer.status, 401,
        "a token of the deleted account works for the new one: {}",
        answer.body
    );
    assert_eq!(answer.problem_type(), "urn:tollgate:problem:unauthorized");
}

#[test]
fn an_external_issuer_carries_its_maximum_token_lifetime_to_the_gateways() {
    let s = Server::start();
    let idp = SigningKey::from_bytes(&[7u8; 32]);
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "idp-1", "alg": "EdDSA",
        "x": URL_SAFE_NO_PAD.encode(idp.verifying_key().to_bytes())}]});
    for (bad, why) in [(0u64, "zero"), (31 * 24 * 3600, "over 30 days")] {
        let refused = s.post(
            "/v1/issuers",
            json!({"issuer": "https://idp.test", "audiences": ["orders"], "jwks": jwks,
                   "max_token_lifetime_seconds": bad}),
        );
        assert_eq!(refused.status, 400, "{why}: {}", refused.body);
        assert!(
            refused.body.contains("max_token_lifetime_seconds"),
            "{}",
            refused.body
        );
    }
    Server::ok(s.post(
        "/v1/issuers",
        json!({"issuer": "https://idp.test", "audiences": ["orders"], "jwks": jwks,
               "max_token_lifetime_seconds": 600}),
    ));
    let shown = Server::ok(s.get("/v1/issuers/https%3A%2F%2Fidp.test"));
    assert_eq!(shown["max_token_lifetime_seconds"], 600);
    let trusted = issuers(&s);
    let external = trusted
        .iter()
        .find(|i| i.issuer == "https://idp.test")
        .unwrap();
    assert_eq!(external.max_token_lifetime_seconds, Some(600));

    let sign = |exp: u64| {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "kid": "idp-1"}).to_string());
        let claims = URL_SAFE_NO_PAD.encode(
            json!({"iss": "https://idp.test", "aud": "orders", "sub": "x", "exp": exp}).to_string(),
        );
        let input = format!("{header}.{claims}");
        let signature = URL_SAFE_NO_PAD.encode(idp.sign(input.as_bytes()).to_bytes());
        format!("{input}.{signature}")
    };
    let verifier = TrustedIssuers::build(&trusted).unwrap();
    let now = now_ms() / 1000;
    assert!(verifier.verify(&sign(now + 300), now_ms()).is_ok());
    assert_eq!(
        verifier.verify(&sign(now + 3600), now_ms()).unwrap_err(),
        TokenRejected::LifetimeTooLong
    );
    assert_eq!(
        verifier
            .verify(&sign(253_402_300_799), now_ms())
            .unwrap_err(),
        TokenRejected::LifetimeTooLong
    );
}

/// A catalogue from before tokens named their credentials renders another snapshot after the
/// upgrade: it gets a revision of its own, so gateways holding the old one fetch it.
#[test]
fn upgrading_a_catalogue_moves_its_revision_to_the_credential_bound_snapshot() {
    if !common::on_sqlite(
        "a PostgreSQL catalogue starts at the current schema; no older one exists",
    ) {
        return;
    }
    let s = Server::start();
    s.seed();
    let (id, _) = credentials(&s);
    let before = s.revision();
    let s = s.kill9_change_and_restart(|dir| {
        // Back to schema version 2, as the previous release left it.
        let db = rusqlite::Connection::open(dir.join("tollgate.db")).unwrap();
        // Version 6 (sealed keys), 5 (the fleet setting) and 4 (stored snapshot buckets)
        // undone first.
        db.execute_batch("ALTER TABLE token_keys DROP COLUMN sealed; DROP TABLE fleet_settings")
            .unwrap();
        let triggers: Vec<String> = db
            .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for trigger in triggers {
            db.execute_batch(&format!("DROP TRIGGER {trigger}"))
                .unwrap();
        }
        db.execute_batch(
            "DROP TABLE dirty_buckets; DROP TABLE snapshot_buckets; DROP TABLE snapshot_shells;
             DROP TABLE snapshot_revisions; DROP TABLE snapshot_changes; DROP TABLE snapshot_state;
             DROP INDEX api_keys_bucket; DROP INDEX api_keys_expiry;
             DROP INDEX token_subjects_bucket; DROP INDEX oauth_credentials_bucket;
             DROP INDEX oauth_credentials_expiry;
             ALTER TABLE api_keys DROP COLUMN bucket; ALTER TABLE token_subjects DROP COLUMN bucket;
             ALTER TABLE oauth_credentials DROP COLUMN bucket;
             ALTER TABLE issuers DROP COLUMN max_token_lifetime; PRAGMA user_version = 2;",
        )
        .unwrap();
    });
    assert_eq!(s.revision(), before + 1);
    let own = issuers(&s)
        .into_iter()
        .find(|i| i.issuer == TEST_ISSUER)
        .unwrap();
    assert_eq!(own.client_claim, "client_id");
    assert!(s.snapshot().body.contains(&id));
    // A restart without an upgrade keeps the revision.
    let revision = s.revision();
    let s = s.kill9_and_restart();
    assert_eq!(s.revision(), revision);
}

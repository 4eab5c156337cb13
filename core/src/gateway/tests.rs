use super::*;
use crate::shared::MemoryStore;
use crate::testkit::*;

const NOW: u64 = 1_749_988_800_000 - 60_000;

/// A request to `gw.example.com` for `path`, with `extra` headers.
fn request(path: &str, extra: &[(&str, &str)]) -> HeaderList {
    let mut h = vec![
        (":path".to_owned(), path.to_owned()),
        (":authority".to_owned(), "gw.example.com".to_owned()),
    ];
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    HeaderList(h)
}

/// A static-mode configuration, and shared data holding its published key directory.
fn config(json_extra: &str, snapshot: &crate::snapshot::Snapshot) -> (LoadedConfig, MemoryStore) {
    let json = format!(
        r#"{{{json_extra}"snapshot":{}}}"#,
        serde_json::to_string(snapshot).unwrap()
    );
    let parsed = LoadedConfig::parse(json.as_bytes()).unwrap();
    let mut store = MemoryStore::new();
    crate::distribution::publish_directory(&mut store, &parsed.static_directory.unwrap()).unwrap();
    (parsed.config, store)
}

fn run(cfg: &LoadedConfig, headers: &mut HeaderList, store: &mut MemoryStore) -> Handled {
    handle_request(cfg, headers, store, &mut request_by_request(), NOW).unwrap()
}

/// A lease book sized for so many workers that every chunk is 1: each request claims exactly
/// itself, so a fresh book per request counts as a shared one would.
fn request_by_request() -> LeaseBook {
    let mut book = LeaseBook::new();
    book.set_workers(u32::MAX);
    book
}

#[test]
fn key_and_forged_identity_are_replaced_before_upstream() {
    let (cfg, mut store) = config("", &acme());
    let mut h = request(
        "/orders/v1/1?apikey=ignored&x=1",
        &[
            ("x-api-key", GOLD_KEY),
            ("x-tollgate-client", "acme/forged/1"),
            ("x-tollgate-plan", "acme/platinum/1"),
        ],
    );
    let handled = run(&cfg, &mut h, &mut store);
    assert_eq!(handled.reason, Reason::Allow);
    assert_eq!(h.value("x-api-key"), None);
    assert_eq!(h.value(":path"), Some("/orders/v1/1?x=1"));
    assert_eq!(h.value("x-tollgate-client"), Some("acme/mobile/1"));
    assert_eq!(h.value("x-tollgate-plan"), Some("acme/gold/1"));
    match handled.outcome {
        Outcome::Forward { response_headers } => {
            assert_eq!(response_headers[0], ("x-ratelimit-limit", "10000".into()))
        }
        other => panic!("expected forward, got {other:?}"),
    }
}

#[test]
fn key_in_query_parameter_is_accepted_and_stripped() {
    let (cfg, mut store) = config("", &acme());
    let mut h = request(&format!("/orders/v1?apikey={GOLD_KEY}"), &[]);
    assert_eq!(run(&cfg, &mut h, &mut store).reason, Reason::Allow);
    assert_eq!(h.value(":path"), Some("/orders/v1"));
}

#[test]
fn public_api_strips_key_and_forged_identity() {
    let (cfg, mut store) = config("", &acme());
    let mut h = request(
        "/status?apikey=k",
        &[("x-api-key", "k"), ("x-tollgate-client", "forged")],
    );
    assert_eq!(run(&cfg, &mut h, &mut store).reason, Reason::Public);
    assert_eq!(h.value("x-api-key"), None);
    assert_eq!(h.value("x-tollgate-client"), None);
    assert_eq!(h.value(":path"), Some("/status"));
}

#[test]
fn forward_api_key_keeps_the_key() {
    let mut s = acme();
    s.apis[0].forward_api_key = true;
    let (cfg, mut store) = config("", &s);
    let mut h = request("/orders/v1?apikey=q", &[("x-api-key", GOLD_KEY)]);
    assert_eq!(run(&cfg, &mut h, &mut store).reason, Reason::Allow);
    assert_eq!(h.value("x-api-key"), Some(GOLD_KEY));
    assert_eq!(h.value(":path"), Some("/orders/v1?apikey=q"));
}

#[test]
fn unmatched_passes_untouched_or_is_denied() {
    let (pass, mut store) = config("", &acme());
    let mut h = request(
        "/elsewhere",
        &[("x-api-key", "k"), ("x-tollgate-client", "c")],
    );
    assert_eq!(run(&pass, &mut h, &mut store).reason, Reason::Unmatched);
    assert_eq!(h.value("x-api-key"), Some("k"), "untouched");
    assert_eq!(h.value("x-tollgate-client"), Some("c"), "untouched");

    let (deny, _) = config(r#""unmatched":"deny","#, &acme());
    match run(&deny, &mut request("/elsewhere", &[]), &mut store).outcome {
        Outcome::Respond(d) => assert_eq!(d.status, 404),
        other => panic!("expected 404, got {other:?}"),
    }
}

#[test]
fn traversal_out_of_a_public_prefix_is_refused() {
    let (cfg, mut store) = config("", &acme());
    for path in [
        "/status/../orders/v1",
        "/nothing/%2e%2e/orders/v1",
        "//orders/v1",
    ] {
        let handled = run(&cfg, &mut request(path, &[]), &mut store);
        assert_eq!(handled.reason, Reason::BadPath, "{path}");
    }
}

#[test]
fn path_parameters_cannot_hide_a_private_prefix() {
    let mut s = acme();
    s.apis.push(crate::testkit::api(
        "acme/status-admin/1",
        "/status/admin",
        false,
    ));
    let (cfg, mut store) = config("", &s);
    for path in [
        "/status/admin;x=1/users",
        "/status/admin;",
        "/status/admin;/users",
    ] {
        let handled = run(&cfg, &mut request(path, &[]), &mut store);
        assert_eq!(handled.reason, Reason::MissingKey, "{path}");
    }
    let handled = run(&cfg, &mut request("/status/..;/orders/v1", &[]), &mut store);
    assert_eq!(handled.reason, Reason::BadPath);
}

#[test]
fn custom_key_header_is_used() {
    let (cfg, mut store) = config(r#""key_header":"X-Acme-Key","#, &acme());
    let mut h = request("/orders/v1", &[("x-acme-key", GOLD_KEY)]);
    assert_eq!(run(&cfg, &mut h, &mut store).reason, Reason::Allow);
    assert_eq!(h.value("x-acme-key"), None);
    match run(&cfg, &mut request("/orders/v1", &[]), &mut store).outcome {
        Outcome::Respond(d) => assert!(d.headers.contains(&(
            "www-authenticate",
            r#"APIKey realm="tollgate", header="x-acme-key""#.into()
        ))),
        other => panic!("expected 401, got {other:?}"),
    }
}

#[test]
fn no_configuration_fails_closed_by_default() {
    let (mut cfg, mut store) = config("", &acme());
    cfg.routes = None;
    match run(&cfg, &mut request("/orders/v1", &[]), &mut store).outcome {
        Outcome::Respond(d) => assert_eq!(d.status, 503),
        other => panic!("expected 503, got {other:?}"),
    }
    cfg.settings.failure_mode = FailureMode::Open;
    let handled = run(&cfg, &mut request("/orders/v1", &[]), &mut store);
    assert!(matches!(handled.outcome, Outcome::Forward { .. }));
}

fn token_for(client: &str, aud: &str) -> String {
    let now_s = NOW / 1000;
    ed_token(
        1,
        serde_json::json!({"alg": "EdDSA", "kid": "k1"}),
        serde_json::json!({"iss": ISSUER, "sub": client, "aud": aud, "iat": now_s, "exp": now_s + 600}),
    )
}

#[test]
fn bearer_token_acts_as_its_client_and_names_the_subject() {
    let (cfg, mut store) = config("", &acme_with_tokens());
    let token = token_for("acme/mobile/1", "orders-api");
    let mut h = request(
        "/orders/v1/1",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-tollgate-subject", "forged"),
        ],
    );
    assert_eq!(run(&cfg, &mut h, &mut store).reason, Reason::Allow);
    assert_eq!(h.value("x-tollgate-client"), Some("acme/mobile/1"));
    assert_eq!(h.value("x-tollgate-subject"), Some("acme/mobile/1"));
    assert!(h.value("authorization").is_some(), "the token is forwarded");
}

#[test]
fn token_and_api_key_of_one_client_share_one_counter() {
    // Bronze: 2 a minute. One request by key, one by token, the third is over the limit.
    let (cfg, mut store) = config("", &acme_with_tokens());
    let token = token_for("acme/hobby/1", "orders-api");
    let by_key = || request("/orders/v1", &[("x-api-key", BRONZE_KEY)]);
    let bearer = format!("Bearer {token}");
    let by_token = || request("/orders/v1", &[("authorization", bearer.as_str())]);
    assert_eq!(run(&cfg, &mut by_key(), &mut store).reason, Reason::Allow);
    assert_eq!(run(&cfg, &mut by_token(), &mut store).reason, Reason::Allow);
    assert_eq!(
        run(&cfg, &mut by_token(), &mut store).reason,
        Reason::RateLimited
    );
    assert_eq!(
        run(&cfg, &mut by_key(), &mut store).reason,
        Reason::RateLimited
    );
}

#[test]
fn bad_or_missing_tokens_get_bearer_challenges() {
    let (cfg, mut store) = config("", &acme_with_tokens());
    let challenge_of = |handled: Handled| match handled.outcome {
        Outcome::Respond(d) => (
            d.status,
            d.headers
                .iter()
                .filter(|(n, _)| *n == "www-authenticate")
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>(),
        ),
        other => panic!("expected a 401, got {other:?}"),
    };
    // billing/1 takes tokens only.
    let (status, challenges) = challenge_of(run(&cfg, &mut request("/billing", &[]), &mut store));
    assert_eq!(
        (status, challenges),
        (401, vec![r#"Bearer realm="tollgate""#.to_owned()])
    );
    let wrong_aud = format!("Bearer {}", token_for("acme/mobile/1", "other-api"));
    let (status, challenges) = challenge_of(run(
        &cfg,
        &mut request("/billing", &[("authorization", wrong_aud.as_str())]),
        &mut store,
    ));
    assert_eq!(status, 401);
    assert!(
        challenges[0].contains(r#"error="invalid_token""#),
        "{challenges:?}"
    );
    // orders/1 takes either: with neither, both challenges.
    let (_, challenges) = challenge_of(run(&cfg, &mut request("/orders/v1", &[]), &mut store));
    assert_eq!(challenges.len(), 2);
    // A valid token of a client without a contract for billing/1: 403.
    let token = format!("Bearer {}", token_for("acme/mobile/1", "orders-api"));
    let handled = run(
        &cfg,
        &mut request("/billing", &[("authorization", token.as_str())]),
        &mut store,
    );
    assert_eq!(handled.reason, Reason::NoContract);
    // A token for a subject no client holds: 401.
    let stranger = format!("Bearer {}", token_for("acme/stranger/1", "orders-api"));
    let handled = run(
        &cfg,
        &mut request("/billing", &[("authorization", stranger.as_str())]),
        &mut store,
    );
    assert_eq!(handled.reason, Reason::InvalidToken);
}

use super::*;
use crate::header_map::HeaderBlock;
use crate::keycache::{BucketCache, CachedDirectory};
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
    let mut h = request("/orders/v1?q=1", &[("x-api-key", GOLD_KEY)]);
    assert_eq!(run(&cfg, &mut h, &mut store).reason, Reason::Allow);
    assert_eq!(h.value("x-api-key"), Some(GOLD_KEY));
    assert_eq!(h.value(":path"), Some("/orders/v1?q=1"));
}

/// Caller-sent headers under tollgate's prefix, known names and others, repeated.
const FORGED: [(&str, &str); 5] = [
    ("x-tollgate-client", "acme/admin/1"),
    ("x-tollgate-plan", "acme/unlimited/1"),
    ("x-tollgate-subject", "root"),
    ("x-tollgate-operation", "deleteEverything"),
    ("x-tollgate-client", "acme/second/1"),
];

fn own_headers(h: &HeaderList) -> Vec<(String, String)> {
    h.0.iter()
        .filter(|(k, _)| k.starts_with("x-tollgate-"))
        .cloned()
        .collect()
}

#[test]
fn unmatched_pass_forwards_without_forged_headers_or_key() {
    let (pass, mut store) = config("", &acme());
    let mut sent = FORGED.to_vec();
    sent.extend([("x-api-key", "k"), ("x-other", "kept")]);
    let mut h = request("/elsewhere?apikey=k&x=1", &sent);
    assert_eq!(run(&pass, &mut h, &mut store).reason, Reason::Unmatched);
    assert_eq!(own_headers(&h), vec![], "{h:?}");
    assert_eq!(h.value("x-api-key"), None);
    assert_eq!(h.value(":path"), Some("/elsewhere?x=1"));
    assert_eq!(h.value("x-other"), Some("kept"));

    let mut plain = request("/elsewhere", &[("x-other", "kept")]);
    let before = plain.clone();
    run(&pass, &mut plain, &mut store);
    assert_eq!(plain, before, "nothing of tollgate's: untouched");
}

#[test]
fn unmatched_deny_answers_404() {
    let (deny, mut store) = config(r#""unmatched":"deny","#, &acme());
    match run(&deny, &mut request("/elsewhere", &[]), &mut store).outcome {
        Outcome::Respond(d) => assert_eq!(d.status, 404),
        other => panic!("expected 404, got {other:?}"),
    }
}

#[test]
fn failure_mode_open_forwards_without_forged_headers_or_key() {
    let (mut cfg, mut store) = config(r#""failure_mode":"open","#, &acme());
    cfg.routes = None;
    let mut sent = FORGED.to_vec();
    sent.push(("x-api-key", GOLD_KEY));
    let mut h = request(&format!("/orders/v1?apikey={GOLD_KEY}"), &sent);
    let handled = run(&cfg, &mut h, &mut store);
    assert_eq!(handled.reason, Reason::NotConfigured);
    assert!(matches!(handled.outcome, Outcome::Forward { .. }));
    assert_eq!(own_headers(&h), vec![], "{h:?}");
    assert_eq!(h.value("x-api-key"), None);
    assert_eq!(h.value(":path"), Some("/orders/v1"));
}

#[test]
fn every_forged_header_is_removed_on_public_and_private_apis() {
    let (cfg, mut store) = config("", &acme());
    let mut public = request("/status", &FORGED);
    assert_eq!(run(&cfg, &mut public, &mut store).reason, Reason::Public);
    assert_eq!(own_headers(&public), vec![]);

    let mut sent = FORGED.to_vec();
    sent.push(("x-api-key", GOLD_KEY));
    let mut private = request("/orders/v1", &sent);
    assert_eq!(run(&cfg, &mut private, &mut store).reason, Reason::Allow);
    let mut own = own_headers(&private);
    own.sort();
    assert_eq!(
        own,
        vec![
            ("x-tollgate-client".to_owned(), "acme/mobile/1".to_owned()),
            ("x-tollgate-plan".to_owned(), "acme/gold/1".to_owned()),
        ],
        "only tollgate's own identity; no subject without a token"
    );
}

#[test]
fn forward_api_key_forwards_only_the_checked_credential() {
    let mut s = acme();
    s.apis[0].forward_api_key = true;
    let (cfg, mut store) = config("", &s);
    // The header's first value is checked: its repeat and a query key beside it are dropped.
    let mut h = request(
        "/orders/v1?apikey=unchecked&x=1",
        &[("x-api-key", GOLD_KEY), ("x-api-key", "unchecked-2")],
    );
    assert_eq!(run(&cfg, &mut h, &mut store).reason, Reason::Allow);
    let keys: Vec<_> = h.0.iter().filter(|(k, _)| k == "x-api-key").collect();
    assert_eq!(keys, vec![&("x-api-key".to_owned(), GOLD_KEY.to_owned())]);
    assert_eq!(h.value(":path"), Some("/orders/v1?x=1"));
    // A query key is checked: only its first occurrence goes on.
    let mut h = request(
        &format!("/orders/v1?apikey={GOLD_KEY}&apikey=unchecked"),
        &[],
    );
    assert_eq!(run(&cfg, &mut h, &mut store).reason, Reason::Allow);
    assert_eq!(
        h.value(":path"),
        Some(&*format!("/orders/v1?apikey={GOLD_KEY}"))
    );
}

#[test]
fn forward_api_key_never_forwards_a_key_beside_a_checked_token() {
    let mut s = acme_with_tokens();
    s.apis[0].forward_api_key = true;
    let (cfg, mut store) = config("", &s);
    let bearer = format!("Bearer {}", token_for("acme/mobile/1", "orders-api"));
    let mut h = request(
        "/orders/v1?apikey=unchecked",
        &[("authorization", &bearer), ("x-api-key", "unchecked")],
    );
    assert_eq!(run(&cfg, &mut h, &mut store).reason, Reason::Allow);
    assert_eq!(h.value("x-api-key"), None);
    assert_eq!(h.value(":path"), Some("/orders/v1"));
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

fn response_headers(handled: &Handled) -> Vec<(&'static str, String)> {
    match &handled.outcome {
        Outcome::Forward { response_headers } => response_headers.clone(),
        Outcome::Respond(d) => d.headers.clone(),
        Outcome::Wait(w) => panic!("counting alone never waits: {w:?}"),
    }
}

#[test]
fn rate_limit_headers_follow_the_configured_style() {
    // Bronze: 2 a minute and 100 a day; at 11:59:00 the minute has 60 s left.
    let by_key = || request("/orders/v1", &[("x-api-key", BRONZE_KEY)]);
    let (ietf, mut store) = config(r#""rate_limit_headers":"ietf","#, &acme());
    let allowed = run(&ietf, &mut by_key(), &mut store);
    assert_eq!(
        response_headers(&allowed),
        vec![("ratelimit", r#""tollgate";r=1;t=60"#.to_owned())]
    );
    run(&ietf, &mut by_key(), &mut store);
    let limited = run(&ietf, &mut by_key(), &mut store);
    assert_eq!(limited.reason, Reason::RateLimited);
    assert_eq!(
        response_headers(&limited),
        vec![
            ("ratelimit", r#""tollgate";r=0;t=60"#.to_owned()),
            ("ratelimit-policy", r#""tollgate";q=2;w=60"#.to_owned()),
            ("retry-after", "60".to_owned()),
        ]
    );

    let (none, mut store) = config(r#""rate_limit_headers":"none","#, &acme());
    assert_eq!(
        response_headers(&run(&none, &mut by_key(), &mut store)),
        vec![]
    );
    run(&none, &mut by_key(), &mut store);
    assert_eq!(
        response_headers(&run(&none, &mut by_key(), &mut store)),
        vec![("retry-after", "60".to_owned())],
        "a 429 still says when to retry"
    );

    let (default, mut store) = config("", &acme());
    let names: Vec<_> = response_headers(&run(&default, &mut by_key(), &mut store))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        vec![
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset"
        ]
    );
}

/// Counts the host calls a request makes through the traits the filter implements with one
/// host call each.
struct Counted<T> {
    inner: T,
    calls: Vec<String>,
}

impl RequestHeaders for Counted<HeaderList> {
    fn all(&mut self) -> Result<HeaderBlock, StoreError> {
        self.calls.push("get_header_map_pairs".into());
        self.inner.all()
    }
    fn get(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        self.calls.push(format!("get_header_map_value {name}"));
        self.inner.get(name)
    }
    fn set(&mut self, name: &str, value: &str) -> Result<(), StoreError> {
        self.calls.push(format!("replace_header_map_value {name}"));
        self.inner.set(name, value)
    }
    fn remove(&mut self, name: &str) -> Result<(), StoreError> {
        self.calls.push(format!("remove_header_map_value {name}"));
        self.inner.remove(name)
    }
}

impl SharedStore for Counted<&mut MemoryStore> {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.calls.push("get_shared_data".into());
        self.inner.get(key)
    }
    fn set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: u32,
    ) -> Result<crate::shared::SetOutcome, StoreError> {
        self.calls.push("set_shared_data".into());
        self.inner.set(key, value, cas)
    }
}

/// Host calls of one decision as the filter makes them: the clock, the request's (counted
/// here), then the response's (one `add_header_map_value` per rate-limit header, or one
/// `send_local_response`).
fn host_calls(cfg: &LoadedConfig, sent: HeaderList, store: &mut MemoryStore) -> (Reason, usize) {
    host_calls_with(cfg, sent, store, None)
}

/// The same through a worker's bucket cache, as the filter reads the key directory.
fn host_calls_with(
    cfg: &LoadedConfig,
    sent: HeaderList,
    store: &mut MemoryStore,
    cache: Option<&mut BucketCache>,
) -> (Reason, usize) {
    host_calls_leased(cfg, sent, store, cache, &mut request_by_request())
}

/// The same with the worker's lease book `book` (a fresh request-by-request book claims exactly
/// the request: the counter is read and written each time).
fn host_calls_leased(
    cfg: &LoadedConfig,
    sent: HeaderList,
    store: &mut MemoryStore,
    cache: Option<&mut BucketCache>,
    book: &mut LeaseBook,
) -> (Reason, usize) {
    let mut headers = Counted {
        inner: sent,
        calls: Vec::new(),
    };
    let mut shared = Counted {
        inner: store,
        calls: Vec::new(),
    };
    let handled = match cache {
        Some(cache) => {
            let mut cached = CachedDirectory {
                cache,
                store: &mut shared,
            };
            handle_request(cfg, &mut headers, &mut cached, book, NOW).unwrap()
        }
        None => handle_request(cfg, &mut headers, &mut shared, book, NOW).unwrap(),
    };
    let response = match &handled.outcome {
        Outcome::Forward { response_headers } => response_headers.len(),
        Outcome::Respond(_) => 1,
        Outcome::Wait(w) => panic!("counting alone never waits: {w:?}"),
    };
    (
        handled.reason,
        1 + headers.calls.len() + shared.calls.len() + response,
    )
}

#[test]
fn host_calls_per_decision() {
    let (cfg, mut store) = config("", &acme_with_tokens());
    let (ietf, mut ietf_store) = config(r#""rate_limit_headers":"ietf","#, &acme_with_tokens());
    let key = |k: &str| request("/orders/v1", &[("x-api-key", k)]);
    // billing/1 takes tokens only with issuers; without, Gold's key there has no contract.
    let (plain, mut plain_store) = config("", &acme());
    let stranger = request("/billing", &[("x-api-key", GOLD_KEY)]);
    // Steady state: the contract's counter exists (its first request also creates it).
    host_calls(&cfg, key(GOLD_KEY), &mut store);
    host_calls(&ietf, key(GOLD_KEY), &mut ietf_store);
    // The ones bench/ reports: allow is clock, headers, bucket, counter get + CAS, client,
    // plan, key removal and the three rate-limit headers.
    let cases = [
        (
            host_calls(&cfg, key(GOLD_KEY), &mut store),
            (Reason::Allow, 11),
        ),
        (
            host_calls(&ietf, key(GOLD_KEY), &mut ietf_store),
            (Reason::Allow, 9),
        ),
        (
            host_calls(&cfg, request("/orders/v1", &[]), &mut store),
            (Reason::MissingKey, 3),
        ),
        (
            host_calls(&plain, stranger, &mut plain_store),
            (Reason::NoContract, 4),
        ),
        (
            host_calls(&cfg, request("/status", &[]), &mut store),
            (Reason::Public, 2),
        ),
        (
            host_calls(&cfg, request("/elsewhere", &[]), &mut store),
            (Reason::Unmatched, 2),
        ),
    ];
    for (got, want) in cases {
        println!("{:?}: {} host calls", got.0, got.1);
        assert_eq!(got, want);
    }
    // Over a Bronze plan's 2 a minute: the counter is read, nothing written.
    host_calls(&cfg, key(BRONZE_KEY), &mut store);
    host_calls(&cfg, key(BRONZE_KEY), &mut store);
    assert_eq!(
        host_calls(&cfg, key(BRONZE_KEY), &mut store),
        (Reason::RateLimited, 5)
    );

    // With the worker's bucket cache warm (what the filter does for a key seen before): the
    // bucket read is gone.
    let mut cache = BucketCache::new(crate::keycache::DEFAULT_BUDGET_BYTES);
    let mut warm = |cfg: &LoadedConfig, sent: HeaderList, store: &mut MemoryStore| {
        host_calls_with(cfg, sent.clone(), store, Some(&mut cache));
        host_calls_with(cfg, sent, store, Some(&mut cache))
    };
    assert_eq!(warm(&cfg, key(GOLD_KEY), &mut store), (Reason::Allow, 10));
    assert_eq!(
        warm(&ietf, key(GOLD_KEY), &mut ietf_store),
        (Reason::Allow, 8)
    );
    let stranger = request("/billing", &[("x-api-key", GOLD_KEY)]);
    assert_eq!(
        warm(&plain, stranger, &mut plain_store),
        (Reason::NoContract, 3)
    );
    assert_eq!(
        warm(&cfg, key(BRONZE_KEY), &mut store),
        (Reason::RateLimited, 4)
    );

    // What a worker does in steady state: the bucket cached and a lease held on the contract's
    // counter (one worker, so the chunk is the worker's whole share). The first request refills
    // the lease (counter get + CAS); the next ones admit from it without touching the counter.
    let mut cache = BucketCache::new(crate::keycache::DEFAULT_BUDGET_BYTES);
    let mut book = LeaseBook::new();
    book.set_workers(1);
    host_calls_leased(&cfg, key(GOLD_KEY), &mut store, Some(&mut cache), &mut book);
    let leased = host_calls_leased(&cfg, key(GOLD_KEY), &mut store, Some(&mut cache), &mut book);
    println!("allow from a lease, bucket cached: {} host calls", leased.1);
    assert_eq!(leased, (Reason::Allow, 8));
}

#[test]
fn each_decision_names_its_api_version_and_contract_for_usage() {
    let (cfg, mut store) = config("", &acme());
    let mut book = LeaseBook::new();
    let mut send = |path: &str, key: Option<&str>| {
        let extra: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
        let handled =
            handle_request(&cfg, &mut request(path, &extra), &mut store, &mut book, NOW).unwrap();
        (
            handled.reason,
            handled.api.as_deref().map(str::to_owned),
            handled.contract,
        )
    };
    let orders = Some("acme/orders/1".to_owned());
    // Bronze allows 2 a minute: both admitted and the refusal are the contract's.
    for _ in 0..2 {
        assert_eq!(
            send("/orders/v1", Some(BRONZE_KEY)),
            (Reason::Allow, orders.clone(), Some(2))
        );
    }
    assert_eq!(
        send("/orders/v1", Some(BRONZE_KEY)),
        (Reason::RateLimited, orders.clone(), Some(2))
    );
    // Without a contract, the cause is recorded against the API version alone.
    assert_eq!(
        send("/orders/v1", Some("no-such-key")),
        (Reason::InvalidKey, orders.clone(), None)
    );
    assert_eq!(send("/orders/v1", None), (Reason::MissingKey, orders, None));
    assert_eq!(
        send("/billing", Some(GOLD_KEY)),
        (Reason::NoContract, Some("acme/billing/1".to_owned()), None)
    );
    assert_eq!(
        send("/status", None),
        (Reason::Public, Some("acme/status/1".to_owned()), None)
    );
    assert_eq!(send("/nowhere", None), (Reason::Unmatched, None, None));
}

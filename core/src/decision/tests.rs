use super::*;
use crate::lease::LeaseBook;
use crate::shared::MemoryStore;
use crate::testkit::*;

const NOW: u64 = 1_749_988_800_000 - 60_000; // 11:59:00Z, before OLD_KEY expires
const CHALLENGE: &str = r#"APIKey realm="tollgate", header="x-api-key""#;

fn challenges() -> Challenges {
    Challenges {
        api_key: CHALLENGE.to_owned(),
        rate_limit_headers: RateLimitHeaders::XRateLimit,
    }
}

/// A lease book whose every chunk is 1 (see the gateway tests).
fn request_by_request() -> LeaseBook {
    let mut book = LeaseBook::new();
    book.set_workers(u32::MAX);
    book
}

fn decide_at(
    routes: &RouteIndex,
    path: &str,
    key: Option<&str>,
    store: &mut MemoryStore,
) -> (Reason, u16, Vec<(&'static str, String)>, String) {
    let api = routes.route("gw", path).unwrap();
    match decide(
        routes,
        api,
        Credential::ApiKey(key),
        NOW,
        store,
        &mut request_by_request(),
        &challenges(),
    ) {
        Verdict::Public => (Reason::Public, 200, vec![], String::new()),
        Verdict::Allow {
            client, plan, rate, ..
        } => (
            Reason::Allow,
            200,
            rate_limit_headers(RateLimitHeaders::XRateLimit, &rate),
            format!("{client} {plan}"),
        ),
        Verdict::Deny(d) => (d.reason, d.status, d.headers, d.problem.to_json()),
        Verdict::Wait(w) => panic!("counting alone never waits: {w:?}"),
    }
}

#[test]
fn every_row_of_the_gateway_table() {
    let (routes, mut store) = published(&acme());
    let cases: [(&str, Option<&str>, Reason, u16); 8] = [
        ("/status", None, Reason::Public, 200),
        ("/status", Some("whatever"), Reason::Public, 200),
        ("/orders/v1/1", None, Reason::MissingKey, 401),
        ("/orders/v1/1", Some(""), Reason::MissingKey, 401),
        ("/orders/v1/1", Some("not-a-key"), Reason::InvalidKey, 401),
        ("/billing", Some(GOLD_KEY), Reason::NoContract, 403),
        ("/orders/v0/1", Some(GOLD_KEY), Reason::Retired, 410),
        ("/orders/v1/1", Some(GOLD_KEY), Reason::Allow, 200),
    ];
    for (path, key, reason, status) in cases {
        let (r, s, _, _) = decide_at(&routes, path, key, &mut store);
        assert_eq!((r, s), (reason, status), "{path} {key:?}");
    }
}

#[test]
fn unauthorized_answers_carry_the_challenge_and_never_the_key() {
    let (routes, mut store) = published(&acme());
    let secret = "sk_live_this-must-not-echo";
    let (_, status, headers, body) = decide_at(&routes, "/orders/v1", Some(secret), &mut store);
    assert_eq!(status, 401);
    assert!(headers.contains(&("www-authenticate", CHALLENGE.to_owned())));
    assert!(!body.contains(secret));
    assert!(body.contains("urn:tollgate:problem:invalid-api-key"));
}

#[test]
fn allowed_request_names_client_and_plan() {
    let (routes, mut store) = published(&acme());
    let (_, _, headers, who) = decide_at(&routes, "/orders/v1", Some(GOLD_KEY), &mut store);
    assert_eq!(who, "acme/mobile/1 acme/gold/1");
    assert_eq!(headers[0], ("x-ratelimit-limit", "10000".to_owned()));
    assert_eq!(headers[1], ("x-ratelimit-remaining", "9999".to_owned()));
}

#[test]
fn exhausted_plan_answers_429_with_retry_after() {
    let (routes, mut store) = published(&acme());
    for _ in 0..2 {
        assert_eq!(
            decide_at(&routes, "/orders/v1", Some(BRONZE_KEY), &mut store).1,
            200
        );
    }
    let (reason, status, headers, _) =
        decide_at(&routes, "/orders/v1", Some(BRONZE_KEY), &mut store);
    assert_eq!((reason, status), (Reason::RateLimited, 429));
    assert!(headers.contains(&("retry-after", "60".to_owned())));
    assert!(headers.contains(&("x-ratelimit-remaining", "0".to_owned())));
    assert!(headers.contains(&("x-ratelimit-limit", "2".to_owned())));
    // The Gold client's contract has its own counter.
    assert_eq!(
        decide_at(&routes, "/orders/v1", Some(GOLD_KEY), &mut store).1,
        200
    );
}

#[test]
fn expired_key_is_refused() {
    let (routes, mut store) = published(&acme());
    let api = routes.route("gw", "/orders/v1").unwrap();
    let later = 1_749_988_800_000;
    match decide(
        &routes,
        api,
        Credential::ApiKey(Some(OLD_KEY)),
        later,
        &mut store,
        &mut request_by_request(),
        &challenges(),
    ) {
        Verdict::Deny(d) => assert_eq!((d.reason, d.status), (Reason::InvalidKey, 401)),
        other => panic!("expected 401, got {other:?}"),
    }
    assert!(matches!(
        decide(
            &routes,
            api,
            Credential::ApiKey(Some(OLD_KEY)),
            later - 1,
            &mut store,
            &mut request_by_request(),
            &challenges()
        ),
        Verdict::Allow { .. }
    ));
}

/// Shared data that counts the calls made through it.
struct CountingCalls<'s>(&'s mut MemoryStore, u32);

impl SharedStore for CountingCalls<'_> {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, crate::shared::StoreError> {
        self.1 += 1;
        self.0.get(key)
    }
    fn set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: u32,
    ) -> Result<crate::shared::SetOutcome, crate::shared::StoreError> {
        self.1 += 1;
        self.0.set(key, value, cas)
    }
}

#[test]
fn an_allowed_request_from_a_lease_reads_only_the_key_directory() {
    let (routes, mut store) = published(&acme());
    let api = routes.route("gw", "/orders/v1").unwrap();
    let mut leases = LeaseBook::new();
    leases.set_workers(2);
    let mut calls = Vec::new();
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let mut counting = CountingCalls(&mut store, 0);
        match decide(
            &routes,
            api,
            Credential::ApiKey(Some(GOLD_KEY)),
            NOW,
            &mut counting,
            &mut leases,
            &challenges(),
        ) {
            Verdict::Allow { rate, .. } => remaining.push(rate.remaining),
            other => panic!("expected an admission, got {other:?}"),
        }
        calls.push(counting.1);
    }
    // The first creates the counter and fills the lease (directory get, counter get, the
    // insert guard's get, set and get, the guarded set); the rest only read the key's
    // directory bucket. Gold is 10000/day: headers count down as without leases.
    assert_eq!(calls, vec![6, 1, 1, 1]);
    assert_eq!(remaining, vec![9_999, 9_998, 9_997, 9_996]);
}

use super::*;
use crate::keydir::{bucket_of, find};
use crate::keys::key_digest;
use crate::snapshot::*;
use crate::testkit::*;

fn routed(index: &RouteIndex, host: &str, path: &str) -> Option<String> {
    index.route(host, path).map(|a| index.api(a).id.clone())
}

fn routes(s: &Snapshot) -> RouteIndex {
    compile(s).unwrap().routes
}

#[test]
fn prefix_matches_on_segment_boundaries_only() {
    let index = routes(&acme());
    assert_eq!(
        routed(&index, "h", "/orders/v1").as_deref(),
        Some("acme/orders/1")
    );
    assert_eq!(
        routed(&index, "h", "/orders/v1/42").as_deref(),
        Some("acme/orders/1")
    );
    assert_eq!(
        routed(&index, "h", "/orders/v1/").as_deref(),
        Some("acme/orders/1")
    );
    assert_eq!(routed(&index, "h", "/orders/v1-admin"), None);
    assert_eq!(routed(&index, "h", "/orders"), None);
    assert_eq!(routed(&index, "h", "/statusx"), None);
}

#[test]
fn longest_prefix_wins() {
    let mut s = acme();
    s.apis
        .push(api("acme/orders-admin/1", "/orders/v1/admin", false));
    let index = routes(&s);
    assert_eq!(
        routed(&index, "h", "/orders/v1/admin/x").as_deref(),
        Some("acme/orders-admin/1")
    );
    assert_eq!(
        routed(&index, "h", "/orders/v1/administrator").as_deref(),
        Some("acme/orders/1")
    );
}

#[test]
fn host_specific_routes_come_before_any_host() {
    let mut s = acme();
    let mut eu = api("acme/orders-eu/1", "/orders", false);
    eu.routing.hosts = vec!["EU.example.com".into()];
    s.apis.push(eu);
    let index = routes(&s);
    assert_eq!(
        routed(&index, "eu.example.com:8443", "/orders/v1/1").as_deref(),
        Some("acme/orders-eu/1")
    );
    assert_eq!(
        routed(&index, "us.example.com", "/orders/v1/1").as_deref(),
        Some("acme/orders/1")
    );
    // The host's own routes do not match: fall back to any-host routes.
    assert_eq!(
        routed(&index, "eu.example.com", "/status").as_deref(),
        Some("acme/status/1")
    );
}

#[test]
fn published_routing_collision_is_refused() {
    let mut s = acme();
    s.apis.push(api("acme/orders/2", "/orders/v1/", false));
    let e = compile(&s).unwrap_err();
    assert_eq!(e.field, "apis[4].routing");
    assert!(e.message.contains("acme/orders/1"), "{e}");
}

#[test]
fn published_version_shadows_retired_one_on_same_route() {
    let mut s = acme();
    s.apis.push(api("acme/orders/0b", "/orders/v0", false));
    let index = routes(&s);
    assert_eq!(
        routed(&index, "h", "/orders/v0/1").as_deref(),
        Some("acme/orders/0b")
    );
}

#[test]
fn key_records_carry_client_expiry_and_contracts() {
    let dir = compile(&acme()).unwrap().directory;
    assert_eq!(dir.coverage, Coverage::All);
    let digest = key_digest(OLD_KEY);
    let found = find(&dir.buckets[&bucket_of(&digest)], &digest).unwrap();
    assert_eq!(found.client, "acme/mobile/1");
    assert_eq!(found.expires_at, Some(1_749_988_800));
    let grant = found.grant_for("acme/orders/1").unwrap();
    assert_eq!((grant.contract, grant.plan), (1, "acme/gold/1"));
    assert!(found.grant_for("acme/billing/1").is_none());
}

#[test]
fn a_page_must_hold_only_keys_of_its_buckets() {
    let mut s = acme();
    let gold = bucket_of(&key_digest(GOLD_KEY));
    s.buckets = Some(vec![gold]);
    let e = compile(&s).unwrap_err();
    assert_eq!(e.field, "clients[0].keys[1].sha256", "{e}");
    s.clients[0].keys.truncate(1);
    s.clients.truncate(1);
    s.contracts.truncate(1);
    let dir = compile(&s).unwrap().directory;
    assert_eq!(dir.coverage, Coverage::Buckets(vec![gold]));
    assert_eq!(dir.buckets.keys().copied().collect::<Vec<_>>(), vec![gold]);
}

#[test]
fn dangling_references_name_the_field() {
    let mut s = acme();
    s.contracts[1].plan = "acme/platinum/1".into();
    let e = compile(&s).unwrap_err();
    assert_eq!(
        e.to_string(),
        "contracts[1].plan: unknown plan version acme/platinum/1"
    );

    let mut s = acme();
    s.contracts[0].api = "acme/status/1".into();
    assert!(compile(&s).unwrap_err().message.contains("public"));

    let mut s = acme();
    s.clients[0].keys[0].sha256 = "xyz".into();
    assert_eq!(compile(&s).unwrap_err().field, "clients[0].keys[0].sha256");

    let mut s = acme();
    s.apis[0].routing.path_prefix = "/orders/../admin".into();
    assert_eq!(
        compile(&s).unwrap_err().field,
        "apis[0].routing.path_prefix"
    );

    let mut s = acme();
    s.schema = 2;
    assert_eq!(compile(&s).unwrap_err().field, "schema");

    let mut s = acme();
    s.plans[1].limits[1].per = Period::Minute;
    assert_eq!(compile(&s).unwrap_err().field, "plans[1].limits[1].per");
}

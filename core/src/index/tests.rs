use super::*;
use crate::keys::key_digest;
use crate::snapshot::*;
use crate::testkit::*;

fn routed(index: &CatalogueIndex, host: &str, path: &str) -> Option<String> {
    index.route(host, path).map(|a| index.api(a).id.clone())
}

#[test]
fn prefix_matches_on_segment_boundaries_only() {
    let index = CatalogueIndex::build(&acme()).unwrap();
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
    let index = CatalogueIndex::build(&s).unwrap();
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
    let index = CatalogueIndex::build(&s).unwrap();
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
    let e = CatalogueIndex::build(&s).unwrap_err();
    assert_eq!(e.field, "apis[4].routing");
    assert!(e.message.contains("acme/orders/1"), "{e}");
}

#[test]
fn published_version_shadows_retired_one_on_same_route() {
    let mut s = acme();
    s.apis.push(api("acme/orders/0b", "/orders/v0", false));
    let index = CatalogueIndex::build(&s).unwrap();
    assert_eq!(
        routed(&index, "h", "/orders/v0/1").as_deref(),
        Some("acme/orders/0b")
    );
}

#[test]
fn expired_keys_are_told_apart_from_unknown_ones() {
    let index = CatalogueIndex::build(&acme()).unwrap();
    let before = 1_749_988_799_999;
    assert!(matches!(
        index.lookup_key(&key_digest(OLD_KEY), before),
        KeyLookup::Client(_)
    ));
    assert_eq!(
        index.lookup_key(&key_digest(OLD_KEY), before + 1),
        KeyLookup::Expired
    );
    assert_eq!(
        index.lookup_key(&key_digest("nope"), before),
        KeyLookup::Unknown
    );
}

#[test]
fn dangling_references_name_the_field() {
    let mut s = acme();
    s.contracts[1].plan = "acme/platinum/1".into();
    let e = CatalogueIndex::build(&s).unwrap_err();
    assert_eq!(
        e.to_string(),
        "contracts[1].plan: unknown plan version acme/platinum/1"
    );

    let mut s = acme();
    s.contracts[0].api = "acme/status/1".into();
    assert!(CatalogueIndex::build(&s)
        .unwrap_err()
        .message
        .contains("public"));

    let mut s = acme();
    s.clients[0].keys[0].sha256 = "xyz".into();
    assert_eq!(
        CatalogueIndex::build(&s).unwrap_err().field,
        "clients[0].keys[0].sha256"
    );

    let mut s = acme();
    s.apis[0].routing.path_prefix = "/orders/../admin".into();
    assert_eq!(
        CatalogueIndex::build(&s).unwrap_err().field,
        "apis[0].routing.path_prefix"
    );

    let mut s = acme();
    s.schema = 2;
    assert_eq!(CatalogueIndex::build(&s).unwrap_err().field, "schema");

    let mut s = acme();
    s.plans[1].limits[1].per = Period::Minute;
    assert_eq!(
        CatalogueIndex::build(&s).unwrap_err().field,
        "plans[1].limits[1].per"
    );
}

#[test]
fn contract_counter_keys_are_per_contract() {
    let index = CatalogueIndex::build(&acme()).unwrap();
    let mut keys: Vec<&str> = index.counter_keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["tollgate.contract.1", "tollgate.contract.2"]);
}

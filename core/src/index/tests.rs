use super::*;
use crate::keydir::{bucket_of, find};
use crate::keys::key_digest;
use crate::snapshot::*;
use crate::testkit::*;

fn routed(index: &RouteIndex, host: &str, path: &str) -> Option<String> {
    index.route(host, path).map(|a| index.api(a).id.to_string())
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

fn on_hosts(mut version: ApiVersion, hosts: &[&str]) -> ApiVersion {
    version.routing.hosts = hosts.iter().map(|h| h.to_string()).collect();
    version
}

#[test]
fn host_scoped_version_wins_a_tie_with_any_host() {
    let mut s = acme();
    s.apis.push(on_hosts(
        api("acme/orders-eu/1", "/orders/v1", false),
        &["EU.example.com"],
    ));
    let index = routes(&s);
    assert_eq!(
        routed(&index, "eu.example.com:8443", "/orders/v1/1").as_deref(),
        Some("acme/orders-eu/1")
    );
    assert_eq!(
        routed(&index, "us.example.com", "/orders/v1/1").as_deref(),
        Some("acme/orders/1")
    );
    // The host's own routes do not match: any-host routes apply.
    assert_eq!(
        routed(&index, "eu.example.com", "/status").as_deref(),
        Some("acme/status/1")
    );
}

#[test]
fn host_scoped_public_root_does_not_open_any_host_private_apis() {
    // Issue 18's reproduction: `/` public on status.example.com used to answer every path of
    // that host, /orders/v1 included.
    let mut s = acme();
    s.apis.push(on_hosts(
        api("acme/statuspage/1", "/", true),
        &["status.example.com"],
    ));
    let index = routes(&s);
    for host in ["status.example.com", "STATUS.example.com.:10000"] {
        assert_eq!(
            routed(&index, host, "/orders/v1/1").as_deref(),
            Some("acme/orders/1"),
            "{host}"
        );
        assert_eq!(
            routed(&index, host, "/billing").as_deref(),
            Some("acme/billing/1")
        );
        assert_eq!(
            routed(&index, host, "/elsewhere").as_deref(),
            Some("acme/statuspage/1")
        );
    }
    assert_eq!(routed(&index, "other.example.com", "/elsewhere"), None);
}

#[test]
fn longer_prefix_wins_across_host_scoped_and_any_host() {
    let mut s = acme();
    s.apis.push(on_hosts(
        api("acme/orders-eu/1", "/orders", false),
        &["eu.example.com"],
    ));
    s.apis.push(on_hosts(
        api("acme/orders-eu-admin/1", "/orders/v1/admin", false),
        &["eu.example.com"],
    ));
    let index = routes(&s);
    let eu = |path| routed(&index, "eu.example.com", path);
    assert_eq!(eu("/orders/v1/1").as_deref(), Some("acme/orders/1"));
    assert_eq!(eu("/orders/v2").as_deref(), Some("acme/orders-eu/1"));
    assert_eq!(
        eu("/orders/v1/admin/x").as_deref(),
        Some("acme/orders-eu-admin/1")
    );
}

#[test]
fn host_spellings_envoy_and_dns_treat_alike_route_alike() {
    let mut s = acme();
    s.apis.push(on_hosts(
        api("acme/internal/1", "/status/internal", false),
        &["api.example.com"],
    ));
    let index = routes(&s);
    for host in [
        "api.example.com",
        "api.example.com.",
        "API.EXAMPLE.COM",
        "api.example.com:10000",
        "api.example.com.:10000",
        "user:pass@api.example.com",
        "api.example.com,api.example.com",
    ] {
        assert_eq!(
            routed(&index, host, "/status/internal/x").as_deref(),
            Some("acme/internal/1"),
            "{host}"
        );
    }
    assert_eq!(
        routed(&index, "www.example.com", "/status/internal/x").as_deref(),
        Some("acme/status/1")
    );
}

#[test]
fn unreadable_host_gets_a_private_version_of_any_host_first() {
    let mut s = acme();
    s.apis.push(on_hosts(
        api("acme/internal/1", "/status/internal", false),
        &["api.example.com"],
    ));
    let index = routes(&s);
    for host in [
        "api.example.com..",
        "api.example.com,other.example.com",
        "api%2eexample.com",
        "",
    ] {
        assert_eq!(
            routed(&index, host, "/status/internal/x").as_deref(),
            Some("acme/internal/1"),
            "{host:?}"
        );
        // Where no private version matches, any-host versions apply as for any host.
        assert_eq!(
            routed(&index, host, "/status/x").as_deref(),
            Some("acme/status/1")
        );
    }
}

#[test]
fn hosts_are_ignored_when_no_version_names_one() {
    let index = routes(&acme());
    assert!(!index.routes_by_host());
    assert_eq!(
        routed(&index, "", "/orders/v1/1").as_deref(),
        Some("acme/orders/1")
    );
}

#[test]
fn a_host_no_request_can_name_serves_no_request() {
    let mut s = acme();
    s.apis.push(on_hosts(
        api("acme/wild/1", "/wild", true),
        &["*.example.com", "a..example", "-"],
    ));
    let index = routes(&s);
    for host in ["x.example.com", "*.example.com", "a..example", "-", "", "h"] {
        assert_eq!(routed(&index, host, "/wild/1"), None, "{host:?}");
    }
    s.apis[4].routing.hosts = vec!["ok.example".into(), String::new()];
    assert_eq!(compile(&s).unwrap_err().field, "apis[4].routing.hosts[1]");
}

#[test]
fn covering_prefixes_are_segment_prefixes_longest_first() {
    let all = |p| covering_prefixes(p).collect::<Vec<_>>();
    assert_eq!(all("/a/b/c"), ["/a/b/c", "/a/b", "/a", "/"]);
    assert_eq!(all("/a/"), ["/a/", "/a", "/"]);
    assert_eq!(all("/"), ["/"]);
    assert_eq!(all("*"), ["*", "/"]);
}

#[test]
fn a_long_path_routes_by_its_leading_segments() {
    let index = routes(&acme());
    let path = "/a".repeat(30_000);
    assert_eq!(routed(&index, "h", &path), None);
    assert_eq!(
        routed(&index, "h", &format!("/orders/v1{path}")).as_deref(),
        Some("acme/orders/1")
    );
}

fn claim<'a>(path_prefix: &'a str, hosts: &'a [String]) -> RouteClaim<'a> {
    RouteClaim { path_prefix, hosts }
}

#[test]
fn public_shadows_private_below_its_prefix_or_host_scoped_at_it() {
    let any: Vec<String> = vec![];
    let a = vec!["a.example".to_owned()];
    let b = vec!["b.example".to_owned()];
    let ab = vec!["a.example".to_owned(), "b.example".to_owned()];
    let shadows = public_shadows_private;
    // Nested below the private prefix, on a shared host.
    assert_eq!(
        shadows(claim("/orders/v1/docs", &any), claim("/orders/v1", &any)),
        Some(SharedHosts::Any)
    );
    assert_eq!(
        shadows(claim("/x", &a), claim("/", &any)),
        Some(SharedHosts::Host("a.example"))
    );
    assert_eq!(
        shadows(claim("/x", &any), claim("/", &b)),
        Some(SharedHosts::Host("b.example"))
    );
    assert_eq!(
        shadows(claim("/x", &b), claim("/", &ab)),
        Some(SharedHosts::Host("b.example"))
    );
    // Host-scoped at the same prefix beats any-host.
    assert_eq!(
        shadows(claim("/orders/v1", &a), claim("/orders/v1", &any)),
        Some(SharedHosts::Host("a.example"))
    );
    // Not shadowing: above the private prefix, other hosts, a sibling, the same slot, an
    // any-host public beside a host-scoped private.
    assert_eq!(shadows(claim("/", &a), claim("/orders/v1", &any)), None);
    assert_eq!(shadows(claim("/x/y", &a), claim("/x", &b)), None);
    assert_eq!(
        shadows(claim("/orders/v10", &any), claim("/orders/v1", &any)),
        None
    );
    assert_eq!(shadows(claim("/x", &a), claim("/x", &ab)), None);
    assert_eq!(shadows(claim("/x", &any), claim("/x", &a)), None);
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

mod publish_rule_keeps_private_paths_private {
    //! For random catalogues that pass the control plane's publish rules (no collision,
    //! [`public_shadows_private`]) and random requests, a private API's path is never answered
    //! as public, whatever spelling of whatever host the request uses.

    use super::*;
    use proptest::prelude::*;

    const HOSTS: [&str; 2] = ["a.example", "b.example"];
    const PREFIXES: [&str; 6] = ["/", "/x", "/x/y", "/x/y/z", "/w", "/x/yy"];
    const REQUEST_HOSTS: [&str; 11] = [
        "a.example",
        "A.Example.",
        "a.example:8080",
        "u@a.example",
        "b.example",
        "b.example,b.example.",
        "c.example",
        "a.example..",
        "a.example,b.example",
        "",
        "[::1]",
    ];
    const PATHS: [&str; 9] = [
        "/", "/x", "/x/", "/x/y", "/x/y/z/1", "/x/yy", "/x/y-z", "/w/q", "/v",
    ];

    #[derive(Debug, Clone)]
    enum Step {
        /// Publish a version: public, prefix, hosts (bit i: HOSTS[i]; none: any host).
        Publish(bool, usize, u8),
        /// Retire the n-th (mod count) version published so far.
        Retire(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (any::<bool>(), 0..PREFIXES.len(), 0u8..4).prop_map(|(p, x, h)| Step::Publish(p, x, h)),
            1 => any::<usize>().prop_map(Step::Retire),
        ]
    }

    fn scope_overlaps(a: &[String], b: &[String]) -> bool {
        a.is_empty() && b.is_empty() || a.iter().any(|h| b.contains(h))
    }

    fn claim_of(v: &ApiVersion) -> RouteClaim<'_> {
        RouteClaim {
            path_prefix: v.routing.path_prefix.as_str(),
            hosts: v.routing.hosts.as_slice(),
        }
    }

    /// What the control plane accepts: publishing `c` among `versions` (published and retired).
    fn may_publish(versions: &[ApiVersion], c: &ApiVersion) -> bool {
        versions.iter().all(|v| {
            let published = v.status == ApiStatus::Published;
            let collides = published
                && v.routing.path_prefix == c.routing.path_prefix
                && scope_overlaps(&v.routing.hosts, &c.routing.hosts);
            let shadowed = match (c.public, v.public) {
                (true, false) => public_shadows_private(claim_of(c), claim_of(v)).is_some(),
                (false, true) => {
                    published && public_shadows_private(claim_of(v), claim_of(c)).is_some()
                }
                _ => false,
            };
            !collides && !shadowed
        })
    }

    /// Whether private version `q` still answers on `scope` (a host, or "" for any): a
    /// retired version yields its route to a published one on the same scope and prefix.
    fn routed_on(versions: &[ApiVersion], q: &ApiVersion, scope: &str) -> bool {
        q.status == ApiStatus::Published
            || !versions.iter().any(|v| {
                v.status == ApiStatus::Published
                    && v.routing.path_prefix == q.routing.path_prefix
                    && if scope.is_empty() {
                        v.routing.hosts.is_empty()
                    } else {
                        v.routing.hosts.iter().any(|h| h == scope)
                    }
            })
    }

    /// The model: a private version serving `path` for the request's host (for a host the
    /// gateway cannot read, for any host an upstream might take it for).
    fn private_serves(versions: &[ApiVersion], host: Option<&str>, path: &str) -> Option<String> {
        versions
            .iter()
            .filter(|q| !q.public)
            .filter(|q| covering_prefixes(path).any(|p| p == q.routing.path_prefix))
            .find(|q| {
                let scopes: Vec<&str> = if q.routing.hosts.is_empty() {
                    vec![""]
                } else {
                    q.routing.hosts.iter().map(String::as_str).collect()
                };
                scopes.into_iter().any(|scope| {
                    let reaches = match host {
                        Some(h) => scope.is_empty() || scope == h,
                        None => true,
                    };
                    reaches && routed_on(versions, q, scope)
                })
            })
            .map(|q| q.id.clone())
    }

    proptest! {
        #[test]
        fn a_private_path_is_never_answered_as_public(
            steps in prop::collection::vec(step(), 1..14),
            requests in prop::collection::vec((0..REQUEST_HOSTS.len(), 0..PATHS.len()), 1..24),
        ) {
            let mut versions: Vec<ApiVersion> = Vec::new();
            for (i, step) in steps.iter().enumerate() {
                match *step {
                    Step::Publish(public, prefix, hosts) => {
                        let mut v = api(&format!("o/api{i}/1"), PREFIXES[prefix], public);
                        v.routing.hosts = HOSTS
                            .iter()
                            .enumerate()
                            .filter(|(bit, _)| hosts & (1 << bit) != 0)
                            .map(|(_, h)| h.to_string())
                            .collect();
                        if may_publish(&versions, &v) {
                            versions.push(v);
                        }
                    }
                    Step::Retire(n) => {
                        let published: Vec<usize> = (0..versions.len())
                            .filter(|&j| versions[j].status == ApiStatus::Published)
                            .collect();
                        if !published.is_empty() {
                            versions[published[n % published.len()]].status = ApiStatus::Retired;
                        }
                    }
                }
            }
            let mut snapshot = acme();
            snapshot.apis = versions.clone();
            snapshot.clients.clear();
            snapshot.contracts.clear();
            let index = routes(&snapshot);
            for (h, p) in requests {
                let (authority, path) = (REQUEST_HOSTS[h], PATHS[p]);
                let Some(api) = index.route(authority, path) else { continue };
                let api = index.api(api);
                if api.public && api.status == ApiStatus::Published {
                    let host = crate::host::request_host(authority);
                    let private = private_serves(&versions, host.as_deref(), path);
                    prop_assert!(
                        private.is_none(),
                        "{authority:?} {path} answered by public {} although private {:?} serves it; catalogue {:?}",
                        api.id, private, versions.iter().map(|v| (&v.id, v.public, v.status, &v.routing)).collect::<Vec<_>>()
                    );
                }
            }
        }
    }
}

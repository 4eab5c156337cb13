//! `tollgate envoy-config`: a complete Envoy bootstrap for a live-mode gateway.
//!
//! One listener with path normalisation in front of one upstream, the tollgate HTTP filter on
//! every worker, its singleton poller (an `envoy.bootstrap.wasm` service with the same `vm_id`,
//! so they share Envoy shared data), the control-plane cluster, the admin interface and the tag
//! rule that turns the filter's counters into `tollgate_requests_total{decision="…"}`.
//!
//! The control-plane cluster holds every replica given (`--control-plane` repeated, issue 14),
//! health-checked on `/healthz` and with outlier detection, so that the poller's long polls and
//! the lease callouts go to a live replica when one dies.
//!
//! It holds no secret: the admin interface prints the whole bootstrap (`/config_dump`). The
//! poller trusts the control plane's snapshot public key, and reads the gateway token from the
//! environment variable `TOLLGATE_GATEWAY_TOKEN`, which Envoy passes to the module
//! (`vm_config.environment_variables.host_env_keys`; config_dump shows the name only). The
//! admin interface listens on a unix socket of mode 0600 unless a TCP address is asked for.

use std::path::Path;

use serde_json::{json, Value};
use tollgate_core::config::DEFAULT_GATEWAY_TOKEN_ENV;

use crate::error::Error;

/// The Envoy cluster name the poller calls.
pub const CONTROL_PLANE_CLUSTER: &str = "tollgate_control_plane";
/// What the control plane's health check asks for: 200 while its storage answers, 500 when
/// reads or writes fail on storage (`http/service.rs`).
const HEALTH_PATH: &str = "/healthz";
/// The `vm_id` the filter and the poller share (and with it shared data).
pub const VM_ID: &str = "tollgate";

pub struct GatewayOptions<'a> {
    pub wasm: &'a Path,
    /// `host:port` Envoy listens on.
    pub listen: &'a str,
    /// `host:port` of the service behind the gateway.
    pub upstream: &'a str,
    /// `http://host:port` of each control-plane replica (at least one).
    pub control_planes: &'a [String],
    /// Envoy's admin interface: `host:port`, or a unix socket as `unix:PATH` or an absolute
    /// path.
    pub admin: &'a str,
    /// The control plane's snapshot public keys the gateway trusts.
    pub snapshot_public_keys: &'a [String],
    /// `pass` or `deny` for requests that match no API.
    pub unmatched: &'a str,
    /// `closed` or `open` before the first snapshot.
    pub failure_mode: &'a str,
}

/// A `host:port` split in two (brackets of an IPv6 host removed); the reason when it is not.
fn host_port(value: &str) -> Result<(&str, u16), String> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("'{value}' is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{port}' is not a port number"))?;
    if host.is_empty() {
        return Err(format!("'{value}' has no host"));
    }
    Ok((host, port))
}

fn envoy_socket_address(host: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": host, "port_value": port } })
}

/// A `host:port` as an Envoy socket address, with the field named in errors.
fn socket_address(field: &str, value: &str) -> Result<Value, Error> {
    let (host, port) = host_port(value).map_err(|reason| Error::invalid_field(field, reason))?;
    Ok(envoy_socket_address(host, port))
}

/// The control-plane replicas: the `:authority` the gateway sends them and one Envoy address
/// each. An error names the URL at fault; a replica given twice is refused (it would take a
/// double share of the polls and hide a typo in the other URL).
fn control_plane_replicas(urls: &[String]) -> Result<(String, Vec<Value>), Error> {
    let field = "control-plane";
    let mut seen: Vec<(String, u16)> = Vec::with_capacity(urls.len());
    let mut addresses = Vec::with_capacity(urls.len());
    let mut authority = None;
    for url in urls {
        let host_and_port = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .ok_or_else(|| {
                Error::invalid_field(field, format!("'{url}' must be an http:// URL (host:port)"))
            })?;
        let (host, port) = host_port(host_and_port)
            .map_err(|reason| Error::invalid_field(field, format!("'{url}': {reason}")))?;
        let key = (host.to_ascii_lowercase(), port);
        if seen.contains(&key) {
            return Err(Error::invalid_field(
                field,
                format!("'{url}' names a replica given before: give each once"),
            ));
        }
        seen.push(key);
        addresses.push(envoy_socket_address(host, port));
        // The control plane does not look at Host; the first replica's name is what a single
        // replica has always been sent, and it names a member of the cluster.
        authority.get_or_insert_with(|| host_and_port.to_owned());
    }
    let authority =
        authority.ok_or_else(|| Error::invalid_field(field, "give at least one control plane"))?;
    Ok((authority, addresses))
}

/// Envoy's admin address: a unix socket only its user may open, or TCP when asked for.
fn admin_address(value: &str) -> Result<Value, Error> {
    let path = value
        .strip_prefix("unix:")
        .or_else(|| value.starts_with('/').then_some(value));
    match path {
        Some("") => Err(Error::invalid_field("admin", "unix: needs a socket path")),
        Some(path) => Ok(json!({ "pipe": { "path": path, "mode": 0o600 } })),
        None => socket_address("admin", value),
    }
}

/// A cluster reaching `addresses`; names are resolved by DNS so compose service names work.
fn cluster(name: &str, addresses: Vec<Value>) -> Value {
    let lb_endpoints: Vec<Value> = addresses
        .into_iter()
        .map(|address| json!({ "endpoint": { "address": address } }))
        .collect();
    json!({
        "name": name,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": lb_endpoints }]
        }
    })
}

/// The control-plane cluster: every replica, with what makes Envoy stop sending the poller's
/// long polls and the lease callouts to a dead one. `dispatch_http_call` has no retry policy,
/// so a call that fails is the poller's to retry (its backoff), and it goes to a live replica
/// once the dead one is marked.
fn control_plane_cluster(addresses: Vec<Value>, authority: &str) -> Value {
    let mut cluster = cluster(CONTROL_PLANE_CLUSTER, addresses);
    // `/healthz` answers from memory, 500 when storage fails (e.g. PostgreSQL down for this
    // replica): Envoy takes a replica out at its first non-200 answer or its second failed
    // connection, and back at its first 200. Checked each second, also while the cluster has
    // seen no traffic yet (no_traffic_interval, else 60 s).
    cluster["health_checks"] = json!([{
        "timeout": "0.5s",
        "interval": "1s",
        "no_traffic_interval": "1s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
        "http_health_check": { "path": HEALTH_PATH, "host": authority }
    }]);
    // A killed replica is also ejected at the second consecutive connection failure or
    // 502/503/504 of a real call (a reset long poll, a refused connection); a good health
    // check brings it back at once (successful_active_health_check_uneject_host, Envoy's
    // default). Seen on Envoy 1.40 here: the ejection reaches the load balancer with the next
    // health-check update, so a killed replica gets calls for about a second.
    cluster["outlier_detection"] = json!({
        "consecutive_gateway_failure": 2,
        "enforcing_consecutive_gateway_failure": 100,
        "interval": "1s",
        "base_ejection_time": "5s",
        "max_ejection_percent": 100
    });
    // Panic mode: while no replica is healthy (every /healthz failing, e.g. PostgreSQL down
    // for all), Envoy sends calls to all of them anyway, which is what a gateway wants: the
    // replicas still serve the snapshot they hold, and the poller keeps trying. At 1 % it
    // starts only then, never while one replica of many is healthy (Envoy's default, 50 %,
    // would spread calls over dead replicas when half of them are down).
    cluster["common_lb_config"] = json!({ "healthy_panic_threshold": { "value": 1.0 } });
    cluster
}

fn wasm_plugin(name: &str, root_id: &str, wasm: &Path, configuration: &str) -> Value {
    json!({
        "name": name,
        "root_id": root_id,
        "vm_config": {
            "vm_id": VM_ID,
            "runtime": "envoy.wasm.runtime.v8",
            "code": { "local": { "filename": wasm.display().to_string() } },
            // The token reaches the module through WASI environ; config_dump shows the name.
            "environment_variables": { "host_env_keys": [DEFAULT_GATEWAY_TOKEN_ENV] }
        },
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": configuration
        },
        "failure_policy": "FAIL_CLOSED"
    })
}

pub fn bootstrap(o: &GatewayOptions<'_>) -> Result<Value, Error> {
    let (authority, control_plane_addresses) = control_plane_replicas(o.control_planes)?;
    if !matches!(o.unmatched, "pass" | "deny") {
        return Err(Error::invalid_field("unmatched", "must be pass or deny"));
    }
    if !matches!(o.failure_mode, "closed" | "open") {
        return Err(Error::invalid_field(
            "failure-mode",
            "must be closed or open",
        ));
    }
    if let Err(e) = tollgate_core::signing::TrustedKeys::parse(o.snapshot_public_keys) {
        return Err(Error::invalid_field("snapshot-public-key", e.to_string()));
    }
    let plugin_configuration = json!({
        "unmatched": o.unmatched,
        "failure_mode": o.failure_mode,
        "control_plane": {
            "cluster": CONTROL_PLANE_CLUSTER,
            "authority": authority,
            "gateway_token_env": DEFAULT_GATEWAY_TOKEN_ENV,
            "snapshot_public_keys": o.snapshot_public_keys
        }
    })
    .to_string();

    Ok(json!({
        "admin": { "address": admin_address(o.admin)? },
        "stats_config": {
            "stats_tags": [{
                "tag_name": "decision",
                "regex": "^wasmcustom\\.tollgate_[a-z_]+(\\.decision\\.([a-z_]+))$"
            }]
        },
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                "singleton": true,
                "config": wasm_plugin("tollgate-poller", "tollgate-poller", o.wasm, &plugin_configuration)
            }
        }],
        "static_resources": {
            "listeners": [{
                "name": "tollgate",
                "address": socket_address("listen", o.listen)?,
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "tollgate",
                            "codec_type": "AUTO",
                            // The filter matches API prefixes on the path upstreams will see.
                            "normalize_path": true,
                            "merge_slashes": true,
                            "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
                            "route_config": {
                                "name": "upstream",
                                "virtual_hosts": [{
                                    "name": "upstream",
                                    "domains": ["*"],
                                    "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "upstream" } }]
                                }]
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.wasm",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                        "config": wasm_plugin("tollgate", "tollgate", o.wasm, &plugin_configuration)
                                    }
                                },
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
                                }
                            ]
                        }
                    }]
                }]
            }],
            "clusters": [
                cluster("upstream", vec![socket_address("upstream", o.upstream)?]),
                control_plane_cluster(control_plane_addresses, &authority)
            ]
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[String] = &[];

    fn keys() -> &'static [String] {
        static KEY: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        KEY.get_or_init(|| vec!["O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik".to_owned()])
    }

    fn urls(urls: &[&str]) -> Vec<String> {
        urls.iter().map(|url| (*url).to_owned()).collect()
    }

    fn options<'a>(control_planes: &'a [String], listen: &'a str) -> GatewayOptions<'a> {
        GatewayOptions {
            wasm: Path::new("/opt/tollgate.wasm"),
            listen,
            upstream: "backend:8080",
            control_planes,
            admin: "unix:/run/envoy-admin.sock",
            snapshot_public_keys: keys(),
            unmatched: "pass",
            failure_mode: "closed",
        }
    }

    #[test]
    fn filter_and_poller_share_one_vm_id_and_configuration() {
        let b = bootstrap(&options(&urls(&["http://cp:7100"]), "0.0.0.0:8080")).unwrap();
        let poller = &b["bootstrap_extensions"][0]["typed_config"]["config"];
        let filter = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"][0]["typed_config"]["config"];
        assert_eq!(poller["vm_config"]["vm_id"], VM_ID);
        assert_eq!(filter["vm_config"]["vm_id"], VM_ID);
        assert_eq!(poller["root_id"], "tollgate-poller");
        assert_eq!(poller["configuration"], filter["configuration"]);
        let plugin: Value =
            serde_json::from_str(filter["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(plugin["control_plane"]["authority"], "cp:7100");
        assert_eq!(plugin["control_plane"]["cluster"], CONTROL_PLANE_CLUSTER);
    }

    #[test]
    fn no_secret_in_the_bootstrap_and_the_token_comes_from_the_environment() {
        let b = bootstrap(&options(&urls(&["http://cp:7100"]), "0.0.0.0:8080")).unwrap();
        let poller = &b["bootstrap_extensions"][0]["typed_config"]["config"];
        assert_eq!(
            poller["vm_config"]["environment_variables"]["host_env_keys"],
            json!(["TOLLGATE_GATEWAY_TOKEN"])
        );
        let plugin: Value =
            serde_json::from_str(poller["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(
            plugin["control_plane"]["snapshot_public_keys"],
            json!(keys())
        );
        assert!(plugin["control_plane"].get("gateway_token").is_none());
        // The filter accepts what is generated.
        tollgate_core::config::LoadedConfig::parse(plugin.to_string().as_bytes()).unwrap();
    }

    #[test]
    fn admin_is_a_private_unix_socket_unless_tcp_is_asked_for() {
        let cp = urls(&["http://cp:7100"]);
        let admin = |value: &str| {
            let mut o = options(&cp, "0.0.0.0:8080");
            o.admin = value;
            bootstrap(&o).map(|b| b["admin"]["address"].clone())
        };
        let unix = json!({ "pipe": { "path": "/run/envoy-admin.sock", "mode": 384 } });
        assert_eq!(admin("unix:/run/envoy-admin.sock").unwrap(), unix);
        assert_eq!(admin("/run/envoy-admin.sock").unwrap(), unix);
        assert_eq!(
            admin("127.0.0.1:9901").unwrap(),
            json!({ "socket_address": { "address": "127.0.0.1", "port_value": 9901 } })
        );
        assert!(admin("unix:").is_err());
        let mut o = options(&cp, "0.0.0.0:8080");
        o.snapshot_public_keys = KEYS;
        assert!(bootstrap(&o)
            .unwrap_err()
            .to_string()
            .contains("snapshot-public-key"));
    }

    #[test]
    fn bad_addresses_name_the_flag() {
        let e = bootstrap(&options(&urls(&["https://cp:7100"]), "0.0.0.0:8080")).unwrap_err();
        assert!(e.to_string().contains("control-plane"), "{e}");
        let e = bootstrap(&options(&urls(&["http://cp:7100"]), "0.0.0.0")).unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }

    fn control_plane_cluster_of(b: &Value) -> &Value {
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        let named: Vec<&Value> = clusters
            .iter()
            .filter(|c| c["name"] == CONTROL_PLANE_CLUSTER)
            .collect();
        assert_eq!(named.len(), 1, "one control-plane cluster: {clusters:?}");
        named[0]
    }

    fn endpoints(cluster: &Value) -> Vec<Value> {
        let localities = cluster["load_assignment"]["endpoints"].as_array().unwrap();
        localities
            .iter()
            .flat_map(|l| l["lb_endpoints"].as_array().unwrap())
            .map(|e| e["endpoint"]["address"]["socket_address"].clone())
            .collect()
    }

    #[test]
    fn every_replica_is_an_endpoint_of_one_health_checked_cluster() {
        let cps = urls(&["http://cp-a:7100", "http://10.0.0.2:7200/"]);
        let b = bootstrap(&options(&cps, "0.0.0.0:8080")).unwrap();
        let cluster = control_plane_cluster_of(&b);
        assert_eq!(
            endpoints(cluster),
            vec![
                json!({ "address": "cp-a", "port_value": 7100 }),
                json!({ "address": "10.0.0.2", "port_value": 7200 }),
            ]
        );
        let checks = cluster["health_checks"].as_array().unwrap();
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0]["http_health_check"]["path"], "/healthz");
        assert_eq!(checks[0]["unhealthy_threshold"], 2);
        assert_eq!(checks[0]["healthy_threshold"], 1);
        assert_eq!(
            cluster["outlier_detection"]["enforcing_consecutive_gateway_failure"],
            100
        );
        // The plugins name the cluster, not a replica's address; the authority is the first's.
        let plugin: Value = serde_json::from_str(
            b["bootstrap_extensions"][0]["typed_config"]["config"]["configuration"]["value"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(plugin["control_plane"]["cluster"], CONTROL_PLANE_CLUSTER);
        assert_eq!(plugin["control_plane"]["authority"], "cp-a:7100");
    }

    #[test]
    fn one_control_plane_is_one_endpoint_as_before() {
        let b = bootstrap(&options(&urls(&["http://cp:7100"]), "0.0.0.0:8080")).unwrap();
        let cluster = control_plane_cluster_of(&b);
        assert_eq!(
            endpoints(cluster),
            vec![json!({ "address": "cp", "port_value": 7100 })]
        );
        assert_eq!(cluster["type"], "STRICT_DNS");
    }

    #[test]
    fn a_bad_replica_url_is_named_in_the_error() {
        for bad in [
            "http://cp-b",
            "http://cp-b:port",
            "cp-b:7100",
            "http://:7100",
        ] {
            let cps = urls(&["http://cp-a:7100", bad]);
            let e = bootstrap(&options(&cps, "0.0.0.0:8080")).unwrap_err();
            let message = e.to_string();
            assert!(message.starts_with("control-plane:"), "{message}");
            assert!(message.contains(&format!("'{bad}'")), "{message}");
        }
    }

    #[test]
    fn a_replica_given_twice_is_refused() {
        for twice in ["http://cp-a:7100", "http://CP-A:7100/"] {
            let cps = urls(&["http://cp-a:7100", "http://cp-b:7100", twice]);
            let e = bootstrap(&options(&cps, "0.0.0.0:8080")).unwrap_err();
            let message = e.to_string();
            assert!(message.contains(&format!("'{twice}'")), "{message}");
            assert!(message.contains("given before"), "{message}");
        }
        // Same host, another port: another replica.
        let cps = urls(&["http://cp:7100", "http://cp:7101"]);
        assert!(bootstrap(&options(&cps, "0.0.0.0:8080")).is_ok());
        assert!(bootstrap(&options(&[], "0.0.0.0:8080")).is_err());
    }
}

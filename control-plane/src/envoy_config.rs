//! `tollgate envoy-config`: a complete Envoy bootstrap for a live-mode gateway.
//!
//! One listener with path normalisation in front of one upstream, the tollgate HTTP filter on
//! every worker, its singleton poller (an `envoy.bootstrap.wasm` service with the same `vm_id`,
//! so they share Envoy shared data), the control-plane cluster, the admin interface and the tag
//! rule that turns the filter's counters into `tollgate_requests_total{decision="…"}`.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::Error;

/// The Envoy cluster name the poller calls.
pub const CONTROL_PLANE_CLUSTER: &str = "tollgate_control_plane";
/// The `vm_id` the filter and the poller share (and with it shared data).
pub const VM_ID: &str = "tollgate";

pub struct GatewayOptions<'a> {
    pub wasm: &'a Path,
    /// `host:port` Envoy listens on.
    pub listen: &'a str,
    /// `host:port` of the service behind the gateway.
    pub upstream: &'a str,
    /// `http://host:port` of the control plane.
    pub control_plane: &'a str,
    /// `host:port` of Envoy's admin interface.
    pub admin: &'a str,
    pub gateway_token: &'a str,
    pub snapshot_secret: &'a str,
    /// `pass` or `deny` for requests that match no API.
    pub unmatched: &'a str,
    /// `closed` or `open` before the first snapshot.
    pub failure_mode: &'a str,
}

/// A `host:port` split into an Envoy socket address, with the field named in errors.
fn socket_address(field: &str, value: &str) -> Result<Value, Error> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| Error::invalid_field(field, format!("'{value}' is not host:port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| Error::invalid_field(field, format!("'{port}' is not a port number")))?;
    if host.is_empty() {
        return Err(Error::invalid_field(
            field,
            format!("'{value}' has no host"),
        ));
    }
    Ok(json!({ "socket_address": { "address": host, "port_value": port } }))
}

/// A cluster reaching `address`; names are resolved by DNS so compose service names work.
fn cluster(name: &str, address: Value) -> Value {
    json!({
        "name": name,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": address } }] }]
        }
    })
}

fn wasm_plugin(name: &str, root_id: &str, wasm: &Path, configuration: &str) -> Value {
    json!({
        "name": name,
        "root_id": root_id,
        "vm_config": {
            "vm_id": VM_ID,
            "runtime": "envoy.wasm.runtime.v8",
            "code": { "local": { "filename": wasm.display().to_string() } }
        },
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": configuration
        },
        "failure_policy": "FAIL_CLOSED"
    })
}

pub fn bootstrap(o: &GatewayOptions<'_>) -> Result<Value, Error> {
    let authority = o
        .control_plane
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .ok_or_else(|| {
            Error::invalid_field(
                "control-plane",
                format!("'{}' must be an http:// URL (host:port)", o.control_plane),
            )
        })?;
    let control_plane_address = socket_address("control-plane", authority)?;
    if !matches!(o.unmatched, "pass" | "deny") {
        return Err(Error::invalid_field("unmatched", "must be pass or deny"));
    }
    if !matches!(o.failure_mode, "closed" | "open") {
        return Err(Error::invalid_field(
            "failure-mode",
            "must be closed or open",
        ));
    }
    let plugin_configuration = json!({
        "unmatched": o.unmatched,
        "failure_mode": o.failure_mode,
        "control_plane": {
            "cluster": CONTROL_PLANE_CLUSTER,
            "authority": authority,
            "gateway_token": o.gateway_token,
            "snapshot_secret": o.snapshot_secret
        }
    })
    .to_string();

    Ok(json!({
        "admin": { "address": socket_address("admin", o.admin)? },
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
                cluster("upstream", socket_address("upstream", o.upstream)?),
                cluster(CONTROL_PLANE_CLUSTER, control_plane_address)
            ]
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options<'a>(control_plane: &'a str, listen: &'a str) -> GatewayOptions<'a> {
        GatewayOptions {
            wasm: Path::new("/opt/tollgate.wasm"),
            listen,
            upstream: "backend:8080",
            control_plane,
            admin: "127.0.0.1:9901",
            gateway_token: "gt",
            snapshot_secret: "ss",
            unmatched: "pass",
            failure_mode: "closed",
        }
    }

    #[test]
    fn filter_and_poller_share_one_vm_id_and_configuration() {
        let b = bootstrap(&options("http://cp:7100", "0.0.0.0:8080")).unwrap();
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
    fn bad_addresses_name_the_flag() {
        let e = bootstrap(&options("https://cp:7100", "0.0.0.0:8080")).unwrap_err();
        assert!(e.to_string().contains("control-plane"), "{e}");
        let e = bootstrap(&options("http://cp:7100", "0.0.0.0")).unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }
}

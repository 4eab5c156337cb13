//! `tollgate envoy-config`: a complete Envoy bootstrap for a live-mode gateway.
//!
//! One listener with path normalisation in front of one upstream, the tollgate HTTP filter on
//! every worker, its singleton poller (an `envoy.bootstrap.wasm` service with the same `vm_id`,
//! so they share Envoy shared data), the control-plane cluster, the admin interface and the tag
//! rule that turns the filter's counters into `tollgate_requests_total{decision="…"}`.
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
                cluster("upstream", socket_address("upstream", o.upstream)?),
                cluster(CONTROL_PLANE_CLUSTER, control_plane_address)
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

    fn options<'a>(control_plane: &'a str, listen: &'a str) -> GatewayOptions<'a> {
        GatewayOptions {
            wasm: Path::new("/opt/tollgate.wasm"),
            listen,
            upstream: "backend:8080",
            control_plane,
            admin: "unix:/run/envoy-admin.sock",
            snapshot_public_keys: keys(),
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
    fn no_secret_in_the_bootstrap_and_the_token_comes_from_the_environment() {
        let b = bootstrap(&options("http://cp:7100", "0.0.0.0:8080")).unwrap();
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
        let admin = |value: &str| {
            let mut o = options("http://cp:7100", "0.0.0.0:8080");
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
        let mut o = options("http://cp:7100", "0.0.0.0:8080");
        o.snapshot_public_keys = KEYS;
        assert!(bootstrap(&o)
            .unwrap_err()
            .to_string()
            .contains("snapshot-public-key"));
    }

    #[test]
    fn bad_addresses_name_the_flag() {
        let e = bootstrap(&options("https://cp:7100", "0.0.0.0:8080")).unwrap_err();
        assert!(e.to_string().contains("control-plane"), "{e}");
        let e = bootstrap(&options("http://cp:7100", "0.0.0.0")).unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }
}

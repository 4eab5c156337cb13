//! The filter's plugin configuration: parsed and validated once, at load.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::decision::Challenges;
use crate::index::{compile, Directory, RouteIndex};
use crate::signing::{KeyError, TrustedKeys};
use crate::snapshot::Snapshot;

/// What to do with requests that match no API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Pass them through untouched (the gateway shares a listener with other routes).
    #[default]
    Pass,
    /// Answer 404.
    Deny,
}

/// What to do before any snapshot is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Answer 503: never serve a private API unchecked.
    #[default]
    Closed,
    /// Pass requests through unchecked.
    Open,
}

/// Which rate-limit headers responses governed by a contract carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum RateLimitHeaders {
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` (and `Retry-After` on 429).
    #[default]
    #[serde(rename = "x-ratelimit")]
    XRateLimit,
    /// The IETF httpapi draft's single `RateLimit` field (and `RateLimit-Policy` and
    /// `Retry-After` on 429): one response header instead of three.
    #[serde(rename = "ietf")]
    Ietf,
    /// None (429 still carries `Retry-After`).
    #[serde(rename = "none")]
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    #[serde(default)]
    pub unmatched: Unmatched,
    #[serde(default)]
    pub failure_mode: FailureMode,
    #[serde(default = "default_key_header")]
    pub key_header: String,
    #[serde(default = "default_key_query_param")]
    pub key_query_param: String,
    #[serde(default)]
    pub rate_limit_headers: RateLimitHeaders,
    /// Live mode: tally every decision and report it to the control plane (`GET /v1/usage`).
    /// Static mode has no one to report to and tallies nothing.
    #[serde(default = "default_usage")]
    pub usage: bool,
    /// Static mode: the catalogue itself.
    pub snapshot: Option<Snapshot>,
    /// Live mode: where the catalogue comes from.
    pub control_plane: Option<ControlPlane>,
}

/// Live mode: the control plane the singleton poller long-polls for signed snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlane {
    /// The Envoy cluster that reaches the control plane.
    pub cluster: String,
    /// `:authority` of the snapshot requests.
    pub authority: String,
    #[serde(default = "default_snapshot_path")]
    pub path: String,
    /// The environment variable holding the gateway token, sent as `Authorization: Bearer
    /// <token>`. Envoy passes it to the module through `vm_config.environment_variables.
    /// host_env_keys`, so that its admin interface (`/config_dump`) shows only this name.
    #[serde(default = "default_gateway_token_env")]
    pub gateway_token_env: String,
    /// The control plane's Ed25519 snapshot public keys (unpadded base64url): one, or the old
    /// and the new while its signing key is rotated. A snapshot signed by any other key is
    /// refused.
    pub snapshot_public_keys: Vec<String>,
    /// A snapshot whose signed issue time is further than this from the gateway's clock is
    /// refused (a recorded answer replayed, e.g. to a gateway that just started). Only what
    /// arrives is checked: with the control plane down, the last good snapshot stays in force
    /// however old it gets.
    #[serde(default = "default_max_snapshot_age_seconds")]
    pub max_snapshot_age_seconds: u32,
    /// Refused with an explanation: secrets in the plugin configuration are printed by Envoy's
    /// `/config_dump`.
    #[serde(default)]
    pub gateway_token: Option<serde_json::Value>,
    /// Refused with an explanation: HMAC snapshot signing was replaced by Ed25519.
    #[serde(default)]
    pub snapshot_secret: Option<serde_json::Value>,
    /// How long the control plane may hold a poll open when nothing changes.
    #[serde(default = "default_poll_timeout_seconds")]
    pub poll_timeout_seconds: u32,
    /// First retry delay after a failed poll; doubles up to `retry_max_ms`, with jitter.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u32,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u32,
    /// How often each worker looks for a newer snapshot in shared data.
    #[serde(default = "default_worker_refresh_ms")]
    pub worker_refresh_ms: u32,
    /// How often the singleton ships usage to the control plane (at most every 5 s).
    #[serde(default = "default_usage_report_ms")]
    pub usage_report_ms: u32,
}

fn default_snapshot_path() -> String {
    "/v1/snapshot".to_owned()
}

pub const DEFAULT_GATEWAY_TOKEN_ENV: &str = "TOLLGATE_GATEWAY_TOKEN";

fn default_gateway_token_env() -> String {
    DEFAULT_GATEWAY_TOKEN_ENV.to_owned()
}

/// Five minutes: well beyond the clock skew of NTP-synchronised hosts, short enough that a
/// recorded answer is of little use to a replaying network.
pub const DEFAULT_MAX_SNAPSHOT_AGE_SECONDS: u32 = 300;

fn default_max_snapshot_age_seconds() -> u32 {
    DEFAULT_MAX_SNAPSHOT_AGE_SECONDS
}

fn default_poll_timeout_seconds() -> u32 {
    30
}

fn default_retry_initial_ms() -> u32 {
    250
}

fn default_retry_max_ms() -> u32 {
    10_000
}

fn default_worker_refresh_ms() -> u32 {
    20
}

fn default_usage() -> bool {
    true
}

pub const MAX_USAGE_REPORT_MS: u32 = 5_000;

fn default_usage_report_ms() -> u32 {
    MAX_USAGE_REPORT_MS
}

fn default_key_header() -> String {
    "x-api-key".to_owned()
}

fn default_key_query_param() -> String {
    "apikey".to_owned()
}

/// A configuration the filter refuses, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A validated configuration and the routing table in force.
#[derive(Debug)]
pub struct LoadedConfig {
    pub settings: FilterConfig,
    /// The challenges of a 401.
    pub challenges: Challenges,
    /// The routing table in force: from the configuration (static mode) or the latest
    /// snapshot adopted from shared data (live mode); `None` until the first one arrives.
    pub routes: Option<Arc<RouteIndex>>,
}

/// A parsed configuration and, in static mode, the key directory the filter publishes into
/// shared data at start.
#[derive(Debug)]
pub struct ParsedConfig {
    pub config: LoadedConfig,
    pub static_directory: Option<Directory>,
}

impl LoadedConfig {
    pub fn parse(bytes: &[u8]) -> Result<ParsedConfig, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let mut settings: FilterConfig =
            serde_path_to_error::deserialize(de).map_err(|e| ConfigError {
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;

        settings.key_header = settings.key_header.to_ascii_lowercase();
        if !is_header_name(&settings.key_header) {
            return Err(ConfigError {
                field: "key_header".into(),
                message: format!("'{}' is not a valid HTTP header name", settings.key_header),
            });
        }
        if settings.key_query_param.is_empty() {
            return Err(ConfigError {
                field: "key_query_param".into(),
                message: "must not be empty".into(),
            });
        }
        let compiled = match (settings.snapshot.take(), &settings.control_plane) {
            (Some(_), Some(_)) => {
                return Err(ConfigError {
                    field: "control_plane".into(),
                    message: "give either snapshot (static mode) or control_plane (live mode), not both".into(),
                })
            }
            (None, None) => {
                return Err(ConfigError {
                    field: "snapshot".into(),
                    message: "missing: embed the catalogue here (static mode) or name a control_plane (live mode)".into(),
                })
            }
            (Some(snapshot), None) => Some(compile(&snapshot).map_err(|e| ConfigError {
                field: format!("snapshot.{}", e.field),
                message: e.message,
            })?),
            (None, Some(cp)) => {
                check_control_plane(cp)?;
                None
            }
        };
        let challenges = Challenges {
            api_key: format!(
                "APIKey realm=\"tollgate\", header=\"{}\"",
                settings.key_header
            ),
            rate_limit_headers: settings.rate_limit_headers,
        };
        let (routes, static_directory) = match compiled {
            Some(c) => (Some(Arc::new(c.routes)), Some(c.directory)),
            None => (None, None),
        };
        Ok(ParsedConfig {
            config: LoadedConfig {
                settings,
                challenges,
                routes,
            },
            static_directory,
        })
    }

    /// The same settings enforcing another routing table.
    pub fn with_routes(&self, routes: Arc<RouteIndex>) -> Self {
        LoadedConfig {
            settings: self.settings.clone(),
            challenges: self.challenges.clone(),
            routes: Some(routes),
        }
    }
}

impl ControlPlane {
    /// The public keys snapshots must be signed with.
    pub fn trusted_keys(&self) -> Result<TrustedKeys, KeyError> {
        TrustedKeys::parse(&self.snapshot_public_keys)
    }
}

fn check_control_plane(cp: &ControlPlane) -> Result<(), ConfigError> {
    let field = |name: &str, message: &str| ConfigError {
        field: format!("control_plane.{name}"),
        message: message.to_owned(),
    };
    if cp.cluster.is_empty() {
        return Err(field("cluster", "must name an Envoy cluster"));
    }
    if cp.authority.is_empty() {
        return Err(field("authority", "must not be empty"));
    }
    if !cp.path.starts_with('/') {
        return Err(field("path", "must start with '/'"));
    }
    if cp.gateway_token.is_some() {
        return Err(field(
            "gateway_token",
            "a secret here is printed by Envoy's /config_dump: put the token in an environment \
             variable Envoy passes to the module (vm_config.environment_variables.host_env_keys) \
             and name it in gateway_token_env",
        ));
    }
    if cp.snapshot_secret.is_some() {
        return Err(field(
            "snapshot_secret",
            "snapshots are signed with Ed25519 now: give the control plane's public key in \
             snapshot_public_keys (`tollgate envoy-config` does)",
        ));
    }
    if cp.gateway_token_env.is_empty() {
        return Err(field(
            "gateway_token_env",
            "must name an environment variable",
        ));
    }
    if let Err(e) = cp.trusted_keys() {
        return Err(field("snapshot_public_keys", &e.to_string()));
    }
    if cp.max_snapshot_age_seconds == 0 {
        return Err(field("max_snapshot_age_seconds", "must be at least 1"));
    }
    if cp.poll_timeout_seconds == 0 || cp.poll_timeout_seconds > 300 {
        return Err(field("poll_timeout_seconds", "must be between 1 and 300"));
    }
    if cp.retry_initial_ms == 0 || cp.retry_max_ms < cp.retry_initial_ms {
        return Err(field(
            "retry_max_ms",
            "retry_initial_ms must be at least 1 and at most retry_max_ms",
        ));
    }
    if cp.worker_refresh_ms == 0 || cp.worker_refresh_ms > 60_000 {
        return Err(field("worker_refresh_ms", "must be between 1 and 60000"));
    }
    if !(100..=MAX_USAGE_REPORT_MS).contains(&cp.usage_report_ms) {
        return Err(field(
            "usage_report_ms",
            "must be between 100 and 5000 (usage reaches the control plane within 5 s)",
        ));
    }
    Ok(())
}

/// RFC 9110 token characters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        LoadedConfig::parse(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    const SNAPSHOT: &str = r#"{"schema":1,"revision":1,"plans":[{"id":"acme/gold/1","limits":[{"requests":5,"per":"day"}]}]}"#;

    #[test]
    fn defaults_are_safe() {
        let parsed =
            LoadedConfig::parse(format!(r#"{{"snapshot":{SNAPSHOT}}}"#).as_bytes()).unwrap();
        assert!(parsed.static_directory.is_some());
        let c = parsed.config;
        assert_eq!(c.settings.unmatched, Unmatched::Pass);
        assert_eq!(c.settings.failure_mode, FailureMode::Closed);
        assert_eq!(c.settings.key_header, "x-api-key");
        assert_eq!(c.settings.key_query_param, "apikey");
        assert_eq!(c.settings.rate_limit_headers, RateLimitHeaders::XRateLimit);
        assert_eq!(
            c.challenges.api_key,
            r#"APIKey realm="tollgate", header="x-api-key""#
        );
    }

    /// The Ed25519 public key of the seed of 32 zero bytes.
    const PUBLIC_KEY: &str = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik";

    #[test]
    fn live_mode_needs_a_complete_control_plane() {
        let cp = format!(
            r#"{{"cluster":"cp","authority":"cp:7100","snapshot_public_keys":["{PUBLIC_KEY}"]}}"#
        );
        let parsed =
            LoadedConfig::parse(format!(r#"{{"control_plane":{cp}}}"#).as_bytes()).unwrap();
        assert!(parsed.static_directory.is_none());
        let c = parsed.config;
        assert!(
            c.routes.is_none(),
            "nothing enforced before the first snapshot"
        );
        let cp = c.settings.control_plane.unwrap();
        assert_eq!(
            (
                cp.path.as_str(),
                cp.poll_timeout_seconds,
                cp.gateway_token_env.as_str(),
                cp.max_snapshot_age_seconds
            ),
            ("/v1/snapshot", 30, "TOLLGATE_GATEWAY_TOKEN", 300)
        );
        assert!(cp.trusted_keys().is_ok());

        let e = err(r#"{"control_plane":{"cluster":"cp","authority":"a"}}"#);
        assert!(
            e.starts_with("control_plane: missing field `snapshot_public_keys`"),
            "{e}"
        );
        let e = err(&format!(
            r#"{{"control_plane":{{"cluster":"","authority":"a","snapshot_public_keys":["{PUBLIC_KEY}"]}}}}"#
        ));
        assert_eq!(e, "control_plane.cluster: must name an Envoy cluster");
        let e = err(
            r#"{"control_plane":{"cluster":"c","authority":"a","snapshot_public_keys":["AAAA"]}}"#,
        );
        assert_eq!(
            e,
            "control_plane.snapshot_public_keys: 3 bytes where 32 are needed"
        );
        let both = format!(
            r#"{{"snapshot":{SNAPSHOT},"control_plane":{{"cluster":"c","authority":"a","snapshot_public_keys":["{PUBLIC_KEY}"]}}}}"#
        );
        assert!(err(&both).contains("not both"));
    }

    #[test]
    fn secrets_in_the_plugin_configuration_are_refused_with_the_way_out() {
        let e = err(&format!(
            r#"{{"control_plane":{{"cluster":"c","authority":"a","gateway_token":"t","snapshot_public_keys":["{PUBLIC_KEY}"]}}}}"#
        ));
        assert!(
            e.starts_with(
                "control_plane.gateway_token: a secret here is printed by Envoy's /config_dump"
            ),
            "{e}"
        );
        assert!(e.contains("gateway_token_env"), "{e}");
        let e = err(&format!(
            r#"{{"control_plane":{{"cluster":"c","authority":"a","snapshot_secret":"s","snapshot_public_keys":["{PUBLIC_KEY}"]}}}}"#
        ));
        assert!(
            e.starts_with("control_plane.snapshot_secret: snapshots are signed with Ed25519"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(r#"{"unmatched":"maybe","snapshot":{}}"#)
            .starts_with("unmatched: unknown variant `maybe`"));
        assert!(err(r#"{"colour":"red"}"#).contains("unknown field `colour`"));
        let bad_period = SNAPSHOT.replace("day", "week");
        let e = err(&format!(r#"{{"snapshot":{bad_period}}}"#));
        assert!(
            e.starts_with("snapshot.plans[0].limits[0].per: unknown variant `week`"),
            "{e}"
        );
        let zero = SNAPSHOT.replace("5", "0");
        let e = err(&format!(r#"{{"snapshot":{zero}}}"#));
        assert_eq!(
            e,
            "snapshot.plans[0].limits[0].requests: must be at least 1"
        );
        assert!(err("{}").starts_with("snapshot: missing: embed the catalogue"));
        let e = err(&format!(
            r#"{{"key_header":"x api key","snapshot":{SNAPSHOT}}}"#
        ));
        assert!(e.starts_with("key_header:"), "{e}");
        assert!(err("not json").contains("expected"));
        let e = err(&format!(
            r#"{{"rate_limit_headers":"draft","snapshot":{SNAPSHOT}}}"#
        ));
        assert!(
            e.starts_with("rate_limit_headers: unknown variant `draft`, expected one of `x-ratelimit`, `ietf`, `none`"),
            "{e}"
        );
    }
}

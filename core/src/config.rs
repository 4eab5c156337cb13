//! The filter's plugin configuration: parsed and validated once, at load.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::decision::Challenges;
use crate::index::{compile, Directory, RouteIndex};
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
    /// Sent as `Authorization: Bearer <gateway_token>`.
    pub gateway_token: String,
    /// The HMAC-SHA256 secret snapshots are signed with.
    pub snapshot_secret: String,
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
}

fn default_snapshot_path() -> String {
    "/v1/snapshot".to_owned()
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
    if cp.gateway_token.is_empty() {
        return Err(field("gateway_token", "must not be empty"));
    }
    if cp.snapshot_secret.is_empty() {
        return Err(field("snapshot_secret", "must not be empty"));
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

    #[test]
    fn live_mode_needs_a_complete_control_plane() {
        let cp =
            r#"{"cluster":"cp","authority":"cp:7100","gateway_token":"t","snapshot_secret":"s"}"#;
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
            (cp.path.as_str(), cp.poll_timeout_seconds),
            ("/v1/snapshot", 30)
        );

        let e = err(r#"{"control_plane":{"cluster":"cp","authority":"a","gateway_token":"t"}}"#);
        assert!(
            e.starts_with("control_plane: missing field `snapshot_secret`"),
            "{e}"
        );
        let e = err(
            r#"{"control_plane":{"cluster":"","authority":"a","gateway_token":"t","snapshot_secret":"s"}}"#,
        );
        assert_eq!(e, "control_plane.cluster: must name an Envoy cluster");
        let both = format!(
            r#"{{"snapshot":{SNAPSHOT},"control_plane":{{"cluster":"c","authority":"a","gateway_token":"t","snapshot_secret":"s"}}}}"#
        );
        assert!(err(&both).contains("not both"));
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

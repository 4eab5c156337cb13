//! The filter's plugin configuration: parsed and validated once, at load.

use std::fmt;

use serde::Deserialize;

use crate::index::CatalogueIndex;
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
    /// Static mode: the catalogue itself.
    pub snapshot: Option<Snapshot>,
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

/// A validated configuration with its compiled catalogue (static mode).
#[derive(Debug)]
pub struct LoadedConfig {
    pub settings: FilterConfig,
    /// `APIKey realm="tollgate", header="<key_header>"`
    pub www_authenticate: String,
    pub index: Option<CatalogueIndex>,
}

impl LoadedConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
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
        let Some(snapshot) = &settings.snapshot else {
            return Err(ConfigError {
                field: "snapshot".into(),
                message: "missing: static mode embeds the catalogue here".into(),
            });
        };
        let index = CatalogueIndex::build(snapshot).map_err(|e| ConfigError {
            field: format!("snapshot.{}", e.field),
            message: e.message,
        })?;
        let www_authenticate = format!(
            "APIKey realm=\"tollgate\", header=\"{}\"",
            settings.key_header
        );
        Ok(LoadedConfig {
            settings,
            www_authenticate,
            index: Some(index),
        })
    }
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
        let c = LoadedConfig::parse(format!(r#"{{"snapshot":{SNAPSHOT}}}"#).as_bytes()).unwrap();
        assert_eq!(c.settings.unmatched, Unmatched::Pass);
        assert_eq!(c.settings.failure_mode, FailureMode::Closed);
        assert_eq!(c.settings.key_header, "x-api-key");
        assert_eq!(c.settings.key_query_param, "apikey");
        assert_eq!(
            c.www_authenticate,
            r#"APIKey realm="tollgate", header="x-api-key""#
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
        assert_eq!(
            err("{}"),
            "snapshot: missing: static mode embeds the catalogue here"
        );
        let e = err(&format!(
            r#"{{"key_header":"x api key","snapshot":{SNAPSHOT}}}"#
        ));
        assert!(e.starts_with("key_header:"), "{e}");
        assert!(err("not json").contains("expected"));
    }
}

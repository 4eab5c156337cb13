//! RFC 9457 problem details: the one problem body of tollgate, answered by the gateway itself
//! and by every control-plane error (which the CLI reads back).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

pub const CONTENT_TYPE: &str = "application/problem+json";

/// The stable machine type is `TYPE_PREFIX` followed by the problem's kind.
pub const TYPE_PREFIX: &str = "urn:tollgate:problem:";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// `urn:tollgate:problem:<kind>`, stable across releases.
    #[serde(rename = "type")]
    #[cfg_attr(
        feature = "openapi",
        schema(example = "urn:tollgate:problem:plan-version-locked")
    )]
    pub type_uri: String,
    // A `Cow` so the gateway's titles stay static while a client can read any title back.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub title: Cow<'static, str>,
    pub status: u16,
    pub detail: String,
}

impl Problem {
    /// `kind` becomes the stable machine type `urn:tollgate:problem:<kind>`.
    pub fn new(kind: &str, title: &'static str, status: u16, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: format!("{TYPE_PREFIX}{kind}"),
            title: Cow::Borrowed(title),
            status,
            detail: detail.into(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising a struct of strings and integers cannot fail; keep a valid body anyway.
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                "{{\"type\":\"{}\",\"status\":{}}}",
                self.type_uri, self.status
            )
        })
    }
}

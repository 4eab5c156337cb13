//! RFC 9457 problem details, the body of every response the gateway itself answers.

use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
}

impl Problem {
    /// `kind` becomes the stable machine type `urn:tollgate:problem:<kind>`.
    pub fn new(kind: &str, title: &'static str, status: u16, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: format!("urn:tollgate:problem:{kind}"),
            title,
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

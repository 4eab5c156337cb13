//! Human-readable output: lists as tables with one row per item, single resources as
//! field/value tables. `--json` bypasses all of this.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A table of `items` with the given columns (JSON field names, shown upper-cased).
pub fn list(items: &[Value], columns: &[&str]) -> String {
    if items.is_empty() {
        return "(none)".to_owned();
    }
    let mut table = new_table();
    table.set_header(columns.iter().map(|c| c.to_uppercase().replace('_', " ")));
    for item in items {
        table.add_row(columns.iter().map(|c| cell(c, item.get(*c))));
    }
    table.to_string()
}

/// A field/value table of one resource.
pub fn item(value: &Value) -> String {
    let Some(object) = value.as_object() else {
        return value.to_string();
    };
    let mut table = new_table();
    for (field, v) in object {
        table.add_row(vec![field.clone(), cell(field, Some(v))]);
    }
    table.to_string()
}

/// Unix seconds as RFC 3339 UTC.
pub fn time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn new_table() -> Table {
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled);
    table
}

/// One value as text: times as RFC 3339, limits as `100/day`, offered plans as
/// `org/plan/version`, routing as `hosts path_prefix`.
fn cell(field: &str, value: Option<&Value>) -> String {
    let Some(value) = value else {
        return String::new();
    };
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) if field.ends_with("_at") || field.ends_with("_until") => {
            n.as_i64().map(time).unwrap_or_else(|| n.to_string())
        }
        Value::Array(items) if field == "keys" => items
            .iter()
            .map(|k| match k.get("expires_at") {
                Some(Value::Number(_)) => format!(
                    "rotated, expires {}",
                    cell("expires_at", k.get("expires_at"))
                ),
                _ => "current".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::Array(items) => items
            .iter()
            .map(|v| cell("", Some(v)))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(o) => {
            if let (Some(requests), Some(Value::String(per))) = (o.get("requests"), o.get("per")) {
                format!("{requests}/{per}")
            } else if let (
                Some(Value::String(org)),
                Some(Value::String(plan)),
                Some(Value::String(v)),
            ) = (o.get("org"), o.get("plan"), o.get("version"))
            {
                format!("{org}/{plan}/{v}")
            } else if let Some(Value::String(prefix)) = o.get("path_prefix") {
                let hosts = o
                    .get("hosts")
                    .and_then(Value::as_array)
                    .filter(|h| !h.is_empty())
                    .map(|h| {
                        h.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_else(|| "*".to_owned());
                format!("{hosts} {prefix}")
            } else {
                value.to_string()
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_read_like_the_domain() {
        assert_eq!(
            cell("limits", Some(&json!([{"requests": 100, "per": "day"}]))),
            "100/day"
        );
        assert_eq!(
            cell("routing", Some(&json!({"path_prefix": "/o", "hosts": []}))),
            "* /o"
        );
        assert_eq!(cell("created_at", Some(&json!(0))), "1970-01-01T00:00:00Z");
        assert_eq!(cell("published_at", Some(&json!(null))), "-");
    }
}

//! The catalogue's vocabulary and the input rules every path shares: what an id, a version, a
//! routing and a set of limits may look like. Validation lives here once, so the HTTP API and
//! `apply` refuse the same things with the same words.

use std::collections::BTreeSet;
use std::fmt;

use tollgate_core::host::catalogue_host;
use tollgate_core::snapshot::{Period, RateLimit, Routing};

use crate::error::Error;

/// Org, plan, API and client ids: `[a-z0-9][a-z0-9-]{0,63}`.
pub fn check_slug(field: &str, value: &str) -> Result<(), Error> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_field(
            field,
            format!("{value:?} is not a slug: [a-z0-9][a-z0-9-]{{0,63}}"),
        ))
    }
}

/// Version names of plans, APIs and clients: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`. No `/`, so
/// the public name `org/name/version` always splits back unambiguously.
pub fn check_version(field: &str, value: &str) -> Result<(), Error> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_field(
            field,
            format!("{value:?} is not a version: [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"),
        ))
    }
}

/// Human-readable names: anything printable and visible, bounded. Bidirectional controls and
/// invisible characters are refused: they make a name show as another one (in the CLI, the
/// portal, logs) while comparing different.
pub fn check_name(field: &str, value: &str) -> Result<(), Error> {
    if value.trim().is_empty() || value.chars().count() > 200 || value.chars().any(char::is_control)
    {
        return Err(Error::invalid_field(
            field,
            "must be 1 to 200 printable characters",
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|&c| is_bidi_control(c) || is_invisible(c))
    {
        return Err(Error::invalid_field(
            field,
            format!(
                "must not contain bidirectional controls or invisible characters (U+{:04X})",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// Unicode's explicit directional formatting characters (UAX #9) and marks.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Zero-width and otherwise invisible format characters.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{180E}' | '\u{200B}'..='\u{200D}'
            | '\u{2060}'..='\u{2064}' | '\u{3164}' | '\u{FEFF}' | '\u{FFA0}'
    )
}

/// `org/name/version`, the form gateways and upstreams see (`x-tollgate-plan: acme/gold/1`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionRef {
    pub org: String,
    pub name: String,
    pub version: String,
}

impl VersionRef {
    pub fn new(org: &str, name: &str, version: &str) -> Self {
        VersionRef {
            org: org.to_owned(),
            name: name.to_owned(),
            version: version.to_owned(),
        }
    }

    pub fn parse(field: &str, value: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = value.split('/').collect();
        let [org, name, version] = parts.as_slice() else {
            return Err(Error::invalid_field(
                field,
                format!("{value:?} is not of the form org/name/version"),
            ));
        };
        check_slug(field, org)?;
        check_slug(field, name)?;
        check_version(field, version)?;
        Ok(VersionRef::new(org, name, version))
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.org, self.name, self.version)
    }
}

/// `org/name`, how the CLI names a plan, API or client.
pub fn parse_pair(field: &str, value: &str) -> Result<(String, String), Error> {
    let Some((org, name)) = value.split_once('/') else {
        return Err(Error::invalid_field(
            field,
            format!("{value:?} is not of the form org/name"),
        ));
    };
    check_slug(field, org)?;
    check_slug(field, name)?;
    Ok((org.to_owned(), name.to_owned()))
}

/// Highest request count a limit may carry; SQLite integers are signed 64-bit.
const MAX_REQUESTS: u64 = i64::MAX as u64;

/// Limits come back sorted by period, so two equal sets compare equal.
pub fn normalize_limits(field: &str, limits: &[RateLimit]) -> Result<Vec<RateLimit>, Error> {
    let mut seen = BTreeSet::new();
    for (i, limit) in limits.iter().enumerate() {
        if limit.requests == 0 || limit.requests > MAX_REQUESTS {
            return Err(Error::unprocessable(
                "invalid-limit",
                format!("{field}[{i}].requests must be between 1 and {MAX_REQUESTS}"),
            ));
        }
        if !seen.insert(limit.per) {
            return Err(Error::unprocessable(
                "invalid-limit",
                format!(
                    "{field}: more than one limit per {}; a plan has at most one limit per period",
                    limit.per.as_str()
                ),
            ));
        }
    }
    let mut sorted = limits.to_vec();
    sorted.sort_by_key(|l| l.per);
    Ok(sorted)
}

pub fn period_from_str(value: &str) -> Option<Period> {
    Period::ALL.into_iter().find(|p| p.as_str() == value)
}

/// Routing in canonical form: the prefix is checked, hosts are put in the normal form gateways
/// read requests in (core's `host::catalogue_host`), sorted and deduplicated. Two routings
/// collide exactly when their canonical forms are equal.
pub fn normalize_routing(field: &str, routing: &Routing) -> Result<Routing, Error> {
    check_path_prefix(&format!("{field}.path_prefix"), &routing.path_prefix)?;
    let mut hosts = BTreeSet::new();
    for (i, host) in routing.hosts.iter().enumerate() {
        hosts.insert(normalize_host(&format!("{field}.hosts[{i}]"), host)?);
    }
    Ok(Routing {
        path_prefix: routing.path_prefix.clone(),
        hosts: hosts.into_iter().collect(),
    })
}

/// The gateway matches prefixes on segment boundaries, so a prefix is a clean absolute path:
/// no trailing slash (except `/` itself), no empty, `.` or `..` segments, no query or fragment.
fn check_path_prefix(field: &str, prefix: &str) -> Result<(), Error> {
    let reason = if !prefix.starts_with('/') {
        Some("must start with /")
    } else if prefix.len() > 1024 {
        Some("must be at most 1024 bytes")
    } else if prefix.len() > 1 && prefix.ends_with('/') {
        Some("must not end with / (prefixes match on segment boundaries)")
    } else if prefix
        .bytes()
        .any(|b| !b.is_ascii_graphic() || matches!(b, b'?' | b'#' | b'%'))
    {
        Some("must be printable ASCII without ?, # or %")
    } else if prefix.len() > 1
        && prefix[1..]
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        Some("must not contain empty, . or .. segments")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::invalid_field(field, format!("{prefix:?} {reason}"))),
        None => Ok(()),
    }
}

/// A host name as gateways match it (lowercase, no port, no trailing dot). A name given in
/// Unicode is stored as punycode (`bücher.example` → `xn--bcher-kva.example`): that is what
/// clients send and Envoy matches, so gateways need no IDN tables.
fn normalize_host(field: &str, host: &str) -> Result<String, Error> {
    let ascii = if host.is_ascii() {
        host.to_owned()
    } else {
        idna::domain_to_ascii(host).map_err(|_| {
            Error::invalid_field(
                field,
                format!("{host:?} is not a host name: not a valid internationalised domain name"),
            )
        })?
    };
    catalogue_host(&ascii)
        .map_err(|e| Error::invalid_field(field, format!("{host:?} is not a host name: it {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_bidi_controls_and_invisible_characters() {
        assert!(check_name("name", "Acme Payments — Zürich 支付 🚀").is_ok());
        for bad in [
            "Acme\u{202E}gnp.exe",
            "\u{2067}Acme",
            "Ac\u{200B}me",
            "Acme\u{FEFF}",
            "Ac\u{200D}me",
            "\u{061C}Acme",
        ] {
            let e = check_name("name", bad).unwrap_err();
            assert!(e.to_string().starts_with("name: "), "{e}");
            assert!(e.to_string().contains("bidirectional"), "{e}");
        }
    }

    #[test]
    fn slugs_follow_the_design() {
        assert!(check_slug("id", "acme-2").is_ok());
        assert!(check_slug("id", "-acme").is_err());
        assert!(check_slug("id", "Acme").is_err());
        assert!(check_slug("id", &"a".repeat(65)).is_err());
        assert!(check_slug("id", "").is_err());
    }

    #[test]
    fn versions_never_contain_a_slash() {
        assert!(check_version("version", "1.2.0-beta_1").is_ok());
        assert!(check_version("version", "1/2").is_err());
        assert!(check_version("version", ".1").is_err());
    }

    #[test]
    fn public_names_split_back() {
        let r = VersionRef::parse("plan", "acme/gold/1").unwrap();
        assert_eq!(r.to_string(), "acme/gold/1");
        assert!(VersionRef::parse("plan", "acme/gold").is_err());
        assert!(VersionRef::parse("plan", "acme/gold/1/2").is_err());
    }

    #[test]
    fn routing_is_canonical() {
        let r = normalize_routing(
            "routing",
            &Routing {
                path_prefix: "/orders/v1".into(),
                hosts: vec!["B.example".into(), "a.example".into(), "b.example".into()],
            },
        )
        .unwrap();
        assert_eq!(r.hosts, vec!["a.example", "b.example"]);
        let on = |host: &str| {
            normalize_routing(
                "routing",
                &Routing {
                    path_prefix: "/".into(),
                    hosts: vec!["ok.example".into(), host.into()],
                },
            )
        };
        for bad in [
            "a.example:8080",
            ".",
            "-",
            "..",
            "a..b",
            "*.example",
            "",
            "u@a.example",
        ] {
            let e = on(bad).unwrap_err().to_string();
            assert!(e.contains("routing.hosts[1]"), "{bad:?}: {e}");
        }
        assert_eq!(on("A.Example.").unwrap().hosts, ["a.example", "ok.example"]);
        assert_eq!(
            on("Bücher.example").unwrap().hosts,
            ["ok.example", "xn--bcher-kva.example"]
        );
        for bad in ["orders", "/orders/", "/a//b", "/a/../b", "/a?b"] {
            let routing = Routing {
                path_prefix: bad.into(),
                hosts: vec![],
            };
            assert!(normalize_routing("routing", &routing).is_err(), "{bad}");
        }
        assert!(normalize_routing(
            "routing",
            &Routing {
                path_prefix: "/".into(),
                hosts: vec![]
            }
        )
        .is_ok());
    }

    #[test]
    fn limits_are_one_per_period() {
        let day = |n| RateLimit {
            requests: n,
            per: Period::Day,
        };
        assert!(normalize_limits("limits", &[day(1), day(2)]).is_err());
        assert!(normalize_limits("limits", &[day(0)]).is_err());
        let sorted = normalize_limits(
            "limits",
            &[
                day(10),
                RateLimit {
                    requests: 1,
                    per: Period::Second,
                },
            ],
        )
        .unwrap();
        assert_eq!(sorted[0].per, Period::Second);
    }
}

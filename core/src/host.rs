//! Host names as the gateway and the control plane both read them: one normal form, so a route
//! the control plane accepted for `api.example.com` is the route a request for
//! `API.example.com.:8443` gets.
//!
//! The normal form is what DNS and Envoy treat as the same name: ASCII lowercase, no port, no
//! trailing dot (one is allowed and dropped: `api.example.com.` is the fully qualified
//! spelling). A name is labels of 1 to 63 letters, digits and inner hyphens, at most 253 bytes in
//! all; an IP literal (`127.0.0.1`, `[::1]`) is a name too. Internationalised names travel as
//! punycode (`xn--…`): Envoy matches hosts byte for byte and never converts, so a gateway does
//! not either; the control plane converts names given in Unicode before calling
//! [`catalogue_host`].

use std::borrow::Cow;
use std::fmt;

/// Why a string is not a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    Empty,
    NotAscii,
    Port,
    Userinfo,
    Wildcard,
    TooLong,
    EmptyLabel,
    LabelTooLong,
    HyphenAtLabelEdge,
    BadCharacter(char),
    BadIpLiteral,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Empty => f.write_str("is empty"),
            HostError::NotAscii => f.write_str(
                "is not ASCII (give an internationalised name in its punycode xn-- form)",
            ),
            HostError::Port => {
                f.write_str("has a port (gateways match the host whatever the port)")
            }
            HostError::Userinfo => f.write_str("has userinfo ('@')"),
            HostError::Wildcard => f.write_str("is a wildcard (not supported: name each host)"),
            HostError::TooLong => f.write_str("is longer than 253 bytes"),
            HostError::EmptyLabel => {
                f.write_str("has an empty label ('..', or a leading or second trailing dot)")
            }
            HostError::LabelTooLong => f.write_str("has a label longer than 63 bytes"),
            HostError::HyphenAtLabelEdge => f.write_str("has a label that starts or ends with '-'"),
            HostError::BadCharacter(c) => {
                write!(f, "contains {c:?} (labels are letters, digits and '-')")
            }
            HostError::BadIpLiteral => f.write_str("is not a valid bracketed IPv6 literal"),
        }
    }
}

impl std::error::Error for HostError {}

/// A host name in the catalogue (an API version's `routing.hosts`), in normal form. Refuses
/// what no request could carry as its host: ports, userinfo, wildcards, empty or oversized
/// labels, non-ASCII.
pub fn catalogue_host(name: &str) -> Result<String, HostError> {
    if name.contains('@') {
        return Err(HostError::Userinfo);
    }
    if name.contains('*') {
        return Err(HostError::Wildcard);
    }
    if name.starts_with('[') {
        if !name.ends_with(']') {
            return Err(HostError::Port);
        }
    } else if name.contains(':') {
        return Err(HostError::Port);
    }
    normal_name(name).map(Cow::into_owned)
}

/// The host a request names in its `:authority` (or HTTP/1.1 `Host`), in normal form; `None`
/// when it names no readable host.
///
/// Besides case, port and one trailing dot, this reads what Envoy 1.40 hands a filter
/// unchanged (see tests/e2e/test_host_routing.py): userinfo (`user@host`, dropped as URL parsers
/// and Envoy's own absolute-form handling drop it) and repeated `Host` headers, which Envoy joins
/// with commas: they are one host only when every copy names the same one. It runs on every
/// request of a catalogue that routes by host, so it looks at each byte about once.
pub fn request_host(authority: &str) -> Option<Cow<'_, str>> {
    let bytes = authority.as_bytes();
    if bytes.contains(&b',') {
        let mut copies = authority.split(',').map(|a| request_host(a.trim()));
        let first = copies.next()??;
        return copies
            .all(|c| c.as_deref() == Some(first.as_ref()))
            .then_some(first);
    }
    let host_port = match bytes.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    let host = if host_port.starts_with('[') {
        let end = host_port.find(']')?;
        let (host, rest) = host_port.split_at(end + 1);
        is_port_suffix(rest).then_some(host)?
    } else {
        match host_port.as_bytes().iter().rposition(|&b| b == b':') {
            Some(colon) if is_port_digits(&host_port[colon + 1..]) => &host_port[..colon],
            Some(_) => return None,
            None => host_port,
        }
    };
    normal_name(host).ok()
}

/// `""` or `:digits` (Envoy passes an empty port through).
fn is_port_suffix(rest: &str) -> bool {
    rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port_digits)
}

fn is_port_digits(port: &str) -> bool {
    port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a bare name (no port, no userinfo) and puts it in normal form, borrowing when it
/// already is.
fn normal_name(name: &str) -> Result<Cow<'_, str>, HostError> {
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.starts_with('[') {
        return ip_literal(name);
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let bytes = name.as_bytes();
    if bytes.len() > 253 {
        return Err(if name.is_ascii() {
            HostError::TooLong
        } else {
            HostError::NotAscii
        });
    }
    let mut upper = false;
    let mut label_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'.' => {
                check_label(&bytes[label_start..i])?;
                label_start = i + 1;
            }
            b'a'..=b'z' | b'0'..=b'9' | b'-' => {}
            b'A'..=b'Z' => upper = true,
            0x80.. => return Err(HostError::NotAscii),
            _ => return Err(HostError::BadCharacter(char::from(b))),
        }
    }
    check_label(&bytes[label_start..])?;
    Ok(if upper {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

fn check_label(label: &[u8]) -> Result<(), HostError> {
    match label {
        [] => Err(HostError::EmptyLabel),
        _ if label.len() > 63 => Err(HostError::LabelTooLong),
        [b'-', ..] | [.., b'-'] => Err(HostError::HyphenAtLabelEdge),
        _ => Ok(()),
    }
}

/// `[v6]`: hex digits, ':' and '.' (an embedded IPv4), lowercased.
fn ip_literal(name: &str) -> Result<Cow<'_, str>, HostError> {
    let inner = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .ok_or(HostError::BadIpLiteral)?;
    let ok = inner.len() >= 2
        && inner.contains(':')
        && inner
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    if !ok {
        return Err(HostError::BadIpLiteral);
    }
    Ok(lowercase(name))
}

fn lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(authority: &str) -> Option<String> {
        request_host(authority).map(Cow::into_owned)
    }

    #[test]
    fn request_hosts_ignore_case_port_and_one_trailing_dot() {
        for spelling in [
            "api.example.com",
            "API.Example.COM",
            "api.example.com.",
            "api.example.com:8443",
            "api.example.com.:8443",
            "Api.Example.Com.:",
        ] {
            assert_eq!(
                read(spelling).as_deref(),
                Some("api.example.com"),
                "{spelling}"
            );
        }
    }

    #[test]
    fn userinfo_is_not_part_of_the_host() {
        assert_eq!(
            read("evil@api.example.com").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            read("a@b@API.example.com.:80").as_deref(),
            Some("api.example.com")
        );
    }

    #[test]
    fn repeated_hosts_count_only_when_they_agree() {
        assert_eq!(
            read("api.example.com,API.example.com.").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(read("api.example.com,other.example.com"), None);
        assert_eq!(read("api.example.com,"), None);
    }

    #[test]
    fn unreadable_request_hosts_are_none() {
        for bad in [
            "",
            ".",
            "..",
            "-",
            "api.example.com..",
            ".api.example.com",
            "api..example.com",
            "api.example.com:http",
            "api.example.com:123456",
            "bücher.example",
            "api%2eexample.com",
            "a_b.example",
            "-api.example.com",
            "api-.example.com",
            "::1",
            "[::1",
        ] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        assert_eq!(read(&format!("{}.example", "a".repeat(64))), None);
        assert_eq!(
            read(&format!("{}.example", "a".repeat(63))).map(|h| h.len()),
            Some(71)
        );
    }

    #[test]
    fn ip_literals_are_hosts() {
        assert_eq!(read("127.0.0.1:10000").as_deref(), Some("127.0.0.1"));
        assert_eq!(read("[::1]:10000").as_deref(), Some("[::1]"));
        assert_eq!(read("[FE80::1]").as_deref(), Some("[fe80::1]"));
    }

    #[test]
    fn normal_hosts_are_borrowed() {
        assert!(matches!(
            request_host("api.example.com:80"),
            Some(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn catalogue_refuses_what_no_request_names() {
        let cases = [
            (".", HostError::EmptyLabel),
            ("..", HostError::EmptyLabel),
            ("-", HostError::HyphenAtLabelEdge),
            ("", HostError::Empty),
            ("a..b", HostError::EmptyLabel),
            ("api.example.com:8080", HostError::Port),
            ("[::1]:80", HostError::Port),
            ("*.example.com", HostError::Wildcard),
            ("u@api.example.com", HostError::Userinfo),
            ("bücher.example", HostError::NotAscii),
            ("a b", HostError::BadCharacter(' ')),
        ];
        for (name, error) in cases {
            assert_eq!(catalogue_host(name), Err(error), "{name:?}");
        }
        assert_eq!(
            catalogue_host(&format!("{}.example", "a".repeat(64))),
            Err(HostError::LabelTooLong)
        );
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
        ]
        .join(".");
        assert_eq!(catalogue_host(&long), Err(HostError::TooLong));
    }

    #[test]
    fn catalogue_hosts_are_stored_in_the_form_requests_are_read() {
        for name in [
            "API.Example.com",
            "api.example.com.",
            "xn--bcher-kva.example",
        ] {
            let stored = catalogue_host(name).unwrap();
            assert_eq!(read(&format!("{name}:443")), Some(stored), "{name}");
        }
    }
}

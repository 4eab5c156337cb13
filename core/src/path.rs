//! Request paths: the parts the gateway matches on and the `apikey` query parameter.
//!
//! Envoy normalises paths before filters run (the configs we ship set `normalize_path`,
//! `merge_slashes` and an escaped-slash action). The filter still refuses any path that is not
//! in normal form, because a prefix check on `/public/../orders` would pass where the upstream
//! then serves `/orders`.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Splits `:path` into the path and the query string (without `?`).
pub fn split_query(path: &str) -> (&str, Option<&str>) {
    match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    }
}

/// The path as servers that honour `;` path parameters read it: each segment up to its first
/// `;` (`/status/admin;x=1/users` → `/status/admin/users`, `/a/..;/b` → `/a/../b`). Tomcat, Jetty
/// and Spring route on this form, so the gateway checks and routes on it too (and forwards the
/// path unchanged).
pub fn without_parameters(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or_default());
    }
    Cow::Owned(out)
}

/// True for a path without empty, `.` or `..` segments, backslashes, or percent-encoded
/// `.`, `/` or `\`, i.e. one that every upstream reads the same way as the gateway does.
pub fn is_normal(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') {
        return false;
    }
    // Percent-encoded '.', '/' or '\\' in either case, found without copying the path.
    let encoded_separator = path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e' | b'f') | (b'5', b'c')
            )
    });
    if encoded_separator {
        return false;
    }
    // Skip the leading '/'; a trailing '/' yields one empty last segment, which is fine.
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// The first value of query parameter `name`, percent-decoded, and the query string without
/// any occurrence of it (`None` when nothing remains).
pub fn take_query_param(query: &str, name: &str) -> (Option<String>, Option<String>) {
    let mut value = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k) == name {
            if value.is_none() {
                value = Some(decode(v));
            }
        } else if !pair.is_empty() {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        None
    } else {
        Some(kept.join("&"))
    };
    (value, rest)
}

/// The query string with only the first occurrence of parameter `name` kept, as sent; `None`
/// when it occurs at most once (nothing to change).
pub fn keep_first_param(query: &str, name: &str) -> Option<String> {
    let mut seen = false;
    let mut repeated = false;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let k = pair.split_once('=').map_or(pair, |(k, _)| k);
        if decode(k) == name {
            if seen {
                repeated = true;
                continue;
            }
            seen = true;
        }
        kept.push(pair);
    }
    repeated.then(|| kept.join("&"))
}

fn decode(s: &str) -> String {
    let plus_as_space = s.replace('+', " ");
    percent_decode_str(&plus_as_space)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths() {
        for p in ["/", "/orders", "/orders/", "/orders/1", "/a.b/c..d", "/%41"] {
            assert!(is_normal(p), "{p}");
        }
        for p in [
            "orders",
            "//orders",
            "/a//b",
            "/status/../orders",
            "/status/./orders",
            "/status/..",
            "/status/%2e%2e/orders",
            "/status/%2E./orders",
            "/orders%2f1",
            "/orders\\1",
        ] {
            assert!(!is_normal(p), "{p}");
        }
    }

    #[test]
    fn path_parameters_are_dropped_per_segment() {
        assert_eq!(
            without_parameters("/status/admin;x=1/users"),
            "/status/admin/users"
        );
        assert_eq!(without_parameters("/status/admin;"), "/status/admin");
        assert_eq!(without_parameters("/a/..;/b"), "/a/../b");
        assert!(!is_normal(&without_parameters("/a/..;jsessionid=1/b")));
        assert!(matches!(
            without_parameters("/plain/path"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn query_param_is_taken_and_others_kept() {
        assert_eq!(
            take_query_param("a=1&apikey=k%2By&b=2", "apikey"),
            (Some("k+y".to_owned()), Some("a=1&b=2".to_owned()))
        );
        assert_eq!(
            take_query_param("apikey=x", "apikey"),
            (Some("x".to_owned()), None)
        );
        assert_eq!(
            take_query_param("apikey=x&apikey=y&c", "apikey"),
            (Some("x".to_owned()), Some("c".to_owned()))
        );
        assert_eq!(
            take_query_param("a=1", "apikey"),
            (None, Some("a=1".to_owned()))
        );
        assert_eq!(
            take_query_param("%61pikey=z", "apikey").0,
            Some("z".to_owned())
        );
    }

    #[test]
    fn only_the_first_occurrence_of_a_param_is_kept() {
        assert_eq!(
            keep_first_param("apikey=a&x=1&%61pikey=b&apikey=c", "apikey"),
            Some("apikey=a&x=1".to_owned())
        );
        assert_eq!(keep_first_param("apikey=a&x=1", "apikey"), None);
        assert_eq!(keep_first_param("x=1", "apikey"), None);
    }

    #[test]
    fn split_query_at_first_question_mark() {
        assert_eq!(split_query("/a?b=1?c"), ("/a", Some("b=1?c")));
        assert_eq!(split_query("/a"), ("/a", None));
    }
}

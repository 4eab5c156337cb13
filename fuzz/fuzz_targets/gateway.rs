//! One request through the gateway (routing, key and token extraction, stripping, identity
//! headers, verdict, counting) over the fixed catalogue in static mode.
//!
//! Input: `:path` `\n` `:authority` `\n` `x-api-key` `\n` `authorization`, each read as Envoy
//! hands it over (lossy UTF-8); a header whose line is missing is not sent. The request is
//! sent three times against the same shared data (Bronze allows 2 a minute).
//!
//! Invariants: nothing panics or errors; a local answer is one of the documented statuses and
//! never echoes the key or token sent (checked with marked credentials); an unmatched request
//! is forwarded without the key and otherwise untouched; a public answer never carries an
//! identity or the key, and never comes from a path under the nested private prefix `/status/admin` (as parameter-honouring
//! upstreams read it); an allowed request carries the identity of a client of the catalogue;
//! Bronze is never admitted more than twice.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tollgate_core::config::LoadedConfig;
use tollgate_core::decision::Reason;
use tollgate_core::gateway::{handle_request, HeaderList, Outcome, CLIENT_HEADER, PLAN_HEADER};
use tollgate_core::index::Directory;
use tollgate_core::keydir::bucket_key;
use tollgate_core::lease::LeaseBook;
use tollgate_core::path::{split_query, without_parameters};
use tollgate_core::shared::{MemoryStore, SharedStore};
use tollgate_fuzz::{catalogue, fields, NOW_MS};

fn fixture() -> &'static (LoadedConfig, Directory) {
    static FIXTURE: OnceLock<(LoadedConfig, Directory)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let json = serde_json::json!({ "snapshot": catalogue() }).to_string();
        let parsed = LoadedConfig::parse(json.as_bytes()).expect("the fixed catalogue is valid");
        let directory = parsed
            .static_directory
            .expect("static mode has a directory");
        (parsed.config, directory)
    })
}

const ECHO_MARK: &str = "~echo-7f3a~";

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

fuzz_target!(|data: &[u8]| {
    let (config, directory) = fixture();
    let mut store = MemoryStore::new();
    for (bucket, bytes) in &directory.buckets {
        store
            .set(&bucket_key(*bucket), bytes, 0)
            .expect("memory store never fails");
    }

    let input = fields(data, 4);
    let text = |i: usize| {
        input
            .get(i)
            .map(|f| String::from_utf8_lossy(f).into_owned())
    };
    let path = text(0).unwrap_or_default();
    let mut sent = vec![(":path".to_owned(), path.clone())];
    for (i, name) in [(1, ":authority"), (2, "x-api-key"), (3, "authorization")] {
        if let Some(value) = text(i) {
            sent.push((name.to_owned(), value));
        }
    }
    let effective = without_parameters(split_query(&path).0).into_owned();

    // One worker's lease book across the run, as in the filter.
    let mut leases = LeaseBook::new();
    let mut bronze_admitted = 0;
    for _ in 0..3 {
        let mut headers = HeaderList(sent.clone());
        let handled = handle_request(config, &mut headers, &mut store, &mut leases, NOW_MS)
            .expect("the memory store never fails");
        match &handled.outcome {
            Outcome::Respond(denial) => {
                assert!(
                    [400, 401, 403, 404, 410, 429, 503].contains(&denial.status),
                    "undocumented status {}",
                    denial.status
                );
            }
            Outcome::Forward { .. } => match handled.reason {
                Reason::Unmatched => {
                    // Forwarded without tollgate's key header (and key parameter); nothing
                    // else of the request changes.
                    let other = |h: &[(String, String)]| -> Vec<(String, String)> {
                        h.iter()
                            .filter(|(k, _)| k != "x-api-key" && k != ":path")
                            .cloned()
                            .collect()
                    };
                    assert_eq!(headers.value("x-api-key"), None, "key forwarded unmatched");
                    assert_eq!(other(&headers.0), other(&sent), "unmatched: only the key goes")
                }
                Reason::Public => {
                    assert!(
                        !under(&effective, "/status/admin"),
                        "private path answered as public: {path:?}"
                    );
                    assert_eq!(headers.value(CLIENT_HEADER), None);
                    assert_eq!(headers.value(PLAN_HEADER), None);
                    assert_eq!(
                        headers.value("x-api-key"),
                        None,
                        "key forwarded by a public API"
                    );
                }
                Reason::Allow => {
                    let client = headers.value(CLIENT_HEADER).unwrap_or_default();
                    assert!(
                        ["acme/mobile/1", "acme/hobby/1"].contains(&client),
                        "identity {client:?}"
                    );
                    assert!(headers.value(PLAN_HEADER).is_some());
                    if client == "acme/hobby/1" {
                        bronze_admitted += 1;
                    }
                }
                other => panic!("forwarded with reason {other:?}"),
            },
        }
    }
    assert!(
        bronze_admitted <= 2,
        "Bronze admitted {bronze_admitted} times in a minute"
    );

    // The credentials once more, each ending in a marker that no fixed text of the gateway
    // contains: any marker in the answer is the caller's bytes coming back. (Comparing the
    // plain credential would flag a "key" that merely spells part of a fixed text, such as
    // `realm="tollgate`, which the fuzzer found within seconds.)
    let marked: Vec<(String, String)> = sent
        .iter()
        .map(|(name, value)| match name.as_str() {
            "x-api-key" | "authorization" => (name.clone(), format!("{value}{ECHO_MARK}")),
            _ => (name.clone(), value.clone()),
        })
        .collect();
    let handled = handle_request(
        config,
        &mut HeaderList(marked),
        &mut store,
        &mut leases,
        NOW_MS,
    )
        .expect("the memory store never fails");
    if let Outcome::Respond(denial) = &handled.outcome {
        let body = denial.problem.to_json();
        assert!(!body.contains(ECHO_MARK), "a credential echoed in {body}");
        for (name, value) in &denial.headers {
            assert!(!value.contains(ECHO_MARK), "a credential echoed in {name}");
        }
    }
});

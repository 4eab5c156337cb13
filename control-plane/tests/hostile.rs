//! Hostile clients against the unauthenticated surface: oversized and many-parameter token
//! forms, made-up methods, slow clients holding connections, guessed secrets. Each answers
//! within a bound and leaves the service usable.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{json, Value};

/// Reads one HTTP/1.1 answer (status, body) from `reader`; the body by its `content-length`.
fn read_answer(reader: &mut BufReader<TcpStream>) -> (u16, String) {
    let (status, _, body) = read_answer_with_headers(reader);
    (status, body)
}

/// An answer's status, headers (names lowercased) and body.
fn read_answer_with_headers(
    reader: &mut BufReader<TcpStream>,
) -> (u16, Vec<(String, String)>, String) {
    let mut headers = Vec::new();
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line:?}");
    let status = status_line[9..12].parse().unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Throttle counts last one UTC minute: a test that counts starts with at least 10 s of the
/// minute left, so the count it checks is not reset halfway.
fn clear_of_minute_end() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now % 60 > 50 {
        std::thread::sleep(Duration::from_secs(61 - now % 60));
    }
}

fn connect(s: &Server) -> TcpStream {
    let stream = TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream
}

/// Sends `head` and `body` (write errors ignored: the server may answer and close before the
/// body is all sent) and reads the answer.
fn exchange(s: &Server, head: &str, body: &[u8]) -> (u16, String) {
    let (status, _, body) = exchange_with_headers(s, head, body);
    (status, body)
}

fn exchange_with_headers(
    s: &Server,
    head: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = connect(s);
    let reader = stream.try_clone().unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body);
    read_answer_with_headers(&mut BufReader::new(reader))
}

/// The token endpoint's body limit is 8 KiB exactly: a form of 8,192 bytes is read (and refused
/// for its wrong secret), one byte more is 413 before any of it is parsed.
#[test]
fn the_token_body_limit_is_eight_kibibytes() {
    let s = Server::start();
    let form_of = |len: usize| {
        let start = "grant_type=client_credentials&client_id=tgc_nobody&client_secret=";
        format!("{start}{}", "s".repeat(len - start.len()))
    };
    let ask = |form: &str| {
        let head = format!(
            "POST /oauth/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            form.len()
        );
        exchange(&s, &head, form.as_bytes())
    };
    let (status, body) = ask(&form_of(8 * 1024));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_client"), "{body}");
    let (status, body) = ask(&form_of(8 * 1024 + 1));
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload-too-large"), "{body}");
}

/// 115,000 distinct parameters in 1 MiB: the form the issue measured at 14 s of CPU. The
/// endpoint refuses it at once, declared or chunked, and its error is problem+json 413 as for
/// every oversized body; a small form with too many parameters is an RFC 6749 error.
#[test]
fn a_huge_token_form_is_refused_fast() {
    let s = Server::start();
    let mut form = String::new();
    let mut i = 0;
    while form.len() < 1024 * 1024 - 16 {
        form.push_str(&format!("p{i}=x&"));
        i += 1;
    }
    assert!(i >= 115_000, "{i} parameters");
    let declared = format!(
        "POST /oauth/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        form.len()
    );
    let started = Instant::now();
    let (status, body) = exchange(&s, &declared, form.as_bytes());
    let took = started.elapsed();
    println!("declared 1 MiB form with {i} parameters: HTTP {status} in {took:?}");
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload-too-large"), "{body}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    let mut chunked = Vec::new();
    for piece in form.as_bytes().chunks(4096) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = "POST /oauth/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n\
                transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let started = Instant::now();
    let (status, body) = exchange(&s, head, &chunked);
    let took = started.elapsed();
    println!("chunked 1 MiB form: HTTP {status} in {took:?}");
    assert_eq!(status, 413, "{body}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // Within the size limit but with more parameters than a token request has.
    let many: String = (0..1000).map(|i| format!("{i}=&")).collect();
    let head = format!(
        "POST /oauth/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        many.len()
    );
    let (status, body) = exchange(&s, &head, many.as_bytes());
    assert_eq!(status, 400, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"], "invalid_request");
    assert!(
        error["error_description"]
            .as_str()
            .unwrap()
            .contains("parameters"),
        "{body}"
    );
    // The service is still there.
    assert_eq!(s.request("GET", "/healthz", None, None, &[]).status, 200);
}

/// 8,000 made-up methods, no token: `/metrics` counts them under one `other` series.
#[test]
fn made_up_methods_leave_metrics_small() {
    let s = Server::start();
    let stream = connect(&s);
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    // Pipelined in batches: one round trip per hundred requests.
    for batch in 0..80 {
        let requests: String = (batch * 100..(batch + 1) * 100)
            .map(|i| format!("M{i:05}X /healthz HTTP/1.1\r\nhost: x\r\n\r\n"))
            .collect();
        writer.write_all(requests.as_bytes()).unwrap();
        for _ in 0..100 {
            let (status, _) = read_answer(&mut reader);
            assert!(status >= 200, "{status}");
        }
    }
    let metrics = s.request("GET", "/metrics", None, None, &[]);
    assert_eq!(metrics.status, 200);
    println!(
        "/metrics after 8,000 made-up methods: {} bytes",
        metrics.body.len()
    );
    assert!(
        metrics.body.len() < 16 * 1024,
        "{} bytes of metrics",
        metrics.body.len()
    );
    assert!(!metrics.body.contains("M00042X"));
    let other = metrics
        .body
        .lines()
        .find(|l| l.contains("method=\"other\"") && l.contains("/healthz"))
        .unwrap_or_else(|| panic!("no other series:\n{}", metrics.body));
    assert!(other.ends_with(" 8000"), "{other}");
}

/// 1,100 clients that send half a request and wait, against a server limited to 1,024 open
/// files (a common default): `/healthz` and `/oauth/token` still answer, because the connection
/// cap stays below the limit and the header-read timeout frees the slots.
#[test]
fn slow_clients_cannot_starve_healthz_or_the_token_endpoint() {
    let s = Server::start_with_open_file_limit(1024, &[("TOLLGATE_HEADER_READ_TIMEOUT", "2")]);
    let address = s.base.trim_start_matches("http://").to_owned();
    let mut slow = Vec::with_capacity(1100);
    for _ in 0..1100 {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream
            .write_all(b"POST /oauth/token HTTP/1.1\r\nhost: x\r\ncontent-type: applic")
            .unwrap();
        slow.push(stream);
    }
    let started = Instant::now();
    let (status, _) = exchange(
        &s,
        "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"",
    );
    let healthz = started.elapsed();
    assert_eq!(status, 200);
    let form = "grant_type=client_credentials&client_id=tgc_nobody&client_secret=wrong";
    let started = Instant::now();
    let (status, body) = exchange(
        &s,
        &format!(
            "POST /oauth/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            form.len()
        ),
        form.as_bytes(),
    );
    let token = started.elapsed();
    println!("with 1,100 half-sent requests held open: /healthz in {healthz:?}, /oauth/token in {token:?}");
    assert_eq!(status, 401, "{body}");
    assert!(
        healthz < Duration::from_secs(30),
        "/healthz took {healthz:?}"
    );
    assert!(
        token < Duration::from_secs(30),
        "/oauth/token took {token:?}"
    );
    assert!(!s.logs().contains("Too many open files"));
    drop(slow);
}

/// A client that sends headers and then trickles nothing of its body gets 408; one that keeps
/// an idle connection open is closed after the header-read timeout.
#[test]
fn a_stalled_body_is_answered_408_and_an_idle_connection_is_closed() {
    let s = Server::start_with_env(&[
        ("TOLLGATE_REQUEST_TIMEOUT", "1"),
        ("TOLLGATE_HEADER_READ_TIMEOUT", "1"),
    ]);
    let started = Instant::now();
    let (status, body) = exchange(
        &s,
        &format!(
            "POST /v1/orgs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"id\":",
            s.admin_token
        ),
        b"",
    );
    println!(
        "stalled body answered {status} after {:?}",
        started.elapsed()
    );
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("request-timeout"), "{body}");

    let stream = connect(&s);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut reader).0, 200);
    let started = Instant::now();
    let mut rest = Vec::new();
    // EOF (0 bytes) once the server closes the idle connection.
    let n = reader.read_to_end(&mut rest).unwrap_or(0);
    let idle = started.elapsed();
    println!("idle keep-alive connection closed after {idle:?}");
    assert_eq!(n, 0);
    assert!(idle < Duration::from_secs(20), "{idle:?}");
}

/// The database holds every key hash: 0600 even under umask 000, with its -wal and -shm.
#[test]
fn the_database_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    if !common::on_sqlite("PostgreSQL keeps its files in its own directory") {
        return;
    }
    let s = Server::start_with_umask("000");
    s.seed();
    for file in ["tollgate.db", "tollgate.db-wal", "tollgate.db-shm"] {
        let mode = std::fs::metadata(s.data_dir.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        println!("{file}: {mode:o}");
        assert_eq!(mode, 0o600, "{file} is {mode:o}");
    }
}

/// Names that display as something else are refused with the field named.
#[test]
fn display_names_refuse_bidi_controls_and_zero_width_characters() {
    let s = Server::start();
    for name in ["Acme\u{202E}moc.evil", "Ac\u{200B}me"] {
        let answer = s.post("/v1/orgs", serde_json::json!({"id": "acme", "name": name}));
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_eq!(answer.problem_type(), "urn:tollgate:problem:invalid-field");
        assert!(answer.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("name: "));
    }
    assert_eq!(s.get("/v1/orgs/acme").status, 404);
}

/// Guessing a client's secret: after the allowed failures its token requests answer 429 with
/// Retry-After, counted in /metrics; the log names the client_id, never a secret.
#[test]
fn guessed_secrets_are_throttled_counted_and_logged_without_secrets() {
    let s = Server::start_with_env(&[
        ("TOLLGATE_TOKEN_FAILURES_PER_CLIENT", "5"),
        ("TOLLGATE_TOKEN_REQUESTS_PER_SOURCE", "1000"),
    ]);
    s.seed();
    let issued = Server::ok(s.act("/v1/orgs/acme/clients/mobile/versions/1/credentials"));
    let id = issued["client_id"].as_str().unwrap();
    let secret = issued["client_secret"].as_str().unwrap();
    let ask = |secret: &str| {
        let form = format!("grant_type=client_credentials&client_id={id}&client_secret={secret}");
        exchange_with_headers(
            &s,
            &format!(
                "POST /oauth/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                form.len()
            ),
            form.as_bytes(),
        )
    };
    clear_of_minute_end();
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(ask(&format!("tgs_guess{i:03}")).0);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    // Even the right secret waits for the minute to end, and is told how long.
    let (status, headers, body) = ask(secret);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too-many-requests"), "{body}");
    let retry_after: u64 = headers
        .iter()
        .find(|(name, _)| name == "retry-after")
        .map(|(_, value)| value.parse().unwrap())
        .expect("a 429 from /oauth/token says when to retry");
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );

    let metrics = s.request("GET", "/metrics", None, None, &[]).body;
    let count = |reason: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "tollgate_oauth_token_refused_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.to_owned())
    };
    assert_eq!(count("invalid_client").as_deref(), Some("5"), "{metrics}");
    assert_eq!(count("throttled").as_deref(), Some("4"), "{metrics}");
    let logs = s.logs();
    assert!(logs.contains("client authentication failed") && logs.contains(id));
    assert!(logs.contains("token request throttled"));
    assert!(!logs.contains("tgs_guess") && !logs.contains(secret));
}

/// One address sending more token requests than its share a minute gets 429.
#[test]
fn one_address_gets_its_share_of_token_requests() {
    let s = Server::start_with_env(&[("TOLLGATE_TOKEN_REQUESTS_PER_SOURCE", "20")]);
    clear_of_minute_end();
    let mut statuses = Vec::new();
    for i in 0..25 {
        let form =
            format!("grant_type=client_credentials&client_id=tgc_made_up_{i}&client_secret=x");
        let head = format!(
            "POST /oauth/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            form.len()
        );
        statuses.push(exchange(&s, &head, form.as_bytes()).0);
    }
    assert_eq!(statuses[..20], [401; 20]);
    assert_eq!(statuses[20..], [429; 5]);
    assert_eq!(s.request("GET", "/healthz", None, None, &[]).status, 200);
}

/// The request timeout bounds receiving a request, not doing it: a write that takes longer than
/// the timeout (an apply of 6,000 client versions with contracts and keys, in one transaction)
/// is answered with its result, never a 408 that would hide a committed write.
#[test]
fn a_write_slower_than_the_request_timeout_is_answered_with_its_result() {
    let s = Server::start_with_env(&[("TOLLGATE_REQUEST_TIMEOUT", "1")]);
    let clients: Vec<Value> = (0..6000)
        .map(|i| {
            json!({"id": format!("c{i}"), "versions": [{"version": "1",
                "contracts": [{"api": "acme/orders/1", "plan": "acme/gold/1"}]}]})
        })
        .collect();
    let document = json!({"orgs": [{"id": "acme",
        "plans": [{"id": "gold", "versions": [
            {"version": "1", "limits": [{"requests": 5, "per": "day"}], "locked": true}]}],
        "apis": [{"id": "orders", "versions": [{"version": "1", "status": "published",
            "routing": {"path_prefix": "/orders/v1"}, "plans": ["acme/gold/1"]}]}],
        "clients": clients}]});
    let started = Instant::now();
    let answer = s.post("/v1/apply", document);
    let took = started.elapsed();
    println!(
        "apply of 6,000 client versions: HTTP {} in {took:?}",
        answer.status
    );
    assert!(
        took > Duration::from_secs(1),
        "the apply took {took:?}, not longer than the 1 s timeout: make it larger"
    );
    let report = Server::ok(answer);
    assert!(report["revision"].as_u64().unwrap() >= 1, "{report}");
    Server::ok(s.get("/v1/orgs/acme/clients/c5999/versions/1"));
}

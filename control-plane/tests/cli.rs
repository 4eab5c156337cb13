//! The CLI over the HTTP API: declarative apply/export and the resource commands.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Server;

const CATALOGUE: &str = r#"
orgs:
  - id: acme
    name: Acme Corp
    plans:
      - id: gold
        name: Gold
        versions:
          - version: 1
            limits:
              - { requests: 10000, per: day }
              - { requests: 20, per: second }
            locked: true
      - id: bronze
        versions:
          - version: "1"
            limits: [{ requests: 100, per: day }]
            locked: true
          - version: "2-draft"
            limits: [{ requests: 50, per: day }]
    apis:
      - id: orders
        name: Orders
        versions:
          - version: 1
            status: published
            routing: { path_prefix: /orders/v1 }
            plans: [acme/gold/1, acme/bronze/1]
          - version: 0
            status: retired
            routing: { path_prefix: /orders/v0, hosts: [api.example.com] }
            plans: [acme/bronze/1]
      - id: status
        versions:
          - version: 1
            status: published
            public: true
            routing: { path_prefix: /status }
    clients:
      - id: mobile
        versions:
          - version: 1
            contracts:
              - { api: acme/orders/1, plan: acme/gold/1 }
"#;

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn apply_export_apply_is_a_no_op() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalogue.yaml");
    std::fs::write(&file, CATALOGUE).unwrap();

    let first = stdout(&s.cli(&["apply", "-f", file.to_str().unwrap()]));
    assert!(
        first.contains("published api version acme/orders/1"),
        "{first}"
    );
    assert!(
        first.contains("retired api version acme/orders/0"),
        "{first}"
    );
    assert!(first.contains("API key for acme/mobile/1"), "{first}");
    let snapshot = s.snapshot().json();
    assert_eq!(snapshot["contracts"].as_array().unwrap().len(), 1);
    let revision = s.revision();

    // The same file again changes nothing and prints no key.
    let second = stdout(&s.cli(&["apply", "-f", file.to_str().unwrap()]));
    assert_eq!(second.trim(), format!("no changes (revision {revision})"));
    assert_eq!(s.revision(), revision);

    // Export, then apply the export: still nothing.
    let exported = stdout(&s.cli(&["export"]));
    assert!(exported.contains("acme/gold/1"), "{exported}");
    let export_file = dir.path().join("export.yaml");
    std::fs::write(&export_file, &exported).unwrap();
    let third = stdout(&s.cli(&["apply", "-f", export_file.to_str().unwrap()]));
    assert_eq!(third.trim(), format!("no changes (revision {revision})"));
    assert_eq!(s.revision(), revision);
    // And the export of the re-applied store is the same document.
    assert_eq!(stdout(&s.cli(&["export"])), exported);
}

#[test]
fn apply_is_all_or_nothing() {
    let s = Server::start();
    let revision = s.revision();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    // The plan is a draft, so offering it fails after the org and plan were created.
    std::fs::write(
        &file,
        r#"
orgs:
  - id: acme
    plans:
      - id: gold
        versions:
          - { version: 1, limits: [{ requests: 1, per: day }], locked: false }
    apis:
      - id: orders
        versions:
          - { version: 1, status: published, routing: { path_prefix: /o }, plans: [acme/gold/1] }
"#,
    )
    .unwrap();
    let output = s.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("orgs[acme].apis[orders]"), "{stderr}");
    assert!(stderr.contains("plan-version-not-locked"), "{stderr}");
    assert_eq!(
        s.get("/v1/orgs/acme").status,
        404,
        "a failed apply left the org behind"
    );
    assert_eq!(s.revision(), revision);
}

#[test]
fn apply_reports_yaml_mistakes_with_their_place() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.yaml");
    std::fs::write(&file, "orgs:\n  - id: acme\n    plan: []\n").unwrap();
    let output = s.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field `plan`"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
}

#[test]
fn resource_commands_print_tables_and_json() {
    let s = Server::start();
    stdout(&s.cli(&["org", "create", "acme", "--name", "Acme Corp"]));
    stdout(&s.cli(&["plan", "create", "acme/gold"]));
    stdout(&s.cli(&[
        "plan",
        "version",
        "create",
        "acme/gold/1",
        "--limit",
        "10000/day",
        "--limit",
        "5/second",
    ]));
    stdout(&s.cli(&["plan", "version", "lock", "acme/gold/1"]));
    let table = stdout(&s.cli(&["plan", "version", "list", "acme/gold"]));
    assert!(table.contains("VERSION"), "{table}");
    assert!(table.contains("5/second, 10000/day"), "{table}");
    stdout(&s.cli(&["api", "create", "acme/orders"]));
    stdout(&s.cli(&[
        "api",
        "version",
        "create",
        "acme/orders/1",
        "--path-prefix",
        "/orders/v1",
        "--plan",
        "acme/gold/1",
    ]));
    stdout(&s.cli(&["api", "version", "publish", "acme/orders/1"]));
    stdout(&s.cli(&["client", "create", "acme/mobile"]));
    let created = stdout(&s.cli(&["client", "version", "create", "acme/mobile/1"]));
    let key = created
        .lines()
        .find_map(|l| l.strip_prefix("API key (shown once, store it now): "))
        .unwrap();
    assert!(key.starts_with("tg_"));
    stdout(&s.cli(&[
        "contract",
        "create",
        "acme/mobile/1",
        "--api",
        "acme/orders/1",
        "--plan",
        "acme/gold",
    ]));
    let json = stdout(&s.cli(&["--json", "contract", "list", "acme/mobile/1"]));
    let contracts: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(contracts[0]["plan_version"], "1");

    let refused = s.cli(&[
        "plan",
        "version",
        "update",
        "acme/gold/1",
        "--limit",
        "1/day",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("urn:tollgate:problem:plan-version-locked"),
        "{stderr}"
    );
}

#[test]
fn cli_without_a_token_says_where_it_looked() {
    let output = std::process::Command::new(common::BIN)
        .args(["org", "list", "--data-dir", "/nonexistent-tollgate-dir"])
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TOLLGATE_ADMIN_TOKEN"), "{stderr}");
}

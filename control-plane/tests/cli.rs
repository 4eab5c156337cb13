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

/// Runs the CLI and returns its standard output, failing the test when it fails.
fn run(s: &Server, args: &[&str]) -> String {
    stdout(&s.cli(args))
}

/// Runs the CLI with `--json` and parses what it prints.
fn run_json(s: &Server, args: &[&str]) -> serde_json::Value {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(args);
    serde_json::from_str(&run(s, &with_json)).unwrap()
}

/// Runs the CLI expecting it to fail; returns its standard error.
fn refused(s: &Server, args: &[&str]) -> String {
    let output = s.cli(args);
    assert!(
        !output.status.success(),
        "{args:?} succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn org_plan_api_and_client_verbs_create_list_get_and_rename() {
    let s = Server::start();
    let created = run(&s, &["org", "create", "acme"]);
    assert!(created.contains("acme"), "{created}");
    let renamed = run(&s, &["org", "rename", "acme", "Acme Corp"]);
    assert!(renamed.contains("Acme Corp"), "{renamed}");
    assert_eq!(run_json(&s, &["org", "get", "acme"])["name"], "Acme Corp");
    let orgs = run(&s, &["org", "list"]);
    assert!(orgs.contains("ID") && orgs.contains("Acme Corp"), "{orgs}");

    // Plans, APIs and clients share these verbs, each spelled out so the verb check below
    // finds it.
    let created = [
        run(&s, &["plan", "create", "acme/gold", "--name", "Gold"]),
        run(&s, &["api", "create", "acme/orders", "--name", "Orders"]),
        run(&s, &["client", "create", "acme/mobile", "--name", "Mobile"]),
    ];
    for (text, name) in created.iter().zip(["Gold", "Orders", "Mobile"]) {
        assert!(text.contains(name), "{text}");
    }
    run(&s, &["plan", "rename", "acme/gold", "Gold Plan"]);
    run(&s, &["api", "rename", "acme/orders", "Orders API"]);
    run(&s, &["client", "rename", "acme/mobile", "Mobile App"]);
    assert_eq!(
        run_json(&s, &["plan", "get", "acme/gold"])["name"],
        "Gold Plan"
    );
    assert_eq!(
        run_json(&s, &["api", "get", "acme/orders"])["name"],
        "Orders API"
    );
    assert_eq!(
        run_json(&s, &["client", "get", "acme/mobile"])["name"],
        "Mobile App"
    );
    for (listed, name) in [
        (run(&s, &["plan", "list", "acme"]), "Gold Plan"),
        (run(&s, &["api", "list", "acme"]), "Orders API"),
        (run(&s, &["client", "list", "acme"]), "Mobile App"),
    ] {
        assert!(listed.contains("ORG") && listed.contains(name), "{listed}");
    }
    let missing = refused(&s, &["plan", "get", "acme/none"]);
    assert!(
        missing.contains("urn:tollgate:problem:not-found"),
        "{missing}"
    );
}

#[test]
fn plan_and_api_version_verbs_follow_the_lifecycle() {
    let s = Server::start();
    run(&s, &["org", "create", "acme"]);
    run(&s, &["plan", "create", "acme/gold"]);
    run(
        &s,
        &[
            "plan",
            "version",
            "create",
            "acme/gold/1",
            "--limit",
            "10/day",
        ],
    );
    let updated = run_json(
        &s,
        &[
            "plan",
            "version",
            "update",
            "acme/gold/1",
            "--limit",
            "20/day",
        ],
    );
    assert_eq!(
        updated["limits"],
        serde_json::json!([{"requests": 20, "per": "day"}])
    );
    run(&s, &["plan", "version", "lock", "acme/gold/1"]);
    let copied = run_json(
        &s,
        &[
            "plan",
            "version",
            "create",
            "acme/gold/2",
            "--copy-from",
            "1",
        ],
    );
    assert_eq!(copied["limits"], updated["limits"]);
    assert_eq!(
        run_json(&s, &["plan", "version", "get", "acme/gold/1"])["status"],
        "locked"
    );
    let versions = run(&s, &["plan", "version", "list", "acme/gold"]);
    assert!(
        versions.contains("locked") && versions.contains("draft"),
        "{versions}"
    );

    run(&s, &["api", "create", "acme/orders"]);
    let settings = ["--path-prefix", "/orders/v1", "--plan", "acme/gold/1"];
    let mut create = vec!["api", "version", "create", "acme/orders/1"];
    create.extend_from_slice(&settings);
    run(&s, &create);
    let mut update = vec!["api", "version", "update", "acme/orders/1"];
    update.extend_from_slice(&settings);
    update.extend_from_slice(&["--host", "api.example.com"]);
    let updated = run_json(&s, &update);
    assert_eq!(
        updated["routing"]["hosts"],
        serde_json::json!(["api.example.com"])
    );
    let published = run_json(&s, &["api", "version", "publish", "acme/orders/1"]);
    assert_eq!(published["status"], "published");
    let versions = run(&s, &["api", "version", "list", "acme/orders"]);
    assert!(versions.contains("published"), "{versions}");
    let retired = run_json(&s, &["api", "version", "retire", "acme/orders/1"]);
    assert_eq!(retired["status"], "retired");
    assert_eq!(
        run_json(&s, &["api", "version", "get", "acme/orders/1"])["status"],
        "retired"
    );
}

#[test]
fn client_version_key_and_contract_verbs() {
    let s = Server::start();
    s.seed();
    let created = run(&s, &["client", "version", "create", "acme/mobile/2"]);
    assert!(created.contains("API key (shown once"), "{created}");
    let versions = run(&s, &["client", "version", "list", "acme/mobile"]);
    assert!(versions.contains("current"), "{versions}");

    let rotated = run(
        &s,
        &[
            "client",
            "version",
            "rotate-key",
            "acme/mobile/1",
            "--grace-seconds",
            "60",
        ],
    );
    assert!(
        rotated.contains("new API key for acme/mobile/1"),
        "{rotated}"
    );
    let version = run_json(&s, &["client", "version", "get", "acme/mobile/1"]);
    let keys = version["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{version}");
    let old = keys.iter().find(|k| k["expires_at"].is_number()).unwrap()["id"].to_string();
    let revoked = run(
        &s,
        &[
            "client",
            "version",
            "revoke-key",
            "acme/mobile/1",
            "--key-id",
            &old,
        ],
    );
    assert_eq!(
        revoked.trim(),
        format!("revoked key {old} of acme/mobile/1")
    );

    let contract = run_json(
        &s,
        &[
            "contract",
            "create",
            "acme/mobile/1",
            "--api",
            "acme/orders/1",
            "--plan",
            "acme/gold/1",
        ],
    );
    let id = contract["id"].to_string();
    let shown = run_json(&s, &["contract", "get", "acme/mobile/1", &id]);
    assert_eq!(shown["plan"], "gold");
    let listed = run(&s, &["contract", "list", "acme/mobile/1"]);
    assert!(listed.contains("acme/orders/1"), "{listed}");
    let deleted = run(&s, &["contract", "delete", "acme/mobile/1", &id]);
    assert_eq!(
        deleted.trim(),
        format!("revoked contract {id} of acme/mobile/1")
    );
    assert_eq!(
        run(&s, &["contract", "list", "acme/mobile/1"]).trim(),
        "(none)"
    );
}

/// `--plan org/plan/version` reaches the API as typed: a version the API version does not
/// offer (a draft, a missing one, a locked one it was not published with) is refused with the
/// API's reason and creates nothing, as the same contract in a catalogue file is.
#[test]
fn contract_create_refuses_a_plan_version_the_api_does_not_offer() {
    let s = Server::start();
    s.seed();
    run(
        &s,
        &[
            "plan",
            "version",
            "create",
            "acme/gold/2",
            "--limit",
            "5/day",
        ],
    );
    run(
        &s,
        &[
            "plan",
            "version",
            "create",
            "acme/gold/3",
            "--limit",
            "7/day",
        ],
    );
    run(&s, &["plan", "version", "lock", "acme/gold/3"]);
    let revision = s.revision();
    for (plan, why) in [
        ("acme/gold/2", " (plan version acme/gold/2 is a draft)"),
        ("acme/gold/7", " (plan version acme/gold/7 does not exist)"),
        ("acme/gold/3", ""),
    ] {
        let stderr = refused(
            &s,
            &[
                "contract",
                "create",
                "acme/mobile/1",
                "--api",
                "acme/orders/1",
                "--plan",
                plan,
            ],
        );
        assert_eq!(
            stderr.trim(),
            format!(
                "error: plan_version: api version acme/orders/1 is not offered through plan \
                 version {plan}{why}; it offers acme/gold/1 \
                 (urn:tollgate:problem:plan-not-offered, HTTP 422)"
            )
        );
    }
    assert_eq!(
        run(&s, &["contract", "list", "acme/mobile/1"]).trim(),
        "(none)"
    );
    assert_eq!(
        s.revision(),
        revision,
        "a refused contract changed the catalogue"
    );

    // The version it offers, named or left to the API, is the contract's.
    let named = run_json(
        &s,
        &[
            "contract",
            "create",
            "acme/mobile/1",
            "--api",
            "acme/orders/1",
            "--plan",
            "acme/gold/1",
        ],
    );
    assert_eq!(
        (&named["plan"], &named["plan_version"]),
        (&serde_json::json!("gold"), &serde_json::json!("1"))
    );
    run(&s, &["client", "version", "create", "acme/mobile/2"]);
    let unnamed = run_json(
        &s,
        &[
            "contract",
            "create",
            "acme/mobile/2",
            "--api",
            "acme/orders/1",
            "--plan",
            "acme/gold",
        ],
    );
    assert_eq!(unnamed["plan_version"], "1");

    // The catalogue file refuses the same contract with the same reason, at its entry.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("draft-contract.yaml");
    std::fs::write(
        &file,
        "orgs:\n  - id: acme\n    clients:\n      - id: mobile\n        versions:\n          \
         - version: 3\n            contracts: [{ api: acme/orders/1, plan: acme/gold/2 }]\n",
    )
    .unwrap();
    let stderr = refused(&s, &["apply", "-f", file.to_str().unwrap()]);
    assert!(
        stderr.contains("orgs[acme].clients[mobile].versions[3].contracts[acme/orders/1]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("plan version acme/gold/2 (plan version acme/gold/2 is a draft)"),
        "{stderr}"
    );
}

/// A JWKS file with one Ed25519 public key, as an identity provider serves it.
fn jwks_file(dir: &std::path::Path, seed: u8) -> std::path::PathBuf {
    use base64::Engine;
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
    let path = dir.join(format!("jwks-{seed}.json"));
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x,
                                            "kid": format!("k{seed}"), "alg": "EdDSA"}]});
    std::fs::write(&path, jwks.to_string()).unwrap();
    path
}

const IDP: &str = "https://idp.example.test";

#[test]
fn issuer_and_subject_verbs_trust_an_issuer_and_map_identities() {
    let s = Server::start();
    s.seed();
    let dir = tempfile::tempdir().unwrap();
    let first = jwks_file(dir.path(), 7);
    let second = jwks_file(dir.path(), 8);

    let created = run(
        &s,
        &[
            "issuer",
            "create",
            IDP,
            "--audience",
            "orders",
            "--jwks-file",
            first.to_str().unwrap(),
        ],
    );
    assert_eq!(
        created.trim(),
        format!("gateways now trust tokens of {IDP}")
    );
    let updated = run(
        &s,
        &[
            "issuer",
            "update",
            IDP,
            "--audience",
            "orders",
            "--audience",
            "billing",
            "--jwks-file",
            second.to_str().unwrap(),
            "--max-token-lifetime",
            "600",
        ],
    );
    assert_eq!(updated.trim(), format!("updated issuer {IDP}"));
    let issuer = run_json(&s, &["issuer", "get", IDP]);
    assert_eq!(
        issuer["audiences"],
        serde_json::json!(["orders", "billing"])
    );
    assert_eq!(issuer["jwks"]["keys"][0]["kid"], "k8");
    assert_eq!(issuer["max_token_lifetime_seconds"], 600);
    let listed = run(&s, &["issuer", "list"]);
    assert!(
        listed.contains(IDP) && listed.contains("orders, billing"),
        "{listed}"
    );

    let added = run(
        &s,
        &[
            "client",
            "version",
            "subject",
            "add",
            "acme/mobile/1",
            "--issuer",
            IDP,
            "--value",
            "svc-1",
        ],
    );
    assert!(added.contains("now act as acme/mobile/1"), "{added}");
    let subjects = run(
        &s,
        &["client", "version", "subject", "list", "acme/mobile/1"],
    );
    assert!(subjects.contains("svc-1"), "{subjects}");
    let in_use = refused(&s, &["issuer", "delete", IDP]);
    assert!(
        in_use.contains("urn:tollgate:problem:issuer-in-use"),
        "{in_use}"
    );
    run(
        &s,
        &[
            "client",
            "version",
            "subject",
            "delete",
            "acme/mobile/1",
            "--issuer",
            IDP,
            "--value",
            "svc-1",
        ],
    );
    assert_eq!(
        run(
            &s,
            &["client", "version", "subject", "list", "acme/mobile/1"]
        )
        .trim(),
        "(none)"
    );
    let deleted = run(&s, &["issuer", "delete", IDP]);
    assert_eq!(
        deleted.trim(),
        format!("gateways no longer trust tokens of {IDP}")
    );
    assert!(refused(&s, &["issuer", "get", IDP]).contains("not-found"));
}

#[test]
fn credential_verbs_issue_once_and_revoke() {
    let s = Server::start();
    s.seed();
    let issued = run(&s, &["client", "version", "credentials", "acme/mobile/1"]);
    assert!(issued.contains("client_id:     tgc_"), "{issued}");
    assert!(issued.contains("client_secret: tgs_"), "{issued}");
    let again = run(
        &s,
        &[
            "client",
            "version",
            "credentials",
            "acme/mobile/1",
            "--grace-seconds",
            "60",
        ],
    );
    assert!(
        again.contains("earlier credentials keep working until"),
        "{again}"
    );
    let revoked = run(
        &s,
        &["client", "version", "revoke-credentials", "acme/mobile/1"],
    );
    assert_eq!(
        revoked.trim(),
        "revoked the client credentials of acme/mobile/1"
    );
    let none = refused(
        &s,
        &["client", "version", "revoke-credentials", "acme/mobile/1"],
    );
    assert!(none.contains("not-found"), "{none}");
}

#[test]
fn token_key_verbs_list_and_rotate() {
    let s = Server::start();
    let before = run_json(&s, &["token-key", "list"]);
    assert_eq!(before.as_array().unwrap().len(), 1, "{before}");
    let rotated = run(&s, &["token-key", "rotate"]);
    let kid = rotated
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("new signing key "))
        .unwrap()
        .to_owned();
    let after = run(&s, &["token-key", "list"]);
    assert!(after.contains(&kid), "{after}");
    assert!(
        after.contains(before[0]["kid"].as_str().unwrap()),
        "{after}"
    );
}

#[test]
fn service_account_verbs_create_list_get_and_delete() {
    let s = Server::start();
    let created = run(
        &s,
        &[
            "service-account",
            "create",
            "ci",
            "--scope",
            "tollgate:read",
        ],
    );
    assert!(created.contains("client_id:     tga_"), "{created}");
    assert!(created.contains("client_secret: tgs_"), "{created}");
    let bad = refused(
        &s,
        &[
            "service-account",
            "create",
            "root",
            "--scope",
            "tollgate:root",
        ],
    );
    assert!(bad.contains("unknown scope"), "{bad}");
    let listed = run(&s, &["service-account", "list"]);
    assert!(
        listed.contains("ci") && listed.contains("tollgate:read"),
        "{listed}"
    );
    let account = run_json(&s, &["service-account", "get", "ci"]);
    assert_eq!(account["scopes"], serde_json::json!(["tollgate:read"]));
    assert!(!account.to_string().contains("secret"), "{account}");
    let deleted = run(&s, &["service-account", "delete", "ci"]);
    assert_eq!(deleted.trim(), "deleted service account ci");
    assert_eq!(run(&s, &["service-account", "list"]).trim(), "(none)");
}

#[test]
fn apply_and_export_carry_issuers_subjects_and_service_accounts() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let jwks = std::fs::read_to_string(jwks_file(dir.path(), 7)).unwrap();
    // JSON is YAML: the JWKS goes in as the identity provider serves it.
    let document = format!(
        "{CATALOGUE}\
issuers:
  - issuer: {IDP}
    audiences: [orders]
    jwks: {jwks}
service_accounts:
  - id: ci
    scopes: [tollgate:read]
"
    )
    .replace(
        "              - { api: acme/orders/1, plan: acme/gold/1 }\n",
        &format!(
            "              - {{ api: acme/orders/1, plan: acme/gold/1 }}\n            \
             subjects:\n              - {{ issuer: \"{IDP}\", value: svc-mobile }}\n"
        ),
    );
    let file = dir.path().join("catalogue.yaml");
    std::fs::write(&file, &document).unwrap();
    let first = run(&s, &["apply", "-f", file.to_str().unwrap()]);
    assert!(first.contains(&format!("created issuer {IDP}")), "{first}");
    assert!(
        first.contains(&format!(
            "added subject svc-mobile@{IDP} to client version acme/mobile/1"
        )),
        "{first}"
    );
    assert!(
        first.contains("client credentials for service account ci (the secret is shown once"),
        "{first}"
    );
    assert!(first.contains("client_secret: tgs_"), "{first}");
    let revision = s.revision();

    let exported = run(&s, &["export"]);
    assert!(exported.contains("issuers:"), "{exported}");
    assert!(exported.contains("subjects:"), "{exported}");
    assert!(exported.contains("service_accounts:"), "{exported}");
    assert!(!exported.contains("secret"), "{exported}");
    let export_file = dir.path().join("export.yaml");
    std::fs::write(&export_file, &exported).unwrap();
    let again = run(&s, &["apply", "-f", export_file.to_str().unwrap()]);
    assert_eq!(again.trim(), format!("no changes (revision {revision})"));

    // An empty store rebuilt from the export exports the same document.
    let target = Server::start();
    run(&target, &["apply", "-f", export_file.to_str().unwrap()]);
    assert_eq!(run(&target, &["export"]), exported);
}

#[test]
fn snapshot_public_key_and_envoy_config_read_the_data_directory() {
    let s = Server::start();
    let key = run(&s, &["snapshot-public-key"]);
    let key = key.trim();
    assert!(!key.is_empty());
    let bootstrap = run(
        &s,
        &[
            "envoy-config",
            "--wasm",
            "target/tollgate.wasm",
            "--listen",
            "127.0.0.1:10000",
            "--upstream",
            "127.0.0.1:8080",
        ],
    );
    assert!(bootstrap.contains(key), "{bootstrap}");
    assert!(bootstrap.contains("127.0.0.1:8080"), "{bootstrap}");
    assert!(
        !bootstrap.contains(&s.gateway_token),
        "no secret in the bootstrap"
    );
}

/// Every leaf of `tollgate --help` (walked recursively) is run by some test in this file, so a
/// new verb without a test fails here. `serve` is what common::Server runs for every test.
#[test]
fn every_cli_verb_is_exercised_by_a_test_here() {
    fn help(path: &[String]) -> String {
        let output = std::process::Command::new(common::BIN)
            .args(path)
            .arg("--help")
            .output()
            .unwrap();
        assert!(output.status.success(), "{path:?} --help");
        String::from_utf8(output.stdout).unwrap()
    }
    fn leaves(path: Vec<String>, found: &mut Vec<Vec<String>>) {
        let text = help(&path);
        let subcommands: Vec<String> = text
            .lines()
            .skip_while(|l| *l != "Commands:")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .map(str::to_owned)
            .collect();
        for c in &subcommands {
            let mut sub = path.clone();
            sub.push(c.clone());
            leaves(sub, found);
        }
        if subcommands.is_empty() {
            found.push(path);
        }
    }
    let mut verbs = Vec::new();
    leaves(Vec::new(), &mut verbs);
    assert!(verbs.len() > 50, "{verbs:?}");
    let source: String = include_str!("cli.rs")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    // A verb counts when its words open an argument list, as in `&["issuer", "create", …]`.
    let untested: Vec<String> = verbs
        .iter()
        .filter(|v| v.as_slice() != ["serve"])
        .filter(|v| {
            let words: Vec<String> = v.iter().map(|w| format!("{w:?}")).collect();
            !source.contains(&format!("[{}", words.join(",")))
        })
        .map(|v| v.join(" "))
        .collect();
    assert!(
        untested.is_empty(),
        "CLI verbs no test here runs: {untested:?}"
    );
}

/// Every subcommand and every argument of `tollgate` (the tree `--help` shows, walked from the
/// root) says what it is, so `--help` is enough to use a verb.
#[test]
fn every_subcommand_and_argument_has_a_description() {
    use clap::CommandFactory;
    fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let empty = |text: Option<&clap::builder::StyledStr>| {
            text.is_none_or(|t| t.to_string().trim().is_empty())
        };
        for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
            if empty(arg.get_help()) {
                let name = arg
                    .get_long()
                    .map(|l| format!("--{l}"))
                    .unwrap_or_else(|| format!("<{}>", arg.get_id()));
                missing.push(format!("{path} {name}"));
            }
        }
        // clap's `help` has a description and mirrors the tree below it.
        let subcommands = command.get_subcommands();
        for sub in subcommands.filter(|c| !c.is_hide_set() && c.get_name() != "help") {
            let sub_path = format!("{path} {}", sub.get_name());
            if empty(sub.get_about()) {
                missing.push(sub_path.clone());
            }
            walk(sub, &sub_path, missing);
        }
    }
    let mut command = tollgate_control_plane::cli::Cli::command();
    command.build();
    let mut missing = Vec::new();
    walk(&command, "tollgate", &mut missing);
    assert!(
        missing.is_empty(),
        "without a description in --help:\n{}",
        missing.join("\n")
    );
}

/// `serve --help` lists what changes the server, not the flags of the client commands.
#[test]
fn serve_help_lists_only_what_serve_uses() {
    let output = std::process::Command::new(common::BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = stdout(&output);
    for serves in ["--listen", "--data-dir", "--database", "--redis"] {
        assert!(help.contains(serves), "{serves} missing from:\n{help}");
    }
    for client_only in ["--server", "TOLLGATE_SERVER", "--json"] {
        assert!(!help.contains(client_only), "{client_only} in:\n{help}");
    }
    let refused = std::process::Command::new(common::BIN)
        .args(["serve", "--json"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "serve --json was accepted");
}

/// Runs `tollgate envoy-config` for a gateway on 127.0.0.1:10000 with `extra` arguments and
/// environment; needs no server (the public key is given).
fn envoy_config(env: &[(&str, &str)], extra: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(common::BIN);
    command
        .env_remove("TOLLGATE_SERVER")
        .env_remove("TOLLGATE_DATA_DIR")
        .env_remove("TOLLGATE_SNAPSHOT_SIGNING_KEY")
        .envs(env.iter().copied())
        .args(extra.iter().take_while(|a| **a != "envoy-config"))
        .args([
            "envoy-config",
            "--wasm",
            "target/tollgate.wasm",
            "--listen",
            "127.0.0.1:10000",
            "--upstream",
            "127.0.0.1:8080",
            "--snapshot-public-key",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ])
        .args(extra.iter().skip_while(|a| **a != "envoy-config").skip(1));
    command.output().unwrap()
}

/// The control-plane cluster's endpoints (`host:port`) and the authority the gateway sends it,
/// which the poller's and the filter's configurations and the health check must agree on.
fn control_plane_of(bootstrap: &str) -> (Vec<String>, String) {
    let b: serde_json::Value = yaml_serde::from_str(bootstrap).unwrap();
    let cluster = b["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tollgate_control_plane")
        .unwrap();
    let endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let a = &e["endpoint"]["address"]["socket_address"];
            format!("{}:{}", a["address"].as_str().unwrap(), a["port_value"])
        })
        .collect();
    let mut authorities: Vec<&str> = bootstrap
        .split(r#""authority":""#)
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert_eq!(
        authorities.len(),
        2,
        "the poller's and the filter's: {bootstrap}"
    );
    authorities.push(
        cluster["health_checks"][0]["http_health_check"]["host"]
            .as_str()
            .unwrap(),
    );
    authorities.dedup();
    assert_eq!(authorities.len(), 1, "{authorities:?}");
    (endpoints, authorities[0].to_owned())
}

/// One rule: `--control-plane` names the gateway's control planes; without it, the control
/// plane the CLI talks to (`--server`, else TOLLGATE_SERVER, else the default).
#[test]
fn envoy_config_without_control_plane_points_at_the_cli_server() {
    let cp =
        |env: &[(&str, &str)], extra: &[&str]| control_plane_of(&stdout(&envoy_config(env, extra)));
    let only_env = [("TOLLGATE_SERVER", "http://cp.example:7443")];
    assert_eq!(
        cp(&only_env, &[]),
        (
            vec!["cp.example:7443".to_owned()],
            "cp.example:7443".to_owned()
        ),
        "only TOLLGATE_SERVER set"
    );
    let ours = (vec!["cp-b:7100".to_owned()], "cp-b:7100".to_owned());
    assert_eq!(
        cp(&only_env, &["--server", "http://cp-b:7100", "envoy-config"]),
        ours
    );
    assert_eq!(
        cp(&only_env, &["envoy-config", "--server", "http://cp-b:7100"]),
        ours
    );
    assert_eq!(
        cp(
            &only_env,
            &["envoy-config", "--control-plane", "http://cp-b:7100"]
        ),
        ours
    );
    assert_eq!(
        cp(&[], &[]),
        (
            vec!["127.0.0.1:7100".to_owned()],
            "127.0.0.1:7100".to_owned()
        ),
        "nothing set"
    );
    let both = envoy_config(
        &[],
        &[
            "envoy-config",
            "--server",
            "http://a:7100",
            "--control-plane",
            "http://b:7100",
        ],
    );
    assert!(
        !both.status.success(),
        "--server beside --control-plane was accepted"
    );
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(stderr.contains("--control-plane"), "{stderr}");
    let before = envoy_config(
        &only_env,
        &[
            "--server",
            "http://a:7100",
            "envoy-config",
            "--control-plane",
            "http://b:7100",
        ],
    );
    let stderr = String::from_utf8_lossy(&before.stderr);
    assert!(
        !before.status.success() && stderr.contains("--control-plane"),
        "{stderr}"
    );
    let wrong = envoy_config(&[("TOLLGATE_SERVER", "https://cp.example")], &[]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && stderr.contains("TOLLGATE_SERVER"),
        "{stderr}"
    );
}

/// `--server` and `--json` mean the same before and after a client command's name; after it
/// they win.
#[test]
fn client_flags_work_before_and_after_the_command() {
    let s = Server::start();
    run(&s, &["org", "create", "acme"]);
    let after: serde_json::Value =
        serde_json::from_str(&run(&s, &["org", "list", "--json"])).unwrap();
    assert_eq!(after[0]["id"], "acme", "{after}");
    let nowhere = "http://127.0.0.1:9";
    let listed = run(
        &s,
        &["--server", nowhere, "org", "list", "--server", &s.base],
    );
    assert!(listed.contains("acme"), "{listed}");
    let refused = refused(&s, &["org", "list", "--server", nowhere]);
    assert!(refused.contains("127.0.0.1:9"), "{refused}");
}

//! Every acknowledged write survives `kill -9`, and a data directory has one server at a time,
//! whose lock dies with it.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Server;
use std::time::Duration;

use serde_json::json;

#[test]
fn acknowledged_writes_survive_kill_9_and_restart() {
    let s = Server::start();
    let key = s.seed();
    let contract = Server::ok(s.post(
        "/v1/orgs/acme/clients/mobile/versions/1/contracts",
        json!({"api": "orders", "api_version": "1", "plan": "gold"}),
    ));
    // Many small acknowledged writes right before the kill.
    for i in 0..20 {
        Server::ok(s.post("/v1/orgs", json!({"id": format!("org-{i}")})));
    }
    let before = s.snapshot();
    let admin_token = s.admin_token.clone();

    let s = s.kill9_and_restart();
    assert_eq!(
        s.admin_token, admin_token,
        "secrets are kept in the data dir"
    );
    let after = s.snapshot();
    assert_eq!(after.body, before.body);
    assert_eq!(after.header("etag"), before.header("etag"));
    // Each answer is signed when sent (its own issue time): what must hold is that the kept
    // signing key still signs it, so gateways that trusted it before accept it after.
    s.verify_snapshot(&after)
        .expect("the restarted control plane signs with the kept key");
    assert!(after
        .body
        .contains(&tollgate_core::keys::key_hash_hex(&key)));
    for i in 0..20 {
        Server::ok(s.get(&format!("/v1/orgs/org-{i}")));
    }
    let contracts = Server::ok(s.get("/v1/orgs/acme/clients/mobile/versions/1/contracts"));
    assert_eq!(contracts["items"][0]["id"], contract["id"]);
    // Contract ids stay unique across restarts too.
    Server::ok(s.delete(&format!(
        "/v1/orgs/acme/clients/mobile/versions/1/contracts/{}",
        contract["id"]
    )));
    let next = Server::ok(s.post(
        "/v1/orgs/acme/clients/mobile/versions/1/contracts",
        json!({"api": "orders", "api_version": "1", "plan": "gold"}),
    ));
    assert!(next["id"].as_u64() > contract["id"].as_u64());
}

#[test]
fn secrets_from_the_environment_win_over_files() {
    if !common::on_sqlite("on PostgreSQL every secret comes from the environment, none from files")
    {
        return;
    }
    let s = Server::start_with_env(&[
        ("TOLLGATE_ADMIN_TOKEN", "admin-from-env-0123456789"),
        ("TOLLGATE_GATEWAY_TOKEN", "gateway-from-env-0123456789"),
    ]);
    let answer = s.request(
        "GET",
        "/v1/orgs",
        Some("admin-from-env-0123456789"),
        None,
        &[],
    );
    assert_eq!(answer.status, 200);
    let answer = s.request(
        "GET",
        "/v1/snapshot",
        Some("gateway-from-env-0123456789"),
        None,
        &[],
    );
    assert_eq!(answer.status, 200);
    assert!(!s.data_dir.join("admin-token").exists());
    // The snapshot signing key was not given: generated with mode 0600.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.data_dir.join("snapshot-signing-key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn second_server_on_a_data_dir_refuses_to_start_naming_the_holder() {
    let s = Server::start();
    s.seed();
    let refused = s.second_serve_on_same_data_dir(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "error: data directory {dir} is in use by another `tollgate serve` (process {pid}, \
             holding {dir}/serve.lock); stop it, or give this server its own --data-dir",
            dir = s.data_dir.display(),
            pid = s.pid()
        )
    );
    assert!(
        !String::from_utf8_lossy(&refused.stdout).contains("generated"),
        "the refused server wrote into the directory"
    );

    // The first keeps serving: a write that gateways see moves its revision.
    let revision = s.revision();
    Server::ok(s.post(
        "/v1/orgs/acme/clients/mobile/versions",
        json!({"version": "after-refusal"}),
    ));
    assert_eq!(s.revision(), revision + 1);

    // SIGKILL leaves the lock file behind but not the lock: a new server starts on the
    // directory, and holds it in turn.
    let s = s.kill9_and_restart();
    Server::ok(s.get("/v1/orgs/acme/clients/mobile/versions/after-refusal"));
    let lock = std::fs::read_to_string(s.data_dir.join("serve.lock")).unwrap();
    assert_eq!(lock.trim(), s.pid().to_string());
    let again = s.second_serve_on_same_data_dir(Duration::from_secs(60));
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&format!("(process {}, ", s.pid())),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

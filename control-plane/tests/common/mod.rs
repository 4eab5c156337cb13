//! A real `tollgate serve` process on a loopback port with its own temporary data directory,
//! and a small HTTP client for it. The process is killed when the handle drops.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

pub mod postgres_server;
pub mod redis_server;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
/// The `iss` of the test servers' tokens (`TOLLGATE_ISSUER`).
pub const TEST_ISSUER: &str = "http://tollgate.test";

/// With `TOLLGATE_TEST_BACKEND=postgres` every test server keeps its catalogue in PostgreSQL
/// (a database of its own on the test binary's shared private cluster, the same one each time
/// the server restarts on `data_dir`); otherwise in SQLite in `data_dir`, as by default.
/// The secrets a server on PostgreSQL must be given in its environment.
pub const SECRETS_KEY_ENV: &str = "TOLLGATE_SECRETS_KEY";
const REPLICA_SECRETS: [&str; 4] = [
    "TOLLGATE_ADMIN_TOKEN",
    "TOLLGATE_GATEWAY_TOKEN",
    "TOLLGATE_SNAPSHOT_SIGNING_KEY",
    SECRETS_KEY_ENV,
];

/// The value of `var` for the server of `data_dir` on PostgreSQL: random on first use, kept
/// beside (not in) the data directory so a restart is given the same.
fn replica_secret(data_dir: &Path, var: &str) -> String {
    let dir = data_dir.with_extension("secrets");
    let path = dir.join(var);
    if let Ok(value) = std::fs::read_to_string(&path) {
        return value;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).unwrap();
    use base64::Engine;
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    std::fs::write(&path, &value).unwrap();
    value
}

pub fn backend_database(data_dir: &Path) -> Option<String> {
    if !on_postgres() {
        return None;
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let name: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("t_{name}");
    let cluster = postgres_server::shared();
    let mut client = postgres_server::connect(cluster.port).unwrap();
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .unwrap()
        .is_some();
    Some(if exists {
        cluster.url(&name)
    } else {
        cluster.create_database(&name)
    })
}

/// Whether the test servers keep their catalogue in SQLite; on PostgreSQL a test of SQLite's
/// own files says it does not apply and why.
pub fn on_sqlite(why: &str) -> bool {
    if on_postgres() {
        println!("not on PostgreSQL: {why}");
    }
    !on_postgres()
}

fn on_postgres() -> bool {
    std::env::var("TOLLGATE_TEST_BACKEND").as_deref() == Ok("postgres")
}

/// The database name the server on `data_dir` uses on PostgreSQL.
pub fn backend_database_name(data_dir: &Path) -> Option<String> {
    backend_database(data_dir).map(|url| url.rsplit('/').next().unwrap().to_owned())
}

pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub admin_token: String,
    pub gateway_token: String,
    /// The public key of the server's snapshot signing key, as gateways trust it.
    pub snapshot_keys: tollgate_core::signing::TrustedKeys,
    agent: ureq::Agent,
    // Dropped last: the directory outlives the process.
    _dir: Option<TempDir>,
}

pub struct Answer {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// The problem `type` of an error answer, checking it is problem+json.
    pub fn problem_type(&self) -> String {
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{}",
            self.body
        );
        self.json()["type"].as_str().unwrap().to_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into()
}

impl Server {
    /// A snapshot answer as a gateway checks it: signature of a trusted key, issued within
    /// the default maximum age, compiled.
    pub fn verify_snapshot(
        &self,
        answer: &Answer,
    ) -> Result<
        (
            tollgate_core::snapshot::Snapshot,
            tollgate_core::index::Compiled,
        ),
        tollgate_core::distribution::SnapshotRejected,
    > {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        tollgate_core::distribution::verify_snapshot(
            &self.snapshot_keys,
            u64::from(tollgate_core::config::DEFAULT_MAX_SNAPSHOT_AGE_SECONDS),
            now,
            answer.body.as_bytes(),
            answer
                .header(tollgate_core::signing::SIGNATURE_HEADER)
                .as_deref(),
        )
    }

    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Server::spawn(data_dir, Some(dir), &[])
    }

    pub fn start_with_env(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Server::spawn(data_dir, Some(dir), env)
    }

    /// A server whose process may open at most `open_files` descriptors (a lowered limit,
    /// set by the shell before it becomes the server).
    pub fn start_with_open_file_limit(open_files: u32, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Server::spawn_with(
            data_dir,
            Some(dir),
            env,
            Some(&format!("ulimit -n {open_files}")),
        )
    }

    /// A server started under `umask` (e.g. `000`, the most permissive).
    pub fn start_with_umask(umask: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Server::spawn_with(data_dir, Some(dir), &[], Some(&format!("umask {umask}")))
    }

    /// Starts a server on `data_dir`, waiting until it says where it listens.
    fn spawn(data_dir: PathBuf, dir: Option<TempDir>, env: &[(&str, &str)]) -> Server {
        Server::spawn_with(data_dir, dir, env, None)
    }

    fn spawn_with(
        data_dir: PathBuf,
        dir: Option<TempDir>,
        env: &[(&str, &str)],
        shell_prelude: Option<&str>,
    ) -> Server {
        std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
        let log_path = data_dir.with_extension(format!("log.{}", now_nanos()));
        let log = File::create(&log_path).unwrap();
        // A prelude runs in a shell that then becomes the server.
        let mut command = match shell_prelude {
            None => Command::new(BIN),
            Some(prelude) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("{prelude} && exec \"$0\" \"$@\""), BIN]);
                c
            }
        };
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .env_remove("TOLLGATE_ADMIN_TOKEN")
            .env_remove("TOLLGATE_GATEWAY_TOKEN")
            .env_remove("TOLLGATE_SNAPSHOT_SIGNING_KEY")
            .env_remove("TOLLGATE_LISTEN")
            .env_remove("TOLLGATE_DATA_DIR")
            // A fixed issuer: the listen port changes across restarts, the issuer must not.
            .env("TOLLGATE_ISSUER", TEST_ISSUER)
            .env_remove("TOLLGATE_TOKEN_LIFETIME")
            .env_remove("TOLLGATE_REDIS_URL")
            .env_remove("TOLLGATE_FLEET_FALLBACK")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        command.env_remove(SECRETS_KEY_ENV);
        match backend_database(&data_dir) {
            Some(url) => {
                command.env("TOLLGATE_DATABASE_URL", url);
                // A replica on PostgreSQL takes every secret from its environment.
                for var in REPLICA_SECRETS {
                    command.env(var, replica_secret(&data_dir, var));
                }
            }
            None => {
                command.env_remove("TOLLGATE_DATABASE_URL");
            }
        };
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(url) = line.strip_prefix("tollgate control plane listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not start; log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        // A secret given in the environment is not written to the data directory.
        let read = |name: &str| {
            let var = match name {
                "admin-token" => "TOLLGATE_ADMIN_TOKEN",
                "gateway-token" => "TOLLGATE_GATEWAY_TOKEN",
                _ => "TOLLGATE_SNAPSHOT_SIGNING_KEY",
            };
            match env.iter().find(|(k, _)| *k == var) {
                Some((_, v)) => (*v).to_owned(),
                None if on_postgres() => replica_secret(&data_dir, var),
                None => std::fs::read_to_string(data_dir.join(name)).unwrap_or_default(),
            }
        };
        Server {
            child,
            base,
            admin_token: read("admin-token"),
            gateway_token: read("gateway-token"),
            snapshot_keys: tollgate_core::signing::TrustedKeys::parse(&[
                tollgate_core::signing::SnapshotSigningKey::from_base64(&read(
                    "snapshot-signing-key",
                ))
                .expect("the server wrote its signing key")
                .public_key(),
            ])
            .unwrap(),
            data_dir,
            log_path,
            agent: agent(),
            _dir: dir,
        }
    }

    /// SIGKILL, no shutdown of any kind, then a new process on the same data directory.
    pub fn kill9_and_restart(mut self) -> Server {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = self._dir.take();
        let data_dir = self.data_dir.clone();
        drop(self);
        Server::spawn(data_dir, dir, &[])
    }

    /// SIGKILL, then a new process on the same data directory with `env` set (`--redis` and
    /// the like through their variables).
    pub fn kill9_and_restart_with_env(mut self, env: &[(&str, &str)]) -> Server {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = self._dir.take();
        let data_dir = self.data_dir.clone();
        drop(self);
        Server::spawn(data_dir, dir, env)
    }

    /// SIGKILL, then `change` on the stopped data directory, then a new process on it.
    pub fn kill9_change_and_restart(mut self, change: impl FnOnce(&Path)) -> Server {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = self._dir.take();
        let data_dir = self.data_dir.clone();
        drop(self);
        change(&data_dir);
        Server::spawn(data_dir, dir, &[])
    }

    /// Sends SIGTERM (a graceful stop) to this server's process.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Whether the process exited within `deadline`, and how.
    pub fn exited_within(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs another `tollgate serve` on this server's data directory and returns how it ended
    /// and its standard error; fails the test when it is still running after `deadline`.
    pub fn second_serve_on_same_data_dir(&self, deadline: Duration) -> std::process::Output {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .env_remove("TOLLGATE_ADMIN_TOKEN")
            .env_remove("TOLLGATE_GATEWAY_TOKEN")
            .env_remove("TOLLGATE_SNAPSHOT_SIGNING_KEY")
            .env_remove("TOLLGATE_DATA_DIR")
            .env("TOLLGATE_ISSUER", TEST_ISSUER)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let end = Instant::now() + deadline;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= end {
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                panic!(
                    "a second serve on {} kept running; stdout:\n{}",
                    self.data_dir.display(),
                    String::from_utf8_lossy(&output.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait_with_output().unwrap()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let response = match body {
            Some(body) => {
                let request = builder
                    .header("content-type", "application/json")
                    .body(body.to_owned())
                    .unwrap();
                self.agent.run(request)
            }
            None => self.agent.run(builder.body(()).unwrap()),
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// POSTs only headers announcing a body of `length` bytes and reads the answer: a server
    /// that refuses the size answers before any body is sent, so the test does not race the
    /// server closing the connection mid-upload. Returns the status and the body.
    pub fn post_announcing(&self, path: &str, length: usize) -> (u16, String) {
        use std::io::{Read, Write};
        let address = self.base.trim_start_matches("http://");
        let stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            &stream,
            "POST {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {length}\r\n\r\n",
            self.admin_token
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let status = status_line[9..12].parse().unwrap();
        let mut body_length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    body_length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0u8; body_length];
        reader.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    }

    pub fn get(&self, path: &str) -> Answer {
        self.request("GET", path, Some(&self.admin_token), None, &[])
    }

    pub fn post(&self, path: &str, body: Value) -> Answer {
        self.request(
            "POST",
            path,
            Some(&self.admin_token),
            Some(&body.to_string()),
            &[],
        )
    }

    /// POST without a body (lifecycle actions).
    pub fn act(&self, path: &str) -> Answer {
        self.request("POST", path, Some(&self.admin_token), None, &[])
    }

    pub fn put(&self, path: &str, body: Value) -> Answer {
        self.request(
            "PUT",
            path,
            Some(&self.admin_token),
            Some(&body.to_string()),
            &[],
        )
    }

    pub fn delete(&self, path: &str) -> Answer {
        self.request("DELETE", path, Some(&self.admin_token), None, &[])
    }

    pub fn snapshot(&self) -> Answer {
        self.request("GET", "/v1/snapshot", Some(&self.gateway_token), None, &[])
    }

    pub fn revision(&self) -> u64 {
        let answer = self.snapshot();
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["revision"].as_u64().unwrap()
    }

    /// Asserts a 2xx and returns the JSON body.
    pub fn ok(answer: Answer) -> Value {
        assert!(
            (200..300).contains(&answer.status),
            "HTTP {}: {}",
            answer.status,
            answer.body
        );
        if answer.body.is_empty() {
            Value::Null
        } else {
            answer.json()
        }
    }

    /// org `acme`, locked plan `acme/gold/1` (100/day), published private API `acme/orders/1`
    /// on /orders/v1 offering it, client version `acme/mobile/1`. Returns its API key.
    pub fn seed(&self) -> String {
        Server::ok(self.post("/v1/orgs", json!({"id": "acme", "name": "Acme"})));
        Server::ok(self.post("/v1/orgs/acme/plans", json!({"id": "gold"})));
        Server::ok(self.post(
            "/v1/orgs/acme/plans/gold/versions",
            json!({"version": "1", "limits": [{"requests": 100, "per": "day"}]}),
        ));
        Server::ok(self.act("/v1/orgs/acme/plans/gold/versions/1/lock"));
        Server::ok(self.post("/v1/orgs/acme/apis", json!({"id": "orders"})));
        Server::ok(self.post(
            "/v1/orgs/acme/apis/orders/versions",
            json!({"version": "1", "routing": {"path_prefix": "/orders/v1"},
                   "plans": [{"plan": "gold", "version": "1"}]}),
        ));
        Server::ok(self.act("/v1/orgs/acme/apis/orders/versions/1/publish"));
        Server::ok(self.post("/v1/orgs/acme/clients", json!({"id": "mobile"})));
        let created = Server::ok(self.post(
            "/v1/orgs/acme/clients/mobile/versions",
            json!({"version": "1"}),
        ));
        created["api_key"].as_str().unwrap().to_owned()
    }

    /// Runs the CLI against this server with its admin token from the data directory (on
    /// PostgreSQL, where no secret is in the data directory, the admin token and the snapshot
    /// signing key from the environment, as an operator of replicas runs it).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("TOLLGATE_SERVER", &self.base)
            .env("TOLLGATE_DATA_DIR", &self.data_dir)
            .env_remove("TOLLGATE_ADMIN_TOKEN");
        if on_postgres() {
            command.env("TOLLGATE_ADMIN_TOKEN", &self.admin_token).env(
                "TOLLGATE_SNAPSHOT_SIGNING_KEY",
                replica_secret(&self.data_dir, "TOLLGATE_SNAPSHOT_SIGNING_KEY"),
            );
        }
        command.stdin(Stdio::null()).output().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Polls `condition` until it holds or `deadline` passes.
pub fn wait_until(deadline: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if condition() {
            return;
        }
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting for {what}");
}

pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    match std::fs::read(path) {
        Ok(bytes) => bytes.windows(needle.len()).any(|w| w == needle),
        Err(_) => false,
    }
}

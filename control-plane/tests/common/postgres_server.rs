//! A real PostgreSQL cluster of its own (Debian's postgresql package, version 15, installed by
//! scripts/setup.sh): `initdb` in a temporary directory, `postgres` on a free loopback port,
//! durability off (a test's data need not survive a crash of the machine). Killed when the
//! handle drops; a test process that dies without dropping it takes the server with it
//! (`setpriv --pdeathsig KILL`).
//!
//! PostgreSQL refuses to run as root: a test process running as root runs `initdb` and
//! `postgres` as `nobody`, in a directory it hands to `nobody` first.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where Debian's postgresql-NN packages put the server binaries.
const SERVER_DIRS: &str = "/usr/lib/postgresql";
/// The cluster's superuser; every connection is trusted (loopback only).
pub const USER: &str = "tollgate";
const START_DEADLINE: Duration = Duration::from_secs(30);

pub struct PostgresServer {
    child: Option<Child>,
    pub port: u16,
    bin: PathBuf,
    // Dropped last: the directory outlives the process.
    dir: TempDir,
}

/// A cluster shared by the tests of one test binary (each test creates its own database in
/// it), started on first use. It is never dropped: its process dies with the test process,
/// through the parent-death signal. Linux sends that signal when the *thread* that started
/// the process ends, so the server is started from a thread that lives as long as the process.
/// Its directory outlives the process too; the next test process to start a shared cluster
/// deletes those of processes that are gone.
pub fn shared() -> &'static PostgresServer {
    static SHARED: OnceLock<PostgresServer> = OnceLock::new();
    SHARED.get_or_init(|| {
        let parent = std::env::temp_dir().join(format!("tollgate-postgres-{}", effective_uid()));
        std::fs::create_dir_all(&parent).unwrap();
        remove_clusters_of_ended_processes(&parent);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(PostgresServer::start_in(&parent));
            loop {
                std::thread::park();
            }
        });
        rx.recv()
            .expect("the shared PostgreSQL cluster failed to start (see the panic above)")
    })
}

impl PostgresServer {
    pub fn start() -> PostgresServer {
        PostgresServer::start_in(&std::env::temp_dir())
    }

    /// A cluster in a new directory in `parent`, named after this process (`<pid>-…`).
    fn start_in(parent: &Path) -> PostgresServer {
        let bin = server_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .tempdir_in(parent)
            .unwrap();
        let data = dir.path().join("data");
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of {} failed", dir.path().display());
        }
        let initdb = as_server_user(&bin.join("initdb"), false)
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-A", "trust", "--no-sync", "-E", "UTF8"])
            // The environment's locale may not exist here; C sorts bytes, as SQLite does.
            .arg("--locale=C")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "initdb failed ({}):\n{}{}",
            initdb.status,
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut server = PostgresServer {
            child: None,
            port: 0,
            bin,
            dir,
        };
        // A port the kernel just handed out and took back; another process taking it in
        // between makes postgres exit, and the next port is tried.
        for _ in 0..5 {
            let port = free_port();
            if server.spawn_on(port, Duration::from_secs(10)) {
                return server;
            }
        }
        panic!(
            "postgres did not start on a loopback port; log:\n{}",
            server.log()
        );
    }

    /// A connection string for the `postgres` crate, to database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates an empty database `name` (lowercase letters, digits, `_`) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "database name {name:?}: lowercase letters, digits and _ only"
        );
        let mut client = connect(self.port).unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        self.url(name)
    }

    /// A fast shutdown (SIGINT: sessions are ended, the data is checkpointed), waited for.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().unwrap().is_none() {
                let status = Command::new("kill")
                    .args(["-INT", &child.id().to_string()])
                    .status()
                    .unwrap();
                assert!(status.success());
            }
            child.wait().unwrap();
        }
    }

    /// Starts the server again on the same port and data, after [`stop`](Self::stop) or
    /// [`kill`](Self::kill) (stopping it first if it runs).
    pub fn restart(&mut self) {
        self.stop();
        // After a kill, the old server's sessions may hold its shared memory for a moment:
        // postgres refuses to start until they are gone, so starting is tried until it works.
        let end = Instant::now() + START_DEADLINE;
        while Instant::now() < end {
            if self.spawn_on(self.port, end.saturating_duration_since(Instant::now())) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "postgres did not start again on port {}; log:\n{}",
            self.port,
            self.log()
        );
    }

    /// SIGKILL: the server is gone at once, its port refuses connections, nothing is
    /// checkpointed (a restart recovers from the write-ahead log).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().unwrap();
        }
    }

    /// Database `db` as `pg_dump` writes it: every row, as text.
    pub fn dump(&self, db: &str) -> String {
        let out = std::process::Command::new(self.bin.join("pg_dump"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                db,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_dump {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// What the server wrote to its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Starts `postgres` on `port` and waits up to `deadline` for it to accept connections;
    /// false when it exited or did not answer in time (it is then stopped).
    fn spawn_on(&mut self, port: u16, deadline: Duration) -> bool {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut child = as_server_user(&self.bin.join("postgres"), true)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(self.dir.path())
            // Nothing waits for the disk. Commits still wait for their write to the kernel
            // (synchronous_commit stays on, cheap without fsync), so a killed server keeps
            // every commit it acknowledged, as a real one does.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if connect(port).is_ok() {
                self.port = port;
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A connection to the cluster's `postgres` database as its superuser.
pub fn connect(port: u16) -> Result<postgres::Client, postgres::Error> {
    postgres::Client::connect(
        &format!("host=127.0.0.1 port={port} user={USER} dbname=postgres connect_timeout=2"),
        postgres::NoTls,
    )
}

/// The newest `/usr/lib/postgresql/NN/bin` with the server binaries.
fn server_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(SERVER_DIRS)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server in {SERVER_DIRS}/*/bin: these tests run a real PostgreSQL; \
             install Debian's postgresql package (scripts/setup.sh does: apt-get install -y \
             postgresql)"
        ),
    }
}

/// `/proc/self` belongs to the process's effective user.
fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn running_as_root() -> bool {
    effective_uid() == 0
}

/// Deletes the shared clusters' directories in `parent` whose process (`<pid>-…`) is gone.
fn remove_clusters_of_ended_processes(parent: &Path) {
    for entry in std::fs::read_dir(parent).unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A command running `program` as a user PostgreSQL accepts: `nobody` when this process is
/// root, else this process's user. `die_with_parent`: SIGKILL when the thread that started it
/// ends (`setpriv` sets that after changing the user, which would clear it).
fn as_server_user(program: &Path, die_with_parent: bool) -> Command {
    let root = running_as_root();
    if !root && !die_with_parent {
        return Command::new(program);
    }
    let mut command = Command::new("setpriv");
    if root {
        command.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
    }
    if die_with_parent {
        command.args(["--pdeathsig", "KILL"]);
    }
    command.arg(program);
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

//! A real `redis-server` (Debian's package, installed by scripts/setup.sh) on a free loopback
//! port, in its own temporary directory, persisting nothing. Killed when the handle drops.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    _dir: TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        assert!(
            std::path::Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: these tests run a real Redis; install Debian's \
             redis-server package (scripts/setup.sh does: apt-get install -y redis-server)"
        );
        let dir = tempfile::tempdir().unwrap();
        // A port the kernel just handed out and took back; another process taking it in
        // between makes redis-server exit, and the next port is tried.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(REDIS_SERVER)
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if ping(port) {
                    return RedisServer {
                        child: Some(child),
                        port,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start on a loopback port");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: Redis is gone, its port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// One command through the `redis` crate, its reply written as Redis writes it: a bulk
    /// string as its text, an integer as `:42`, nothing as `$-1`.
    pub fn command(&self, args: &[&str]) -> String {
        let mut conn = connect(self.port).unwrap();
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        match cmd.query::<redis::Value>(&mut conn).unwrap() {
            redis::Value::BulkString(bytes) => String::from_utf8(bytes).unwrap(),
            redis::Value::Int(n) => format!(":{n}"),
            redis::Value::Nil => "$-1".into(),
            redis::Value::Okay => "+OK".into(),
            redis::Value::SimpleString(s) => format!("+{s}"),
            other => format!("{other:?}"),
        }
    }
}

fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(conn)
}

fn ping(port: u16) -> bool {
    connect(port)
        .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
        .is_ok_and(|pong| pong == "PONG")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

//! One `tollgate serve` per data directory. Two servers on one directory each keep their own
//! view of the catalogue and of the token signing keys, so the first stops seeing the
//! second's changes and its JWKS goes stale: the second must refuse to start.
//!
//! The guard is an advisory lock (`flock`) on a file in the directory, held for the process's
//! life. The kernel drops it when the process ends, however it ends (SIGKILL, a crash), so a
//! stale file never blocks a restart; the holder's pid written into the file is only there to
//! say who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Error;

/// The lock file, in the data directory.
pub const LOCK_FILE: &str = "serve.lock";

/// How long a refused server waits for the holder to write its pid (it locks first, then
/// writes).
const PID_WAIT: Duration = Duration::from_secs(1);

/// The lock on a data directory; released when dropped or when the process ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock without waiting and writes this process's pid into the lock file; fails
    /// naming the directory and the holder's pid when another process holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, Error> {
        let path = data_dir.join(LOCK_FILE);
        let io = |what: &str, e: std::io::Error| {
            Error::Internal(format!("{what} {}: {e}", path.display()))
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io("opening", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = match holder_pid(&path) {
                    Some(pid) => format!("process {pid}"),
                    None => format!("a process that has not written its pid to {LOCK_FILE}"),
                };
                return Err(Error::conflict(
                    "data-dir-in-use",
                    format!(
                        "data directory {} is in use by another `tollgate serve` ({holder}, \
                         holding {}); stop it, or give this server its own --data-dir",
                        data_dir.display(),
                        path.display()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(io("locking", e)),
        }
        file.set_len(0)
            .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(|e| io("writing", e))?;
        Ok(DataDirLock { _file: file })
    }
}

/// The pid in the lock file, waiting briefly for a holder that has locked but not yet written.
fn holder_pid(path: &Path) -> Option<u32> {
    let deadline = Instant::now() + PID_WAIT;
    loop {
        let mut text = String::new();
        let read = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
        if let Ok(pid) = text.trim().parse() {
            return Some(pid);
        }
        if read.is_err() || Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

//! The catalogue in a SQLite file: opening, migrations, and what SQLite needs of its files.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{Migrations, M};

use super::{buckets, BUSY_TIMEOUT};
use crate::error::Error;

/// Statements each connection keeps prepared: every query of the store, with room.
const STATEMENT_CACHE: usize = 256;

pub(super) fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("schema.sql")),
        M::up(include_str!("schema_tokens.sql")),
        M::up(include_str!("schema_token_lifetime.sql")),
        M::up(include_str!("schema_buckets.sql")),
        M::up(include_str!("schema_fleet.sql")),
        M::up(include_str!("schema_sealed_keys.sql")),
    ])
}

/// The write connection, after migrating the file to the latest schema.
pub(super) fn open(path: &Path) -> Result<Connection, Error> {
    private_database_files(path)?;
    let mut conn = Connection::open(path)
        .map_err(|e| Error::Internal(format!("opening {}: {e}", path.display())))?;
    // WAL lets reads proceed during a write; synchronous=FULL fsyncs the WAL on every commit,
    // so an acknowledged write survives kill -9 and power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    buckets::register_functions(&conn)?;
    migrations()
        .to_latest(&mut conn)
        .map_err(|e| Error::Internal(format!("migrating {}: {e}", path.display())))?;
    Ok(conn)
}

/// A read connection: read-write at the OS level (WAL readers update the -shm index), refused
/// any change by query_only. foreign_keys only matters to writes.
pub(super) fn open_reader(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Internal(format!("opening {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "query_only", "ON")?;
    Ok(conn)
}

/// Whatever the WAL holds (a first build writes every bucket; a process that did not close its
/// connections leaves its frames) is copied into the database, before any reader holds it
/// back: otherwise the first write's commit pays for it.
pub(super) fn checkpoint(conn: &Connection) -> Result<(), Error> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// The database holds every key hash and credential digest: it is created 0600 whatever the
/// umask, and an existing one (or its -wal/-shm) readable by others is made 0600. SQLite creates
/// -wal and -shm with the database file's mode.
fn private_database_files(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |p: &Path, e: std::io::Error| Error::Internal(format!("{}: {e}", p.display()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(path, e))?;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::metadata(&file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| fail(&file, e))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(&file, e)),
        }
    }
    Ok(())
}

//! The catalogue in PostgreSQL (`serve --database postgres://…`): what several replicas share.
//!
//! Every replica runs the same store as on SQLite; what differs is here. Migrations run at
//! start under an advisory lock, so replicas starting together migrate one at a time, and a
//! replica refuses a schema newer than it knows. Every write transaction first locks the one
//! revision row: writes from all replicas commit one at a time, and revisions are numbered in
//! commit order (a sequence would not be: its values become visible out of order).

use super::db::{Db, PgConn};
use crate::error::Error;

/// How a write transaction begins: the revision row locked before anything is read, so the
/// whole write sees every earlier write of every replica (READ COMMITTED takes a new view for
/// each statement, all of them after the lock).
pub(super) const BEGIN_WRITE: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; \
     SELECT revision FROM gateway_revision WHERE id = 1 FOR UPDATE";

/// A read transaction: one view of the committed state for all its queries.
pub(super) const BEGIN_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// The catalogue schema, in order; the database records how many it has applied.
const MIGRATIONS: &[&str] = &[
    include_str!("postgres_schema.sql"),
    include_str!("postgres_schema_sealed_keys.sql"),
];

/// The advisory lock migrations hold ("tollgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465;

/// The channel a committed revision is announced on (`pg_notify`, delivered at commit).
pub const REVISION_CHANNEL: &str = "tollgate_revision";

/// `user@host:port/dbname`, for logs (never the password).
pub fn describe(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
            postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// Parses a `postgres://` URL (or `key=value` connection string), with a connect timeout
/// when it sets none, so that a server that is down fails a request instead of hanging it.
pub fn parse(url: &str) -> Result<postgres::Config, Error> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| Error::invalid_field("--database", format!("not a PostgreSQL URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    config.keepalives(true);
    Ok(config)
}

/// The write connection, after migrating the database to the latest schema.
pub(super) fn open(config: &postgres::Config) -> Result<PgConn, Error> {
    let conn = PgConn::new(config.clone());
    conn.batch(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .map_err(|e| Error::Storage(format!("connecting to {}: {e}", describe(config))))?;
    let migrated = migrate(&conn);
    let unlocked = conn.batch(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"));
    migrated?;
    unlocked?;
    Ok(conn)
}

fn migrate(conn: &PgConn) -> Result<(), Error> {
    conn.batch(
        "CREATE TABLE IF NOT EXISTS tollgate_schema (
             id      BIGINT PRIMARY KEY CHECK (id = 1),
             version BIGINT NOT NULL
         )",
    )?;
    let applied: i64 = Db::Postgres(conn)
        .query_opt(
            "SELECT version FROM tollgate_schema WHERE id = 1",
            [],
            |r| r.get(0),
        )?
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i64;
    if applied > known {
        return Err(Error::Internal(format!(
            "the catalogue database has schema version {applied}, newer than this tollgate \
             knows (version {known}): run the tollgate that migrated it, or a newer one"
        )));
    }
    for (done, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let version = done as i64 + 1;
        conn.transaction("BEGIN", |db| {
            db.execute_batch(sql)?;
            db.execute(
                "INSERT INTO tollgate_schema (id, version) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                [version],
            )?;
            Ok(())
        })?;
        tracing::info!(version, "catalogue schema migrated");
    }
    Ok(())
}

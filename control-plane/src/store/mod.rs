//! The catalogue in SQLite, and the signed snapshot that follows it.
//!
//! Every write runs in one immediate transaction. Operations that change what gateways see call
//! [`Tx::gateway_changed`]; the store then bumps the revision, renders and signs the new
//! snapshot inside that same transaction, commits, and only then publishes the snapshot to
//! long-polling gateways. So a revision always names exactly one snapshot (one page, or a few
//! for a catalogue with very many keys), and reads or no-op writes never move it.
//!
//! Writes share one connection behind a lock; reads ([`Store::read`]) each take one of a few
//! read-only connections ([`ReadPool`]) and run in their own read transaction, so in WAL mode a
//! read sees the last committed state and never waits for a write in progress, however long it
//! renders. Code inside a write reads through its [`Tx`], and so sees its own changes.

pub mod apis;
pub mod clients;
pub mod contracts;
pub mod issuers;
pub mod orgs;
pub mod plans;
mod snapshot;
pub mod tokens;

use std::collections::{HashMap, VecDeque};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};
use rusqlite_migration::{Migrations, M};
use tokio::sync::watch;
use tollgate_core::distribution::compile;
use tollgate_core::signing::{body_digest, BodyDigest, SnapshotSigningKey};
use tollgate_core::snapshot::Snapshot;

use crate::error::Error;
use crate::model::{Page, PageQuery, Timestamp};

pub const DATABASE_FILE: &str = "tollgate.db";

/// One page of a snapshot as served. Its digest is taken once, at commit; each answer is signed
/// over it with that answer's issue time ([`Store::sign`]).
#[derive(Debug)]
pub struct SignedPage {
    pub body: Bytes,
    pub digest: BodyDigest,
}

impl SignedPage {
    fn new(body: Vec<u8>) -> Self {
        SignedPage {
            digest: body_digest(&body),
            body: Bytes::from(body),
        }
    }
}

/// A revision's snapshot, rendered, paginated and hashed once at commit.
#[derive(Debug)]
pub struct SignedSnapshot {
    pub revision: u64,
    /// One page unless the catalogue holds more keys than a page carries.
    pub pages: Vec<SignedPage>,
    /// What each key-directory bucket held at this revision, to compute deltas from it.
    digests: snapshot::BucketDigests,
}

impl SignedSnapshot {
    pub fn bytes(&self) -> usize {
        self.pages.iter().map(|p| p.body.len()).sum()
    }
}

/// How many past revisions stay servable, so a gateway fetching a paged revision can finish
/// it while newer revisions commit.
const RETAINED_REVISIONS: usize = 8;

/// Roughly 250 bytes of JSON per key with its client and contracts: about 5 MB pages, well
/// under the 32 MiB Envoy accepts in a callout response.
pub const DEFAULT_PAGE_KEYS: usize = 20_000;

/// Read connections: enough for the management API's concurrent GETs and token checks on a
/// small machine; a read beyond them waits for the first one returned, never for a write.
const READ_CONNECTIONS: usize = 4;

/// How long SQLite retries a locked database before answering busy (a checkpoint, or another
/// process such as a backup holding a lock).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `/healthz` fails when storage has not answered for this long: the once-a-second expiry check
/// in `serve` reads it, so silence this long means reads hang.
pub const STORAGE_SILENCE_LIMIT_SECONDS: Timestamp = 30;

/// A fixed set of read-only connections handed out one at a time: the lock guards only the
/// hand-over (a `Vec` push or pop), never a query. Chosen over a pool crate because the set is
/// opened once, after migrations, and never grows, shrinks or re-opens a connection; what such
/// a crate adds (health checks, lazy opening, timeouts) is not needed here, and it would tie
/// the rusqlite version to the adapter's.
struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    returned: Condvar,
}

/// A checked-out read connection, handed back when dropped (also on a panic's unwind).
struct Reader<'p> {
    pool: &'p ReadPool,
    conn: Option<Connection>,
}

impl ReadPool {
    fn open(path: &Path, size: usize) -> Result<ReadPool, Error> {
        let conns = (0..size)
            .map(|_| {
                // Read-write at the OS level (WAL readers update the -shm index), refused any
                // change by query_only. foreign_keys only matters to writes.
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| Error::Internal(format!("opening {}: {e}", path.display())))?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn.pragma_update(None, "query_only", "ON")?;
                Ok(conn)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(ReadPool {
            idle: Mutex::new(conns),
            returned: Condvar::new(),
        })
    }

    fn get(&self) -> Reader<'_> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = idle.pop() {
                return Reader {
                    pool: self,
                    conn: Some(conn),
                };
            }
            idle = self.returned.wait(idle).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            self.pool.returned.notify_one();
        }
    }
}

/// What `/healthz` answers from, kept in memory as storage answers reads and writes.
#[derive(Default)]
struct StorageHealth {
    /// When a read or write last got an answer from SQLite (unix seconds).
    answered_at: AtomicI64,
    /// The latest failure of reads, cleared by the next read that gets an answer.
    read_failure: Mutex<Option<String>>,
    /// The latest failure of writes, cleared by the next write that commits (the expiry check
    /// in `serve` tries an empty one each second while this is set, see [`Store::probe_write`]).
    write_failure: Mutex<Option<String>>,
}

impl StorageHealth {
    fn record_read<T>(&self, outcome: &Result<T, Error>) {
        self.record(&self.read_failure, outcome, true);
    }

    /// Only a commit says writes work again: a refused write (404, 409…) may have failed
    /// before it wrote anything.
    fn record_write<T>(&self, outcome: &Result<T, Error>) {
        self.record(&self.write_failure, outcome, false);
    }

    fn record<T>(
        &self,
        failure: &Mutex<Option<String>>,
        outcome: &Result<T, Error>,
        refusal_clears: bool,
    ) {
        let mut failure = failure.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Err(e) if e.is_storage_failure() => *failure = Some(e.to_string()),
            Err(_) => {
                // Storage answered, with a refusal.
                self.answered_at.store(unix_now(), Ordering::Relaxed);
                if refusal_clears {
                    *failure = None;
                }
            }
            Ok(_) => {
                self.answered_at.store(unix_now(), Ordering::Relaxed);
                *failure = None;
            }
        }
    }
}

/// Why storage is not healthy, for `/healthz`'s 500.
pub type StorageFailure = String;

pub struct Store {
    conn: Mutex<Connection>,
    readers: ReadPool,
    health: StorageHealth,
    signing_key: SnapshotSigningKey,
    page_keys: usize,
    published: watch::Sender<Arc<SignedSnapshot>>,
    /// The latest revisions, newest last, for `?cursor=` and `?since=` requests.
    retained: Mutex<VecDeque<Arc<SignedSnapshot>>>,
    /// The latest revision's catalogue, from which deltas are cut.
    latest: Mutex<Arc<Snapshot>>,
    /// Deltas to the latest revision, by the revision they start from.
    deltas: Mutex<HashMap<u64, (u64, Arc<SignedPage>)>>,
}

/// A write in progress. Dereferences to the connection so read helpers work inside writes.
pub struct Tx<'c> {
    tx: Transaction<'c>,
    /// The time of this write, the same for all its steps.
    pub now: Timestamp,
    gateway_change: bool,
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

impl Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.tx
    }
}

impl Tx<'_> {
    /// Marks this write as changing the snapshot: the revision moves when it commits.
    pub fn gateway_changed(&mut self) {
        self.gateway_change = true;
    }
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("schema.sql")),
        M::up(include_str!("schema_tokens.sql")),
        M::up(include_str!("schema_token_lifetime.sql")),
    ])
}

pub fn unix_now() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as Timestamp)
        .unwrap_or(0)
}

impl Store {
    /// Opens (and migrates) the catalogue. `prepare` runs first in its own transaction, to
    /// bring configuration-derived content (the own token issuer) in line; a change it makes
    /// moves the revision, except when it fills a brand-new catalogue that no gateway saw.
    pub fn open(
        path: &Path,
        signing_key: SnapshotSigningKey,
        page_keys: usize,
        prepare: impl FnOnce(&mut Tx<'_>) -> Result<(), Error>,
    ) -> Result<Arc<Store>, Error> {
        private_database_files(path)?;
        let mut conn = Connection::open(path)
            .map_err(|e| Error::Internal(format!("opening {}: {e}", path.display())))?;
        // WAL lets reads proceed during a write; synchronous=FULL fsyncs the WAL on every commit,
        // so an acknowledged write survives kill -9 and power loss.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| Error::Internal(format!("migrating {}: {e}", path.display())))?;
        {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut tx = Tx {
                tx,
                now: unix_now(),
                gateway_change: false,
            };
            let fresh = current_revision(&tx)? == 1 && tokens::own_issuer(&tx)?.is_none();
            prepare(&mut tx)?;
            if tx.gateway_change && !fresh {
                tx.execute(
                    "UPDATE gateway_revision SET revision = revision + 1 WHERE id = 1",
                    [],
                )?;
            }
            tx.tx.commit()?;
        }
        let revision = current_revision(&conn)?;
        let (first, full) = match sign_snapshot(&conn, revision, page_keys) {
            Ok(signed) => signed,
            // Serve it anyway: gateways keep their last good snapshot, and the operator can
            // repair the catalogue through the API.
            Err(Error::Conflict { detail, .. }) => {
                tracing::error!(revision, %detail, "the stored catalogue renders a snapshot gateways refuse");
                sign_unchecked(&conn, revision, page_keys)?
            }
            Err(e) => return Err(e),
        };
        let first = Arc::new(first);
        let (published, _) = watch::channel(Arc::clone(&first));
        // After migrations: the read connections see the schema as it will stay.
        let readers = ReadPool::open(path, READ_CONNECTIONS)?;
        let health = StorageHealth::default();
        health.answered_at.store(unix_now(), Ordering::Relaxed);
        Ok(Arc::new(Store {
            conn: Mutex::new(conn),
            readers,
            health,
            signing_key,
            page_keys,
            published,
            retained: Mutex::new(VecDeque::from([first])),
            latest: Mutex::new(Arc::new(full)),
            deltas: Mutex::new(HashMap::new()),
        }))
    }

    /// The latest revision's whole catalogue, as gateways assemble it.
    pub fn catalogue(&self) -> Arc<Snapshot> {
        Arc::clone(&self.latest.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The `x-tollgate-signature` of an answer carrying `page`, issued now.
    pub fn sign(&self, page: &SignedPage) -> String {
        self.signing_key
            .sign(unix_now().max(0) as u64, &page.digest)
    }

    /// The public key gateways verify snapshots with.
    pub fn public_key(&self) -> String {
        self.signing_key.public_key()
    }

    /// The latest committed snapshot.
    pub fn snapshot(&self) -> Arc<SignedSnapshot> {
        self.published.borrow().clone()
    }

    /// One page taking a gateway that holds revision `since` to `current`: only the
    /// key-directory buckets that changed in between. `None` when `since` is not a retained
    /// older revision, or the change is larger than a page; the gateway then gets the full
    /// revision instead. Cut once per starting revision and reused by every gateway.
    pub fn delta(&self, since: u64, current: &SignedSnapshot) -> Option<Arc<SignedPage>> {
        if since >= current.revision {
            return None;
        }
        let old = self.retained(since)?;
        let full = Arc::clone(&self.latest.lock().unwrap_or_else(|p| p.into_inner()));
        if full.revision != current.revision {
            return None;
        }
        {
            let deltas = self.deltas.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((to, page)) = deltas.get(&since) {
                if *to == current.revision {
                    return Some(Arc::clone(page));
                }
            }
        }
        let changed = snapshot::changed_buckets(&old.digests, &current.digests);
        if snapshot::keys_in(&full, &changed) > self.page_keys {
            return None;
        }
        let mut delta = snapshot::page_of(&full, &changed);
        // Signed with the body: a gateway applies it over exactly this revision.
        delta.base_revision = Some(since);
        let body = serde_json::to_vec(&delta).ok()?;
        if let Err(rejected) = compile(&body) {
            tracing::error!(since, revision = current.revision, %rejected, "delta refused by core; serving the full revision");
            return None;
        }
        let page = Arc::new(SignedPage::new(body));
        let mut deltas = self.deltas.lock().unwrap_or_else(|p| p.into_inner());
        deltas.retain(|_, (to, _)| *to == current.revision);
        deltas.insert(since, (current.revision, Arc::clone(&page)));
        Some(page)
    }

    /// A recent revision's snapshot, if still retained.
    pub fn retained(&self, revision: u64) -> Option<Arc<SignedSnapshot>> {
        let retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        retained.iter().find(|s| s.revision == revision).cloned()
    }

    /// Wakes on every newly committed revision.
    pub fn subscribe(&self) -> watch::Receiver<Arc<SignedSnapshot>> {
        self.published.subscribe()
    }

    /// The one write connection.
    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic inside a closure rolled its transaction back on unwind; the connection is fine.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on a read connection, in one read transaction (all its queries see the same
    /// committed state), without waiting for a write in progress.
    pub async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let outcome = store.read_blocking(f);
            store.health.record_read(&outcome);
            outcome
        })
        .await
        .map_err(|e| Error::Internal(format!("read task: {e}")))?
    }

    fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut reader = self.readers.get();
        let conn = reader
            .conn
            .as_mut()
            .ok_or_else(|| Error::Internal("read connection already returned".into()))?;
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        // Nothing to keep: ending the read transaction releases its view of the WAL.
        tx.finish()?;
        Ok(out)
    }

    /// Whether storage answers, from memory: never waits for storage or for a write. `Ok` with
    /// when storage last answered; `Err` with the latest failure of reads or writes, or when
    /// storage has not answered for [`STORAGE_SILENCE_LIMIT_SECONDS`].
    pub fn health(&self) -> Result<Timestamp, StorageFailure> {
        for failure in [&self.health.read_failure, &self.health.write_failure] {
            if let Some(failure) = &*failure.lock().unwrap_or_else(|p| p.into_inner()) {
                return Err(failure.clone());
            }
        }
        let answered_at = self.health.answered_at.load(Ordering::Relaxed);
        let silent = unix_now() - answered_at;
        if silent > STORAGE_SILENCE_LIMIT_SECONDS {
            return Err(format!("storage has not answered for {silent} s"));
        }
        Ok(answered_at)
    }

    /// Whether the latest write failed on storage (and no write committed since).
    pub fn writes_failing(&self) -> bool {
        self.health
            .write_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// An empty write (rewrites the revision row with its own value: a WAL frame and an fsync,
    /// no revision change), to learn whether writes work again after one failed.
    pub async fn probe_write(self: &Arc<Self>) -> Result<(), Error> {
        self.write(|tx| {
            tx.execute(
                "UPDATE gateway_revision SET revision = revision WHERE id = 1",
                [],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn write<T, F>(self: &Arc<Self>, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, Error> + Send + 'static,
    {
        Ok(self.write_at_revision(f).await?.0)
    }

    /// Like [`Store::write`], also answering the snapshot revision this write left in force
    /// (unchanged when it did not affect gateways).
    pub async fn write_at_revision<T, F>(self: &Arc<Self>, f: F) -> Result<(T, u64), Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, Error> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let outcome = store.write_blocking(f);
            store.health.record_write(&outcome);
            outcome
        })
        .await
        .map_err(|e| Error::Internal(format!("write task: {e}")))?
    }

    fn write_blocking<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Error>,
    ) -> Result<(T, u64), Error> {
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut tx = Tx {
            tx,
            now: unix_now(),
            gateway_change: false,
        };
        // On error `tx` drops here and rolls back: nothing half-written.
        let out = f(&mut tx)?;
        if !tx.gateway_change {
            let revision = current_revision(&tx)?;
            tx.tx.commit()?;
            return Ok((out, revision));
        }
        // Rotated-out keys past their grace ride along with this change: the snapshot changes
        // anyway, and gateways already ignore them by `expires_at`.
        tx.execute(
            "DELETE FROM api_keys WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            [tx.now],
        )?;
        let revision: i64 = tx.query_row(
            "UPDATE gateway_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision",
            [],
            |row| row.get(0),
        )?;
        let revision = revision as u64;
        let (signed, full) = sign_snapshot(&tx, revision, self.page_keys)?;
        let signed = Arc::new(signed);
        tx.tx.commit()?;
        // The replaced catalogue and revisions are freed after their locks are released:
        // freeing a large catalogue takes a while, and token checks take `latest`.
        let _replaced = std::mem::replace(
            &mut *self.latest.lock().unwrap_or_else(|p| p.into_inner()),
            Arc::new(full),
        );
        let mut _dropped = Vec::new();
        {
            let mut retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
            retained.push_back(Arc::clone(&signed));
            while retained.len() > RETAINED_REVISIONS {
                _dropped.extend(retained.pop_front());
            }
        }
        self.published.send_replace(signed);
        tracing::info!(revision, "snapshot revision committed");
        Ok((out, revision))
    }
}

fn current_revision(conn: &Connection) -> Result<u64, Error> {
    let revision: i64 = conn.query_row(
        "SELECT revision FROM gateway_revision WHERE id = 1",
        [],
        |row| row.get(0),
    )?;
    Ok(revision as u64)
}

/// Renders, paginates and hashes a revision, then runs each page through the gateways' own
/// acceptance check (`core`'s `compile`, what `verify_snapshot` runs after the signature): a
/// change whose snapshot gateways would refuse, and so keep enforcing the previous one, is
/// refused here instead (409).
fn sign_snapshot(
    conn: &Connection,
    revision: u64,
    page_keys: usize,
) -> Result<(SignedSnapshot, Snapshot), Error> {
    let started = std::time::Instant::now();
    let (signed, full) = sign_unchecked(conn, revision, page_keys)?;
    let rendered = started.elapsed();
    for page in &signed.pages {
        if let Err(rejected) = compile(&page.body) {
            return Err(Error::conflict(
                "gateway-would-reject",
                format!("gateways would refuse the resulting snapshot: {rejected}"),
            ));
        }
    }
    // Both grow with the catalogue (every gateway-visible write re-renders it): worth watching.
    tracing::debug!(
        revision,
        pages = signed.pages.len(),
        bytes = signed.bytes(),
        render_ms = rendered.as_millis() as u64,
        verify_ms = (started.elapsed() - rendered).as_millis() as u64,
        "snapshot rendered"
    );
    Ok((signed, full))
}

fn sign_unchecked(
    conn: &Connection,
    revision: u64,
    page_keys: usize,
) -> Result<(SignedSnapshot, Snapshot), Error> {
    let full = snapshot::render(conn, revision)?;
    let mut pages = snapshot::paginate(&full, page_keys);
    let count = pages.len();
    for (i, page) in pages.iter_mut().enumerate() {
        page.next = (i + 1 < count).then(|| page_cursor(revision, i + 1));
    }
    let pages = pages
        .iter()
        .map(|page| {
            let body = serde_json::to_vec(page)
                .map_err(|e| Error::Internal(format!("encoding snapshot: {e}")))?;
            Ok(SignedPage::new(body))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let digests = snapshot::bucket_digests(&full);
    Ok((
        SignedSnapshot {
            revision,
            pages,
            digests,
        },
        full,
    ))
}

/// `<revision>.<page>`: pins the revision, so a gateway assembles pages of one revision only.
pub fn page_cursor(revision: u64, page: usize) -> String {
    format!("{revision}.{page}")
}

pub fn parse_page_cursor(cursor: &str) -> Option<(u64, usize)> {
    let (revision, page) = cursor.split_once('.')?;
    Some((revision.parse().ok()?, page.parse().ok()?))
}

/// A validated page request: keyset pagination on each list's sort key.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub limit: usize,
    /// The sort key of the last item of the previous page.
    pub after: Option<String>,
}

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 500;

impl PageRequest {
    pub fn from_query(query: &PageQuery) -> Result<Self, Error> {
        let limit = query.limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(Error::invalid_field(
                "limit",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        let after = match &query.cursor {
            None => None,
            Some(cursor) => Some(
                URL_SAFE_NO_PAD
                    .decode(cursor)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| Error::invalid_field("cursor", "not a cursor from this API"))?,
            ),
        };
        Ok(PageRequest {
            limit: limit as usize,
            after,
        })
    }

    /// Everything, for exports and internal walks.
    pub fn all() -> Self {
        PageRequest {
            limit: usize::MAX - 1,
            after: None,
        }
    }

    /// For lists sorted by an integer sequence.
    pub fn after_seq(&self) -> Result<i64, Error> {
        match &self.after {
            None => Ok(0),
            Some(s) => s
                .parse()
                .map_err(|_| Error::invalid_field("cursor", "not a cursor from this list")),
        }
    }

    /// The SQL LIMIT: one more than the page, to know whether another page follows.
    pub fn sql_limit(&self) -> i64 {
        i64::try_from(self.limit + 1).unwrap_or(i64::MAX)
    }

    /// Cuts the extra row and derives the cursor from the last item's sort key.
    pub fn page<T>(&self, mut rows: Vec<(String, T)>) -> Page<T> {
        let next_cursor = if rows.len() > self.limit {
            rows.truncate(self.limit);
            rows.last().map(|(key, _)| URL_SAFE_NO_PAD.encode(key))
        } else {
            None
        };
        Page {
            items: rows.into_iter().map(|(_, item)| item).collect(),
            next_cursor,
        }
    }
}

/// Maps "no row" to a 404 naming the thing looked for.
pub fn required<T>(found: Option<T>, what: impl FnOnce() -> String) -> Result<T, Error> {
    found.ok_or_else(|| Error::NotFound(what()))
}

/// `query_row` that answers `None` for no row.
pub fn query_opt<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, Error> {
    Ok(conn.query_row(sql, params, f).optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    fn storage_failure() -> Result<(), Error> {
        Err(Error::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        )))
    }

    fn store(dir: &Path) -> Arc<Store> {
        Store::open(
            &dir.join(DATABASE_FILE),
            SnapshotSigningKey::from_base64(&URL_SAFE_NO_PAD.encode([7u8; 32])).unwrap(),
            DEFAULT_PAGE_KEYS,
            |_| Ok(()),
        )
        .unwrap()
    }

    #[test]
    fn a_failed_write_is_unhealthy_until_a_write_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        assert!(store.health().is_ok());
        store.health.record_write(&storage_failure());
        assert!(store.health().unwrap_err().contains("full"));
        // A refusal or a read that answers says nothing about writes.
        store
            .health
            .record_write(&Err::<(), _>(Error::NotFound("x".into())));
        store.health.record_read(&Ok(()));
        assert!(store.writes_failing() && store.health().is_err());
        store.health.record_write(&Ok(()));
        assert!(store.health().is_ok());
    }

    #[test]
    fn a_failed_read_is_unhealthy_until_a_read_answers() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.health.record_read(&storage_failure());
        assert!(store.health().is_err());
        store
            .health
            .record_read(&Err::<(), _>(Error::NotFound("x".into())));
        assert!(store.health().is_ok());
    }

    #[test]
    fn read_connections_refuse_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let refused = store.read_blocking(|conn| {
            conn.execute("UPDATE gateway_revision SET revision = 99", [])?;
            Ok(())
        });
        assert!(refused.is_err());
        assert_eq!(store.read_blocking(current_revision).unwrap(), 1);
    }
}

//! The catalogue in SQLite, and the signed snapshot that follows it.
//!
//! Every write runs in one immediate transaction. Operations that change what gateways see call
//! [`Tx::gateway_changed`] (and triggers note every key-directory bucket a write touched, so no
//! call site can forget one); the store then bumps the revision, re-renders just the touched
//! buckets and the small shell (plans, API versions, issuers), stores them, cuts the delta a
//! gateway one revision behind needs and checks it with core — all inside that same transaction
//! — commits, and only then publishes the revision to long-polling gateways. A write costs what
//! it changes, not what the catalogue holds (`buckets`). Full pages and older deltas are
//! assembled on demand from the stored buckets as of the revision asked for.
//!
//! Writes share one connection behind a lock; reads ([`Store::read`]) each take one of a few
//! read-only connections ([`ReadPool`]) and run in their own read transaction, so in WAL mode a
//! read sees the last committed state and never waits for a write in progress. Code inside a
//! write reads through its [`Tx`], and so sees its own changes.

pub mod apis;
mod buckets;
pub mod clients;
pub mod contracts;
pub mod db;
pub mod fleet;
pub mod issuers;
pub mod orgs;
pub mod plans;
mod postgres;
mod snapshot;
mod sqlite;
pub mod tokens;

use std::collections::BTreeSet;
use std::collections::{HashMap, VecDeque};
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use tokio::sync::watch;
use tollgate_core::distribution::compile;
use tollgate_core::signing::{body_digest, BodyDigest, SnapshotSigningKey};
use tollgate_core::snapshot::Snapshot;

pub use self::db::Db;
use self::db::{params, PgConn, Row};
pub use self::postgres::parse as parse_postgres_url;
use crate::error::Error;
use crate::model::{Page, PageQuery, Timestamp};

pub const DATABASE_FILE: &str = "tollgate.db";

/// Where the catalogue lives.
#[derive(Debug, Clone)]
pub enum Database {
    /// A SQLite file (in the data directory): one control-plane process.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://USER:PASS@HOST:PORT/DB`), which several replicas
    /// share.
    Postgres(Box<::postgres::Config>),
}

impl Database {
    /// Where, for logs: the file, or the server and database (never the password).
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(config) => postgres::describe(config),
        }
    }
}

/// A connection of either database, owned by the store.
enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgConn>),
}

impl Conn {
    /// Runs `f` in one write transaction, committed when it answers `Ok`; nothing of it stays
    /// otherwise. Writes never interleave: SQLite has one writer, and on PostgreSQL every write
    /// transaction first locks the revision row, so writes of every replica commit one after
    /// another, in revision order.
    fn write<T>(&mut self, f: impl FnOnce(Db<'_>) -> Result<T, Error>) -> Result<T, Error> {
        match self {
            Conn::Sqlite(conn) => {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let out = f(Db::Sqlite(&tx))?;
                tx.commit()?;
                Ok(out)
            }
            Conn::Postgres(conn) => conn.transaction(postgres::BEGIN_WRITE, f),
        }
    }

    /// Runs `f` in one read transaction: all its queries see the same committed state.
    fn read<T>(&mut self, f: impl FnOnce(Db<'_>) -> Result<T, Error>) -> Result<T, Error> {
        match self {
            Conn::Sqlite(conn) => {
                let tx = conn.transaction()?;
                let out = f(Db::Sqlite(&tx))?;
                // Nothing to keep: ending the read transaction releases its view of the WAL.
                tx.finish()?;
                Ok(out)
            }
            Conn::Postgres(conn) => conn.transaction(postgres::BEGIN_READ, f),
        }
    }
}

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

/// A committed revision, as published to long-polling gateways.
#[derive(Debug)]
pub struct Revision {
    pub revision: u64,
    /// The delta from the revision before, cut and checked by the write that committed this
    /// one. `None` when it holds more records than a page (gateways then fetch pages), and for
    /// the revision a start opened (cut on demand from the change log).
    delta: Option<Arc<SignedPage>>,
}

/// A page of a revision, as [`Store::page`] answers it.
pub enum PageAnswer {
    Page(Arc<SignedPage>),
    /// The revision is older than what is kept (or not committed): start over on the current.
    Gone,
    /// The revision has fewer pages.
    NoSuchPage,
}

/// How the store serves snapshots.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotOptions {
    /// Directory records (keys, token subjects) per page; a larger catalogue comes in pages.
    pub page_keys: usize,
    /// How long a superseded revision stays servable, page by page and as a delta base: a
    /// gateway fetching a large catalogue finishes the revision it started on, however many
    /// writes commit meanwhile.
    pub retain_seconds: Timestamp,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            page_keys: DEFAULT_PAGE_KEYS,
            retain_seconds: DEFAULT_RETAIN_SECONDS,
        }
    }
}

pub const DEFAULT_RETAIN_SECONDS: Timestamp = 120;

/// Recently assembled pages kept for the gateways that ask for the same one next.
const CACHED_PAGES: usize = 8;

/// The consistency check reads and compares this many buckets per read transaction.
const CHECK_SPAN: u32 = 256;

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
    idle: Mutex<Vec<Conn>>,
    returned: Condvar,
}

/// A checked-out read connection, handed back when dropped (also on a panic's unwind).
struct Reader<'p> {
    pool: &'p ReadPool,
    conn: Option<Conn>,
}

impl ReadPool {
    fn new(conns: Vec<Conn>) -> ReadPool {
        ReadPool {
            idle: Mutex::new(conns),
            returned: Condvar::new(),
        }
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
    conn: Mutex<Conn>,
    readers: ReadPool,
    health: StorageHealth,
    signing_key: SnapshotSigningKey,
    options: SnapshotOptions,
    published: watch::Sender<Arc<Revision>>,
    /// The latest revision's shell: plans, API versions and the issuers tokens are checked with.
    shell: Mutex<Arc<Snapshot>>,
    /// Recently assembled full pages, by (revision, page), newest last.
    pages: Mutex<VecDeque<(PageId, Arc<SignedPage>)>>,
    /// The oldest revision still servable, as of the latest commit.
    oldest_servable: AtomicU64,
    /// Deltas to the latest revision cut from the change log, by the revision they start from.
    deltas: Mutex<HashMap<u64, (u64, Arc<SignedPage>)>>,
    /// Held while a page or a delta is assembled: gateways asking for the same one at once wait
    /// for the first to finish and take it from the cache.
    assembling: Mutex<()>,
    pub figures: StoreFigures,
    /// Writes waiting for the next group commit, oldest first.
    queue: Mutex<VecDeque<Job>>,
    next_job: AtomicU64,
}

/// A page of a revision: (revision, page index).
type PageId = (u64, usize);

/// What the store has done, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct StoreFigures {
    /// Key-directory buckets rendered from the tables by writes (a write touching one bucket
    /// renders one).
    pub buckets_rendered: AtomicU64,
    /// Bytes of the stored buckets in force.
    pub stored_bytes: AtomicI64,
    /// Consistency checks finished, and the buckets they found differing from the tables (and
    /// re-rendered).
    pub checks: AtomicU64,
    pub drift_repaired: AtomicU64,
    /// Pages the latest check found gateways would refuse (nothing to repair: a catalogue
    /// problem, logged).
    pub refused_pages: AtomicU64,
}

/// What a consistency check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub revision: u64,
    /// Buckets whose stored content differed from the tables; re-rendered by a write.
    pub drifted: Vec<u16>,
    /// Why gateways would refuse a part of the catalogue, if they would.
    pub refused: Vec<String>,
}

/// A write in progress. Dereferences to the connection so read helpers work inside writes.
pub struct Tx<'c> {
    db: Db<'c>,
    /// The time of this write, the same for all its steps.
    pub now: Timestamp,
    gateway_change: bool,
}

impl<'c> Deref for Tx<'c> {
    type Target = Db<'c>;
    fn deref(&self) -> &Db<'c> {
        &self.db
    }
}

impl Tx<'_> {
    /// Marks this write as changing the snapshot: the revision moves when it commits.
    pub fn gateway_changed(&mut self) {
        self.gateway_change = true;
    }
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
    ///
    /// Opening reads only what the stored buckets say of themselves: a catalogue of any size
    /// opens in the time of a few queries. The stored buckets are built from the tables once,
    /// when missing (an upgraded catalogue) or when the tables moved to a revision they do not
    /// describe (changed behind the control plane's back). [`Store::check`] compares them with
    /// the tables in the background.
    pub fn open(
        database: &Database,
        signing_key: SnapshotSigningKey,
        options: SnapshotOptions,
        prepare: impl FnOnce(&mut Tx<'_>) -> Result<(), Error>,
    ) -> Result<Arc<Store>, Error> {
        let mut conn = match database {
            Database::Sqlite(path) => Conn::Sqlite(sqlite::open(path)?),
            Database::Postgres(config) => Conn::Postgres(Box::new(postgres::open(config)?)),
        };
        let figures = StoreFigures::default();
        let revision = conn.write(|db| {
            let mut tx = Tx {
                db,
                now: unix_now(),
                gateway_change: false,
            };
            let fresh = current_revision(&tx)? == 1 && tokens::own_issuer(&tx)?.is_none();
            let described: Option<i64> = tx.query_row(
                "SELECT revision FROM snapshot_state WHERE id = 1",
                [],
                |r| r.get(0),
            )?;
            let built = described == Some(current_revision(&tx)? as i64);
            prepare(&mut tx)?;
            if !built {
                if tx.gateway_change && !fresh {
                    tx.execute(
                        "UPDATE gateway_revision SET revision = revision + 1 WHERE id = 1",
                        [],
                    )?;
                }
                let revision = current_revision(&tx)?;
                let started = std::time::Instant::now();
                let shell = snapshot::render_shell(&tx, revision)?;
                buckets::rebuild(&tx, revision, &shell)?;
                tx.execute(
                    "INSERT INTO snapshot_revisions (revision, committed_at) VALUES (?1, ?2)",
                    params![revision as i64, tx.now],
                )?;
                tx.execute(
                    "UPDATE snapshot_state SET revision = ?1 WHERE id = 1",
                    [revision as i64],
                )?;
                tracing::info!(
                    revision,
                    ms = started.elapsed().as_millis() as u64,
                    "stored snapshot buckets built from the catalogue"
                );
                Ok(revision)
            } else if tx.gateway_change || has_dirty_buckets(&tx)? {
                // Opening leaves the check to `check`: a catalogue gateways would refuse is
                // still served (they keep their last good snapshot) and can be repaired
                // through the API.
                Ok(commit_revision(&tx, options, &figures, false)?.revision)
            } else {
                current_revision(&tx)
            }
        })?;
        if let Conn::Sqlite(conn) = &conn {
            sqlite::checkpoint(conn)?;
        }
        let InForce {
            shell,
            stored_bytes: stored,
            oldest_servable: oldest,
        } = conn.read(|db| in_force(&db, revision))?;
        figures.stored_bytes.store(stored, Ordering::Relaxed);
        let (published, _) = watch::channel(Arc::new(Revision {
            revision,
            delta: None,
        }));
        // After migrations: the read connections see the schema as it will stay.
        let readers = (0..READ_CONNECTIONS)
            .map(|_| match database {
                Database::Sqlite(path) => sqlite::open_reader(path).map(Conn::Sqlite),
                Database::Postgres(config) => {
                    Ok(Conn::Postgres(Box::new(PgConn::new((**config).clone()))))
                }
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let health = StorageHealth::default();
        health.answered_at.store(unix_now(), Ordering::Relaxed);
        let store = Arc::new(Store {
            conn: Mutex::new(conn),
            readers: ReadPool::new(readers),
            health,
            signing_key,
            options,
            published,
            shell: Mutex::new(Arc::new(shell)),
            pages: Mutex::new(VecDeque::new()),
            oldest_servable: AtomicU64::new(oldest),
            deltas: Mutex::new(HashMap::new()),
            assembling: Mutex::new(()),
            figures,
            queue: Mutex::new(VecDeque::new()),
            next_job: AtomicU64::new(0),
        });
        if let Database::Postgres(config) = database {
            store.follow((**config).clone());
        }
        Ok(store)
    }

    /// The latest revision's plans, API versions and issuers (no clients, no contracts).
    pub fn shell(&self) -> Arc<Snapshot> {
        Arc::clone(&self.shell.lock().unwrap_or_else(|p| p.into_inner()))
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

    /// The latest committed revision.
    pub fn snapshot(&self) -> Arc<Revision> {
        self.published.borrow().clone()
    }

    /// Page `index` of `revision`, assembled from the stored buckets as of that revision (a
    /// gateway fetching pages gets every page of the one revision it started on).
    pub async fn page(self: &Arc<Self>, revision: u64, index: usize) -> Result<PageAnswer, Error> {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.page_blocking(revision, index))
            .await
            .map_err(|e| Error::Internal(format!("page task: {e}")))?
    }

    fn cached_page(&self, revision: u64, index: usize) -> Option<Arc<SignedPage>> {
        if revision < self.oldest_servable.load(Ordering::Relaxed) {
            return None;
        }
        let pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        pages
            .iter()
            .find(|(at, _)| *at == (revision, index))
            .map(|(_, page)| Arc::clone(page))
    }

    fn page_blocking(&self, revision: u64, index: usize) -> Result<PageAnswer, Error> {
        if let Some(page) = self.cached_page(revision, index) {
            return Ok(PageAnswer::Page(page));
        }
        let _flight = self.assembling.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(page) = self.cached_page(revision, index) {
            return Ok(PageAnswer::Page(page));
        }
        let page_keys = self.options.page_keys;
        let outcome = self.read_blocking(|conn| {
            if !servable(conn, revision)? {
                return Ok(None);
            }
            let plan = buckets::plan_at(conn, revision, page_keys)?;
            let Some(&(lo, hi)) = plan.ranges.get(index) else {
                return Ok(Some(None));
            };
            let shell = buckets::shell_at(conn, revision)?.ok_or_else(|| {
                Error::Internal(format!("no stored shell for revision {revision}"))
            })?;
            let contents = buckets::contents_at(conn, revision, lo, hi)?;
            let defines = (!plan.complete).then(|| (lo..=hi).collect());
            let mut page = buckets::assemble(&shell, contents.into_iter().map(|(_, c)| c), defines);
            page.next = (index + 1 < plan.ranges.len()).then(|| page_cursor(revision, index + 1));
            let body = serde_json::to_vec(&page)
                .map_err(|e| Error::Internal(format!("encoding snapshot: {e}")))?;
            Ok(Some(Some(Arc::new(SignedPage::new(body)))))
        });
        self.health.record_read(&outcome);
        Ok(match outcome? {
            None => PageAnswer::Gone,
            Some(None) => PageAnswer::NoSuchPage,
            Some(Some(page)) => {
                let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
                pages.push_back(((revision, index), Arc::clone(&page)));
                while pages.len() > CACHED_PAGES {
                    pages.pop_front();
                }
                PageAnswer::Page(page)
            }
        })
    }

    /// One page taking a gateway that holds revision `since` to `current`: only the
    /// key-directory buckets that changed in between, with the whole shell. `None` when
    /// `since` is older than what is kept, or the change is larger than a page; the gateway
    /// then gets the full revision instead. The delta from the revision just before was cut by
    /// the write; older ones are cut from the change log once per starting revision and reused
    /// by every gateway.
    pub async fn delta(
        self: &Arc<Self>,
        since: u64,
        current: Arc<Revision>,
    ) -> Result<Option<Arc<SignedPage>>, Error> {
        if since >= current.revision {
            return Ok(None);
        }
        if since + 1 == current.revision {
            if let Some(delta) = &current.delta {
                return Ok(Some(Arc::clone(delta)));
            }
        }
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.delta_blocking(since, current.revision))
            .await
            .map_err(|e| Error::Internal(format!("delta task: {e}")))?
    }

    fn cached_delta(&self, since: u64, to: u64) -> Option<Arc<SignedPage>> {
        let deltas = self.deltas.lock().unwrap_or_else(|p| p.into_inner());
        match deltas.get(&since) {
            Some((at, page)) if *at == to => Some(Arc::clone(page)),
            _ => None,
        }
    }

    fn delta_blocking(&self, since: u64, to: u64) -> Result<Option<Arc<SignedPage>>, Error> {
        if let Some(page) = self.cached_delta(since, to) {
            return Ok(Some(page));
        }
        let _flight = self.assembling.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(page) = self.cached_delta(since, to) {
            return Ok(Some(page));
        }
        let page_keys = self.options.page_keys;
        let outcome = self.read_blocking(|conn| {
            if !servable(conn, since)? || !servable(conn, to)? {
                return Ok(None);
            }
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT bucket FROM snapshot_changes WHERE revision > ?1 AND revision <= ?2",
            )?;
            let changed = stmt
                .query_map(params![since as i64, to as i64], |r| {
                    Ok(r.get::<_, i64>(0)? as u16)
                })?
                .collect::<Result<BTreeSet<u16>, _>>()?;
            let contents = buckets::contents_of(conn, to, &changed)?;
            if contents.iter().map(|(_, c)| c.records()).sum::<usize>() > page_keys {
                return Ok(None);
            }
            let shell = buckets::shell_at(conn, to)?
                .ok_or_else(|| Error::Internal(format!("no stored shell for revision {to}")))?;
            let mut delta = buckets::assemble(
                &shell,
                contents.into_iter().map(|(_, c)| c),
                Some(changed.into_iter().collect()),
            );
            // Signed with the body: a gateway applies it over exactly this revision.
            delta.base_revision = Some(since);
            let body = serde_json::to_vec(&delta)
                .map_err(|e| Error::Internal(format!("encoding a delta: {e}")))?;
            if let Err(rejected) = compile(&body) {
                tracing::error!(since, revision = to, %rejected, "delta refused by core; serving the full revision");
                return Ok(None);
            }
            Ok(Some(Arc::new(SignedPage::new(body))))
        });
        self.health.record_read(&outcome);
        let Some(page) = outcome? else {
            return Ok(None);
        };
        let mut deltas = self.deltas.lock().unwrap_or_else(|p| p.into_inner());
        deltas.retain(|_, (at, _)| *at == to);
        deltas.insert(since, (to, Arc::clone(&page)));
        Ok(Some(page))
    }

    /// Makes `revision` the one in force here, unless a newer one already is (on PostgreSQL,
    /// [`Store::follow`] may publish another replica's newer revision before this replica's
    /// writer publishes its own).
    fn publish(&self, revision: u64, delta: Option<Arc<SignedPage>>, shell: Snapshot) {
        let mut shell = Some(shell);
        self.published.send_if_modified(|current| {
            if current.revision >= revision {
                return false;
            }
            if let Some(shell) = shell.take() {
                *self.shell.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(shell);
            }
            *current = Arc::new(Revision { revision, delta });
            true
        });
    }

    /// On PostgreSQL, follows what other replicas commit: listens for their announcements
    /// (`pg_notify` at commit) and, since one sent while the listener was disconnected is
    /// lost, also looks every second. Runs until the store is dropped.
    fn follow(self: &Arc<Self>, config: ::postgres::Config) {
        let store = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("tollgate-follow".into())
            .spawn(move || {
                let mut listener: Option<::postgres::Client> = None;
                loop {
                    if listener.as_ref().is_none_or(|l| l.is_closed()) {
                        listener = config.connect(::postgres::NoTls).ok().and_then(|mut c| {
                            c.batch_execute(&format!("LISTEN {}", postgres::REVISION_CHANNEL))
                                .ok()
                                .map(|()| c)
                        });
                    }
                    match listener.as_mut() {
                        Some(l) => {
                            use ::postgres::fallible_iterator::FallibleIterator;
                            let mut notifications = l.notifications();
                            // Those that came together make one catch-up.
                            let announced = matches!(
                                notifications.timeout_iter(FOLLOW_INTERVAL).next(),
                                Ok(Some(_))
                            );
                            if announced {
                                while let Ok(Some(_)) = notifications.iter().next() {}
                            }
                        }
                        None => std::thread::sleep(FOLLOW_INTERVAL),
                    }
                    let Some(store) = store.upgrade() else {
                        return;
                    };
                    if let Err(e) = store.catch_up() {
                        tracing::warn!(error = %e, "could not read the revision other replicas committed");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start following other replicas");
        }
    }

    /// Publishes the latest committed revision when it is newer than the one in force here.
    fn catch_up(&self) -> Result<(), Error> {
        let held = self.snapshot().revision;
        let outcome = self.read_blocking(|db| {
            let latest: Option<i64> = db.query_row(
                "SELECT revision FROM snapshot_state WHERE id = 1",
                [],
                |r| r.get(0),
            )?;
            let Some(latest) = latest.map(|l| l as u64).filter(|l| *l > held) else {
                return Ok(None);
            };
            Ok(Some((latest, in_force(db, latest)?)))
        });
        self.health.record_read(&outcome);
        if let Some((revision, in_force)) = outcome? {
            self.figures
                .stored_bytes
                .store(in_force.stored_bytes, Ordering::Relaxed);
            self.oldest_servable
                .store(in_force.oldest_servable, Ordering::Relaxed);
            self.publish(revision, None, in_force.shell);
            tracing::info!(revision, "revision committed by another replica");
        }
        Ok(())
    }

    /// Wakes on every newly committed revision.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Revision>> {
        self.published.subscribe()
    }

    /// Compares every stored bucket with a fresh render of the tables, and every part of the
    /// catalogue with what gateways accept (core's `compile`), a few hundred buckets per read
    /// transaction so writes go on meanwhile. Buckets that differ are re-rendered by a write
    /// (a new revision): drift, which no write should leave, counted in `/metrics`.
    pub fn check(&self) -> Result<CheckOutcome, Error> {
        let (mut drifted, mut refused) = (Vec::new(), Vec::new());
        let mut revision = 0;
        for start in (0..1u32 << 16).step_by(CHECK_SPAN as usize) {
            let (lo, hi) = (start as u16, (start + CHECK_SPAN - 1) as u16);
            let outcome = self.read_blocking(|conn| {
                let at: i64 = conn.query_row(
                    "SELECT revision FROM snapshot_state WHERE id = 1",
                    [],
                    |r| r.get(0),
                )?;
                let at = at as u64;
                let drift = buckets::drifted(conn, lo, hi)?;
                let shell = buckets::shell_at(conn, at)?
                    .ok_or_else(|| Error::Internal(format!("no stored shell for revision {at}")))?;
                let contents = buckets::contents_at(conn, at, lo, hi)?;
                let part = buckets::assemble(
                    &shell,
                    contents.into_iter().map(|(_, c)| c),
                    Some((lo..=hi).collect()),
                );
                let body = serde_json::to_vec(&part)
                    .map_err(|e| Error::Internal(format!("encoding snapshot: {e}")))?;
                Ok((at, drift, compile(&body).err().map(|e| e.to_string())))
            });
            self.health.record_read(&outcome);
            let (at, drift, rejected) = outcome?;
            revision = revision.max(at);
            drifted.extend(drift);
            refused.extend(rejected.map(|r| format!("buckets {lo}-{hi}: {r}")));
        }
        self.figures
            .refused_pages
            .store(refused.len() as u64, Ordering::Relaxed);
        if !drifted.is_empty() {
            tracing::error!(
                buckets = drifted.len(),
                "stored snapshot buckets differed from the catalogue; re-rendering them"
            );
            let repair = drifted.clone();
            let (_, repaired) = self.write_blocking(move |tx| {
                let mut mark = tx.prepare_cached(
                    "INSERT INTO dirty_buckets (bucket) VALUES (?1) ON CONFLICT DO NOTHING",
                )?;
                for bucket in repair {
                    mark.execute([bucket])?;
                }
                Ok(())
            })?;
            revision = repaired;
            self.figures
                .drift_repaired
                .fetch_add(drifted.len() as u64, Ordering::Relaxed);
        }
        for detail in &refused {
            tracing::error!(%detail, "gateways would refuse part of the stored catalogue");
        }
        self.figures.checks.fetch_add(1, Ordering::Relaxed);
        Ok(CheckOutcome {
            revision,
            drifted,
            refused,
        })
    }

    /// The one write connection.
    fn writer(&self) -> MutexGuard<'_, Conn> {
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
        F: FnOnce(&Db<'_>) -> Result<T, Error> + Send + 'static,
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

    fn read_blocking<T>(&self, f: impl FnOnce(&Db<'_>) -> Result<T, Error>) -> Result<T, Error> {
        let mut reader = self.readers.get();
        let conn = reader
            .conn
            .as_mut()
            .ok_or_else(|| Error::Internal("read connection already returned".into()))?;
        conn.read(|db| f(&db))
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

    /// When storage last answered a read or a write (unix seconds).
    pub fn storage_answered_at(&self) -> Timestamp {
        self.health.answered_at.load(Ordering::Relaxed)
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

    /// Runs `f` in the next group commit: writes that arrive while one commits wait for the
    /// write connection together, and the first of them to get it runs them all in one
    /// transaction, each in a savepoint of its own (a refused write rolls back only itself),
    /// then renders, checks, commits and fsyncs once for all. Each caller gets its own answer
    /// and the revision its write is in.
    fn write_blocking<T, F>(&self, f: F) -> Result<(T, u64), Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, Error> + Send + 'static,
    {
        let slot: Arc<Mutex<WriteSlot<T>>> = Arc::new(Mutex::new(WriteSlot::Queued));
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let job = {
            let (run_slot, finish_slot) = (Arc::clone(&slot), Arc::clone(&slot));
            Job {
                id,
                run: Box::new(move |tx| {
                    let (outcome, ok) = match f(tx) {
                        Ok(out) => (WriteSlot::Ran(out), true),
                        Err(e) => (WriteSlot::Done(Err(e)), false),
                    };
                    *run_slot.lock().unwrap_or_else(|p| p.into_inner()) = outcome;
                    ok
                }),
                finish: Box::new(move |committed| {
                    let mut slot = finish_slot.lock().unwrap_or_else(|p| p.into_inner());
                    let ran = std::mem::replace(&mut *slot, WriteSlot::Queued);
                    *slot = match (ran, committed) {
                        (WriteSlot::Ran(out), Ok(revision)) => WriteSlot::Done(Ok((out, revision))),
                        (WriteSlot::Ran(_), Err(e)) => WriteSlot::Done(Err(e)),
                        (WriteSlot::Done(done), _) => WriteSlot::Done(done),
                        // The group failed before this write ran.
                        (WriteSlot::Queued, Err(e)) => WriteSlot::Done(Err(e)),
                        (WriteSlot::Queued, Ok(_)) => WriteSlot::Done(Err(Error::Internal(
                            "a write was finished without running".into(),
                        ))),
                    };
                }),
            }
        };
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(job);
        // Each turn on the write connection either finds this write done by the group before
        // (whose leader held the connection) or leads the next group from the queue's head; a
        // write beyond a full group's MAX_GROUP waits for another turn.
        loop {
            let mut conn = self.writer();
            {
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                if matches!(&*slot, WriteSlot::Done(_)) {
                    if let WriteSlot::Done(outcome) =
                        std::mem::replace(&mut *slot, WriteSlot::Queued)
                    {
                        return outcome;
                    }
                }
            }
            let batch: Vec<Job> = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if !queue.iter().any(|job| job.id == id) {
                    // Taken by a group whose leader panicked: its transaction rolled back.
                    return Err(Error::Internal("the write's group commit failed".into()));
                }
                let take = queue.len().min(MAX_GROUP);
                queue.drain(..take).collect()
            };
            self.commit_group(&mut conn, batch);
        }
    }

    /// One transaction for `jobs`, each in its own savepoint; then the snapshot side once and
    /// one commit. Every job is finished, with its revision or the group's failure.
    fn commit_group(&self, conn: &mut Conn, jobs: Vec<Job>) {
        let grouped = jobs.len() > 1;
        let mut finishes = Vec::with_capacity(jobs.len());
        // Taken when the transaction began: jobs still here after a failure never ran.
        let mut waiting = Some(jobs);
        let outcome = conn.write(|db| -> Result<GroupEnd, Error> {
            let mut tx = Tx {
                db,
                now: unix_now(),
                gateway_change: false,
            };
            let mut jobs = waiting.take().unwrap_or_default().into_iter();
            while let Some(Job { run, finish, .. }) = jobs.next() {
                match run_in_savepoint(&mut tx, run, grouped) {
                    Ok(None) => finishes.push(finish),
                    Ok(Some(refused)) => finish(Err(refused)),
                    Err(e) => {
                        // Storage failed: the group rolls back; every write is told why.
                        finishes.push(finish);
                        finishes.extend(jobs.map(|job| job.finish));
                        return Err(e);
                    }
                }
            }
            if !tx.gateway_change && !has_dirty_buckets(&tx)? {
                return Ok(GroupEnd::Unchanged(current_revision(&tx)?));
            }
            // In a group every write was checked in its savepoint: the last check covered
            // exactly what commits.
            let committed = commit_revision(&tx, self.options, &self.figures, !grouped)?;
            Ok(GroupEnd::Committed(Box::new(committed)))
        });
        finishes.extend(waiting.into_iter().flatten().map(|job| job.finish));
        match outcome {
            Ok(GroupEnd::Unchanged(revision)) => {
                finishes.into_iter().for_each(|finish| finish(Ok(revision)));
            }
            Ok(GroupEnd::Committed(committed)) => {
                let revision = committed.revision;
                self.figures
                    .stored_bytes
                    .fetch_add(committed.grown, Ordering::Relaxed);
                self.oldest_servable
                    .store(committed.oldest_servable, Ordering::Relaxed);
                let Committed { shell, delta, .. } = *committed;
                self.publish(revision, delta, shell);
                tracing::info!(
                    revision,
                    writes = finishes.len(),
                    "snapshot revision committed"
                );
                finishes.into_iter().for_each(|finish| finish(Ok(revision)));
            }
            Err(e) => {
                // Nothing of the group committed (the transaction rolled back when dropped).
                for finish in finishes {
                    finish(Err(e.shared()));
                }
            }
        }
    }
}

/// Runs one write of a group in a savepoint of its own: kept when it succeeds, rolled back
/// (its caller already holds its error) when it fails. In a group, a write that succeeded is
/// also checked as gateways will check the result so far, so that one write gateways would
/// refuse is refused alone; `Some` with that refusal. Alone, the commit checks it.
fn run_in_savepoint(
    tx: &mut Tx<'_>,
    run: Box<dyn FnOnce(&mut Tx<'_>) -> bool + Send>,
    grouped: bool,
) -> Result<Option<Error>, Error> {
    let before = tx.gateway_change;
    tx.execute_batch("SAVEPOINT tollgate_write")?;
    let mut refused = None;
    let kept = run(tx) && {
        if grouped && (tx.gateway_change || has_dirty_buckets(tx)?) {
            refused = check_pending(tx).err();
        }
        refused.is_none()
    };
    if kept {
        tx.execute_batch("RELEASE tollgate_write")?;
    } else {
        tx.execute_batch("ROLLBACK TO tollgate_write; RELEASE tollgate_write")?;
        tx.gateway_change = before;
    }
    Ok(refused)
}

/// How a group commit ended: nothing gateways see changed (the revision in force), or a new
/// revision.
enum GroupEnd {
    Unchanged(u64),
    Committed(Box<Committed>),
}

/// How often a replica on PostgreSQL looks for revisions other replicas committed, when no
/// announcement came.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// The most writes one group commit takes.
const MAX_GROUP: usize = 64;

/// A queued write: `run` applies it (answering whether it succeeded), `finish` hands the caller
/// its outcome once the group committed or failed.
struct Job {
    id: u64,
    run: Box<dyn FnOnce(&mut Tx<'_>) -> bool + Send>,
    finish: Box<dyn FnOnce(Result<u64, Error>) + Send>,
}

enum WriteSlot<T> {
    Queued,
    /// Ran in a group not yet committed.
    Ran(T),
    Done(Result<(T, u64), Error>),
}

/// What gateways would make of the pending change so far (the buckets dirty in this
/// transaction and the shell): `Err` with 409 `gateway-would-reject` when they would refuse it.
fn check_pending(tx: &Tx<'_>) -> Result<(), Error> {
    let dirty = dirty_buckets(tx)?;
    let rendered = buckets::render(tx, &dirty)?;
    let shell = snapshot::render_shell(tx, current_revision(tx)? + 1)?;
    let defined: Vec<u16> = rendered.keys().copied().collect();
    let part = buckets::assemble(&shell, rendered.into_values(), Some(defined));
    let body =
        serde_json::to_vec(&part).map_err(|e| Error::Internal(format!("encoding a delta: {e}")))?;
    compile(&body).map_err(|rejected| {
        Error::conflict(
            "gateway-would-reject",
            format!("gateways would refuse the resulting snapshot: {rejected}"),
        )
    })?;
    Ok(())
}

fn current_revision(conn: &Db<'_>) -> Result<u64, Error> {
    let revision: i64 = conn.query_row(
        "SELECT revision FROM gateway_revision WHERE id = 1",
        [],
        |row| row.get(0),
    )?;
    Ok(revision as u64)
}

fn has_dirty_buckets(conn: &Db<'_>) -> Result<bool, Error> {
    conn.query_row("SELECT EXISTS (SELECT 1 FROM dirty_buckets)", [], |r| {
        r.get(0)
    })
}

/// The buckets the write in progress touched so far (filled by the schema's triggers).
fn dirty_buckets(conn: &Db<'_>) -> Result<BTreeSet<u16>, Error> {
    conn.prepare_cached("SELECT bucket FROM dirty_buckets")?
        .query_map([], |r| r.get(0))?
        .collect()
}

/// Whether pages and deltas of `revision` can still be assembled: it is the latest, or was in
/// force within the last `retain_seconds` (what pruning keeps).
fn servable(conn: &Db<'_>, revision: u64) -> Result<bool, Error> {
    let (oldest, latest): (Option<i64>, Option<i64>) = conn.query_row(
        "SELECT (SELECT MIN(revision) FROM snapshot_revisions),
                (SELECT revision FROM snapshot_state WHERE id = 1)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let revision = revision as i64;
    Ok(oldest.is_some_and(|o| o <= revision) && latest.is_some_and(|l| revision <= l))
}

/// What a replica serves once `revision` is in force: its stored shell, the size of the stored
/// snapshot and the oldest revision a delta can still start from.
struct InForce {
    shell: Snapshot,
    stored_bytes: i64,
    oldest_servable: u64,
}

fn in_force(db: &Db<'_>, revision: u64) -> Result<InForce, Error> {
    let shell = buckets::shell_at(db, revision)?
        .ok_or_else(|| Error::Internal(format!("no stored shell for revision {revision}")))?;
    let stored_bytes: i64 = db.query_row(
        "SELECT COALESCE(SUM(length(body)), 0) FROM snapshot_buckets WHERE superseded IS NULL",
        [],
        |r| r.get(0),
    )?;
    let oldest: i64 = db.query_row(
        "SELECT COALESCE(MIN(revision), ?1) FROM snapshot_revisions",
        [revision as i64],
        |r| r.get(0),
    )?;
    Ok(InForce {
        shell,
        stored_bytes,
        oldest_servable: oldest as u64,
    })
}

/// What a write that changed gateways' view left to publish.
struct Committed {
    revision: u64,
    delta: Option<Arc<SignedPage>>,
    shell: Snapshot,
    /// How many bytes the stored buckets in force grew by.
    grown: i64,
    oldest_servable: u64,
}

/// The snapshot side of a gateway-visible write, inside its transaction: sweeps expired keys,
/// bumps the revision, re-renders the buckets the write touched (`dirty_buckets`, filled by
/// triggers) and the shell, stores what changed, cuts the delta from the previous revision and
/// — when `verify` — runs it through the gateways' own acceptance check (`core`'s `compile`,
/// what `verify_snapshot` runs after the signature): a change gateways would refuse, and so
/// keep enforcing the previous revision, is refused here instead (409). Then prunes what no
/// recent revision needs.
fn commit_revision(
    tx: &Tx<'_>,
    options: SnapshotOptions,
    figures: &StoreFigures,
    verify: bool,
) -> Result<Committed, Error> {
    let started = std::time::Instant::now();
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
    let dirty = dirty_buckets(tx)?;
    tx.execute("DELETE FROM dirty_buckets", [])?;
    let rendered = buckets::render(tx, &dirty)?;
    figures
        .buckets_rendered
        .fetch_add(rendered.len() as u64, Ordering::Relaxed);
    let (changed, grown) = buckets::store(tx, revision, rendered)?;
    let shell = snapshot::render_shell(tx, revision)?;
    buckets::store_shell(tx, revision, &shell)?;
    tx.execute(
        "INSERT INTO snapshot_revisions (revision, committed_at) VALUES (?1, ?2)",
        params![revision as i64, tx.now],
    )?;

    let records: usize = changed.values().map(buckets::Content::records).sum();
    let defined: Vec<u16> = changed.keys().copied().collect();
    let mut delta = buckets::assemble(&shell, changed.into_values(), Some(defined));
    // Signed with the body: a gateway applies it over exactly the revision before.
    delta.base_revision = Some(revision - 1);
    let body = serde_json::to_vec(&delta)
        .map_err(|e| Error::Internal(format!("encoding a delta: {e}")))?;
    if verify {
        if let Err(rejected) = compile(&body) {
            return Err(Error::conflict(
                "gateway-would-reject",
                format!("gateways would refuse the resulting snapshot: {rejected}"),
            ));
        }
    }
    let delta = (records <= options.page_keys).then(|| Arc::new(SignedPage::new(body)));
    let oldest_servable = prune(tx, revision, options.retain_seconds)?;
    tx.execute(
        "UPDATE snapshot_state SET revision = ?1 WHERE id = 1",
        [revision as i64],
    )?;
    if tx.is_postgres() {
        // Delivered to every listening replica when this transaction commits.
        tx.query_row(
            "SELECT pg_notify(?1, ?2)",
            [postgres::REVISION_CHANNEL, &revision.to_string()],
            |_| Ok(()),
        )?;
    }
    tracing::debug!(
        revision,
        buckets = dirty.len(),
        records,
        ms = started.elapsed().as_millis() as u64,
        "snapshot revision rendered"
    );
    Ok(Committed {
        revision,
        delta,
        shell,
        grown,
        oldest_servable,
    })
}

/// Deletes the stored bucket versions, shells and change-log entries that no servable revision
/// needs: a revision is servable while it is the latest or was in force within the last
/// `retain_seconds`. Each write deletes about what writes before it superseded. Answers the
/// oldest servable revision.
fn prune(tx: &Tx<'_>, revision: u64, retain_seconds: Timestamp) -> Result<u64, Error> {
    let oldest: i64 = tx.query_row(
        "SELECT COALESCE(MIN(revision), ?2) - 1 FROM snapshot_revisions WHERE committed_at > ?1",
        params![tx.now - retain_seconds, revision as i64],
        |r| r.get(0),
    )?;
    for sql in [
        "DELETE FROM snapshot_buckets WHERE superseded IS NOT NULL AND superseded <= ?1",
        "DELETE FROM snapshot_buckets WHERE superseded IS NULL AND records = 0 AND revision <= ?1",
        "DELETE FROM snapshot_changes WHERE revision <= ?1",
        "DELETE FROM snapshot_revisions WHERE revision < ?1",
        "DELETE FROM snapshot_shells WHERE revision < (
             SELECT MAX(revision) FROM snapshot_shells WHERE revision <= ?1)",
    ] {
        tx.prepare_cached(sql)?.execute([oldest])?;
    }
    Ok(oldest.max(0) as u64)
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
pub fn query_opt<T>(
    conn: &Db<'_>,
    sql: &str,
    params: impl db::Params,
    f: impl FnOnce(&Row<'_>) -> Result<T, Error>,
) -> Result<Option<T>, Error> {
    conn.query_opt(sql, params, f)
}

#[cfg(test)]
mod bucket_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        buckets::register_functions(&conn).unwrap();
        sqlite::migrations().to_latest(&mut conn).unwrap();
    }

    fn storage_failure() -> Result<(), Error> {
        Err(Error::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        )))
    }

    fn store(dir: &std::path::Path) -> Arc<Store> {
        Store::open(
            &Database::Sqlite(dir.join(DATABASE_FILE)),
            SnapshotSigningKey::from_base64(&URL_SAFE_NO_PAD.encode([7u8; 32])).unwrap(),
            SnapshotOptions::default(),
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

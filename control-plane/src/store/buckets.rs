//! The key directory kept rendered, bucket by bucket, so that a write costs what it changes.
//!
//! A bucket (`core::keydir`, 65 536 of them) holds the directory records whose digest starts
//! with its number: API keys and token subjects. Its rendered content is the client versions
//! restricted to those records, with their contracts: exactly what a snapshot page covering the
//! bucket carries. Triggers (schema_buckets.sql) list the buckets a write touched in
//! `dirty_buckets`; the write renders just those ([`render`]), stores a new version of each that
//! changed ([`store`]) and logs them for deltas. Pages and deltas are assembled from stored
//! versions ([`contents_at`], [`assemble`]) as of any recent revision, off the write path.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::db::{params, Db};
use rusqlite::functions::FunctionFlags;
use serde::{Deserialize, Serialize};
use tollgate_core::snapshot::{ApiKeyHash, ClientVersion, Contract, Snapshot, TokenSubject};

use super::snapshot::{subject_bucket, PagePlan};
use crate::error::Error;

/// Registers what the schema's triggers call: `tollgate_subject_bucket(issuer, value)`, the
/// bucket of a token subject's directory record (NULL when `issuer` is NULL). Every connection
/// that writes the catalogue needs it; a write from elsewhere (the `sqlite3` shell) fails
/// loudly instead of leaving a bucket stale.
pub fn register_functions(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "tollgate_subject_bucket",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let issuer: Option<String> = ctx.get(0)?;
            let value: String = ctx.get(1)?;
            Ok(issuer.map(|issuer| i64::from(subject_bucket(&issuer, &value))))
        },
    )
}

/// One bucket's rendered content, as stored: client versions (by id) with their records in the
/// bucket, and those clients' contracts. Keys carry their row id so that a client version whose
/// keys fall in several buckets lists them in one order (the order they were issued) however
/// its buckets are combined.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    clients: Vec<StoredClient>,
    contracts: Vec<Contract>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredClient {
    id: String,
    keys: Vec<(i64, ApiKeyHash)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    subjects: Vec<TokenSubject>,
}

impl Content {
    /// Directory records (keys and token subjects) in the bucket.
    pub fn records(&self) -> usize {
        self.clients
            .iter()
            .map(|c| c.keys.len() + c.subjects.len())
            .sum()
    }

    fn encode(&self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(self).map_err(|e| Error::Internal(format!("encoding a bucket: {e}")))
    }

    fn decode(bucket: u16, body: &[u8]) -> Result<Content, Error> {
        serde_json::from_slice(body)
            .map_err(|e| Error::Internal(format!("stored bucket {bucket} unreadable: {e}")))
    }
}

/// Renders buckets `lo..=hi` from the tables; buckets without records are absent.
pub fn render_range(conn: &Db<'_>, lo: u16, hi: u16) -> Result<BTreeMap<u16, Content>, Error> {
    type Client = (String, String, String);
    let mut records: BTreeMap<u16, BTreeMap<Client, StoredClient>> = BTreeMap::new();
    fn entry(
        records: &mut BTreeMap<u16, BTreeMap<Client, StoredClient>>,
        bucket: i64,
        client: Client,
    ) -> &mut StoredClient {
        let id = format!("{}/{}/{}", client.0, client.1, client.2);
        records
            .entry(bucket as u16)
            .or_default()
            .entry(client)
            .or_insert_with(|| StoredClient {
                id,
                keys: Vec::new(),
                subjects: Vec::new(),
            })
    }
    let range = params![i64::from(lo), i64::from(hi)];

    let mut stmt = conn.prepare_cached(
        "SELECT bucket, org, client, version, id, sha256, expires_at FROM api_keys
         WHERE bucket BETWEEN ?1 AND ?2 ORDER BY id",
    )?;
    let mut rows = stmt.query(range)?;
    while let Some(r) = rows.next_row()? {
        let key = ApiKeyHash {
            sha256: r.get(5)?,
            expires_at: r.get::<_, Option<i64>>(6)?.map(|t| t.max(0) as u64),
        };
        entry(&mut records, r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))
            .keys
            .push((r.get(4)?, key));
    }
    // The own issuer's subjects: one per client credential (a token names its `client_id`).
    let mut stmt = conn.prepare_cached(
        "SELECT c.bucket, c.client_org, c.client, c.client_version, o.issuer, c.client_id
         FROM oauth_credentials c JOIN own_issuer o ON o.id = 1
         WHERE c.bucket BETWEEN ?1 AND ?2 AND c.client_org IS NOT NULL",
    )?;
    let mut rows = stmt.query(range)?;
    while let Some(r) = rows.next_row()? {
        let subject = TokenSubject {
            issuer: r.get(4)?,
            value: r.get(5)?,
        };
        entry(&mut records, r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))
            .subjects
            .push(subject);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT bucket, org, client, version, issuer, value FROM token_subjects
         WHERE bucket BETWEEN ?1 AND ?2",
    )?;
    let mut rows = stmt.query(range)?;
    while let Some(r) = rows.next_row()? {
        let subject = TokenSubject {
            issuer: r.get(4)?,
            value: r.get(5)?,
        };
        entry(&mut records, r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))
            .subjects
            .push(subject);
    }

    let mut contracts_of: HashMap<Client, Vec<Contract>> = HashMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT id, api_org || '/' || api || '/' || api_version,
                plan_org || '/' || plan || '/' || plan_version
         FROM contracts WHERE client_org = ?1 AND client = ?2 AND client_version = ?3",
    )?;
    let mut out = BTreeMap::new();
    for (bucket, clients) in records {
        let mut contracts = Vec::new();
        let mut stored = Vec::with_capacity(clients.len());
        for (client, mut rendered) in clients {
            if !contracts_of.contains_key(&client) {
                let found = stmt
                    .query_map(params![client.0, client.1, client.2], |r| {
                        Ok(Contract {
                            id: r.get::<_, i64>(0)? as u64,
                            client: rendered.id.clone(),
                            api: r.get(1)?,
                            plan: r.get(2)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                contracts_of.insert(client.clone(), found);
            }
            contracts.extend(contracts_of.get(&client).into_iter().flatten().cloned());
            rendered
                .subjects
                .sort_by(|a, b| (&a.issuer, &a.value).cmp(&(&b.issuer, &b.value)));
            stored.push(rendered);
        }
        stored.sort_by(|a, b| a.id.cmp(&b.id));
        contracts.sort_by_key(|c| c.id);
        out.insert(
            bucket,
            Content {
                clients: stored,
                contracts,
            },
        );
    }
    Ok(out)
}

/// Renders exactly `buckets` (any set): contiguous runs are read with one range query each, so
/// a write touching a few buckets reads a few, and one touching most reads the tables once.
pub fn render(conn: &Db<'_>, buckets: &BTreeSet<u16>) -> Result<BTreeMap<u16, Content>, Error> {
    let mut out = BTreeMap::new();
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for &b in buckets {
        match runs.last_mut() {
            // Reading a few buckets nobody asked for is cheaper than another query.
            Some((_, hi)) if b - *hi <= 8 => *hi = b,
            _ => runs.push((b, b)),
        }
    }
    for (lo, hi) in runs {
        for (bucket, content) in render_range(conn, lo, hi)? {
            if buckets.contains(&bucket) {
                out.insert(bucket, content);
            }
        }
    }
    for &b in buckets {
        out.entry(b).or_default();
    }
    Ok(out)
}

/// Stores the rendered `buckets` as of `revision`: a new version of each whose content differs
/// from its current one (the current one is marked superseded), logged as changed by this
/// revision. Answers the buckets that changed, with their content, and how many bytes the
/// current versions grew (or shrank) by.
pub fn store(
    conn: &Db<'_>,
    revision: u64,
    buckets: BTreeMap<u16, Content>,
) -> Result<(BTreeMap<u16, Content>, i64), Error> {
    let revision = revision as i64;
    let mut current = conn.prepare_cached(
        "SELECT body FROM snapshot_buckets WHERE bucket = ?1 AND superseded IS NULL",
    )?;
    let mut supersede = conn.prepare_cached(
        "UPDATE snapshot_buckets SET superseded = ?2 WHERE bucket = ?1 AND superseded IS NULL",
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO snapshot_buckets (bucket, revision, superseded, records, body)
         VALUES (?1, ?2, NULL, ?3, ?4)",
    )?;
    let mut log =
        conn.prepare_cached("INSERT INTO snapshot_changes (revision, bucket) VALUES (?1, ?2)")?;
    let (mut changed, mut grown) = (BTreeMap::new(), 0i64);
    for (bucket, content) in buckets {
        let records = content.records();
        let body = content.encode()?;
        let old: Option<Vec<u8>> = current.query_opt([bucket], |r| r.get(0))?;
        let unchanged = match &old {
            Some(old) => *old == body,
            None => records == 0,
        };
        if unchanged {
            continue;
        }
        if let Some(old) = &old {
            supersede.execute(params![bucket, revision])?;
            grown -= old.len() as i64;
        }
        // An emptied bucket keeps a version with no records while older revisions that had
        // some may still be read (pruned like any other version).
        insert.execute(params![bucket, revision, records as i64, body])?;
        grown += body.len() as i64;
        log.execute(params![revision, bucket])?;
        changed.insert(bucket, content);
    }
    Ok((changed, grown))
}

/// The content of buckets `lo..=hi` as of `revision` (buckets without records absent).
pub fn contents_at(
    conn: &Db<'_>,
    revision: u64,
    lo: u16,
    hi: u16,
) -> Result<Vec<(u16, Content)>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT bucket, body FROM snapshot_buckets
         WHERE bucket BETWEEN ?1 AND ?2 AND revision <= ?3
           AND (superseded IS NULL OR superseded > ?3) AND records > 0
         ORDER BY bucket",
    )?;
    let mut rows = stmt.query(params![i64::from(lo), i64::from(hi), revision as i64])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next_row()? {
        let bucket = r.get::<_, i64>(0)? as u16;
        let body: Vec<u8> = r.get(1)?;
        out.push((bucket, Content::decode(bucket, &body)?));
    }
    Ok(out)
}

/// The content of the given buckets as of `revision` (buckets without records absent).
pub fn contents_of(
    conn: &Db<'_>,
    revision: u64,
    buckets: &BTreeSet<u16>,
) -> Result<Vec<(u16, Content)>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT body FROM snapshot_buckets
         WHERE bucket = ?1 AND revision <= ?2 AND (superseded IS NULL OR superseded > ?2)
           AND records > 0",
    )?;
    let mut out = Vec::new();
    for &bucket in buckets {
        let body: Option<Vec<u8>> =
            stmt.query_opt(params![bucket, revision as i64], |r| r.get(0))?;
        if let Some(body) = body {
            out.push((bucket, Content::decode(bucket, &body)?));
        }
    }
    Ok(out)
}

/// Records per non-empty bucket as of `revision`: what its page plan is made from.
pub fn plan_at(conn: &Db<'_>, revision: u64, page_keys: usize) -> Result<PagePlan, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT bucket, records FROM snapshot_buckets
         WHERE revision <= ?1 AND (superseded IS NULL OR superseded > ?1) AND records > 0
         ORDER BY bucket",
    )?;
    let per_bucket = stmt
        .query_map([revision as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u16, r.get::<_, i64>(1)? as usize))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PagePlan::new(per_bucket, page_keys))
}

/// The shell (plans, API versions, issuers) in force at `revision`.
pub fn shell_at(conn: &Db<'_>, revision: u64) -> Result<Option<Snapshot>, Error> {
    let body: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT body FROM snapshot_shells WHERE revision <= ?1
             ORDER BY revision DESC LIMIT 1",
        )?
        .query_opt([revision as i64], |r| r.get(0))?;
    body.map(|body| {
        let mut shell: Snapshot = serde_json::from_slice(&body)
            .map_err(|e| Error::Internal(format!("stored snapshot shell unreadable: {e}")))?;
        shell.revision = revision;
        Ok(shell)
    })
    .transpose()
}

/// Stores `shell` as of `revision` when it differs from the one in force before.
pub fn store_shell(conn: &Db<'_>, revision: u64, shell: &Snapshot) -> Result<(), Error> {
    let body = shell_body(shell)?;
    let previous: Option<Vec<u8>> = conn
        .prepare_cached("SELECT body FROM snapshot_shells ORDER BY revision DESC LIMIT 1")?
        .query_opt([], |r| r.get(0))?;
    if previous.as_deref() != Some(body.as_slice()) {
        conn.prepare_cached("INSERT INTO snapshot_shells (revision, body) VALUES (?1, ?2)")?
            .execute(params![revision as i64, body])?;
    }
    Ok(())
}

/// The shell as stored: its revision left out, so an unchanged shell is stored once.
fn shell_body(shell: &Snapshot) -> Result<Vec<u8>, Error> {
    let stored = Snapshot {
        revision: 0,
        ..shell.clone()
    };
    serde_json::to_vec(&stored).map_err(|e| Error::Internal(format!("encoding the shell: {e}")))
}

/// A snapshot document of `shell`'s revision: the shell with the records of `contents` (a
/// client version in several buckets combined into one entry, its keys in the order issued),
/// defining `buckets` (`None`: the complete catalogue).
pub fn assemble(
    shell: &Snapshot,
    contents: impl IntoIterator<Item = Content>,
    buckets: Option<Vec<u16>>,
) -> Snapshot {
    let mut clients: BTreeMap<String, StoredClient> = BTreeMap::new();
    let mut contracts: BTreeMap<u64, Contract> = BTreeMap::new();
    for content in contents {
        for client in content.clients {
            match clients.get_mut(&client.id) {
                Some(known) => {
                    known.keys.extend(client.keys);
                    known.subjects.extend(client.subjects);
                }
                None => {
                    clients.insert(client.id.clone(), client);
                }
            }
        }
        for contract in content.contracts {
            contracts.entry(contract.id).or_insert(contract);
        }
    }
    let clients = clients
        .into_values()
        .map(|mut c| {
            c.keys.sort_by_key(|(id, _)| *id);
            c.subjects
                .sort_by(|a, b| (&a.issuer, &a.value).cmp(&(&b.issuer, &b.value)));
            ClientVersion {
                id: c.id,
                keys: c.keys.into_iter().map(|(_, k)| k).collect(),
                subjects: c.subjects,
            }
        })
        .collect();
    Snapshot {
        clients,
        contracts: contracts.into_values().collect(),
        buckets,
        next: None,
        base_revision: None,
        ..shell.clone()
    }
}

/// Every stored bucket version and log entry rebuilt from the tables, as of `revision`: for a
/// catalogue upgraded from before stored buckets, or changed behind the control plane's back.
/// Older revisions can no longer be assembled or cut deltas from.
pub fn rebuild(conn: &Db<'_>, revision: u64, shell: &Snapshot) -> Result<(), Error> {
    for table in [
        "dirty_buckets",
        "snapshot_buckets",
        "snapshot_shells",
        "snapshot_changes",
        "snapshot_revisions",
    ] {
        conn.execute(&format!("DELETE FROM {table}"), [])?;
    }
    // A few thousand records at a time: the catalogue is never all in memory.
    const SPAN: u32 = 256;
    let mut insert = conn.prepare_cached(
        "INSERT INTO snapshot_buckets (bucket, revision, superseded, records, body)
         VALUES (?1, ?2, NULL, ?3, ?4)",
    )?;
    for start in (0..1u32 << 16).step_by(SPAN as usize) {
        let (lo, hi) = (start as u16, (start + SPAN - 1) as u16);
        for (bucket, content) in render_range(conn, lo, hi)? {
            insert.execute(params![
                bucket,
                revision as i64,
                content.records() as i64,
                content.encode()?
            ])?;
        }
    }
    conn.execute(
        "INSERT INTO snapshot_shells (revision, body) VALUES (?1, ?2)",
        params![revision as i64, shell_body(shell)?],
    )?;
    Ok(())
}

/// Buckets whose stored current version differs from a fresh render of the tables, among
/// `lo..=hi`: drift, which no write should ever leave (the consistency check repairs it).
pub fn drifted(conn: &Db<'_>, lo: u16, hi: u16) -> Result<Vec<u16>, Error> {
    let fresh = render_range(conn, lo, hi)?;
    let mut stmt = conn.prepare_cached(
        "SELECT bucket, body FROM snapshot_buckets
         WHERE bucket BETWEEN ?1 AND ?2 AND superseded IS NULL AND records > 0",
    )?;
    let mut stored: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
    for row in stmt.query_map(params![i64::from(lo), i64::from(hi)], |r| {
        Ok((r.get::<_, i64>(0)? as u16, r.get::<_, Vec<u8>>(1)?))
    })? {
        let (bucket, body) = row?;
        stored.insert(bucket, body);
    }
    let mut drift = Vec::new();
    for (bucket, content) in &fresh {
        if stored.get(bucket) != Some(&content.encode()?) {
            drift.push(*bucket);
        }
    }
    drift.extend(stored.keys().filter(|b| !fresh.contains_key(b)));
    drift.sort_unstable();
    Ok(drift)
}

//! Client versions and their API keys. A key is drawn from the OS CSPRNG, handed back once and
//! stored only as its SHA-256; every client version is in the snapshot with its key hashes, so
//! creating one or rotating its key moves the revision.

use super::db::{params, Db};
use tollgate_core::keys::key_hash_hex;

use super::orgs::{get_owned, OwnedKind};
use super::{query_opt, required, PageRequest, Tx};
use crate::error::Error;
use crate::model::{ApiKeyInfo, ClientVersion, CreatedClientVersion, Page, RotatedKey};
use crate::secrets::random_token;

/// A rotated-out key works at most this long, so a forgotten rotation cannot leave an old key
/// valid indefinitely.
pub const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

/// Prefix so a leaked key is recognisable by secret scanners and people.
const API_KEY_PREFIX: &str = "tg_";

/// 24 random bytes: 192 bits, 32 URL-safe characters after the prefix.
fn new_api_key() -> Result<String, Error> {
    Ok(format!("{API_KEY_PREFIX}{}", random_token(24)?))
}

pub fn create_version(
    tx: &mut Tx<'_>,
    org: &str,
    client: &str,
    version: &str,
) -> Result<CreatedClientVersion, Error> {
    get_owned(tx, OwnedKind::Client, org, client)?;
    if find_version(tx, org, client, version)?.is_some() {
        return Err(Error::AlreadyExists(format!(
            "client version {org}/{client}/{version}"
        )));
    }
    tx.execute(
        "INSERT INTO client_versions (org, client, version, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![org, client, version, tx.now],
    )?;
    let api_key = new_api_key()?;
    insert_key(tx, org, client, version, &api_key)?;
    tx.gateway_changed();
    Ok(CreatedClientVersion {
        org: org.to_owned(),
        client: client.to_owned(),
        version: version.to_owned(),
        created_at: tx.now,
        api_key,
    })
}

pub fn rotate_key(
    tx: &mut Tx<'_>,
    org: &str,
    client: &str,
    version: &str,
    grace_seconds: u64,
) -> Result<RotatedKey, Error> {
    get_version(tx, org, client, version)?;
    if grace_seconds > MAX_GRACE_SECONDS {
        return Err(Error::unprocessable(
            "invalid-grace-period",
            format!("grace_seconds must be at most {MAX_GRACE_SECONDS} (30 days)"),
        ));
    }
    let expires_at = tx.now + grace_seconds as i64;
    // Every older key is bounded by this grace: the current one and those still in an earlier
    // rotation's grace (a later expiry is cut short, an earlier one kept).
    tx.execute(
        "UPDATE api_keys SET expires_at = ?4
         WHERE org = ?1 AND client = ?2 AND version = ?3
           AND (expires_at IS NULL OR expires_at > ?4)",
        params![org, client, version, expires_at],
    )?;
    let api_key = new_api_key()?;
    let key_id = insert_key(tx, org, client, version, &api_key)?;
    tx.gateway_changed();
    Ok(RotatedKey {
        api_key,
        key_id,
        previous_key_expires_at: expires_at,
    })
}

/// Revokes one key of a client version: it stops working at the gateways with the next
/// revision. A key that has already expired is left as it is; revoking one twice is no error.
pub fn revoke_key(
    tx: &mut Tx<'_>,
    org: &str,
    client: &str,
    version: &str,
    key_id: i64,
) -> Result<ApiKeyInfo, Error> {
    get_version(tx, org, client, version)?;
    let changed = tx.execute(
        "UPDATE api_keys SET expires_at = ?5
         WHERE org = ?1 AND client = ?2 AND version = ?3 AND id = ?4
           AND (expires_at IS NULL OR expires_at > ?5)",
        params![org, client, version, key_id, tx.now],
    )?;
    if changed > 0 {
        tx.gateway_changed();
    }
    get_version(tx, org, client, version)?
        .keys
        .into_iter()
        .find(|k| k.id == key_id)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "key {key_id} of client version {org}/{client}/{version}"
            ))
        })
}

fn insert_key(
    tx: &Tx<'_>,
    org: &str,
    client: &str,
    version: &str,
    key: &str,
) -> Result<i64, Error> {
    tx.query_row(
        "INSERT INTO api_keys (org, client, version, sha256, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
        params![org, client, version, key_hash_hex(key), tx.now],
        |r| r.get(0),
    )
}

pub fn find_version(
    conn: &Db<'_>,
    org: &str,
    client: &str,
    version: &str,
) -> Result<Option<ClientVersion>, Error> {
    let created_at = query_opt(
        conn,
        "SELECT created_at FROM client_versions WHERE org = ?1 AND client = ?2 AND version = ?3",
        [org, client, version],
        |r| r.get::<_, i64>(0),
    )?;
    let Some(created_at) = created_at else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT id, created_at, expires_at FROM api_keys
         WHERE org = ?1 AND client = ?2 AND version = ?3 ORDER BY id",
    )?;
    let keys = stmt
        .query_map([org, client, version], |r| {
            Ok(ApiKeyInfo {
                id: r.get(0)?,
                created_at: r.get(1)?,
                expires_at: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(ClientVersion {
        org: org.to_owned(),
        client: client.to_owned(),
        version: version.to_owned(),
        created_at,
        keys,
    }))
}

pub fn get_version(
    conn: &Db<'_>,
    org: &str,
    client: &str,
    version: &str,
) -> Result<ClientVersion, Error> {
    required(find_version(conn, org, client, version)?, || {
        format!("client version {org}/{client}/{version}")
    })
}

pub fn list_versions(
    conn: &Db<'_>,
    org: &str,
    client: &str,
    page: &PageRequest,
) -> Result<Page<ClientVersion>, Error> {
    get_owned(conn, OwnedKind::Client, org, client)?;
    let mut stmt = conn.prepare(
        "SELECT seq, version FROM client_versions
         WHERE org = ?1 AND client = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
    )?;
    let keys = stmt
        .query_map(
            params![org, client, page.after_seq()?, page.sql_limit()],
            |r| Ok((r.get::<_, i64>(0)?.to_string(), r.get::<_, String>(1)?)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::with_capacity(keys.len());
    for (seq, version) in keys {
        rows.push((seq, get_version(conn, org, client, &version)?));
    }
    Ok(page.page(rows))
}

//! The own issuer's state in the database: its configuration, the public halves of its signing
//! keys, and OAuth client credentials (of client versions and of service accounts).
//!
//! Everything gateways see (the issuer, its keys, which client versions have credentials)
//! moves the revision; secrets are stored only as SHA-256 and compared in constant time.

use super::db::{params, Db, ToValue};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_core::token::LEEWAY_SECONDS;

use super::clients::{get_version, MAX_GRACE_SECONDS};
use super::{query_opt, required, Tx};
use crate::domain::check_slug;
use crate::error::Error;
use crate::model::{
    CreatedServiceAccount, CredentialsInfo, IssuedCredentials, RotatedTokenKey, ServiceAccount,
    TokenKey,
};
use crate::secrets::random_token;
use crate::tokens::{public_jwk, IssuerConfig, NewKey, SigningKeys, MANAGEMENT_SCOPES};

/// Brings the stored issuer in line with `serve`'s configuration and makes sure a current key
/// with a private half exists (generated on first start). Moves the revision only on change.
pub fn ensure_own_issuer(
    tx: &mut Tx<'_>,
    config: &IssuerConfig,
    keys: &SigningKeys,
) -> Result<(), Error> {
    let stored = query_opt(
        tx,
        "SELECT issuer, audience FROM own_issuer WHERE id = 1",
        [],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
    )?;
    if stored.as_ref() != Some(&(config.issuer.clone(), config.gateway_audience.clone())) {
        tx.execute(
            "INSERT INTO own_issuer (id, issuer, audience) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET issuer = ?1, audience = ?2",
            params![config.issuer, config.gateway_audience],
        )?;
        tx.gateway_changed();
    }
    let usable = match current_key(tx)? {
        Some((kid, sealed)) => keys.open(&kid, sealed.as_deref())?,
        None => false,
    };
    if !usable {
        rotate_key(tx, keys, config.token_lifetime_seconds)?;
    }
    Ok(())
}

/// A new current key; the previous one stays published until every token it signed has
/// expired (lifetime plus the gateways' clock leeway).
pub fn rotate_key(
    tx: &mut Tx<'_>,
    keys: &SigningKeys,
    lifetime_seconds: u64,
) -> Result<RotatedTokenKey, Error> {
    let published: Vec<String> = list_keys(tx)?.into_iter().map(|k| k.kid).collect();
    let NewKey { kid, x, sealed } = keys.generate(&published)?;
    let drop_at = tx.now + (lifetime_seconds + LEEWAY_SECONDS) as i64;
    tx.execute(
        "UPDATE token_keys SET retired_at = ?1, drop_at = ?2 WHERE retired_at IS NULL",
        params![tx.now, drop_at],
    )?;
    tx.execute(
        "INSERT INTO token_keys (kid, x, sealed, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![kid, x, sealed, tx.now],
    )?;
    tx.gateway_changed();
    Ok(RotatedTokenKey {
        kid,
        keys: list_keys(tx)?,
    })
}

/// Retired keys past their time: unpublished (the revision moves). Answers how many.
pub fn drop_expired_keys(tx: &mut Tx<'_>) -> Result<usize, Error> {
    let dropped = tx.execute(
        "DELETE FROM token_keys WHERE drop_at IS NOT NULL AND drop_at <= ?1",
        [tx.now],
    )?;
    if dropped > 0 {
        tx.gateway_changed();
    }
    Ok(dropped)
}

/// When the next retired key is due to be unpublished.
pub fn next_key_drop(conn: &Db<'_>) -> Result<Option<i64>, Error> {
    conn.query_row(
        "SELECT MIN(drop_at) FROM token_keys WHERE drop_at IS NOT NULL",
        [],
        |r| r.get(0),
    )
}

/// The key tokens are signed with now: its `kid` and, where keys are kept in the database, its
/// sealed seed.
pub fn current_key(conn: &Db<'_>) -> Result<Option<(String, Option<String>)>, Error> {
    query_opt(
        conn,
        "SELECT kid, sealed FROM token_keys WHERE retired_at IS NULL
         ORDER BY created_at DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

pub fn list_keys(conn: &Db<'_>) -> Result<Vec<TokenKey>, Error> {
    let mut stmt = conn.prepare(
        "SELECT kid, created_at, retired_at, drop_at FROM token_keys ORDER BY created_at, kid",
    )?;
    let keys = stmt
        .query_map([], |r| {
            Ok(TokenKey {
                kid: r.get(0)?,
                created_at: r.get(1)?,
                retired_at: r.get(2)?,
                published_until: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(keys)
}

/// The own issuer as the snapshot carries it: `None` before the first start configured it.
pub fn own_issuer(conn: &Db<'_>) -> Result<Option<Value>, Error> {
    let Some((issuer, audience)) = query_opt(
        conn,
        "SELECT issuer, audience FROM own_issuer WHERE id = 1",
        [],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
    )?
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare("SELECT kid, x FROM token_keys ORDER BY kid")?;
    let keys = stmt
        .query_map([], |r| {
            Ok(public_jwk(&r.get::<_, String>(0)?, &r.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(serde_json::json!({
        "issuer": issuer,
        "audiences": [audience],
        "jwks": {"keys": keys},
        "client_claim": CREDENTIAL_CLAIM,
    })))
}

/// The claim that names the credentials a token was issued for (RFC 9068 §2.2 `client_id`).
/// Gateways map the own issuer's tokens to client versions by it, and the management API
/// checks it, so a token lives no longer than its credentials: revoked or replaced credentials
/// take their tokens with them, and new credentials never revive an older token.
pub const CREDENTIAL_CLAIM: &str = "client_id";

/// Every client version's live credentials, as (`org/client/version`, `client_id`): the own
/// issuer's token subjects in the snapshot. A credential past its grace is no longer among
/// them (the expiry sweep deletes it and moves the revision).
pub fn client_credentials_in_force(
    conn: &Db<'_>,
    now: i64,
) -> Result<Vec<(String, String)>, Error> {
    let mut stmt = conn.prepare(
        "SELECT client_org || '/' || client || '/' || client_version, client_id
         FROM oauth_credentials
         WHERE client_org IS NOT NULL AND (expires_at IS NULL OR expires_at > ?1)",
    )?;
    let ids = stmt
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}

/// Credentials past their grace: deleted, and the revision moves when a client version's go
/// (its token subject leaves the snapshot). Answers how many.
pub fn drop_expired_credentials(tx: &mut Tx<'_>) -> Result<usize, Error> {
    let clients = tx.execute(
        "DELETE FROM oauth_credentials
         WHERE expires_at IS NOT NULL AND expires_at <= ?1 AND client_org IS NOT NULL",
        [tx.now],
    )?;
    let accounts = tx.execute(
        "DELETE FROM oauth_credentials
         WHERE expires_at IS NOT NULL AND expires_at <= ?1 AND service_account IS NOT NULL",
        [tx.now],
    )?;
    if clients > 0 {
        tx.gateway_changed();
    }
    Ok(clients + accounts)
}

/// When the next credentials reach the end of their grace.
pub fn next_credentials_expiry(conn: &Db<'_>) -> Result<Option<i64>, Error> {
    conn.query_row(
        "SELECT MIN(expires_at) FROM oauth_credentials WHERE expires_at IS NOT NULL",
        [],
        |r| r.get(0),
    )
}

fn new_secret() -> Result<String, Error> {
    // 32 bytes: 256 bits from the OS CSPRNG.
    Ok(format!("tgs_{}", random_token(32)?))
}

fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// New credentials for a client version. Earlier ones keep working for `grace_seconds`. The
/// first credentials give the client version its own-issuer subject (the revision moves).
pub fn create_client_credentials(
    tx: &mut Tx<'_>,
    org: &str,
    client: &str,
    version: &str,
    grace_seconds: u64,
) -> Result<IssuedCredentials, Error> {
    get_version(tx, org, client, version)?;
    check_grace(grace_seconds)?;
    let expires_at = tx.now + grace_seconds as i64;
    let replaced = tx.execute(
        "UPDATE oauth_credentials SET expires_at = ?4
         WHERE client_org = ?1 AND client = ?2 AND client_version = ?3
           AND (expires_at IS NULL OR expires_at > ?4)",
        params![org, client, version, expires_at],
    )?;
    let client_id = format!("tgc_{}", random_token(12)?);
    let client_secret = new_secret()?;
    tx.execute(
        "INSERT INTO oauth_credentials
             (client_id, secret_sha256, client_org, client, client_version, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            client_id,
            secret_digest(&client_secret).to_vec(),
            org,
            client,
            version,
            tx.now
        ],
    )?;
    // The new credentials' `client_id` is a token subject at the gateways (and a shortened
    // grace takes older ones out).
    tx.gateway_changed();
    Ok(IssuedCredentials {
        client_id,
        client_secret,
        previous_expires_at: (replaced > 0).then_some(expires_at),
    })
}

fn check_grace(grace_seconds: u64) -> Result<(), Error> {
    if grace_seconds > MAX_GRACE_SECONDS {
        return Err(Error::unprocessable(
            "invalid-grace-period",
            format!("grace_seconds must be at most {MAX_GRACE_SECONDS} (30 days)"),
        ));
    }
    Ok(())
}

pub fn list_client_credentials(
    conn: &Db<'_>,
    org: &str,
    client: &str,
    version: &str,
) -> Result<Vec<CredentialsInfo>, Error> {
    get_version(conn, org, client, version)?;
    credentials_where(
        conn,
        "client_org = ?1 AND client = ?2 AND client_version = ?3",
        &[org, client, version],
    )
}

fn credentials_where(
    conn: &Db<'_>,
    condition: &str,
    args: &[&str],
) -> Result<Vec<CredentialsInfo>, Error> {
    let mut stmt = conn.prepare(&format!(
        "SELECT client_id, created_at, expires_at FROM oauth_credentials WHERE {condition}
         ORDER BY created_at, client_id"
    ))?;
    let rows = stmt
        .query_map(
            args.iter()
                .map(|a| a as &dyn ToValue)
                .collect::<Vec<_>>()
                .as_slice(),
            |r| {
                Ok(CredentialsInfo {
                    client_id: r.get(0)?,
                    created_at: r.get(1)?,
                    expires_at: r.get(2)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Revokes every credential of a client version: its tokens stop working at the gateways with
/// the next revision (their `client_id` subjects go), and later credentials do not bring them
/// back (they have another `client_id`).
pub fn delete_client_credentials(
    tx: &mut Tx<'_>,
    org: &str,
    client: &str,
    version: &str,
) -> Result<(), Error> {
    get_version(tx, org, client, version)?;
    let deleted = tx.execute(
        "DELETE FROM oauth_credentials
         WHERE client_org = ?1 AND client = ?2 AND client_version = ?3",
        params![org, client, version],
    )?;
    if deleted == 0 {
        return Err(Error::NotFound(format!(
            "credentials of client version {org}/{client}/{version}"
        )));
    }
    tx.gateway_changed();
    Ok(())
}

/// A service account's scopes as stored: sorted, each once, at least one, all known.
pub fn normalize_scopes(field: &str, scopes: &[String]) -> Result<Vec<String>, Error> {
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(Error::invalid_field(field, "name at least one scope"));
    }
    if let Some(bad) = scopes
        .iter()
        .find(|s| !MANAGEMENT_SCOPES.contains(&s.as_str()))
    {
        return Err(Error::invalid_field(
            field,
            format!(
                "unknown scope {bad:?}; known: {}",
                MANAGEMENT_SCOPES.join(", ")
            ),
        ));
    }
    Ok(scopes)
}

pub fn create_service_account(
    tx: &mut Tx<'_>,
    id: &str,
    scopes: &[String],
) -> Result<CreatedServiceAccount, Error> {
    check_slug("id", id)?;
    let scopes = normalize_scopes("scopes", scopes)?;
    if find_service_account(tx, id)?.is_some() {
        return Err(Error::AlreadyExists(format!("service account {id}")));
    }
    let scopes_json = serde_json::to_string(&scopes)
        .map_err(|e| Error::Internal(format!("encoding scopes: {e}")))?;
    tx.execute(
        "INSERT INTO service_accounts (id, scopes, created_at) VALUES (?1, ?2, ?3)",
        params![id, scopes_json, tx.now],
    )?;
    let client_id = format!("tga_{}", random_token(12)?);
    let client_secret = new_secret()?;
    tx.execute(
        "INSERT INTO oauth_credentials (client_id, secret_sha256, service_account, created_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![
            client_id,
            secret_digest(&client_secret).to_vec(),
            id,
            tx.now
        ],
    )?;
    Ok(CreatedServiceAccount {
        id: id.to_owned(),
        scopes,
        client_id,
        client_secret,
    })
}

pub fn find_service_account(conn: &Db<'_>, id: &str) -> Result<Option<ServiceAccount>, Error> {
    let Some((scopes, created_at)) = query_opt(
        conn,
        "SELECT scopes, created_at FROM service_accounts WHERE id = ?1",
        [id],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
    )?
    else {
        return Ok(None);
    };
    let scopes = serde_json::from_str(&scopes)
        .map_err(|e| Error::Internal(format!("stored scopes of {id}: {e}")))?;
    Ok(Some(ServiceAccount {
        id: id.to_owned(),
        scopes,
        created_at,
        credentials: credentials_where(conn, "service_account = ?1", &[id])?,
    }))
}

pub fn get_service_account(conn: &Db<'_>, id: &str) -> Result<ServiceAccount, Error> {
    required(find_service_account(conn, id)?, || {
        format!("service account {id}")
    })
}

pub fn list_service_accounts(conn: &Db<'_>) -> Result<Vec<ServiceAccount>, Error> {
    let mut stmt = conn.prepare("SELECT id FROM service_accounts ORDER BY id")?;
    let ids = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    ids.iter().map(|id| get_service_account(conn, id)).collect()
}

/// Deletes a service account and its credentials; its tokens are refused at once (the
/// management check wants the account and the token's credentials), also after an account
/// with the same id is created again.
pub fn delete_service_account(tx: &mut Tx<'_>, id: &str) -> Result<(), Error> {
    get_service_account(tx, id)?;
    tx.execute(
        "DELETE FROM oauth_credentials WHERE service_account = ?1",
        [id],
    )?;
    tx.execute("DELETE FROM service_accounts WHERE id = ?1", [id])?;
    Ok(())
}

/// Whom valid client credentials belong to.
#[derive(Debug, Clone)]
pub enum CredentialOwner {
    /// `org/client/version`
    ClientVersion(String),
    ServiceAccount {
        id: String,
        scopes: Vec<String>,
    },
}

/// Checks a `client_id` and secret. The secret's digest is compared in constant time, and an
/// unknown `client_id` costs the same comparison, so timing tells nothing about either.
pub fn authenticate(
    conn: &Db<'_>,
    client_id: &str,
    secret: &str,
    now: i64,
) -> Result<Option<CredentialOwner>, Error> {
    let row = query_opt(
        conn,
        "SELECT secret_sha256, client_org || '/' || client || '/' || client_version,
                service_account, expires_at
         FROM oauth_credentials WHERE client_id = ?1",
        [client_id],
        |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        },
    )?;
    let presented = secret_digest(secret);
    let stored = row.as_ref().map_or(vec![0u8; 32], |r| r.0.clone());
    let matches: bool = presented.as_slice().ct_eq(stored.as_slice()).into();
    let Some((_, client_version, account, expires_at)) = row else {
        return Ok(None);
    };
    if !matches || expires_at.is_some_and(|t| t <= now) {
        return Ok(None);
    }
    match (client_version, account) {
        (Some(id), _) => Ok(Some(CredentialOwner::ClientVersion(id))),
        (None, Some(id)) => {
            let scopes = get_service_account(conn, &id)?.scopes;
            Ok(Some(CredentialOwner::ServiceAccount { id, scopes }))
        }
        (None, None) => Err(Error::Internal(format!(
            "credentials {client_id} have no owner"
        ))),
    }
}

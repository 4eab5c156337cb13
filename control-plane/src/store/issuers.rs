//! External token issuers and client versions' identities at them. Each issuer is checked with
//! `core`'s own key decoding before it is stored, so a JWKS gateways cannot use is refused with
//! the field that is wrong; every change moves the revision.

use super::db::{params, Db};
use tollgate_core::snapshot::Issuer;
use tollgate_core::token::TrustedIssuers;

use super::clients::get_version;
use super::{query_opt, required, Tx};
use crate::error::Error;
use crate::model::{ExternalIssuer, IssuerSpec, Subject};

/// The snapshot form of a spec, validated as gateways will.
pub fn to_core(spec: &IssuerSpec) -> Result<Issuer, Error> {
    if spec.issuer.trim().is_empty() || spec.issuer.len() > 512 {
        return Err(Error::invalid_field("issuer", "1 to 512 characters"));
    }
    if spec.client_claim.is_empty() || spec.client_claim.len() > 128 {
        return Err(Error::invalid_field("client_claim", "1 to 128 characters"));
    }
    if spec
        .max_token_lifetime_seconds
        .is_some_and(|s| s == 0 || s > MAX_TOKEN_LIFETIME_SECONDS)
    {
        return Err(Error::invalid_field(
            "max_token_lifetime_seconds",
            format!("1 to {MAX_TOKEN_LIFETIME_SECONDS} (30 days)"),
        ));
    }
    let issuer = core_form(spec)
        .map_err(|e| Error::invalid_field("jwks", format!("not a JWKS document: {e}")))?;
    if issuer.jwks.keys.is_empty() {
        return Err(Error::invalid_field("jwks.keys", "name at least one key"));
    }
    TrustedIssuers::build(std::slice::from_ref(&issuer)).map_err(|e| {
        Error::unprocessable(
            "invalid-issuer",
            format!(
                "{}: {}",
                e.field.trim_start_matches("issuers[0]."),
                e.message
            ),
        )
    })?;
    Ok(issuer)
}

/// The longest `max_token_lifetime_seconds` an issuer may be given.
pub const MAX_TOKEN_LIFETIME_SECONDS: u64 = 30 * 24 * 3600;

fn core_form(spec: &IssuerSpec) -> Result<Issuer, serde_json::Error> {
    serde_json::from_value(serde_json::json!({
        "issuer": spec.issuer,
        "audiences": spec.audiences,
        "jwks": spec.jwks,
        "client_claim": spec.client_claim,
        "max_token_lifetime_seconds": spec.max_token_lifetime_seconds,
    }))
}

fn check_not_own(conn: &Db<'_>, issuer: &str) -> Result<(), Error> {
    let own = query_opt(
        conn,
        "SELECT issuer FROM own_issuer WHERE id = 1",
        [],
        |r| r.get::<_, String>(0),
    )?;
    if own.as_deref() == Some(issuer) {
        return Err(Error::conflict(
            "own-issuer",
            format!("{issuer} is tollgate's own issuer; it is always trusted"),
        ));
    }
    Ok(())
}

pub fn create(tx: &mut Tx<'_>, spec: &IssuerSpec) -> Result<ExternalIssuer, Error> {
    let issuer = to_core(spec)?;
    check_not_own(tx, &issuer.issuer)?;
    if find(tx, &issuer.issuer)?.is_some() {
        return Err(Error::AlreadyExists(format!("issuer {}", issuer.issuer)));
    }
    tx.execute(
        "INSERT INTO issuers (issuer, audiences, jwks, client_claim, created_at, updated_at,
                              max_token_lifetime)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
        params![
            issuer.issuer,
            json(&spec.audiences)?,
            json(&spec.jwks)?,
            spec.client_claim,
            tx.now,
            spec.max_token_lifetime_seconds.map(|s| s as i64),
        ],
    )?;
    tx.gateway_changed();
    get(tx, &issuer.issuer)
}

pub fn update(tx: &mut Tx<'_>, spec: &IssuerSpec) -> Result<ExternalIssuer, Error> {
    get(tx, &spec.issuer)?;
    to_core(spec)?;
    tx.execute(
        "UPDATE issuers SET audiences = ?2, jwks = ?3, client_claim = ?4, updated_at = ?5,
                            max_token_lifetime = ?6
         WHERE issuer = ?1",
        params![
            spec.issuer,
            json(&spec.audiences)?,
            json(&spec.jwks)?,
            spec.client_claim,
            tx.now,
            spec.max_token_lifetime_seconds.map(|s| s as i64),
        ],
    )?;
    tx.gateway_changed();
    get(tx, &spec.issuer)
}

/// Refused while client versions map to it: delete those subjects first.
pub fn delete(tx: &mut Tx<'_>, issuer: &str) -> Result<(), Error> {
    get(tx, issuer)?;
    let subjects: i64 = tx.query_row(
        "SELECT COUNT(*) FROM token_subjects WHERE issuer = ?1",
        [issuer],
        |r| r.get(0),
    )?;
    if subjects > 0 {
        return Err(Error::conflict(
            "issuer-in-use",
            format!("{subjects} client version subject(s) name issuer {issuer}; delete them first"),
        ));
    }
    tx.execute("DELETE FROM issuers WHERE issuer = ?1", [issuer])?;
    tx.gateway_changed();
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("encoding: {e}")))
}

pub fn find(conn: &Db<'_>, issuer: &str) -> Result<Option<ExternalIssuer>, Error> {
    let row = query_opt(
        conn,
        "SELECT audiences, jwks, client_claim, created_at, updated_at, max_token_lifetime
         FROM issuers WHERE issuer = ?1",
        [issuer],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        },
    )?;
    let Some((audiences, jwks, client_claim, created_at, updated_at, max_lifetime)) = row else {
        return Ok(None);
    };
    let stored = |e: serde_json::Error| Error::Internal(format!("stored issuer {issuer}: {e}"));
    Ok(Some(ExternalIssuer {
        issuer: issuer.to_owned(),
        audiences: serde_json::from_str(&audiences).map_err(stored)?,
        jwks: serde_json::from_str(&jwks).map_err(stored)?,
        client_claim,
        max_token_lifetime_seconds: max_lifetime.map(|s| s.max(1) as u64),
        created_at,
        updated_at,
    }))
}

pub fn get(conn: &Db<'_>, issuer: &str) -> Result<ExternalIssuer, Error> {
    required(find(conn, issuer)?, || format!("issuer {issuer}"))
}

pub fn list(conn: &Db<'_>) -> Result<Vec<ExternalIssuer>, Error> {
    let mut stmt = conn.prepare("SELECT issuer FROM issuers ORDER BY issuer")?;
    let ids = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    ids.iter().map(|i| get(conn, i)).collect()
}

/// Every external issuer in the snapshot's form.
pub fn all_core(conn: &Db<'_>) -> Result<Vec<Issuer>, Error> {
    list(conn)?
        .iter()
        .map(|i| {
            core_form(&i.spec())
                .map_err(|e| Error::Internal(format!("stored issuer {}: {e}", i.issuer)))
        })
        .collect()
}

/// A subject's value is the issuer's client claim: 1 to 512 characters.
pub fn check_subject_value(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.len() > 512 {
        return Err(Error::invalid_field(field, "1 to 512 characters"));
    }
    Ok(())
}

pub fn add_subject(
    tx: &mut Tx<'_>,
    org: &str,
    client: &str,
    version: &str,
    issuer: &str,
    value: &str,
) -> Result<Subject, Error> {
    get_version(tx, org, client, version)?;
    check_not_own(tx, issuer).map_err(|_| {
        Error::unprocessable(
            "own-issuer-subject",
            "subjects of tollgate's own issuer come from client credentials (POST …/credentials)",
        )
    })?;
    get(tx, issuer)?;
    check_subject_value("value", value)?;
    let taken = query_opt(
        tx,
        "SELECT org || '/' || client || '/' || version FROM token_subjects
         WHERE issuer = ?1 AND value = ?2",
        [issuer, value],
        |r| r.get::<_, String>(0),
    )?;
    if let Some(owner) = taken {
        return Err(Error::AlreadyExists(format!(
            "subject {value:?} of issuer {issuer} (mapped to {owner})"
        )));
    }
    tx.execute(
        "INSERT INTO token_subjects (issuer, value, org, client, version, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![issuer, value, org, client, version, tx.now],
    )?;
    tx.gateway_changed();
    Ok(Subject {
        issuer: issuer.to_owned(),
        value: value.to_owned(),
        created_at: tx.now,
    })
}

pub fn list_subjects(
    conn: &Db<'_>,
    org: &str,
    client: &str,
    version: &str,
) -> Result<Vec<Subject>, Error> {
    get_version(conn, org, client, version)?;
    let mut stmt = conn.prepare(
        "SELECT issuer, value, created_at FROM token_subjects
         WHERE org = ?1 AND client = ?2 AND version = ?3 ORDER BY issuer, value",
    )?;
    let rows = stmt
        .query_map([org, client, version], |r| {
            Ok(Subject {
                issuer: r.get(0)?,
                value: r.get(1)?,
                created_at: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn delete_subject(
    tx: &mut Tx<'_>,
    org: &str,
    client: &str,
    version: &str,
    issuer: &str,
    value: &str,
) -> Result<(), Error> {
    let deleted = tx.execute(
        "DELETE FROM token_subjects
         WHERE org = ?1 AND client = ?2 AND version = ?3 AND issuer = ?4 AND value = ?5",
        params![org, client, version, issuer, value],
    )?;
    if deleted == 0 {
        return Err(Error::NotFound(format!(
            "subject {value:?} of issuer {issuer} on client version {org}/{client}/{version}"
        )));
    }
    tx.gateway_changed();
    Ok(())
}

/// `(org/client/version, issuer, value)` of every external subject.
pub fn all_subjects(conn: &Db<'_>) -> Result<Vec<(String, String, String)>, Error> {
    let mut stmt = conn.prepare(
        "SELECT org || '/' || client || '/' || version, issuer, value FROM token_subjects",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

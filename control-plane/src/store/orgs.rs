//! Organizations and the things they own by id: plans, APIs and clients. None of these reach
//! gateways by themselves (only their versions do), so nothing here moves the revision.

use super::db::{self, params, Db, Row};

use super::{query_opt, required, PageRequest, Tx};
use crate::error::Error;
use crate::model::{Org, Owned, Page};

pub fn create_org(tx: &mut Tx<'_>, id: &str, name: &str) -> Result<Org, Error> {
    if find_org(tx, id)?.is_some() {
        return Err(Error::AlreadyExists(format!("org {id}")));
    }
    tx.execute(
        "INSERT INTO orgs (id, name, created_at) VALUES (?1, ?2, ?3)",
        params![id, name, tx.now],
    )?;
    get_org(tx, id)
}

pub fn rename_org(tx: &mut Tx<'_>, id: &str, name: &str) -> Result<Org, Error> {
    get_org(tx, id)?;
    tx.execute("UPDATE orgs SET name = ?2 WHERE id = ?1", params![id, name])?;
    get_org(tx, id)
}

pub fn find_org(conn: &Db<'_>, id: &str) -> Result<Option<Org>, Error> {
    query_opt(
        conn,
        "SELECT id, name, created_at FROM orgs WHERE id = ?1",
        [id],
        |r| {
            Ok(Org {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at: r.get(2)?,
            })
        },
    )
}

pub fn get_org(conn: &Db<'_>, id: &str) -> Result<Org, Error> {
    required(find_org(conn, id)?, || format!("org {id}"))
}

pub fn list_orgs(conn: &Db<'_>, page: &PageRequest) -> Result<Page<Org>, Error> {
    let mut stmt =
        conn.prepare("SELECT id, name, created_at FROM orgs WHERE id > ?1 ORDER BY id LIMIT ?2")?;
    let rows = stmt
        .query_map(
            params![page.after.as_deref().unwrap_or(""), page.sql_limit()],
            |r| {
                let org = Org {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                };
                Ok((org.id.clone(), org))
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page.page(rows))
}

/// The three kinds of thing an org owns by id, each with its own table of the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnedKind {
    Plan,
    Api,
    Client,
}

impl OwnedKind {
    fn table(self) -> &'static str {
        match self {
            OwnedKind::Plan => "plans",
            OwnedKind::Api => "apis",
            OwnedKind::Client => "clients",
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            OwnedKind::Plan => "plan",
            OwnedKind::Api => "api",
            OwnedKind::Client => "client",
        }
    }
}

pub fn create_owned(
    tx: &mut Tx<'_>,
    kind: OwnedKind,
    org: &str,
    id: &str,
    name: &str,
) -> Result<Owned, Error> {
    get_org(tx, org)?;
    if find_owned(tx, kind, org, id)?.is_some() {
        return Err(Error::AlreadyExists(format!("{} {org}/{id}", kind.word())));
    }
    tx.execute(
        &format!(
            "INSERT INTO {} (org, id, name, created_at) VALUES (?1, ?2, ?3, ?4)",
            kind.table()
        ),
        params![org, id, name, tx.now],
    )?;
    get_owned(tx, kind, org, id)
}

pub fn rename_owned(
    tx: &mut Tx<'_>,
    kind: OwnedKind,
    org: &str,
    id: &str,
    name: &str,
) -> Result<Owned, Error> {
    get_owned(tx, kind, org, id)?;
    tx.execute(
        &format!(
            "UPDATE {} SET name = ?3 WHERE org = ?1 AND id = ?2",
            kind.table()
        ),
        params![org, id, name],
    )?;
    get_owned(tx, kind, org, id)
}

pub fn find_owned(
    conn: &Db<'_>,
    kind: OwnedKind,
    org: &str,
    id: &str,
) -> Result<Option<Owned>, Error> {
    query_opt(
        conn,
        &format!(
            "SELECT org, id, name, created_at FROM {} WHERE org = ?1 AND id = ?2",
            kind.table()
        ),
        [org, id],
        owned_row,
    )
}

pub fn get_owned(conn: &Db<'_>, kind: OwnedKind, org: &str, id: &str) -> Result<Owned, Error> {
    required(find_owned(conn, kind, org, id)?, || {
        format!("{} {org}/{id}", kind.word())
    })
}

pub fn list_owned(
    conn: &Db<'_>,
    kind: OwnedKind,
    org: &str,
    page: &PageRequest,
) -> Result<Page<Owned>, Error> {
    get_org(conn, org)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT org, id, name, created_at FROM {} WHERE org = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        kind.table()
    ))?;
    let rows = stmt
        .query_map(
            params![org, page.after.as_deref().unwrap_or(""), page.sql_limit()],
            |r| {
                let owned = owned_row(r)?;
                Ok((owned.id.clone(), owned))
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page.page(rows))
}

fn owned_row(r: &Row<'_>) -> db::Result<Owned> {
    Ok(Owned {
        org: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        created_at: r.get(3)?,
    })
}

//! Contracts: a client version may call a published private API version through one of the
//! plans that version offers. Ids come from AUTOINCREMENT and are never reused, because a
//! contract id names the rate-limit counter at the gateways.

use super::db::{self, params, Db, Row};

use super::apis::{self, not_published};
use super::{clients, plans, query_opt, required, PageRequest, Tx};
use crate::error::Error;
use crate::model::{ApiVersionStatus, Contract, OfferedPlan, Page, PlanVersionStatus};

/// The parties of a contract, all ids already checked for form.
#[derive(Debug, Clone)]
pub struct ContractTerms<'a> {
    pub client_org: &'a str,
    pub client: &'a str,
    pub client_version: &'a str,
    pub api_org: &'a str,
    pub api: &'a str,
    pub api_version: &'a str,
    pub plan_org: &'a str,
    pub plan: &'a str,
    /// None: the version of `plan` that the API version offers.
    pub plan_version: Option<&'a str>,
}

pub fn create(tx: &mut Tx<'_>, terms: &ContractTerms<'_>) -> Result<Contract, Error> {
    clients::get_version(tx, terms.client_org, terms.client, terms.client_version)?;
    let api = apis::get_version(tx, terms.api_org, terms.api, terms.api_version)?;
    if api.status != ApiVersionStatus::Published {
        return Err(not_published(&api, "contracted"));
    }
    if api.public {
        return Err(Error::conflict(
            "contract-with-public-api",
            format!(
                "api version {}/{}/{} is public: anyone may call it, so it takes no contracts",
                terms.api_org, terms.api, terms.api_version
            ),
        ));
    }
    let Some(offered) = api.plans.iter().find(|p| {
        p.org == terms.plan_org
            && p.plan == terms.plan
            && terms.plan_version.is_none_or(|v| p.version == v)
    }) else {
        return Err(plan_not_offered(tx, terms, &api.plans)?);
    };
    if let Some(existing) = find_for(tx, terms)? {
        return Err(Error::conflict(
            "contract-exists",
            format!(
                "client version {}/{}/{} already has contract {} with api version {}/{}/{}",
                terms.client_org,
                terms.client,
                terms.client_version,
                existing,
                terms.api_org,
                terms.api,
                terms.api_version
            ),
        ));
    }
    let id: i64 = tx.query_row(
        "INSERT INTO contracts (client_org, client, client_version, api_org, api, api_version,
                                plan_org, plan, plan_version, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
        params![
            terms.client_org,
            terms.client,
            terms.client_version,
            terms.api_org,
            terms.api,
            terms.api_version,
            offered.org,
            offered.plan,
            offered.version,
            tx.now
        ],
        |r| r.get(0),
    )?;
    let id = id as u64;
    tx.gateway_changed();
    get(tx, terms.client_org, terms.client, terms.client_version, id)
}

/// Why the API version cannot be contracted through the plan the terms name, with what it
/// offers instead; a named plan version that is a draft or does not exist is said to be one.
fn plan_not_offered(
    conn: &Db<'_>,
    terms: &ContractTerms<'_>,
    offers: &[OfferedPlan],
) -> Result<Error, Error> {
    let api = format!("{}/{}/{}", terms.api_org, terms.api, terms.api_version);
    let offers: Vec<String> = offers
        .iter()
        .map(|p| format!("{}/{}/{}", p.org, p.plan, p.version))
        .collect();
    let offers = offers.join(", ");
    let Some(version) = terms.plan_version else {
        return Ok(Error::unprocessable(
            "plan-not-offered",
            format!(
                "plan: api version {api} is not offered through plan {}/{}; it offers {offers}",
                terms.plan_org, terms.plan
            ),
        ));
    };
    let named = format!("{}/{}/{version}", terms.plan_org, terms.plan);
    let why = match plans::find_version(conn, terms.plan_org, terms.plan, version)? {
        None => format!(" (plan version {named} does not exist)"),
        Some(v) if v.status == PlanVersionStatus::Draft => {
            format!(" (plan version {named} is a draft)")
        }
        Some(_) => String::new(),
    };
    Ok(Error::unprocessable(
        "plan-not-offered",
        format!(
            "plan_version: api version {api} is not offered through plan version \
             {named}{why}; it offers {offers}"
        ),
    ))
}

/// The id of the contract between this client version and API version, if any.
pub fn find_for(conn: &Db<'_>, terms: &ContractTerms<'_>) -> Result<Option<u64>, Error> {
    query_opt(
        conn,
        "SELECT id FROM contracts
         WHERE client_org = ?1 AND client = ?2 AND client_version = ?3
           AND api_org = ?4 AND api = ?5 AND api_version = ?6",
        params![
            terms.client_org,
            terms.client,
            terms.client_version,
            terms.api_org,
            terms.api,
            terms.api_version
        ],
        |r| r.get::<_, i64>(0).map(|id| id as u64),
    )
}

pub fn delete(
    tx: &mut Tx<'_>,
    client_org: &str,
    client: &str,
    client_version: &str,
    id: u64,
) -> Result<(), Error> {
    get(tx, client_org, client, client_version, id)?;
    tx.execute("DELETE FROM contracts WHERE id = ?1", [id as i64])?;
    tx.gateway_changed();
    Ok(())
}

const COLUMNS: &str = "id, client_org, client, client_version, api_org, api, api_version, \
                       plan_org, plan, plan_version, created_at";

fn contract_row(r: &Row<'_>) -> db::Result<Contract> {
    Ok(Contract {
        id: r.get::<_, i64>(0)? as u64,
        client_org: r.get(1)?,
        client: r.get(2)?,
        client_version: r.get(3)?,
        api_org: r.get(4)?,
        api: r.get(5)?,
        api_version: r.get(6)?,
        plan_org: r.get(7)?,
        plan: r.get(8)?,
        plan_version: r.get(9)?,
        created_at: r.get(10)?,
    })
}

/// A contract of this client version; another client version's contract is "not found".
pub fn get(
    conn: &Db<'_>,
    client_org: &str,
    client: &str,
    client_version: &str,
    id: u64,
) -> Result<Contract, Error> {
    let found = query_opt(
        conn,
        &format!(
            "SELECT {COLUMNS} FROM contracts
             WHERE id = ?1 AND client_org = ?2 AND client = ?3 AND client_version = ?4"
        ),
        params![id as i64, client_org, client, client_version],
        contract_row,
    )?;
    required(found, || {
        format!("contract {id} of client version {client_org}/{client}/{client_version}")
    })
}

pub fn list(
    conn: &Db<'_>,
    client_org: &str,
    client: &str,
    client_version: &str,
    page: &PageRequest,
) -> Result<Page<Contract>, Error> {
    clients::get_version(conn, client_org, client, client_version)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM contracts
         WHERE client_org = ?1 AND client = ?2 AND client_version = ?3 AND id > ?4
         ORDER BY id LIMIT ?5"
    ))?;
    let rows = stmt
        .query_map(
            params![
                client_org,
                client,
                client_version,
                page.after_seq()?,
                page.sql_limit()
            ],
            |r| {
                let c = contract_row(r)?;
                Ok((c.id.to_string(), c))
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page.page(rows))
}

//! The declarative catalogue: the document `tollgate apply -f` reads and `tollgate export`
//! writes (YAML on the command line, JSON on the wire), and the engine that converges the
//! store towards it.
//!
//! `apply` is additive and idempotent: it creates what is missing, edits drafts that differ,
//! replaces an external issuer's settings that differ (as `PUT` does), moves lifecycles forward
//! (lock, publish, retire) and never deletes anything. Everything runs in one transaction, so a
//! catalogue applies whole or not at all and gateways see one new revision — or none, when the
//! store already matches. Secrets cannot be declared (they are generated): the report returns
//! the keys of client versions and the credentials of service accounts it created, once.
//!
//! Issuers, service accounts and subjects reuse the management API's request types
//! ([`IssuerSpec`], [`CreateServiceAccount`], [`CreateSubject`]), so an entry reads as the body
//! its `POST` takes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use tollgate_core::snapshot::{AuthMode, RateLimit, Routing};
use utoipa::ToSchema;

use crate::domain::{check_name, check_slug, check_version, normalize_limits, VersionRef};
use crate::error::Error;
use crate::model::{
    ApiVersionStatus, CreateApiVersion, CreateServiceAccount, CreateSubject, CreatedServiceAccount,
    IssuerSpec, PlanChoice, PlanVersionStatus,
};
use crate::store::contracts::{self, ContractTerms};
use crate::store::orgs::{self, OwnedKind};
use crate::store::{apis, clients, issuers, plans, tokens, PageRequest, Tx};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    /// External token issuers gateways trust, as `POST /v1/issuers` takes them. An entry is
    /// the issuer's whole settings: one that differs from the store replaces them, as `PUT`
    /// does (an omitted `client_claim` or `max_token_lifetime_seconds` takes its default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<IssuerSpec>,
    #[serde(default)]
    pub orgs: Vec<OrgEntry>,
    /// Service accounts (`{id, scopes}`); their credentials are issued on creation and
    /// returned once in the report, never declared or exported. Scopes cannot change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<CreateServiceAccount>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgEntry {
    pub id: String,
    /// Defaults to the id when created; left alone when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<PlanEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apis: Vec<ApiEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ClientEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanEntry {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub versions: Vec<PlanVersionEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanVersionEntry {
    #[serde(deserialize_with = "version_name")]
    pub version: String,
    #[serde(default)]
    pub limits: Vec<RateLimit>,
    /// Locking is one-way: `true` locks a draft; `false` on a locked version is refused.
    #[serde(default)]
    pub locked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiEntry {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub versions: Vec<ApiVersionEntry>,
}

impl ApiVersionEntry {
    /// What this entry asks for, in the one shape every path validates
    /// ([`CreateApiVersion`]); its plans are named `org/plan/version`.
    fn settings(&self) -> Result<CreateApiVersion, Error> {
        let plans = self
            .plans
            .iter()
            .map(|p| {
                let r = VersionRef::parse("plans", p)?;
                Ok(PlanChoice {
                    org: Some(r.org),
                    plan: r.name,
                    version: r.version,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(CreateApiVersion {
            version: self.version.clone(),
            public: self.public,
            routing: self.routing.clone(),
            plans,
            forward_api_key: self.forward_api_key,
            auth: self.auth,
        })
    }
}

fn draft() -> ApiVersionStatus {
    ApiVersionStatus::Draft
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiVersionEntry {
    #[serde(deserialize_with = "version_name")]
    pub version: String,
    /// `draft` (default), `published` or `retired`; only ever moves forward.
    #[serde(default = "draft")]
    pub status: ApiVersionStatus,
    #[serde(default)]
    pub public: bool,
    pub routing: Routing,
    /// Offered plan versions as `org/plan/version`.
    #[serde(default)]
    pub plans: Vec<String>,
    #[serde(default)]
    pub forward_api_key: bool,
    /// `api_key` (default), `jwt` or `api_key_or_jwt`.
    #[serde(default, skip_serializing_if = "AuthMode::is_default")]
    pub auth: AuthMode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub versions: Vec<ClientVersionEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientVersionEntry {
    #[serde(deserialize_with = "version_name")]
    pub version: String,
    #[serde(default)]
    pub contracts: Vec<ContractEntry>,
    /// Its identities at external issuers (`{issuer, value}`): the issuer's tokens whose
    /// client claim equals `value` act as this client version. The issuer is declared under
    /// `issuers` or already trusted. Its own client credentials are issued, not declared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<CreateSubject>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractEntry {
    /// `org/api/version`
    pub api: String,
    /// `org/plan/version`, one the API version offers.
    pub plan: String,
}

/// What an apply did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ApplyReport {
    /// One line per change, in the order made; empty when the store already matched.
    pub changes: Vec<String>,
    /// Keys of the client versions this apply created, shown this once.
    pub issued_keys: Vec<IssuedKey>,
    /// Credentials of the service accounts this apply created, shown this once.
    #[serde(default)]
    pub issued_credentials: Vec<CreatedServiceAccount>,
    /// The snapshot revision after the apply.
    pub revision: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedKey {
    /// `org/client/version`
    pub client_version: String,
    pub api_key: String,
}

/// YAML reads `version: 1` as a number; a version is a name, so integers are taken as their
/// digits. Floats are refused (`1.10` would silently become `1.1`).
fn version_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct VersionVisitor;
    impl Visitor<'_> for VersionVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a version name (string or integer; quote versions like \"1.0\")")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    deserializer.deserialize_any(VersionVisitor)
}

/// Fails on the first entry listed twice, naming where.
fn no_duplicates<'a>(at: &str, ids: impl Iterator<Item = &'a str>) -> Result<(), Error> {
    let mut seen = BTreeSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(Error::unprocessable(
                "listed-twice",
                format!("{at}: {id} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// Checks every id, version, setting and reference for form before touching the store.
pub fn check(catalogue: &Catalogue) -> Result<(), Error> {
    no_duplicates(
        "issuers",
        catalogue.issuers.iter().map(|i| i.issuer.as_str()),
    )?;
    for issuer in &catalogue.issuers {
        issuers::to_core(issuer).map_err(|e| e.at(format!("issuers[{}]", issuer.issuer)))?;
    }
    no_duplicates(
        "service_accounts",
        catalogue.service_accounts.iter().map(|a| a.id.as_str()),
    )?;
    for account in &catalogue.service_accounts {
        check_slug("service_accounts[].id", &account.id)?;
        tokens::normalize_scopes(
            &format!("service_accounts[{}].scopes", account.id),
            &account.scopes,
        )?;
    }
    // One identity maps to one client version, across the whole document.
    let mut subjects = BTreeMap::new();
    no_duplicates("orgs", catalogue.orgs.iter().map(|o| o.id.as_str()))?;
    for org in &catalogue.orgs {
        check_slug("orgs[].id", &org.id)?;
        let at = format!("orgs[{}]", org.id);
        if let Some(name) = &org.name {
            check_name(&format!("{at}.name"), name)?;
        }
        no_duplicates(
            &format!("{at}.plans"),
            org.plans.iter().map(|p| p.id.as_str()),
        )?;
        no_duplicates(
            &format!("{at}.apis"),
            org.apis.iter().map(|p| p.id.as_str()),
        )?;
        no_duplicates(
            &format!("{at}.clients"),
            org.clients.iter().map(|p| p.id.as_str()),
        )?;
        for plan in &org.plans {
            let at = format!("{at}.plans[{}]", plan.id);
            check_owned(&at, &plan.id, plan.name.as_deref())?;
            no_duplicates(
                &format!("{at}.versions"),
                plan.versions.iter().map(|v| v.version.as_str()),
            )?;
            for v in &plan.versions {
                check_version(&format!("{at}.versions[].version"), &v.version)?;
                normalize_limits(&format!("{at}.versions[{}].limits", v.version), &v.limits)?;
            }
        }
        for api in &org.apis {
            let at = format!("{at}.apis[{}]", api.id);
            check_owned(&at, &api.id, api.name.as_deref())?;
            no_duplicates(
                &format!("{at}.versions"),
                api.versions.iter().map(|v| v.version.as_str()),
            )?;
            for v in &api.versions {
                check_version(&format!("{at}.versions[].version"), &v.version)?;
                for plan in &v.plans {
                    VersionRef::parse(&format!("{at}.versions[{}].plans", v.version), plan)?;
                }
            }
        }
        for client in &org.clients {
            let at = format!("{at}.clients[{}]", client.id);
            check_owned(&at, &client.id, client.name.as_deref())?;
            no_duplicates(
                &format!("{at}.versions"),
                client.versions.iter().map(|v| v.version.as_str()),
            )?;
            for v in &client.versions {
                check_version(&format!("{at}.versions[].version"), &v.version)?;
                let version_at = format!("{at}.versions[{}]", v.version);
                let at = format!("{version_at}.contracts");
                no_duplicates(&at, v.contracts.iter().map(|c| c.api.as_str()))?;
                for c in &v.contracts {
                    VersionRef::parse(&format!("{at}[].api"), &c.api)?;
                    VersionRef::parse(&format!("{at}[].plan"), &c.plan)?;
                }
                for subject in &v.subjects {
                    let at = format!("{version_at}.subjects[{}]", subject_id(subject));
                    issuers::check_subject_value(&format!("{at}.value"), &subject.value)?;
                    if subject.issuer.is_empty() {
                        return Err(Error::invalid_field(
                            format!("{at}.issuer"),
                            "name an issuer",
                        ));
                    }
                    let key = (subject.issuer.as_str(), subject.value.as_str());
                    if let Some(first) = subjects.insert(key, version_at.clone()) {
                        return Err(Error::unprocessable(
                            "listed-twice",
                            format!(
                                "{at}: {} is listed twice (also under {first}); an identity \
                                 acts as one client version",
                                subject_id(subject)
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// How a subject is named in error paths: `value@issuer`.
fn subject_id(subject: &CreateSubject) -> String {
    format!("{}@{}", subject.value, subject.issuer)
}

fn check_owned(at: &str, id: &str, name: Option<&str>) -> Result<(), Error> {
    check_slug(&format!("{at}.id"), id)?;
    if let Some(name) = name {
        check_name(&format!("{at}.name"), name)?;
    }
    Ok(())
}

/// Converges the store towards `catalogue` inside `tx`. Call [`check`] first.
pub fn apply(tx: &mut Tx<'_>, catalogue: &Catalogue) -> Result<ApplyReport, Error> {
    let mut report = ApplyReport::default();
    let mut deferred = Deferred::default();
    // Issuers first: client versions' subjects name them.
    for issuer in &catalogue.issuers {
        apply_issuer(tx, issuer, &mut report)
            .map_err(|e| e.at(format!("issuers[{}]", issuer.issuer)))?;
    }
    for org in &catalogue.orgs {
        apply_org(tx, org, &mut report).map_err(|e| e.at(format!("orgs[{}]", org.id)))?;
    }
    // Plans before APIs (APIs offer locked plans), APIs before clients (contracts need
    // published APIs); across orgs, since an API may offer another org's plan.
    for org in &catalogue.orgs {
        for plan in &org.plans {
            apply_plan(tx, &org.id, plan, &mut report)
                .map_err(|e| e.at(format!("orgs[{}].plans[{}]", org.id, plan.id)))?;
        }
    }
    for org in &catalogue.orgs {
        for api in &org.apis {
            let at = format!("orgs[{}].apis[{}]", org.id, api.id);
            apply_api(tx, &org.id, api, &at, &mut deferred, &mut report)
                .map_err(|e| e.at(at.clone()))?;
        }
    }
    for org in &catalogue.orgs {
        for client in &org.clients {
            let at = format!("orgs[{}].clients[{}]", org.id, client.id);
            apply_client(tx, &org.id, client, &at, &mut deferred, &mut report)
                .map_err(|e| e.at(at.clone()))?;
        }
    }
    deferred.finish(tx, &mut report)?;
    for account in &catalogue.service_accounts {
        apply_service_account(tx, account, &mut report)
            .map_err(|e| e.at(format!("service_accounts[{}]", account.id)))?;
    }
    Ok(report)
}

/// Creates the issuer, or replaces its settings as `PUT /v1/issuers/{issuer}` does when they
/// differ.
fn apply_issuer(tx: &mut Tx<'_>, spec: &IssuerSpec, report: &mut ApplyReport) -> Result<(), Error> {
    match issuers::find(tx, &spec.issuer)? {
        None => {
            issuers::create(tx, spec)?;
            report
                .changes
                .push(format!("created issuer {}", spec.issuer));
        }
        Some(existing) if existing.spec() == *spec => {}
        Some(_) => {
            issuers::update(tx, spec)?;
            report
                .changes
                .push(format!("updated issuer {}", spec.issuer));
        }
    }
    Ok(())
}

/// Creates the account (its credentials go into the report, once). The API cannot change an
/// account's scopes, so neither does apply: other scopes are refused.
fn apply_service_account(
    tx: &mut Tx<'_>,
    account: &CreateServiceAccount,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    let scopes = tokens::normalize_scopes("scopes", &account.scopes)?;
    match tokens::find_service_account(tx, &account.id)? {
        None => {
            let created = tokens::create_service_account(tx, &account.id, &scopes)?;
            report
                .changes
                .push(format!("created service account {}", account.id));
            report.issued_credentials.push(created);
        }
        Some(existing) if existing.scopes == scopes => {}
        Some(existing) => {
            return Err(Error::conflict(
                "service-account-exists",
                format!(
                    "service account {} already exists with scopes {}; scopes cannot change: \
                     delete the account and apply again (it gets new credentials)",
                    account.id,
                    existing.scopes.join(", ")
                ),
            ))
        }
    }
    Ok(())
}

/// Lifecycle steps held back so that any export applies to an empty store too: contracts are
/// made while their API version is still published, retirements follow them, and a version
/// whose route is held by a version being retired is published after that retirement (then
/// its contracts are made, then it is retired if asked).
#[derive(Default)]
struct Deferred {
    /// Versions to retire, with where they were declared.
    retire: Vec<(VersionRef, String)>,
    /// Versions whose publication collided with (or was shadowed by) a published version.
    publish: Vec<(VersionRef, String)>,
    /// Contracts with a version in `publish`: (client version, api, plan, where).
    contracts: Vec<(VersionRef, VersionRef, VersionRef, String)>,
}

impl Deferred {
    fn awaits_publication(&self, api: &VersionRef) -> bool {
        self.publish.iter().any(|(r, _)| r == api)
    }

    fn finish(self, tx: &mut Tx<'_>, report: &mut ApplyReport) -> Result<(), Error> {
        let retire = |tx: &mut Tx<'_>, r: &VersionRef, at: &str, report: &mut ApplyReport| {
            apis::retire_version(tx, &r.org, &r.name, &r.version).map_err(|e| e.at(at))?;
            report.changes.push(format!("retired api version {r}"));
            Ok::<(), Error>(())
        };
        for (r, at) in &self.retire {
            if !self.awaits_publication(r) {
                retire(tx, r, at, report)?;
            }
        }
        for (r, at) in &self.publish {
            apis::publish_version(tx, &r.org, &r.name, &r.version).map_err(|e| e.at(at))?;
            report.changes.push(format!("published api version {r}"));
        }
        for (client, api, plan, at) in &self.contracts {
            create_contract(tx, client, api, plan, report).map_err(|e| e.at(at))?;
        }
        for (r, at) in &self.retire {
            if self.awaits_publication(r) {
                retire(tx, r, at, report)?;
            }
        }
        Ok(())
    }
}

fn apply_org(tx: &mut Tx<'_>, org: &OrgEntry, report: &mut ApplyReport) -> Result<(), Error> {
    match orgs::find_org(tx, &org.id)? {
        None => {
            orgs::create_org(tx, &org.id, org.name.as_deref().unwrap_or(&org.id))?;
            report.changes.push(format!("created org {}", org.id));
        }
        Some(existing) => {
            if let Some(name) = org.name.as_deref().filter(|n| *n != existing.name) {
                orgs::rename_org(tx, &org.id, name)?;
                report.changes.push(format!("renamed org {}", org.id));
            }
        }
    }
    Ok(())
}

fn apply_owned(
    tx: &mut Tx<'_>,
    kind: OwnedKind,
    org: &str,
    id: &str,
    name: Option<&str>,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    match orgs::find_owned(tx, kind, org, id)? {
        None => {
            orgs::create_owned(tx, kind, org, id, name.unwrap_or(id))?;
            report
                .changes
                .push(format!("created {} {org}/{id}", kind.word()));
        }
        Some(existing) => {
            if let Some(name) = name.filter(|n| *n != existing.name) {
                orgs::rename_owned(tx, kind, org, id, name)?;
                report
                    .changes
                    .push(format!("renamed {} {org}/{id}", kind.word()));
            }
        }
    }
    Ok(())
}

fn apply_plan(
    tx: &mut Tx<'_>,
    org: &str,
    plan: &PlanEntry,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    apply_owned(
        tx,
        OwnedKind::Plan,
        org,
        &plan.id,
        plan.name.as_deref(),
        report,
    )?;
    for entry in &plan.versions {
        let name = format!("{org}/{}/{}", plan.id, entry.version);
        let limits = normalize_limits("limits", &entry.limits)?;
        let current = match plans::find_version(tx, org, &plan.id, &entry.version)? {
            None => {
                report.changes.push(format!("created plan version {name}"));
                plans::create_version(tx, org, &plan.id, &entry.version, &limits)?
            }
            Some(current) if current.limits == limits => current,
            Some(current) if current.status == PlanVersionStatus::Draft => {
                report.changes.push(format!("updated plan version {name}"));
                plans::update_version(tx, org, &plan.id, &entry.version, &limits)?
            }
            Some(_) => {
                return Err(Error::conflict(
                    "plan-version-locked",
                    format!(
                        "plan version {name} is locked with other limits; declare a new version"
                    ),
                ))
            }
        };
        match (current.status, entry.locked) {
            (PlanVersionStatus::Draft, true) => {
                plans::lock_version(tx, org, &plan.id, &entry.version)?;
                report.changes.push(format!("locked plan version {name}"));
            }
            (PlanVersionStatus::Locked, false) => {
                return Err(Error::conflict(
                    "plan-version-locked",
                    format!(
                    "plan version {name} is locked and locking is one-way; declare locked: true"
                ),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn apply_api(
    tx: &mut Tx<'_>,
    org: &str,
    api: &ApiEntry,
    at: &str,
    deferred: &mut Deferred,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    apply_owned(
        tx,
        OwnedKind::Api,
        org,
        &api.id,
        api.name.as_deref(),
        report,
    )?;
    for entry in &api.versions {
        let name = format!("{org}/{}/{}", api.id, entry.version);
        let spec = apis::ApiVersionSpec::resolve(tx, org, &entry.settings()?)
            .map_err(|e| e.at(format!("versions[{}]", entry.version)))?;
        let current = match apis::find_version(tx, org, &api.id, &entry.version)? {
            None => {
                report.changes.push(format!("created api version {name}"));
                apis::create_version(tx, org, &api.id, &entry.version, &spec)?
            }
            Some(current) if apis::ApiVersionSpec::of(&current) == spec => current,
            Some(current) if current.status == ApiVersionStatus::Draft => {
                report.changes.push(format!("updated api version {name}"));
                apis::update_version(tx, org, &api.id, &entry.version, &spec)?
            }
            Some(current) => {
                return Err(Error::conflict(
                    "api-version-not-draft",
                    format!(
                        "api version {name} is {} with other settings; only drafts can change, \
                         declare a new version",
                        current.status.as_str()
                    ),
                ))
            }
        };
        let rank = |s: ApiVersionStatus| match s {
            ApiVersionStatus::Draft => 0,
            ApiVersionStatus::Published => 1,
            ApiVersionStatus::Retired => 2,
        };
        if rank(entry.status) < rank(current.status) {
            return Err(Error::conflict(
                "api-version-not-draft",
                format!(
                    "api version {name} is {}; it cannot go back to {}",
                    current.status.as_str(),
                    entry.status.as_str()
                ),
            ));
        }
        let version = VersionRef::new(org, &api.id, &entry.version);
        let version_at = format!("{at}.versions[{}]", entry.version);
        if current.status == ApiVersionStatus::Draft && rank(entry.status) >= 1 {
            match apis::publish_version(tx, org, &api.id, &entry.version) {
                Ok(_) => report.changes.push(format!("published api version {name}")),
                // Possibly held (or shadowed) by a version this same apply retires: try again
                // after that.
                Err(e) if matches!(e.kind(), "routing-collision" | "route-shadows-private") => {
                    deferred.publish.push((version.clone(), version_at.clone()))
                }
                Err(e) => return Err(e),
            }
        }
        if current.status != ApiVersionStatus::Retired && entry.status == ApiVersionStatus::Retired
        {
            deferred.retire.push((version, version_at));
        }
    }
    Ok(())
}

fn apply_client(
    tx: &mut Tx<'_>,
    org: &str,
    client: &ClientEntry,
    at: &str,
    deferred: &mut Deferred,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    apply_owned(
        tx,
        OwnedKind::Client,
        org,
        &client.id,
        client.name.as_deref(),
        report,
    )?;
    for entry in &client.versions {
        let name = format!("{org}/{}/{}", client.id, entry.version);
        if clients::find_version(tx, org, &client.id, &entry.version)?.is_none() {
            let created = clients::create_version(tx, org, &client.id, &entry.version)?;
            report
                .changes
                .push(format!("created client version {name}"));
            report.issued_keys.push(IssuedKey {
                client_version: name.clone(),
                api_key: created.api_key,
            });
        }
        for contract in &entry.contracts {
            let api = VersionRef::parse("api", &contract.api)?;
            let plan = VersionRef::parse("plan", &contract.plan)?;
            let terms = ContractTerms {
                client_org: org,
                client: &client.id,
                client_version: &entry.version,
                api_org: &api.org,
                api: &api.name,
                api_version: &api.version,
                plan_org: &plan.org,
                plan: &plan.name,
                plan_version: Some(&plan.version),
            };
            let at_contract = format!("versions[{}].contracts[{}]", entry.version, contract.api);
            if let Some(id) = contracts::find_for(tx, &terms)? {
                let existing = contracts::get(tx, org, &client.id, &entry.version, id)?;
                let existing_plan =
                    VersionRef::new(&existing.plan_org, &existing.plan, &existing.plan_version);
                if existing_plan != plan {
                    return Err(Error::conflict(
                        "contract-exists",
                        format!(
                            "contract {id} already grants {} through plan {existing_plan}; \
                             delete it to change the plan",
                            contract.api
                        ),
                    )
                    .at(at_contract));
                }
                continue;
            }
            let client_version = VersionRef::new(org, &client.id, &entry.version);
            if deferred.awaits_publication(&api) {
                deferred
                    .contracts
                    .push((client_version, api, plan, format!("{at}.{at_contract}")));
                continue;
            }
            create_contract(tx, &client_version, &api, &plan, report)
                .map_err(|e| e.at(at_contract.clone()))?;
        }
        let held = issuers::list_subjects(tx, org, &client.id, &entry.version)?;
        for subject in &entry.subjects {
            if held
                .iter()
                .any(|h| h.issuer == subject.issuer && h.value == subject.value)
            {
                continue;
            }
            issuers::add_subject(
                tx,
                org,
                &client.id,
                &entry.version,
                &subject.issuer,
                &subject.value,
            )
            .map_err(|e| {
                e.at(format!(
                    "versions[{}].subjects[{}]",
                    entry.version,
                    subject_id(subject)
                ))
            })?;
            report.changes.push(format!(
                "added subject {} to client version {name}",
                subject_id(subject)
            ));
        }
    }
    Ok(())
}

/// Creates the contract `client` → `api` through `plan`, which the API version must offer.
fn create_contract(
    tx: &mut Tx<'_>,
    client: &VersionRef,
    api: &VersionRef,
    plan: &VersionRef,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    let created = contracts::create(
        tx,
        &ContractTerms {
            client_org: &client.org,
            client: &client.name,
            client_version: &client.version,
            api_org: &api.org,
            api: &api.name,
            api_version: &api.version,
            plan_org: &plan.org,
            plan: &plan.name,
            plan_version: Some(&plan.version),
        },
    )?;
    report.changes.push(format!(
        "created contract {} {client} -> {api} through {plan}",
        created.id
    ));
    Ok(())
}

/// The whole store as a catalogue: applying it to the same store changes nothing.
pub fn export(conn: &crate::store::db::Db<'_>) -> Result<Catalogue, Error> {
    let all = PageRequest::all();
    let mut catalogue = Catalogue {
        issuers: issuers::list(conn)?.iter().map(|i| i.spec()).collect(),
        service_accounts: tokens::list_service_accounts(conn)?
            .into_iter()
            .map(|a| CreateServiceAccount {
                id: a.id,
                scopes: a.scopes,
            })
            .collect(),
        ..Catalogue::default()
    };
    for org in orgs::list_orgs(conn, &all)?.items {
        let mut entry = OrgEntry {
            id: org.id.clone(),
            name: Some(org.name),
            plans: Vec::new(),
            apis: Vec::new(),
            clients: Vec::new(),
        };
        for plan in orgs::list_owned(conn, OwnedKind::Plan, &org.id, &all)?.items {
            let versions = plans::list_versions(conn, &org.id, &plan.id, &all)?
                .items
                .into_iter()
                .map(|v| PlanVersionEntry {
                    version: v.version,
                    limits: v.limits,
                    locked: v.status == PlanVersionStatus::Locked,
                })
                .collect();
            entry.plans.push(PlanEntry {
                id: plan.id,
                name: Some(plan.name),
                versions,
            });
        }
        for api in orgs::list_owned(conn, OwnedKind::Api, &org.id, &all)?.items {
            let versions = apis::list_versions(conn, &org.id, &api.id, &all)?
                .items
                .into_iter()
                .map(|v| ApiVersionEntry {
                    version: v.version,
                    status: v.status,
                    public: v.public,
                    routing: v.routing,
                    plans: v
                        .plans
                        .iter()
                        .map(|p| format!("{}/{}/{}", p.org, p.plan, p.version))
                        .collect(),
                    forward_api_key: v.forward_api_key,
                    auth: v.auth,
                })
                .collect();
            entry.apis.push(ApiEntry {
                id: api.id,
                name: Some(api.name),
                versions,
            });
        }
        for client in orgs::list_owned(conn, OwnedKind::Client, &org.id, &all)?.items {
            let mut versions = Vec::new();
            for v in clients::list_versions(conn, &org.id, &client.id, &all)?.items {
                let contracts = contracts::list(conn, &org.id, &client.id, &v.version, &all)?
                    .items
                    .into_iter()
                    .map(|c| ContractEntry {
                        api: format!("{}/{}/{}", c.api_org, c.api, c.api_version),
                        plan: format!("{}/{}/{}", c.plan_org, c.plan, c.plan_version),
                    })
                    .collect();
                let subjects = issuers::list_subjects(conn, &org.id, &client.id, &v.version)?
                    .into_iter()
                    .map(|s| CreateSubject {
                        issuer: s.issuer,
                        value: s.value,
                    })
                    .collect();
                versions.push(ClientVersionEntry {
                    version: v.version,
                    contracts,
                    subjects,
                });
            }
            entry.clients.push(ClientEntry {
                id: client.id,
                name: Some(client.name),
                versions,
            });
        }
        catalogue.orgs.push(entry);
    }
    Ok(catalogue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_versions_may_be_integers_but_not_floats() {
        let doc = "orgs:\n- id: acme\n  plans:\n  - id: gold\n    versions:\n    - version: 1\n";
        let c: Catalogue = yaml_serde::from_str(doc).unwrap();
        assert_eq!(c.orgs[0].plans[0].versions[0].version, "1");
        let doc = "orgs:\n- id: acme\n  plans:\n  - id: gold\n    versions:\n    - version: 1.10\n";
        assert!(yaml_serde::from_str::<Catalogue>(doc).is_err());
    }

    #[test]
    fn duplicates_are_named() {
        let c = Catalogue {
            issuers: vec![],
            service_accounts: vec![],
            orgs: vec![
                OrgEntry {
                    id: "acme".into(),
                    name: None,
                    plans: vec![],
                    apis: vec![],
                    clients: vec![],
                },
                OrgEntry {
                    id: "acme".into(),
                    name: None,
                    plans: vec![],
                    apis: vec![],
                    clients: vec![],
                },
            ],
        };
        let err = check(&c).unwrap_err();
        assert!(err.to_string().contains("acme is listed twice"), "{err}");
    }
}

//! The management API's resources and request bodies, as they travel in JSON.
//!
//! Rate limits and routings reuse `core`'s snapshot types so that what an operator writes is
//! exactly what a gateway receives; they document their own shape (core's `openapi` feature).
//!
//! A resource that can be replaced (`PUT`) takes the representation its `GET` returns: its
//! [`Representation::READ_ONLY`] fields may be left out (they deserialize to a default the
//! handler never uses) or repeated, and `PUT` refuses them only when they differ from what is
//! stored. They are `readOnly` in the OpenAPI document.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tollgate_core::snapshot::{AuthMode, RateLimit, Routing};
use utoipa::{IntoParams, ToSchema};

/// Unix seconds. (Resource fields spell out `i64` so the OpenAPI schema inlines an integer.)
pub type Timestamp = i64;

/// A resource whose `PUT` body is the representation its `GET` returns.
pub trait Representation: Serialize + DeserializeOwned {
    /// The fields `GET` returns that `PUT` cannot change: ids, the version, the status and
    /// timestamps. Each carries `#[serde(default)]` and `#[schema(read_only)]`.
    const READ_ONLY: &'static [&'static str];
}

/// `PUT /v1/orgs/{org}` changes the name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Org {
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub created_at: i64,
}

impl Representation for Org {
    const READ_ONLY: &'static [&'static str] = &["id", "created_at"];
}

/// A plan, an API or a client: something an org owns that has versions. `PUT` changes the
/// name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Owned {
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub org: String,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub created_at: i64,
}

impl Representation for Owned {
    const READ_ONLY: &'static [&'static str] = &["org", "id", "created_at"];
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlanVersionStatus {
    #[default]
    Draft,
    Locked,
}

/// `PUT` replaces a draft's limits.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanVersion {
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub org: String,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub plan: String,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub version: String,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub status: PlanVersionStatus,
    pub limits: Vec<RateLimit>,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub created_at: i64,
    #[serde(default)]
    #[schema(read_only)]
    pub locked_at: Option<i64>,
}

impl Representation for PlanVersion {
    const READ_ONLY: &'static [&'static str] = &[
        "org",
        "plan",
        "version",
        "status",
        "created_at",
        "locked_at",
    ];
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersionStatus {
    #[default]
    Draft,
    Published,
    Retired,
}

impl ApiVersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersionStatus::Draft => "draft",
            ApiVersionStatus::Published => "published",
            ApiVersionStatus::Retired => "retired",
        }
    }
}

/// A plan version an API version is offered through.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfferedPlan {
    /// Always given by `GET`; a `PUT` may leave it out (or send `""`) for the API's org.
    #[serde(default)]
    pub org: String,
    pub plan: String,
    pub version: String,
}

impl OfferedPlan {
    /// The plan as a `PUT` body names it: an empty org is the API's.
    pub fn as_choice(&self) -> PlanChoice {
        PlanChoice {
            org: (!self.org.is_empty()).then(|| self.org.clone()),
            plan: self.plan.clone(),
            version: self.version.clone(),
        }
    }
}

/// `PUT` replaces a draft's settings: `public`, `routing`, `plans`, `forward_api_key` and
/// `auth` (those left out take their defaults, as on create).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiVersion {
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub org: String,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub api: String,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub version: String,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub status: ApiVersionStatus,
    #[serde(default)]
    pub public: bool,
    pub routing: Routing,
    /// Locked plan versions this API version is offered through; private versions need one.
    #[serde(default)]
    pub plans: Vec<OfferedPlan>,
    /// Keep the key on the upstream request (default: stripped).
    #[serde(default)]
    pub forward_api_key: bool,
    /// How callers of a private version identify themselves (default `api_key`).
    #[serde(default)]
    pub auth: AuthMode,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub created_at: i64,
    #[serde(default)]
    #[schema(read_only)]
    pub published_at: Option<i64>,
    #[serde(default)]
    #[schema(read_only)]
    pub retired_at: Option<i64>,
}

impl ApiVersion {
    /// What this representation asks for, in the one shape every path validates
    /// ([`CreateApiVersion`]); an offered plan without an org is the API's.
    pub fn settings(&self) -> CreateApiVersion {
        CreateApiVersion {
            version: self.version.clone(),
            public: self.public,
            routing: self.routing.clone(),
            plans: self.plans.iter().map(OfferedPlan::as_choice).collect(),
            forward_api_key: self.forward_api_key,
            auth: self.auth,
        }
    }
}

impl Representation for ApiVersion {
    const READ_ONLY: &'static [&'static str] = &[
        "org",
        "api",
        "version",
        "status",
        "created_at",
        "published_at",
        "retired_at",
    ];
}

/// What is known about one of a client version's keys. The key itself is never stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyInfo {
    /// Names the key in `…/keys/{key_id}/revoke`; never reused. Not derived from the key.
    pub id: i64,
    pub created_at: i64,
    /// Set on a key rotated out or revoked: it works until then (a revoked key's time has
    /// passed). Absent on the current key.
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClientVersion {
    pub org: String,
    pub client: String,
    pub version: String,
    pub created_at: i64,
    pub keys: Vec<ApiKeyInfo>,
}

/// The answer to creating a client version: the only time its key is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedClientVersion {
    pub org: String,
    pub client: String,
    pub version: String,
    pub created_at: i64,
    /// Shown once; only its SHA-256 is kept.
    pub api_key: String,
}

/// The answer to a key rotation: the only time the new key is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RotatedKey {
    /// Shown once; only its SHA-256 is kept.
    pub api_key: String,
    /// The new key's id.
    pub key_id: i64,
    /// Every earlier key works at most until then (unix seconds): the grace bounds them all,
    /// also keys still in the grace of an earlier rotation.
    pub previous_key_expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Contract {
    /// Never reused: it names the contract's rate-limit counter at the gateways.
    pub id: u64,
    pub client_org: String,
    pub client: String,
    pub client_version: String,
    pub api_org: String,
    pub api: String,
    pub api_version: String,
    pub plan_org: String,
    pub plan: String,
    pub plan_version: String,
    pub created_at: i64,
}

// ---- request bodies ----

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    pub id: String,
    /// Defaults to the id.
    pub name: Option<String>,
}

/// Creates a plan, an API or a client.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOwned {
    pub id: String,
    /// Defaults to the id.
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlanVersion {
    pub version: String,
    /// Required unless `copy_from` is given.
    pub limits: Option<Vec<RateLimit>>,
    /// An existing version of the same plan whose limits the new draft starts with.
    pub copy_from: Option<String>,
}

/// A plan version to offer; `org` defaults to the API's org.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanChoice {
    pub org: Option<String>,
    pub plan: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiVersion {
    pub version: String,
    #[serde(default)]
    pub public: bool,
    pub routing: Routing,
    /// Locked plan versions this API version is offered through; private versions need one.
    #[serde(default)]
    pub plans: Vec<PlanChoice>,
    /// Keep the key on the upstream request (default: stripped).
    #[serde(default)]
    pub forward_api_key: bool,
    /// How callers of a private version identify themselves (default `api_key`).
    #[serde(default)]
    pub auth: AuthMode,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClientVersion {
    pub version: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the previous key keeps working (at most 30 days).
    pub grace_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContract {
    /// Defaults to the client's org.
    pub api_org: Option<String>,
    pub api: String,
    pub api_version: String,
    /// A plan the API version is offered through; defaults to the API's org.
    pub plan: String,
    pub plan_org: Option<String>,
    /// The plan's version; when given, the API version must offer exactly that one. Left out,
    /// the version of `plan` that the API version offers.
    pub plan_version: Option<String>,
}

// ---- pagination ----

/// Every list answers a page; pass `next_cursor` back as `cursor` for the next one.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 500 (default 100).
    pub limit: Option<u32>,
    /// Opaque cursor from the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Absent on the last page.
    pub next_cursor: Option<String>,
}

// ---- tokens ----

/// One of the own issuer's signing keys (the public half; the private one never leaves the
/// data directory).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenKey {
    pub kid: String,
    pub created_at: i64,
    /// Absent on the current key, which signs every new token.
    pub retired_at: Option<i64>,
    /// On a retired key: it stays published (JWKS, snapshot) until then, when every token it
    /// signed has expired.
    pub published_until: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RotatedTokenKey {
    /// The new current key.
    pub kid: String,
    /// The keys still published, the new one included.
    pub keys: Vec<TokenKey>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredentials {
    /// How long credentials issued before keep working (default 0: replaced at once; at most
    /// 30 days).
    #[serde(default)]
    pub grace_seconds: u64,
}

/// OAuth client credentials, returned once. Use them at `POST /oauth/token`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedCredentials {
    pub client_id: String,
    /// Shown only here; the control plane keeps its SHA-256.
    pub client_secret: String,
    /// When credentials issued before stop working (absent: there were none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_expires_at: Option<i64>,
}

/// What is known about a client version's or service account's credentials.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialsInfo {
    pub client_id: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// Also a service account's entry in `apply`/`export` (no secret: credentials are issued,
/// never declared).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceAccount {
    /// A slug.
    pub id: String,
    /// `tollgate:admin` (everything) and/or `tollgate:read` (reads only).
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceAccount {
    pub id: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub credentials: Vec<CredentialsInfo>,
}

/// A service account and its credentials, returned once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedServiceAccount {
    pub id: String,
    pub scopes: Vec<String>,
    pub client_id: String,
    pub client_secret: String,
}

/// An external token issuer (Keycloak, Entra ID, Auth0…) whose JWTs gateways accept. Also its
/// entry in `apply`/`export`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerSpec {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Accepted `aud` values; a token must name one.
    pub audiences: Vec<String>,
    /// Its JWKS document (`{"keys": […]}`), public keys only.
    #[schema(value_type = Object)]
    pub jwks: serde_json::Value,
    /// The claim naming the client, matched against client versions' subjects.
    #[serde(default = "default_client_claim")]
    pub client_claim: String,
    /// Gateways refuse a token whose `exp` lies further ahead than this many seconds (at most
    /// 30 days). Absent: one day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime_seconds: Option<u64>,
}

fn default_client_claim() -> String {
    "sub".to_owned()
}

/// An external issuer as stored. `PUT` replaces its audiences, keys, client claim and token
/// lifetime cap (those left out take their defaults, as on create).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuer {
    /// The `iss` its tokens carry; names it in the path.
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub issuer: String,
    /// Accepted `aud` values; a token must name one.
    pub audiences: Vec<String>,
    /// Its JWKS document (`{"keys": […]}`), public keys only.
    #[schema(value_type = Object)]
    pub jwks: serde_json::Value,
    /// The claim naming the client (default `sub`).
    #[serde(default = "default_client_claim")]
    pub client_claim: String,
    /// Gateways refuse a token whose `exp` lies further ahead (at most 30 days). Absent: one
    /// day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime_seconds: Option<u64>,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub created_at: i64,
    #[serde(default)]
    #[schema(read_only, required = true)]
    pub updated_at: i64,
}

impl Representation for ExternalIssuer {
    const READ_ONLY: &'static [&'static str] = &["issuer", "created_at", "updated_at"];
}

impl ExternalIssuer {
    /// The settings, as `POST /v1/issuers` takes them.
    pub fn spec(&self) -> IssuerSpec {
        IssuerSpec {
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            jwks: self.jwks.clone(),
            client_claim: self.client_claim.clone(),
            max_token_lifetime_seconds: self.max_token_lifetime_seconds,
        }
    }
}

/// A client version's identity at an external issuer: its tokens whose client claim equals
/// `value` act as the client version. Also a client version's `subjects` entry in
/// `apply`/`export`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubject {
    pub issuer: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Subject {
    pub issuer: String,
    pub value: String,
    pub created_at: i64,
}

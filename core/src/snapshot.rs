//! The catalogue a gateway enforces: one schema, written by the control plane and read by the
//! filter (embedded in static mode, fetched and verified in live mode).
//!
//! Everything is referenced by its public name `org/name/version`, the same string the upstream
//! receives in `x-tollgate-client` / `x-tollgate-plan`. Contracts carry a numeric id that the
//! control plane never reuses: it names the contract's counter in Envoy shared data, so counts
//! survive snapshot updates for as long as the contract exists.

use serde::{Deserialize, Serialize};

use crate::fleet::FleetSettings;

/// The schema version this build reads and writes. A snapshot with another value is refused
/// (the gateway keeps its last good snapshot) rather than half-understood.
pub const SCHEMA_VERSION: u32 = 1;

/// The body of the control plane's `GET /v1/snapshot` (a full revision, one of its pages, or a
/// delta) and of a static-mode snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// [`SCHEMA_VERSION`]; a gateway refuses any other.
    pub schema: u32,
    /// Bumped by every committed change that affects gateways.
    pub revision: u64,
    #[serde(default)]
    pub plans: Vec<PlanVersion>,
    #[serde(default)]
    pub apis: Vec<ApiVersion>,
    #[serde(default)]
    pub clients: Vec<ClientVersion>,
    #[serde(default)]
    pub contracts: Vec<Contract>,
    /// Token issuers whose JWTs the gateway accepts (tollgate's own and registered ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<Issuer>,
    /// The key-directory buckets this document defines in full (a page of a live-mode
    /// revision: only clients with keys in these buckets, and their contracts). Absent: a
    /// complete catalogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<u16>>,
    /// Live mode: the cursor of the next page of this revision; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Live mode, a delta: the revision it applies to. A gateway applies it only over exactly
    /// that revision (signed with the body, so a delta cannot be replayed onto another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_revision: Option<u64>,
    /// Present when counts are fleet-wide (`tollgate serve --redis`): gateways count against
    /// grants from the control plane's lease broker instead of alone. Every page and delta of
    /// a revision carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetSettings>,
}

/// A locked plan version: the limits every contract through it gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SnapshotPlanVersion))]
#[serde(deny_unknown_fields)]
pub struct PlanVersion {
    /// `org/plan/version`
    pub id: String,
    pub limits: Vec<RateLimit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// At least 1.
    pub requests: u64,
    pub per: Period,
}

/// Fixed windows aligned to UTC calendar boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
    Month,
}

impl Period {
    pub const ALL: [Period; 5] = [
        Period::Second,
        Period::Minute,
        Period::Hour,
        Period::Day,
        Period::Month,
    ];

    /// The one-byte code of this period in the binary encodings (counters, key directory).
    pub fn tag(self) -> u8 {
        match self {
            Period::Second => 1,
            Period::Minute => 2,
            Period::Hour => 3,
            Period::Day => 4,
            Period::Month => 5,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.tag() == tag)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SnapshotApiVersion))]
#[serde(deny_unknown_fields)]
pub struct ApiVersion {
    /// `org/api/version`
    pub id: String,
    pub status: ApiStatus,
    pub public: bool,
    pub routing: Routing,
    #[serde(default)]
    pub forward_api_key: bool,
    /// How callers of a private API identify themselves; absent means `api_key`.
    #[serde(default, skip_serializing_if = "AuthMode::is_default")]
    pub auth: AuthMode,
}

/// How a private API's callers identify themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// An API key (header or query parameter); the default.
    #[default]
    ApiKey,
    /// A JWT bearer token from a trusted issuer.
    Jwt,
    /// Either; a bearer token is used when one is sent.
    ApiKeyOrJwt,
}

impl AuthMode {
    pub fn is_default(&self) -> bool {
        *self == AuthMode::ApiKey
    }

    pub fn accepts_jwt(self) -> bool {
        matches!(self, AuthMode::Jwt | AuthMode::ApiKeyOrJwt)
    }

    pub fn accepts_api_key(self) -> bool {
        matches!(self, AuthMode::ApiKey | AuthMode::ApiKeyOrJwt)
    }
}

/// A JWT issuer the gateway trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SnapshotIssuer))]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// The `iss` value its tokens carry.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Its public keys. Each key's algorithm comes from the key (`alg`, else its type), never
    /// from a token.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub jwks: jsonwebtoken::jwk::JwkSet,
    /// The claim whose value names the client (matched against client versions' `subjects`).
    #[serde(default = "default_client_claim")]
    pub client_claim: String,
    /// Longest a token may still be valid when it is checked (`exp` minus the gateway's
    /// clock), in seconds; absent: [`crate::token::DEFAULT_MAX_TOKEN_LIFETIME_SECONDS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime_seconds: Option<u64>,
}

fn default_client_claim() -> String {
    "sub".to_owned()
}

/// Only published and retired versions reach gateways; drafts stay in the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SnapshotApiStatus))]
#[serde(rename_all = "lowercase")]
pub enum ApiStatus {
    Published,
    Retired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// An absolute path without a trailing slash; matched on segment boundaries.
    #[cfg_attr(feature = "openapi", schema(example = "/orders/v1"))]
    pub path_prefix: String,
    /// DNS names or IP literals, no port (a request's port is ignored) and no wildcard; stored
    /// lowercase without a trailing dot, Unicode names as punycode. Empty matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SnapshotClientVersion))]
#[serde(deny_unknown_fields)]
pub struct ClientVersion {
    /// `org/client/version`
    pub id: String,
    /// The current key and, during a rotation's grace period, the previous one.
    pub keys: Vec<ApiKeyHash>,
    /// Token identities of this client: a JWT from `issuer` whose client claim equals `value`
    /// acts as this client version, under the same contracts and counters as its API key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<TokenSubject>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SnapshotTokenSubject))]
#[serde(deny_unknown_fields)]
pub struct TokenSubject {
    pub issuer: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SnapshotApiKeyHash))]
#[serde(deny_unknown_fields)]
pub struct ApiKeyHash {
    /// Lowercase hex SHA-256 of the key; the key itself never leaves the client.
    pub sha256: String,
    /// Unix seconds after which the key stops working; absent: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SnapshotContract))]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// Never reused by the control plane; names the contract's counter.
    pub id: u64,
    /// `org/client/version`
    pub client: String,
    /// `org/api/version`
    pub api: String,
    /// `org/plan/version`
    pub plan: String,
}

impl Snapshot {
    pub fn empty(revision: u64) -> Self {
        Snapshot {
            schema: SCHEMA_VERSION,
            revision,
            plans: Vec::new(),
            apis: Vec::new(),
            clients: Vec::new(),
            contracts: Vec::new(),
            issuers: Vec::new(),
            buckets: None,
            next: None,
            base_revision: None,
            fleet: None,
        }
    }
}

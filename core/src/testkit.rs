//! A small catalogue for native tests, in the seed's terms.

use crate::distribution::publish_directory;
use crate::index::{compile, RouteIndex};
use crate::keys::key_hash_hex;
use crate::shared::MemoryStore;
use crate::snapshot::*;

/// A snapshot compiled as a gateway would: its routing table, and shared data holding its key
/// directory.
pub fn published(snapshot: &Snapshot) -> (RouteIndex, MemoryStore) {
    let compiled = compile(snapshot).unwrap();
    let mut store = MemoryStore::new();
    publish_directory(&mut store, &compiled.directory).unwrap();
    (compiled.routes, store)
}

pub const GOLD_KEY: &str = "gold-key-0123456789";
pub const BRONZE_KEY: &str = "bronze-key-0123456789";
pub const OLD_KEY: &str = "old-key-0123456789";
pub const ISSUER: &str = "https://tollgate.example/issuer";

/// An Ed25519 key as a JWK (seeded, so tests are repeatable).
pub fn ed_jwk(seed: u8, kid: &str) -> serde_json::Value {
    use base64::Engine;
    let public = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid,
        "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.as_bytes())})
}

/// A compact JWT with this header and these claims, signed with Ed25519 key `seed`.
pub fn ed_token(seed: u8, header: serde_json::Value, claims: serde_json::Value) -> String {
    use base64::Engine;
    use ed25519_dalek::Signer;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let input = format!("{}.{}", b64(&header), b64(&claims));
    let signature = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).sign(input.as_bytes());
    format!(
        "{input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// ACME with token access: the issuer (key seed 1, kid "k1", audience "orders-api"), the
/// mobile client reachable by tokens whose `sub` is its id, and orders/1 taking either.
pub fn acme_with_tokens() -> Snapshot {
    let mut s = acme();
    s.issuers.push(Issuer {
        issuer: ISSUER.into(),
        audiences: vec!["orders-api".into()],
        jwks: serde_json::from_value(serde_json::json!({ "keys": [ed_jwk(1, "k1")] })).unwrap(),
        client_claim: "sub".into(),
        max_token_lifetime_seconds: None,
    });
    s.clients[0].subjects.push(TokenSubject {
        issuer: ISSUER.into(),
        value: "acme/mobile/1".into(),
    });
    s.clients[1].subjects.push(TokenSubject {
        issuer: ISSUER.into(),
        value: "acme/hobby/1".into(),
    });
    s.apis[0].auth = AuthMode::ApiKeyOrJwt;
    s.apis[3].auth = AuthMode::Jwt;
    s
}

pub fn api(id: &str, prefix: &str, public: bool) -> ApiVersion {
    ApiVersion {
        id: id.into(),
        status: ApiStatus::Published,
        public,
        routing: Routing {
            path_prefix: prefix.into(),
            hosts: Vec::new(),
        },
        forward_api_key: false,
        auth: AuthMode::ApiKey,
    }
}

/// ACME: a private orders API, a public status API, a retired v0, Gold and Bronze clients.
pub fn acme() -> Snapshot {
    let mut retired = api("acme/orders/0", "/orders/v0", false);
    retired.status = ApiStatus::Retired;
    Snapshot {
        schema: SCHEMA_VERSION,
        revision: 7,
        plans: vec![
            PlanVersion {
                id: "acme/gold/1".into(),
                limits: vec![RateLimit {
                    requests: 10_000,
                    per: Period::Day,
                }],
            },
            PlanVersion {
                id: "acme/bronze/1".into(),
                limits: vec![
                    RateLimit {
                        requests: 2,
                        per: Period::Minute,
                    },
                    RateLimit {
                        requests: 100,
                        per: Period::Day,
                    },
                ],
            },
        ],
        apis: vec![
            api("acme/orders/1", "/orders/v1", false),
            api("acme/status/1", "/status", true),
            retired,
            api("acme/billing/1", "/billing", false),
        ],
        clients: vec![
            ClientVersion {
                id: "acme/mobile/1".into(),
                keys: vec![
                    ApiKeyHash {
                        sha256: key_hash_hex(GOLD_KEY),
                        expires_at: None,
                    },
                    ApiKeyHash {
                        sha256: key_hash_hex(OLD_KEY),
                        expires_at: Some(1_749_988_800),
                    },
                ],
                subjects: Vec::new(),
            },
            ClientVersion {
                id: "acme/hobby/1".into(),
                keys: vec![ApiKeyHash {
                    sha256: key_hash_hex(BRONZE_KEY),
                    expires_at: None,
                }],
                subjects: Vec::new(),
            },
        ],
        contracts: vec![
            Contract {
                id: 1,
                client: "acme/mobile/1".into(),
                api: "acme/orders/1".into(),
                plan: "acme/gold/1".into(),
            },
            Contract {
                id: 2,
                client: "acme/hobby/1".into(),
                api: "acme/orders/1".into(),
                plan: "acme/bronze/1".into(),
            },
        ],
        issuers: Vec::new(),
        buckets: None,
        next: None,
        base_revision: None,
        fleet: None,
    }
}

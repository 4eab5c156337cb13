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
            },
            ClientVersion {
                id: "acme/hobby/1".into(),
                keys: vec![ApiKeyHash {
                    sha256: key_hash_hex(BRONZE_KEY),
                    expires_at: None,
                }],
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
        buckets: None,
        next: None,
    }
}

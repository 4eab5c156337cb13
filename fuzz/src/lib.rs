//! What the fuzz targets share: one fixed catalogue in the seed's terms (the one core's tests
//! use, plus a host-routed API and a private API nested under the public prefix), the keys and
//! the token issuer it trusts, and a request-headers double kept the way Envoy keeps headers.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::Signer;
use serde_json::{json, Value};
use tollgate_core::keys::key_hash_hex;
use tollgate_core::snapshot::Issuer;

/// The Ed25519 seed (unpadded base64url) the `snapshot` target signs with.
pub const SNAPSHOT_SIGNING_SEED: &str = "ZnV6ei1zbmFwc2hvdC1zaWduaW5nLWtleS0wMTIzNDU";

pub fn snapshot_signing_key() -> tollgate_core::signing::SnapshotSigningKey {
    tollgate_core::signing::SnapshotSigningKey::from_base64(SNAPSHOT_SIGNING_SEED)
        .expect("a valid seed")
}

/// The gateway's side: the public key of [`SNAPSHOT_SIGNING_SEED`].
pub fn trusted_snapshot_keys() -> tollgate_core::signing::TrustedKeys {
    tollgate_core::signing::TrustedKeys::parse(&[snapshot_signing_key().public_key()])
        .expect("a valid public key")
}
/// 2025-06-15T11:59:00Z: the clock of every target that needs one, unless the input moves it.
pub const NOW_MS: u64 = 1_749_988_740_000;

pub const GOLD_KEY: &str = "gold-key-0123456789";
pub const BRONZE_KEY: &str = "bronze-key-0123456789";
/// Rotated out: expired at 2025-06-15T12:00:00Z.
pub const OLD_KEY: &str = "old-key-0123456789";
pub const ISSUER: &str = "https://tollgate.example/issuer";
pub const AUDIENCE: &str = "orders-api";
/// The Ed25519 signing key of the trusted issuer (seeded, so the corpus stays valid).
pub const ISSUER_KEY_SEED: u8 = 1;

fn ed_jwk(seed: u8, kid: &str) -> Value {
    let public = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
    json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(public.as_bytes())})
}

/// The trusted issuer: key seed 1 as kid "k1", audience "orders-api", clients named by `sub`.
pub fn issuer() -> Value {
    json!({"issuer": ISSUER, "audiences": [AUDIENCE],
        "jwks": {"keys": [ed_jwk(ISSUER_KEY_SEED, "k1")]}, "client_claim": "sub"})
}

pub fn issuers() -> Vec<Issuer> {
    match serde_json::from_value(json!([issuer()])) {
        Ok(issuers) => issuers,
        Err(e) => unreachable!("the fixed issuer is valid: {e}"),
    }
}

/// A compact JWT with this header and these claims, signed with Ed25519 key `seed`.
pub fn token(seed: u8, header: &Value, claims: &Value) -> String {
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let input = format!("{}.{}", b64(header), b64(claims));
    let signature = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fn api(id: &str, prefix: &str, public: bool, extra: Value) -> Value {
    let mut api = json!({"id": id, "status": "published", "public": public,
        "routing": {"path_prefix": prefix, "hosts": []}});
    if let (Some(api), Some(extra)) = (api.as_object_mut(), extra.as_object()) {
        api.extend(extra.clone());
    }
    api
}

/// ACME: private orders (key or token), public status with a private admin API nested under
/// it, a retired orders v0, billing (tokens only), partners (one host only); Gold and Bronze.
pub fn catalogue() -> Value {
    json!({
        "schema": 1,
        "revision": 7,
        "plans": [
            {"id": "acme/bronze/1", "limits": [{"requests": 2, "per": "minute"}, {"requests": 100, "per": "day"}]},
            {"id": "acme/gold/1", "limits": [{"requests": 10000, "per": "day"}]},
        ],
        "apis": [
            api("acme/admin/1", "/status/admin", false, json!({})),
            api("acme/billing/1", "/billing", false, json!({"auth": "jwt"})),
            api("acme/orders/0", "/orders/v0", false, json!({"status": "retired"})),
            api("acme/orders/1", "/orders/v1", false, json!({"auth": "api_key_or_jwt"})),
            api("acme/partners/1", "/partners", false,
                json!({"routing": {"path_prefix": "/partners", "hosts": ["partners.example.com"]},
                       "forward_api_key": true})),
            api("acme/status/1", "/status", true, json!({})),
        ],
        "clients": [
            {"id": "acme/hobby/1", "keys": [{"sha256": key_hash_hex(BRONZE_KEY)}],
             "subjects": [{"issuer": ISSUER, "value": "acme/hobby/1"}]},
            {"id": "acme/mobile/1",
             "keys": [{"sha256": key_hash_hex(GOLD_KEY)},
                      {"sha256": key_hash_hex(OLD_KEY), "expires_at": 1_749_988_800u64}],
             "subjects": [{"issuer": ISSUER, "value": "acme/mobile/1"}]},
        ],
        "contracts": [
            {"id": 1, "client": "acme/mobile/1", "api": "acme/orders/1", "plan": "acme/gold/1"},
            {"id": 2, "client": "acme/hobby/1", "api": "acme/orders/1", "plan": "acme/bronze/1"},
            {"id": 3, "client": "acme/mobile/1", "api": "acme/billing/1", "plan": "acme/gold/1"},
            {"id": 4, "client": "acme/mobile/1", "api": "acme/admin/1", "plan": "acme/gold/1"},
            {"id": 5, "client": "acme/mobile/1", "api": "acme/partners/1", "plan": "acme/gold/1"},
        ],
        "issuers": [issuer()],
    })
}

/// Splits an input into at most `n` fields at `\n` (the last field keeps any further ones).
pub fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == b'\n').collect()
}

//! tollgate's own token issuer: its Ed25519 signing keys, the JWTs `/oauth/token` hands out,
//! and the check of management tokens on `/v1`.
//!
//! Private keys are never logged. On SQLite they live only in `<data dir>/token-signing-keys`
//! (mode 0600, one `kid seed` line per key). On PostgreSQL every replica signs with the same
//! keys, so they are in the database, each seed sealed with the secrets key
//! (`TOLLGATE_SECRETS_KEY`) and bound to its `kid`; a replica opens a key the first time it
//! signs with it, so a rotation on one replica is picked up by the others at their next token.
//! The public halves are in the database, published as JWKS at `/.well-known/jwks.json` and in
//! the snapshot's `issuers`, so gateways verify tokens locally.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use tollgate_core::snapshot::Snapshot;
use tollgate_core::token::{TokenRejected, TrustedIssuers};

use crate::error::Error;
use crate::secrets::{random_token, SecretsKey, SECRETS_KEY_ENV};

pub const KEYS_FILE: &str = "token-signing-keys";
pub const DEFAULT_TOKEN_LIFETIME_SECONDS: u64 = 3600;
pub const DEFAULT_GATEWAY_AUDIENCE: &str = "tollgate-gateway";
pub const DEFAULT_MANAGEMENT_AUDIENCE: &str = "tollgate-management";

/// Every management request.
pub const SCOPE_ADMIN: &str = "tollgate:admin";
/// `GET` (and `HEAD`) management requests only.
pub const SCOPE_READ: &str = "tollgate:read";
/// The scope of a client version's tokens: calling APIs through the gateways.
pub const SCOPE_GATEWAY: &str = "tollgate:gateway";
pub const MANAGEMENT_SCOPES: [&str; 2] = [SCOPE_ADMIN, SCOPE_READ];

/// The own issuer as configured on `serve`.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// The `iss` of every token (a URL).
    pub issuer: String,
    /// The `aud` of client versions' tokens, accepted by gateways.
    pub gateway_audience: String,
    /// The `aud` of service accounts' tokens, accepted by `/v1`; never by gateways.
    pub management_audience: String,
    pub token_lifetime_seconds: u64,
}

/// Where the private halves are kept.
enum Vault {
    /// The data directory's key file (SQLite).
    File(PathBuf),
    /// The database, sealed (PostgreSQL): the `sealed` column of `token_keys`.
    Sealed(SecretsKey),
}

/// A key `SigningKeys::generate` made: its `kid`, its public key (base64url, a JWK's `x`) and,
/// when keys are kept in the database, its sealed seed to store beside them.
pub struct NewKey {
    pub kid: String,
    pub x: String,
    pub sealed: Option<String>,
}

/// The own issuer's private keys, by `kid`: those in use, in memory.
pub struct SigningKeys {
    vault: Vault,
    keys: Mutex<BTreeMap<String, SigningKey>>,
}

impl SigningKeys {
    /// Reads `<data dir>/token-signing-keys`; a missing file is an empty set.
    pub fn load(data_dir: &Path) -> Result<SigningKeys, Error> {
        let path = data_dir.join(KEYS_FILE);
        let mut keys = BTreeMap::new();
        match fs::read_to_string(&path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    let key = line
                        .split_once(' ')
                        .and_then(|(kid, seed)| {
                            let seed: [u8; 32] =
                                URL_SAFE_NO_PAD.decode(seed).ok()?.try_into().ok()?;
                            Some((kid.to_owned(), SigningKey::from_bytes(&seed)))
                        })
                        .ok_or_else(|| {
                            Error::Internal(format!(
                                "{} line {}: expected `kid seed`",
                                path.display(),
                                n + 1
                            ))
                        })?;
                    keys.insert(key.0, key.1);
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Internal(format!("reading {}: {e}", path.display()))),
        }
        Ok(SigningKeys {
            vault: Vault::File(path),
            keys: Mutex::new(keys),
        })
    }

    /// Keys kept sealed in the database with `secrets_key`; none open yet.
    pub fn sealed(secrets_key: SecretsKey) -> SigningKeys {
        SigningKeys {
            vault: Vault::Sealed(secrets_key),
            keys: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether the private half of `kid` is at hand, opening `sealed` (as stored beside the
    /// key) when keys are kept in the database. A sealed key this replica's secrets key does
    /// not open is an error: the replicas were given different secrets keys.
    pub fn open(&self, kid: &str, sealed: Option<&str>) -> Result<bool, Error> {
        if self.lock().contains_key(kid) {
            return Ok(true);
        }
        let (Vault::Sealed(secrets_key), Some(sealed)) = (&self.vault, sealed) else {
            return Ok(false);
        };
        let seed: [u8; 32] = secrets_key
            .open(kid, sealed)
            .and_then(|seed| seed.try_into().ok())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "{SECRETS_KEY_ENV} does not open token signing key {kid} stored in the \
                     database: every replica must be given the same {SECRETS_KEY_ENV}"
                ))
            })?;
        self.lock()
            .insert(kid.to_owned(), SigningKey::from_bytes(&seed));
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SigningKey>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new key from the OS CSPRNG. In the data directory it is saved before it is used, and
    /// keys not in `keep` are forgotten at the same time; in the database the caller stores
    /// `sealed` in the transaction that publishes the key.
    pub fn generate(&self, keep: &[String]) -> Result<NewKey, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| Error::Internal(format!("the OS random source failed: {e}")))?;
        let key = SigningKey::from_bytes(&seed);
        let kid = random_token(12)?;
        let x = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
        let mut keys = self.lock();
        let mut next: BTreeMap<String, SigningKey> = keys
            .iter()
            .filter(|(k, _)| keep.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        next.insert(kid.clone(), key);
        let sealed = match &self.vault {
            Vault::File(path) => {
                save(path, &next)?;
                None
            }
            Vault::Sealed(secrets_key) => Some(secrets_key.seal(&kid, &seed)?),
        };
        *keys = next;
        Ok(NewKey { kid, x, sealed })
    }

    /// A compact JWS (EdDSA) of `claims`, with `kid` in its header.
    pub fn sign(&self, kid: &str, claims: &Value) -> Result<String, Error> {
        let keys = self.lock();
        let key = keys
            .get(kid)
            .ok_or_else(|| Error::Internal(format!("no private key for token key {kid}")))?;
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = key.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

/// Writes the file whole (temporary file, fsync, rename), mode 0600.
fn save(path: &Path, keys: &BTreeMap<String, SigningKey>) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let fail = |e: std::io::Error| Error::Internal(format!("writing {}: {e}", tmp.display()));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(fail(e)),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    let mut text = String::new();
    for (kid, key) in keys {
        text.push_str(&format!(
            "{kid} {}\n",
            URL_SAFE_NO_PAD.encode(key.to_bytes())
        ));
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(fail)?;
    fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = path.parent() {
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// A JWK of the own issuer's public key.
pub fn public_jwk(kid: &str, x: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"})
}

/// The `sub` of a management token: this prefix and the service account's id.
pub const SERVICE_ACCOUNT_SUBJECT_PREFIX: &str = "service-account:";

/// Who a verified management token speaks for, and what it may do.
#[derive(Debug, Clone)]
pub struct ManagementToken {
    pub subject: String,
    /// The `client_id` of the credentials it was issued for.
    pub credential: String,
    pub scopes: Vec<String>,
}

impl ManagementToken {
    /// Admin scope: everything; read scope: reads only.
    pub fn allows(&self, read_only_request: bool) -> bool {
        self.scopes.iter().any(|s| s == SCOPE_ADMIN)
            || (read_only_request && self.scopes.iter().any(|s| s == SCOPE_READ))
    }
}

/// Verifies a management token with `core`'s verifier, against the own issuer's keys as the
/// snapshot publishes them but with the management audience: gateway tokens are refused here
/// and management tokens at the gateways.
pub fn verify_management(
    catalogue: &Snapshot,
    config: &IssuerConfig,
    token: &str,
    now_ms: u64,
) -> Result<ManagementToken, TokenRejected> {
    let mut own = catalogue
        .issuers
        .iter()
        .find(|i| i.issuer == config.issuer)
        .cloned()
        .ok_or(TokenRejected::UntrustedIssuer)?;
    own.audiences = vec![config.management_audience.clone()];
    let trusted = TrustedIssuers::build(&[own]).map_err(|_| TokenRejected::UnknownKey)?;
    let verified = trusted.verify(token, now_ms)?;
    // The signature is verified: the payload segment can be read as is.
    let claims: Value = token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenRejected::Malformed)?;
    let scopes = claims
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Ok(ManagementToken {
        subject: verified
            .subject
            .ok_or_else(|| TokenRejected::MissingClaim("sub".into()))?,
        // The own issuer's client claim is the credentials' `client_id`.
        credential: verified.client_subject,
        scopes,
    })
}

//! The secrets of a control plane (admin token, gateway token, snapshot signing key and, on
//! PostgreSQL, the secrets key), the CSPRNG every secret and API key comes from, and the sealing
//! of private key material kept in the database.
//!
//! On SQLite each secret is taken from its environment variable, else from its file in the data
//! directory, else generated on first start into that file with mode 0600. On PostgreSQL every
//! replica must hold the same values, which a data directory of its own cannot give: all four
//! come from the environment, and a replica without one of them refuses to start. Values are
//! never logged; only the file paths are.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::Error;

/// `n` bytes from the OS CSPRNG, base64url without padding.
pub fn random_token(n: usize) -> Result<String, Error> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("the OS random source failed: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[derive(Debug, Clone, Copy)]
pub enum SecretKind {
    AdminToken,
    GatewayToken,
    /// The Ed25519 seed snapshots are signed with (gateways hold only its public key).
    SnapshotSigningKey,
}

impl SecretKind {
    pub const ALL: [SecretKind; 3] = [
        SecretKind::AdminToken,
        SecretKind::GatewayToken,
        SecretKind::SnapshotSigningKey,
    ];

    pub fn env_var(self) -> &'static str {
        match self {
            SecretKind::AdminToken => "TOLLGATE_ADMIN_TOKEN",
            SecretKind::GatewayToken => "TOLLGATE_GATEWAY_TOKEN",
            SecretKind::SnapshotSigningKey => "TOLLGATE_SNAPSHOT_SIGNING_KEY",
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            SecretKind::AdminToken => "admin-token",
            SecretKind::GatewayToken => "gateway-token",
            SecretKind::SnapshotSigningKey => "snapshot-signing-key",
        }
    }

    pub fn path(self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.file_name())
    }
}

/// Every replica on PostgreSQL needs these from the environment (see `shared_from_env`).
pub const SECRETS_KEY_ENV: &str = "TOLLGATE_SECRETS_KEY";

/// The secrets a PostgreSQL replica takes from its environment, all or none: admin token,
/// gateway token and snapshot signing key (in `SecretKind::ALL` order), and the secrets key.
pub struct SharedSecrets {
    pub values: [String; 3],
    pub secrets_key: SecretsKey,
}

/// Reads the secrets every replica must share from the environment. Missing ones are named
/// together, so one restart fixes them all.
pub fn shared_from_env() -> Result<SharedSecrets, Error> {
    let values = SecretKind::ALL.map(env_value);
    let secrets_key = std::env::var(SECRETS_KEY_ENV)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let mut missing: Vec<&str> = SecretKind::ALL
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(kind, _)| kind.env_var())
        .collect();
    if secrets_key.is_none() {
        missing.push(SECRETS_KEY_ENV);
    }
    if !missing.is_empty() {
        return Err(Error::Internal(format!(
            "on PostgreSQL every replica must be given the same secrets in its environment, and \
             {} {} not set: a replica's own data directory cannot share them (see `tollgate serve \
             --help`)",
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" }
        )));
    }
    let [Some(admin), Some(gateway), Some(snapshot)] = values else {
        return Err(Error::Internal("secrets".into()));
    };
    Ok(SharedSecrets {
        values: [admin, gateway, snapshot],
        secrets_key: SecretsKey::derive(secrets_key.as_deref().unwrap_or_default())?,
    })
}

/// The key private key material is sealed with before it is stored in the database
/// (XChaCha20-Poly1305), derived with HKDF-SHA256 from `TOLLGATE_SECRETS_KEY`.
#[derive(Clone)]
pub struct SecretsKey {
    cipher: XChaCha20Poly1305,
}

/// The sealed form's version prefix: `v1.` then base64url of nonce ‖ ciphertext ‖ tag.
const SEALED_PREFIX: &str = "v1.";
const NONCE_BYTES: usize = 24;
/// Shorter secrets are refused: the key is only as strong as what it is derived from.
pub const MIN_SECRETS_KEY_CHARS: usize = 32;

impl SecretsKey {
    pub fn derive(secret: &str) -> Result<SecretsKey, Error> {
        if secret.chars().count() < MIN_SECRETS_KEY_CHARS {
            return Err(Error::Internal(format!(
                "{SECRETS_KEY_ENV} must be at least {MIN_SECRETS_KEY_CHARS} characters of random \
                 (e.g. 32 random bytes as base64url)"
            )));
        }
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(None, secret.as_bytes())
            .expand(b"tollgate sealed private keys v1", &mut key)
            .map_err(|e| Error::Internal(format!("deriving the secrets key: {e}")))?;
        Ok(SecretsKey {
            cipher: XChaCha20Poly1305::new(&key.into()),
        })
    }

    /// Seals `plaintext`, bound to `label` (what it is the secret of: a sealed value moved to
    /// another label does not open).
    pub fn seal(&self, label: &str, plaintext: &[u8]) -> Result<String, Error> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce)
            .map_err(|e| Error::Internal(format!("the OS random source failed: {e}")))?;
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: label.as_bytes(),
                },
            )
            .map_err(|_| Error::Internal("sealing failed".into()))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The plaintext of a value `seal` made for `label`; `None` when this key did not seal it
    /// (another secrets key, another label, or altered).
    pub fn open(&self, label: &str, sealed: &str) -> Option<Vec<u8>> {
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed.strip_prefix(SEALED_PREFIX)?)
            .ok()?;
        if bytes.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: label.as_bytes(),
                },
            )
            .ok()
    }
}

/// The HMAC snapshot secret of earlier releases: no longer used. Gateways configured with it
/// printed it in Envoy's `/config_dump`, so it must not become the new signing key.
pub const RETIRED_SNAPSHOT_SECRET: (&str, &str) = ("TOLLGATE_SNAPSHOT_SECRET", "snapshot-secret");

/// Where a secret came from, for the start-up log.
#[derive(Debug)]
pub enum Source {
    Env,
    File(PathBuf),
    Generated(PathBuf),
}

/// Reads a secret from env or file without generating it (the CLI's way).
pub fn read_secret(kind: SecretKind, data_dir: &Path) -> Result<Option<String>, Error> {
    if let Some(value) = env_value(kind) {
        return Ok(Some(value));
    }
    let path = kind.path(data_dir);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Internal(format!("reading {}: {e}", path.display()))),
    }
}

fn env_value(kind: SecretKind) -> Option<String> {
    std::env::var(kind.env_var())
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The server's way: env, file, or a new random secret written to the file.
pub fn load_or_generate(kind: SecretKind, data_dir: &Path) -> Result<(String, Source), Error> {
    if let Some(value) = env_value(kind) {
        return Ok((value, Source::Env));
    }
    let path = kind.path(data_dir);
    if let Some(value) = read_secret(kind, data_dir)? {
        if value.is_empty() {
            return Err(Error::Internal(format!("{} is empty", path.display())));
        }
        return Ok((value, Source::File(path)));
    }
    let value = random_token(32)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::Internal(format!("creating {}: {e}", path.display())))?;
    file.write_all(value.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))?;
    Ok((value, Source::Generated(path)))
}

/// Creates the data directory (mode 0700: it holds secrets) if missing; warns when an existing
/// one is open to other users.
pub fn ensure_data_dir(data_dir: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| Error::Internal(format!("creating {}: {e}", data_dir.display())))?;
    if let Ok(meta) = fs::metadata(data_dir) {
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{} is readable by other users (mode {:o}); it holds the catalogue and secrets: chmod 700 it",
                data_dir.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}

/// A bearer token held only as its digest. Comparing digests in constant time reveals
/// neither the token's content nor its length through timing.
#[derive(Clone)]
pub struct BearerToken {
    digest: [u8; 32],
}

impl BearerToken {
    pub fn new(token: &str) -> Self {
        BearerToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&presented).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = random_token(24).unwrap();
        let b = random_token(24).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_label() {
        let key = SecretsKey::derive("a secrets key of thirty-two chars!").unwrap();
        let sealed = key.seal("kid-1", b"private seed").unwrap();
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("private"));
        assert_eq!(
            key.open("kid-1", &sealed).as_deref(),
            Some(&b"private seed"[..])
        );
        assert_eq!(key.open("kid-2", &sealed), None, "bound to its label");
        let other = SecretsKey::derive("another secrets key, also 32 chars").unwrap();
        assert_eq!(other.open("kid-1", &sealed), None, "another key");
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            key.open("kid-1", std::str::from_utf8(&altered).unwrap()),
            None
        );
        assert_ne!(
            key.seal("kid-1", b"x").unwrap(),
            key.seal("kid-1", b"x").unwrap(),
            "fresh nonces"
        );
    }

    #[test]
    fn a_short_secrets_key_is_refused() {
        let e = SecretsKey::derive("too short").err().unwrap().to_string();
        assert!(e.contains(SECRETS_KEY_ENV) && e.contains("32"), "{e}");
    }

    #[test]
    fn bearer_token_matches_only_itself() {
        let t = BearerToken::new("secret-token");
        assert!(t.matches("secret-token"));
        assert!(!t.matches("secret-token "));
        assert!(!t.matches(""));
    }
}

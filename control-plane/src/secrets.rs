//! The three secrets of a control plane (admin token, gateway token, snapshot signing key)
//! and the CSPRNG every secret and API key comes from.
//!
//! Each secret is taken from its environment variable, else from its file in the data
//! directory, else generated on first start into that file with mode 0600. Values are never
//! logged; only the file paths are.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
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
    fn bearer_token_matches_only_itself() {
        let t = BearerToken::new("secret-token");
        assert!(t.matches("secret-token"));
        assert!(!t.matches("secret-token "));
        assert!(!t.matches(""));
    }
}

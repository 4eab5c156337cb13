//! Snapshot signatures: Ed25519, so that gateways hold only public keys and one leaked gateway
//! configuration cannot forge a catalogue for any gateway.
//!
//! The control plane signs each answer when it sends it, over a short message binding the
//! body's SHA-256 digest to the time it issued the answer:
//!
//! ```text
//! "tollgate-snapshot-v1\0" || issued_at (u64, big endian, unix seconds) || SHA-256(body)
//! ```
//!
//! and sends `x-tollgate-signature: t=<issued_at>,ed25519=<base64 signature>`. Signing the
//! digest rather than the body lets the control plane hash a page once, at commit, and still
//! give every answer a fresh issue time: a gateway can refuse an old recorded answer
//! (`max_snapshot_age_seconds`) while a catalogue that has not changed for days still arrives
//! fresh. Keys travel as unpadded base64url of their 32 bytes (the private key as its seed).

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

pub const SIGNATURE_HEADER: &str = "x-tollgate-signature";

/// Separates these signatures from anything else the same key might ever sign.
const CONTEXT: &[u8] = b"tollgate-snapshot-v1\0";

/// The SHA-256 digest of a body, as signed.
pub type BodyDigest = [u8; 32];

pub fn body_digest(body: &[u8]) -> BodyDigest {
    Sha256::digest(body).into()
}

fn message(issued_at: u64, digest: &BodyDigest) -> Vec<u8> {
    let mut message = Vec::with_capacity(CONTEXT.len() + 8 + digest.len());
    message.extend_from_slice(CONTEXT);
    message.extend_from_slice(&issued_at.to_be_bytes());
    message.extend_from_slice(digest);
    message
}

/// The control plane's signing key.
pub struct SnapshotSigningKey(SigningKey);

impl SnapshotSigningKey {
    /// From the unpadded base64url of its 32-byte seed (`tollgate serve` generates one).
    pub fn from_base64(seed: &str) -> Result<Self, KeyError> {
        Ok(SnapshotSigningKey(SigningKey::from_bytes(&decode_32(
            seed,
        )?)))
    }

    /// The public key gateways are given, as unpadded base64url.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.verifying_key().as_bytes())
    }

    /// The `x-tollgate-signature` value of an answer with this body digest, issued at
    /// `issued_at` (unix seconds).
    pub fn sign(&self, issued_at: u64, digest: &BodyDigest) -> String {
        let signature = self.0.sign(&message(issued_at, digest));
        format!(
            "t={issued_at},ed25519={}",
            STANDARD.encode(signature.to_bytes())
        )
    }
}

impl fmt::Debug for SnapshotSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotSigningKey(public {})", self.public_key())
    }
}

/// The public keys a gateway trusts: one, or during a rotation the old and the new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl TrustedKeys {
    pub fn parse<S: AsRef<str>>(keys: &[S]) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError("no key given".into()));
        }
        keys.iter()
            .map(|k| {
                VerifyingKey::from_bytes(&decode_32(k.as_ref())?)
                    .map_err(|_| KeyError(format!("'{}' is not an Ed25519 public key", k.as_ref())))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedKeys)
    }

    /// Checks a signature header against `body`; answers the signed issue time.
    pub fn verify(&self, body: &[u8], header: &str) -> Result<u64, SignatureError> {
        let (issued_at, signature) = parse_header(header)?;
        let message = message(issued_at, &body_digest(body));
        self.0
            .iter()
            .any(|key| key.verify_strict(&message, &signature).is_ok())
            .then_some(issued_at)
            .ok_or(SignatureError::NoTrustedKey)
    }
}

fn parse_header(header: &str) -> Result<(u64, Signature), SignatureError> {
    let (mut issued_at, mut signature) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => issued_at = value.parse::<u64>().ok(),
            Some(("ed25519", value)) => {
                signature = STANDARD
                    .decode(value)
                    .ok()
                    .and_then(|b| Signature::from_slice(&b).ok())
            }
            _ => {}
        }
    }
    match (issued_at, signature) {
        (Some(t), Some(s)) => Ok((t, s)),
        _ => Err(SignatureError::Malformed),
    }
}

fn decode_32(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .map_err(|_| KeyError("not unpadded base64url".into()))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| KeyError(format!("{} bytes where 32 are needed", b.len())))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// Not `t=<unix seconds>,ed25519=<base64 of 64 bytes>`.
    Malformed,
    /// No trusted key signed this body with this issue time.
    NoTrustedKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    fn key() -> SnapshotSigningKey {
        SnapshotSigningKey::from_base64(SEED).unwrap()
    }

    #[test]
    fn a_signature_verifies_with_its_issue_time() {
        let k = key();
        let trusted = TrustedKeys::parse(&[k.public_key()]).unwrap();
        let header = k.sign(1_700_000_000, &body_digest(b"{\"schema\":1}"));
        assert!(header.starts_with("t=1700000000,ed25519="), "{header}");
        assert_eq!(
            trusted.verify(b"{\"schema\":1}", &header),
            Ok(1_700_000_000)
        );
    }

    #[test]
    fn tampered_body_time_or_key_fail() {
        let k = key();
        let trusted = TrustedKeys::parse(&[k.public_key()]).unwrap();
        let header = k.sign(1_700_000_000, &body_digest(b"{\"schema\":1}"));
        assert_eq!(
            trusted.verify(b"{\"schema\":2}", &header),
            Err(SignatureError::NoTrustedKey)
        );
        let moved = header.replace("t=1700000000", "t=1700000999");
        assert_eq!(
            trusted.verify(b"{\"schema\":1}", &moved),
            Err(SignatureError::NoTrustedKey),
            "the issue time is signed"
        );
        let other = SnapshotSigningKey::from_base64(&URL_SAFE_NO_PAD.encode([7u8; 32])).unwrap();
        let foreign = other.sign(1_700_000_000, &body_digest(b"{\"schema\":1}"));
        assert_eq!(
            trusted.verify(b"{\"schema\":1}", &foreign),
            Err(SignatureError::NoTrustedKey)
        );
        for bad in ["", "t=1", "ed25519=AAAA", "t=x,ed25519=not base64!", "hmac"] {
            assert_eq!(
                trusted.verify(b"{}", bad),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn during_a_rotation_either_trusted_key_verifies() {
        let (old, new) = (
            key(),
            SnapshotSigningKey::from_base64(&URL_SAFE_NO_PAD.encode([7u8; 32])).unwrap(),
        );
        let trusted = TrustedKeys::parse(&[old.public_key(), new.public_key()]).unwrap();
        for k in [&old, &new] {
            assert!(trusted.verify(b"x", &k.sign(5, &body_digest(b"x"))).is_ok());
        }
    }

    #[test]
    fn keys_that_are_not_32_bytes_of_base64url_are_refused() {
        assert!(SnapshotSigningKey::from_base64("short").is_err());
        assert!(TrustedKeys::parse(&["not base64!"]).is_err());
        assert!(TrustedKeys::parse::<&str>(&[]).is_err());
        assert_eq!(
            TrustedKeys::parse(&["AAAA"]).unwrap_err().0,
            "3 bytes where 32 are needed"
        );
    }

    #[test]
    fn the_zero_seed_has_the_public_key_the_config_tests_use() {
        let zero = SnapshotSigningKey::from_base64(&URL_SAFE_NO_PAD.encode([0u8; 32])).unwrap();
        assert_eq!(
            zero.public_key(),
            "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik"
        );
    }

    #[test]
    fn matches_rfc8032_test_1() {
        // RFC 8032 §7.1 TEST 1: the seed's public key.
        let seed = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
        assert_eq!(
            SnapshotSigningKey::from_base64(seed).unwrap().public_key(),
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
    }
}

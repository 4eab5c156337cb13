//! JWT bearer tokens: verified locally at the gateway against the snapshot's trusted issuers,
//! with no call-out per request.
//!
//! Rules, as RFC 8725 recommends:
//! - the algorithm comes from the issuer's key (its `alg`, else its key type), never from the
//!   token: a token whose header names another algorithm is refused, so `none` and the HS/RS
//!   confusion cannot pass;
//! - the key is chosen by the token's `kid` among its issuer's keys (a `kid`-less token is
//!   accepted only when the issuer has exactly one key);
//! - `iss` must be a trusted issuer, `aud` must name one of its audiences, `exp` is required,
//!   and `exp`/`nbf` are checked against the gateway's clock with [`LEEWAY_SECONDS`];
//! - `exp` may lie at most the issuer's maximum token lifetime ahead (default
//!   [`DEFAULT_MAX_TOKEN_LIFETIME_SECONDS`]), so a token minted for year 9999 is refused;
//! - a header with `crit` is refused: tollgate understands no JWS extension, and RFC 7515
//!   §4.1.11 says a recipient must then reject the token.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::index::IndexError;
use crate::keys::KeyDigest;
use crate::snapshot::Issuer;

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;

/// An issuer's maximum token lifetime when its settings name none: one day.
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS: u64 = 86_400;

/// The key-directory digest of a token identity: the client whose tokens from `issuer` carry
/// `value` in the issuer's client claim. Domain-separated from API-key digests.
pub fn subject_digest(issuer: &str, value: &str) -> KeyDigest {
    // Length-prefixed, so no pair of strings can be made to collide with another.
    let mut h = Sha256::new();
    h.update(b"tollgate-token-subject\0");
    for part in [issuer, value] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// Why a token was refused; `Display` is safe to send back (it never contains the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRejected {
    Malformed,
    UntrustedIssuer,
    UnknownKey,
    WrongAlgorithm,
    BadSignature,
    WrongAudience,
    Expired,
    NotYetValid,
    MissingClaim(String),
    /// `exp` lies further ahead than the issuer's maximum token lifetime.
    LifetimeTooLong,
    /// The header names extensions (`crit`) that must be understood; none are.
    CriticalExtension,
}

impl fmt::Display for TokenRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRejected::Malformed => write!(f, "the token is not a well-formed JWT"),
            TokenRejected::UntrustedIssuer => write!(f, "the token's issuer is not trusted"),
            TokenRejected::UnknownKey => write!(f, "the token's signing key is not known"),
            TokenRejected::WrongAlgorithm => {
                write!(f, "the token's algorithm does not match its key")
            }
            TokenRejected::BadSignature => write!(f, "the token's signature is invalid"),
            TokenRejected::WrongAudience => write!(f, "the token is not meant for this audience"),
            TokenRejected::Expired => write!(f, "the token has expired"),
            TokenRejected::NotYetValid => write!(f, "the token is not valid yet"),
            TokenRejected::MissingClaim(c) => write!(f, "the token has no valid '{c}' claim"),
            TokenRejected::LifetimeTooLong => {
                write!(f, "the token is valid for longer than its issuer allows")
            }
            TokenRejected::CriticalExtension => {
                write!(
                    f,
                    "the token requires header extensions (crit) that are not supported"
                )
            }
        }
    }
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub issuer: String,
    /// The value of the issuer's client claim: looked up as a client's token subject.
    pub client_subject: String,
    /// The token's `sub`, forwarded upstream as the verified principal.
    pub subject: Option<String>,
}

struct TrustedKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

struct TrustedIssuer {
    issuer: String,
    audiences: Vec<String>,
    client_claim: String,
    max_lifetime_seconds: u64,
    keys: Vec<TrustedKey>,
}

/// The issuers of a snapshot with their keys decoded, ready to verify tokens.
#[derive(Default)]
pub struct TrustedIssuers {
    issuers: Vec<TrustedIssuer>,
}

impl fmt::Debug for TrustedIssuers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.issuers.iter().map(|i| (&i.issuer, i.keys.len())))
            .finish()
    }
}

impl TrustedIssuers {
    /// Decodes every issuer's keys; a key the gateway cannot use is refused with its field.
    pub fn build(issuers: &[Issuer]) -> Result<Self, IndexError> {
        let mut out = Vec::with_capacity(issuers.len());
        for (i, issuer) in issuers.iter().enumerate() {
            let field = format!("issuers[{i}]");
            let invalid = |sub: String, message: String| IndexError {
                field: format!("{field}.{sub}"),
                message,
            };
            if issuer.issuer.is_empty() {
                return Err(invalid("issuer".into(), "must not be empty".into()));
            }
            if out
                .iter()
                .any(|t: &TrustedIssuer| t.issuer == issuer.issuer)
            {
                return Err(invalid(
                    "issuer".into(),
                    format!("{} is listed twice", issuer.issuer),
                ));
            }
            if issuer.audiences.is_empty() {
                return Err(invalid(
                    "audiences".into(),
                    "name at least one audience".into(),
                ));
            }
            if issuer.client_claim.is_empty() {
                return Err(invalid("client_claim".into(), "must not be empty".into()));
            }
            if issuer.max_token_lifetime_seconds == Some(0) {
                return Err(invalid(
                    "max_token_lifetime_seconds".into(),
                    "must be at least 1".into(),
                ));
            }
            let mut keys = Vec::with_capacity(issuer.jwks.keys.len());
            for (j, jwk) in issuer.jwks.keys.iter().enumerate() {
                let algorithm = key_algorithm(jwk).ok_or_else(|| {
                    invalid(
                        format!("jwks.keys[{j}]"),
                        "a key for signatures of a supported algorithm (EdDSA, RS256/384/512, PS256/384/512, ES256/384) is needed".into(),
                    )
                })?;
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| invalid(format!("jwks.keys[{j}]"), e.to_string()))?;
                keys.push(TrustedKey {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                });
            }
            out.push(TrustedIssuer {
                issuer: issuer.issuer.clone(),
                audiences: issuer.audiences.clone(),
                client_claim: issuer.client_claim.clone(),
                max_lifetime_seconds: issuer
                    .max_token_lifetime_seconds
                    .unwrap_or(DEFAULT_MAX_TOKEN_LIFETIME_SECONDS),
                keys,
            });
        }
        Ok(TrustedIssuers { issuers: out })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    pub fn verify(&self, token: &str, now_ms: u64) -> Result<VerifiedToken, TokenRejected> {
        let header = decode_header(token).map_err(|_| TokenRejected::Malformed)?;
        if has_critical_header(token) {
            return Err(TokenRejected::CriticalExtension);
        }
        let unverified = unverified_claims(token).ok_or(TokenRejected::Malformed)?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(TokenRejected::UntrustedIssuer)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(TokenRejected::UntrustedIssuer)?;
        let key = match &header.kid {
            Some(kid) => issuer.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if issuer.keys.len() == 1 => issuer.keys.first(),
            None => None,
        }
        .ok_or(TokenRejected::UnknownKey)?;
        if header.alg != key.algorithm {
            return Err(TokenRejected::WrongAlgorithm);
        }

        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_audience(&issuer.audiences);
        // Times are checked below against the gateway's clock, not the VM's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => TokenRejected::BadSignature,
                    ErrorKind::InvalidAlgorithm => TokenRejected::WrongAlgorithm,
                    ErrorKind::InvalidAudience => TokenRejected::WrongAudience,
                    ErrorKind::InvalidIssuer => TokenRejected::UntrustedIssuer,
                    ErrorKind::MissingRequiredClaim(c) => TokenRejected::MissingClaim(c.clone()),
                    _ => TokenRejected::Malformed,
                }
            })?
            .claims;

        let now = now_ms / 1000;
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| TokenRejected::MissingClaim("exp".into()))?;
        if now >= exp.saturating_add(LEEWAY_SECONDS) {
            return Err(TokenRejected::Expired);
        }
        if exp > now.saturating_add(issuer.max_lifetime_seconds + LEEWAY_SECONDS) {
            return Err(TokenRejected::LifetimeTooLong);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf
                .as_u64()
                .ok_or_else(|| TokenRejected::MissingClaim("nbf".into()))?;
            if now.saturating_add(LEEWAY_SECONDS) < nbf {
                return Err(TokenRejected::NotYetValid);
            }
        }
        let client_subject = claims
            .get(&issuer.client_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenRejected::MissingClaim(issuer.client_claim.clone()))?
            .to_owned();
        Ok(VerifiedToken {
            issuer: issuer.issuer.clone(),
            client_subject,
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
        })
    }
}

/// The key's own algorithm: its `alg`, else the one its type allows.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        let algorithm = match alg {
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            // Shared secrets and encryption keys have no place in a public key set.
            _ => return None,
        };
        let family_matches = matches!(
            (&jwk.algorithm, algorithm),
            (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
                | (
                    AlgorithmParameters::RSA(_),
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                )
                | (
                    AlgorithmParameters::EllipticCurve(_),
                    Algorithm::ES256 | Algorithm::ES384
                )
        );
        return family_matches.then_some(algorithm);
    }
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        _ => None,
    }
}

/// Whether the protected header carries `crit` (any value: none is understood, and an empty
/// or malformed one is an error too).
fn has_critical_header(token: &str) -> bool {
    token
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        .is_none_or(|h| h.contains_key("crit"))
}

/// The payload's claims before verification: only to pick the issuer whose keys verify it.
fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests;

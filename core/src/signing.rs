//! Snapshot bodies are signed with HMAC-SHA256 over the exact bytes sent; the signature travels
//! base64-encoded in the `x-tollgate-signature` header.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "x-tollgate-signature";

type HmacSha256 = Hmac<Sha256>;

pub fn sign(secret: &[u8], body: &[u8]) -> String {
    STANDARD.encode(mac(secret, body).finalize().into_bytes())
}

/// Constant-time verification of a base64 signature; a malformed signature is simply invalid.
pub fn verify(secret: &[u8], body: &[u8], signature_b64: &str) -> bool {
    let Ok(signature) = STANDARD.decode(signature_b64.trim()) else {
        return false;
    };
    mac(secret, body).verify_slice(&signature).is_ok()
}

fn mac(secret: &[u8], body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this constructor cannot fail; fall back to an
    // empty-keyed MAC only to stay panic-free.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => <HmacSha256 as Mac>::new(&Default::default()),
    };
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verifies_and_tampering_fails() {
        let sig = sign(b"secret", b"{\"schema\":1}");
        assert!(verify(b"secret", b"{\"schema\":1}", &sig));
        assert!(!verify(b"other", b"{\"schema\":1}", &sig));
        assert!(!verify(b"secret", b"{\"schema\":2}", &sig));
        assert!(!verify(b"secret", b"{\"schema\":1}", "not base64!"));
    }

    #[test]
    fn matches_rfc4231_case_2() {
        // RFC 4231 test case 2, HMAC-SHA256, as base64.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=");
    }
}

//! API keys are secrets: only their SHA-256 travels or is stored.

use sha2::{Digest, Sha256};

/// The 32-byte SHA-256 digest of an API key, the form the index looks keys up by.
pub type KeyDigest = [u8; 32];

pub fn key_digest(api_key: &str) -> KeyDigest {
    Sha256::digest(api_key.as_bytes()).into()
}

/// Lowercase hex SHA-256, the form snapshots and the control plane's database hold.
pub fn key_hash_hex(api_key: &str) -> String {
    to_hex(&key_digest(api_key))
}

pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Parses the 64-character lowercase-or-uppercase hex form back into a digest.
pub fn parse_digest_hex(hex: &str) -> Option<KeyDigest> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = hex_value(pair[0])?;
        let lo = hex_value(pair[1])?;
        out[i] = (hi << 4) | lo;
    }
    Some(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_known_sha256() {
        assert_eq!(
            key_hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trips() {
        let d = key_digest("some-key");
        assert_eq!(parse_digest_hex(&to_hex(&d)), Some(d));
        assert_eq!(parse_digest_hex("zz"), None);
        assert_eq!(parse_digest_hex(&"g".repeat(64)), None);
    }
}

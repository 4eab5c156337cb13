//! Bearer-token verification against the fixed trusted issuer (Ed25519, kid "k1", audience
//! "orders-api"), on arbitrary strings.
//!
//! Input: the token, as the gateway takes it from `Authorization: Bearer …` (lossy UTF-8).
//! Invariants: nothing panics, at any clock; a token verified names the trusted issuer and a
//! non-empty client subject, and is still verified an instant later (no state).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tollgate_core::token::TrustedIssuers;
use tollgate_fuzz::{issuers, ISSUER, NOW_MS};

fn trusted() -> &'static TrustedIssuers {
    static TRUSTED: OnceLock<TrustedIssuers> = OnceLock::new();
    TRUSTED.get_or_init(|| TrustedIssuers::build(&issuers()).expect("the fixed issuer is valid"))
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    for now_ms in [0, u64::MAX] {
        let _ = trusted().verify(&token, now_ms);
    }
    if let Ok(verified) = trusted().verify(&token, NOW_MS) {
        assert_eq!(verified.issuer, ISSUER);
        assert!(!verified.client_subject.is_empty());
        assert!(trusted().verify(&token, NOW_MS).is_ok());
    }
});

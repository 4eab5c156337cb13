use super::*;
use crate::testkit::{ed_jwk as jwk, ed_token, ISSUER as ISS};
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::JwkSet;
use serde_json::json;

const NOW_S: u64 = 1_800_000_000;

fn issuers(keys: Vec<serde_json::Value>) -> TrustedIssuers {
    let jwks: JwkSet = serde_json::from_value(json!({ "keys": keys })).unwrap();
    TrustedIssuers::build(&[Issuer {
        issuer: ISS.into(),
        audiences: vec!["orders-api".into()],
        jwks,
        client_claim: "sub".into(),
        max_token_lifetime_seconds: None,
    }])
    .unwrap()
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "sub": "acme/mobile/1", "aud": "orders-api",
           "iat": NOW_S - 10, "exp": NOW_S + 300, "jti": "t1"})
}

fn header(kid: &str) -> serde_json::Value {
    json!({"alg": "EdDSA", "typ": "JWT", "kid": kid})
}

fn verify(t: &TrustedIssuers, token: &str) -> Result<VerifiedToken, TokenRejected> {
    t.verify(token, NOW_S * 1000)
}

#[test]
fn a_valid_token_names_its_client() {
    let t = issuers(vec![jwk(1, "k1")]);
    let v = verify(&t, &ed_token(1, header("k1"), claims())).unwrap();
    assert_eq!(v.issuer, ISS);
    assert_eq!(v.client_subject, "acme/mobile/1");
    assert_eq!(v.subject.as_deref(), Some("acme/mobile/1"));
}

#[test]
fn times_are_checked_with_small_leeway() {
    let t = issuers(vec![jwk(1, "k1")]);
    let mut c = claims();
    c["exp"] = json!(NOW_S - LEEWAY_SECONDS);
    assert_eq!(
        verify(&t, &ed_token(1, header("k1"), c)),
        Err(TokenRejected::Expired)
    );
    let mut c = claims();
    c["exp"] = json!(NOW_S - 5);
    assert!(
        verify(&t, &ed_token(1, header("k1"), c)).is_ok(),
        "within leeway"
    );
    let mut c = claims();
    c["nbf"] = json!(NOW_S + LEEWAY_SECONDS + 1);
    assert_eq!(
        verify(&t, &ed_token(1, header("k1"), c)),
        Err(TokenRejected::NotYetValid)
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        verify(&t, &ed_token(1, header("k1"), c)),
        Err(TokenRejected::MissingClaim("exp".into()))
    );
}

#[test]
fn audience_and_issuer_must_match() {
    let t = issuers(vec![jwk(1, "k1")]);
    let mut c = claims();
    c["aud"] = json!("billing-api");
    assert_eq!(
        verify(&t, &ed_token(1, header("k1"), c)),
        Err(TokenRejected::WrongAudience)
    );
    let mut c = claims();
    c["iss"] = json!("https://evil.example");
    assert_eq!(
        verify(&t, &ed_token(1, header("k1"), c)),
        Err(TokenRejected::UntrustedIssuer)
    );
}

#[test]
fn tampered_or_foreign_signatures_fail() {
    let t = issuers(vec![jwk(1, "k1")]);
    let token = ed_token(1, header("k1"), claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims();
    forged["sub"] = json!("acme/admin/1");
    let forged_payload = b64(&forged);
    parts[1] = &forged_payload;
    assert_eq!(
        verify(&t, &parts.join(".")),
        Err(TokenRejected::BadSignature)
    );
    // Signed by another key under the trusted kid.
    assert_eq!(
        verify(&t, &ed_token(2, header("k1"), claims())),
        Err(TokenRejected::BadSignature)
    );
    assert_eq!(
        verify(&t, &ed_token(1, header("k9"), claims())),
        Err(TokenRejected::UnknownKey)
    );
    assert_eq!(verify(&t, "not.a.jwt"), Err(TokenRejected::Malformed));
    assert_eq!(verify(&t, "garbage"), Err(TokenRejected::Malformed));
}

#[test]
fn alg_none_and_hmac_confusion_are_refused() {
    let t = issuers(vec![jwk(1, "k1")]);
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&claims())
    );
    assert!(verify(&t, &none).is_err());
    // HS256 "signed" with the public key as the shared secret.
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": "HS256", "kid": "k1"})),
        b64(&claims())
    );
    let public = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
    let mut mac = Hmac::<Sha256>::new_from_slice(public.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let hs = format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(verify(&t, &hs), Err(TokenRejected::WrongAlgorithm));
}

#[test]
fn rotation_keeps_both_keys_and_kidless_tokens_need_one_key() {
    let t = issuers(vec![jwk(1, "old"), jwk(2, "new")]);
    assert!(verify(&t, &ed_token(1, header("old"), claims())).is_ok());
    assert!(verify(&t, &ed_token(2, header("new"), claims())).is_ok());
    let kidless = json!({"alg": "EdDSA"});
    assert_eq!(
        verify(&t, &ed_token(1, kidless.clone(), claims())),
        Err(TokenRejected::UnknownKey)
    );
    let single = issuers(vec![jwk(1, "only")]);
    assert!(verify(&single, &ed_token(1, kidless, claims())).is_ok());
}

#[test]
fn unusable_keys_are_refused_at_load_with_their_field() {
    let jwks: JwkSet =
        serde_json::from_value(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}))
            .unwrap();
    let e = TrustedIssuers::build(&[Issuer {
        issuer: ISS.into(),
        audiences: vec!["a".into()],
        jwks,
        client_claim: "sub".into(),
        max_token_lifetime_seconds: None,
    }])
    .unwrap_err();
    assert_eq!(e.field, "issuers[0].jwks.keys[0]");
}

#[test]
fn subject_digests_are_separate_from_key_digests() {
    assert_ne!(
        subject_digest(ISS, "acme/mobile/1"),
        crate::keys::key_digest("acme/mobile/1")
    );
    assert_ne!(subject_digest("a", "b\0c"), subject_digest("a\0b", "c"));
}

#[test]
fn a_critical_header_extension_is_refused() {
    let t = issuers(vec![jwk(1, "k1")]);
    for crit in [json!(["exp"]), json!(["x-unknown"]), json!([])] {
        let mut h = header("k1");
        h["crit"] = crit.clone();
        h["x-unknown"] = json!(true);
        assert_eq!(
            verify(&t, &ed_token(1, h, claims())),
            Err(TokenRejected::CriticalExtension),
            "crit {crit}"
        );
    }
}

#[test]
fn a_token_valid_longer_than_its_issuer_allows_is_refused() {
    let t = issuers(vec![jwk(1, "k1")]);
    let mut c = claims();
    // 9999-12-31T23:59:59Z
    c["exp"] = json!(253_402_300_799u64);
    assert_eq!(
        verify(&t, &ed_token(1, header("k1"), c)),
        Err(TokenRejected::LifetimeTooLong)
    );
    let mut c = claims();
    c["exp"] = json!(NOW_S + DEFAULT_MAX_TOKEN_LIFETIME_SECONDS);
    assert!(verify(&t, &ed_token(1, header("k1"), c)).is_ok());

    let jwks: JwkSet = serde_json::from_value(json!({ "keys": [jwk(1, "k1")] })).unwrap();
    let short = TrustedIssuers::build(&[Issuer {
        issuer: ISS.into(),
        audiences: vec!["orders-api".into()],
        jwks,
        client_claim: "sub".into(),
        max_token_lifetime_seconds: Some(600),
    }])
    .unwrap();
    let mut c = claims();
    c["exp"] = json!(NOW_S + 600);
    assert!(verify(&short, &ed_token(1, header("k1"), c)).is_ok());
    let mut c = claims();
    c["exp"] = json!(NOW_S + 600 + LEEWAY_SECONDS + 1);
    assert_eq!(
        verify(&short, &ed_token(1, header("k1"), c)),
        Err(TokenRejected::LifetimeTooLong)
    );
}

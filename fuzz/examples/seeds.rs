//! Writes the committed seed corpus, `seeds/<target>/`, from the fixed catalogue, its keys and
//! its token issuer: `cargo run --example seeds` (in fuzz/). Re-running rewrites the same files.
//! The real control-plane snapshots (`seeds/snapshot/control-plane-*.json`) were captured from
//! `tollgate serve` with `demo/catalogue.yaml` applied: `GET /v1/snapshot`, and after a key
//! rotation `GET /v1/snapshot?since=<revision>` (a delta page); this example writes each as
//! `signature\nbody` too, signed with [`SNAPSHOT_SIGNING_SEED`] at the targets' clock.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};
use tollgate_core::distribution::compile;
use tollgate_core::keydir::bucket_of;
use tollgate_core::keys::key_digest;
use tollgate_core::signing;
use tollgate_core::token::TrustedIssuers;
use tollgate_fuzz::*;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    fs::create_dir_all(&dir).expect("seeds directory");
    fs::write(dir.join(name), bytes).expect("seed written");
}

fn main() {
    // snapshot: bodies (signed by the target), and signature\nbody as a gateway receives them
    let full = catalogue();
    let body = serde_json::to_vec(&full).expect("json");
    write("snapshot", "catalogue.json", &body);
    write(
        "snapshot",
        "catalogue-pretty.json",
        &serde_json::to_vec_pretty(&full).expect("json"),
    );
    write("snapshot", "empty.json", br#"{"schema":1,"revision":0}"#);
    let mut page = full.clone();
    page["buckets"] = json!([bucket_of(&key_digest(GOLD_KEY)), 0, 65535]);
    page["next"] = json!("7.1");
    write(
        "snapshot",
        "page.json",
        &serde_json::to_vec(&page).expect("json"),
    );
    write(
        "snapshot",
        "wrong-schema.json",
        br#"{"schema":2,"revision":1}"#,
    );
    let key = snapshot_signing_key();
    let sign = |body: &[u8]| {
        [
            key.sign(NOW_MS / 1000, &signing::body_digest(body))
                .as_bytes(),
            b"\n",
            body,
        ]
        .concat()
    };
    write("snapshot", "signed-catalogue", &sign(&body));
    for captured in ["control-plane-demo", "control-plane-delta"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/snapshot");
        let body = fs::read(dir.join(format!("{captured}.json"))).expect("captured seed");
        write("snapshot", &format!("{captured}-signed"), &sign(&body));
    }
    write(
        "snapshot",
        "bad-signature",
        &[b"AAAA\n".as_slice(), &body].concat(),
    );

    // gateway: path \n authority \n x-api-key \n authorization
    let bearer = format!("Bearer {}", valid_token());
    let requests: Vec<(&str, String)> = vec![
        (
            "gold-orders",
            format!("/orders/v1/42?x=1\ngw.example.com\n{GOLD_KEY}"),
        ),
        (
            "gold-query",
            format!("/orders/v1/42?apikey={GOLD_KEY}&page=2\ngw.example.com"),
        ),
        (
            "bronze",
            format!("/orders/v1/1\ngw.example.com\n{BRONZE_KEY}"),
        ),
        ("old-key", format!("/orders/v1\ngw.example.com\n{OLD_KEY}")),
        ("no-key", "/orders/v1/1\ngw.example.com".into()),
        (
            "public",
            format!("/status/health\ngw.example.com\n{GOLD_KEY}"),
        ),
        (
            "nested-private",
            format!("/status/admin/users\ngw.example.com\n{GOLD_KEY}"),
        ),
        (
            "path-parameter",
            "/status/admin;x=1/users\ngw.example.com".into(),
        ),
        (
            "traversal",
            "/status/..;/orders/v1/1\ngw.example.com".into(),
        ),
        (
            "encoded-dot",
            "/status/%2e%2e/orders/v1/1\ngw.example.com".into(),
        ),
        ("prefix-boundary", "/orders/v1-admin\ngw.example.com".into()),
        (
            "retired",
            format!("/orders/v0/1\ngw.example.com\n{GOLD_KEY}"),
        ),
        (
            "host-routed",
            format!("/partners/x\npartners.example.com:443\n{GOLD_KEY}"),
        ),
        ("token", format!("/orders/v1/7\ngw.example.com\n\n{bearer}")),
        (
            "token-only-api",
            format!("/billing/1\ngw.example.com\n{GOLD_KEY}\n{bearer}"),
        ),
        (
            "token-lowercase-scheme",
            format!("/billing/1\ngw.example.com\n\nbearer  {}", valid_token()),
        ),
        ("empty-key", "/orders/v1\ngw.example.com\n".into()),
    ];
    for (name, request) in requests {
        write("gateway", name, request.as_bytes());
    }

    // limits: arbitrary bytes, a few shapes
    write("limits", "zeros", &[0u8; 64]);
    write(
        "limits",
        "small",
        &[
            3, 1, 2, 0, 3, 2, 1, 4, 5, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 9, 9, 9, 9,
        ],
    );
    write("limits", "ones", &[0xffu8; 96]);

    // keydir: mode 0 + a real bucket; mode 1 + record material
    let compiled = compile(&body).expect("the catalogue compiles").1;
    for (bucket, bytes) in &compiled.directory.buckets {
        write(
            "keydir",
            &format!("bucket-{bucket:04x}"),
            &[&[0u8][..], bytes].concat(),
        );
    }
    write("keydir", "records", &[&[1u8][..], &[7u8; 200]].concat());

    // token: valid, and the ways a token goes wrong
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"});
    let claims = claims();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        f(&mut c);
        c
    };
    let tokens = [
        ("valid", valid_token()),
        (
            "no-kid",
            token(ISSUER_KEY_SEED, &json!({"alg": "EdDSA"}), &claims),
        ),
        (
            "expired",
            token(
                ISSUER_KEY_SEED,
                &header,
                &with(&|c| c["exp"] = json!(1_000)),
            ),
        ),
        (
            "not-yet",
            token(
                ISSUER_KEY_SEED,
                &header,
                &with(&|c| c["nbf"] = json!(4_000_000_000u64)),
            ),
        ),
        (
            "nbf-string",
            token(
                ISSUER_KEY_SEED,
                &header,
                &with(&|c| c["nbf"] = json!("soon")),
            ),
        ),
        (
            "wrong-audience",
            token(
                ISSUER_KEY_SEED,
                &header,
                &with(&|c| c["aud"] = json!("other")),
            ),
        ),
        (
            "audience-list",
            token(
                ISSUER_KEY_SEED,
                &header,
                &with(&|c| c["aud"] = json!(["x", AUDIENCE])),
            ),
        ),
        (
            "no-sub",
            token(ISSUER_KEY_SEED, &header, &with(&|c| c["sub"] = json!(null))),
        ),
        ("other-key", token(2, &header, &claims)),
        (
            "unknown-kid",
            token(
                ISSUER_KEY_SEED,
                &json!({"alg": "EdDSA", "kid": "k9"}),
                &claims,
            ),
        ),
        (
            "alg-hs256",
            token(
                ISSUER_KEY_SEED,
                &json!({"alg": "HS256", "kid": "k1"}),
                &claims,
            ),
        ),
        (
            "alg-none",
            format!(
                "{}.",
                token(ISSUER_KEY_SEED, &json!({"alg": "none"}), &claims)
                    .rsplit_once('.')
                    .map_or("", |(a, _)| a)
            ),
        ),
        (
            "untrusted-issuer",
            token(
                ISSUER_KEY_SEED,
                &header,
                &with(&|c| c["iss"] = json!("https://evil.example")),
            ),
        ),
    ];
    let trusted = TrustedIssuers::build(&issuers()).expect("the fixed issuer is valid");
    for (name, t) in tokens {
        // The corpus must mean what its names say: only "valid" (and the audience list) verify.
        let verified = trusted.verify(&t, NOW_MS).is_ok();
        assert_eq!(
            verified,
            name == "valid" || name == "audience-list" || name == "no-kid",
            "{name}"
        );
        write("token", name, t.as_bytes());
    }
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "acme/mobile/1",
        "exp": NOW_MS / 1000 + 3_600, "iat": NOW_MS / 1000})
}

fn valid_token() -> String {
    token(
        ISSUER_KEY_SEED,
        &json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"}),
        &claims(),
    )
}

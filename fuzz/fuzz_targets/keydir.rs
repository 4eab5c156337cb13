//! The key-directory decoder: a worker reads a bucket from shared data and looks a key up in it.
//!
//! Input: a first byte choosing the mode. Even: the rest is a bucket as read from shared data,
//! looked up for a known key and for the digest its first record claims, and every grant of
//! what is found is read. Odd: the rest describes records, which are encoded, and each must
//! be found again with its client, expiry and first grant per API.
//!
//! Invariants: decoding never panics and a malformed bucket finds nothing rather than
//! something wrong; encode then find is the identity.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tollgate_core::keydir::{encode_bucket, find, Grant, KeyRecord};
use tollgate_core::keys::{key_digest, KeyDigest};
use tollgate_core::snapshot::{Period, RateLimit};
use tollgate_fuzz::GOLD_KEY;

const APIS: [&str; 4] = ["acme/orders/1", "acme/billing/1", "acme/admin/1", ""];

fn decode(bucket: &[u8]) {
    let mut digests = vec![key_digest(GOLD_KEY)];
    if let Some(first) = bucket.get(1..33).and_then(|d| KeyDigest::try_from(d).ok()) {
        digests.push(first);
    }
    for digest in digests {
        let Some(found) = find(bucket, &digest) else {
            continue;
        };
        let _ = found.client.len();
        for api in APIS {
            if let Some(grant) = found.grant_for(api) {
                assert!(grant.limits.to_vec().len() <= 5);
                let _ = grant.plan.len();
            }
        }
    }
}

fn round_trip(u: &mut Unstructured<'_>) -> Result<()> {
    let mut records: Vec<KeyRecord> = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        let digest: KeyDigest = u.arbitrary()?;
        if records.iter().any(|r| r.digest == digest) {
            continue;
        }
        let mut grants = Vec::new();
        for _ in 0..u.int_in_range(0..=4)? {
            let mut limits = Vec::new();
            for _ in 0..u.int_in_range(0..=5)? {
                limits.push(RateLimit {
                    requests: u.arbitrary()?,
                    per: *u.choose(&Period::ALL)?,
                });
            }
            grants.push(Grant {
                contract: u.arbitrary()?,
                api: (*u.choose(&APIS)?).to_owned(),
                plan: u.arbitrary()?,
                limits,
            });
        }
        records.push(KeyRecord {
            digest,
            expires_at: u.arbitrary::<Option<u64>>()?.filter(|t| *t != 0),
            client: u.arbitrary()?,
            grants,
        });
    }
    let expected = records.clone();
    let bucket = encode_bucket(&mut records);
    for record in &expected {
        let found = find(&bucket, &record.digest).expect("an encoded key is found");
        assert_eq!(found.client, record.client);
        assert_eq!(found.expires_at, record.expires_at);
        for api in APIS {
            let want = record.grants.iter().find(|g| g.api == api);
            let got = found.grant_for(api);
            match (want, got) {
                (None, None) => {}
                (Some(w), Some(g)) => {
                    assert_eq!((g.contract, g.plan), (w.contract, w.plan.as_str()));
                    assert_eq!(g.limits.to_vec(), w.limits);
                }
                (w, g) => panic!("grant for {api:?}: encoded {w:?}, found {g:?}"),
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => {
            let _ = round_trip(&mut Unstructured::new(rest));
        }
        Some((_, rest)) => decode(rest),
        None => {}
    }
});

//! The key directory: API keys, their clients and contracts, kept in Envoy shared data in
//! fixed buckets so that one copy serves every worker of a process.
//!
//! A worker VM keeps only the routing table; for a request with a key it reads the one bucket
//! the key hashes to (`tollgate.keys.<bucket>`, a few records even at a million keys) and finds
//! the key's record there. A record is self-contained: the client's name, the key's expiry, and
//! for each contract its id, API version, plan version and the plan's limits. So a record never
//! refers to anything a worker might not have adopted yet, and updating it is one atomic write.
//!
//! The number of buckets is fixed ([`BUCKETS`]), which also bounds the number of shared-data
//! keys the directory can ever create (Envoy never deletes shared-data keys).
//!
//! Bucket encoding (little endian), records sorted by digest:
//! ```text
//! bucket   := 0x01 record*
//! record   := digest[32] expires_at:u64 (0 = never) client:str grants:u16 grant*
//! grant    := contract:u64 api:str plan:str limits:u8 (period:u8 requests:u64)*
//! str      := len:u16 utf8[len]
//! ```

use std::collections::BTreeMap;

use crate::keys::KeyDigest;
use crate::snapshot::{Period, RateLimit};

/// 2^16 buckets: about 15 records per bucket at a million keys.
pub const BUCKETS: usize = 1 << 16;

const FORMAT: u8 = 1;

pub fn bucket_of(digest: &KeyDigest) -> u16 {
    u16::from_be_bytes([digest[0], digest[1]])
}

/// The shared-data key of a bucket.
pub fn bucket_key(bucket: u16) -> String {
    format!("tollgate.keys.{bucket:04x}")
}

/// At most one limit per period, so a plan has at most five.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    items: [Option<RateLimit>; 5],
}

impl Limits {
    pub fn from_slice(limits: &[RateLimit]) -> Self {
        let mut out = Limits::default();
        for (slot, l) in out.items.iter_mut().zip(limits) {
            *slot = Some(*l);
        }
        out
    }

    pub fn to_vec(&self) -> Vec<RateLimit> {
        self.items.iter().flatten().copied().collect()
    }
}

/// A contract as the gateway needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub contract: u64,
    pub api: String,
    pub plan: String,
    pub limits: Vec<RateLimit>,
}

/// One key's record, for building buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub digest: KeyDigest,
    pub expires_at: Option<u64>,
    pub client: String,
    pub grants: Vec<Grant>,
}

/// Encodes the records of one bucket (any order; they are sorted here).
pub fn encode_bucket(records: &mut [KeyRecord]) -> Vec<u8> {
    records.sort_by_key(|r| r.digest);
    let mut out = vec![FORMAT];
    for r in records.iter() {
        out.extend_from_slice(&r.digest);
        out.extend_from_slice(&r.expires_at.unwrap_or(0).to_le_bytes());
        put_str(&mut out, &r.client);
        put_u16(&mut out, r.grants.len());
        for g in &r.grants {
            out.extend_from_slice(&g.contract.to_le_bytes());
            put_str(&mut out, &g.api);
            put_str(&mut out, &g.plan);
            out.push(u8::try_from(g.limits.len()).unwrap_or(u8::MAX));
            for l in &g.limits {
                out.push(l.per.tag());
                out.extend_from_slice(&l.requests.to_le_bytes());
            }
        }
    }
    out
}

/// Groups records into encoded buckets.
pub fn encode_buckets(records: Vec<KeyRecord>) -> BTreeMap<u16, Vec<u8>> {
    let mut grouped: BTreeMap<u16, Vec<KeyRecord>> = BTreeMap::new();
    for r in records {
        grouped.entry(bucket_of(&r.digest)).or_default().push(r);
    }
    grouped
        .into_iter()
        .map(|(b, mut rs)| (b, encode_bucket(&mut rs)))
        .collect()
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names are validated to be short (ids of at most ~200 bytes); never truncate silently.
    let bytes = s.as_bytes();
    let len = bytes.len().min(usize::from(u16::MAX));
    put_u16(out, len);
    out.extend_from_slice(bytes.get(..len).unwrap_or_default());
}

/// A key's record found in a bucket, borrowing the bucket's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundKey<'b> {
    pub client: &'b str,
    pub expires_at: Option<u64>,
    grants: &'b [u8],
    grant_count: u16,
}

/// A contract of a found key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundGrant<'b> {
    pub contract: u64,
    pub plan: &'b str,
    pub limits: Limits,
}

/// The record of `digest` in an encoded bucket. A malformed bucket finds nothing (fail closed).
pub fn find<'b>(bucket: &'b [u8], digest: &KeyDigest) -> Option<FoundKey<'b>> {
    let mut r = Reader::new(bucket);
    if r.u8()? != FORMAT {
        return None;
    }
    while !r.is_empty() {
        let record_digest = r.bytes(32)?;
        let expires_at = r.u64()?;
        let client = r.str()?;
        let grant_count = r.u16()?;
        let grants_start = r.pos;
        for _ in 0..grant_count {
            skip_grant(&mut r)?;
        }
        if record_digest == digest.as_slice() {
            return Some(FoundKey {
                client,
                expires_at: (expires_at != 0).then_some(expires_at),
                grants: bucket.get(grants_start..r.pos)?,
                grant_count,
            });
        }
    }
    None
}

impl<'b> FoundKey<'b> {
    /// The contract this key's client holds for API version `api`.
    pub fn grant_for(&self, api: &str) -> Option<FoundGrant<'b>> {
        let mut r = Reader::new(self.grants);
        for _ in 0..self.grant_count {
            let contract = r.u64()?;
            let grant_api = r.str()?;
            let plan = r.str()?;
            let n = r.u8()?;
            if grant_api != api {
                r.bytes(usize::from(n) * 9)?;
                continue;
            }
            let mut list = [RateLimit {
                requests: 0,
                per: Period::Second,
            }; 5];
            let count = usize::from(n).min(5);
            for slot in list.iter_mut().take(count) {
                let per = Period::from_tag(r.u8()?)?;
                *slot = RateLimit {
                    requests: r.u64()?,
                    per,
                };
            }
            return Some(FoundGrant {
                contract,
                plan,
                limits: Limits::from_slice(list.get(..count)?),
            });
        }
        None
    }
}

fn skip_grant(r: &mut Reader<'_>) -> Option<()> {
    r.u64()?;
    r.str()?;
    r.str()?;
    let n = r.u8()?;
    r.bytes(usize::from(n) * 9)?;
    Some(())
}

/// Bounds-checked reads; every method returns `None` past the end.
struct Reader<'b> {
    bytes: &'b [u8],
    pos: usize,
}

impl<'b> Reader<'b> {
    fn new(bytes: &'b [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn bytes(&mut self, n: usize) -> Option<&'b [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(*self.bytes(1)?.first()?)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.bytes(2)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    fn str(&mut self) -> Option<&'b str> {
        let len = usize::from(self.u16()?);
        std::str::from_utf8(self.bytes(len)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::key_digest;
    use proptest::prelude::*;

    fn record(key: &str, apis: &[&str]) -> KeyRecord {
        KeyRecord {
            digest: key_digest(key),
            expires_at: None,
            client: format!("acme/{key}/1"),
            grants: apis
                .iter()
                .enumerate()
                .map(|(i, api)| Grant {
                    contract: i as u64 + 10,
                    api: (*api).to_owned(),
                    plan: "acme/gold/1".into(),
                    limits: vec![
                        RateLimit {
                            requests: 5,
                            per: Period::Minute,
                        },
                        RateLimit {
                            requests: 100,
                            per: Period::Month,
                        },
                    ],
                })
                .collect(),
        }
    }

    #[test]
    fn finds_a_record_and_its_grant_by_api() {
        let mut records = vec![
            record("k1", &["acme/orders/1", "acme/billing/1"]),
            record("k2", &[]),
            record("k3", &["acme/orders/1"]),
        ];
        let bucket = encode_bucket(&mut records);
        let found = find(&bucket, &key_digest("k1")).unwrap();
        assert_eq!(found.client, "acme/k1/1");
        let grant = found.grant_for("acme/billing/1").unwrap();
        assert_eq!((grant.contract, grant.plan), (11, "acme/gold/1"));
        assert_eq!(grant.limits.to_vec(), records_limits());
        assert!(found.grant_for("acme/other/1").is_none());
        assert!(find(&bucket, &key_digest("k2"))
            .unwrap()
            .grant_for("acme/orders/1")
            .is_none());
        assert!(find(&bucket, &key_digest("nope")).is_none());
    }

    fn records_limits() -> Vec<RateLimit> {
        record("x", &["a"]).grants[0].limits.clone()
    }

    #[test]
    fn bucket_keys_are_bounded_and_stable() {
        let d = key_digest("abc");
        assert_eq!(bucket_of(&d), 0xba78);
        assert_eq!(bucket_key(bucket_of(&d)), "tollgate.keys.ba78");
        assert_eq!(bucket_key(u16::MAX), "tollgate.keys.ffff");
    }

    proptest! {
        /// Every record is found with its grants, whatever the bucket holds; truncated or
        /// corrupted buckets never panic.
        #[test]
        fn every_record_round_trips(keys in proptest::collection::btree_set("[a-z]{1,12}", 1..30), cut in 0usize..2000, flip in any::<u8>()) {
            let mut records: Vec<KeyRecord> =
                keys.iter().map(|k| record(k, &["acme/orders/1"])).collect();
            let bucket = encode_bucket(&mut records);
            for k in &keys {
                let found = find(&bucket, &key_digest(k)).unwrap();
                prop_assert_eq!(found.client, format!("acme/{k}/1"));
                prop_assert_eq!(found.grant_for("acme/orders/1").unwrap().limits.to_vec(), records_limits());
            }
            let truncated = &bucket[..cut.min(bucket.len())];
            let _ = find(truncated, &key_digest(keys.iter().next().unwrap()));
            let mut corrupted = bucket.clone();
            let at = cut % corrupted.len();
            corrupted[at] ^= flip;
            if let Some(f) = find(&corrupted, &key_digest(keys.iter().next().unwrap())) {
                let _ = f.grant_for("acme/orders/1");
            }
        }
    }
}

//! A worker's cache of key-directory buckets, so that a request for a key seen recently does not
//! read its bucket from shared data again (one host call, a copy of the bucket through the
//! module's allocator, and Envoy's process-wide shared-data lock).
//!
//! Bounded in bytes (two generations: a bucket read or hit lands in the young one; when that
//! holds half the budget it becomes the old one and the previous old one is dropped), so a
//! worker never holds a copy of the whole directory. Buckets are cached whether or not they hold
//! the key asked for (a bucket is what shared data answers), so a stream of unknown keys costs
//! at most the budget. The worker drops what a new revision changed before enforcing it.

use std::collections::HashMap;

use crate::keydir::BUCKETS;
use crate::shared::{SetOutcome, SharedStore, StoreError};

/// The default budget per worker.
pub const DEFAULT_BUDGET_BYTES: usize = 4 << 20;

const BUCKET_KEY_PREFIX: &str = "tollgate.keys.";

/// The bucket a shared-data key names (`tollgate.keys.<4 hex digits>`), if it names one.
pub fn bucket_of_key(key: &str) -> Option<u16> {
    let hex = key.strip_prefix(BUCKET_KEY_PREFIX)?;
    if hex.len() != 4 {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

#[derive(Debug)]
pub struct BucketCache {
    young: HashMap<u16, Vec<u8>>,
    old: HashMap<u16, Vec<u8>>,
    young_bytes: usize,
    budget: usize,
    hits: u64,
    misses: u64,
}

/// Which buckets changed between two revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    All,
    /// A bitmap of [`BUCKETS`] bits.
    Buckets(Box<[u64; BUCKETS / 64]>),
}

impl Changed {
    pub fn none() -> Self {
        Changed::Buckets(Box::new([0; BUCKETS / 64]))
    }

    pub fn add(&mut self, bucket: u16) {
        if let Changed::Buckets(bits) = self {
            if let Some(word) = bits.get_mut(usize::from(bucket) / 64) {
                *word |= 1 << (bucket % 64);
            }
        }
    }

    pub fn contains(&self, bucket: u16) -> bool {
        match self {
            Changed::All => true,
            Changed::Buckets(bits) => bits
                .get(usize::from(bucket) / 64)
                .is_some_and(|w| w & (1 << (bucket % 64)) != 0),
        }
    }
}

impl BucketCache {
    pub fn new(budget: usize) -> Self {
        BucketCache {
            young: HashMap::new(),
            old: HashMap::new(),
            young_bytes: 0,
            budget,
            hits: 0,
            misses: 0,
        }
    }

    /// A copy of a cached bucket.
    fn get(&mut self, bucket: u16) -> Option<Vec<u8>> {
        if let Some(bytes) = self.young.get(&bucket) {
            self.hits += 1;
            return Some(bytes.clone());
        }
        let bytes = self.old.remove(&bucket)?;
        self.hits += 1;
        let copy = bytes.clone();
        self.insert(bucket, bytes);
        Some(copy)
    }

    fn insert(&mut self, bucket: u16, bytes: Vec<u8>) {
        // What a bucket costs here: its bytes and the map entry.
        let cost = bytes.len() + 32;
        if cost > self.budget / 2 {
            return;
        }
        if self.young_bytes + cost > self.budget / 2 {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        self.old.remove(&bucket);
        if let Some(previous) = self.young.insert(bucket, bytes) {
            self.young_bytes = self.young_bytes.saturating_sub(previous.len() + 32);
        }
        self.young_bytes += cost;
    }

    /// Drops the buckets a new revision changed.
    pub fn evict(&mut self, changed: &Changed) {
        match changed {
            Changed::All => {
                self.young.clear();
                self.old.clear();
                self.young_bytes = 0;
            }
            Changed::Buckets(_) => {
                self.old.retain(|b, _| !changed.contains(*b));
                let mut freed = 0;
                self.young.retain(|b, bytes| {
                    let keep = !changed.contains(*b);
                    if !keep {
                        freed += bytes.len() + 32;
                    }
                    keep
                });
                self.young_bytes = self.young_bytes.saturating_sub(freed);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of bucket data held (young and old).
    pub fn bytes(&self) -> usize {
        self.young
            .values()
            .chain(self.old.values())
            .map(Vec::len)
            .sum()
    }

    /// (hits, misses) since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.hits),
            std::mem::take(&mut self.misses),
        )
    }
}

/// Shared data with key-directory bucket reads served from a worker's [`BucketCache`]; every
/// other key (counters above all) goes to shared data every time.
pub struct CachedDirectory<'c, S: ?Sized> {
    pub cache: &'c mut BucketCache,
    pub store: &'c mut S,
}

impl<S: SharedStore + ?Sized> SharedStore for CachedDirectory<'_, S> {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let Some(bucket) = bucket_of_key(key) else {
            return self.store.get(key);
        };
        if let Some(bytes) = self.cache.get(bucket) {
            // Bucket reads never use the CAS token; an empty bucket is as good as an absent
            // one (no keys either way).
            return Ok((!bytes.is_empty()).then_some((bytes, 0)));
        }
        self.cache.misses += 1;
        let found = self.store.get(key)?;
        let bytes = found.as_ref().map(|(b, _)| b.clone()).unwrap_or_default();
        self.cache.insert(bucket, bytes);
        Ok(found)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError> {
        if let Some(bucket) = bucket_of_key(key) {
            let mut changed = Changed::none();
            changed.add(bucket);
            self.cache.evict(&changed);
        }
        self.store.set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keydir::bucket_key;
    use crate::shared::MemoryStore;

    /// Counts reads that reach shared data.
    struct Reads<'s>(&'s mut MemoryStore, usize);

    impl SharedStore for Reads<'_> {
        fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.1 += 1;
            self.0.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError> {
            self.0.set(key, value, cas)
        }
    }

    #[test]
    fn bucket_keys_are_recognised_and_nothing_else() {
        assert_eq!(bucket_of_key(&bucket_key(0xba78)), Some(0xba78));
        assert_eq!(bucket_of_key("tollgate.keys.manifest"), None);
        assert_eq!(bucket_of_key("tollgate.counter.1"), None);
        assert_eq!(bucket_of_key("tollgate.keys.ffff0"), None);
    }

    #[test]
    fn a_cached_bucket_is_read_once_until_a_revision_changes_it() {
        let mut store = MemoryStore::new();
        store.set(&bucket_key(1), b"one", 0).unwrap();
        store.set(&bucket_key(2), b"two", 0).unwrap();
        store.set("tollgate.counter.1", b"c", 0).unwrap();
        let mut cache = BucketCache::new(DEFAULT_BUDGET_BYTES);
        let mut reads = Reads(&mut store, 0);
        for _ in 0..3 {
            let mut cached = CachedDirectory {
                cache: &mut cache,
                store: &mut reads,
            };
            assert_eq!(cached.get(&bucket_key(1)).unwrap().unwrap().0, b"one");
            assert_eq!(cached.get(&bucket_key(2)).unwrap().unwrap().0, b"two");
            assert_eq!(cached.get(&bucket_key(3)).unwrap(), None);
            cached.get("tollgate.counter.1").unwrap();
        }
        assert_eq!(reads.1, 3 + 3, "three buckets once, the counter every time");

        // The poller changes bucket 1; the worker evicts it on adopting the revision.
        reads.0.set(&bucket_key(1), b"uno", 0).unwrap();
        let mut changed = Changed::none();
        changed.add(1);
        cache.evict(&changed);
        let mut cached = CachedDirectory {
            cache: &mut cache,
            store: &mut reads,
        };
        assert_eq!(cached.get(&bucket_key(1)).unwrap().unwrap().0, b"uno");
        assert_eq!(cached.get(&bucket_key(2)).unwrap().unwrap().0, b"two");
        assert_eq!(reads.1, 6 + 1);
        cache.evict(&Changed::All);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_never_holds_more_than_its_budget() {
        let mut store = MemoryStore::new();
        for b in 0..2000u16 {
            store.set(&bucket_key(b), &[7u8; 500], 0).unwrap();
        }
        let budget = 64 * 1024;
        let mut cache = BucketCache::new(budget);
        for round in 0..3 {
            for b in 0..2000u16 {
                let mut cached = CachedDirectory {
                    cache: &mut cache,
                    store: &mut store,
                };
                assert_eq!(
                    cached.get(&bucket_key(b)).unwrap().unwrap().0.len(),
                    500,
                    "{round}"
                );
                assert!(
                    cache.bytes() + 32 * cache.len() <= budget,
                    "{} bytes",
                    cache.bytes()
                );
            }
        }
        assert!(cache.len() > 60, "still caches what fits: {}", cache.len());
    }
}

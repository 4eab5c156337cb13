//! Envoy shared data as the gateway uses it (counters and the key directory): its contract,
//! and an in-memory mirror of it for native tests.
//!
//! Envoy's semantics (proxy-wasm-cpp-host `SharedData`), which [`MemoryStore`] reproduces:
//! - `get` returns the value and a CAS token; every write hands out the next token from one
//!   process-wide sequence, so a token is never held by two keys at once (until the 32-bit
//!   sequence wraps);
//! - `set` with token 0 always writes; with another token it fails with a mismatch when the key
//!   exists and holds a different token;
//! - when the key is **absent the token is ignored** and the write succeeds.

use std::collections::HashMap;

/// A host call that failed in a way the request cannot recover from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Written,
    CasMismatch,
}

pub trait SharedStore {
    /// The value and CAS token of `key`, or `None` when the key does not exist.
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;

    /// Writes `value` if `cas` is 0, the key is absent, or the key's token equals `cas`.
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError>;
}

/// Shared data as Envoy keeps it, in memory, for native tests.
#[derive(Debug)]
pub struct MemoryStore {
    entries: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            entries: HashMap::new(),
            next_cas: 1,
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the token sequence elsewhere, e.g. just before it wraps.
    pub fn with_next_cas(next_cas: u32) -> Self {
        MemoryStore {
            entries: HashMap::new(),
            next_cas: next_cas.max(1),
        }
    }

    /// The value and token of `key` without a `&mut` borrow, for assertions.
    pub fn peek(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.entries.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn next_cas(&mut self) -> u32 {
        let token = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        token
    }
}

impl SharedStore for MemoryStore {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.entries.get(key).cloned())
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError> {
        if let Some((_, current)) = self.entries.get(key) {
            if cas != 0 && cas != *current {
                return Ok(SetOutcome::CasMismatch);
            }
        }
        let token = self.next_cas();
        self.entries.insert(key.to_owned(), (value.to_vec(), token));
        Ok(SetOutcome::Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_key_ignores_the_token() {
        let mut store = MemoryStore::new();
        assert_eq!(store.set("k", b"a", 999).unwrap(), SetOutcome::Written);
        let (_, token) = store.get("k").unwrap().unwrap();
        assert_eq!(
            store.set("k", b"b", token + 1).unwrap(),
            SetOutcome::CasMismatch
        );
        assert_eq!(store.set("k", b"b", token).unwrap(), SetOutcome::Written);
        assert_eq!(store.set("k", b"c", 0).unwrap(), SetOutcome::Written);
        assert_eq!(store.get("k").unwrap().unwrap().0, b"c");
    }

    #[test]
    fn token_sequence_skips_zero_when_it_wraps() {
        let mut store = MemoryStore::with_next_cas(u32::MAX);
        store.set("a", b"", 0).unwrap();
        store.set("b", b"", 0).unwrap();
        assert_eq!(store.get("a").unwrap().unwrap().1, u32::MAX);
        assert_eq!(store.get("b").unwrap().unwrap().1, 1);
    }
}

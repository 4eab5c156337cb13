//! The proxy-wasm header-map encoding, in both directions: how the host hands over every
//! request header in one call (`proxy_get_header_map_pairs`) and how a module passes headers
//! to `proxy_send_local_response`.
//!
//! ```text
//! map   := count:u32 (name_len:u32 value_len:u32)^count (name 0x00 value 0x00)^count
//! ```
//! (little endian). Decoding checks the whole layout once, so reading entries afterwards cannot
//! fail; a malformed map is an error, never a panic.

use std::borrow::Cow;

/// Every header of a map, as one buffer the host filled (one allocation, no copy per header).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderBlock {
    bytes: Vec<u8>,
    count: usize,
}

/// The map's bytes do not follow the proxy-wasm encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedMap;

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(raw)).ok()
}

impl HeaderBlock {
    /// Adopts an encoded map after checking its layout. An empty buffer is an empty map (the
    /// host returns nothing for a map without entries).
    pub fn decode(bytes: Vec<u8>) -> Result<Self, MalformedMap> {
        if bytes.is_empty() {
            return Ok(HeaderBlock::default());
        }
        let count = u32_at(&bytes, 0).ok_or(MalformedMap)?;
        let sizes_end = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(4))
            .ok_or(MalformedMap)?;
        if sizes_end > bytes.len() {
            return Err(MalformedMap);
        }
        let mut at = sizes_end;
        for i in 0..count {
            let name = u32_at(&bytes, 4 + 8 * i).ok_or(MalformedMap)?;
            let value = u32_at(&bytes, 8 + 8 * i).ok_or(MalformedMap)?;
            let name_end = at.checked_add(name).ok_or(MalformedMap)?;
            let value_end = name_end
                .checked_add(1)
                .and_then(|n| n.checked_add(value))
                .ok_or(MalformedMap)?;
            if bytes.get(name_end) != Some(&0) || bytes.get(value_end) != Some(&0) {
                return Err(MalformedMap);
            }
            at = value_end + 1;
        }
        Ok(HeaderBlock { bytes, count })
    }

    /// Encodes `headers` (the same encoding the host uses).
    pub fn encode<N: AsRef<str>, V: AsRef<str>>(headers: &[(N, V)]) -> Vec<u8> {
        let len_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
        let size = 4 + headers
            .iter()
            .map(|(n, v)| 10 + n.as_ref().len() + v.as_ref().len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&len_u32(headers.len()));
        for (name, value) in headers {
            out.extend_from_slice(&len_u32(name.as_ref().len()));
            out.extend_from_slice(&len_u32(value.as_ref().len()));
        }
        for (name, value) in headers {
            out.extend_from_slice(name.as_ref().as_bytes());
            out.push(0);
            out.extend_from_slice(value.as_ref().as_bytes());
            out.push(0);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Every (name, value) in the host's order, repeats included, as raw bytes.
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            block: self,
            index: 0,
            at: 4 + 8 * self.count,
        }
    }

    /// The first value of `name` (names as the host keeps them: lowercase), read lossily as
    /// UTF-8: a non-UTF-8 value can fail to match a key or a route, never panic, and is still
    /// seen as present.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.entries()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v))
    }

    /// How many values `name` has.
    pub fn count_of(&self, name: &str) -> usize {
        self.entries()
            .filter(|(n, _)| *n == name.as_bytes())
            .count()
    }
}

/// Iterator over a [`HeaderBlock`]'s entries.
pub struct Entries<'b> {
    block: &'b HeaderBlock,
    index: usize,
    at: usize,
}

impl<'b> Iterator for Entries<'b> {
    type Item = (&'b [u8], &'b [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.block.count {
            return None;
        }
        let bytes = &self.block.bytes;
        let name_len = u32_at(bytes, 4 + 8 * self.index)?;
        let value_len = u32_at(bytes, 8 + 8 * self.index)?;
        let name = bytes.get(self.at..self.at + name_len)?;
        let value_start = self.at + name_len + 1;
        let value = bytes.get(value_start..value_start + value_len)?;
        self.at = value_start + value_len + 1;
        self.index += 1;
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_what_it_encodes_in_order_with_repeats() {
        let headers = [
            (":path", "/a"),
            ("x-api-key", "k1"),
            ("x-api-key", "k2"),
            ("e", ""),
        ];
        let block = HeaderBlock::decode(HeaderBlock::encode(&headers)).unwrap();
        assert_eq!(block.len(), 4);
        let got: Vec<_> = block.entries().collect();
        assert_eq!(got[1], (&b"x-api-key"[..], &b"k1"[..]));
        assert_eq!(block.get("x-api-key").as_deref(), Some("k1"));
        assert_eq!(block.count_of("x-api-key"), 2);
        assert_eq!(block.get("e").as_deref(), Some(""));
        assert_eq!(block.get("missing"), None);
        assert!(HeaderBlock::decode(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn non_utf8_values_are_present_and_read_lossily() {
        let mut bytes = HeaderBlock::encode(&[("x-api-key", "ab")]);
        let at = bytes.len() - 2;
        bytes[at] = 0xff;
        let block = HeaderBlock::decode(bytes).unwrap();
        assert_eq!(block.get("x-api-key").as_deref(), Some("a\u{fffd}"));
    }

    proptest! {
        /// Any truncation or corruption of a map is refused or read within bounds; never a panic.
        #[test]
        fn malformed_maps_never_panic(cut in 0usize..200, at in 0usize..200, flip in any::<u8>()) {
            let bytes = HeaderBlock::encode(&[(":path", "/orders?x=1"), ("x-tollgate-client", "a/b/1")]);
            let truncated = bytes[..cut.min(bytes.len())].to_vec();
            if let Ok(b) = HeaderBlock::decode(truncated) {
                let _ = b.entries().count();
            }
            let mut corrupted = bytes.clone();
            let i = at % corrupted.len();
            corrupted[i] ^= flip;
            if let Ok(b) = HeaderBlock::decode(corrupted) {
                let _ = b.entries().count();
                let _ = b.get(":path");
            }
        }
    }
}

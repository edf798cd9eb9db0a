//! Interning lowercased tokens to dense `u32` ids.
//!
//! A token of up to 15 bytes (nearly all) is packed with its length into a
//! u128 key: interning hashes and compares one integer, with no string
//! compare and no allocation. Longer tokens are kept as strings.

use std::collections::HashMap;

use foldhash::fast::FixedState;

/// Bytes a packed key holds; byte 15 holds the length.
pub const SHORT: usize = 15;
/// Length byte marking a long token (low bits: its index in `long_words`).
const LONG: u128 = 0xFF << (8 * SHORT);
const ONES: u128 = u128::MAX / 0xFF;

/// Packs lowercased token bytes (at most [`SHORT`]).
#[inline]
pub fn pack(lowered: &[u8]) -> u128 {
    debug_assert!(lowered.len() <= SHORT);
    let mut buf = [0u8; 16];
    buf[..lowered.len()].copy_from_slice(lowered);
    buf[SHORT] = lowered.len() as u8;
    u128::from_le_bytes(buf)
}

/// Lowercases the ASCII letters of 16 ASCII bytes at once: a byte b is
/// uppercase iff b + 0x3F has its top bit set and b + 0x25 has not (no
/// carries between bytes, as every byte is below 0x80).
#[inline]
fn ascii_lower(x: u128) -> u128 {
    let a = x.wrapping_add(ONES * 0x3F);
    let b = x.wrapping_add(ONES * 0x25);
    x | ((a & !b & (ONES * 0x80)) >> 2)
}

/// A 64-bit mix of a u128 whose high bits are well spread.
#[inline]
pub fn mix128(k: u128) -> u64 {
    let (lo, hi) = (k as u64, (k >> 64) as u64);
    (lo ^ hi.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Open-addressing map from packed keys to ids, linear probing, load <= 1/2.
/// Key and id share a slot, so a lookup touches one cache line.
struct IdMap {
    slots: Vec<Slot>,
    shift: u32,
    len: usize,
}

#[derive(Clone, Copy)]
struct Slot {
    lo: u64,
    hi: u64,
    id: u32,
}

const EMPTY: Slot = Slot {
    lo: 0,
    hi: 0,
    id: u32::MAX,
};

impl Default for IdMap {
    fn default() -> Self {
        Self::with_bits(10)
    }
}

impl IdMap {
    fn with_bits(bits: u32) -> Self {
        IdMap {
            slots: vec![EMPTY; 1 << bits],
            shift: 64 - bits,
            len: 0,
        }
    }

    #[inline]
    fn get_or_insert(&mut self, key: u128, next: u32) -> u32 {
        if 2 * (self.len + 1) > self.slots.len() {
            self.grow();
        }
        let (lo, hi) = (key as u64, (key >> 64) as u64);
        let mask = self.slots.len() - 1;
        let mut i = (mix128(key) >> self.shift) as usize;
        loop {
            let slot = &mut self.slots[i];
            if slot.id == u32::MAX {
                *slot = Slot { lo, hi, id: next };
                self.len += 1;
                return next;
            }
            if slot.lo == lo && slot.hi == hi {
                return slot.id;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let bits = 64 - self.shift + 1;
        let old = std::mem::replace(self, Self::with_bits(bits));
        for slot in old.slots.into_iter().filter(|s| s.id != u32::MAX) {
            self.get_or_insert(u128::from(slot.lo) | u128::from(slot.hi) << 64, slot.id);
        }
    }
}

/// A vocabulary: token -> id, ids dense in order of first appearance.
#[derive(Default)]
pub struct Interner {
    short: IdMap,
    long: HashMap<Box<str>, u32, FixedState>,
    long_words: Vec<Box<str>>,
    /// Id -> key (packed, or [`LONG`] | index into `long_words`).
    words: Vec<u128>,
}

impl Interner {
    pub fn len(&self) -> usize {
        self.words.len()
    }

    #[inline]
    fn short(&mut self, key: u128) -> u32 {
        let next = self.words.len() as u32;
        let id = self.short.get_or_insert(key, next);
        if id == next {
            self.words.push(key);
        }
        id
    }

    fn long(&mut self, lowered: &str) -> u32 {
        if let Some(&id) = self.long.get(lowered) {
            return id;
        }
        let id = self.words.len() as u32;
        self.long.insert(lowered.into(), id);
        self.words.push(LONG | self.long_words.len() as u128);
        self.long_words.push(lowered.into());
        id
    }

    /// The id of an already lowercased token.
    #[inline]
    pub fn token(&mut self, lowered: &str) -> u32 {
        if lowered.len() <= SHORT {
            self.short(pack(lowered.as_bytes()))
        } else {
            self.long(lowered)
        }
    }

    /// Interns the tokens of ASCII text split at `is_sep` bytes: a token is
    /// loaded as 16 bytes at once, masked to its length and lowercased in
    /// one go, so the text is neither copied nor lowercased byte by byte.
    pub fn ascii_text(&mut self, text: &str, is_sep: &[bool; 256], ids: &mut Vec<u32>) {
        debug_assert!(text.is_ascii());
        let bytes = text.as_bytes();
        let n = bytes.len();
        let mut i = 0;
        while i < n {
            while i < n && is_sep[usize::from(bytes[i])] {
                i += 1;
            }
            let start = i;
            while i < n && !is_sep[usize::from(bytes[i])] {
                i += 1;
            }
            let len = i - start;
            if len == 0 {
                break;
            }
            let id = if len <= SHORT {
                let mut buf = [0u8; 16];
                if start + 16 <= n {
                    buf.copy_from_slice(&bytes[start..start + 16]);
                } else {
                    buf[..len].copy_from_slice(&bytes[start..i]);
                }
                let raw = u128::from_le_bytes(buf) & ((1u128 << (8 * len)) - 1);
                self.short(ascii_lower(raw) | (len as u128) << (8 * SHORT))
            } else {
                self.long(&text[start..i].to_ascii_lowercase())
            };
            ids.push(id);
        }
    }

    /// Interns every word of `other`; returns its id -> id in `self`.
    pub fn merge(&mut self, other: &Interner) -> Vec<u32> {
        other
            .words
            .iter()
            .map(|&key| {
                if key & LONG == LONG {
                    self.long(&other.long_words[(key & !LONG) as usize])
                } else {
                    self.short(key)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swar_lowercase_matches_per_byte() {
        let text = b"@AZ[`az{ Hello-W0RLD!\x7f";
        for chunk in text.chunks(16) {
            let mut buf = [0u8; 16];
            buf[..chunk.len()].copy_from_slice(chunk);
            let want: Vec<u8> = buf.iter().map(u8::to_ascii_lowercase).collect();
            assert_eq!(ascii_lower(u128::from_le_bytes(buf)).to_le_bytes().to_vec(), want);
        }
    }

    #[test]
    fn ascii_and_packed_paths_agree() {
        let mut vocab = Interner::default();
        let mut ids = Vec::new();
        vocab.ascii_text("  The CAT,  the cat a-very-long-token-indeed A-VERY-LONG-TOKEN-INDEED", &super::super::tokenize::WHITESPACE, &mut ids);
        assert_eq!(ids, [0, 1, 0, 2, 3, 3]);
        assert_eq!(vocab.token("the"), 0);
        assert_eq!(vocab.token("cat"), 2);
        assert_eq!(vocab.token("a-very-long-token-indeed"), 3);
        assert_eq!(vocab.len(), 4);
    }

    #[test]
    fn map_grows_and_merges() {
        let mut a = Interner::default();
        for i in 0..10_000 {
            assert_eq!(a.token(&format!("w{i}")), i);
        }
        let mut b = Interner::default();
        b.token("w5");
        b.token("new");
        b.token("a-token-longer-than-fifteen");
        assert_eq!(a.merge(&b), [5, 10_000, 10_001]);
        assert_eq!(a.merge(&b), [5, 10_000, 10_001]);
    }
}

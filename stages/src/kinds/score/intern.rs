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

/// `LOW_BYTES[k]`: the low k bytes set.
const LOW_BYTES: [u128; 16] = {
    let mut t = [0u128; 16];
    let mut k = 1;
    while k < 16 {
        t[k] = (1u128 << (8 * k)) - 1;
        k += 1;
    }
    t
};

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

/// Open-addressing index of the short keys of a word list, linear probing,
/// load <= 1/2. A slot holds 32 bits of the key's hash and its id (8 bytes),
/// and the key itself is read from the dense word list only when the hash
/// bits match: table and word list of a chunk's vocabulary stay in L2 cache.
pub struct IdMap {
    slots: Vec<u64>,
    shift: u32,
    len: usize,
}

const FREE: u64 = u64::MAX;

impl Default for IdMap {
    /// Empty, without a table yet.
    fn default() -> Self {
        IdMap {
            slots: Vec::new(),
            shift: 64,
            len: 0,
        }
    }
}

impl IdMap {
    pub fn with_bits(bits: u32) -> Self {
        IdMap {
            slots: vec![FREE; 1 << bits],
            shift: 64 - bits,
            len: 0,
        }
    }

    /// Empties the map, keeping its table for reuse.
    pub fn clear(&mut self) {
        self.slots.fill(FREE);
        self.len = 0;
    }

    /// The id of `key` in `words`, appending it if new.
    #[inline(always)]
    fn get_or_insert(&mut self, key: u128, words: &mut Vec<u128>) -> u32 {
        if self.slots.is_empty() {
            self.grow(words);
        }
        let h = mix128(key);
        let tag = (h >> 8) & 0xFFFF_FFFF;
        let mask = self.slots.len() - 1;
        let mut i = (h >> self.shift) as usize;
        loop {
            let slot = self.slots[i];
            if slot == FREE {
                let id = words.len() as u32;
                words.push(key);
                self.slots[i] = tag << 32 | u64::from(id);
                self.len += 1;
                if 2 * self.len > self.slots.len() {
                    self.grow(words);
                }
                return id;
            }
            if slot >> 32 == tag && words[slot as u32 as usize] == key {
                return slot as u32;
            }
            i = (i + 1) & mask;
        }
    }

    /// Doubles the table and re-indexes the short keys of `words`.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, words: &[u128]) {
        let bits = (64 - self.shift + 1).max(10);
        *self = Self::with_bits(bits);
        let mask = self.slots.len() - 1;
        for (id, &key) in words.iter().enumerate() {
            if key & LONG == LONG {
                continue;
            }
            let h = mix128(key);
            let mut i = (h >> self.shift) as usize;
            while self.slots[i] != FREE {
                i = (i + 1) & mask;
            }
            self.slots[i] = ((h >> 8) & 0xFFFF_FFFF) << 32 | id as u64;
            self.len += 1;
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
    /// An empty vocabulary using `map` (emptied) as its table, so a thread
    /// interning chunk after chunk reuses one table instead of allocating
    /// and page-faulting a fresh one per chunk.
    pub fn with_table(mut map: IdMap) -> Self {
        map.clear();
        Interner {
            short: map,
            ..Interner::default()
        }
    }

    /// Hands the table back for reuse; the vocabulary stays usable for
    /// [`Interner::merge`] (which reads only its word list).
    pub fn take_table(&mut self) -> IdMap {
        std::mem::take(&mut self.short)
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    #[inline(always)]
    fn short(&mut self, key: u128) -> u32 {
        self.short.get_or_insert(key, &mut self.words)
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

    /// Interns the tokens of ASCII text (`words`: separators are all but
    /// letters and digits; else whitespace), appending their ids to `ids`.
    ///
    /// Branch-free per byte: each 64-byte block becomes a bitmask of
    /// separator bytes, 8 bytes per step, and tokens are read off the mask's
    /// transitions (a per-byte loop mispredicts at nearly every token
    /// boundary). A token is then loaded as 16 bytes at once, masked to its
    /// length and lowercased in one go: the text is never copied.
    pub fn ascii_text(&mut self, text: &str, words: bool, ids: &mut Vec<u32>) {
        debug_assert!(text.is_ascii());
        let bytes = text.as_bytes();
        let mut prev_sep = true;
        let mut start = 0;
        for (k, block) in bytes.chunks(64).enumerate() {
            let base = 64 * k;
            let sep = match <&[u8; 64]>::try_from(block) {
                Ok(full) => sep_mask64(full, words),
                Err(_) => {
                    // Past the end of the text is space, a separator for both.
                    let mut padded = [b' '; 64];
                    padded[..block.len()].copy_from_slice(block);
                    sep_mask64(&padded, words)
                }
            };
            // Bit j: byte j differs from byte j - 1 in being a separator.
            let mut changes = sep ^ ((sep << 1) | u64::from(prev_sep));
            prev_sep = sep >> 63 == 1;
            while changes != 0 {
                let j = changes.trailing_zeros() as usize;
                changes &= changes - 1;
                if (sep >> j) & 1 == 0 {
                    start = base + j;
                } else {
                    ids.push(self.ascii_token(text, start, base + j));
                }
            }
        }
        if !prev_sep {
            ids.push(self.ascii_token(text, start, bytes.len()));
        }
    }

    #[inline(always)]
    fn ascii_token(&mut self, text: &str, start: usize, end: usize) -> u32 {
        let bytes = text.as_bytes();
        let len = end - start;
        if len > SHORT {
            return self.long(&text[start..end].to_ascii_lowercase());
        }
        let mut buf = [0u8; 16];
        let raw = if start + 16 <= bytes.len() {
            buf.copy_from_slice(&bytes[start..start + 16]);
            u128::from_le_bytes(buf) & LOW_BYTES[len]
        } else if end >= 16 {
            // Near the end of the text: the 16 bytes ending at the token.
            buf.copy_from_slice(&bytes[end - 16..end]);
            u128::from_le_bytes(buf) >> (8 * (16 - len))
        } else {
            buf[..len].copy_from_slice(&bytes[start..end]);
            u128::from_le_bytes(buf)
        };
        self.short(ascii_lower(raw) | (len as u128) << (8 * SHORT))
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

const L8: u64 = u64::MAX / 0xFF;
const HIGH8: u64 = 0x80 * L8;

/// High bit of each byte of `x` (all bytes ASCII) set iff lo <= byte <= hi:
/// adding 0x80 - lo sets the high bit from lo up, adding 0x7F - hi from
/// hi + 1 up; bytes below 0x80 never carry into their neighbour.
#[inline]
fn in_range(x: u64, lo: u8, hi: u8) -> u64 {
    let from_lo = x.wrapping_add(u64::from(0x80 - lo) * L8);
    let above_hi = x.wrapping_add(u64::from(0x7F - hi) * L8);
    from_lo & !above_hi & HIGH8
}

/// One bit per byte of 8 ASCII bytes: set for separators.
#[inline]
fn sep_mask8(x: u64, words: bool) -> u64 {
    let high = if words {
        let alnum = in_range(x, b'0', b'9') | in_range(x, b'A', b'Z') | in_range(x, b'a', b'z');
        !alnum & HIGH8
    } else {
        // Space and 0x09-0x0D: exactly the ASCII chars of `char::is_whitespace`.
        in_range(x, 9, 13) | in_range(x, b' ', b' ')
    };
    // Gathers the 8 high bits into the low byte.
    ((high >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

fn sep_mask64(block: &[u8; 64], words: bool) -> u64 {
    let mut mask = 0;
    for (k, bytes) in block.chunks_exact(8).enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(bytes);
        mask |= sep_mask8(u64::from_le_bytes(w), words) << (8 * k);
    }
    mask
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
            assert_eq!(
                ascii_lower(u128::from_le_bytes(buf)).to_le_bytes().to_vec(),
                want
            );
        }
    }

    #[test]
    fn ascii_and_packed_paths_agree() {
        let mut vocab = Interner::default();
        let mut ids = Vec::new();
        vocab.ascii_text(
            "  The CAT,  the cat a-very-long-token-indeed A-VERY-LONG-TOKEN-INDEED",
            false,
            &mut ids,
        );
        assert_eq!(ids, [0, 1, 0, 2, 3, 3]);
        assert_eq!(vocab.token("the"), 0);
        assert_eq!(vocab.token("cat"), 2);
        assert_eq!(vocab.token("a-very-long-token-indeed"), 3);
        assert_eq!(vocab.len(), 4);
    }

    #[test]
    fn tokens_cross_block_boundaries() {
        for text in [
            "",
            " ",
            "a",
            " a ",
            "ab  cd",
            &"x".repeat(64),
            &format!("{} y", "x".repeat(63)),
            &format!("{}  {}", "a".repeat(70), "b".repeat(60)),
        ] {
            let mut vocab = Interner::default();
            let mut ids = Vec::new();
            vocab.ascii_text(text, false, &mut ids);
            let want: Vec<u32> = text.split_whitespace().map(|t| vocab.token(t)).collect();
            assert_eq!(ids, want, "{text:?}");
        }
    }

    #[test]
    fn swar_separators_match_the_tables() {
        use super::super::tokenize::{NOT_WORD, WHITESPACE};
        for x in 0u8..128 {
            let bytes = [x, b'a', b'Z', b' ', 9, 13, 14, x];
            let w = u64::from_le_bytes(bytes);
            for (words, table) in [(false, &WHITESPACE), (true, &NOT_WORD)] {
                let want: u64 = (0..8)
                    .map(|j| u64::from(table[usize::from(bytes[j])]) << j)
                    .sum();
                assert_eq!(sep_mask8(w, words), want, "byte {x}, words = {words}");
            }
        }
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

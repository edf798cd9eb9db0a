//! Distinct-n (Eq. 4-6): |unique n-grams| / |n-grams| of a set of examples.
//!
//! Concat(D) is read as the multiset of n-grams of the examples' texts
//! (input + target as one token sequence): n-grams do not span two
//! examples. A single stream across examples would add order-dependent
//! n-grams (`data.jsonl` order is a seeded shuffle) and make the value
//! depend on the order; per-example n-grams make it a function of the set.
//! An example shorter than n adds nothing; no n-grams gives 0.
//!
//! Fast path: token ids (see [`Corpus`]) packed n at a time into a u64 or
//! u128 key (as many bits per id as the vocabulary needs), deduplicated in
//! 256 hash partitions in parallel, each partition's set small enough to
//! stay in cache. Longer n-grams than 128 bits fall back to slice keys.

use std::collections::HashSet;
use std::hash::Hash;

use foldhash::fast::FixedState;
use rayon::prelude::*;

use super::intern::mix128;
use super::tokenize::Corpus;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NgramCount {
    pub unique: u64,
    pub total: u64,
}

impl NgramCount {
    /// Distinct-n; 0 when there are no n-grams.
    pub fn value(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.unique as f64 / self.total as f64
        }
    }
}

/// Distinct-n over the documents `docs` of `corpus`.
pub fn distinct(corpus: &Corpus, docs: &[usize], n: usize) -> NgramCount {
    assert!(n >= 1, "n-grams need n >= 1");
    let total: usize = docs
        .iter()
        .map(|&d| corpus.doc(d).len().saturating_sub(n - 1))
        .sum();
    if total == 0 {
        return NgramCount::default();
    }
    let bits = id_bits(corpus.vocab_size);
    let width = bits as usize * n;
    let unique = if width <= 64 {
        unique_packed::<u64>(corpus, docs, n, bits, total)
    } else if width <= 128 {
        unique_packed::<u128>(corpus, docs, n, bits, total)
    } else {
        unique_slices(corpus, docs, n)
    };
    NgramCount {
        unique: unique as u64,
        total: total as u64,
    }
}

/// Distinct-n of each group of documents, groups in parallel.
pub fn distinct_groups(corpus: &Corpus, groups: &[Vec<usize>], n: usize) -> Vec<NgramCount> {
    groups.par_iter().map(|g| distinct(corpus, g, n)).collect()
}

/// Bits that hold any id below `vocab`.
fn id_bits(vocab: usize) -> u32 {
    (usize::BITS - vocab.saturating_sub(1).leading_zeros()).max(1)
}

/// A packed n-gram key.
trait Key: Copy + Ord + Hash + Send + Sync {
    const BITS: u32;
    const ZERO: Self;
    const MAX: Self;
    fn mask(width: u32) -> Self;
    /// Shifts the oldest id out and `id` in.
    fn push(self, id: u32, bits: u32, mask: Self) -> Self;
    /// A well-mixed 64-bit value whose top bits pick the partition.
    fn spread(self) -> u64;
}

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl Key for u64 {
    const BITS: u32 = 64;
    const ZERO: Self = 0;
    const MAX: Self = u64::MAX;
    fn mask(width: u32) -> Self {
        if width >= 64 {
            u64::MAX
        } else {
            (1 << width) - 1
        }
    }
    #[inline]
    fn push(self, id: u32, bits: u32, mask: Self) -> Self {
        ((self << bits) | u64::from(id)) & mask
    }
    #[inline]
    fn spread(self) -> u64 {
        (self ^ (self >> 31)).wrapping_mul(MIX)
    }
}

impl Key for u128 {
    const BITS: u32 = 128;
    const ZERO: Self = 0;
    const MAX: Self = u128::MAX;
    fn mask(width: u32) -> Self {
        if width >= 128 {
            u128::MAX
        } else {
            (1 << width) - 1
        }
    }
    #[inline]
    fn push(self, id: u32, bits: u32, mask: Self) -> Self {
        ((self << bits) | u128::from(id)) & mask
    }
    #[inline]
    fn spread(self) -> u64 {
        mix128(self)
    }
}

#[inline]
fn for_each_key<K: Key>(doc: &[u32], n: usize, bits: u32, mask: K, mut f: impl FnMut(K)) {
    let mut key = K::ZERO;
    for (i, &id) in doc.iter().enumerate() {
        key = key.push(id, bits, mask);
        if i + 1 >= n {
            f(key);
        }
    }
}

/// Below this many n-grams one thread sorts them; above, partitions pay.
const SMALL: usize = 1 << 15;
const PART_BITS: u32 = 8;
const DOC_CHUNK: usize = 2048;

fn unique_packed<K: Key>(corpus: &Corpus, docs: &[usize], n: usize, bits: u32, total: usize) -> usize {
    debug_assert!(bits as usize * n <= K::BITS as usize);
    let mask = K::mask(bits * n as u32);
    if total < SMALL {
        let mut keys = Vec::with_capacity(total);
        for &d in docs {
            for_each_key(corpus.doc(d), n, bits, mask, |k| keys.push(k));
        }
        keys.sort_unstable();
        keys.dedup();
        return keys.len();
    }
    let parts = 1usize << PART_BITS;
    let chunks: Vec<Vec<Vec<K>>> = docs
        .par_chunks(DOC_CHUNK)
        .map(|chunk| {
            let grams: usize = chunk
                .iter()
                .map(|&d| corpus.doc(d).len().saturating_sub(n - 1))
                .sum();
            // Room for a fair share plus slack: partitions rarely regrow.
            let room = grams / parts + grams / (4 * parts) + 8;
            let mut out: Vec<Vec<K>> = (0..parts).map(|_| Vec::with_capacity(room)).collect();
            for &d in chunk {
                for_each_key(corpus.doc(d), n, bits, mask, |k| {
                    out[(k.spread() >> (64 - PART_BITS)) as usize].push(k);
                });
            }
            out
        })
        .collect();
    (0..parts)
        .into_par_iter()
        .map(|p| {
            let len: usize = chunks.iter().map(|c| c[p].len()).sum();
            let mut set = KeySet::with_room(len);
            for chunk in &chunks {
                for &k in &chunk[p] {
                    set.insert(k);
                }
            }
            set.len()
        })
        .sum()
}

/// A fixed-size open-addressing set of keys (load <= 1/2, linear probing).
/// `K::MAX` marks an empty slot; the key `K::MAX` itself is a flag.
struct KeySet<K> {
    slots: Vec<K>,
    shift: u32,
    len: usize,
    has_max: bool,
}

impl<K: Key> KeySet<K> {
    fn with_room(n: usize) -> Self {
        let bits = (2 * n.max(1)).next_power_of_two().trailing_zeros().max(4);
        KeySet {
            slots: vec![K::MAX; 1 << bits],
            shift: 64 - bits,
            len: 0,
            has_max: false,
        }
    }

    #[inline]
    fn insert(&mut self, key: K) {
        if key == K::MAX {
            self.has_max = true;
            return;
        }
        let mask = self.slots.len() - 1;
        // The partition used the top bits; index by the next ones.
        let mut i = ((key.spread() << PART_BITS) >> self.shift) as usize;
        loop {
            let slot = self.slots[i];
            if slot == key {
                return;
            }
            if slot == K::MAX {
                self.slots[i] = key;
                self.len += 1;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    fn len(&self) -> usize {
        self.len + usize::from(self.has_max)
    }
}

fn unique_slices(corpus: &Corpus, docs: &[usize], n: usize) -> usize {
    let mut set: HashSet<&[u32], FixedState> = HashSet::default();
    for &d in docs {
        set.extend(corpus.doc(d).windows(n));
    }
    set.len()
}

#[cfg(test)]
mod tests;

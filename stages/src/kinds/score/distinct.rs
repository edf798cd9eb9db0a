//! Distinct-n (Eq. 4-6): |unique n-grams| / |n-grams| of a set of examples.
//!
//! [`distinct`] (the `distinct_n` metric) reads Concat(D) as the multiset
//! of n-grams of the examples' texts (input + target as one token
//! sequence): n-grams do not span two examples. A single stream across
//! examples would add order-dependent n-grams (`data.jsonl` order is a
//! seeded shuffle) and make the value depend on the order; per-example
//! n-grams make it a function of the set. An example shorter than n adds
//! nothing; no n-grams gives 0.
//!
//! [`distinct_concat`] (`distinct_n_concat`) is Eq. 4 as written: the
//! n-grams of the literal concatenation of the examples in dataset order,
//! so it also counts the (n - 1) n-grams that span each boundary. Those are
//! nearly all new, so it is a little higher than `distinct_n` (more so for
//! short examples, e.g. QA pairs), and it depends on the order.
//!
//! Fast path: token ids (see [`Corpus`]) packed n at a time into a u64 or
//! u128 key (as many bits per id as the vocabulary needs), deduplicated in
//! 256 hash partitions in parallel, each partition's set small enough to
//! stay in cache. Longer n-grams than 128 bits fall back to slice keys.

use std::collections::HashSet;

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

/// Distinct-n over the literal concatenation of the documents `docs`, in
/// that order (Eq. 4 as written): also the n-grams that span two adjacent
/// documents. A document shorter than n still adds its tokens to the stream.
pub fn distinct_concat(corpus: &Corpus, docs: &[usize], n: usize) -> NgramCount {
    assert!(n >= 1, "n-grams need n >= 1");
    let len: usize = docs.iter().map(|&d| corpus.doc(d).len()).sum();
    let total = len.saturating_sub(n - 1);
    if total == 0 {
        return NgramCount::default();
    }
    let mut stream = Vec::with_capacity(len);
    for &d in docs {
        stream.extend_from_slice(corpus.doc(d));
    }
    let bits = id_bits(corpus.vocab_size);
    let width = bits as usize * n;
    // One stream: sorting its packed keys is simpler than the partitioned
    // path and fast enough (a 30k-story set is about 1.5M keys).
    let unique = if width <= 64 {
        unique_stream::<u64>(&stream, n, bits)
    } else if width <= 128 {
        unique_stream::<u128>(&stream, n, bits)
    } else {
        let set: HashSet<&[u32], FixedState> = stream.windows(n).collect();
        set.len()
    };
    NgramCount {
        unique: unique as u64,
        total: total as u64,
    }
}

/// [`distinct_concat`] of each group of documents, groups in parallel.
pub fn distinct_concat_groups(corpus: &Corpus, groups: &[Vec<usize>], n: usize) -> Vec<NgramCount> {
    groups
        .par_iter()
        .map(|g| distinct_concat(corpus, g, n))
        .collect()
}

fn unique_stream<K: Key>(stream: &[u32], n: usize, bits: u32) -> usize {
    let mask = K::mask(bits * n as u32);
    let mut keys = Vec::with_capacity(stream.len());
    for_each_key(stream, n, bits, mask, |k| keys.push(k));
    keys.par_sort_unstable();
    keys.dedup();
    keys.len()
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
trait Key: Copy + Ord + Send + Sync {
    const BITS: u32;
    const ZERO: Self;
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

fn unique_packed<K: Key>(
    corpus: &Corpus,
    docs: &[usize],
    n: usize,
    bits: u32,
    total: usize,
) -> usize {
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
    if corpus.tokens() >= u32::MAX as usize {
        return unique_slices(corpus, docs, n);
    }
    // Entries: 32 bits of the key's hash, then the n-gram's position in the
    // corpus (8 bytes instead of a 16-byte key): the key is re-read from the
    // corpus only when two hashes agree, i.e. for true duplicates.
    let chunks: Vec<Partitioned> = docs
        .par_chunks(DOC_CHUNK)
        .map(|chunk| {
            let grams: usize = chunk
                .iter()
                .map(|&d| corpus.doc(d).len().saturating_sub(n - 1))
                .sum();
            let mut out = Partitioned::new(grams);
            for &d in chunk {
                let mut pos = corpus.doc_start(d) as u64;
                for_each_key(corpus.doc(d), n, bits, mask, |k| {
                    let h = k.spread();
                    out.push((h >> (64 - PART_BITS)) as usize, (h >> 24) << 32 | pos);
                    pos += 1;
                });
            }
            out
        })
        .collect();
    (0..1usize << PART_BITS)
        .into_par_iter()
        .map(|p| {
            let len: usize = chunks.iter().map(|c| c.len(p)).sum();
            let mut set = GramSet::with_room(len);
            for chunk in &chunks {
                chunk.for_each(p, |entry| {
                    set.insert(entry, |a, b| corpus.window(a, n) == corpus.window(b, n));
                });
            }
            set.len
        })
        .sum()
}

/// One chunk's entries by partition: a flat buffer with a fixed room per
/// partition (a fair share plus slack) and a spill list for the rare
/// overflow, so adding an entry is a store and an increment.
struct Partitioned {
    buf: Vec<u64>,
    fill: Vec<usize>,
    room: usize,
    spill: Vec<(usize, u64)>,
}

impl Partitioned {
    fn new(entries: usize) -> Self {
        let parts = 1usize << PART_BITS;
        let room = entries / parts + entries / (4 * parts) + 16;
        Partitioned {
            // Zeroed allocation: fresh pages come zeroed, nothing is written.
            buf: vec![0; parts * room],
            fill: vec![0; parts],
            room,
            spill: Vec::new(),
        }
    }

    #[inline]
    fn push(&mut self, p: usize, entry: u64) {
        let f = self.fill[p];
        if f < self.room {
            self.buf[p * self.room + f] = entry;
            self.fill[p] = f + 1;
        } else {
            self.spill.push((p, entry));
        }
    }

    fn len(&self, p: usize) -> usize {
        self.fill[p] + self.spill.iter().filter(|(q, _)| *q == p).count()
    }

    fn for_each(&self, p: usize, mut f: impl FnMut(u64)) {
        let start = p * self.room;
        for &entry in &self.buf[start..start + self.fill[p]] {
            f(entry);
        }
        for &(_, entry) in self.spill.iter().filter(|(q, _)| *q == p) {
            f(entry);
        }
    }
}

/// A fixed-size open-addressing set of n-gram entries (hash tag << 32 |
/// position), load <= 2/3, linear probing; `same(a, b)` compares the
/// n-grams at two positions when their tags agree.
struct GramSet {
    slots: Vec<u64>,
    shift: u32,
    len: usize,
}

const FREE: u64 = u64::MAX;

impl GramSet {
    fn with_room(n: usize) -> Self {
        // Load between 1/3 and 2/3: short probes, and small enough to stay
        // in cache (and cheap to clear).
        let bits = (n + n / 2 + 1)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(4, 32);
        GramSet {
            slots: vec![FREE; 1 << bits],
            shift: 32 - bits,
            len: 0,
        }
    }

    #[inline]
    fn insert(&mut self, entry: u64, same: impl Fn(usize, usize) -> bool) {
        let tag = entry >> 32;
        let mask = self.slots.len() - 1;
        let mut i = (tag >> self.shift) as usize;
        loop {
            let slot = self.slots[i];
            if slot == FREE {
                self.slots[i] = entry;
                self.len += 1;
                return;
            }
            if slot >> 32 == tag && same(slot as u32 as usize, entry as u32 as usize) {
                return;
            }
            i = (i + 1) & mask;
        }
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

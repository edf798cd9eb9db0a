//! Tokenizers of the scores, and a corpus of texts interned to `u32` ids.
//!
//! The paper does not say how it tokenizes for Distinct-n; we offer:
//! - `whitespace` (default): lowercase, then split on Unicode whitespace
//!   (punctuation stays attached: "home." and "home" differ);
//! - `words`: lowercase, keep only runs of Unicode letters and digits.

use std::borrow::Cow;

use rayon::prelude::*;

use super::intern::{IdMap, Interner};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokenizer {
    Whitespace,
    Words,
}

impl Tokenizer {
    pub const NAMES: &'static [&'static str] = &["whitespace", "words"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "whitespace" => Some(Tokenizer::Whitespace),
            "words" => Some(Tokenizer::Words),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::Whitespace => "whitespace",
            Tokenizer::Words => "words",
        }
    }

    /// Calls `f` with each token of `text`.
    pub fn for_each(self, text: &str, f: impl FnMut(&str)) {
        for_each_lowered(self, &lowercase(text), f);
    }

    pub fn count(self, text: &str) -> usize {
        let mut n = 0;
        for_each_lowered(self, &lowercase(text), |_| n += 1);
        n
    }
}

/// Lowercase, borrowing when ASCII text has no uppercase letter.
pub fn lowercase(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(text.to_ascii_lowercase())
        } else {
            Cow::Borrowed(text)
        }
    } else {
        Cow::Owned(text.to_lowercase())
    }
}

/// Splits lowercased text; ASCII text takes a byte loop.
fn for_each_lowered<'a>(tok: Tokenizer, text: &'a str, f: impl FnMut(&'a str)) {
    let is_ascii = text.is_ascii();
    match (tok, is_ascii) {
        // u8::is_ascii_whitespace would miss 0x0B: see WHITESPACE.
        (Tokenizer::Whitespace, true) => split_bytes(text, |b| WHITESPACE[usize::from(b)], f),
        (Tokenizer::Whitespace, false) => text.split_whitespace().for_each(f),
        (Tokenizer::Words, true) => split_bytes(text, |b| NOT_WORD[usize::from(b)], f),
        (Tokenizer::Words, false) => text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
            .for_each(f),
    }
}

fn split_bytes<'a>(text: &'a str, is_sep: impl Fn(u8) -> bool, mut f: impl FnMut(&'a str)) {
    let bytes = text.as_bytes();
    let mut start = None;
    for (i, &b) in bytes.iter().enumerate() {
        match (is_sep(b), start) {
            (true, Some(s)) => {
                f(&text[s..i]);
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        f(&text[s..]);
    }
}

/// Documents as sequences of token ids. A document is one example: its text
/// fields (input, then target) tokenized and concatenated. Stored in the
/// chunks it was built in (no copy into one array).
pub struct Corpus {
    chunks: Vec<Chunk>,
    /// Position of each chunk's first token among all tokens.
    chunk_base: Vec<usize>,
    /// Documents per chunk (the last may have fewer).
    per_chunk: usize,
    len: usize,
    pub vocab_size: usize,
}

struct Chunk {
    ids: Vec<u32>,
    /// `offsets[i]..offsets[i + 1]` are the ids of the chunk's document i.
    offsets: Vec<u32>,
    vocab: Interner,
}

/// Documents per chunk: small enough that a chunk's vocabulary table stays
/// in a core's L2 cache (interning is bound by its cache misses).
const CHUNK_DOCS: usize = 2048;

impl Corpus {
    pub fn doc(&self, d: usize) -> &[u32] {
        let chunk = &self.chunks[d / self.per_chunk];
        let i = d % self.per_chunk;
        &chunk.ids[chunk.offsets[i] as usize..chunk.offsets[i + 1] as usize]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Number of tokens of all documents.
    pub fn tokens(&self) -> usize {
        self.chunk_base.last().copied().unwrap_or(0)
    }

    /// Position of document `d`'s first token among all tokens.
    pub fn doc_start(&self, d: usize) -> usize {
        let c = d / self.per_chunk;
        self.chunk_base[c] + self.chunks[c].offsets[d % self.per_chunk] as usize
    }

    /// The `n` token ids from position `pos` on (within one chunk).
    pub fn window(&self, pos: usize, n: usize) -> &[u32] {
        let c = self.chunk_base.partition_point(|&b| b <= pos) - 1;
        let at = pos - self.chunk_base[c];
        &self.chunks[c].ids[at..at + n]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokenizes and interns in parallel: chunks of documents intern into
    /// their own vocabularies, then one sequential pass maps those into one
    /// vocabulary and the chunks' ids are rewritten in place.
    pub fn build<T: Sync>(
        docs: &[T],
        fields: impl Fn(&T) -> [&str; 2] + Sync,
        tok: Tokenizer,
    ) -> Self {
        let mut chunks: Vec<Chunk> = docs
            .par_chunks(CHUNK_DOCS)
            .map_init(
                || IdMap::with_bits(14),
                |table, chunk| Chunk::intern(chunk, &fields, tok, table),
            )
            .collect();
        let mut global = Interner::default();
        let remaps: Vec<Vec<u32>> = chunks.iter().map(|c| global.merge(&c.vocab)).collect();
        chunks
            .par_iter_mut()
            .zip(remaps)
            .for_each(|(chunk, remap)| {
                for id in &mut chunk.ids {
                    *id = remap[*id as usize];
                }
                chunk.vocab = Interner::default();
            });
        let mut chunk_base = vec![0];
        for chunk in &chunks {
            chunk_base.push(chunk_base[chunk_base.len() - 1] + chunk.ids.len());
        }
        Corpus {
            chunks,
            chunk_base,
            per_chunk: CHUNK_DOCS,
            len: docs.len(),
            vocab_size: global.len(),
        }
    }
}

impl Chunk {
    fn intern<T>(
        docs: &[T],
        fields: &impl Fn(&T) -> [&str; 2],
        tok: Tokenizer,
        table: &mut IdMap,
    ) -> Self {
        // Room for every token (one per 2 bytes at most) is only address
        // space: pages never written are never touched.
        let bytes: usize = docs.iter().flat_map(fields).map(str::len).sum();
        let mut chunk = Chunk {
            ids: Vec::with_capacity(bytes / 2 + 2 * docs.len()),
            offsets: Vec::with_capacity(docs.len() + 1),
            vocab: Interner::with_table(std::mem::take(table)),
        };
        chunk.offsets.push(0);
        let words = tok == Tokenizer::Words;
        for doc in docs {
            for text in fields(doc) {
                if text.is_ascii() {
                    chunk.vocab.ascii_text(text, words, &mut chunk.ids);
                } else {
                    let lower = text.to_lowercase();
                    for_each_lowered(tok, &lower, |t| chunk.ids.push(chunk.vocab.token(t)));
                }
            }
            chunk.offsets.push(chunk.ids.len() as u32);
        }
        *table = chunk.vocab.take_table();
        chunk
    }
}

/// Separator bytes of the tokenizers, for ASCII text: whitespace is space
/// and 0x09-0x0D (exactly the ASCII chars with `char::is_whitespace`).
pub(crate) static WHITESPACE: [bool; 256] = {
    let mut t = [false; 256];
    t[b' ' as usize] = true;
    let mut b = 9;
    while b <= 13 {
        t[b] = true;
        b += 1;
    }
    t
};

pub(crate) static NOT_WORD: [bool; 256] = {
    let mut t = [true; 256];
    let mut b = 0;
    while b < 128 {
        t[b] = !(b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(tok: Tokenizer, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        tok.for_each(text, |t| out.push(t.to_string()));
        out
    }

    #[test]
    fn whitespace_lowercases_and_keeps_punctuation() {
        let t = Tokenizer::Whitespace;
        assert_eq!(
            tokens(t, "The  Cat\tsat.\nHome"),
            ["the", "cat", "sat.", "home"]
        );
        assert_eq!(tokens(t, "a\u{0B}b"), ["a", "b"]);
        assert_eq!(tokens(t, "Ünïcode\u{00A0}Wörds"), ["ünïcode", "wörds"]);
        assert!(tokens(t, "  ").is_empty());
    }

    #[test]
    fn words_keeps_letter_and_digit_runs() {
        let t = Tokenizer::Words;
        assert_eq!(
            tokens(t, "Don't stop, 2 Go!"),
            ["don", "t", "stop", "2", "go"]
        );
        assert_eq!(tokens(t, "Café—Zürich 3€"), ["café", "zürich", "3"]);
        assert_eq!(t.count("...!"), 0);
    }

    #[test]
    fn ascii_and_unicode_paths_share_ids() {
        let docs = [
            ("Hello Wörld", "Extraordinarily-long-token"),
            ("HELLO world", "EXTRAORDINARILY-LONG-TOKEN"),
        ];
        let c = Corpus::build(&docs, |d| [d.0, d.1], Tokenizer::Whitespace);
        // hello, wörld, extraordinarily-long-token, world
        assert_eq!(c.vocab_size, 4);
        let (a, b) = (c.doc(0), c.doc(1));
        assert_eq!((a[0], a[2]), (b[0], b[2]));
        assert_ne!(a[1], b[1]);
    }

    #[test]
    fn corpus_interns_across_fields_and_chunks() {
        let docs: Vec<(String, String)> = (0..5000)
            .map(|i| (format!("The cat {}", i % 3), "sat Down".to_string()))
            .collect();
        let c = Corpus::build(&docs, |d| [&d.0, &d.1], Tokenizer::Whitespace);
        assert_eq!(c.len(), 5000);
        // the, cat, 0, 1, 2, sat, down
        assert_eq!(c.vocab_size, 7);
        assert_eq!(c.doc(0).len(), 5);
        assert_eq!(c.doc(0)[..2], c.doc(4999)[..2]);
        assert_eq!(c.doc(0), c.doc(3));
        assert_ne!(c.doc(0), c.doc(1));
    }
}

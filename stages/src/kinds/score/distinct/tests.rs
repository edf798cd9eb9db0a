use std::collections::{BTreeMap, HashSet};

use super::{distinct, distinct_concat, distinct_groups, NgramCount};
use crate::contracts::dataset::Example;
use crate::kinds::score::tokenize::{Corpus, Tokenizer};
use crate::testutil::data_dir;
use crate::toolkit::corpora::{narrativeqa, rocstories};

/// The obvious implementation: tokens as Strings, n-grams as Vec<String>
/// in a HashSet, n-grams within each example's input + target.
fn reference(texts: &[(String, String)], tok: Tokenizer, n: usize) -> NgramCount {
    let split = |text: &str| -> Vec<String> {
        let lower = text.to_lowercase();
        match tok {
            Tokenizer::Whitespace => lower.split_whitespace().map(String::from).collect(),
            Tokenizer::Words => lower
                .split(|c: char| !c.is_alphanumeric())
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
        }
    };
    let mut seen: HashSet<Vec<String>> = HashSet::new();
    let mut total = 0;
    for (input, target) in texts {
        let mut tokens = split(input);
        tokens.extend(split(target));
        for gram in tokens.windows(n) {
            seen.insert(gram.to_vec());
            total += 1;
        }
    }
    NgramCount {
        unique: seen.len() as u64,
        total,
    }
}

/// The obvious Eq. 4: every token of every example in order, one stream.
fn reference_concat(texts: &[(String, String)], tok: Tokenizer, n: usize) -> NgramCount {
    let mut stream = Vec::new();
    for (input, target) in texts {
        for text in [input, target] {
            tok.for_each(text, |t| stream.push(t.to_string()));
        }
    }
    let seen: HashSet<&[String]> = stream.windows(n).collect();
    NgramCount {
        unique: seen.len() as u64,
        total: stream.windows(n).count() as u64,
    }
}

fn concat(texts: &[(String, String)], tok: Tokenizer, n: usize) -> NgramCount {
    let corpus = Corpus::build(texts, |t| [&t.0, &t.1], tok);
    let all: Vec<usize> = (0..corpus.len()).collect();
    distinct_concat(&corpus, &all, n)
}

fn fast(texts: &[(String, String)], tok: Tokenizer, n: usize) -> NgramCount {
    let corpus = Corpus::build(texts, |t| [&t.0, &t.1], tok);
    let all: Vec<usize> = (0..corpus.len()).collect();
    distinct(&corpus, &all, n)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn hand_computed_values() {
    let texts = pairs(&[
        ("The cat sat on the mat", "the cat sat."),
        ("A cat", "sat."),
    ]);
    // Example 1: the cat sat on the mat the cat sat. -> bigrams
    //   the-cat cat-sat sat-on on-the the-mat mat-the the-cat cat-sat.
    //   (8, of which "the cat" twice: 7 unique)
    // Example 2: a cat sat. -> a-cat cat-sat. (cat-sat. seen: 1 new)
    // No bigram spans the two examples ("sat. a" is not counted).
    let two = fast(&texts, Tokenizer::Whitespace, 2);
    assert_eq!(
        two,
        NgramCount {
            unique: 8,
            total: 10
        }
    );
    assert_eq!(two.value(), 0.8);
    // Unigrams: the cat sat on mat sat. a -> 7 unique of 12.
    assert_eq!(
        fast(&texts, Tokenizer::Whitespace, 1),
        NgramCount {
            unique: 7,
            total: 12
        }
    );
    // `words` drops the period: sat and sat. merge -> 6 unique unigrams.
    assert_eq!(
        fast(&texts, Tokenizer::Words, 1),
        NgramCount {
            unique: 6,
            total: 12
        }
    );
    // 5-grams: 9 tokens give 5 in example 1, none from the 3-token example 2;
    // all five differ.
    let five = fast(&texts, Tokenizer::Whitespace, 5);
    assert_eq!(
        five,
        NgramCount {
            unique: 5,
            total: 5
        }
    );
    assert_eq!(five.value(), 1.0);
    // Nothing long enough: 0, not NaN.
    assert_eq!(fast(&texts, Tokenizer::Whitespace, 10).value(), 0.0);
}

#[test]
fn concat_counts_the_ngrams_across_examples() {
    // Eq. 4 literally: "a b c a b c" has 5 bigrams (a-b, b-c, c-a, a-b, b-c),
    // 3 unique; per example, "a b c" twice gives 2 unique of 4.
    let texts = pairs(&[("a b", "c"), ("a b", "c")]);
    let per_example = fast(&texts, Tokenizer::Whitespace, 2);
    assert_eq!((per_example.unique, per_example.total), (2, 4));
    let c = concat(&texts, Tokenizer::Whitespace, 2);
    assert_eq!(
        c,
        NgramCount {
            unique: 3,
            total: 5
        }
    );
    assert_eq!(c.value(), 0.6);
    // The hand-computed set above: 12 tokens in one stream, 11 bigrams; the
    // one across the boundary ("sat. a") is new: 9 unique.
    let texts = pairs(&[
        ("The cat sat on the mat", "the cat sat."),
        ("A cat", "sat."),
    ]);
    assert_eq!(
        concat(&texts, Tokenizer::Whitespace, 2),
        NgramCount {
            unique: 9,
            total: 11
        }
    );
    // An example shorter than n still feeds the stream: 5-grams 8, all unique
    // (per example only 5: the 3-token example has none).
    assert_eq!(
        concat(&texts, Tokenizer::Whitespace, 5),
        NgramCount {
            unique: 8,
            total: 8
        }
    );
    // Repeated text: "a..f a..f" has 8 five-grams, 6 unique (per example 2 of 4).
    let texts = pairs(&[("a b c d e f", ""), ("A B C D E F", "")]);
    assert_eq!(concat(&texts, Tokenizer::Whitespace, 5).value(), 0.75);
    assert_eq!(fast(&texts, Tokenizer::Whitespace, 5).value(), 0.5);
    // Nothing long enough: 0, not NaN.
    assert_eq!(concat(&texts, Tokenizer::Whitespace, 13).value(), 0.0);
    assert_eq!(concat(&[], Tokenizer::Whitespace, 1).value(), 0.0);
}

#[test]
fn repeated_text_halves_distinct() {
    let texts = pairs(&[("a b c d e f", ""), ("A B C D E F", "")]);
    // 2 x 2 five-grams, 2 unique.
    assert_eq!(fast(&texts, Tokenizer::Whitespace, 5).value(), 0.5);
}

#[test]
fn every_key_width_matches_the_reference() {
    // Vocabulary of 7 ids (3 bits): n = 2 packs into u64, n = 30 into
    // u128, n = 45 needs slice keys.
    let words = ["a", "b", "c", "d", "e", "f", "g"];
    let texts: Vec<(String, String)> = (0..300)
        .map(|i| {
            let text: Vec<&str> = (0..60)
                .map(|j| words[(i * 7 + j * j + i * j) % 7])
                .collect();
            (text[..30].join(" "), text[30..].join(" "))
        })
        .collect();
    for n in [1, 2, 5, 21, 30, 42, 43, 45, 59] {
        for tok in [Tokenizer::Whitespace, Tokenizer::Words] {
            assert_eq!(fast(&texts, tok, n), reference(&texts, tok, n), "n = {n}");
            assert_eq!(
                concat(&texts, tok, n),
                reference_concat(&texts, tok, n),
                "n = {n}"
            );
        }
    }
}

#[test]
fn large_inputs_take_the_partitioned_path_exactly() {
    // Over SMALL n-grams with many duplicates across chunks.
    let texts: Vec<(String, String)> = (0..20_000)
        .map(|i| {
            let input = format!("w{} w{} w{} x{}", i % 97, i % 89, i % 13, i % 7);
            (input, format!("end {}", i % 5))
        })
        .collect();
    for n in [2, 3, 5] {
        let got = fast(&texts, Tokenizer::Whitespace, n);
        assert!(got.total as usize > super::SMALL);
        assert_eq!(got, reference(&texts, Tokenizer::Whitespace, n), "n = {n}");
    }
}

fn stories() -> Option<Vec<(String, String)>> {
    let dir = data_dir()?;
    let stories = rocstories::read_mirror(&dir.join(rocstories::MIRROR_FILE)).unwrap();
    Some(
        stories
            .iter()
            .map(Story::to_example)
            .map(|e: Example| (e.input, e.target))
            .collect(),
    )
}

use rocstories::Story;

#[test]
fn real_stories_match_the_reference_exactly() {
    let Some(texts) = stories() else { return };
    assert_eq!(texts.len(), 27_302);
    for tok in [Tokenizer::Whitespace, Tokenizer::Words] {
        let (got, want) = (fast(&texts, tok, 5), reference(&texts, tok, 5));
        assert_eq!(got, want, "{tok:?}");
        assert_eq!(got.value(), want.value());
        let (got_c, want_c) = (concat(&texts, tok, 5), reference_concat(&texts, tok, 5));
        assert_eq!(got_c, want_c, "{tok:?}");
        // One stream adds 4 five-grams per boundary, nearly all new.
        assert_eq!(got_c.total, got.total + 4 * (texts.len() as u64 - 1));
        assert!(got_c.value() > got.value());
    }
    // Other key widths on a subset (u64 keys for n = 2, slices for n = 12).
    let subset = &texts[..3000];
    for n in [1, 2, 3, 8, 12] {
        assert_eq!(
            fast(subset, Tokenizer::Whitespace, n),
            reference(subset, Tokenizer::Whitespace, n),
            "n = {n}"
        );
    }
}

#[test]
fn real_qa_groups_match_the_reference_exactly() {
    let Some(dir) = data_dir() else { return };
    let corpus = narrativeqa::read_mirror(
        &dir.join(narrativeqa::DOCUMENTS_FILE),
        &dir.join(narrativeqa::QAPS_FILE),
    )
    .unwrap();
    let mut by_group: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for doc in &corpus.documents {
        for (k, qap) in corpus.qaps[&doc.document_id].iter().enumerate() {
            let e = narrativeqa::to_example(doc, k, qap);
            by_group
                .entry(doc.document_id.clone())
                .or_default()
                .push((e.input, e.target));
        }
    }
    let texts: Vec<(String, String)> = by_group.values().flatten().cloned().collect();
    assert_eq!(texts.len(), 14_018);
    let tokens = Corpus::build(&texts, |t| [&t.0, &t.1], Tokenizer::Whitespace);
    let mut groups = Vec::new();
    let mut next = 0;
    for list in by_group.values() {
        groups.push((next..next + list.len()).collect::<Vec<_>>());
        next += list.len();
    }
    let got = distinct_groups(&tokens, &groups, 5);
    let want: Vec<NgramCount> = by_group
        .values()
        .map(|list| reference(list, Tokenizer::Whitespace, 5))
        .collect();
    assert_eq!(got, want);
    let sum = |v: &[NgramCount]| v.iter().map(NgramCount::value).sum::<f64>();
    assert_eq!(sum(&got), sum(&want));
}

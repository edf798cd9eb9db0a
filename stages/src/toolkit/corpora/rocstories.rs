//! ROCStories: five-sentence stories; input = sentences 1-4, target = 5.

use std::path::Path;

use flow_engine::StageError;
use serde::Deserialize;

use crate::contracts::dataset::{Example, Origin, Task};
use crate::toolkit::jsonl::read_jsonl;

pub const MIRROR_FILE: &str = "rocstories/stories.jsonl";

/// `mintujupally/ROCStories` on the hub: plain text, one story per line
/// (the five sentences joined by spaces), in `train.txt` and `test.txt`.
pub const HUB_REPO: &str = "mintujupally/ROCStories";
pub const HUB_REVISION: &str = "main";
pub const HUB_FILES: &[&str] = &["train.txt", "test.txt"];

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Story {
    pub id: String,
    pub sentences: Vec<String>,
}

impl Story {
    pub fn to_example(&self) -> Example {
        Example {
            id: self.id.clone(),
            task: Task::Story,
            group: None,
            context: None,
            input: self.sentences[..4].join(" "),
            target: self.sentences[4].clone(),
            origin: Origin::Real,
            alt_targets: Vec::new(),
            extra: Default::default(),
        }
    }
}

/// Reads `stories.jsonl` of a mirror; every story must have 5 sentences.
pub fn read_mirror(path: &Path) -> Result<Vec<Story>, StageError> {
    let stories: Vec<Story> = read_jsonl(path)?;
    if let Some((i, s)) = stories
        .iter()
        .enumerate()
        .find(|(_, s)| s.sentences.len() != 5)
    {
        return Err(StageError::invalid(format!(
            "{}: story `{}` (record {}) has {} sentences, expected 5",
            path.display(),
            s.id,
            i + 1,
            s.sentences.len()
        )));
    }
    Ok(stories)
}

/// Parses the hub's one-story-per-line text. Stories that do not split into
/// exactly five sentences are dropped; returns them counted.
pub fn parse_hub_text(text: &str) -> (Vec<Story>, usize) {
    let mut stories = Vec::new();
    let mut dropped = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let sentences = split_sentences(line);
        if sentences.len() == 5 {
            let sentences: Vec<String> = sentences.into_iter().map(String::from).collect();
            stories.push(Story {
                id: story_id(&sentences),
                sentences,
            });
        } else {
            dropped += 1;
        }
    }
    (stories, dropped)
}

/// The mirror's id rule for stories without a UUID: `roc-` + the first 16 hex
/// digits of SHA-1 of the story lowercased with only letters and digits
/// kept, so a story found in both places gets one id (and one split).
pub fn story_id(sentences: &[String]) -> String {
    let norm: String = sentences
        .join(" ")
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect();
    let hex = sha1_smol::Sha1::from(norm.as_bytes()).digest().to_string();
    format!("roc-{}", &hex[..16])
}

const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "mt", "vs", "prof", "gen", "sgt", "capt", "lt",
    "col", "rev", "no", "etc",
];

/// Rule-based splitter (the one the mirror's README describes): a sentence
/// ends at `.`, `!` or `?` (plus closing quotes) followed by a space and an
/// uppercase letter, a digit or a quote; common abbreviations and
/// single-letter initials do not end a sentence.
pub fn split_sentences(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let (_, c) = chars[i];
        if matches!(c, '.' | '!' | '?') {
            let mut end = i + 1;
            while end < chars.len() && matches!(chars[end].1, '"' | '\'' | '”' | '’' | ')') {
                end += 1;
            }
            let next_is_space = end < chars.len() && chars[end].1.is_whitespace();
            let after = chars.get(end + 1).map(|&(_, c)| c);
            let starts_sentence = after.is_some_and(|c| {
                c.is_uppercase() || c.is_ascii_digit() || matches!(c, '"' | '\'' | '“' | '‘')
            });
            if next_is_space && starts_sentence && !(c == '.' && is_abbreviation(text, chars[i].0))
            {
                let byte_end = chars.get(end).map_or(text.len(), |&(b, _)| b);
                out.push(text[start..byte_end].trim());
                start = byte_end;
                i = end;
                continue;
            }
        }
        i += 1;
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Whether the word before the period at byte `dot` is an abbreviation.
fn is_abbreviation(text: &str, dot: usize) -> bool {
    let word = text[..dot]
        .rsplit(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("");
    let single_initial = word.chars().count() == 1 && word.chars().all(char::is_uppercase);
    single_initial || ABBREVIATIONS.contains(&word.to_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_five_sentences_and_keeps_abbreviations() {
        let s = "Mr. Smith went to St. Louis. He saw J. R. Ewing! \"Wow,\" he said. \
                 It was 5 p.m. at the time. 3 people laughed?";
        let got = split_sentences(s);
        assert_eq!(
            got,
            vec![
                "Mr. Smith went to St. Louis.",
                "He saw J. R. Ewing!",
                "\"Wow,\" he said.",
                "It was 5 p.m. at the time.",
                "3 people laughed?"
            ]
        );
    }

    #[test]
    fn hub_text_drops_non_five_sentence_lines() {
        let text = "A b. C d. E f. G h. I j.\nOnly one.\n\n";
        let (stories, dropped) = parse_hub_text(text);
        assert_eq!(stories.len(), 1);
        assert_eq!(dropped, 1);
        let ex = stories[0].to_example();
        assert_eq!(ex.input, "A b. C d. E f. G h.");
        assert_eq!(ex.target, "I j.");
    }

    #[test]
    fn story_id_matches_the_mirror_rule() {
        // A record of shared/data/rocstories/stories.jsonl with a derived id.
        let sentences: Vec<String> = [
            "I wanted a new Christmas tree.",
            "We bought a thirteen foot tree from craigslist.",
            "We set it up in our very high ceilinged living room.",
            "We covered it in all the kids' old ornaments.",
            "When we were done we realized we needed to buy more to cover it.",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(story_id(&sentences), "roc-343c4fc51470ad03");
    }
}

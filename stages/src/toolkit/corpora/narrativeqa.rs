//! NarrativeQA: QA pairs grouped by document; the context is the document's
//! Wikipedia plot summary (the paper's "summaries" setting).

use std::collections::BTreeMap;
use std::path::Path;

use flow_engine::StageError;
use serde::Deserialize;

use crate::contracts::dataset::{Example, Origin, Task};
use crate::toolkit::jsonl::read_jsonl;

pub const DOCUMENTS_FILE: &str = "narrativeqa/documents.jsonl";
pub const QAPS_FILE: &str = "narrativeqa/qaps.jsonl";

pub const HUB_REPO: &str = "deepmind/narrativeqa";

/// The hub copy is parquet only (`data/{train,validation,test}-*.parquet`,
/// with full story texts); reading parquet would add a heavy dependency for
/// a one-time download, so users convert once or use a mirror.
pub fn hub_unsupported() -> StageError {
    StageError::invalid(format!(
        "NarrativeQA cannot be read from the Hugging Face hub: `{HUB_REPO}` is published \
         only as parquet, which flow does not read. Point FLOW_DATA_DIR (or --data-dir) at \
         a local mirror with {DOCUMENTS_FILE} (document_id, set, summary per line) and \
         {QAPS_FILE} (document_id, set, question, answer1, answer2 per line); expected \
         layout: {}",
        super::LAYOUT
    ))
}

#[derive(Clone, Debug, Deserialize)]
pub struct Document {
    pub document_id: String,
    /// Official split: `train`, `valid` or `test`.
    pub set: String,
    pub summary: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Qap {
    pub document_id: String,
    pub question: String,
    pub answer1: String,
    #[serde(default)]
    pub answer2: Option<String>,
}

/// Documents with their QA pairs in file order.
pub struct Corpus {
    pub documents: Vec<Document>,
    pub qaps: BTreeMap<String, Vec<Qap>>,
}

impl Corpus {
    pub fn has_official_train(&self) -> bool {
        self.documents.iter().any(|d| d.set == "train")
    }
}

pub fn read_mirror(documents: &Path, qaps: &Path) -> Result<Corpus, StageError> {
    let docs: Vec<Document> = read_jsonl(documents)?;
    let mut by_doc: BTreeMap<String, Vec<Qap>> = docs
        .iter()
        .map(|d| (d.document_id.clone(), Vec::new()))
        .collect();
    for (i, qap) in read_jsonl::<Qap>(qaps)?.into_iter().enumerate() {
        match by_doc.get_mut(&qap.document_id) {
            Some(list) => list.push(qap),
            None => {
                return Err(StageError::invalid(format!(
                    "{}: QA record {} names document `{}`, which {} does not have",
                    qaps.display(),
                    i + 1,
                    qap.document_id,
                    documents.display()
                )))
            }
        }
    }
    Ok(Corpus {
        documents: docs,
        qaps: by_doc,
    })
}

/// One QA pair as an example, with the whole summary as its context; `k`
/// is its index within the document.
pub fn to_example(doc: &Document, k: usize, qap: &Qap) -> Example {
    to_example_in(&Window::of(&doc.summary, None), doc, k, qap)
}

/// One QA pair as an example whose context is `window` (of `doc`'s summary):
/// the window is recorded in the example's extra fields
/// ([`CONTEXT_CHARS_FULL`], [`CONTEXT_CUT`]).
pub fn to_example_in(window: &Window, doc: &Document, k: usize, qap: &Qap) -> Example {
    let mut extra = serde_json::Map::new();
    extra.insert(CONTEXT_CHARS_FULL.into(), (window.full_chars as u64).into());
    extra.insert(CONTEXT_CUT.into(), window.cut.into());
    Example {
        id: pair_id(&doc.document_id, k),
        task: Task::Qa,
        group: Some(doc.document_id.clone()),
        context: Some(window.text.clone()),
        input: qap.question.clone(),
        target: qap.answer1.clone(),
        origin: Origin::Real,
        alt_targets: qap.answer2.iter().cloned().collect(),
        extra,
    }
}

/// Extra field of a QA example: characters of the whole summary.
pub const CONTEXT_CHARS_FULL: &str = "context_chars_full";
/// Extra field of a QA example: whether its context is a cut of the summary.
pub const CONTEXT_CUT: &str = "context_cut";

/// The context window of a document: the one text that the generator, the
/// learner and the evaluator all see as the context.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub text: String,
    /// Characters (not bytes) of the whole summary.
    pub full_chars: usize,
    pub cut: bool,
}

impl Window {
    /// `summary` cut to at most `max_chars` characters (`None`: whole) at
    /// the last sentence end within them, else at the last word boundary,
    /// else (one long word) at `max_chars`.
    pub fn of(summary: &str, max_chars: Option<usize>) -> Window {
        let full_chars = summary.chars().count();
        let text = match max_chars {
            Some(max) if full_chars > max => cut_text(summary, max),
            _ => summary.to_string(),
        };
        Window {
            cut: text.len() < summary.len(),
            text,
            full_chars,
        }
    }
}

/// Characters that may close a sentence after its `.`, `!` or `?`.
const CLOSERS: &[char] = &['"', '\'', '\u{201D}', '\u{2019}', ')', ']'];

/// Words whose `.` ends an abbreviation, not a sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "mt", "prof", "capt", "col", "gen", "lt", "sgt",
    "rev", "vs",
];

/// The longest prefix of `text` of at most `max` characters that ends a
/// sentence, else a word, else `max` characters; never empty unless `max`
/// is 0. `text` has more than `max` characters.
fn cut_text(text: &str, max: usize) -> String {
    // Byte offset just past the first `max` characters.
    let end = text.char_indices().nth(max).map_or(text.len(), |(i, _)| i);
    let after = |i: usize| text[i..].chars().next();
    let mut sentence_end = None;
    for (i, c) in text[..end].char_indices() {
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        let mut j = i + c.len_utf8();
        while let Some(q) = after(j).filter(|q| CLOSERS.contains(q)) {
            j += q.len_utf8();
        }
        // The sentence (with its closers) must fit, and be followed by a
        // space or the end of the text.
        if j <= end
            && after(j).is_none_or(char::is_whitespace)
            && !(c == '.' && abbreviation_before(&text[..i]))
        {
            sentence_end = Some(j);
        }
    }
    if let Some(j) = sentence_end {
        return text[..j].to_string();
    }
    let word_end = if after(end).is_some_and(char::is_whitespace) {
        Some(end)
    } else {
        text[..end].rfind(char::is_whitespace)
    };
    match word_end.map(|w| text[..w].trim_end()) {
        Some(words) if !words.is_empty() => words.to_string(),
        _ => text[..end].to_string(),
    }
}

/// Whether the word just before a `.` at the end of `before` is an
/// abbreviation ("Mr", "Dr") or an initial ("J", "U.S").
fn abbreviation_before(before: &str) -> bool {
    let word = before
        .rsplit(char::is_whitespace)
        .next()
        .unwrap_or("")
        .trim_start_matches(|c: char| !c.is_alphanumeric());
    let last = word.rsplit('.').next().unwrap_or("");
    let mut chars = last.chars();
    let initial = matches!((chars.next(), chars.next()), (Some(c), None) if c.is_uppercase());
    initial || ABBREVIATIONS.contains(&last.to_lowercase().as_str())
}

pub fn pair_id(document_id: &str, k: usize) -> String {
    format!("{document_id}:{k}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(text: &str, max: usize) -> Window {
        Window::of(text, Some(max))
    }

    #[test]
    fn window_ends_at_the_last_sentence_within_the_budget() {
        let text = "Tom met Mr. Smith. They spoke! Did it rain? It did, all day long.";
        let w = cut(text, 50);
        assert_eq!(w.text, "Tom met Mr. Smith. They spoke! Did it rain?");
        assert!(w.cut);
        assert_eq!(w.full_chars, text.chars().count());
        // "Mr." is no sentence end.
        assert_eq!(cut(text, 17).text, "Tom met Mr.");
        assert_eq!(cut(text, 18).text, "Tom met Mr. Smith.");
        // A sentence ending exactly at the budget, with a closing quote.
        let quoted = "He said \"go.\" She went home.";
        assert_eq!(cut(quoted, 13).text, "He said \"go.\"");
        assert_eq!(cut(quoted, 12).text, "He said");
        // Initials and decimals are no sentence ends.
        assert_eq!(
            cut("J. R. Ewing paid 3.5 dollars today", 30).text,
            "J. R. Ewing paid 3.5 dollars"
        );
    }

    #[test]
    fn window_falls_back_to_a_word_then_to_characters_and_counts_characters() {
        assert_eq!(cut("one two three four", 9).text, "one two");
        assert_eq!(cut("one two three four", 8).text, "one two");
        assert_eq!(cut("abcdefghij", 4).text, "abcd");
        // Characters, not bytes: é is two bytes.
        let w = cut("Café é. Más", 7);
        assert_eq!((w.text.as_str(), w.full_chars), ("Café é.", 11));
        // Short enough, or no budget: the whole text, not marked cut.
        for w in [cut("Short.", 6), Window::of("Short.", None)] {
            assert_eq!((w.text.as_str(), w.cut), ("Short.", false));
        }
    }

    #[test]
    fn example_records_its_window() {
        let doc = Document {
            document_id: "d".into(),
            set: "test".into(),
            summary: "First one. Second one.".into(),
        };
        let qap = Qap {
            document_id: "d".into(),
            question: "Q?".into(),
            answer1: "A.".into(),
            answer2: None,
        };
        let e = to_example_in(&Window::of(&doc.summary, Some(15)), &doc, 0, &qap);
        assert_eq!(e.context.as_deref(), Some("First one."));
        assert_eq!(e.extra[CONTEXT_CUT], true);
        assert_eq!(e.extra[CONTEXT_CHARS_FULL], 22);
        let whole = to_example(&doc, 0, &qap);
        assert_eq!(whole.context.as_deref(), Some(doc.summary.as_str()));
        assert_eq!(whole.extra[CONTEXT_CUT], false);
    }
}

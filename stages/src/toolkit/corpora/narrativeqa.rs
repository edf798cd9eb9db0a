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

/// One QA pair as an example; `k` is its index within the document.
pub fn to_example(doc: &Document, k: usize, qap: &Qap) -> Example {
    Example {
        id: pair_id(&doc.document_id, k),
        task: Task::Qa,
        group: Some(doc.document_id.clone()),
        context: Some(doc.summary.clone()),
        input: qap.question.clone(),
        target: qap.answer1.clone(),
        origin: Origin::Real,
        alt_targets: qap.answer2.iter().cloned().collect(),
        extra: Default::default(),
    }
}

pub fn pair_id(document_id: &str, k: usize) -> String {
    format!("{document_id}:{k}")
}

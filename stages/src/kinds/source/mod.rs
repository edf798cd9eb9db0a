//! `source`: real examples of one dataset split, sampled with the seed.
//!
//! The split assigns each story, or each NarrativeQA *document*, to train or
//! test by a seeded hash of its id (test when the hash's uniform value is
//! below `test_fraction`). It depends on nothing else, so `limit` never moves
//! an example between splits, and two sources with one seed (or one
//! `split_seed`) are disjoint. Sampling ranks the split by another seeded
//! hash and takes a prefix, so growing `limit` only adds examples.
//!
//! NarrativeQA sampling: `contexts` documents, and of each up to
//! `per_context` of its pairs (the paper keeps up to 30 per context: 32,291
//! pairs over about 1,100 contexts); `per_context_strict` instead skips the
//! documents with fewer. `context_chars` sets the context window: each
//! summary cut at a sentence end to at most that many characters. The
//! window is the example's `context`, so every later stage (generation,
//! training, evaluation) sees the same text; `context_chars_full` and
//! `context_cut` record what was cut.
//!
//! ROCStories has no official split. Our NarrativeQA mirror has only the
//! official valid and test documents: we pool them and split by document as
//! above. When the data holds official train documents (`set = "train"`),
//! train is the official train set and test the official test set.

use flow_engine::{
    Context, Env, FileHasher, Outcome, ParamProblem, ParamSpec, Params, Stage, StageError,
};

use crate::contracts::dataset::{self, Example};
use crate::toolkit::corpora::{self as data, hub, narrativeqa, rocstories, Dataset, Location};
use crate::toolkit::params::opt_count;
use crate::toolkit::seeds::{item_hash, item_unit};

pub struct Source;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    Train,
    Test,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// The parameters of a `source` stage, read once.
struct Settings {
    dataset: Dataset,
    split: Split,
    limit: Option<usize>,
    test_fraction: f64,
    contexts: Option<usize>,
    per_context: Option<usize>,
    per_context_strict: bool,
    context_chars: Option<usize>,
    split_seed: u64,
    seed: u64,
}

impl Settings {
    fn from_params(params: &Params, seed: u64) -> Result<Self, StageError> {
        let dataset = Dataset::parse(params.require_str("dataset")?)?;
        let split = match params.require_str("split")? {
            "test" => Split::Test,
            _ => Split::Train,
        };
        // Not a declared default: it depends on the dataset.
        let default_fraction = match dataset {
            Dataset::RocStories => 0.25,
            Dataset::NarrativeQa => 0.3,
        };
        Ok(Settings {
            dataset,
            split,
            limit: opt_count(params, "limit")?,
            test_fraction: params.float("test_fraction").unwrap_or(default_fraction),
            contexts: opt_count(params, "contexts")?,
            per_context: opt_count(params, "per_context")?,
            per_context_strict: params.bool("per_context_strict").unwrap_or(false),
            context_chars: opt_count(params, "context_chars")?,
            split_seed: params.int("split_seed").map_or(seed, |s| s as u64),
            seed,
        })
    }

    fn in_split(&self, id: &str) -> bool {
        let purpose = format!("split/{}", self.dataset.name());
        let is_test = item_unit(self.split_seed, &purpose, id) < self.test_fraction;
        is_test == (self.split == Split::Test)
    }

    /// Seeded rank of an item for one sampling purpose.
    fn rank(&self, purpose: &str, id: &str) -> u64 {
        item_hash(self.seed, purpose, id)
    }
}

impl Stage for Source {
    fn kind(&self) -> &'static str {
        "source"
    }

    fn version(&self) -> u32 {
        // 2: per_context keeps documents with fewer pairs (was: skipped);
        // QA examples record context_chars_full and context_cut.
        2
    }

    fn about(&self) -> &'static str {
        "Real examples (ROCStories, NarrativeQA) from the local mirror (FLOW_DATA_DIR) or the \
         Hugging Face hub: a seeded train/test split by story or document id (NarrativeQA's \
         mirror pools the official valid+test documents) and a seeded sample"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice("dataset", &["rocstories", "narrativeqa"], "which dataset")
                .required(),
            ParamSpec::choice("split", &["train", "test"], "which side of the split").default("train"),
            ParamSpec::int(
                "limit",
                "number of examples (QA: pairs, taken document by document); default: all",
            )
            .min(1.0),
            ParamSpec::float(
                "test_fraction",
                "share of stories / documents in test; default 0.25 (rocstories), 0.3 (narrativeqa)",
            )
            .greater_than(0.0)
            .less_than(1.0),
            ParamSpec::int("contexts", "narrativeqa: number of documents; default: all").min(1.0),
            ParamSpec::int(
                "per_context",
                "narrativeqa: at most this many QA pairs per document (documents with fewer are \
                 kept whole, as in the paper; see per_context_strict); default: all",
            )
            .min(1.0),
            ParamSpec::bool(
                "per_context_strict",
                "narrativeqa: skip the documents with fewer than per_context QA pairs, so every \
                 document kept gives exactly per_context",
            )
            .default(false),
            ParamSpec::int(
                "context_chars",
                "narrativeqa: the context window, in characters: each summary is cut at the last \
                 sentence end within this many (else at a word boundary) and the example's \
                 context is that window, for generation, training and evaluation alike; set it \
                 so that window + question + answer fit the learner's max_seq_len (~4 \
                 characters a token); default: the whole summary",
            )
            .min(20.0),
            ParamSpec::int(
                "split_seed",
                "seed of the train/test assignment; default: the stage seed. Sources must agree \
                 on it for their splits to be disjoint",
            )
            .min(0.0),
        ]
    }

    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        let mut problems = Vec::new();
        if params.str("dataset") == Some("rocstories") {
            for name in ["contexts", "per_context", "context_chars"] {
                if params.get(name).is_some() {
                    problems.push(ParamProblem::new(
                        name,
                        "applies to narrativeqa only (stories have no contexts)",
                    ));
                }
            }
        }
        // A default `false` is no setting; only `true` asks for something.
        if params.bool("per_context_strict") == Some(true) {
            if params.str("dataset") == Some("rocstories") {
                problems.push(ParamProblem::new(
                    "per_context_strict",
                    "applies to narrativeqa only (stories have no contexts)",
                ));
            } else if params.get("per_context").is_none() {
                problems.push(ParamProblem::new(
                    "per_context_strict",
                    "needs per_context (the number of pairs a document must have)",
                ));
            }
        }
        problems
    }

    fn fingerprint(
        &self,
        params: &Params,
        env: &Env,
        hasher: &dyn FileHasher,
    ) -> Result<Vec<(String, String)>, StageError> {
        let dataset = Dataset::parse(params.require_str("dataset")?)?;
        match (Location::of(env), dataset) {
            (Location::Mirror(root), _) => dataset
                .mirror_files()
                .iter()
                .map(|rel| {
                    let path = data::mirror_file(&root, rel)?;
                    Ok((format!("data:{rel}"), hasher.hash_file(&path)?))
                })
                .collect(),
            (Location::Hub, Dataset::RocStories) => Ok(vec![(
                format!("hub:datasets/{}", rocstories::HUB_REPO),
                format!(
                    "{}:{}",
                    rocstories::HUB_REVISION,
                    rocstories::HUB_FILES.join(",")
                ),
            )]),
            (Location::Hub, Dataset::NarrativeQa) => Err(narrativeqa::hub_unsupported()),
        }
    }

    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let settings = Settings::from_params(ctx.params, ctx.seed)?;
        let location = Location::of(ctx.env);
        let sampled = match settings.dataset {
            Dataset::RocStories => stories(&settings, &location, ctx)?,
            Dataset::NarrativeQa => qa(&settings, &location, ctx)?,
        };
        ctx.cancel.check()?;
        let outcome = dataset::output(ctx, &sampled.examples)?;
        ctx.log(format!(
            "{} {}: {} examples from a pool of {} ({})",
            settings.dataset.name(),
            settings.split.name(),
            sampled.examples.len(),
            sampled.pool,
            sampled.location
        ));
        let mut outcome = outcome
            .metric("examples", sampled.examples.len() as u64)
            .metric("pool", sampled.pool as u64)
            .metric("source", sampled.location)
            .metric("split_mode", sampled.split_mode);
        if let Some(contexts) = sampled.contexts {
            outcome = outcome.metric("contexts", contexts as u64);
        }
        if let Some(w) = sampled.windows {
            outcome = outcome
                .metric("context_cut_share", w.cut_share)
                .metric("context_chars_mean", w.chars_mean)
                .metric("context_chars_full_mean", w.full_chars_mean);
        }
        Ok(outcome)
    }
}

struct Sampled {
    examples: Vec<Example>,
    /// Size of the split before sampling (stories or QA pairs).
    pool: usize,
    contexts: Option<usize>,
    /// QA: the context windows of the documents sampled.
    windows: Option<WindowStats>,
    location: &'static str,
    split_mode: &'static str,
}

/// Over the documents sampled (each counted once, not per pair).
struct WindowStats {
    cut_share: f64,
    chars_mean: f64,
    full_chars_mean: f64,
}

impl WindowStats {
    fn of(windows: &[&narrativeqa::Window]) -> Self {
        let n = windows.len().max(1) as f64;
        let sum = |f: &dyn Fn(&narrativeqa::Window) -> usize| {
            windows.iter().map(|w| f(w)).sum::<usize>() as f64
        };
        WindowStats {
            cut_share: sum(&|w| usize::from(w.cut)) / n,
            chars_mean: sum(&|w| w.text.chars().count()) / n,
            full_chars_mean: sum(&|w| w.full_chars) / n,
        }
    }
}

fn stories(
    s: &Settings,
    location: &Location,
    ctx: &mut Context<'_>,
) -> Result<Sampled, StageError> {
    let (all, label) = match location {
        Location::Mirror(root) => {
            let path = data::mirror_file(root, rocstories::MIRROR_FILE)?;
            ctx.log(format!("reading {}", path.display()));
            (rocstories::read_mirror(&path)?, "mirror")
        }
        Location::Hub => (hub_stories(ctx)?, "hub"),
    };
    let mut pool: Vec<(u64, &rocstories::Story)> = all
        .iter()
        .filter(|story| s.in_split(&story.id))
        .map(|story| (s.rank("sample/rocstories", &story.id), story))
        .collect();
    pool.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    let n = s.limit.unwrap_or(pool.len());
    if n > pool.len() {
        return Err(StageError::invalid(format!(
            "limit = {n}, but the {} split of rocstories has only {} stories ({} in all, \
             test_fraction = {})",
            s.split.name(),
            pool.len(),
            all.len(),
            s.test_fraction
        )));
    }
    Ok(Sampled {
        examples: pool[..n]
            .iter()
            .map(|(_, story)| story.to_example())
            .collect(),
        pool: pool.len(),
        contexts: None,
        windows: None,
        location: label,
        split_mode: "hashed",
    })
}

/// Both hub files, pooled: the hub's own split is the uploader's, not an
/// official one, so it is split by id like the mirror.
fn hub_stories(ctx: &mut Context<'_>) -> Result<Vec<rocstories::Story>, StageError> {
    let mut all = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for file in rocstories::HUB_FILES {
        let path = hub::dataset_file(
            ctx.env,
            rocstories::HUB_REPO,
            rocstories::HUB_REVISION,
            file,
        )?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| StageError::io(format!("read {}", path.display()), e))?;
        let (stories, dropped) = rocstories::parse_hub_text(&text);
        ctx.log(format!(
            "hub {}/{file}: {} stories, {dropped} dropped (not 5 sentences)",
            rocstories::HUB_REPO,
            stories.len()
        ));
        all.extend(stories.into_iter().filter(|s| seen.insert(s.id.clone())));
    }
    Ok(all)
}

fn qa(s: &Settings, location: &Location, ctx: &mut Context<'_>) -> Result<Sampled, StageError> {
    let corpus = match location {
        Location::Mirror(root) => {
            let docs = data::mirror_file(root, narrativeqa::DOCUMENTS_FILE)?;
            let qaps = data::mirror_file(root, narrativeqa::QAPS_FILE)?;
            ctx.log(format!("reading {} and {}", docs.display(), qaps.display()));
            narrativeqa::read_mirror(&docs, &qaps)?
        }
        Location::Hub => return Err(narrativeqa::hub_unsupported()),
    };
    let official = corpus.has_official_train();
    if official {
        ctx.log("official NarrativeQA split: train = official train, test = official test");
    } else {
        ctx.log(format!(
            "no official train documents in the data: official valid+test documents pooled \
             and split by document (test_fraction = {})",
            s.test_fraction
        ));
    }
    let in_split = |doc: &narrativeqa::Document| {
        if official {
            doc.set == s.split.name()
        } else {
            s.in_split(&doc.document_id)
        }
    };
    let split_docs: Vec<&narrativeqa::Document> =
        corpus.documents.iter().filter(|d| in_split(d)).collect();
    let pairs_of = |doc: &narrativeqa::Document| corpus.qaps.get(&doc.document_id);
    let pool: usize = split_docs
        .iter()
        .filter_map(|d| pairs_of(d))
        .map(Vec::len)
        .sum();

    // Up to per_context pairs of each document; strict: only documents
    // with at least per_context. A document without pairs gives nothing.
    let need = match (s.per_context_strict, s.per_context) {
        (true, Some(n)) => n,
        _ => 1,
    };
    let mut eligible: Vec<(u64, &narrativeqa::Document)> = split_docs
        .iter()
        .filter(|d| pairs_of(d).map_or(0, Vec::len) >= need)
        .map(|d| (s.rank("sample/narrativeqa/contexts", &d.document_id), *d))
        .collect();
    eligible.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.document_id.cmp(&b.1.document_id))
    });
    let skipped = split_docs.len() - eligible.len();
    if skipped > 0 {
        ctx.log(format!(
            "{skipped} documents skipped: fewer than {need} QA pairs{}",
            if s.per_context_strict {
                " (per_context_strict)"
            } else {
                ""
            }
        ));
    }
    let n_docs = s.contexts.unwrap_or(eligible.len());
    if n_docs > eligible.len() {
        return Err(StageError::invalid(format!(
            "contexts = {n_docs}, but the {} split of narrativeqa has only {} documents with at \
             least {need} QA pairs ({} documents in the split)",
            s.split.name(),
            eligible.len(),
            split_docs.len()
        )));
    }

    let chosen = &eligible[..n_docs];
    if let Some(n) = s.per_context.filter(|_| !s.per_context_strict) {
        let short = chosen
            .iter()
            .filter(|(_, d)| pairs_of(d).map_or(0, Vec::len) < n)
            .count();
        if short > 0 {
            ctx.log(format!(
                "{short} of {n_docs} documents have fewer than per_context = {n} QA pairs: \
                 all of theirs are kept"
            ));
        }
    }
    let windows: Vec<narrativeqa::Window> = chosen
        .iter()
        .map(|(_, d)| narrativeqa::Window::of(&d.summary, s.context_chars))
        .collect();
    let mut examples = Vec::new();
    for ((_, doc), window) in chosen.iter().zip(&windows) {
        let pairs = pairs_of(doc).map(Vec::as_slice).unwrap_or(&[]);
        let mut ranked: Vec<(u64, usize)> = (0..pairs.len())
            .map(|k| {
                let id = narrativeqa::pair_id(&doc.document_id, k);
                (s.rank("sample/narrativeqa/pairs", &id), k)
            })
            .collect();
        ranked.sort_unstable();
        let take = s.per_context.unwrap_or(pairs.len()).min(pairs.len());
        examples.extend(
            ranked[..take]
                .iter()
                .map(|&(_, k)| narrativeqa::to_example_in(window, doc, k, &pairs[k])),
        );
    }
    if let Some(limit) = s.limit {
        if limit > examples.len() {
            return Err(StageError::invalid(format!(
                "limit = {limit}, but the selection has only {} QA pairs ({n_docs} documents)",
                examples.len()
            )));
        }
        examples.truncate(limit);
    }
    let kept: std::collections::BTreeSet<&str> =
        examples.iter().filter_map(|e| e.group.as_deref()).collect();
    // Only documents `limit` left in the output.
    let kept_windows: Vec<&narrativeqa::Window> = chosen
        .iter()
        .zip(&windows)
        .filter(|((_, d), _)| kept.contains(d.document_id.as_str()))
        .map(|(_, w)| w)
        .collect();
    if let Some(max) = s.context_chars {
        let cut = kept_windows.iter().filter(|w| w.cut).count();
        ctx.log(format!(
            "context window {max} characters: {cut} of {} summaries cut",
            kept_windows.len()
        ));
    }
    let windows = WindowStats::of(&kept_windows);
    let contexts = kept.len();
    Ok(Sampled {
        examples,
        pool,
        contexts: Some(contexts),
        windows: Some(windows),
        location: "mirror",
        split_mode: if official {
            "official"
        } else {
            "pooled-by-document"
        },
    })
}

#[cfg(test)]
mod tests;

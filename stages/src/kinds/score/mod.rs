//! `score`: diversity and distribution metrics of a dataset.
//!
//! - distinct: Distinct-n (Eq. 4-6, see [`distinct`]); QA sums it over
//!   contexts (Eq. 5), stories take one value over the whole set (Eq. 6).
//!   `distinct_n` counts the n-grams within each example; `distinct_n_concat`
//!   beside it is Eq. 4 literally, over the concatenation of the examples in
//!   dataset order (with the n-grams that cross example boundaries).
//! - lengths: target lengths in tokens (Fig. 3).
//! - kl: unigram KL(reference || data) (Table 2, see [`kl`]).
//! - shared: the share of the examples that are identical to one of the
//!   reference (`shared_share`): how much two diversity levels, or a
//!   generated and a real set, hold in common; 0 for disjoint samples.
//!
//! Always [`Threads::All`]: tokenizing and n-gram deduplication run on every
//! core the scheduler grants, and a score is short, so holding all slots
//! briefly costs less than a slow single-threaded pass over a large set.

pub mod distinct;
mod intern;
pub mod kl;
pub mod lengths;
pub mod tokenize;

use std::collections::{BTreeMap, HashSet};

use flow_engine::{
    Context, Outcome, ParamProblem, ParamSpec, ParamType, Params, Stage, StageError, Threads, Value,
};
use rayon::prelude::*;
use serde_json::{json, Map, Value as Json};

use crate::contracts::dataset::{self, Example, Task};
use crate::toolkit::cores::thread_pool;
use crate::toolkit::params::{count, str_list};
use distinct::{distinct, distinct_concat, distinct_concat_groups, distinct_groups, NgramCount};
use tokenize::{Corpus, Tokenizer};

pub const SCORES_FILE: &str = "scores.json";

pub struct Score;

/// The parameters of a `score` stage, read once.
struct Settings {
    distinct: bool,
    lengths: bool,
    kl: bool,
    shared: bool,
    n: usize,
    tokenizer: Tokenizer,
    grouping: String,
    kl_alpha: f64,
}

impl Settings {
    fn from_params(params: &Params) -> Result<Self, StageError> {
        let metrics = str_list(params, "metrics")?;
        let has = |m: &str| metrics.iter().any(|x| x == m);
        let tokenizer = params.require_str("tokenizer")?;
        Ok(Settings {
            distinct: has("distinct"),
            lengths: has("lengths"),
            kl: has("kl"),
            shared: has("shared"),
            n: count(params, "n")?,
            tokenizer: Tokenizer::parse(tokenizer)
                .ok_or_else(|| StageError::Other(format!("internal: tokenizer `{tokenizer}`")))?,
            grouping: params.require_str("grouping")?.to_string(),
            kl_alpha: params.require_float("kl_alpha")?,
        })
    }
}

impl Stage for Score {
    fn kind(&self) -> &'static str {
        "score"
    }

    fn version(&self) -> u32 {
        // 2: `distinct_n_concat` beside `distinct_n` (Eq. 4 over the literal
        // concatenation); the `shared` metric.
        2
    }

    fn about(&self) -> &'static str {
        "Diversity and distribution metrics of a dataset: Distinct-n (summed over contexts for \
         QA; per example and over the literal concatenation), target lengths, unigram KL \
         against a reference set, the share of examples identical to one of a reference set"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::input("data", "stage whose examples are scored").required(),
            ParamSpec::input(
                "reference",
                "reference examples for `kl` (usually the real data) and `shared`",
            ),
            ParamSpec::list(
                "metrics",
                ParamType::Choice(&["distinct", "lengths", "kl", "shared"]),
                "which metrics to compute",
            )
            .default(vec!["distinct", "lengths"]),
            ParamSpec::int("n", "n-gram length of Distinct-n")
                .default(5)
                .min(1.0),
            ParamSpec::choice(
                "tokenizer",
                Tokenizer::NAMES,
                "whitespace: lowercase, split on whitespace; words: lowercase letter/digit runs",
            )
            .default("whitespace"),
            ParamSpec::choice(
                "grouping",
                &["auto", "none", "group"],
                "Distinct-n per group, summed (auto: QA by context, stories as one set)",
            )
            .default("auto"),
            ParamSpec::float(
                "kl_alpha",
                "additive smoothing of the KL unigram distributions",
            )
            .default(0.5)
            .greater_than(0.0),
        ]
    }

    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        let metrics: Vec<&str> = params
            .get("metrics")
            .and_then(Value::as_list)
            .map(|l| l.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut problems = Vec::new();
        if metrics.is_empty() {
            problems.push(ParamProblem::new("metrics", "names no metric to compute"));
        }
        for (m, why) in [
            ("kl", "KL needs a reference set"),
            ("shared", "`shared` counts examples also in a reference set"),
        ] {
            if metrics.contains(&m) && params.get("reference").is_none() {
                problems.push(ParamProblem::new(
                    "reference",
                    format!("is required when `metrics` includes \"{m}\" ({why})"),
                ));
            }
        }
        problems
    }

    fn threads(&self, _params: &Params, _: &flow_engine::Resources) -> Threads {
        Threads::All
    }

    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let settings = Settings::from_params(ctx.params)?;
        let data_in = ctx.input("data")?;
        let data = dataset::read_upstream(data_in)?;
        let data_name = format!("input `{}`", data_in.instance);
        let reference = if settings.kl || settings.shared {
            let up = ctx.input("reference")?;
            Some((up.instance.clone(), dataset::read_upstream(up)?))
        } else {
            None
        };
        let pool = thread_pool(ctx.threads)?;
        let (report, metrics) =
            pool.install(|| compute(&settings, &data, &data_name, reference.as_ref()))?;

        let path = ctx.out_path(SCORES_FILE);
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| StageError::Other(format!("encode scores: {e}")))?;
        std::fs::write(&path, text + "\n")
            .map_err(|e| StageError::io(format!("write {}", path.display()), e))?;
        ctx.log(format!(
            "scored {} examples: {}",
            data.len(),
            metrics
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut outcome = Outcome::default().output(SCORES_FILE, path);
        outcome.metrics = metrics;
        Ok(outcome)
    }
}

type Report = (Json, Map<String, Json>);

fn compute(
    s: &Settings,
    data: &[Example],
    data_name: &str,
    reference: Option<&(String, Vec<Example>)>,
) -> Result<Report, StageError> {
    // One corpus over data and reference: one vocabulary for KL.
    let mut docs: Vec<&Example> = data.iter().collect();
    if let Some((_, r)) = reference.filter(|_| s.kl) {
        docs.extend(r.iter());
    }
    let corpus = Corpus::build(&docs, |e| [&e.input, &e.target], s.tokenizer);

    let mut report = Map::new();
    let mut metrics = Map::new();
    report.insert("examples".into(), json!(data.len()));
    report.insert("tokenizer".into(), json!(s.tokenizer.name()));
    metrics.insert("n_examples".into(), json!(data.len()));
    if let Some(task) = dataset::task_name(data) {
        metrics.insert("task".into(), json!(task));
    }
    if s.distinct {
        let (section, scalars) = distinct_section(s, data, data_name, &corpus)?;
        report.insert("distinct".into(), section);
        metrics.extend(scalars);
    }
    if s.lengths {
        let lens: Vec<usize> = data
            .par_iter()
            .map(|e| s.tokenizer.count(&e.target))
            .collect();
        let summary = lengths::summarize(&lens);
        metrics.insert("length_mean".into(), json!(summary.mean));
        metrics.insert("length_median".into(), json!(summary.median));
        metrics.insert("length_p10".into(), json!(summary.p10));
        metrics.insert("length_p90".into(), json!(summary.p90));
        let mut section = to_json(&summary)?;
        section["of"] = json!("target");
        report.insert("lengths".into(), section);
    }
    if let Some((name, r)) = reference.filter(|_| s.shared) {
        let (items, share) = shared(data, r);
        metrics.insert("shared_items".into(), json!(items));
        metrics.insert("shared_share".into(), json!(share));
        report.insert(
            "shared".into(),
            json!({"reference": name, "items": items, "share": share,
                   "reference_examples": r.len(), "identity": SHARED_IDENTITY}),
        );
    }
    if let Some((name, _)) = reference.filter(|_| s.kl) {
        let mut counts = vec![[0u64; 2]; corpus.vocab_size];
        for d in 0..corpus.len() {
            let side = usize::from(d >= data.len());
            for &id in corpus.doc(d) {
                counts[id as usize][side] += 1;
            }
        }
        let (data_counts, ref_counts): (Vec<u64>, Vec<u64>) =
            counts.iter().map(|c| (c[0], c[1])).unzip();
        let kl = kl::unigram_kl(&ref_counts, &data_counts, s.kl_alpha);
        metrics.insert("kl_unigram".into(), json!(kl.value));
        let mut section = to_json(&kl)?;
        section["reference"] = json!(name);
        report.insert("kl".into(), section);
    }
    Ok((Json::Object(report), metrics))
}

fn distinct_section(
    s: &Settings,
    data: &[Example],
    data_name: &str,
    corpus: &Corpus,
) -> Result<(Json, Map<String, Json>), StageError> {
    let n = s.n;
    let by_group = match s.grouping.as_str() {
        "group" => true,
        "none" => false,
        _ => {
            dataset::common_task(data, data_name)
                .map_err(|e| StageError::invalid(format!("{e}; set `grouping` explicitly")))?
                == Some(Task::Qa)
        }
    };
    let definition = "unique / total n-grams; n-grams within each example's input + target \
                      (never across examples, never the QA context)";
    let concat_definition = "Eq. 4 as written: unique / total n-grams of the concatenation of \
                             the examples' input + target in dataset order, including the n-grams \
                             that span two examples (never the QA context)";
    let mut scalars = Map::new();
    let section = if by_group {
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, e) in data.iter().enumerate() {
            let g = e.group.as_deref().ok_or_else(|| {
                StageError::invalid(format!(
                    "{data_name}: example `{}` has no group, but Distinct-{n} is computed per \
                     group; set grouping = \"none\"",
                    e.id
                ))
            })?;
            groups.entry(g).or_default().push(i);
        }
        let members: Vec<Vec<usize>> = groups.values().cloned().collect();
        let counts = distinct_groups(corpus, &members, n);
        let concat = distinct_concat_groups(corpus, &members, n);
        let sum_mean = |counts: &[NgramCount]| {
            let sum: f64 = counts.iter().map(NgramCount::value).sum();
            let mean = if counts.is_empty() {
                0.0
            } else {
                sum / counts.len() as f64
            };
            (sum, mean)
        };
        let (sum, mean) = sum_mean(&counts);
        let (concat_sum, concat_mean) = sum_mean(&concat);
        scalars.insert(format!("distinct_{n}"), json!(sum));
        scalars.insert(format!("distinct_{n}_mean"), json!(mean));
        scalars.insert(format!("distinct_{n}_concat"), json!(concat_sum));
        scalars.insert(format!("distinct_{n}_concat_mean"), json!(concat_mean));
        scalars.insert("groups".into(), json!(counts.len()));
        let per_group: Vec<Json> = groups
            .iter()
            .zip(counts.iter().zip(&concat))
            .map(|((g, m), (c, k))| {
                json!({"group": g, "examples": m.len(), "unique": c.unique,
                       "total": c.total, "value": c.value(), "concat_unique": k.unique,
                       "concat_total": k.total, "concat_value": k.value()})
            })
            .collect();
        json!({"n": n, "grouping": "group", "aggregate": "sum over groups",
               "definition": definition, "value": sum, "mean_per_group": mean,
               "concat": {"definition": concat_definition, "value": concat_sum,
                          "mean_per_group": concat_mean},
               "groups": counts.len(), "per_group": per_group})
    } else {
        let all: Vec<usize> = (0..data.len()).collect();
        let c = distinct(corpus, &all, n);
        let k = distinct_concat(corpus, &all, n);
        scalars.insert(format!("distinct_{n}"), json!(c.value()));
        scalars.insert(format!("distinct_{n}_unique"), json!(c.unique));
        scalars.insert(format!("distinct_{n}_total"), json!(c.total));
        scalars.insert(format!("distinct_{n}_concat"), json!(k.value()));
        scalars.insert(format!("distinct_{n}_concat_unique"), json!(k.unique));
        scalars.insert(format!("distinct_{n}_concat_total"), json!(k.total));
        json!({"n": n, "grouping": "none", "definition": definition,
               "value": c.value(), "unique": c.unique, "total": c.total,
               "concat": {"definition": concat_definition, "value": k.value(),
                          "unique": k.unique, "total": k.total}})
    };
    Ok((section, scalars))
}

const SHARED_IDENTITY: &str = "same task, group (QA: document), input and target, each trimmed";

/// Examples of `data` identical to one of `reference` (see
/// [`SHARED_IDENTITY`]; ids play no part), and their share of `data` (0 for
/// no data).
fn shared(data: &[Example], reference: &[Example]) -> (u64, f64) {
    fn identity(e: &Example) -> (Task, Option<&str>, &str, &str) {
        (e.task, e.group.as_deref(), e.input.trim(), e.target.trim())
    }
    let known: HashSet<_> = reference.iter().map(identity).collect();
    let items = data.iter().filter(|e| known.contains(&identity(e))).count();
    let share = if data.is_empty() {
        0.0
    } else {
        items as f64 / data.len() as f64
    };
    (items as u64, share)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Json, StageError> {
    serde_json::to_value(value).map_err(|e| StageError::Other(format!("encode scores: {e}")))
}

#[cfg(test)]
mod tests;

//! `findings`: the paper's findings a figure tests, each measured by a contrast or a trend
//! over the gathered instances, with its uncertainty and a verdict by a rule fixed before
//! the data (see `flow_stats::Verdict`): `findings.json` and `findings.md`.
//!
//! - `test = "contrast"`: every value of `axis` against `reference` (an axis value), or
//!   against the instances of another gathered stage (`reference_stage`, e.g. the model
//!   trained on real data; those match a group on the bindings they have), within each
//!   group of the other bindings, paired on seeds and (where `eval_loss` wrote them) on the same
//!   test examples: the mean difference `condition - reference` with a 95% two-way paired
//!   bootstrap interval. Without per-example results, the per-seed differences with a
//!   Student-t interval (two seeds or more).
//! - `test = "trend"`: Spearman's rho of the metric against the ordered `axis` (every
//!   seed a point), with one-sided permutation p-values.
//!
//! `exclude = ["axis=value", ...]` leaves out the instances so bound (e.g. `ratio=0.0`,
//! where the series do not differ).
//!
//! A finding with several results (groups, conditions) `agrees` when every one agrees,
//! `disagrees` when any disagrees, and is `inconclusive` otherwise.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use flow_engine::{
    Context, Outcome, ParamSpec, ParamType, Params, Stage, StageError, Upstream, Value,
};
use flow_stats::{Direction, Verdict, LEVEL, PERMUTATIONS, RESAMPLES};
use serde_json::{json, Value as Json};

use crate::contracts::per_example::{self, ExampleLoss};
use crate::toolkit::replicates::is_seed_label;
use crate::toolkit::seeds::item_hash;

pub const JSON_FILE: &str = "findings.json";
pub const MD_FILE: &str = "findings.md";

pub struct Findings;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Test {
    Contrast,
    Trend,
}

/// One finding as declared in the manifest.
#[derive(Clone, Debug)]
struct Claim {
    claim: String,
    quote: Option<String>,
    test: Test,
    metric: String,
    axis: String,
    direction: Direction,
    reference: Option<String>,
    reference_stage: Option<String>,
    exclude: Vec<(String, String)>,
    order: Vec<String>,
}

impl Claim {
    fn excludes(&self, row: &Row) -> bool {
        self.exclude
            .iter()
            .any(|(axis, value)| row.axis_value(axis).is_some_and(|v| v.to_string() == *value))
    }

    /// What the conditions are compared against, for reports.
    fn reference_name(&self) -> &str {
        self.reference
            .as_deref()
            .or(self.reference_stage.as_deref())
            .unwrap_or_default()
    }
}

struct Settings {
    claims: Vec<Claim>,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        let Some(Value::List(items)) = p.get("findings") else {
            return Err(StageError::invalid("`findings` must list the findings to test"));
        };
        let mut claims = Vec::new();
        for item in items {
            let Value::Table(t) = item else { continue };
            let s = |k: &str| t.get(k).and_then(Value::as_str).map(str::to_string);
            let claim = s("claim").unwrap_or_default();
            let test = match s("test").as_deref() {
                Some("trend") => Test::Trend,
                _ => Test::Contrast,
            };
            let direction = s("direction")
                .as_deref()
                .and_then(Direction::parse)
                .unwrap_or(Direction::Increase);
            let reference = s("reference");
            let reference_stage = s("reference_stage");
            if test == Test::Contrast && reference.is_some() == reference_stage.is_some() {
                return Err(StageError::invalid(format!(
                    "finding `{claim}`: a contrast needs one of `reference` (the `{}` value \
                     compared against) or `reference_stage` (a gathered stage compared against)",
                    s("axis").unwrap_or_default()
                )));
            }
            let mut exclude = Vec::new();
            for item in t.get("exclude").and_then(Value::as_list).unwrap_or_default() {
                let text = item.as_str().unwrap_or_default();
                let Some((axis, value)) = text.split_once('=') else {
                    return Err(StageError::invalid(format!(
                        "finding `{claim}`: `exclude` entries are `axis=value`, not `{text}`"
                    )));
                };
                exclude.push((axis.trim().to_string(), value.trim().to_string()));
            }
            let order = t
                .get("order")
                .and_then(Value::as_list)
                .map(|l| l.iter().map(|v| v.to_string()).collect())
                .unwrap_or_default();
            claims.push(Claim {
                claim,
                quote: s("quote"),
                test,
                metric: s("metric").unwrap_or_else(|| per_example::METRIC.to_string()),
                axis: s("axis").unwrap_or_default(),
                direction,
                reference,
                reference_stage,
                exclude,
                order,
            });
        }
        Ok(Settings { claims })
    }
}

impl Stage for Findings {
    fn kind(&self) -> &'static str {
        "findings"
    }

    fn version(&self) -> u32 {
        1
    }

    fn about(&self) -> &'static str {
        "The paper's findings a figure tests: contrasts and trends over the gathered instances \
         with 95% intervals or permutation p-values, and a verdict by a fixed rule \
         (findings.json, findings.md)"
    }

    fn params(&self) -> Vec<ParamSpec> {
        let finding = vec![
            ParamSpec::string("claim", "the finding, in the paper's words").required(),
            ParamSpec::string("quote", "where the paper says it (a quote)"),
            ParamSpec::choice(
                "test",
                &["contrast", "trend"],
                "contrast: each axis value against `reference`; trend: along the ordered axis",
            )
            .required(),
            ParamSpec::string("metric", "the metric tested").default(per_example::METRIC),
            ParamSpec::string("axis", "the binding compared or ordered (e.g. `ratio`)").required(),
            ParamSpec::choice(
                "direction",
                &["increase", "decrease"],
                "the paper's direction: the contrast (condition - reference) is positive / \
                 negative, or the metric rises / falls along the axis",
            )
            .required(),
            ParamSpec::string("reference", "contrast: the axis value compared against"),
            ParamSpec::string(
                "reference_stage",
                "contrast: a gathered stage whose instances are compared against (e.g. the \
                 model trained on real data), instead of `reference`",
            ),
            ParamSpec::list(
                "exclude",
                ParamType::Str,
                "instances left out, as `axis=value` (e.g. `ratio=0.0`)",
            ),
            ParamSpec::list(
                "order",
                ParamType::Str,
                "trend: the axis values in order, for an axis that is not numeric",
            ),
        ];
        vec![
            ParamSpec::gather("from", "stage(s) whose instances are compared").required(),
            ParamSpec::list(
                "findings",
                ParamType::Table(finding),
                "the findings to test, each `{ claim, test, axis, direction, ... }`",
            )
            .required(),
        ]
    }

    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let settings = Settings::from_params(ctx.params)?;
        let rows = ctx
            .gathered("from")
            .iter()
            .map(Row::of)
            .collect::<Result<Vec<_>, _>>()?;
        let mut results = Vec::new();
        for claim in &settings.claims {
            results.push(evaluate(claim, &rows, ctx.seed)?);
        }
        let count = |v: Verdict| results.iter().filter(|r| r.verdict == v).count();
        let (agrees, disagrees, inconclusive) = (
            count(Verdict::Agrees),
            count(Verdict::Disagrees),
            count(Verdict::Inconclusive),
        );
        let json_path = ctx.out_path(JSON_FILE);
        let doc = json!({
            "level": LEVEL,
            "rule": "contrast: agrees when the 95% interval excludes 0 in the paper's direction, \
                     disagrees when it excludes 0 the other way; trend: agrees when the one-sided \
                     permutation p < 0.05 in the paper's direction, disagrees when p < 0.05 the \
                     other way; otherwise inconclusive. Several results: agrees if all agree, \
                     disagrees if any disagrees.",
            "findings": results.iter().map(ClaimResult::to_json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        std::fs::write(&json_path, text)
            .map_err(|e| StageError::io(format!("write {}", json_path.display()), e))?;
        let md_path = ctx.out_path(MD_FILE);
        std::fs::write(&md_path, markdown(&results))
            .map_err(|e| StageError::io(format!("write {}", md_path.display()), e))?;
        for r in &results {
            ctx.log(format!("{}: {}", r.claim.claim, r.verdict.as_str()));
        }
        Ok(Outcome::default()
            .published(JSON_FILE, json_path)
            .published(MD_FILE, md_path)
            .metric("findings", results.len() as u64)
            .metric("agrees", agrees as u64)
            .metric("disagrees", disagrees as u64)
            .metric("inconclusive", inconclusive as u64))
    }
}

/// One gathered instance.
struct Row {
    /// The stage it is an instance of: results are never pooled across stages.
    stage: String,
    bindings: Vec<(String, Value)>,
    /// The seed bindings (every seed axis), which replicates pair on.
    seed: Vec<(String, Value)>,
    metrics: serde_json::Map<String, Json>,
    per_example: Option<Vec<ExampleLoss>>,
}

fn is_axis_label(label: &str, axis: &str) -> bool {
    label == axis || label.rsplit('.').next() == Some(axis)
}

impl Row {
    fn of(up: &Upstream) -> Result<Row, StageError> {
        let seed = up
            .bindings
            .iter()
            .filter(|(l, _)| is_seed_label(l))
            .cloned()
            .collect();
        Ok(Row {
            stage: up
                .instance
                .split_once('@')
                .map_or(up.instance.as_str(), |(s, _)| s)
                .to_string(),
            bindings: up
                .bindings
                .iter()
                .filter(|(l, _)| !is_seed_label(l))
                .cloned()
                .collect(),
            seed,
            metrics: up.metrics.clone(),
            per_example: per_example::read_upstream(up)?,
        })
    }

    fn axis_value(&self, axis: &str) -> Option<&Value> {
        self.bindings
            .iter()
            .find(|(l, _)| is_axis_label(l, axis))
            .map(|(_, v)| v)
    }

    /// The other bindings, naming the group a result belongs to.
    fn group(&self, axis: &str) -> String {
        let parts: Vec<String> = self
            .bindings
            .iter()
            .filter(|(l, _)| !is_axis_label(l, axis))
            .map(|(l, v)| format!("{l}={v}"))
            .collect();
        if parts.is_empty() {
            self.stage.clone()
        } else {
            format!("{}: {}", self.stage, parts.join(","))
        }
    }

    fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).and_then(Json::as_f64)
    }
}

/// What one finding came to.
#[derive(Debug)]
struct ClaimResult {
    claim: Claim,
    results: Vec<Json>,
    verdict: Verdict,
    /// A one-line estimate for the markdown table.
    summary: String,
}

impl ClaimResult {
    fn to_json(&self) -> Json {
        json!({
            "claim": self.claim.claim,
            "quote": self.claim.quote,
            "test": match self.claim.test { Test::Contrast => "contrast", Test::Trend => "trend" },
            "metric": self.claim.metric,
            "axis": self.claim.axis,
            "reference": self.claim.reference,
            "reference_stage": self.claim.reference_stage,
            "exclude": self.claim.exclude.iter().map(|(a, v)| format!("{a}={v}")).collect::<Vec<_>>(),
            "direction": self.claim.direction,
            "results": self.results,
            "verdict": self.verdict.as_str(),
        })
    }
}

fn combine(verdicts: &[Verdict]) -> Verdict {
    if verdicts.contains(&Verdict::Disagrees) {
        Verdict::Disagrees
    } else if !verdicts.is_empty() && verdicts.iter().all(|v| *v == Verdict::Agrees) {
        Verdict::Agrees
    } else {
        Verdict::Inconclusive
    }
}

/// A resampling seed that depends on the stage's seed and on what is resampled, so a
/// rerun gives the same interval and two results do not share their draws.
fn draw_seed(stage_seed: u64, what: &str) -> u64 {
    item_hash(stage_seed, "findings", what)
}

fn evaluate(claim: &Claim, rows: &[Row], stage_seed: u64) -> Result<ClaimResult, StageError> {
    let relevant: Vec<&Row> = rows
        .iter()
        .filter(|r| r.axis_value(&claim.axis).is_some() && !claim.excludes(r))
        .collect();
    if relevant.is_empty() {
        return Err(StageError::invalid(format!(
            "finding `{}`: no gathered instance has a binding `{}`",
            claim.claim, claim.axis
        )));
    }
    let mut groups: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in relevant {
        groups.entry(r.group(&claim.axis)).or_default().push(r);
    }
    let mut results = Vec::new();
    let mut verdicts = Vec::new();
    let mut summaries = Vec::new();
    for (group, members) in &groups {
        match claim.test {
            Test::Contrast => {
                let refs = match &claim.reference_stage {
                    Some(stage) => reference_rows(claim, stage, members, rows)?,
                    None => Vec::new(),
                };
                for (json, verdict, summary) in
                    contrasts(claim, group, members, &refs, stage_seed)?
                {
                    results.push(json);
                    verdicts.push(verdict);
                    summaries.push(summary);
                }
            }
            Test::Trend => {
                let (json, verdict, summary) = trend(claim, group, members, stage_seed)?;
                results.push(json);
                verdicts.push(verdict);
                summaries.push(summary);
            }
        }
    }
    Ok(ClaimResult {
        claim: claim.clone(),
        verdict: combine(&verdicts),
        results,
        summary: summaries.join("; "),
    })
}

fn label(group: &str) -> String {
    format!("[{group}] ")
}

/// The instances of `stage` a group (`members`, which share every binding but the axis
/// and the seeds) is compared against: those whose every binding but the seeds the group
/// has too, with the same value.
fn reference_rows<'a>(
    claim: &Claim,
    stage: &str,
    members: &[&Row],
    rows: &'a [Row],
) -> Result<Vec<&'a Row>, StageError> {
    let first = members[0];
    let same = |label: &str, value: &Value| {
        first
            .bindings
            .iter()
            .any(|(l, v)| (l == label || is_axis_label(l, label)) && v == value)
    };
    let of_stage: Vec<&Row> = rows.iter().filter(|r| r.stage == stage).collect();
    if of_stage.is_empty() {
        return Err(StageError::invalid(format!(
            "finding `{}`: `reference_stage = \"{stage}\"` is not among the gathered stages",
            claim.claim
        )));
    }
    Ok(of_stage
        .into_iter()
        .filter(|r| r.bindings.iter().all(|(l, v)| same(l, v)))
        .collect())
}

fn contrasts(
    claim: &Claim,
    group: &str,
    members: &[&Row],
    stage_refs: &[&Row],
    stage_seed: u64,
) -> Result<Vec<(Json, Verdict, String)>, StageError> {
    let reference = claim.reference_name();
    let value_of = |r: &Row| r.axis_value(&claim.axis).map(|v| v.to_string());
    let refs: Vec<&Row> = if claim.reference_stage.is_some() {
        stage_refs.to_vec()
    } else {
        members
            .iter()
            .copied()
            .filter(|r| value_of(r).as_deref() == Some(reference))
            .collect()
    };
    if refs.is_empty() && claim.reference_stage.is_some() {
        return Err(StageError::invalid(format!(
            "finding `{}`: no instance of `{reference}` matches the bindings of `{group}`",
            claim.claim
        )));
    }
    if refs.is_empty() {
        return Err(StageError::invalid(format!(
            "finding `{}`: no instance of `{group}` has `{} = {reference}`",
            claim.claim, claim.axis
        )));
    }
    let mut conditions: Vec<String> = members
        .iter()
        .filter_map(|r| value_of(r))
        .filter(|v| claim.reference_stage.is_some() || v != reference)
        .collect();
    conditions.sort();
    conditions.dedup();
    let mut out = Vec::new();
    for condition in conditions {
        let conds: Vec<&Row> = members
            .iter()
            .copied()
            .filter(|r| value_of(r).as_deref() == Some(condition.as_str()))
            .collect();
        // Pairs on seed (an instance without a seed axis pairs with the one likewise).
        let mut pairs: Vec<(&Row, &Row)> = Vec::new();
        for c in &conds {
            if let Some(r) = refs.iter().find(|r| r.seed == c.seed) {
                pairs.push((c, r));
            }
        }
        let what = format!("{}/{group}/{condition}", claim.claim);
        let draw = draw_seed(stage_seed, &what);
        let per_example = claim.metric == per_example::METRIC
            && pairs
                .iter()
                .all(|(c, r)| c.per_example.is_some() && r.per_example.is_some());
        let (estimate, low, high, method, examples) = if per_example && !pairs.is_empty() {
            let (cm, rm) = aligned(&pairs);
            let c = flow_stats::paired_contrast(&cm, &rm, LEVEL, RESAMPLES, draw)
                .map_err(|e| StageError::invalid(format!("finding `{}`: {e}", claim.claim)))?;
            (c.estimate, Some(c.ci_low), Some(c.ci_high), c.method.as_str(), c.examples)
        } else {
            let diffs: Vec<f64> = pairs
                .iter()
                .filter_map(|(c, r)| Some(c.metric(&claim.metric)? - r.metric(&claim.metric)?))
                .collect();
            if diffs.is_empty() {
                return Err(StageError::invalid(format!(
                    "finding `{}`: no paired instances report the metric `{}`",
                    claim.claim, claim.metric
                )));
            }
            match flow_stats::t_interval(&diffs, LEVEL) {
                Ok(s) => (s.mean, Some(s.ci_low), Some(s.ci_high), "student_t", 0),
                // One seed and no per-example results: an estimate without an interval.
                Err(_) => (diffs[0], None, None, "single", 0),
            }
        };
        let verdict = match (low, high) {
            (Some(l), Some(h)) => Verdict::of_interval(l, h, claim.direction),
            _ => Verdict::Inconclusive,
        };
        let json = json!({
            "group": group,
            "condition": condition,
            "reference": reference,
            "estimate": estimate,
            "ci_low": low,
            "ci_high": high,
            "level": LEVEL,
            "seeds": pairs.len(),
            "examples": examples,
            "method": method,
            "verdict": verdict.as_str(),
        });
        let interval = match (low, high) {
            (Some(l), Some(h)) => format!(" [{l:+.4}, {h:+.4}]"),
            _ => " (no interval)".to_string(),
        };
        let summary = format!(
            "{}{condition} - {reference}: {estimate:+.4}{interval}",
            label(group)
        );
        out.push((json, verdict, summary));
    }
    Ok(out)
}

/// The per-example terms of each pair (`per_example::mean_terms`: their plain mean is the
/// token-weighted `test_loss`, so the contrast is the `test_loss` difference), on the test
/// examples every pair scored (by id, in the first reference's order), as (condition,
/// reference) matrices [seed][example].
fn aligned(pairs: &[(&Row, &Row)]) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let by_id = |rows: &[ExampleLoss]| -> BTreeMap<String, f64> {
        let terms = per_example::mean_terms(rows);
        rows.iter()
            .zip(terms)
            .filter(|(e, t)| e.tokens > 0 && t.is_finite())
            .map(|(e, t)| (e.id.clone(), t))
            .collect()
    };
    let maps: Vec<(BTreeMap<String, f64>, BTreeMap<String, f64>)> = pairs
        .iter()
        .map(|(c, r)| {
            (
                by_id(c.per_example.as_deref().unwrap_or_default()),
                by_id(r.per_example.as_deref().unwrap_or_default()),
            )
        })
        .collect();
    let first = pairs[0].1.per_example.as_deref().unwrap_or_default();
    let ids: Vec<&str> = first
        .iter()
        .map(|e| e.id.as_str())
        .filter(|id| {
            maps.iter()
                .all(|(c, r)| c.contains_key(*id) && r.contains_key(*id))
        })
        .collect();
    let pick = |m: &BTreeMap<String, f64>| ids.iter().map(|id| m[*id]).collect::<Vec<f64>>();
    (
        maps.iter().map(|(c, _)| pick(c)).collect(),
        maps.iter().map(|(_, r)| pick(r)).collect(),
    )
}

fn trend(
    claim: &Claim,
    group: &str,
    members: &[&Row],
    stage_seed: u64,
) -> Result<(Json, Verdict, String), StageError> {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for r in members {
        let Some(value) = r.axis_value(&claim.axis) else {
            continue;
        };
        let position = if claim.order.is_empty() {
            value.as_f64().ok_or_else(|| {
                StageError::invalid(format!(
                    "finding `{}`: axis `{}` has the non-numeric value `{value}`; give its \
                     values in `order`",
                    claim.claim, claim.axis
                ))
            })?
        } else {
            let text = value.to_string();
            match claim.order.iter().position(|o| *o == text) {
                Some(i) => i as f64,
                None => continue, // not on the ordered axis (e.g. the real-data reference)
            }
        };
        if let Some(m) = r.metric(&claim.metric) {
            x.push(position);
            y.push(m);
        }
    }
    let t = flow_stats::trend(
        &x,
        &y,
        PERMUTATIONS,
        draw_seed(stage_seed, &format!("{}/{group}", claim.claim)),
    )
    .map_err(|e| StageError::invalid(format!("finding `{}`: {e}", claim.claim)))?;
    let verdict = Verdict::of_trend(&t, claim.direction);
    let p = match claim.direction {
        Direction::Increase => t.p_increasing,
        Direction::Decrease => t.p_decreasing,
    };
    let json = json!({
        "group": group,
        "rho": t.rho,
        "p_increasing": t.p_increasing,
        "p_decreasing": t.p_decreasing,
        "n": t.n,
        "permutations": t.permutations,
        "method": t.method,
        "verdict": verdict.as_str(),
    });
    let summary = format!("{}rho {:+.3}, p = {p:.4} (n = {})", label(group), t.rho, t.n);
    Ok((json, verdict, summary))
}

fn markdown(results: &[ClaimResult]) -> String {
    let mut out = String::from(
        "| finding | test | estimate (95% CI) or rho (one-sided p) | verdict |\n|---|---|---|---|\n",
    );
    for r in results {
        let test = match r.claim.test {
            Test::Contrast => match &r.claim.reference_stage {
                Some(stage) => format!("{} vs `{stage}`", r.claim.metric),
                None => format!(
                    "{} vs {} = {}",
                    r.claim.metric,
                    r.claim.axis,
                    r.claim.reference_name()
                ),
            },
            Test::Trend => format!("{} along {}", r.claim.metric, r.claim.axis),
        };
        let _ = writeln!(
            out,
            "| {} | {test} | {} | **{}** |",
            r.claim.claim.replace('|', "\\|"),
            r.summary.replace('|', "\\|"),
            r.verdict.as_str()
        );
    }
    let quotes: Vec<&ClaimResult> = results.iter().filter(|r| r.claim.quote.is_some()).collect();
    if !quotes.is_empty() {
        out.push_str("\nThe paper:\n\n");
        for r in quotes {
            let _ = writeln!(
                out,
                "- {}: \"{}\"",
                r.claim.claim,
                r.claim.quote.as_deref().unwrap_or_default()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ratio: f64, seed: i64, loss: f64, examples: Option<Vec<f64>>) -> Row {
        let mut metrics = serde_json::Map::new();
        metrics.insert("test_loss".into(), json!(loss));
        Row {
            stage: "eval".into(),
            bindings: vec![("ratio".into(), Value::Float(ratio))],
            seed: vec![("seed".into(), Value::Int(seed))],
            metrics,
            per_example: examples.map(|l| {
                l.iter()
                    .enumerate()
                    .map(|(i, x)| ExampleLoss {
                        id: format!("e{i}"),
                        loss: *x,
                        tokens: 10,
                    })
                    .collect()
            }),
        }
    }

    fn claim(test: Test, direction: Direction) -> Claim {
        Claim {
            claim: "loss rises with the generated share".into(),
            quote: None,
            test,
            metric: "test_loss".into(),
            axis: "ratio".into(),
            direction,
            reference: Some("0.0".into()),
            reference_stage: None,
            exclude: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Loss rising with the share, paired on examples: the contrast and the trend agree
    /// with "increase" and disagree with "decrease".
    #[test]
    fn a_clear_rise_agrees_and_its_opposite_disagrees() {
        let base: Vec<f64> = (0..30).map(|e| 3.0 + (e % 7) as f64 * 0.1).collect();
        let mut rows = Vec::new();
        for seed in [1, 2] {
            for (k, ratio) in [0.0, 0.5, 1.0].into_iter().enumerate() {
                let ex: Vec<f64> = base
                    .iter()
                    .enumerate()
                    .map(|(e, x)| x + 0.05 * k as f64 + ((e + seed as usize) % 3) as f64 * 0.001)
                    .collect();
                let mean = ex.iter().sum::<f64>() / ex.len() as f64;
                rows.push(row(ratio, seed, mean, Some(ex)));
            }
        }
        let up = evaluate(&claim(Test::Contrast, Direction::Increase), &rows, 7).unwrap();
        assert_eq!(up.verdict, Verdict::Agrees, "{}", up.summary);
        assert_eq!(up.results.len(), 2);
        assert_eq!(up.results[0]["method"], "paired_bootstrap");
        assert!((up.results[0]["estimate"].as_f64().unwrap() - 0.05).abs() < 1e-9);
        let down = evaluate(&claim(Test::Contrast, Direction::Decrease), &rows, 7).unwrap();
        assert_eq!(down.verdict, Verdict::Disagrees);
        let t = evaluate(&claim(Test::Trend, Direction::Increase), &rows, 7).unwrap();
        assert_eq!(t.verdict, Verdict::Agrees, "{}", t.summary);
    }

    /// One seed, no per-example results: an estimate, no interval, inconclusive.
    #[test]
    fn one_seed_without_examples_is_inconclusive() {
        let rows = vec![row(0.0, 1, 3.0, None), row(1.0, 1, 3.5, None)];
        let r = evaluate(&claim(Test::Contrast, Direction::Increase), &rows, 7).unwrap();
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert_eq!(r.results[0]["method"], "single");
        assert!(r.results[0]["ci_low"].is_null());
    }

    #[test]
    fn a_missing_reference_is_a_clear_error() {
        let rows = vec![row(0.5, 1, 3.0, None), row(1.0, 1, 3.5, None)];
        let err = evaluate(&claim(Test::Contrast, Direction::Increase), &rows, 7).unwrap_err();
        assert!(err.to_string().contains("has `ratio = 0.0`"), "{err}");
    }

    /// Every level against a separate stage (the model trained on real data), paired on
    /// seeds and examples; `exclude` drops a level.
    #[test]
    fn levels_against_a_reference_stage() {
        let base: Vec<f64> = (0..30).map(|e| 3.0 + (e % 5) as f64 * 0.1).collect();
        let shifted = |d: f64| base.iter().map(|x| x + d).collect::<Vec<f64>>();
        let mut rows = Vec::new();
        for seed in [1, 2] {
            let mut real = row(0.0, seed, 3.2, Some(shifted(0.0)));
            real.stage = "eval_real".into();
            real.bindings.clear();
            rows.push(real);
            for (m_r, d) in [(10, 0.2), (20, 0.3), (30, -0.4)] {
                let mut r = row(0.0, seed, 3.2 + d, Some(shifted(d)));
                r.bindings = vec![("m_r".into(), Value::Int(m_r))];
                rows.push(r);
            }
        }
        let mut c = claim(Test::Contrast, Direction::Increase);
        c.axis = "m_r".into();
        c.reference = None;
        c.reference_stage = Some("eval_real".into());
        let all = evaluate(&c, &rows, 7).unwrap();
        assert_eq!(all.results.len(), 3);
        assert_eq!(all.verdict, Verdict::Disagrees, "{}", all.summary);
        assert_eq!(all.results[0]["reference"], "eval_real");
        assert!((all.results[0]["estimate"].as_f64().unwrap() - 0.2).abs() < 1e-9);
        c.exclude = vec![("m_r".into(), "30".into())];
        let kept = evaluate(&c, &rows, 7).unwrap();
        assert_eq!(kept.results.len(), 2);
        assert_eq!(kept.verdict, Verdict::Agrees, "{}", kept.summary);
        c.reference_stage = Some("nowhere".into());
        let err = evaluate(&c, &rows, 7).unwrap_err();
        assert!(err.to_string().contains("not among the gathered stages"), "{err}");
    }

    #[test]
    fn a_contrast_names_one_reference() {
        let mut t = std::collections::BTreeMap::new();
        t.insert("claim".to_string(), Value::Str("c".into()));
        t.insert("axis".to_string(), Value::Str("ratio".into()));
        let mut params = Params::default();
        params.insert("findings", Value::List(vec![Value::Table(t.clone())]));
        let err = Settings::from_params(&params).err().unwrap();
        assert!(err.to_string().contains("one of `reference`"), "{err}");
        t.insert("reference".to_string(), Value::Str("0.0".into()));
        t.insert("exclude".to_string(), Value::List(vec![Value::Str("ratio".into())]));
        params.insert("findings", Value::List(vec![Value::Table(t)]));
        let err = Settings::from_params(&params).err().unwrap();
        assert!(err.to_string().contains("`axis=value`"), "{err}");
    }

    #[test]
    fn combining_results() {
        use Verdict::*;
        assert_eq!(combine(&[Agrees, Agrees]), Agrees);
        assert_eq!(combine(&[Agrees, Inconclusive]), Inconclusive);
        assert_eq!(combine(&[Agrees, Disagrees]), Disagrees);
        assert_eq!(combine(&[]), Inconclusive);
    }
}

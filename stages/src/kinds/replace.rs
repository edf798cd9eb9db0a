//! `replace`: the paraphrasing-based diversity levels (Eq. 2-3, EXPERIMENTS.md).
//!
//! Per context with K generated pairs and m_r = m_p * r: the r anchors are
//! the r lowest `anchor_rank`s among the originals that have m_p paraphrases;
//! the anchors' originals and (m_r - r) further originals (the first of one
//! seeded ranking of the rest) are dropped; the anchors' m_p paraphrases
//! (each keeping the anchor's answer) take their place. Result per context:
//! (K - m_r) untouched originals + m_r paraphrases = K pairs. No LLM calls.
//!
//! Levels share items: every level is cut from the same K generated pairs
//! per context, the anchors are the lowest ranks (so a level's anchors
//! include those of every level with a smaller m_r) and the dropped
//! originals a prefix of one ranking. Gen-D6 (m_r = 0) holds every original
//! and Gen-D5 all but 5 of its pairs. These are common random numbers: the
//! levels differ only in what m_r changes, which sharpens the comparison,
//! but they are not independent samples. `independent_levels = true` draws
//! the anchors and the dropped originals with the level as salt; the
//! originals kept are still the one set of K pairs (levels with new pairs
//! need one generation per level). With `levels` (every m_r of the fan-out,
//! Gen-D order) each level reports `shared_with_previous`: the share of its
//! pairs that the level before it holds.

use std::collections::{BTreeMap, HashSet};

use flow_engine::{
    Context, Outcome, ParamProblem, ParamSpec, ParamType, Params, Stage, StageError, Value,
};

use crate::contracts::dataset::{self, Example, Task};
use crate::toolkit::params::{count, flag};
use crate::toolkit::seeds::item_hash;

pub struct Replace;

/// The parameters of a `replace` stage, read once.
struct Settings {
    m_r: usize,
    m_p: usize,
    /// K: pairs per context.
    k: usize,
    /// Salt the per-level draws with m_r.
    independent: bool,
    /// Every m_r of the fan-out, in Gen-D order.
    levels: Vec<usize>,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        let levels = match p.get("levels").and_then(Value::as_list) {
            None => Vec::new(),
            Some(items) => items
                .iter()
                .map(|v| {
                    v.as_i64()
                        .and_then(|x| usize::try_from(x).ok())
                        .ok_or_else(|| {
                            StageError::invalid(format!("`levels`: {v:?} is not a count"))
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Settings {
            m_r: count(p, "m_r")?,
            m_p: count(p, "m_p")?,
            k: count(p, "k")?,
            independent: flag(p, "independent_levels")?,
            levels,
        })
    }

    /// The level before this one in `levels`, if any.
    fn previous_level(&self) -> Option<usize> {
        let at = self.levels.iter().position(|&m| m == self.m_r)?;
        at.checked_sub(1).map(|i| self.levels[i])
    }
}

/// One context: `originals` (its first K generated pairs), `paras` (all
/// paraphrases of the context). Returns the K pairs of the level, or None
/// when the context has too few anchors with m_p paraphrases. With
/// `independent`, the anchors are drawn by a hash salted with m_r instead of
/// their `anchor_rank`, and so are the dropped originals.
pub fn replace_context(
    seed: u64,
    originals: &[Example],
    paras: &[Example],
    m_r: usize,
    m_p: usize,
    independent: bool,
) -> Option<Vec<Example>> {
    let r = m_r / m_p;
    let mut by_anchor: BTreeMap<&str, Vec<&Example>> = BTreeMap::new();
    for p in paras {
        if let Some(of) = p.extra.get("paraphrase_of").and_then(|v| v.as_str()) {
            by_anchor.entry(of).or_default().push(p);
        }
    }
    let rank = |e: &Example| -> u64 {
        by_anchor
            .get(e.id.as_str())
            .and_then(|ps| ps[0].extra.get("anchor_rank"))
            .and_then(|v| v.as_u64())
            .unwrap_or(u64::MAX)
    };
    let mut candidates: Vec<&Example> = originals
        .iter()
        .filter(|e| {
            by_anchor
                .get(e.id.as_str())
                .is_some_and(|ps| ps.len() >= m_p)
        })
        .collect();
    let (anchor_purpose, drop_purpose) = if independent {
        (
            format!("replace/anchor@m_r={m_r}"),
            format!("replace/drop@m_r={m_r}"),
        )
    } else {
        (String::new(), "replace/drop".to_string())
    };
    if independent {
        candidates.sort_by_key(|e| item_hash(seed, &anchor_purpose, &e.id));
    } else {
        candidates.sort_by_key(|e| rank(e));
    }
    if candidates.len() < r {
        return None;
    }
    let anchors: Vec<&Example> = candidates[..r].to_vec();
    let anchor_ids: HashSet<&str> = anchors.iter().map(|e| e.id.as_str()).collect();
    let mut rest: Vec<&Example> = originals
        .iter()
        .filter(|e| !anchor_ids.contains(e.id.as_str()))
        .collect();
    rest.sort_by_key(|e| item_hash(seed, &drop_purpose, &e.id));
    let drop: HashSet<&str> = rest.iter().take(m_r - r).map(|e| e.id.as_str()).collect();
    let mut out: Vec<Example> = originals
        .iter()
        .filter(|e| !anchor_ids.contains(e.id.as_str()) && !drop.contains(e.id.as_str()))
        .cloned()
        .collect();
    for a in anchors {
        let mut ps = by_anchor[a.id.as_str()].clone();
        ps.sort_by(|x, y| x.id.cmp(&y.id));
        out.extend(ps.into_iter().take(m_p).cloned());
    }
    Some(out)
}

impl Stage for Replace {
    fn kind(&self) -> &'static str {
        "replace"
    }
    fn version(&self) -> u32 {
        // Outputs unchanged for the same params; `levels` and
        // `independent_levels` only add.
        1
    }
    fn about(&self) -> &'static str {
        "Paraphrase-replacement diversity level (Eq. 2-3): r = m_r / m_p anchors' m_p \
         paraphrases replace m_r originals per context, K pairs kept"
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::input("data", "stage with the generated QA pairs (K per context)")
                .required(),
            ParamSpec::input("paraphrases", "a `paraphrase` stage over the same data").required(),
            ParamSpec::int("m_r", "pairs replaced per context (a multiple of m_p)")
                .required()
                .min(0.0),
            ParamSpec::int("m_p", "paraphrases per anchor")
                .min(1.0)
                .default(5),
            ParamSpec::int("k", "K: pairs per context")
                .min(1.0)
                .default(30),
            ParamSpec::bool(
                "independent_levels",
                "draw the anchors and dropped originals with m_r as salt (default: shared \
                 draws, common random numbers; the K originals are shared either way)",
            )
            .default(false),
            ParamSpec::list(
                "levels",
                ParamType::Int,
                "every m_r of the fan-out in Gen-D order: each level then reports \
                 `shared_with_previous`, the share of its pairs the level before it holds",
            ),
        ]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        let mut out = Vec::new();
        if let (Some(m_r), Some(m_p), Some(k)) =
            (params.int("m_r"), params.int("m_p"), params.int("k"))
        {
            if m_p > 0 && m_r % m_p != 0 {
                out.push(ParamProblem::new(
                    "m_r",
                    format!("must be a multiple of m_p = {m_p}"),
                ));
            }
            if m_r > k {
                out.push(ParamProblem::new("m_r", format!("must be at most k = {k}")));
            }
        }
        if let Some(items) = params.get("levels").and_then(Value::as_list) {
            let levels: Vec<i64> = items.iter().filter_map(Value::as_i64).collect();
            if (1..levels.len()).any(|i| levels[..i].contains(&levels[i])) {
                out.push(ParamProblem::new(
                    "levels",
                    "holds a value twice (each level once, in Gen-D order)",
                ));
            }
            if let Some(m_r) = params.int("m_r").filter(|m| !levels.contains(m)) {
                out.push(ParamProblem::new(
                    "levels",
                    format!(
                        "does not hold this instance's m_r = {m_r}: list every level of the \
                         fan-out"
                    ),
                ));
            }
        }
        out
    }
    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let settings = Settings::from_params(ctx.params)?;
        let previous = settings.previous_level();
        let Settings {
            m_r,
            m_p,
            k,
            independent,
            ..
        } = settings;
        if let Some(prev) = previous.filter(|&p| p > k || p % m_p != 0) {
            return Err(StageError::invalid(format!(
                "levels: the level before m_r = {m_r} is {prev}, not a multiple of m_p = {m_p} \
                 at most k = {k}"
            )));
        }
        let data = dataset::read_upstream(ctx.input("data")?)?;
        let paras = dataset::read_upstream(ctx.input("paraphrases")?)?;
        let mut groups: BTreeMap<String, (Vec<Example>, Vec<Example>)> = BTreeMap::new();
        for e in data.into_iter().filter(|e| e.task == Task::Qa) {
            let g = groups
                .entry(e.group.clone().unwrap_or_default())
                .or_default();
            if g.0.len() < k {
                g.0.push(e);
            }
        }
        for p in paras {
            if let Some(g) = groups.get_mut(&p.group.clone().unwrap_or_default()) {
                g.1.push(p);
            }
        }
        let mut out = Vec::new();
        let mut skipped = 0u64;
        let mut short = 0u64;
        // The previous level's pairs, by (context, id): a pair is shared when
        // that level holds it too (ids name one text in both).
        let mut before: HashSet<(String, String)> = HashSet::new();
        for (group, (originals, ps)) in &groups {
            if originals.len() < k {
                short += 1;
            }
            match replace_context(ctx.seed, originals, ps, m_r, m_p, independent) {
                Some(v) => out.extend(v),
                None => skipped += 1,
            }
            if let Some(prev) = previous {
                let held = replace_context(ctx.seed, originals, ps, prev, m_p, independent);
                before.extend(held.into_iter().flatten().map(|e| (group.clone(), e.id)));
            }
        }
        if out.is_empty() {
            return Err(StageError::invalid(format!(
                "no context has {} anchors with {m_p} paraphrases each (m_r = {m_r})",
                m_r / m_p
            )));
        }
        ctx.log(format!(
            "m_r = {m_r}: {} pairs from {} contexts ({skipped} skipped for too few paraphrased anchors, {short} with fewer than K = {k} pairs)",
            out.len(),
            groups.len() as u64 - skipped
        ));
        let mut outcome = dataset::output(ctx, &out)?
            .metric("n", out.len() as u64)
            .metric("contexts_skipped", skipped)
            .metric("contexts_short", short);
        if let Some(prev) = previous {
            let shared = out
                .iter()
                .filter(|e| before.contains(&(e.group.clone().unwrap_or_default(), e.id.clone())))
                .count();
            let share = shared as f64 / out.len() as f64;
            ctx.log(format!(
                "{:.1}% of these pairs are also in the level m_r = {prev}",
                100.0 * share
            ));
            outcome = outcome
                .metric("shared_with_previous", share)
                .metric("previous_m_r", prev as u64);
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::contracts::dataset::Origin;
    use crate::testutil::{data_upstream, inputs, params, run};

    fn qa(id: &str) -> Example {
        Example {
            id: id.into(),
            task: Task::Qa,
            group: Some("g".into()),
            context: None,
            input: format!("q {id}?"),
            target: format!("a {id}"),
            origin: Origin::Generated,
            alt_targets: vec![],
            extra: Default::default(),
        }
    }

    /// Paraphrases (two each) of the given anchors, ranked in that order.
    fn paraphrases(anchors: &[&str]) -> Vec<Example> {
        let mut paras = Vec::new();
        for (rank, a) in anchors.iter().enumerate() {
            for j in 0..2 {
                let mut p = qa(&format!("{a}-p{j}"));
                p.target = format!("a {a}");
                p.extra.insert("paraphrase_of".into(), (*a).into());
                p.extra.insert("anchor_rank".into(), (rank as u64).into());
                paras.push(p);
            }
        }
        paras
    }

    fn anchors_of(level: &[Example]) -> BTreeSet<String> {
        level
            .iter()
            .filter_map(|e| e.extra.get("paraphrase_of").and_then(|v| v.as_str()))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn levels_keep_k_pairs_and_replace_m_r() {
        let originals: Vec<Example> = (0..6).map(|i| qa(&format!("o{i}"))).collect();
        let paras = paraphrases(&["o3", "o1", "o5"]);
        for m_r in [0, 2, 4, 6] {
            let out = replace_context(1, &originals, &paras, m_r, 2, false).unwrap();
            assert_eq!(out.len(), 6, "m_r = {m_r}");
            let n_para = out
                .iter()
                .filter(|e| e.extra.contains_key("paraphrase_of"))
                .count();
            assert_eq!(n_para, m_r);
            // Anchors' originals are gone; paraphrases keep the anchor's answer.
            for e in out.iter().filter(|e| e.extra.contains_key("paraphrase_of")) {
                let of = e.extra["paraphrase_of"].as_str().unwrap();
                assert!(!out.iter().any(|o| o.id == of));
                assert_eq!(e.target, format!("a {of}"));
            }
        }
        // m_r = 6 with m_p = 2: anchors o3, o1, o5 (ranks 0..2).
        let out = replace_context(1, &originals, &paras, 6, 2, false).unwrap();
        assert!(out.iter().all(|e| e.extra.contains_key("paraphrase_of")));
        assert!(replace_context(1, &originals, &paras[..2], 4, 2, false).is_none());
    }

    #[test]
    fn independent_levels_draw_other_anchors_and_drops() {
        let originals: Vec<Example> = (0..12).map(|i| qa(&format!("o{i}"))).collect();
        let paras = paraphrases(&["o0", "o1", "o2", "o3", "o4", "o5"]);
        let (mut nested_anchor, mut free_anchor) = (BTreeSet::new(), BTreeSet::new());
        let mut not_nested = 0;
        for seed in 0..40 {
            let level = |m_r, independent| {
                replace_context(seed, &originals, &paras, m_r, 2, independent).unwrap()
            };
            // Shared draws: m_r = 2 anchors the rank-0 pair, and its anchors are
            // among those of m_r = 6, whatever the seed.
            nested_anchor.extend(anchors_of(&level(2, false)));
            assert!(anchors_of(&level(2, false)).is_subset(&anchors_of(&level(6, false))));
            // Independent draws: other anchors by level and by seed.
            free_anchor.extend(anchors_of(&level(2, true)));
            let (two, six) = (anchors_of(&level(2, true)), anchors_of(&level(6, true)));
            not_nested += usize::from(!two.is_subset(&six));
            assert_eq!(level(6, true).len(), 12);
        }
        assert_eq!(nested_anchor.into_iter().collect::<Vec<_>>(), ["o0"]);
        assert!(free_anchor.len() >= 4, "{free_anchor:?}");
        assert!(not_nested >= 10, "{not_nested} of 40");
    }

    #[test]
    fn shared_with_previous_counts_the_pairs_of_the_level_before() {
        let dir = tempfile::tempdir().unwrap();
        let originals: Vec<Example> = (0..12).map(|i| qa(&format!("o{i}"))).collect();
        let paras = paraphrases(&["o0", "o1", "o2", "o3", "o4", "o5"]);
        let ins = || {
            inputs(vec![
                ("data", data_upstream(dir.path(), "gen", &originals)),
                ("paraphrases", data_upstream(dir.path(), "para", &paras)),
            ])
        };
        let levels: Value = vec![12, 10, 8, 6, 4, 2, 0].into();
        let ran = |m_r: i64, independent: bool| {
            let p = params(
                &Replace,
                &[
                    ("data", "gen".into()),
                    ("paraphrases", "para".into()),
                    ("m_r", m_r.into()),
                    ("m_p", 2.into()),
                    ("k", 12.into()),
                    ("levels", levels.clone()),
                    ("independent_levels", independent.into()),
                ],
            );
            assert!(Replace.check(&p).is_empty());
            run(&Replace, &p, ins(), 5, None).unwrap()
        };
        // Gen-D6 (m_r = 0) keeps all 12 originals; Gen-D5 (m_r = 2) before it
        // holds 10 of them: 10 / 12 shared.
        let d6 = ran(0, false);
        assert_eq!(d6.num("shared_with_previous"), 10.0 / 12.0);
        assert_eq!(d6.metric("previous_m_r"), 2);
        // Gen-D0 has no level before it.
        assert!(!ran(12, false)
            .outcome
            .metrics
            .contains_key("shared_with_previous"));
        // Any level: the share of its pairs (by id) the level before holds.
        for (m_r, independent) in [(4, false), (4, true), (2, true)] {
            let this = ran(m_r, independent).data();
            let before: BTreeSet<String> = ran(m_r + 2, independent)
                .data()
                .into_iter()
                .map(|e| e.id)
                .collect();
            let want = this.iter().filter(|e| before.contains(&e.id)).count() as f64 / 12.0;
            assert_eq!(ran(m_r, independent).num("shared_with_previous"), want);
        }
        // A level missing from `levels` is a check error.
        let p = params(
            &Replace,
            &[
                ("data", "gen".into()),
                ("paraphrases", "para".into()),
                ("m_r", 3.into()),
                ("m_p", 1.into()),
                ("levels", levels),
            ],
        );
        let problems = Replace.check(&p);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("m_r = 3"));
    }
}

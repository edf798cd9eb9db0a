//! `replace`: the paraphrasing-based diversity levels (Eq. 2-3, EXPERIMENTS.md).
//!
//! Per context with K generated pairs and m_r = m_p * r: the r anchors are
//! the r lowest `anchor_rank`s among the originals that have m_p paraphrases;
//! the anchors' originals and (m_r - r) further originals (the first of one
//! seeded ranking of the rest) are dropped; the anchors' m_p paraphrases
//! (each keeping the anchor's answer) take their place. Result per context:
//! (K - m_r) untouched originals + m_r paraphrases = K pairs. No LLM calls.

use std::collections::{BTreeMap, HashSet};

use flow_engine::{Context, Outcome, ParamProblem, ParamSpec, Params, Stage, StageError};

use crate::contracts::dataset::{self, Example, Task};
use crate::toolkit::params::count;
use crate::toolkit::seeds::item_hash;

pub struct Replace;

/// The parameters of a `replace` stage, read once.
struct Settings {
    m_r: usize,
    m_p: usize,
    /// K: pairs per context.
    k: usize,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        Ok(Settings {
            m_r: count(p, "m_r")?,
            m_p: count(p, "m_p")?,
            k: count(p, "k")?,
        })
    }
}

/// One context: `originals` (its first K generated pairs), `paras` (all
/// paraphrases of the context). Returns the K pairs of the level, or None
/// when the context has too few anchors with m_p paraphrases.
pub fn replace_context(
    seed: u64,
    originals: &[Example],
    paras: &[Example],
    m_r: usize,
    m_p: usize,
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
    candidates.sort_by_key(|e| rank(e));
    if candidates.len() < r {
        return None;
    }
    let anchors: Vec<&Example> = candidates[..r].to_vec();
    let anchor_ids: HashSet<&str> = anchors.iter().map(|e| e.id.as_str()).collect();
    let mut rest: Vec<&Example> = originals
        .iter()
        .filter(|e| !anchor_ids.contains(e.id.as_str()))
        .collect();
    rest.sort_by_key(|e| item_hash(seed, "replace/drop", &e.id));
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
        out
    }
    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let Settings { m_r, m_p, k } = Settings::from_params(ctx.params)?;
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
        for (originals, ps) in groups.values() {
            if originals.len() < k {
                short += 1;
            }
            match replace_context(ctx.seed, originals, ps, m_r, m_p) {
                Some(v) => out.extend(v),
                None => skipped += 1,
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
        Ok(dataset::output(ctx, &out)?
            .metric("n", out.len() as u64)
            .metric("contexts_skipped", skipped)
            .metric("contexts_short", short))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::dataset::Origin;

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

    #[test]
    fn levels_keep_k_pairs_and_replace_m_r() {
        let originals: Vec<Example> = (0..6).map(|i| qa(&format!("o{i}"))).collect();
        let mut paras = Vec::new();
        for (rank, a) in ["o3", "o1", "o5"].iter().enumerate() {
            for j in 0..2 {
                let mut p = qa(&format!("{a}-p{j}"));
                p.target = format!("a {a}");
                p.extra.insert("paraphrase_of".into(), (*a).into());
                p.extra.insert("anchor_rank".into(), (rank as u64).into());
                paras.push(p);
            }
        }
        for m_r in [0, 2, 4, 6] {
            let out = replace_context(1, &originals, &paras, m_r, 2).unwrap();
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
        let out = replace_context(1, &originals, &paras, 6, 2).unwrap();
        assert!(out.iter().all(|e| e.extra.contains_key("paraphrase_of")));
        assert!(replace_context(1, &originals, &paras[..2], 4, 2).is_none());
    }
}

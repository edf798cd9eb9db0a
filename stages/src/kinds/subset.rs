//! `subset`: a seeded random subset of a dataset, `per_group` examples of
//! each group (QA: pairs per document, Fig. 8) and/or `limit` in all
//! (stories: 5k .. 25k, Fig. 9).
//!
//! The subset of a smaller size is a prefix of the larger one's choice, so
//! sizes compare like with like.
//!
//! `offset` skips the first `offset` examples of that order (of each group,
//! with `per_group`) before taking any: two subsets of one input with one
//! seed are disjoint when their ranges do not overlap, e.g. `limit = L` and
//! `limit = L, offset = L` (Table 2's real-vs-real null: two disjoint real
//! samples).

use std::collections::BTreeMap;

use flow_engine::{Context, Outcome, ParamProblem, ParamSpec, Params, Stage, StageError};
use rand::seq::SliceRandom;

use crate::contracts::dataset::{self, Example};
use crate::toolkit::params::opt_count;
use crate::toolkit::seeds::rng;

pub struct Subset;

/// The parameters of a `subset` stage, read once.
struct Settings {
    per_group: Option<usize>,
    limit: Option<usize>,
    offset: usize,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        Ok(Settings {
            per_group: opt_count(p, "per_group")?,
            limit: opt_count(p, "limit")?,
            offset: opt_count(p, "offset")?.unwrap_or(0),
        })
    }
}

impl Stage for Subset {
    fn kind(&self) -> &'static str {
        "subset"
    }

    fn version(&self) -> u32 {
        1
    }

    fn about(&self) -> &'static str {
        "A seeded random subset: `per_group` examples of each group (QA pairs per document) \
         and/or `limit` examples in all"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::input("data", "stage with the examples").required(),
            ParamSpec::int(
                "per_group",
                "examples kept per group (groups with fewer keep all)",
            )
            .min(1.0),
            ParamSpec::int("limit", "examples kept in all").min(1.0),
            ParamSpec::int(
                "offset",
                "examples of the seeded order skipped first (of each group, with `per_group`): \
                 disjoint subsets of one input",
            )
            .min(0.0),
        ]
    }

    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        if ["per_group", "limit", "offset"]
            .iter()
            .all(|k| params.get(k).is_none())
        {
            return vec![ParamProblem::new(
                "limit",
                "set `limit`, `per_group`, `offset` or several (otherwise the subset is \
                 everything)",
            )];
        }
        Vec::new()
    }

    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let s = Settings::from_params(ctx.params)?;
        let input = ctx.input("data")?;
        let examples = dataset::read_upstream(input)?;
        let n_in = examples.len();
        let kept = choose(examples, s.per_group, s.limit, s.offset, ctx.seed);
        if kept.is_empty() {
            let past = if s.offset > 0 {
                format!(" past offset = {}", s.offset)
            } else {
                String::new()
            };
            return Err(StageError::invalid(format!(
                "`{}` has no examples to take a subset of{past} ({n_in} examples)",
                input.instance
            )));
        }
        ctx.log(format!("kept {} of {n_in} examples", kept.len()));
        Ok(dataset::output(ctx, &kept)?
            .metric("n", kept.len() as u64)
            .metric("n_in", n_in as u64)
            .metric("task", dataset::task_name(&kept)))
    }
}

/// One seeded order of all examples; past the first `offset` (of each group
/// with `per_group`, else in all), the first `per_group` of each group in
/// that order, then the first `limit` of those, back in input order.
fn choose(
    examples: Vec<Example>,
    per_group: Option<usize>,
    limit: Option<usize>,
    offset: usize,
    seed: u64,
) -> Vec<Example> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut rng(seed, "subset"));
    // Examples of each group met so far in the order (one count for all
    // without `per_group`): the first `offset` are skipped.
    let mut seen: BTreeMap<Option<&str>, usize> = BTreeMap::new();
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if limit.is_some_and(|l| keep.len() >= l) {
            break;
        }
        let group = per_group.and(examples[i].group.as_deref());
        let n = seen.entry(group).or_default();
        *n += 1;
        if *n > offset && per_group.is_none_or(|p| *n <= offset + p) {
            keep.push(i);
        }
    }
    keep.sort_unstable();
    let mut slots: Vec<Option<Example>> = examples.into_iter().map(Some).collect();
    keep.iter().filter_map(|&i| slots[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::contracts::dataset::Task;
    use crate::testutil::example;

    fn qa(groups: usize, per: usize) -> Vec<Example> {
        (0..groups * per)
            .map(|i| {
                let g = format!("d{}", i / per);
                example(&format!("e{i}"), Task::Qa, Some(&g), "q?", "a")
            })
            .collect()
    }

    #[test]
    fn per_group_keeps_that_many_of_each_group_and_smaller_is_a_prefix() {
        let five = choose(qa(4, 30), Some(5), None, 0, 7);
        let ten = choose(qa(4, 30), Some(10), None, 0, 7);
        assert_eq!(five.len(), 20);
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for e in &five {
            *per.entry(e.group.clone().unwrap()).or_default() += 1;
        }
        assert!(per.values().all(|&n| n == 5), "{per:?}");
        let ten_ids: Vec<&str> = ten.iter().map(|e| e.id.as_str()).collect();
        assert!(five.iter().all(|e| ten_ids.contains(&e.id.as_str())));
        assert_ne!(
            choose(qa(4, 30), Some(5), None, 0, 8)
                .iter()
                .map(|e| &e.id)
                .collect::<Vec<_>>(),
            five.iter().map(|e| &e.id).collect::<Vec<_>>(),
            "another seed, another subset"
        );
    }

    #[test]
    fn limit_caps_the_total_and_groups_with_fewer_keep_all() {
        let stories: Vec<Example> = (0..100)
            .map(|i| example(&format!("s{i}"), Task::Story, None, "a", "b"))
            .collect();
        assert_eq!(choose(stories.clone(), None, Some(25), 0, 1).len(), 25);
        assert_eq!(choose(stories, None, Some(500), 0, 1).len(), 100);
        assert_eq!(choose(qa(2, 3), Some(10), None, 0, 1).len(), 6);
    }

    fn ids(examples: &[Example]) -> BTreeSet<String> {
        examples.iter().map(|e| e.id.clone()).collect()
    }

    #[test]
    fn an_offset_takes_a_disjoint_sample() {
        let stories: Vec<Example> = (0..100)
            .map(|i| example(&format!("s{i}"), Task::Story, None, "a", "b"))
            .collect();
        let a = ids(&choose(stories.clone(), None, Some(40), 0, 3));
        let b = ids(&choose(stories.clone(), None, Some(40), 40, 3));
        assert_eq!((a.len(), b.len()), (40, 40));
        assert!(a.is_disjoint(&b));
        // Past the offset, what is left: 100 - 80 = 20 examples.
        let c = ids(&choose(stories.clone(), None, None, 80, 3));
        assert_eq!(c.len(), 20);
        assert!(c.is_disjoint(&a) && c.is_disjoint(&b));
        // The same seeded order: the 80 first are a and b.
        let ab = ids(&choose(stories.clone(), None, Some(80), 0, 3));
        assert_eq!(ab, a.union(&b).cloned().collect());
        assert!(choose(stories, None, None, 100, 3).is_empty());

        // Per group: each context split into two disjoint halves of 12.
        let a = choose(qa(3, 30), Some(12), None, 0, 3);
        let b = choose(qa(3, 30), Some(12), None, 12, 3);
        assert_eq!((a.len(), b.len()), (36, 36));
        assert!(ids(&a).is_disjoint(&ids(&b)));
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for e in &b {
            *per.entry(e.group.clone().unwrap()).or_default() += 1;
        }
        assert!(per.values().all(|&n| n == 12), "{per:?}");
        // A group with fewer than offset + per_group gives what is left.
        assert_eq!(choose(qa(2, 20), Some(12), None, 12, 3).len(), 16);
    }

    #[test]
    fn real_stories_split_into_disjoint_halves() {
        let Some(real) = crate::testutil::real_stories(600) else {
            return;
        };
        let a = ids(&choose(real.clone(), None, Some(300), 0, 7));
        let b = ids(&choose(real, None, Some(300), 300, 7));
        assert_eq!((a.len(), b.len()), (300, 300));
        assert!(a.is_disjoint(&b));
    }
}

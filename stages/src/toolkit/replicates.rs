//! Replicates and their uncertainty, as `table` and `plot` report them.
//!
//! Instances that differ only in their `seed` binding (`eval@ratio=0.5,seed=1`,
//! `eval@ratio=0.5,seed=2`, ...) are replicates of one condition, its group
//! (`eval@ratio=0.5`). A group's value of a metric is the mean over its
//! replicates, with a 95% interval ([`flow_stats::LEVEL`]):
//!
//! - `student_t`: two or more replicates, Student's t over them;
//! - `bootstrap`: one replicate whose per-example losses are upstream
//!   (`per_example.csv`), for `test_loss` (and `perplexity`, its
//!   exponential): a percentile bootstrap over the test examples
//!   ([`flow_stats::RESAMPLES`] resamples, seeded from the group's name, so
//!   a rerun draws the same);
//! - `single`: one replicate and nothing to resample: no interval.

use flow_engine::{Upstream, Value};
use flow_stats::{bootstrap_mean, t_interval, LEVEL, RESAMPLES};

use crate::contracts::per_example::{self, ExampleLoss};
use crate::toolkit::seeds::item_hash;

/// The binding that numbers replicates.
pub const SEED: &str = "seed";

/// Whether a binding label numbers replicates: `seed`, or `stage.seed` where the
/// engine qualifies it (two seed axes on one instance, e.g. generation and
/// training seeds). Every seed axis is a replicate axis.
pub fn is_seed_label(label: &str) -> bool {
    label == SEED || label.strip_suffix(SEED).is_some_and(|s| s.ends_with('.'))
}

/// How an [`Estimate`]'s interval was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    StudentT,
    Bootstrap,
    Single,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::StudentT => "student_t",
            Method::Bootstrap => "bootstrap",
            Method::Single => "single",
        }
    }

    /// How a figure's footer names it.
    pub fn describe(self) -> &'static str {
        match self {
            Method::StudentT => "Student t over seeds",
            Method::Bootstrap => "bootstrap over test examples",
            Method::Single => "none",
        }
    }
}

/// A metric of one group: mean over its replicates, the sd over them (two or
/// more), and the interval where there is one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Replicates with a value.
    pub n: usize,
    pub mean: f64,
    pub sd: Option<f64>,
    pub ci: Option<(f64, f64)>,
    pub method: Method,
}

/// Whether `up` has a `seed` binding.
pub fn has_seed(up: &Upstream) -> bool {
    up.bindings.iter().any(|(k, _)| is_seed_label(k))
}

/// The group of an instance: its stage and its bindings but `seed`, named as
/// the engine names instances (`eval@ratio=0.5`; `eval` with no other
/// binding).
pub fn group_name(up: &Upstream) -> String {
    let stage = up.instance.split('@').next().unwrap_or(&up.instance);
    let parts: Vec<String> = up
        .bindings
        .iter()
        .filter(|(k, _)| !is_seed_label(k))
        .map(|(k, v)| format!("{k}={}", v.name_part()))
        .collect();
    if parts.is_empty() {
        stage.to_string()
    } else {
        format!("{stage}@{}", parts.join(","))
    }
}

/// The bindings of an instance but `seed`.
pub fn group_bindings(up: &Upstream) -> impl Iterator<Item = &(String, Value)> {
    up.bindings.iter().filter(|(k, _)| !is_seed_label(k))
}

/// The bootstrap seed of a group: a hash of its name.
pub fn bootstrap_seed(group: &str) -> u64 {
    item_hash(0, "replicates/bootstrap", group)
}

/// The estimate of `metric` for a group whose replicates have `values`
/// (finite numbers; at least one). `examples`: the per-example losses of
/// the lone replicate, where there is one and they are upstream.
pub fn estimate(
    group: &str,
    metric: &str,
    values: &[f64],
    examples: Option<&[ExampleLoss]>,
) -> Estimate {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    if n >= 2 {
        if let Ok(s) = t_interval(values, LEVEL) {
            return Estimate {
                n,
                mean: s.mean,
                sd: Some(s.sd),
                ci: Some((s.ci_low, s.ci_high)),
                method: Method::StudentT,
            };
        }
    }
    let single = Estimate {
        n,
        mean,
        sd: None,
        ci: None,
        method: Method::Single,
    };
    let exp = match metric {
        m if m == per_example::METRIC => false,
        m if m == per_example::EXP_METRIC => true,
        _ => return single,
    };
    let Some(rows) = examples.filter(|_| n == 1) else {
        return single;
    };
    let terms = per_example::mean_terms(rows);
    // Seeded by the group's name: the loss and its perplexity draw the same.
    match bootstrap_mean(&terms, LEVEL, RESAMPLES, bootstrap_seed(group)) {
        Ok(b) => {
            let ci = if exp {
                (b.ci_low.exp(), b.ci_high.exp())
            } else {
                (b.ci_low, b.ci_high)
            };
            Estimate {
                ci: Some(ci),
                method: Method::Bootstrap,
                ..single
            }
        }
        Err(_) => single,
    }
}

/// What the intervals of several estimates are, for a footer: "95% CI
/// (Student t over seeds)", "95% CI (bootstrap over test examples, 4000
/// resamples)", or both named for a mix. `None` when there is no interval.
pub fn describe_methods(methods: impl IntoIterator<Item = Method>) -> Option<String> {
    let (mut t, mut b) = (false, false);
    for m in methods {
        t |= m == Method::StudentT;
        b |= m == Method::Bootstrap;
    }
    let level = (LEVEL * 100.0).round();
    let what = match (t, b) {
        (true, false) => Method::StudentT.describe().to_string(),
        (false, true) => format!("{}, {RESAMPLES} resamples", Method::Bootstrap.describe()),
        (true, true) => format!(
            "{}; {} where one seed",
            Method::StudentT.describe(),
            Method::Bootstrap.describe()
        ),
        (false, false) => return None,
    };
    Some(format!("{level}% CI ({what})"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn up(instance: &str, bindings: &[(&str, Value)]) -> Upstream {
        Upstream {
            instance: instance.into(),
            bindings: bindings
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            files: BTreeMap::new(),
            metrics: Default::default(),
        }
    }

    #[test]
    fn groups_drop_the_seed_binding_only() {
        let a = up(
            "eval@ratio=0.5,seed=2",
            &[("ratio", Value::Float(0.5)), ("seed", Value::Int(2))],
        );
        assert_eq!(group_name(&a), "eval@ratio=0.5");
        assert!(has_seed(&a));
        let b = up("eval@seed=1", &[("seed", Value::Int(1))]);
        assert_eq!(group_name(&b), "eval");
        let c = up("eval@level=a%2Cb", &[("level", Value::Str("a,b".into()))]);
        assert_eq!(group_name(&c), "eval@level=a%2Cb");
        assert!(!has_seed(&c));
        // A qualified seed axis (two on one instance) is a replicate axis too.
        let d = up(
            "eval@gen.seed=1,train.seed=2",
            &[("gen.seed", Value::Int(1)), ("train.seed", Value::Int(2))],
        );
        assert_eq!(group_name(&d), "eval");
        assert!(has_seed(&d));
        assert!(!is_seed_label("reseed") && !is_seed_label("seeds"));
    }

    #[test]
    fn one_replicate_bootstraps_its_examples_for_the_loss_only() {
        let rows: Vec<ExampleLoss> = (0..40)
            .map(|i| ExampleLoss {
                id: format!("e{i}"),
                loss: 2.0 + (i as f64 * 0.7).sin(),
                tokens: 5 + i % 7,
            })
            .collect();
        let mean = per_example::token_weighted_mean(&rows);
        let e = estimate("g", "test_loss", &[mean], Some(&rows));
        assert_eq!(e.method, Method::Bootstrap);
        let (lo, hi) = e.ci.unwrap();
        assert!(lo < mean && mean < hi, "{e:?}");
        assert_eq!(e.sd, None);
        // The same group draws the same; the perplexity's bounds are the
        // loss's exponentials.
        assert_eq!(estimate("g", "test_loss", &[mean], Some(&rows)), e);
        let p = estimate("g", "perplexity", &[mean.exp()], Some(&rows));
        assert_eq!(p.ci, Some((lo.exp(), hi.exp())));
        // Other metrics, or no examples: no interval.
        let s = estimate("g", "tokens", &[100.0], Some(&rows));
        assert_eq!((s.method, s.ci, s.mean), (Method::Single, None, 100.0));
        assert_eq!(
            estimate("g", "test_loss", &[mean], None).method,
            Method::Single
        );
    }

    #[test]
    fn footers_name_the_methods() {
        assert_eq!(
            describe_methods([Method::StudentT, Method::Single]).unwrap(),
            "95% CI (Student t over seeds)"
        );
        assert_eq!(
            describe_methods([Method::Bootstrap]).unwrap(),
            "95% CI (bootstrap over test examples, 4000 resamples)"
        );
        assert!(describe_methods([Method::Single]).is_none());
    }
}

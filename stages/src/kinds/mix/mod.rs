//! `mix`: real and generated examples at a generated share rho (Eq. 7).
//!
//! fixed:    n examples in all (default |real|, or the smaller side): round(rho * n)
//!           generated, the rest real (Fig. 5: the size stays that of the real subset).
//! variable: every real example, plus round(rho / (1 - rho) * |real|)
//!           generated, so that |gen| / (|real| + |gen|) = rho (Fig. 6, 7).
//!
//! Each side is a prefix of one seeded permutation of that side, which does
//! not depend on rho: instances at different ratios share as much data as
//! their sizes allow, so a comparison across ratios changes only the share.

use flow_engine::{Context, Outcome, ParamProblem, ParamSpec, Params, Stage, StageError};
use rand::seq::SliceRandom;

use crate::contracts::dataset::{self, Example};
use crate::toolkit::params::opt_count;
use crate::toolkit::seeds::rng;

pub struct Mix;

/// The parameters of a `mix` stage, read once.
struct Settings {
    ratio: f64,
    variable: bool,
    size: Option<usize>,
    /// Without `size`, fixed mode takes the smaller side, not |real|.
    smaller_default: bool,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        Ok(Settings {
            ratio: p.require_float("ratio")?,
            variable: p.require_str("mode")? == "variable",
            size: opt_count(p, "size")?,
            smaller_default: p.require_str("default_size")? == "smaller",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub real: usize,
    pub generated: usize,
}

/// How many examples of each side a mix takes.
pub fn counts(ratio: f64, variable: bool, size: Option<usize>, n_real: usize) -> Counts {
    if variable {
        let generated = (ratio / (1.0 - ratio) * n_real as f64).round() as usize;
        Counts {
            real: n_real,
            generated,
        }
    } else {
        let n = size.unwrap_or(n_real);
        let generated = (ratio * n as f64).round() as usize;
        Counts {
            real: n - generated,
            generated,
        }
    }
}

impl Stage for Mix {
    fn kind(&self) -> &'static str {
        "mix"
    }

    fn version(&self) -> u32 {
        1
    }

    fn about(&self) -> &'static str {
        "Mix real and generated examples at a generated share `ratio` (Eq. 7): fixed total size \
         or all real data plus generated data"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::input("real", "stage with the real examples").required(),
            ParamSpec::input("generated", "stage with the generated examples").required(),
            ParamSpec::float("ratio", "generated share rho of the mix")
                .required()
                .min(0.0)
                .max(1.0),
            ParamSpec::choice(
                "mode",
                &["fixed", "variable"],
                "fixed: total size stays `size`; variable: all real plus generated",
            )
            .default("fixed"),
            ParamSpec::int(
                "size",
                "fixed mode: total number of examples; default: see `default_size`",
            )
            .min(1.0),
            ParamSpec::choice(
                "default_size",
                &["real", "smaller"],
                "fixed mode without `size`: |real|, or the smaller side, so that every ratio \
                 from 0 to 1 fits (generation may yield fewer examples than asked)",
            )
            .default("real"),
        ]
    }

    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        let mut problems = Vec::new();
        if params.str("mode") == Some("variable") {
            if params.float("ratio") == Some(1.0) {
                problems.push(ParamProblem::new(
                    "ratio",
                    "must be below 1 in variable mode (all real data plus generated data never \
                     reaches a generated share of 1)",
                ));
            }
            if params.get("size").is_some() {
                problems.push(ParamProblem::new(
                    "size",
                    "applies to fixed mode only (variable mode keeps every real example)",
                ));
            }
        }
        problems
    }

    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let Settings {
            ratio,
            variable,
            size,
            smaller_default,
        } = Settings::from_params(ctx.params)?;
        let real_in = ctx.input("real")?;
        let gen_in = ctx.input("generated")?;
        let real = dataset::read_upstream(real_in)?;
        let generated = dataset::read_upstream(gen_in)?;
        let real_task = dataset::common_task(&real, &format!("input `{}`", real_in.instance))?;
        let gen_task = dataset::common_task(&generated, &format!("input `{}`", gen_in.instance))?;
        if let (Some(a), Some(b)) = (real_task, gen_task) {
            if a != b {
                return Err(StageError::invalid(format!(
                    "cannot mix {} examples (`{}`) with {} examples (`{}`)",
                    a.as_str(),
                    real_in.instance,
                    b.as_str(),
                    gen_in.instance
                )));
            }
        }

        let size = match size {
            None if smaller_default => Some(real.len().min(generated.len())),
            given => given,
        };
        let want = counts(ratio, variable, size, real.len());
        let mode = if variable { "variable" } else { "fixed" };
        for (side, need, have, instance) in [
            ("real", want.real, real.len(), &real_in.instance),
            (
                "generated",
                want.generated,
                generated.len(),
                &gen_in.instance,
            ),
        ] {
            if need > have {
                return Err(StageError::invalid(format!(
                    "mix needs {need} {side} examples ({mode} mode, ratio = {ratio}{}), but \
                     `{instance}` has only {have}",
                    size.map(|n| format!(", size = {n}")).unwrap_or_default()
                )));
            }
        }

        let mut mixed = pick(real, want.real, ctx.seed, "mix/real");
        mixed.extend(pick(generated, want.generated, ctx.seed, "mix/generated"));
        mixed.shuffle(&mut rng(ctx.seed, "mix/order"));

        let outcome = dataset::output(ctx, &mixed)?;
        let n = mixed.len();
        ctx.log(format!(
            "{mode} mix at ratio {ratio}: {} real + {} generated = {n}",
            want.real, want.generated
        ));
        let share = if n == 0 {
            0.0
        } else {
            want.generated as f64 / n as f64
        };
        Ok(outcome
            .metric("n_real", want.real as u64)
            .metric("n_generated", want.generated as u64)
            .metric("n", n as u64)
            .metric("generated_share", share))
    }
}

/// The first `k` examples of a seeded permutation, without replacement.
fn pick(examples: Vec<Example>, k: usize, seed: u64, purpose: &str) -> Vec<Example> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut rng(seed, purpose));
    let mut slots: Vec<Option<Example>> = examples.into_iter().map(Some).collect();
    order[..k].iter().filter_map(|&i| slots[i].take()).collect()
}

#[cfg(test)]
mod tests;

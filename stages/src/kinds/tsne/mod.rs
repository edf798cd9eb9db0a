//! `tsne`: t-SNE of the embeddings of one or more `embed` stages, jointly,
//! to 2-D (Fig. 4: real vs Gen-D0..D6 in one map).
//!
//! Every gathered instance is one series; all points are embedded together,
//! so distances between series mean something. The input affinities follow
//! van der Maaten (2014): Gaussian conditionals over each point's
//! `3 * perplexity` nearest neighbours (Euclidean), bandwidths by binary
//! search to the perplexity, symmetrised. The gradient is exact (all pairs,
//! O(n²) per iteration: about 0.1 s per iteration for 8,000 points on 2
//! cores), so no Barnes-Hut approximation. Optimisation as in the reference
//! implementation and scikit-learn: early exaggeration 12 for 250
//! iterations, momentum 0.5 then 0.8, per-coordinate gains, learning rate
//! `max(n / 12 / 4, 50)` unless given. The initial map is Gaussian with
//! standard deviation 1e-4 from the stage's seed; rows are computed in
//! parallel but summed in a fixed order, so a seed gives one result on any
//! number of cores.
//!
//! Outputs: `points.csv` (`series,instance,id,origin,x,y`; `series` is the
//! instance's fan-out bindings, e.g. `topic_count=20`, or its stage name when
//! it has none) and `series.csv` (per series: points, and the mean distance
//! of its points to their centroid, in the embedding space and on the map:
//! the "cluster size" the paper reads off Fig. 4).


use flow_engine::{Context, Outcome, ParamSpec, Params, Stage, StageError, Threads, Upstream};
use rayon::prelude::*;

use crate::contracts::embeddings::{self, Embeddings};
use crate::contracts::points::{self, POINTS_FILE};
use crate::toolkit::cores::thread_pool;
use crate::toolkit::params;
use crate::toolkit::seeds::{self, normal};
use crate::toolkit::text::CsvText;

/// Per series: points and spreads (not read by other stages).
pub const SERIES_FILE: &str = "series.csv";

pub struct Tsne;

impl Stage for Tsne {
    fn kind(&self) -> &'static str {
        "tsne"
    }

    fn version(&self) -> u32 {
        1
    }

    fn about(&self) -> &'static str {
        "Joint 2-D t-SNE of the embeddings of gathered `embed` instances, one series per \
         instance (points.csv, series.csv)"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::gather("from", "`embed` stage(s) whose instances become the series")
                .required(),
            ParamSpec::float("perplexity", "effective number of neighbours of each point")
                .greater_than(0.0)
                .default(30.0),
            ParamSpec::int("iterations", "gradient descent steps")
                .min(1.0)
                .default(1000),
            ParamSpec::float(
                "learning_rate",
                "step size (default: max(n / 12 / 4, 50), as scikit-learn's `auto`)",
            )
            .greater_than(0.0),
            ParamSpec::float("early_exaggeration", "P is multiplied by this at first")
                .min(1.0)
                .default(12.0),
            ParamSpec::int(
                "exaggeration_iterations",
                "steps with early exaggeration (and momentum 0.5)",
            )
            .min(0.0)
            .default(250),
        ]
    }

    fn check(&self, params: &Params) -> Vec<flow_engine::ParamProblem> {
        let mut problems = Vec::new();
        if let (Some(e), Some(n)) = (
            params.int("exaggeration_iterations"),
            params.int("iterations"),
        ) {
            if e > n {
                problems.push(flow_engine::ParamProblem::new(
                    "exaggeration_iterations",
                    format!("is more than `iterations` ({n})"),
                ));
            }
        }
        problems
    }

    fn threads(&self, _params: &Params, _: &flow_engine::Resources) -> Threads {
        Threads::All
    }

    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let ups = ctx.gathered("from");
        if ups.is_empty() {
            return Err(StageError::invalid("`from` gathered no stage instances"));
        }
        let sets: Vec<Embeddings> = ups.iter().map(embeddings::read).collect::<Result<_, _>>()?;
        let dim = sets[0].dim;
        if let Some(s) = sets.iter().find(|s| s.dim != dim) {
            return Err(StageError::invalid(format!(
                "`{}` has {}-d embeddings, `{}` {dim}-d: embed every series with one model",
                s.instance, s.dim, sets[0].instance
            )));
        }
        let labels = series_labels(ups);
        let mut data = Vec::new();
        for s in &sets {
            data.extend_from_slice(&s.data);
        }
        let n = data.len() / dim.max(1);
        let config = Config::from_params(ctx.params, ctx.seed)?;
        if n < 2 {
            return Err(StageError::invalid(format!(
                "t-SNE needs at least 2 points; the series have {n}"
            )));
        }
        ctx.progress.set_total(config.iterations as u64, "steps");
        let pool = thread_pool(ctx.threads)?;
        let started = std::time::Instant::now();
        let fit = pool.install(|| {
            tsne(&data, dim, &config, &mut |_| {
                ctx.progress.advance(1);
                ctx.cancel.check()
            })
        })?;
        let secs = started.elapsed().as_secs_f64();
        ctx.log(format!(
            "{n} points of {} series, {dim}-d -> 2-d in {secs:.1}s (KL {:.4})",
            sets.len(),
            fit.kl
        ));

        let mut points_csv = points::new();
        let mut series = CsvText::new([
            "series",
            "instance",
            "points",
            "spread_embedding",
            "spread_map",
        ]);
        let mut at = 0;
        for (s, label) in sets.iter().zip(&labels) {
            for (i, row) in s.rows.iter().enumerate() {
                let (x, y) = (fit.y[2 * (at + i)], fit.y[2 * (at + i) + 1]);
                points::push(&mut points_csv, label, &s.instance, &row.id, &row.origin, x, y);
            }
            let map: Vec<f32> = fit.y[2 * at..2 * (at + s.rows.len())]
                .iter()
                .map(|&v| v as f32)
                .collect();
            series.row([
                label.clone(),
                s.instance.clone(),
                s.rows.len().to_string(),
                format!("{:.6}", spread(&s.data, dim)),
                format!("{:.6}", spread(&map, 2) / fit.scale.max(1e-12)),
            ]);
            at += s.rows.len();
        }
        let points_path = ctx.out_path(POINTS_FILE);
        let series_path = ctx.out_path(SERIES_FILE);
        for (path, text) in [
            (&points_path, points_csv.finish()),
            (&series_path, series.finish()),
        ] {
            std::fs::write(path, text)
                .map_err(|e| StageError::io(format!("write {}", path.display()), e))?;
        }
        Ok(Outcome::default()
            .published(POINTS_FILE, points_path)
            .published(SERIES_FILE, series_path)
            .metric("n", n as u64)
            .metric("series", sets.len() as u64)
            .metric("kl_divergence", fit.kl)
            .metric("seconds", secs)
            .metric("task", common_task(&sets)))
    }
}

/// A series' name: its fan-out bindings (`k=v`, joined by `,`), else the
/// stage part of its instance name; the full instance name where two would
/// coincide.
fn series_labels(ups: &[Upstream]) -> Vec<String> {
    let short: Vec<String> = ups
        .iter()
        .map(|u| {
            if u.bindings.is_empty() {
                u.instance
                    .split('@')
                    .next()
                    .unwrap_or(&u.instance)
                    .to_string()
            } else {
                u.bindings
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.to_json()))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        })
        .collect();
    short
        .iter()
        .zip(ups)
        .map(|(s, u)| {
            if short.iter().filter(|t| *t == s).count() > 1 {
                u.instance.clone()
            } else {
                s.replace('"', "")
            }
        })
        .collect()
}

/// Mean Euclidean distance of rows to their centroid.
fn spread(data: &[f32], dim: usize) -> f64 {
    let n = data.len() / dim;
    if n == 0 {
        return 0.0;
    }
    let mut mean = vec![0f64; dim];
    for row in data.chunks(dim) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x as f64 / n as f64;
        }
    }
    data.chunks(dim)
        .map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&x, m)| (x as f64 - m).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / n as f64
}

/// The settings of one t-SNE run: the parameters of a `tsne` stage, read
/// once, and its seed.
#[derive(Clone, Debug)]
pub struct Config {
    pub perplexity: f64,
    pub iterations: usize,
    /// `None`: max(n / early_exaggeration / 4, 50).
    pub learning_rate: Option<f64>,
    pub early_exaggeration: f64,
    pub exaggeration_iterations: usize,
    pub seed: u64,
}

impl Config {
    pub fn from_params(p: &Params, seed: u64) -> Result<Config, StageError> {
        Ok(Config {
            perplexity: p.require_float("perplexity")?,
            iterations: params::count(p, "iterations")?,
            learning_rate: p.float("learning_rate"),
            early_exaggeration: p.require_float("early_exaggeration")?,
            exaggeration_iterations: params::count(p, "exaggeration_iterations")?,
            seed,
        })
    }
}

/// A 2-D map.
pub struct Fit {
    /// `[x0, y0, x1, y1, ...]`.
    pub y: Vec<f64>,
    /// KL(P || Q) of the final map.
    pub kl: f64,
    /// Mean distance of all points to their centroid, to compare spreads.
    pub scale: f64,
}

/// Sparse symmetric input affinities in CSR form.
struct Affinities {
    start: Vec<usize>,
    col: Vec<usize>,
    val: Vec<f64>,
}

/// t-SNE of `n = data.len() / dim` points to 2-D. `step` is called after
/// each iteration and stops the run with its error.
pub fn tsne(
    data: &[f32],
    dim: usize,
    config: &Config,
    step: &mut dyn FnMut(usize) -> Result<(), StageError>,
) -> Result<Fit, StageError> {
    let n = data.len() / dim.max(1);
    if n < 2 {
        return Err(StageError::invalid("t-SNE needs at least 2 points"));
    }
    if data.iter().any(|x| !x.is_finite()) {
        return Err(StageError::invalid("the embeddings hold a NaN or infinity"));
    }
    let p = affinities(data, dim, n, config.perplexity);
    let lr = config
        .learning_rate
        .unwrap_or((n as f64 / config.early_exaggeration / 4.0).max(50.0));

    let mut rng = seeds::rng(config.seed, "tsne/init");
    let mut y: Vec<f64> = (0..2 * n).map(|_| 1e-4 * normal(&mut rng)).collect();
    let mut update = vec![0f64; 2 * n];
    let mut gains = vec![1f64; 2 * n];
    for it in 0..config.iterations {
        let exaggerating = it < config.exaggeration_iterations;
        let exaggeration = if exaggerating {
            config.early_exaggeration
        } else {
            1.0
        };
        let momentum = if exaggerating { 0.5 } else { 0.8 };
        let (grad, _) = gradient(&p, &y, n, exaggeration);
        for k in 0..2 * n {
            // Delta-bar-delta gains (Jacobs 1988), as every t-SNE code does.
            gains[k] = if (grad[k] > 0.0) != (update[k] > 0.0) {
                gains[k] + 0.2
            } else {
                (gains[k] * 0.8).max(0.01)
            };
            update[k] = momentum * update[k] - lr * gains[k] * grad[k];
            y[k] += update[k];
        }
        center(&mut y, n);
        step(it)?;
    }
    let (_, kl) = gradient(&p, &y, n, 1.0);
    // The map is centred, so this is the mean distance to the centroid.
    let scale = (0..n)
        .map(|i| (y[2 * i].powi(2) + y[2 * i + 1].powi(2)).sqrt())
        .sum::<f64>()
        / n as f64;
    Ok(Fit { y, kl, scale })
}

fn center(y: &mut [f64], n: usize) {
    let (mut mx, mut my) = (0.0, 0.0);
    for i in 0..n {
        mx += y[2 * i];
        my += y[2 * i + 1];
    }
    mx /= n as f64;
    my /= n as f64;
    for i in 0..n {
        y[2 * i] -= mx;
        y[2 * i + 1] -= my;
    }
}

/// P: each point's Gaussian conditional over its k = min(n - 1, 3 *
/// perplexity) nearest neighbours, symmetrised and normalised to sum 1.
fn affinities(data: &[f32], dim: usize, n: usize, perplexity: f64) -> Affinities {
    let k = ((3.0 * perplexity).floor() as usize).clamp(1, n - 1);
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    // Per point: its k nearest neighbours and their conditional probabilities.
    let conditional: Vec<Vec<(usize, f64)>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let a = row(i);
            let mut d: Vec<(f64, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let s: f32 = a.iter().zip(row(j)).map(|(x, y)| (x - y) * (x - y)).sum();
                    (s as f64, j)
                })
                .collect();
            d.select_nth_unstable_by(k - 1, |x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            d.truncate(k);
            d.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            let probs = conditional_row(&d, perplexity.min(k as f64));
            d.iter().zip(probs).map(|(&(_, j), p)| (j, p)).collect()
        })
        .collect();
    // (P + Pᵀ) / 2n as a sorted sparse matrix.
    let mut rows: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n];
    for (i, list) in conditional.iter().enumerate() {
        for &(j, p) in list {
            rows[i].push((j, p));
            rows[j].push((i, p));
        }
    }
    let mut start = vec![0];
    let mut col = Vec::new();
    let mut val = Vec::new();
    for mut r in rows {
        r.sort_by_key(|&(j, _)| j);
        let mut last: Option<usize> = None;
        for (j, p) in r {
            if last == Some(j) {
                *val.last_mut().unwrap_or(&mut 0.0) += p / (2.0 * n as f64);
            } else {
                col.push(j);
                val.push(p / (2.0 * n as f64));
                last = Some(j);
            }
        }
        start.push(col.len());
    }
    Affinities { start, col, val }
}

/// The Gaussian conditional over sorted squared distances whose perplexity
/// (2^entropy) is `perplexity`: binary search on the precision beta.
fn conditional_row(d: &[(f64, usize)], perplexity: f64) -> Vec<f64> {
    let target = perplexity.ln();
    let (mut beta, mut lo, mut hi) = (1.0f64, 0.0f64, f64::INFINITY);
    let d0 = d.first().map_or(0.0, |x| x.0);
    let mut p = vec![0f64; d.len()];
    for _ in 0..200 {
        // Shift by the nearest distance so exp never underflows to all zeros.
        let mut sum = 0.0;
        let mut weighted = 0.0;
        for (pi, &(dist, _)) in p.iter_mut().zip(d) {
            *pi = (-(dist - d0) * beta).exp();
            sum += *pi;
            weighted += (dist - d0) * *pi;
        }
        let entropy = sum.ln() + beta * weighted / sum;
        let diff = entropy - target;
        if diff.abs() < 1e-5 {
            break;
        }
        if diff > 0.0 {
            lo = beta;
            beta = if hi.is_finite() {
                (beta + hi) / 2.0
            } else {
                beta * 2.0
            };
        } else {
            hi = beta;
            beta = (beta + lo) / 2.0;
        }
    }
    let sum: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= sum);
    p
}

/// The gradient of KL(P || Q) at `y` (P scaled by `exaggeration`), and KL
/// itself for the unscaled P. Exact: all pairs for the repulsion.
fn gradient(p: &Affinities, y: &[f64], n: usize, exaggeration: f64) -> (Vec<f64>, f64) {
    // Per row: attractive force, repulsive force (unnormalised) and its row
    // of Z = sum over pairs of 1 / (1 + d²).
    let rows: Vec<([f64; 2], [f64; 2], f64)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let (xi, yi) = (y[2 * i], y[2 * i + 1]);
            let mut rep = [0.0, 0.0];
            let mut z = 0.0;
            for j in 0..n {
                if j == i {
                    continue;
                }
                let (dx, dy) = (xi - y[2 * j], yi - y[2 * j + 1]);
                let w = 1.0 / (1.0 + dx * dx + dy * dy);
                z += w;
                rep[0] += w * w * dx;
                rep[1] += w * w * dy;
            }
            let mut att = [0.0, 0.0];
            for e in p.start[i]..p.start[i + 1] {
                let j = p.col[e];
                let (dx, dy) = (xi - y[2 * j], yi - y[2 * j + 1]);
                let w = 1.0 / (1.0 + dx * dx + dy * dy);
                att[0] += p.val[e] * w * dx;
                att[1] += p.val[e] * w * dy;
            }
            (att, rep, z)
        })
        .collect();
    let z: f64 = rows.iter().map(|r| r.2).sum::<f64>().max(f64::MIN_POSITIVE);
    let mut grad = vec![0f64; 2 * n];
    for (i, (att, rep, _)) in rows.iter().enumerate() {
        for c in 0..2 {
            grad[2 * i + c] = 4.0 * (exaggeration * att[c] - rep[c] / z);
        }
    }
    let mut kl = 0.0;
    for i in 0..n {
        for e in p.start[i]..p.start[i + 1] {
            let j = p.col[e];
            let (dx, dy) = (y[2 * i] - y[2 * j], y[2 * i + 1] - y[2 * j + 1]);
            let q = (1.0 / (1.0 + dx * dx + dy * dy) / z).max(1e-300);
            if p.val[e] > 0.0 {
                kl += p.val[e] * (p.val[e] / q).ln();
            }
        }
    }
    (grad, kl)
}

/// The task every point shares (figures put each task in its own panel).
fn common_task(sets: &[Embeddings]) -> Option<String> {
    let mut tasks = sets
        .iter()
        .flat_map(|s| s.rows.iter().map(|r| r.task.as_str()));
    let first = tasks.next()?;
    tasks.all(|t| t == first).then(|| first.to_string())
}

#[cfg(test)]
mod tests;

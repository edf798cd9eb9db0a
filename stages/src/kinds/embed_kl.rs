//! `embed_kl`: KL divergence between Gaussian fits of two embedding sets, a
//! distribution-shift variant for Table 2 ("KL(real, generated)").
//!
//! Each set (the output of an `embed` stage) is fitted with a Gaussian: its
//! mean and its sample covariance (n - 1), plus a ridge `λ I` so the
//! covariance is invertible when there are fewer points than dimensions
//! (all-MiniLM's 384), with `λ = ridge × (tr Σ_real + tr Σ_data) / 2d`: the
//! same ridge on both sides, relative to the embeddings' scale, so identical
//! sets give exactly 0. `covariance = "diagonal"` (the default) keeps only
//! the variances (a product of independent Gaussians per dimension).
//! Reported: `kl` = KL(N_real || N_data) (the paper's order) and
//! `kl_reverse`, in nats.
//!
//! Both estimates are biased upwards by sampling noise, the full one badly
//! unless n ≫ d: two disjoint sets of 100-200 real ROCStories (384-d) are
//! about 5-7 nats apart with diagonal fits but 50-8,000 with full ones
//! (ridge 1 to 0.01). Hence the diagonal default; compare values only at
//! equal sample sizes, next to a real-vs-real pair of that size (Table 2's
//! null rows: two disjoint real samples, cut by `subset` with `offset`).

use flow_engine::{Context, Outcome, ParamSpec, Params, Stage, StageError};
use rayon::prelude::*;

use crate::contracts::embeddings::{self, Embeddings};
use crate::toolkit::cores::thread_pool;

pub const KL_FILE: &str = "kl.json";

pub struct EmbedKl;

/// The parameters of an `embed_kl` stage, read once.
struct Settings {
    /// Full covariance, not only the variances.
    full: bool,
    ridge: f64,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        Ok(Settings {
            full: p.require_str("covariance")? == "full",
            ridge: p.require_float("ridge")?,
        })
    }
}

impl Stage for EmbedKl {
    fn kind(&self) -> &'static str {
        "embed_kl"
    }

    fn version(&self) -> u32 {
        1
    }

    fn about(&self) -> &'static str {
        "KL divergence between Gaussian fits (full or diagonal covariance, with a ridge) of \
         two `embed` outputs: KL(real || data) and the reverse (kl.json)"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::input("real", "`embed` stage of the reference (real) data").required(),
            ParamSpec::input("data", "`embed` stage of the data compared with it").required(),
            ParamSpec::choice(
                "covariance",
                &["full", "diagonal"],
                "Gaussian fit: variances only (robust for n < d) or full covariance",
            )
            .default("diagonal"),
            ParamSpec::float(
                "ridge",
                "added to the covariances' diagonal, relative to the mean variance",
            )
            .min(0.0)
            .default(0.01),
        ]
    }

    fn threads(&self, _params: &Params, _: &flow_engine::Resources) -> flow_engine::Threads {
        flow_engine::Threads::All
    }

    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let Settings { full, ridge } = Settings::from_params(ctx.params)?;
        let real = embeddings::read(ctx.input("real")?)?;
        let data = embeddings::read(ctx.input("data")?)?;
        let pool = thread_pool(ctx.threads)?;
        let (kl, kl_reverse) = pool.install(|| divergences(&real, &data, full, ridge))?;
        ctx.log(format!(
            "KL({} || {}) = {kl:.4}, reverse {kl_reverse:.4} ({} covariance, {} vs {} points, \
             {}-d)",
            real.instance,
            data.instance,
            if full { "full" } else { "diagonal" },
            real.rows.len(),
            data.rows.len(),
            real.dim
        ));
        let report = serde_json::json!({
            "real": real.instance, "data": data.instance,
            "kl": kl, "kl_reverse": kl_reverse,
            "covariance": if full { "full" } else { "diagonal" }, "ridge": ridge,
            "n_real": real.rows.len(), "n_data": data.rows.len(), "dim": real.dim,
        });
        let path = ctx.out_path(KL_FILE);
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        )
        .map_err(|e| StageError::io(format!("write {}", path.display()), e))?;
        Ok(Outcome::default()
            .output(KL_FILE, path)
            .metric("kl", kl)
            .metric("kl_reverse", kl_reverse)
            .metric("n_real", real.rows.len() as u64)
            .metric("n_data", data.rows.len() as u64)
            .metric("dim", real.dim as u64))
    }
}

/// KL(real || data) and KL(data || real) of the two sets' Gaussian fits.
pub fn divergences(
    real: &Embeddings,
    data: &Embeddings,
    full: bool,
    ridge: f64,
) -> Result<(f64, f64), StageError> {
    if real.dim != data.dim {
        return Err(StageError::invalid(format!(
            "`{}` has {}-d embeddings, `{}` {}-d: embed both with one model",
            real.instance, real.dim, data.instance, data.dim
        )));
    }
    for s in [real, data] {
        if s.rows.len() < 2 {
            return Err(StageError::invalid(format!(
                "`{}` has {} embeddings; a Gaussian fit needs at least 2",
                s.instance,
                s.rows.len()
            )));
        }
    }
    let a = Gaussian::fit(&real.data, real.dim, full);
    let b = Gaussian::fit(&data.data, data.dim, full);
    let d = real.dim as f64;
    if a.trace() + b.trace() <= 0.0 {
        return Err(StageError::invalid(format!(
            "every embedding of `{}` and `{}` is the same point: nothing to fit",
            real.instance, data.instance
        )));
    }
    let lambda = ridge * (a.trace() + b.trace()) / (2.0 * d);
    if lambda <= 0.0 && full && (real.rows.len() <= real.dim || data.rows.len() <= data.dim) {
        return Err(StageError::invalid(
            "with `ridge = 0` a Gaussian fit needs more points than dimensions; set a ridge",
        ));
    }
    let (a, b) = (a.with_ridge(lambda), b.with_ridge(lambda));
    let kl = gaussian_kl(&a, &b)?;
    let kl_reverse = gaussian_kl(&b, &a)?;
    Ok((kl, kl_reverse))
}

/// A Gaussian in `dim` dimensions: mean and covariance (row-major `dim x
/// dim`, or only its diagonal).
#[derive(Clone, Debug)]
pub struct Gaussian {
    pub mean: Vec<f64>,
    pub cov: Vec<f64>,
    pub diagonal: bool,
}

impl Gaussian {
    /// Mean and sample covariance (divided by n - 1) of the rows of `data`.
    pub fn fit(data: &[f32], dim: usize, full: bool) -> Gaussian {
        let n = data.len() / dim;
        let mut mean = vec![0f64; dim];
        for row in data.chunks(dim) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let centered: Vec<f64> = data
            .chunks(dim)
            .flat_map(|row| row.iter().zip(&mean).map(|(&x, m)| x as f64 - m))
            .collect();
        let denom = (n.max(2) - 1) as f64;
        let cov = if full {
            // Row i of the covariance per task; each sums in a fixed order.
            let rows: Vec<Vec<f64>> = (0..dim)
                .into_par_iter()
                .map(|i| {
                    let mut r = vec![0f64; dim];
                    for x in centered.chunks(dim) {
                        let xi = x[i];
                        for (rj, &xj) in r.iter_mut().zip(x) {
                            *rj += xi * xj;
                        }
                    }
                    r.iter_mut().for_each(|v| *v /= denom);
                    r
                })
                .collect();
            rows.concat()
        } else {
            (0..dim)
                .map(|i| centered.chunks(dim).map(|x| x[i] * x[i]).sum::<f64>() / denom)
                .collect()
        };
        Gaussian {
            mean,
            cov,
            diagonal: !full,
        }
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    fn var(&self, i: usize) -> f64 {
        if self.diagonal {
            self.cov[i]
        } else {
            self.cov[i * self.dim() + i]
        }
    }

    pub fn trace(&self) -> f64 {
        (0..self.dim()).map(|i| self.var(i)).sum()
    }

    pub fn with_ridge(mut self, lambda: f64) -> Gaussian {
        let d = self.dim();
        for i in 0..d {
            let k = if self.diagonal { i } else { i * d + i };
            self.cov[k] += lambda;
        }
        self
    }
}

/// KL(p || q) = ½ [tr(Σq⁻¹ Σp) + (μq − μp)ᵀ Σq⁻¹ (μq − μp) − d + ln det Σq − ln det Σp].
pub fn gaussian_kl(p: &Gaussian, q: &Gaussian) -> Result<f64, StageError> {
    let d = p.dim();
    let diff: Vec<f64> = q.mean.iter().zip(&p.mean).map(|(a, b)| a - b).collect();
    if p.diagonal && q.diagonal {
        let mut sum = 0.0;
        for ((&vp, &vq), &m) in p.cov.iter().zip(&q.cov).zip(&diff) {
            if vp <= 0.0 || vq <= 0.0 {
                return Err(singular());
            }
            sum += vp / vq + m * m / vq - 1.0 + (vq / vp).ln();
        }
        return Ok(0.5 * sum);
    }
    let dense = |g: &Gaussian| -> Vec<f64> {
        if g.diagonal {
            let mut m = vec![0.0; d * d];
            (0..d).for_each(|i| m[i * d + i] = g.cov[i]);
            m
        } else {
            g.cov.clone()
        }
    };
    let lp = cholesky(&dense(p), d).ok_or_else(singular)?;
    let lq = cholesky(&dense(q), d).ok_or_else(singular)?;
    // tr(Σq⁻¹ Σp) = ‖Lq⁻¹ Lp‖²_F, one triangular solve per column of Lp.
    let trace: f64 = (0..d)
        .into_par_iter()
        .map(|c| {
            let col: Vec<f64> = (0..d).map(|r| lp[r * d + c]).collect();
            forward_solve(&lq, d, &col)
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    let maha: f64 = forward_solve(&lq, d, &diff).iter().map(|x| x * x).sum();
    let logdet = |l: &[f64]| (0..d).map(|i| l[i * d + i].ln()).sum::<f64>() * 2.0;
    Ok(0.5 * (trace + maha - d as f64 + logdet(&lq) - logdet(&lp)))
}

fn singular() -> StageError {
    StageError::invalid(
        "a covariance is singular (identical points?); raise `ridge` above 0".to_string(),
    )
}

/// The lower Cholesky factor of a symmetric positive definite matrix, or
/// `None` when it is not positive definite.
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// Solves L x = b for lower-triangular L.
fn forward_solve(l: &[f64], d: usize, b: &[f64]) -> Vec<f64> {
    let mut x = vec![0f64; d];
    for i in 0..d {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * d + k] * x[k];
        }
        x[i] = s / l[i * d + i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::embeddings::Row;
    use crate::toolkit::seeds::{self, normal};

    fn set(name: &str, data: Vec<f32>, dim: usize) -> Embeddings {
        let n = data.len() / dim;
        Embeddings {
            instance: name.into(),
            rows: (0..n)
                .map(|i| Row {
                    id: i.to_string(),
                    task: "story".into(),
                    origin: "real".into(),
                })
                .collect(),
            dim,
            data,
        }
    }

    #[test]
    fn identical_sets_are_zero_apart() {
        let mut rng = seeds::rng(1, "test");
        let data: Vec<f32> = (0..50 * 16).map(|_| normal(&mut rng) as f32).collect();
        for full in [true, false] {
            let (kl, rev) = divergences(
                &set("a", data.clone(), 16),
                &set("b", data.clone(), 16),
                full,
                0.01,
            )
            .unwrap();
            assert!(kl.abs() < 1e-9 && rev.abs() < 1e-9, "{kl} {rev}");
        }
    }

    #[test]
    fn closed_form_for_known_gaussians() {
        let id = Gaussian {
            mean: vec![0.0, 0.0],
            cov: vec![1.0, 0.0, 0.0, 1.0],
            diagonal: false,
        };
        // Σq = [[2, 1], [1, 2]], μq − μp = (1, 1): tr = 4/3, maha = 2/3, det = 3.
        let q = Gaussian {
            mean: vec![1.0, 1.0],
            cov: vec![2.0, 1.0, 1.0, 2.0],
            diagonal: false,
        };
        let kl = gaussian_kl(&id, &q).unwrap();
        assert!((kl - 0.5 * 3f64.ln()).abs() < 1e-12, "{kl}");
        // Diagonal: Σq = diag(2, 0.5), μq = (1, 0): ½ (2.5 + 0.5 − 2 + 0) = 0.5.
        let p = Gaussian {
            mean: vec![0.0, 0.0],
            cov: vec![1.0, 1.0],
            diagonal: true,
        };
        let q = Gaussian {
            mean: vec![1.0, 0.0],
            cov: vec![2.0, 0.5],
            diagonal: true,
        };
        assert!((gaussian_kl(&p, &q).unwrap() - 0.5).abs() < 1e-12);
        let dense_q = Gaussian {
            mean: vec![1.0, 0.0],
            cov: vec![2.0, 0.0, 0.0, 0.5],
            diagonal: false,
        };
        assert!((gaussian_kl(&p, &dense_q).unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn samples_estimate_the_closed_form() {
        // N(0, I) vs N((1, 0, 0), diag(2, 0.5, 1)) in 3-d: KL = ½ (0.5 + 2 + 1 + 0.5 − 3 + ln 1) = 0.5.
        let mut rng = seeds::rng(2, "test");
        let n = 20_000;
        let a: Vec<f32> = (0..n * 3).map(|_| normal(&mut rng) as f32).collect();
        let scale = [2f64.sqrt(), 0.5f64.sqrt(), 1.0];
        let b: Vec<f32> = (0..n * 3)
            .map(|k| (normal(&mut rng) * scale[k % 3] + if k % 3 == 0 { 1.0 } else { 0.0 }) as f32)
            .collect();
        let (kl, _) = divergences(&set("a", a, 3), &set("b", b, 3), true, 0.0).unwrap();
        assert!((kl - 0.5).abs() < 0.03, "{kl}");
    }

    /// Table 2's null: two disjoint halves of one sample are closer than the
    /// sample and a shifted one. Diagonal fits with fewer points than
    /// dimensions (as Table 2's samples); full fits only with n >> d: at
    /// n < d their noise swamps the shift (40 points in 64-d put the null at
    /// about 1,250 nats and the shift at about 1,000).
    #[test]
    fn disjoint_halves_are_the_null_of_a_shift() {
        for (n, dim, full) in [(40, 64, false), (400, 16, true)] {
            let mut rng = seeds::rng(3, "test");
            let real: Vec<f32> = (0..2 * n * dim).map(|_| normal(&mut rng) as f32).collect();
            let (a, b) = real.split_at(n * dim);
            let shifted: Vec<f32> = (0..n * dim)
                .map(|k| (normal(&mut rng) * 1.5 + if k % 2 == 0 { 0.5 } else { 0.0 }) as f32)
                .collect();
            let a = set("a", a.to_vec(), dim);
            let (null, _) = divergences(&a, &set("b", b.to_vec(), dim), full, 0.01).unwrap();
            let (shift, _) = divergences(&a, &set("g", shifted, dim), full, 0.01).unwrap();
            assert!(null.is_finite() && null > 0.0, "{null}");
            assert!(null < shift, "full = {full}: null {null} vs shift {shift}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let one = set("one", vec![0.0; 4], 4);
        let two = set("two", vec![0.0; 8], 4);
        assert!(divergences(&one, &two, true, 0.01).is_err());
        let three = set("three", vec![0.0; 9], 3);
        let err = divergences(&two, &three, true, 0.01).unwrap_err();
        assert!(err.to_string().contains("one model"), "{err}");
        // Fewer points than dimensions and no ridge.
        let spread = set("spread", vec![0.0, 1.0, 0.0, 2.0, 1.0, 0.0, 3.0, 0.0], 4);
        let err = divergences(&spread, &spread, true, 0.0).unwrap_err();
        assert!(err.to_string().contains("ridge"), "{err}");
        // All points equal: zero covariance, zero ridge scale.
        let err = divergences(&two, &two, false, 0.01).unwrap_err();
        assert!(err.to_string().contains("same point"), "{err}");
    }
}

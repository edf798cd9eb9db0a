//! `per_example.csv`: the test loss of each example of an `eval_loss` stage,
//! one example a row, in the dataset's order: `id,loss,tokens`.
//!
//! - `id`: the example's `id` in the evaluated dataset (RFC 4180 quoting);
//! - `loss`: its mean cross-entropy per scored token (empty where it has no
//!   scored token);
//! - `tokens`: how many of its tokens were scored.
//!
//! The stage's `test_loss` metric is the token-weighted mean of these rows
//! (sum of `loss * tokens` over the sum of `tokens`), see
//! [`token_weighted_mean`]. Written by `eval_loss`, read by `table` and `plot`
//! (bootstrap intervals over the test examples where there is one seed).

use std::fmt::Write as _;
use std::path::Path;

use flow_engine::{StageError, Upstream};

use crate::toolkit::text::csv_field;

pub const PER_EXAMPLE_FILE: &str = "per_example.csv";

/// The header line.
pub const HEADER: &str = "id,loss,tokens";

/// The metric of an `eval_loss` stage these rows break down.
pub const METRIC: &str = "test_loss";

/// The metric that is the exponential of [`METRIC`] (its intervals are the
/// exponentials of [`METRIC`]'s).
pub const EXP_METRIC: &str = "perplexity";

/// One test example's loss.
#[derive(Clone, Debug, PartialEq)]
pub struct ExampleLoss {
    /// The example's id in the dataset.
    pub id: String,
    /// Mean cross-entropy per scored token; NaN where `tokens` is 0.
    pub loss: f64,
    /// Scored tokens.
    pub tokens: usize,
}

/// Writes `rows` as a `per_example.csv`.
pub fn write(path: &Path, rows: &[ExampleLoss]) -> Result<(), StageError> {
    let mut out = String::with_capacity(32 * rows.len() + 16);
    out.push_str(HEADER);
    out.push('\n');
    for r in rows {
        let loss = if r.tokens > 0 && r.loss.is_finite() {
            // Shortest text that reads back as the same f64.
            format!("{:?}", r.loss)
        } else {
            String::new()
        };
        let _ = writeln!(out, "{},{loss},{}", csv_field(&r.id), r.tokens);
    }
    std::fs::write(path, out).map_err(|e| StageError::io(format!("write {}", path.display()), e))
}

/// The rows of a `per_example.csv`, in file order.
pub fn read(path: &Path) -> Result<Vec<ExampleLoss>, StageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StageError::io(format!("read {}", path.display()), e))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim_end() == HEADER => {}
        _ => {
            return Err(StageError::invalid(format!(
                "{}: expected the header `{HEADER}`",
                path.display()
            )))
        }
    }
    let mut rows = Vec::new();
    for (n, line) in lines {
        let bad =
            || StageError::invalid(format!("{}:{}: expected `{HEADER}`", path.display(), n + 1));
        // The id may hold commas (quoted); loss and tokens do not.
        let cells: Vec<&str> = line.rsplitn(3, ',').collect();
        let [tokens, loss, id] = cells[..] else {
            return Err(bad());
        };
        let tokens: usize = tokens.trim().parse().map_err(|_| bad())?;
        let loss = match loss.trim() {
            "" => f64::NAN,
            l => l.parse().map_err(|_| bad())?,
        };
        rows.push(ExampleLoss {
            id: unquote(id).ok_or_else(bad)?,
            loss,
            tokens,
        });
    }
    Ok(rows)
}

/// The rows of an upstream instance's `per_example.csv`; `None` when it has
/// none (not an `eval_loss` stage, or one from before the file existed).
pub fn read_upstream(up: &Upstream) -> Result<Option<Vec<ExampleLoss>>, StageError> {
    match up.files.get(PER_EXAMPLE_FILE) {
        Some(path) => read(path).map(Some),
        None => Ok(None),
    }
}

/// One CSV field, unquoted (RFC 4180 quotes).
fn unquote(field: &str) -> Option<String> {
    let Some(inner) = field.strip_prefix('"') else {
        return Some(field.to_string());
    };
    let inner = inner.strip_suffix('"')?;
    Some(inner.replace("\"\"", "\""))
}

/// The token-weighted mean loss of `rows`: what the stage reports as
/// `test_loss`. NaN when no token was scored.
pub fn token_weighted_mean(rows: &[ExampleLoss]) -> f64 {
    let (sum, tokens) = sums(rows);
    sum / tokens as f64
}

fn sums(rows: &[ExampleLoss]) -> (f64, usize) {
    rows.iter()
        .filter(|r| r.tokens > 0)
        .fold((0.0, 0), |(s, t), r| {
            (s + r.loss * r.tokens as f64, t + r.tokens)
        })
}

/// One term per example whose plain mean is [`token_weighted_mean`], for
/// resampling examples (bootstraps, paired contrasts): the linearization of
/// the ratio `sum of losses / sum of tokens` at the full sample,
/// `R + tokens_i * (loss_i - R) / mean tokens`, where `R` is the weighted
/// mean. A bootstrap of these terms' mean is the delta-method bootstrap of
/// the weighted mean: examples with more tokens weigh more, as in the metric,
/// and the randomness of the token count is accounted for. An example
/// without scored tokens contributes `R`. Empty when no token was scored.
pub fn mean_terms(rows: &[ExampleLoss]) -> Vec<f64> {
    let (sum, tokens) = sums(rows);
    if tokens == 0 {
        return Vec::new();
    }
    let r = sum / tokens as f64;
    let mean_tokens = tokens as f64 / rows.len() as f64;
    rows.iter()
        .map(|e| {
            if e.tokens == 0 {
                r
            } else {
                r + e.tokens as f64 * (e.loss - r) / mean_tokens
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, loss: f64, tokens: usize) -> ExampleLoss {
        ExampleLoss {
            id: id.into(),
            loss,
            tokens,
        }
    }

    #[test]
    fn round_trip_with_quoted_ids_and_an_unscored_example() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PER_EXAMPLE_FILE);
        let rows = vec![
            row("s1", 2.5, 4),
            row("doc,7 \"q\"", 0.1 + 0.2, 10),
            row("empty", f64::NAN, 0),
        ];
        write(&path, &rows).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "id,loss,tokens\ns1,2.5,4\n\"doc,7 \"\"q\"\"\",0.30000000000000004,10\nempty,,0\n"
        );
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[..2], rows[..2]);
        assert!(back[2].loss.is_nan() && back[2].tokens == 0 && back[2].id == "empty");

        std::fs::write(&path, format!("{HEADER}\na,b\n")).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains(":2: expected"), "{err}");
        std::fs::write(&path, "step,loss\n").unwrap();
        assert!(read(&path).is_err());
    }

    /// By hand: losses 2 (1 token), 4 (3 tokens): weighted mean
    /// (2 + 12) / 4 = 3.5; mean tokens 2; terms 3.5 + 1 * (2 - 3.5) / 2 =
    /// 2.75 and 3.5 + 3 * (4 - 3.5) / 2 = 4.25, whose mean is 3.5.
    #[test]
    fn terms_average_to_the_token_weighted_mean() {
        let rows = [row("a", 2.0, 1), row("b", 4.0, 3), row("c", f64::NAN, 0)];
        assert_eq!(token_weighted_mean(&rows), 3.5);
        let terms = mean_terms(&rows[..2]);
        assert_eq!(terms, vec![2.75, 4.25]);
        // An unscored example adds R (and counts in the mean of tokens).
        let terms = mean_terms(&rows);
        let mean = terms.iter().sum::<f64>() / terms.len() as f64;
        assert!((mean - 3.5).abs() < 1e-12, "{terms:?}");
        assert_eq!(terms[2], 3.5);
        assert!(mean_terms(&[row("x", f64::NAN, 0)]).is_empty());
    }
}

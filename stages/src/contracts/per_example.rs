//! `per_example.csv`: the test loss of each example of an `eval_loss` stage,
//! one example a row, in the dataset's order:
//! `id,loss,tokens,loss_with_end,tokens_with_end`.
//!
//! - `id`: the example's `id` in the evaluated dataset (RFC 4180 quoting);
//! - `loss`: its mean cross-entropy per scored token (empty where it has no
//!   scored token), the end-of-text token excluded;
//! - `tokens`: how many of its tokens were scored, the end token excluded;
//! - `loss_with_end`, `tokens_with_end`: the same with the end token (where
//!   it is scored: a target cut to `max_seq_len` has none).
//!
//! `loss` and `tokens` always break down the stage's `test_loss` metric: the
//! token-weighted mean of the rows (sum of `loss * tokens` over the sum of
//! `tokens`, see [`token_weighted_mean`]); the `_with_end` columns break down
//! `test_loss_with_end`. Files of `eval_loss` before version 3 have only
//! `id,loss,tokens`, where both the loss and that stage's `test_loss`
//! included the end token; they still read (the columns still break down
//! their own stage's `test_loss`), without the `_with_end` columns. Written
//! by `eval_loss`, read by `table`, `plot` and `findings` (bootstrap
//! intervals over the test examples where there is one seed).

use std::path::Path;

use flow_engine::{StageError, Upstream};

use crate::toolkit::text::CsvText;

pub const PER_EXAMPLE_FILE: &str = "per_example.csv";

/// The header line.
pub const HEADER: &str = "id,loss,tokens,loss_with_end,tokens_with_end";

/// The header of files written before the `_with_end` columns (`eval_loss`
/// before version 3), and by [`write`].
pub const SHORT_HEADER: &str = "id,loss,tokens";

/// The metric of an `eval_loss` stage the `loss`, `tokens` columns break
/// down (the target without the end token).
pub const METRIC: &str = "test_loss";

/// The metric that is the exponential of [`METRIC`] (its intervals are the
/// exponentials of [`METRIC`]'s).
pub const EXP_METRIC: &str = "perplexity";

/// The metric the `loss_with_end`, `tokens_with_end` columns break down
/// (every scored token, the end-of-text token included).
pub const WITH_END_METRIC: &str = "test_loss_with_end";

/// The exponential of [`WITH_END_METRIC`].
pub const EXP_WITH_END_METRIC: &str = "perplexity_with_end";

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

/// One example's loss with the end token, beside its [`ExampleLoss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WithEnd {
    /// Mean cross-entropy per scored token, the end token included; NaN
    /// where `tokens` is 0.
    pub loss: f64,
    pub tokens: usize,
}

/// Writes `rows` as a `per_example.csv` of the [`SHORT_HEADER`] columns
/// (no `_with_end` columns; `eval_loss` writes them with [`write_with_end`]).
pub fn write(path: &Path, rows: &[ExampleLoss]) -> Result<(), StageError> {
    let mut out = CsvText::new(SHORT_HEADER.split(','));
    for r in rows {
        out.row([
            r.id.clone(),
            loss_cell(r.loss, r.tokens),
            r.tokens.to_string(),
        ]);
    }
    save(path, out.finish())
}

/// Writes `rows` and, for each, its loss with the end token (`with_end`, in
/// the same order) as a `per_example.csv` of the full [`HEADER`].
pub fn write_with_end(
    path: &Path,
    rows: &[ExampleLoss],
    with_end: &[WithEnd],
) -> Result<(), StageError> {
    if rows.len() != with_end.len() {
        return Err(StageError::Other(format!(
            "internal: {} examples but {} with-end losses for {}",
            rows.len(),
            with_end.len(),
            path.display()
        )));
    }
    let mut out = CsvText::new(HEADER.split(','));
    for (r, w) in rows.iter().zip(with_end) {
        out.row([
            r.id.clone(),
            loss_cell(r.loss, r.tokens),
            r.tokens.to_string(),
            loss_cell(w.loss, w.tokens),
            w.tokens.to_string(),
        ]);
    }
    save(path, out.finish())
}

/// A loss as its shortest text that reads back as the same f64; empty where
/// nothing was scored.
fn loss_cell(loss: f64, tokens: usize) -> String {
    if tokens > 0 && loss.is_finite() {
        format!("{loss:?}")
    } else {
        String::new()
    }
}

fn save(path: &Path, text: String) -> Result<(), StageError> {
    std::fs::write(path, text).map_err(|e| StageError::io(format!("write {}", path.display()), e))
}

/// The `loss`, `tokens` columns of a `per_example.csv` (either header), in
/// file order: the rows of the stage's [`METRIC`].
pub fn read(path: &Path) -> Result<Vec<ExampleLoss>, StageError> {
    Ok(read_both(path)?.0)
}

/// The `loss_with_end`, `tokens_with_end` columns as rows (with their ids):
/// the rows of [`WITH_END_METRIC`]; `None` for a file without them.
pub fn read_with_end(path: &Path) -> Result<Option<Vec<ExampleLoss>>, StageError> {
    let (rows, with_end) = read_both(path)?;
    Ok(with_end.map(|w| {
        rows.into_iter()
            .zip(w)
            .map(|(r, w)| ExampleLoss {
                id: r.id,
                loss: w.loss,
                tokens: w.tokens,
            })
            .collect()
    }))
}

/// Every row, and the `_with_end` columns where the file has them.
pub fn read_both(path: &Path) -> Result<(Vec<ExampleLoss>, Option<Vec<WithEnd>>), StageError> {
    let unreadable = |e: csv::Error| StageError::invalid(format!("{}: {e}", path.display()));
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(unreadable)?;
    let found: Vec<String> = reader
        .headers()
        .map_err(unreadable)?
        .iter()
        .map(|h| h.trim_end().to_string())
        .collect();
    let full = match found.join(",").as_str() {
        HEADER => true,
        SHORT_HEADER => false,
        _ => {
            return Err(StageError::invalid(format!(
                "{}: expected the header `{HEADER}` (or, from before the end-token columns, \
                 `{SHORT_HEADER}`)",
                path.display()
            )))
        }
    };
    let header = if full { HEADER } else { SHORT_HEADER };
    let width = header.split(',').count();
    let mut rows = Vec::new();
    let mut with_end = Vec::new();
    for record in reader.records() {
        let record = record.map_err(unreadable)?;
        let line = record.position().map_or(0, |p| p.line());
        let bad = || StageError::invalid(format!("{}:{line}: expected `{header}`", path.display()));
        if record.len() != width {
            return Err(bad());
        }
        let tokens = |i: usize| record[i].trim().parse::<usize>().map_err(|_| bad());
        let loss = |i: usize| match record[i].trim() {
            "" => Ok(f64::NAN),
            l => l.parse::<f64>().map_err(|_| bad()),
        };
        rows.push(ExampleLoss {
            id: record[0].to_string(),
            loss: loss(1)?,
            tokens: tokens(2)?,
        });
        if full {
            with_end.push(WithEnd {
                loss: loss(3)?,
                tokens: tokens(4)?,
            });
        }
    }
    Ok((rows, full.then_some(with_end)))
}

/// The rows of an upstream instance's `per_example.csv`; `None` when it has
/// none (not an `eval_loss` stage, or one from before the file existed).
pub fn read_upstream(up: &Upstream) -> Result<Option<Vec<ExampleLoss>>, StageError> {
    match up.files.get(PER_EXAMPLE_FILE) {
        Some(path) => read(path).map(Some),
        None => Ok(None),
    }
}

/// The rows behind `metric` of an upstream instance: [`METRIC`] and
/// [`EXP_METRIC`] the `loss` columns, [`WITH_END_METRIC`] and
/// [`EXP_WITH_END_METRIC`] the `_with_end` ones; `None` for another metric,
/// or where the instance has no such columns.
pub fn read_upstream_for(
    up: &Upstream,
    metric: &str,
) -> Result<Option<Vec<ExampleLoss>>, StageError> {
    let Some(path) = up.files.get(PER_EXAMPLE_FILE) else {
        return Ok(None);
    };
    match metric {
        METRIC | EXP_METRIC => read(path).map(Some),
        WITH_END_METRIC | EXP_WITH_END_METRIC => read_with_end(path),
        _ => Ok(None),
    }
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

    /// The full format round-trips both column pairs; the `loss`,
    /// `tokens` columns read the same from either format, and only the full
    /// one has `_with_end` rows.
    #[test]
    fn the_with_end_columns_round_trip_and_short_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PER_EXAMPLE_FILE);
        let rows = vec![row("s,1", 2.5, 4), row("q", f64::NAN, 0)];
        let with_end = [
            WithEnd {
                loss: 2.2,
                tokens: 5,
            },
            WithEnd {
                loss: 5.0,
                tokens: 1,
            },
        ];
        write_with_end(&path, &rows, &with_end).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "id,loss,tokens,loss_with_end,tokens_with_end\n\"s,1\",2.5,4,2.2,5\nq,,0,5.0,1\n"
        );
        let back = read(&path).unwrap();
        assert_eq!(back[0], rows[0]);
        assert!(back[1].loss.is_nan() && back[1].tokens == 0);
        let ends = read_with_end(&path).unwrap().unwrap();
        assert_eq!(ends, vec![row("s,1", 2.2, 5), row("q", 5.0, 1)]);
        assert!(write_with_end(&path, &rows, &with_end[..1]).is_err());

        write(&path, &rows[..1]).unwrap();
        assert_eq!(read(&path).unwrap(), rows[..1]);
        assert_eq!(read_with_end(&path).unwrap(), None);

        std::fs::write(&path, format!("{HEADER}\na,1.0,2,3.0\n")).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains(":2: expected `id,loss,tokens,loss_with_end"),
            "{err}"
        );
        std::fs::write(&path, "id,tokens,loss\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("expected the header"), "{err}");
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

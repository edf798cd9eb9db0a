//! A training-loss curve: `train_loss.csv` (`step,loss`, published) and the
//! same points as the metric `loss_curve` (`[[step, loss], ...]`), which is
//! what figures read. Written by `train_lora`, read by `plot` (curves).

use std::io::Write;
use std::path::Path;

use flow_engine::{StageError, Upstream};
use serde_json::Value as Json;

pub const LOSS_FILE: &str = "train_loss.csv";
/// The metric holding the curve.
pub const METRIC: &str = "loss_curve";

/// Writes `losses` (step, loss) as a `train_loss.csv`.
pub fn write_csv(path: &Path, losses: &[(usize, f64)]) -> Result<(), StageError> {
    let io = |e| StageError::io(format!("write {}", path.display()), e);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    writeln!(f, "step,loss").map_err(io)?;
    for (s, l) in losses {
        writeln!(f, "{s},{l}").map_err(io)?;
    }
    f.flush().map_err(io)
}

/// `losses` as the value of the [`METRIC`] metric.
pub fn to_metric(losses: &[(usize, f64)]) -> Json {
    Json::Array(
        losses
            .iter()
            .map(|(s, l)| serde_json::json!([s, l]))
            .collect(),
    )
}

/// The curve of an upstream `train_lora` instance: (step, loss) points.
pub fn read(up: &Upstream) -> Result<Vec<(f64, f64)>, StageError> {
    let curve = up
        .metrics
        .get(METRIC)
        .and_then(Json::as_array)
        .ok_or_else(|| {
            StageError::invalid(format!(
                "instance `{}` has no `loss_curve` metric (is it a `train_lora` stage?)",
                up.instance
            ))
        })?;
    Ok(curve
        .iter()
        .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
        .collect())
}

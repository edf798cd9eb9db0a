//! `points.csv`: the 2-D map of a `tsne` stage, one point a row:
//! `series,instance,id,origin,x,y` (RFC 4180 quoting; `x`, `y` with six
//! decimals). Written by `tsne`, read by `plot` (scatter).

use std::path::Path;

use flow_engine::StageError;

use crate::toolkit::text::CsvText;

pub const POINTS_FILE: &str = "points.csv";

/// The columns, in order.
pub const COLUMNS: [&str; 6] = ["series", "instance", "id", "origin", "x", "y"];

/// A new `points.csv`: its header row.
pub fn new() -> CsvText {
    CsvText::new(COLUMNS)
}

/// Appends one point to `out` (from [`new`]).
pub fn push(
    out: &mut CsvText,
    series: &str,
    instance: &str,
    id: &str,
    origin: &str,
    x: f64,
    y: f64,
) {
    out.row([
        series,
        instance,
        id,
        origin,
        &format!("{x:.6}"),
        &format!("{y:.6}"),
    ]);
}

/// The points of a `points.csv`, in file order: (series, x, y).
pub fn read(path: &Path) -> Result<Vec<(String, f64, f64)>, StageError> {
    let mut reader = csv::Reader::from_path(path)
        .map_err(|e| StageError::invalid(format!("read {}: {e}", path.display())))?;
    // Columns by name: `series`, `x` and `y` are what a scatter needs (older files have
    // `series,id,x,y`).
    let header = reader
        .headers()
        .map_err(|e| StageError::invalid(format!("read {}: {e}", path.display())))?
        .clone();
    let column = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            StageError::invalid(format!(
                "{}:1: no column `{name}` (expected `{}`)",
                path.display(),
                COLUMNS.join(",")
            ))
        })
    };
    let (sc, xc, yc) = (column("series")?, column("x")?, column("y")?);
    let mut points = Vec::new();
    for (n, row) in reader.records().enumerate() {
        // Line n + 2: the header is line 1.
        let bad = |why: String| {
            StageError::invalid(format!(
                "{}:{}: expected `{}`: {why}",
                path.display(),
                n + 2,
                COLUMNS.join(",")
            ))
        };
        let row = row.map_err(|e| bad(e.to_string()))?;
        let number = |i: usize| -> Result<f64, StageError> {
            let cell = row.get(i).unwrap_or_default();
            cell.trim()
                .parse()
                .map_err(|_| bad(format!("`{cell}` is not a number")))
        };
        let series = row.get(sc).unwrap_or_default().to_string();
        points.push((series, number(xc)?, number(yc)?));
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_round_trip_with_quoted_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(POINTS_FILE);
        let mut text = new();
        push(
            &mut text,
            "topic_count=20,k=1",
            "gen@a",
            "s1",
            "generated",
            0.5,
            -1.25,
        );
        push(&mut text, "say \"hi\"", "real", "s2\r\nx", "real", 2.0, 3.0);
        std::fs::write(&path, text.finish()).unwrap();
        assert_eq!(
            read(&path).unwrap(),
            vec![
                ("topic_count=20,k=1".to_string(), 0.5, -1.25),
                ("say \"hi\"".to_string(), 2.0, 3.0)
            ]
        );
        std::fs::write(&path, "series,instance,id,origin,x,y\na,b\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains(":2: expected"), "{err}");
    }
}

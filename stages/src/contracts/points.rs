//! `points.csv`: the 2-D map of a `tsne` stage, one point a row:
//! `series,instance,id,origin,x,y` (RFC 4180 quoting; `x`, `y` with six
//! decimals). Written by `tsne`, read by `plot` (scatter).

use std::fmt::Write as _;
use std::path::Path;

use flow_engine::StageError;

use crate::toolkit::text::csv_field;

pub const POINTS_FILE: &str = "points.csv";

/// The header line, to which [`push`] appends rows.
pub const HEADER: &str = "series,instance,id,origin,x,y\n";

/// Appends one point to `out` (which starts with [`HEADER`]).
pub fn push(
    out: &mut String,
    series: &str,
    instance: &str,
    id: &str,
    origin: &str,
    x: f64,
    y: f64,
) {
    let _ = writeln!(
        out,
        "{},{},{},{},{x:.6},{y:.6}",
        csv_field(series),
        csv_field(instance),
        csv_field(id),
        csv_field(origin)
    );
}

/// The points of a `points.csv`, in file order: (series, x, y).
pub fn read(path: &Path) -> Result<Vec<(String, f64, f64)>, StageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StageError::io(format!("read {}", path.display()), e))?;
    let mut points = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let bad = || {
            StageError::invalid(format!(
                "{}:{}: expected `series,id,x,y`",
                path.display(),
                n + 1
            ))
        };
        let cells: Vec<&str> = line.rsplitn(3, ',').collect();
        let [y, x, rest] = cells[..] else {
            return Err(bad());
        };
        let series = first_field(rest).ok_or_else(bad)?;
        let x: f64 = x.trim().parse().map_err(|_| bad())?;
        let y: f64 = y.trim().parse().map_err(|_| bad())?;
        points.push((series, x, y));
    }
    Ok(points)
}

/// The first field of a CSV line, unquoted (RFC 4180 quotes).
fn first_field(line: &str) -> Option<String> {
    let Some(rest) = line.strip_prefix('"') else {
        return line.split(',').next().map(str::to_string);
    };
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if chars.peek() == Some(&'"') => {
                out.push('"');
                chars.next();
            }
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_round_trip_with_quoted_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(POINTS_FILE);
        let mut text = HEADER.to_string();
        push(
            &mut text,
            "topic_count=20,k=1",
            "gen@a",
            "s1",
            "generated",
            0.5,
            -1.25,
        );
        push(&mut text, "say \"hi\"", "real", "s2", "real", 2.0, 3.0);
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            read(&path).unwrap(),
            vec![
                ("topic_count=20,k=1".to_string(), 0.5, -1.25),
                ("say \"hi\"".to_string(), 2.0, 3.0)
            ]
        );
        std::fs::write(&path, format!("{HEADER}a,b\n")).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains(":2: expected"), "{err}");
    }
}

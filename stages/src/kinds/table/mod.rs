//! `table`: one row per gathered stage instance, as CSV and JSON.
//!
//! Columns: `instance`, the fan-out bindings of the rows, then every scalar
//! metric (numbers, strings, booleans; nested values are skipped), then a
//! `<metric>_norm` column per `normalize` entry: the value divided by the
//! largest value of its comparison group (rows with equal `group_by`
//! columns), as the paper normalizes diversity within one figure panel.
//!
//! Beside it, `summary.csv` and `summary.json`: the rows grouped by their
//! stage and every binding but `seed` (replicates of one condition, see
//! [`replicates`]), one row a group. Columns: `group` (the instances' name
//! without `seed`), the bindings but `seed`, `n` (rows, i.e. seeds, in the
//! group), `method` (`student_t`, `bootstrap` or `single`), `level` (0.95),
//! then per numeric column of `table.csv` past the bindings `<metric>_mean`,
//! `<metric>_sd` (over seeds; empty with one), `<metric>_ci_low` and
//! `<metric>_ci_high` (empty where there is no interval). With one seed,
//! `test_loss` and `perplexity` get a bootstrap interval over the test
//! examples where the instance's `per_example.csv` is upstream.

use std::collections::BTreeMap;
use std::io::Write;

use flow_engine::{Context, Outcome, ParamSpec, ParamType, Params, Stage, StageError, Upstream};
use serde_json::{Map, Value as Json};

use crate::contracts::per_example;
use crate::toolkit::params::str_list;
use crate::toolkit::replicates::{self, Method};
use crate::toolkit::text::CsvText;

pub const CSV_FILE: &str = "table.csv";
pub const JSON_FILE: &str = "table.json";
pub const SUMMARY_CSV_FILE: &str = "summary.csv";
pub const SUMMARY_JSON_FILE: &str = "summary.json";

pub struct Table;

/// The parameters of a `table` stage, read once.
struct Settings {
    normalize: Vec<String>,
    group_by: Vec<String>,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        Ok(Settings {
            normalize: str_list(p, "normalize")?,
            group_by: str_list(p, "group_by")?,
        })
    }
}

impl Stage for Table {
    fn kind(&self) -> &'static str {
        "table"
    }

    fn version(&self) -> u32 {
        // 2: summary.csv and summary.json (means and 95% intervals over seeds).
        2
    }

    fn about(&self) -> &'static str {
        "A table of gathered stage instances: their fan-out bindings and scalar metrics, with \
         metrics normalized by the maximum of their comparison group (table.csv, table.json); \
         and their means over seeds with 95% intervals (summary.csv, summary.json)"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::gather("from", "stage(s) whose instances become the rows").required(),
            ParamSpec::list(
                "normalize",
                ParamType::Str,
                "metrics to divide by their group maximum (adds `<metric>_norm`)",
            )
            .default(Vec::<&str>::new()),
            ParamSpec::list(
                "group_by",
                ParamType::Str,
                "columns whose values define the normalization groups (default: one group)",
            )
            .default(Vec::<&str>::new()),
        ]
    }

    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let Settings {
            normalize,
            group_by,
        } = Settings::from_params(ctx.params)?;
        let rows = ctx.gathered("from");
        if rows.is_empty() {
            return Err(StageError::invalid("`from` gathered no stage instances"));
        }
        let mut table = build(rows);
        for metric in &normalize {
            table.normalize(metric, &group_by)?;
        }

        let csv_path = ctx.out_path(CSV_FILE);
        let json_path = ctx.out_path(JSON_FILE);
        write_file(&csv_path, table.to_csv().as_bytes())?;
        let json = serde_json::to_string_pretty(&table.to_json())
            .map_err(|e| StageError::Other(format!("encode table: {e}")))?;
        write_file(&json_path, (json + "\n").as_bytes())?;

        let summary = summarize(&table, rows)?;
        let summary_csv = ctx.out_path(SUMMARY_CSV_FILE);
        let summary_json = ctx.out_path(SUMMARY_JSON_FILE);
        write_file(&summary_csv, summary.to_csv().as_bytes())?;
        let mut doc = summary.to_json();
        doc["level"] = serde_json::json!(flow_stats::LEVEL);
        doc["resamples"] = serde_json::json!(flow_stats::RESAMPLES);
        let json = serde_json::to_string_pretty(&doc)
            .map_err(|e| StageError::Other(format!("encode summary: {e}")))?;
        write_file(&summary_json, (json + "\n").as_bytes())?;
        ctx.log(format!(
            "{} rows x {} columns; {} groups",
            table.rows.len(),
            table.columns.len(),
            summary.rows.len()
        ));
        Ok(Outcome::default()
            .published(CSV_FILE, csv_path)
            .published(JSON_FILE, json_path)
            .published(SUMMARY_CSV_FILE, summary_csv)
            .published(SUMMARY_JSON_FILE, summary_json)
            .metric("rows", table.rows.len() as u64)
            .metric("columns", table.columns.len() as u64)
            .metric("groups", summary.rows.len() as u64))
    }
}

/// Named columns and rows of cells (`Null` where a row lacks a column).
pub struct Grid {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Json>>,
    /// How many columns, from the first, name a row (`instance` and the
    /// bindings) rather than measure it.
    pub keys: usize,
}

fn build(upstreams: &[Upstream]) -> Grid {
    let mut columns = vec!["instance".to_string()];
    for up in upstreams {
        for (name, _) in &up.bindings {
            if !columns.contains(name) {
                columns.push(name.clone());
            }
        }
    }
    let fixed = columns.len();
    // A metric that shares a binding's name gets a prefix.
    let metric_column = |name: &str, columns: &[String]| {
        if columns[..fixed].iter().any(|c| c == name) {
            format!("metric.{name}")
        } else {
            name.to_string()
        }
    };
    for up in upstreams {
        for (name, value) in &up.metrics {
            let column = metric_column(name, &columns);
            if is_scalar(value) && !columns.contains(&column) {
                columns.push(column);
            }
        }
    }
    let rows = upstreams
        .iter()
        .map(|up| {
            let mut cells: BTreeMap<String, Json> = BTreeMap::new();
            cells.insert("instance".into(), Json::String(up.instance.clone()));
            for (name, value) in &up.bindings {
                cells.insert(name.clone(), value.to_json());
            }
            for (name, value) in &up.metrics {
                if is_scalar(value) {
                    cells.insert(metric_column(name, &columns), value.clone());
                }
            }
            columns
                .iter()
                .map(|c| cells.remove(c).unwrap_or(Json::Null))
                .collect()
        })
        .collect();
    Grid {
        columns,
        rows,
        keys: fixed,
    }
}

/// The summary of `table`, whose rows are `upstreams` in order: one row per
/// group of replicates (see the module documentation).
fn summarize(table: &Grid, upstreams: &[Upstream]) -> Result<Grid, StageError> {
    let mut order: Vec<String> = Vec::new();
    let mut members: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, up) in upstreams.iter().enumerate() {
        let name = replicates::group_name(up);
        if !members.contains_key(&name) {
            order.push(name.clone());
        }
        members.entry(name).or_default().push(i);
    }
    let bindings: Vec<usize> = (1..table.keys)
        .filter(|&i| !replicates::is_seed_label(&table.columns[i]))
        .collect();
    let metrics: Vec<usize> = (table.keys..table.columns.len())
        .filter(|&i| table.rows.iter().any(|r| r[i].is_number()))
        .collect();
    // Our own columns give way to a binding of the same name.
    let own = |name: &str| {
        if bindings.iter().any(|&b| table.columns[b] == name) {
            format!("summary.{name}")
        } else {
            name.to_string()
        }
    };
    let mut columns = vec![own("group")];
    columns.extend(bindings.iter().map(|&b| table.columns[b].clone()));
    columns.extend([own("n"), own("method"), own("level")]);
    for &m in &metrics {
        let name = &table.columns[m];
        for stat in ["mean", "sd", "ci_low", "ci_high"] {
            columns.push(format!("{name}_{stat}"));
        }
    }
    let number = |v: f64| serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number);
    let mut rows = Vec::with_capacity(order.len());
    for name in order {
        let idx = &members[&name];
        let first = &table.rows[idx[0]];
        // One replicate: its test examples, where they are upstream.
        let examples = match idx[..] {
            [only] => per_example::read_upstream(&upstreams[only])?,
            _ => None,
        };
        let mut row = vec![Json::String(name.clone())];
        row.extend(bindings.iter().map(|&b| first[b].clone()));
        let mut cells = Vec::with_capacity(metrics.len() * 4);
        let mut method = Method::Single;
        for &m in &metrics {
            let values: Vec<f64> = idx
                .iter()
                .filter_map(|&r| table.rows[r][m].as_f64())
                .filter(|v| v.is_finite())
                .collect();
            if values.is_empty() {
                cells.extend([Json::Null, Json::Null, Json::Null, Json::Null]);
                continue;
            }
            let e = replicates::estimate(&name, &table.columns[m], &values, examples.as_deref());
            method = match (method, e.method) {
                (Method::StudentT, _) | (_, Method::StudentT) => Method::StudentT,
                (Method::Bootstrap, _) | (_, Method::Bootstrap) => Method::Bootstrap,
                _ => Method::Single,
            };
            cells.push(number(e.mean));
            cells.push(e.sd.map_or(Json::Null, number));
            cells.push(e.ci.map_or(Json::Null, |c| number(c.0)));
            cells.push(e.ci.map_or(Json::Null, |c| number(c.1)));
        }
        row.push(Json::from(idx.len()));
        row.push(Json::from(method.as_str()));
        row.push(number(flow_stats::LEVEL));
        row.extend(cells);
        rows.push(row);
    }
    Ok(Grid {
        columns,
        rows,
        keys: 1 + bindings.len(),
    })
}

fn is_scalar(value: &Json) -> bool {
    matches!(value, Json::Number(_) | Json::String(_) | Json::Bool(_))
}

impl Grid {
    fn index(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == column)
    }

    /// Appends `<metric>_norm` = value / max of the value's group.
    pub fn normalize(&mut self, metric: &str, group_by: &[String]) -> Result<(), StageError> {
        let numeric = |i: usize| self.rows.iter().any(|r| r[i].is_number());
        let col = self.index(metric).filter(|&i| numeric(i)).ok_or_else(|| {
            let available: Vec<&str> = (0..self.columns.len())
                .filter(|&i| numeric(i))
                .map(|i| self.columns[i].as_str())
                .collect();
            StageError::invalid(format!(
                "normalize: no numeric column `{metric}` (numeric columns: {})",
                available.join(", ")
            ))
        })?;
        let keys = group_by
            .iter()
            .map(|g| {
                self.index(g).ok_or_else(|| {
                    StageError::invalid(format!(
                        "group_by: no column `{g}` (columns: {})",
                        self.columns.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        let group_of = |row: &[Json]| -> String {
            keys.iter()
                .map(|&k| row[k].to_string())
                .collect::<Vec<_>>()
                .join("\u{1f}")
        };
        let mut max: BTreeMap<String, f64> = BTreeMap::new();
        for row in &self.rows {
            if let Some(v) = row[col].as_f64() {
                let m = max.entry(group_of(row)).or_insert(f64::NEG_INFINITY);
                *m = m.max(v);
            }
        }
        let normed: Vec<Json> = self
            .rows
            .iter()
            .map(|row| match (row[col].as_f64(), max.get(&group_of(row))) {
                (Some(v), Some(&m)) if m > 0.0 => {
                    serde_json::Number::from_f64(v / m).map_or(Json::Null, Json::Number)
                }
                _ => Json::Null,
            })
            .collect();
        self.columns.push(format!("{metric}_norm"));
        for (row, v) in self.rows.iter_mut().zip(normed) {
            row.push(v);
        }
        Ok(())
    }

    pub fn to_csv(&self) -> String {
        let mut out = CsvText::new(&self.columns);
        for row in &self.rows {
            out.row(row.iter().map(|v| match v {
                Json::Null => String::new(),
                Json::String(s) => s.clone(),
                other => other.to_string(),
            }));
        }
        out.finish()
    }

    pub fn to_json(&self) -> Json {
        let rows: Vec<Json> = self
            .rows
            .iter()
            .map(|row| {
                let map: Map<String, Json> = self
                    .columns
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned())
                    .collect();
                Json::Object(map)
            })
            .collect();
        serde_json::json!({"columns": self.columns, "rows": rows})
    }
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), StageError> {
    let mut f = std::fs::File::create(path)
        .map_err(|e| StageError::io(format!("create {}", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| StageError::io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests;

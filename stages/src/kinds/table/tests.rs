use std::collections::BTreeMap;

use flow_engine::{StageError, Upstream, Value};
use serde_json::json;

use super::{Table, CSV_FILE, JSON_FILE, SUMMARY_CSV_FILE, SUMMARY_JSON_FILE};
use crate::contracts::per_example::{self, ExampleLoss, PER_EXAMPLE_FILE};
use crate::testutil::{inputs, params, run, Ran};

fn row(ratio: f64, size: i64, distinct: f64) -> Upstream {
    let metrics = json!({
        "distinct_5": distinct,
        "size": size,
        "source": "mirror, v1",
        "ok": true,
        "nested": {"skip": 1},
    });
    Upstream {
        instance: format!("score@ratio={ratio},size={size}"),
        bindings: vec![
            ("ratio".to_string(), Value::Float(ratio)),
            ("size".to_string(), Value::Int(size)),
        ],
        files: BTreeMap::new(),
        metrics: metrics.as_object().unwrap().clone(),
    }
}

fn table(given: &[(&str, Value)]) -> Result<Ran, StageError> {
    let rows = vec![
        row(0.0, 100, 0.5),
        row(0.5, 100, 1.0),
        row(0.0, 200, 0.8),
        row(0.5, 200, 0.4),
    ];
    let ins = inputs(rows.into_iter().map(|r| ("from", r)).collect());
    let mut all = vec![("from", Value::from(vec!["score"]))];
    all.extend(given.iter().cloned());
    run(&Table, &params(&Table, &all), ins, 1, None)
}

fn read_json(ran: &Ran) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(ran.file(JSON_FILE)).unwrap()).unwrap()
}

fn column(ran: &Ran, name: &str) -> Vec<serde_json::Value> {
    let t = read_json(ran);
    t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[name].clone())
        .collect()
}

#[test]
fn csv_has_instance_bindings_then_scalar_metrics() {
    let ran = table(&[]).unwrap();
    let csv = std::fs::read_to_string(ran.file(CSV_FILE)).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "instance,ratio,size,distinct_5,ok,metric.size,source"
    );
    assert_eq!(
        lines[1],
        "\"score@ratio=0,size=100\",0.0,100,0.5,true,100,\"mirror, v1\""
    );
    assert_eq!(lines.len(), 5);
    assert!(ran.outcome.outputs.iter().all(|o| o.publish));
    assert_eq!(ran.metric("rows"), 4);
}

#[test]
fn normalizes_within_groups() {
    let ran = table(&[
        ("normalize", vec!["distinct_5"].into()),
        ("group_by", vec!["size"].into()),
    ])
    .unwrap();
    assert_eq!(
        column(&ran, "distinct_5_norm"),
        [json!(0.5), json!(1.0), json!(1.0), json!(0.5)]
    );
    let csv = std::fs::read_to_string(ran.file(CSV_FILE)).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",distinct_5_norm"));

    // Without group_by: one group, max 1.0.
    let one = table(&[("normalize", vec!["distinct_5"].into())]).unwrap();
    assert_eq!(
        column(&one, "distinct_5_norm"),
        [json!(0.5), json!(1.0), json!(0.8), json!(0.4)]
    );
    let t = read_json(&one);
    assert_eq!(t["columns"][0], "instance");
}

#[test]
fn unknown_columns_are_errors() {
    let err = table(&[("normalize", vec!["distinct_4"].into())])
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("`distinct_4`") && msg.contains("distinct_5"),
        "{msg}"
    );
    let err = table(&[
        ("normalize", vec!["distinct_5"].into()),
        ("group_by", vec!["model"].into()),
    ])
    .err()
    .unwrap();
    assert!(err.to_string().contains("no column `model`"), "{err}");
}

/// An `eval_loss`-like instance: `test_loss` and `tokens` under `ratio` and
/// `seed` bindings (the engine names it `eval@ratio=R,seed=S`).
fn eval_row(ratio: f64, seed: Option<i64>, loss: f64) -> Upstream {
    let mut bindings = vec![("ratio".to_string(), Value::Float(ratio))];
    let mut name = format!("eval@ratio={}", Value::Float(ratio).name_part());
    if let Some(s) = seed {
        bindings.push(("seed".to_string(), Value::Int(s)));
        name.push_str(&format!(",seed={s}"));
    }
    let metrics = json!({"test_loss": loss, "tokens": 100, "task": "story"});
    Upstream {
        instance: name,
        bindings,
        files: BTreeMap::new(),
        metrics: metrics.as_object().unwrap().clone(),
    }
}

fn summary_rows(ran: &Ran) -> Vec<serde_json::Value> {
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ran.file(SUMMARY_JSON_FILE)).unwrap())
            .unwrap();
    assert_eq!(t["level"], json!(0.95));
    t["rows"].as_array().unwrap().clone()
}

/// Three seeds of ratio 0 (losses 2.0, 2.5, 3.0), one seed of ratio 0.5 with
/// its test examples upstream, one of ratio 1 without. By hand for the
/// three seeds: mean 2.5; sd sqrt((0.25 + 0 + 0.25) / 2) = 0.5; t(0.975, 2)
/// = 4.302652729911275 (tables); half width 4.302652729911275 * 0.5 / sqrt(3)
/// = 1.2420569.
#[test]
fn summary_averages_seeds_with_t_intervals_and_bootstraps_one_seed() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<Upstream> = [2.0, 2.5, 3.0]
        .into_iter()
        .enumerate()
        .map(|(s, loss)| eval_row(0.0, Some(s as i64 + 1), loss))
        .collect();
    // 40 test examples of 1-3 tokens; the row reports their weighted mean.
    let examples: Vec<ExampleLoss> = (0..40)
        .map(|i| ExampleLoss {
            id: format!("ex{i}"),
            loss: 1.0 + (i % 5) as f64 * 0.5,
            tokens: 1 + i % 3,
        })
        .collect();
    let path = dir.path().join(PER_EXAMPLE_FILE);
    per_example::write(&path, &examples).unwrap();
    let mean_half = per_example::token_weighted_mean(&examples);
    let mut one = eval_row(0.5, Some(1), mean_half);
    one.files.insert(PER_EXAMPLE_FILE.into(), path);
    rows.push(one);
    rows.push(eval_row(1.0, Some(1), 4.0));
    let run_table = || {
        let ins = inputs(rows.iter().cloned().map(|r| ("from", r)).collect());
        let p = params(&Table, &[("from", Value::from(vec!["eval"]))]);
        run(&Table, &p, ins, 1, None).unwrap()
    };
    let ran = run_table();

    // table.csv is as it always was: a row per instance, seed a binding.
    let csv = std::fs::read_to_string(ran.file(CSV_FILE)).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "instance,ratio,seed,task,test_loss,tokens");
    assert_eq!(lines.len(), 6);

    let summary = std::fs::read_to_string(ran.file(SUMMARY_CSV_FILE)).unwrap();
    let lines: Vec<&str> = summary.lines().collect();
    assert_eq!(
        lines[0],
        "group,ratio,n,method,level,test_loss_mean,test_loss_sd,test_loss_ci_low,\
         test_loss_ci_high,tokens_mean,tokens_sd,tokens_ci_low,tokens_ci_high"
    );
    assert_eq!(lines.len(), 4, "{summary}");
    assert!(
        lines[3].starts_with("eval@ratio=1.0,1.0,1,single,0.95,4.0,,,,100.0,,,"),
        "{}",
        lines[3]
    );

    let rows_json = summary_rows(&ran);
    let seeds = &rows_json[0];
    assert_eq!(seeds["group"], "eval@ratio=0.0");
    assert_eq!(seeds["n"], 3);
    assert_eq!(seeds["method"], "student_t");
    let num = |v: &serde_json::Value| v.as_f64().unwrap();
    let half = 4.302_652_729_911_275 * 0.5 / 3f64.sqrt();
    assert!((num(&seeds["test_loss_mean"]) - 2.5).abs() < 1e-12);
    assert!((num(&seeds["test_loss_sd"]) - 0.5).abs() < 1e-12);
    assert!((num(&seeds["test_loss_ci_low"]) - (2.5 - half)).abs() < 1e-9);
    assert!((num(&seeds["test_loss_ci_high"]) - (2.5 + half)).abs() < 1e-9);
    // Equal values over seeds: sd 0, a zero-width interval.
    assert_eq!(seeds["tokens_sd"], json!(0.0));
    assert_eq!(seeds["tokens_ci_low"], seeds["tokens_ci_high"]);

    let boot = &rows_json[1];
    assert_eq!((boot["n"].clone(), boot["method"].clone()), (json!(1), json!("bootstrap")));
    let (lo, hi) = (num(&boot["test_loss_ci_low"]), num(&boot["test_loss_ci_high"]));
    assert!(lo < mean_half && mean_half < hi, "{lo} {mean_half} {hi}");
    assert!(hi - lo < 1.0, "{lo} {hi}");
    assert_eq!(boot["test_loss_sd"], json!(null));
    assert_eq!(boot["tokens_ci_low"], json!(null), "no examples of tokens");

    // A rerun draws the same resamples.
    let again = run_table();
    assert_eq!(
        std::fs::read_to_string(again.file(SUMMARY_CSV_FILE)).unwrap(),
        summary
    );
    assert_eq!(ran.metric("groups"), 3);
}

#[test]
fn summary_of_rows_without_seeds_has_a_group_per_row() {
    let ran = table(&[("normalize", vec!["distinct_5"].into())]).unwrap();
    let rows = summary_rows(&ran);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0]["group"], "score@ratio=0.0,size=100");
    assert_eq!(rows[0]["n"], 1);
    assert_eq!(rows[0]["method"], "single");
    assert_eq!(rows[0]["distinct_5_mean"], json!(0.5));
    assert_eq!(rows[0]["distinct_5_norm_mean"], json!(0.5));
    assert_eq!(rows[0]["distinct_5_ci_low"], json!(null));
    // Booleans and strings are not averaged; a metric named like a binding
    // keeps its prefix.
    let cols: Vec<String> = serde_json::from_value(
        serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(ran.file(SUMMARY_JSON_FILE)).unwrap(),
        )
        .unwrap()["columns"]
            .clone(),
    )
    .unwrap();
    assert!(cols.contains(&"metric.size_mean".to_string()), "{cols:?}");
    assert!(!cols.iter().any(|c| c.starts_with("ok_") || c.starts_with("source_")));
}

use std::collections::BTreeMap;

use flow_engine::{StageError, Upstream, Value};
use serde_json::json;

use super::{Table, CSV_FILE, JSON_FILE};
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

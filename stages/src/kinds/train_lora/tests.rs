use std::collections::BTreeMap;

use flow_engine::{Stage, Value};

use super::TrainLora;
use crate::contracts::dataset::Task;
use crate::testutil::{data_upstream, example, inputs, model_resources, params, run_in};

#[test]
fn unknown_target_modules_are_rejected() {
    let lora = Value::Table(BTreeMap::from([(
        "target_modules".to_string(),
        Value::List(vec!["q_proj".into(), "qproj".into()]),
    )]));
    let p = params(
        &TrainLora,
        &[("data", "d".into()), ("model", "m".into()), ("lora", lora)],
    );
    let problems = TrainLora.check(&p);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].message.contains("`qproj`"));
}

#[test]
fn a_missing_model_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let ex = example("s1", Task::Story, None, "A b.", "C d.");
    let up = data_upstream(dir.path(), "d", &[ex]);
    let p = params(
        &TrainLora,
        &[("data", "d".into()), ("model", "smollm2".into())],
    );
    let missing = dir.path().join("nope.gguf");
    let resources = model_resources("smollm2", &missing, None);
    let err = run_in(&TrainLora, &p, inputs(vec![("data", up)]), &resources, 7, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("smollm2") && err.contains("nope.gguf"),
        "{err}"
    );
}

#[test]
fn lora_fields_default_to_their_declared_values() {
    let p = params(&TrainLora, &[("data", "d".into()), ("model", "m".into())]);
    let cfg = super::lora_config(&p).unwrap();
    let d = flow_train::lora::LoraConfig::default();
    assert_eq!(
        (cfg.rank, cfg.alpha, cfg.dropout, &cfg.target_modules),
        (d.rank, d.alpha, d.dropout, &d.target_modules)
    );
    let rank = Value::Table(BTreeMap::from([("rank".to_string(), Value::Int(4))]));
    let p = params(
        &TrainLora,
        &[("data", "d".into()), ("model", "m".into()), ("lora", rank)],
    );
    let cfg = super::lora_config(&p).unwrap();
    assert_eq!((cfg.rank, cfg.alpha), (4, 16.0));
}

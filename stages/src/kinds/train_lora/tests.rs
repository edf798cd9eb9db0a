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
    let err = run_in(
        &TrainLora,
        &p,
        inputs(vec![("data", up)]),
        &resources,
        7,
        None,
    )
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

/// The tiny GPT-2 checkpoint of the trainer's fixtures (32 positions, one
/// token a character), as `[models.tiny_gpt2]`.
fn tiny_gpt2() -> flow_engine::Resources {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../train/tests/fixtures/gpt2");
    model_resources("tiny_gpt2", &fixture, Some("safetensors"))
}

/// `max_steps = 5` on 6 examples in batches of 4 (2 steps an epoch) trains
/// exactly 5 steps, 2.5 epochs; 2 of the 6 examples are longer than
/// `max_seq_len` = 24 tokens (one a character), so the truncated share is 1/3.
#[test]
fn max_steps_and_the_truncated_share_through_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let long = "A long input that does not fit.";
    let examples: Vec<_> = (0..6)
        .map(|i| {
            let input = if i % 3 == 0 { long } else { "Ab." };
            example(&format!("s{i}"), Task::Story, None, input, "Cd.")
        })
        .collect();
    let up = data_upstream(dir.path(), "d", &examples);
    let given = |max_steps: Option<i64>| {
        let mut g = vec![
            ("data", "d".into()),
            ("model", "tiny_gpt2".into()),
            ("batch_size", 4.into()),
            ("max_seq_len", 24.into()),
            ("lr", 1e-2.into()),
        ];
        if let Some(n) = max_steps {
            g.push(("max_steps", n.into()));
        }
        params(&TrainLora, &g)
    };
    let run = |p| {
        let ins = inputs(vec![("data", up.clone())]);
        run_in(&TrainLora, &p, ins, &tiny_gpt2(), 7, None).unwrap()
    };
    let ran = run(given(Some(5)));
    assert_eq!(ran.num("steps"), 5.0);
    assert_eq!(ran.num("epochs_run"), 2.5);
    assert_eq!(ran.metric("loss_curve").as_array().unwrap().len(), 5);
    assert!((ran.num("truncated_share") - 1.0 / 3.0).abs() < 1e-12);
    assert!(
        ran.log.iter().any(|l| l.contains("2 of 6 examples")),
        "{:?}",
        ran.log
    );
    // Without it, the default 3 epochs.
    let ran = run(given(None));
    assert_eq!((ran.num("steps"), ran.num("epochs_run")), (6.0, 3.0));
}

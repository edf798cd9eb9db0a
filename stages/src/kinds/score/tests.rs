use flow_engine::{Stage, StageError, Threads, Value};

use super::{Score, SCORES_FILE};
use crate::contracts::dataset::{Example, Task};
use crate::testutil::{data_upstream, example, inputs, params, run, Ran};

fn score(
    data: &[Example],
    reference: Option<&[Example]>,
    given: &[(&str, Value)],
) -> Result<Ran, StageError> {
    let dir = tempfile::tempdir().unwrap();
    let mut ins = vec![("data", data_upstream(dir.path(), "data", data))];
    let mut all = vec![("data", Value::from("data"))];
    if let Some(r) = reference {
        ins.push(("reference", data_upstream(dir.path(), "ref", r)));
        all.push(("reference", "ref".into()));
    }
    all.extend(given.iter().cloned());
    run(&Score, &params(&Score, &all), inputs(ins), 1, None)
}

fn num(ran: &Ran, name: &str) -> f64 {
    ran.metric(name).as_f64().unwrap()
}

fn stories() -> Vec<Example> {
    vec![
        example(
            "s1",
            Task::Story,
            None,
            "The cat sat on the mat",
            "the cat sat.",
        ),
        example("s2", Task::Story, None, "A cat", "sat."),
    ]
}

#[test]
fn stories_score_as_one_set() {
    let ran = score(&stories(), None, &[("n", 2.into())]).unwrap();
    // See distinct::tests::hand_computed_values: 8 unique of 10 bigrams.
    assert_eq!(num(&ran, "distinct_2"), 0.8);
    assert_eq!(ran.metric("distinct_2_unique"), 8);
    assert_eq!(ran.metric("distinct_2_total"), 10);
    assert_eq!(ran.metric("n_examples"), 2);
    // Eq. 4 over one stream: 11 bigrams, "sat. a" across the boundary is new.
    assert_eq!(num(&ran, "distinct_2_concat"), 9.0 / 11.0);
    assert_eq!(ran.metric("distinct_2_concat_unique"), 9);
    assert_eq!(ran.metric("distinct_2_concat_total"), 11);
    // Target lengths 3 and 1 tokens.
    assert_eq!(num(&ran, "length_mean"), 2.0);
    assert_eq!(num(&ran, "length_median"), 2.0);
    assert!(ran.outcome.metrics.get("kl_unigram").is_none());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ran.file(SCORES_FILE)).unwrap()).unwrap();
    assert_eq!(report["distinct"]["grouping"], "none");
    assert_eq!(
        report["lengths"]["histogram"],
        serde_json::json!([[1, 1], [3, 1]])
    );
    assert_eq!(report["tokenizer"], "whitespace");
}

fn qa() -> Vec<Example> {
    vec![
        example("q1", Task::Qa, Some("g1"), "a b", "a"),
        example("q2", Task::Qa, Some("g2"), "c", "c"),
    ]
}

#[test]
fn qa_sums_distinct_over_contexts() {
    let ran = score(&qa(), None, &[("n", 1.into())]).unwrap();
    // g1: a b a -> 2 / 3; g2: c c -> 1 / 2.
    let want = 2.0 / 3.0 + 0.5;
    assert!((num(&ran, "distinct_1") - want).abs() < 1e-15);
    assert!((num(&ran, "distinct_1_mean") - want / 2.0).abs() < 1e-15);
    assert_eq!(ran.metric("groups"), 2);

    // One set instead: a b a c c -> 3 / 5.
    let flat = score(&qa(), None, &[("n", 1.into()), ("grouping", "none".into())]).unwrap();
    assert_eq!(num(&flat, "distinct_1"), 0.6);
}

#[test]
fn qa_concat_stays_within_each_context() {
    let data = vec![
        example("q1", Task::Qa, Some("g1"), "a b", "c"),
        example("q2", Task::Qa, Some("g1"), "a b", "c"),
        example("q3", Task::Qa, Some("g2"), "d", "e"),
    ];
    let ran = score(&data, None, &[("n", 2.into())]).unwrap();
    // g1 per example: a-b b-c twice, 2 / 4; g2: d-e, 1 / 1.
    assert_eq!(num(&ran, "distinct_2"), 0.5 + 1.0);
    // g1 as one stream "a b c a b c": 3 / 5; no bigram joins g1 to g2.
    assert_eq!(num(&ran, "distinct_2_concat"), 0.6 + 1.0);
    assert_eq!(num(&ran, "distinct_2_concat_mean"), 1.6 / 2.0);
}

#[test]
fn shared_counts_examples_identical_to_one_of_the_reference() {
    let data = vec![
        example(
            "gen-1",
            Task::Story,
            None,
            "The cat sat on the mat",
            "the cat sat.",
        ),
        example("gen-2", Task::Story, None, "A cat", "sat."),
        example("gen-3", Task::Story, None, "A dog", "ran."),
    ];
    let reference = vec![
        // The same texts under another id, with stray whitespace: shared.
        example(
            "real-9",
            Task::Story,
            None,
            " The cat sat on the mat",
            "the cat sat. ",
        ),
        // The same input, another target: not shared.
        example("real-8", Task::Story, None, "A cat", "ran."),
    ];
    let metrics: Value = vec!["shared"].into();
    let ran = score(&data, Some(&reference), &[("metrics", metrics.clone())]).unwrap();
    assert_eq!(ran.metric("shared_items"), 1);
    assert_eq!(num(&ran, "shared_share"), 1.0 / 3.0);
    assert!(ran.outcome.metrics.get("kl_unigram").is_none());
    let same = score(&data, Some(&data), &[("metrics", metrics.clone())]).unwrap();
    assert_eq!(num(&same, "shared_share"), 1.0);
    // A QA pair is the same item only within its context.
    let qa_ref = vec![example("r", Task::Qa, Some("g2"), "a b", "a")];
    let ran = score(&qa(), Some(&qa_ref), &[("metrics", metrics)]).unwrap();
    assert_eq!(ran.metric("shared_items"), 0);
}

/// Table 2's null: KL between two disjoint real samples is finite and below
/// KL between real and generated text; `shared` shows the samples disjoint.
#[test]
fn real_vs_real_kl_is_below_real_vs_generated() {
    let real = [
        ("Tom went to the store.", "He bought some milk."),
        ("Anna lost her keys.", "She found them under the bed."),
        ("The dog barked at night.", "Its owner let it in."),
        ("Sam wanted a new bike.", "He saved his money for it."),
        ("Kim baked a cake.", "Her family loved it."),
        ("Joe missed the bus.", "He walked to school."),
        ("Mia planted a tree.", "It grew tall over the years."),
        ("Ben found a cat.", "He took it home."),
    ];
    let real: Vec<Example> = real
        .iter()
        .enumerate()
        .map(|(i, (a, b))| example(&format!("r{i}"), Task::Story, None, a, b))
        .collect();
    // Two disjoint halves, as `subset` with `offset` cuts them.
    let (a, b) = real.split_at(4);
    let generated: Vec<Example> = [
        (
            "In a realm of ancient magic, a wizard awoke.",
            "Destiny beckoned him onward.",
        ),
        (
            "The starship drifted through the nebula.",
            "Its crew embraced the unknown.",
        ),
        (
            "A mysterious prophecy echoed through the kingdom.",
            "Heroes rose to answer it.",
        ),
        (
            "Beneath the ocean, a forgotten city glowed.",
            "Explorers marveled at its beauty.",
        ),
    ]
    .iter()
    .enumerate()
    .map(|(i, (x, y))| example(&format!("g{i}"), Task::Story, None, x, y))
    .collect();
    let metrics: Value = vec!["kl", "shared"].into();
    let null = score(b, Some(a), &[("metrics", metrics.clone())]).unwrap();
    let shift = score(&generated, Some(a), &[("metrics", metrics)]).unwrap();
    let (null_kl, shift_kl) = (num(&null, "kl_unigram"), num(&shift, "kl_unigram"));
    assert!(null_kl.is_finite() && null_kl > 0.0, "{null_kl}");
    assert!(null_kl < shift_kl, "null {null_kl} vs generated {shift_kl}");
    assert_eq!(null.metric("shared_items"), 0);
}

#[test]
fn grouping_needs_groups() {
    let err = score(&stories(), None, &[("grouping", "group".into())])
        .err()
        .unwrap();
    assert!(matches!(err, StageError::Invalid(_)));
    assert!(err.to_string().contains("`s1` has no group"), "{err}");
}

#[test]
fn kl_against_a_reference() {
    let metrics: Value = vec!["kl"].into();
    let same = score(
        &stories(),
        Some(&stories()),
        &[("metrics", metrics.clone())],
    )
    .unwrap();
    assert_eq!(num(&same, "kl_unigram"), 0.0);
    assert!(same.outcome.metrics.get("distinct_5").is_none());

    let other = vec![example("o", Task::Story, None, "dogs run", "far away")];
    let far = score(&other, Some(&stories()), &[("metrics", metrics)]).unwrap();
    assert!(num(&far, "kl_unigram") > 0.5);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(far.file(SCORES_FILE)).unwrap()).unwrap();
    assert_eq!(report["kl"]["alpha"], 0.5);
    assert_eq!(report["kl"]["reference"], "ref");
    assert!(report["kl"]["variant"]
        .as_str()
        .unwrap()
        .contains("natural log"));
}

#[test]
fn check_requires_a_reference_for_kl() {
    let p = params(
        &Score,
        &[
            ("data", "d".into()),
            ("metrics", vec!["distinct", "kl"].into()),
        ],
    );
    let problems = Score.check(&p);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].param, "reference");
    let p = params(
        &Score,
        &[("data", "d".into()), ("metrics", vec!["shared"].into())],
    );
    let problems = Score.check(&p);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].message.contains("\"shared\""),
        "{}",
        problems[0].message
    );
    assert!(Score
        .check(&params(&Score, &[("data", "d".into())]))
        .is_empty());
    assert_eq!(Score.threads(&p, &Default::default()), Threads::All);
}

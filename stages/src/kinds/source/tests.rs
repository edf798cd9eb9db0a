use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use flow_engine::{FileHasher, Stage, StageError, Value};

use super::Source;
use crate::contracts::dataset::{Example, Task};
use crate::testutil::{data_dir, params, run, Ran};

fn source(data: &Path, seed: u64, given: &[(&str, Value)]) -> Ran {
    let p = params(&Source, given);
    run(&Source, &p, BTreeMap::new(), seed, Some(data)).expect("source runs")
}

fn ids(examples: &[Example]) -> BTreeSet<String> {
    examples.iter().map(|e| e.id.clone()).collect()
}

#[test]
fn story_split_is_disjoint_and_covers_everything() {
    let Some(data) = data_dir() else { return };
    let train = source(&data, 7, &[("dataset", "rocstories".into())]).data();
    let test = source(
        &data,
        7,
        &[("dataset", "rocstories".into()), ("split", "test".into())],
    )
    .data();
    let (a, b) = (ids(&train), ids(&test));
    assert!(a.is_disjoint(&b));
    assert_eq!(a.len() + b.len(), 27_302);
    let share = b.len() as f64 / 27_302.0;
    assert!((0.24..0.26).contains(&share), "test share {share}");
}

#[test]
fn stories_are_deterministic_and_seeded() {
    let Some(data) = data_dir() else { return };
    let given = [("dataset", "rocstories".into()), ("limit", 200.into())];
    let a = source(&data, 7, &given).data();
    assert_eq!(a, source(&data, 7, &given).data());
    let other = source(&data, 8, &given).data();
    assert_ne!(ids(&a), ids(&other));
}

#[test]
fn growing_limit_only_adds_examples() {
    let Some(data) = data_dir() else { return };
    let small = source(
        &data,
        7,
        &[("dataset", "rocstories".into()), ("limit", 100.into())],
    );
    let large = source(
        &data,
        7,
        &[("dataset", "rocstories".into()), ("limit", 1000.into())],
    );
    let (small, large) = (small.data(), large.data());
    assert_eq!(small[..], large[..100]);
    // The split does not depend on the limit: the sample lies in the full split.
    let all_test = source(
        &data,
        7,
        &[("dataset", "rocstories".into()), ("split", "test".into())],
    )
    .data();
    assert!(ids(&large).is_disjoint(&ids(&all_test)));
}

#[test]
fn story_shapes_and_metrics() {
    let Some(data) = data_dir() else { return };
    let ran = source(
        &data,
        1,
        &[("dataset", "rocstories".into()), ("limit", 50.into())],
    );
    let examples = ran.data();
    assert_eq!(examples.len(), 50);
    assert_eq!(ran.metric("examples"), 50);
    assert_eq!(ran.metric("source"), "mirror");
    for e in &examples {
        assert_eq!(e.task, Task::Story);
        assert!(e.group.is_none() && e.context.is_none());
        assert!(!e.input.is_empty() && !e.target.is_empty());
        assert!(e.input.len() > e.target.len(), "{e:?}");
    }
    assert!(ran.log.iter().any(|l| l.contains("50 examples")));
}

#[test]
fn story_limit_beyond_the_split_names_the_counts() {
    let Some(data) = data_dir() else { return };
    let p = params(
        &Source,
        &[("dataset", "rocstories".into()), ("limit", 30_000.into())],
    );
    let err = run(&Source, &p, BTreeMap::new(), 7, Some(&data))
        .err()
        .expect("too many");
    assert!(matches!(err, StageError::Invalid(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("limit = 30000") && msg.contains("27302 in all"),
        "{msg}"
    );
}

#[test]
fn qa_contexts_and_per_context() {
    let Some(data) = data_dir() else { return };
    let given = [
        ("dataset", "narrativeqa".into()),
        ("contexts", 5.into()),
        ("per_context", 20.into()),
    ];
    let ran = source(&data, 3, &given);
    let examples = ran.data();
    assert_eq!(examples.len(), 100);
    assert_eq!(ran.metric("contexts"), 5);
    assert_eq!(ran.metric("split_mode"), "pooled-by-document");
    let mut per_group: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &examples {
        assert_eq!(e.task, Task::Qa);
        assert!(e.context.as_ref().is_some_and(|c| c.len() > 200));
        assert_eq!(e.alt_targets.len(), 1);
        *per_group.entry(e.group.as_deref().unwrap()).or_default() += 1;
    }
    assert_eq!(per_group.len(), 5);
    assert!(per_group.values().all(|&n| n == 20));
    assert!(ran.log.iter().any(|l| l.contains("pooled")));
    assert_eq!(examples, source(&data, 3, &given).data());
}

#[test]
fn qa_split_is_by_document() {
    let Some(data) = data_dir() else { return };
    let docs = |split: &str| -> BTreeSet<String> {
        source(
            &data,
            7,
            &[("dataset", "narrativeqa".into()), ("split", split.into())],
        )
        .data()
        .into_iter()
        .filter_map(|e| e.group)
        .collect()
    };
    let (train, test) = (docs("train"), docs("test"));
    assert!(train.is_disjoint(&test));
    assert_eq!(train.len() + test.len(), 470);
    let share = test.len() as f64 / 470.0;
    assert!((0.22..0.38).contains(&share), "test share {share}");
}

#[test]
fn qa_limit_takes_a_prefix_and_too_many_contexts_fail() {
    let Some(data) = data_dir() else { return };
    let base = [
        ("dataset", "narrativeqa".into()),
        ("per_context", 10.into()),
    ];
    let with_limit = |n: i64| {
        let mut given = base.to_vec();
        given.push(("limit", n.into()));
        source(&data, 5, &given).data()
    };
    let (a, b) = (with_limit(25), with_limit(95));
    assert_eq!(a[..], b[..25]);

    let p = params(
        &Source,
        &[("dataset", "narrativeqa".into()), ("contexts", 1000.into())],
    );
    let err = run(&Source, &p, BTreeMap::new(), 5, Some(&data))
        .err()
        .unwrap();
    assert!(err.to_string().contains("contexts = 1000"), "{err}");
}

#[test]
fn missing_mirror_file_is_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    let p = params(&Source, &[("dataset", "narrativeqa".into())]);
    let err = run(&Source, &p, BTreeMap::new(), 1, Some(empty.path()))
        .err()
        .expect("no data");
    let msg = err.to_string();
    assert!(msg.contains("narrativeqa/documents.jsonl"), "{msg}");
    assert!(msg.contains("expected layout"), "{msg}");
}

#[test]
fn stories_params_reject_qa_only_settings() {
    let p = params(
        &Source,
        &[("dataset", "rocstories".into()), ("contexts", 3.into())],
    );
    let problems = Source.check(&p);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].param, "contexts");
}

struct Blake3Hasher;
impl FileHasher for Blake3Hasher {
    fn hash_file(&self, path: &Path) -> Result<String, StageError> {
        let bytes = std::fs::read(path).map_err(|e| StageError::io("read", e))?;
        Ok(blake3::hash(&bytes).to_hex().to_string())
    }
}

#[test]
fn fingerprint_hashes_the_files_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rocstories")).unwrap();
    let file = dir.path().join("rocstories/stories.jsonl");
    std::fs::write(&file, "{}\n").unwrap();
    let env = flow_engine::Env {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let p = params(&Source, &[("dataset", "rocstories".into())]);
    let before = Source.fingerprint(&p, &env, &Blake3Hasher).unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].0, "data:rocstories/stories.jsonl");
    std::fs::write(&file, "{ }\n").unwrap();
    assert_ne!(before, Source.fingerprint(&p, &env, &Blake3Hasher).unwrap());

    let qa = params(&Source, &[("dataset", "narrativeqa".into())]);
    assert!(Source.fingerprint(&qa, &env, &Blake3Hasher).is_err());
    let hub = flow_engine::Env::default();
    let err = Source.fingerprint(&qa, &hub, &Blake3Hasher).unwrap_err();
    assert!(err.to_string().contains("parquet"), "{err}");
}

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
        ("per_context_strict", true.into()),
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

/// QA pairs per document, counted straight from `qaps.jsonl`.
fn direct_pair_counts(data: &Path) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(data.join("narrativeqa/qaps.jsonl")).unwrap();
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *counts
            .entry(v["document_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

fn per_group(examples: &[Example]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for e in examples {
        *n.entry(e.group.clone().unwrap()).or_default() += 1;
    }
    n
}

#[test]
fn qa_per_context_is_up_to_n_and_strict_skips_short_documents() {
    let Some(data) = data_dir() else { return };
    let direct = direct_pair_counts(&data);
    let qa = |extra: &[(&str, Value)]| {
        let mut given = vec![("dataset", "narrativeqa".into())];
        given.extend_from_slice(extra);
        source(&data, 7, &given)
    };
    // The train split's documents: every pair of each.
    let all = per_group(&qa(&[]).data());
    assert!(all.iter().all(|(d, n)| direct[d] == *n));

    let up_to = qa(&[("per_context", 30.into())]);
    let got = per_group(&up_to.data());
    // Every document of the split is kept, with min(its pairs, 30).
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        all.keys().collect::<Vec<_>>()
    );
    for (d, n) in &got {
        assert_eq!(*n, direct[d].min(30), "document {d}");
    }
    let short = got.keys().filter(|d| direct[*d] < 30).count();
    assert!(
        short > 0,
        "the shared copy has documents with fewer than 30 pairs"
    );
    assert_eq!(up_to.metric("contexts"), got.len());
    assert!(up_to
        .log
        .iter()
        .any(|l| l.contains("all of theirs are kept")));

    let strict = qa(&[
        ("per_context", 30.into()),
        ("per_context_strict", true.into()),
    ]);
    let kept = per_group(&strict.data());
    let expected: BTreeSet<&String> = all.keys().filter(|d| direct[*d] >= 30).collect();
    assert_eq!(kept.keys().collect::<BTreeSet<_>>(), expected);
    assert!(kept.values().all(|&n| n == 30));
    assert_eq!(kept.len() + short, got.len());
    assert!(strict.log.iter().any(|l| l.contains("per_context_strict")));
    // The documents both keep get the same pairs.
    let strict_ids = ids(&strict.data());
    assert!(strict_ids.is_subset(&ids(&up_to.data())));
}

#[test]
fn qa_context_window_is_a_sentence_prefix_recorded_in_the_data() {
    let Some(data) = data_dir() else { return };
    let base = [("dataset", "narrativeqa".into()), ("per_context", 3.into())];
    let whole = source(&data, 7, &base);
    let full: BTreeMap<String, String> = whole
        .data()
        .into_iter()
        .map(|e| (e.id, e.context.unwrap()))
        .collect();
    assert_eq!(whole.num("context_cut_share"), 0.0);
    let mut given = base.to_vec();
    given.push(("context_chars", 1000.into()));
    let ran = source(&data, 7, &given);
    let examples = ran.data();
    // Same pairs; only the contexts differ.
    assert_eq!(ids(&examples), full.keys().cloned().collect());
    let mut windows: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    for e in &examples {
        let (window, summary) = (e.context.as_deref().unwrap(), &full[&e.id]);
        let chars = window.chars().count();
        let cut = e.extra["context_cut"].as_bool().unwrap();
        assert!(chars <= 1000, "{}: {chars} characters", e.id);
        assert!(summary.starts_with(window), "{}", e.id);
        assert_eq!(cut, window.len() < summary.len(), "{}", e.id);
        assert_eq!(e.extra["context_chars_full"], summary.chars().count());
        if cut {
            // At a sentence end (closing quotes allowed), not mid-sentence.
            let end = window.trim_end_matches(['"', '\'', '\u{201D}', '\u{2019}', ')', ']']);
            assert!(
                end.ends_with(['.', '!', '?']),
                "{}: ...{}",
                e.id,
                &window[window.len().saturating_sub(40)..]
            );
            assert!(summary[window.len()..].starts_with(char::is_whitespace));
            // Not much shorter than the budget: sentences are short (one
            // real run-on, "...sin.The Picture...", is over 400 characters).
            assert!(chars > 500, "{}: {chars}", e.id);
        }
        windows.insert(e.group.clone().unwrap(), (chars, cut));
    }
    let n = windows.len() as f64;
    let cut_share = windows.values().filter(|w| w.1).count() as f64 / n;
    let mean = windows.values().map(|w| w.0).sum::<usize>() as f64 / n;
    assert!(
        cut_share > 0.5,
        "most summaries are longer than 1000 characters: {cut_share}"
    );
    assert_eq!(ran.num("context_cut_share"), cut_share);
    assert!((ran.num("context_chars_mean") - mean).abs() < 1e-9);
    assert!(ran.num("context_chars_full_mean") > mean);
    assert!(ran.log.iter().any(|l| l.contains("summaries cut")));
}

#[test]
fn qa_only_settings_and_strict_without_n_are_problems() {
    let p = params(
        &Source,
        &[
            ("dataset", "rocstories".into()),
            ("context_chars", 500.into()),
        ],
    );
    let problems = Source.check(&p);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].param, "context_chars");

    let p = params(
        &Source,
        &[
            ("dataset", "narrativeqa".into()),
            ("per_context_strict", true.into()),
        ],
    );
    let problems = Source.check(&p);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].param, "per_context_strict");
    assert!(problems[0].message.contains("needs per_context"));
    // The default (false) is no setting, for stories too.
    assert!(Source
        .check(&params(&Source, &[("dataset", "rocstories".into())]))
        .is_empty());
}

use flow_engine::Value;

use super::*;
use crate::contracts::dataset::Task;
use crate::contracts::embeddings::read;
use crate::testutil::{self, minilm, real_stories};

#[test]
fn stage_embeds_a_seeded_sample_of_real_stories() {
    let Some(stories) = real_stories(60) else {
        return;
    };
    if minilm().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = testutil::data_upstream(dir.path(), "stories", &stories);
    let run = |sample: i64, seed: u64| {
        let params = testutil::params(
            &Embed,
            &[("data", "stories".into()), ("sample", Value::Int(sample))],
        );
        testutil::run(
            &Embed,
            &params,
            testutil::inputs(vec![("data", up.clone())]),
            seed,
            None,
        )
        .unwrap()
    };
    let small = run(20, 3);
    assert_eq!(small.metric("n"), 20);
    assert_eq!(small.metric("dim"), 384);
    let emb = read(&small.upstream("embed", vec![])).unwrap();
    assert_eq!(emb.rows.len(), 20);
    for i in 0..20 {
        let norm: f32 = emb.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "row {i} norm {norm}");
    }
    // A story is closer to itself than to other stories, and real stories are
    // all somewhat alike (everyday English), so cosines are mostly positive.
    let cos =
        |a: usize, b: usize| -> f32 { emb.row(a).iter().zip(emb.row(b)).map(|(x, y)| x * y).sum() };
    assert!(cos(0, 1) < 0.95);
    // The semantic diversity metric is the mean over every pair of stories.
    let mut pairs = 0.0f64;
    for a in 0..20 {
        for b in (0..20).filter(|&b| b != a) {
            pairs += 1.0 - cos(a, b) as f64;
        }
    }
    let naive = pairs / (20.0 * 19.0);
    let metric = small.metric("cosine_diversity").as_f64().unwrap();
    assert!((metric - naive).abs() < 1e-5, "{metric} vs {naive}");
    assert!((0.3..1.0).contains(&metric), "real stories: {metric}");
    // The sample is seeded and a larger one extends a smaller one.
    let big = read(&run(30, 3).upstream("embed", vec![])).unwrap();
    assert_eq!(big.rows[..20], emb.rows[..]);
    assert_eq!(big.row(5), emb.row(5));
    let other = read(&run(20, 4).upstream("embed", vec![])).unwrap();
    assert_ne!(other.rows, emb.rows);
    // 0 or more than there are: every example.
    assert_eq!(run(0, 3).metric("n"), 60);
    assert_eq!(run(500, 3).metric("n"), 60);
    assert_eq!(emb.rows[0].origin, "real");
    assert_eq!(emb.rows[0].task, "story");
}

#[test]
fn cosine_diversity_of_known_sets() {
    let d = |v: &[f32], dim| mean_cosine_distance(v, dim).unwrap();
    // The same direction (any length): no diversity.
    assert!(d(&[1.0, 0.0, 2.0, 0.0, 0.5, 0.0], 2).abs() < 1e-12);
    // Orthogonal: distance 1; opposite: 2.
    assert!((d(&[1.0, 0.0, 0.0, 3.0], 2) - 1.0).abs() < 1e-12);
    assert!((d(&[1.0, 1.0, -1.0, -1.0], 2) - 2.0).abs() < 1e-12);
    assert_eq!(mean_cosine_distance(&[1.0, 0.0], 2), None);
    assert_eq!(mean_cosine_distance(&[], 2), None);
}

#[test]
fn text_is_input_and_target_without_context() {
    let mut e = testutil::example("q1", Task::Qa, Some("doc"), "Who?", "Him.");
    e.context = Some("a very long summary".into());
    assert_eq!(text_of(&e), "Who? Him.");
}

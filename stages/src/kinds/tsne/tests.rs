use super::*;
use crate::contracts::embeddings::{write_npy, Row, EMBEDDINGS_FILE, IDS_FILE};
use crate::testutil;
use flow_engine::Value;
use std::collections::BTreeMap;

/// `n` points of a standard normal in `dim` dimensions around `center`.
fn cluster(n: usize, dim: usize, center: f32, seed: u64) -> Vec<f32> {
    let mut rng = seeds::rng(seed, "test/cluster");
    (0..n * dim)
        .map(|_| center + normal(&mut rng) as f32)
        .collect()
}

/// Share of points whose nearest neighbour on the map has their label.
fn nn_agreement(y: &[f64], labels: &[usize]) -> f64 {
    let n = labels.len();
    let agree = (0..n)
        .filter(|&i| {
            let nearest = (0..n)
                .filter(|&j| j != i)
                .min_by(|&a, &b| {
                    let d = |j: usize| {
                        (y[2 * i] - y[2 * j]).powi(2) + (y[2 * i + 1] - y[2 * j + 1]).powi(2)
                    };
                    d(a).total_cmp(&d(b))
                })
                .unwrap();
            labels[nearest] == labels[i]
        })
        .count();
    agree as f64 / n as f64
}

/// The declared defaults, 400 iterations.
fn quick(seed: u64) -> Config {
    let p = testutil::params(&Tsne, &[("iterations", Value::Int(400))]);
    Config::from_params(&p, seed).unwrap()
}

#[test]
fn separates_two_gaussian_clusters() {
    let dim = 20;
    let mut data = cluster(100, dim, 0.0, 1);
    data.extend(cluster(100, dim, 4.0, 2));
    let labels: Vec<usize> = (0..200).map(|i| i / 100).collect();
    let fit = tsne(&data, dim, &quick(7), &mut |_| Ok(())).unwrap();
    let agreement = nn_agreement(&fit.y, &labels);
    assert!(agreement >= 0.95, "nearest-neighbour agreement {agreement}");
    // The clusters' centroids are further apart than the clusters are wide.
    let centroid = |c: usize| {
        let pts: Vec<usize> = (0..200).filter(|&i| labels[i] == c).collect();
        let m = |k: usize| pts.iter().map(|&i| fit.y[2 * i + k]).sum::<f64>() / pts.len() as f64;
        (m(0), m(1))
    };
    let (a, b) = (centroid(0), centroid(1));
    let gap = ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
    assert!(gap > fit.scale, "gap {gap}, scale {}", fit.scale);
    assert!(fit.kl.is_finite() && fit.kl > 0.0);
}

#[test]
fn a_seed_gives_one_map_on_any_number_of_threads() {
    let dim = 8;
    let mut data = cluster(60, dim, 0.0, 3);
    data.extend(cluster(60, dim, 3.0, 4));
    let config = Config {
        iterations: 120,
        exaggeration_iterations: 50,
        ..quick(11)
    };
    let on = |threads: usize, config: &Config| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| tsne(&data, dim, config, &mut |_| Ok(())).unwrap().y)
    };
    let one = on(1, &config);
    assert_eq!(one, on(2, &config));
    assert_eq!(one, on(1, &config));
    let other = on(
        1,
        &Config {
            seed: 12,
            ..config.clone()
        },
    );
    assert_ne!(one, other);
}

#[test]
fn perplexity_search_hits_its_target() {
    let d: Vec<(f64, usize)> = (0..90).map(|j| (j as f64 * 0.1, j)).collect();
    let p = conditional_row(&d, 30.0);
    let entropy: f64 = -p
        .iter()
        .filter(|&&x| x > 0.0)
        .map(|x| x * x.ln())
        .sum::<f64>();
    assert!((entropy.exp() - 30.0).abs() < 0.01, "{}", entropy.exp());
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
}

#[test]
fn too_few_points_and_nan_are_errors() {
    let err = tsne(&[0.0; 4], 4, &quick(1), &mut |_| Ok(()));
    assert!(err.is_err());
    let mut data = cluster(5, 2, 0.0, 1);
    data[3] = f32::NAN;
    let err = tsne(&data, 2, &quick(1), &mut |_| Ok(())).err().unwrap();
    assert!(err.to_string().contains("NaN"), "{err}");
}

/// An upstream `embed` instance holding `data` (n x dim).
fn embed_upstream(
    dir: &std::path::Path,
    instance: &str,
    bindings: Vec<(String, Value)>,
    data: &[f32],
    dim: usize,
) -> Upstream {
    let n = data.len() / dim;
    let npy = dir.join(format!("{instance}.npy"));
    write_npy(&npy, data, n, dim).unwrap();
    let rows: Vec<Row> = (0..n)
        .map(|i| Row {
            id: format!("{instance}-{i}"),
            task: "story".into(),
            origin: "real".into(),
        })
        .collect();
    let ids = dir.join(format!("{instance}.json"));
    std::fs::write(&ids, serde_json::to_string(&rows).unwrap()).unwrap();
    Upstream {
        instance: instance.into(),
        bindings,
        files: BTreeMap::from([
            (EMBEDDINGS_FILE.to_string(), npy),
            (IDS_FILE.to_string(), ids),
        ]),
        metrics: Default::default(),
    }
}

#[test]
fn stage_writes_points_and_series_labelled_by_bindings() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 10;
    let real = embed_upstream(
        dir.path(),
        "embed_real",
        vec![],
        &cluster(30, dim, 0.0, 1),
        dim,
    );
    let gen = embed_upstream(
        dir.path(),
        "embed_gen@level=2",
        vec![("level".into(), Value::Int(2))],
        &cluster(20, dim, 5.0, 2),
        dim,
    );
    let params = testutil::params(
        &Tsne,
        &[
            ("from", Value::from(vec!["embed_real", "embed_gen"])),
            ("perplexity", Value::Float(5.0)),
            ("iterations", Value::Int(200)),
        ],
    );
    let inputs = testutil::inputs(vec![("from", real), ("from", gen)]);
    let ran = testutil::run(&Tsne, &params, inputs, 5, None).unwrap();
    assert_eq!(ran.metric("n"), 50);
    assert_eq!(ran.metric("series"), 2);
    let points = std::fs::read_to_string(ran.file(POINTS_FILE)).unwrap();
    let lines: Vec<&str> = points.lines().collect();
    assert_eq!(lines[0], "series,instance,id,origin,x,y");
    assert_eq!(lines.len(), 51);
    assert!(
        lines[1].starts_with("embed_real,embed_real,embed_real-0,real,"),
        "{}",
        lines[1]
    );
    assert!(
        lines[31].starts_with("level=2,embed_gen@level=2,"),
        "{}",
        lines[31]
    );
    let series = std::fs::read_to_string(ran.file(SERIES_FILE)).unwrap();
    assert_eq!(series.lines().count(), 3, "{series}");
    // Mismatched dimensions are a user error, not a panic.
    let a = embed_upstream(dir.path(), "a", vec![], &cluster(5, 4, 0.0, 1), 4);
    let b = embed_upstream(dir.path(), "b", vec![], &cluster(5, 3, 0.0, 1), 3);
    let err = testutil::run(
        &Tsne,
        &params,
        testutil::inputs(vec![("from", a), ("from", b)]),
        5,
        None,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("one model"), "{err}");
}

/// t-SNE time for 1000 points of 384 dimensions:
/// `cargo test --release -p flow-stages kinds::tsne::tests::time_1000 -- --ignored --nocapture`.
#[test]
#[ignore]
fn time_1000() {
    let dim = 384;
    let mut data = Vec::new();
    for c in 0..8 {
        data.extend(cluster(125, dim, c as f32, c));
    }
    let t0 = std::time::Instant::now();
    let config = Config::from_params(&testutil::params(&Tsne, &[]), 0).unwrap();
    let fit = tsne(&data, dim, &config, &mut |_| Ok(())).unwrap();
    eprintln!(
        "t-SNE: 1000 points, 384-d, 1000 iterations in {:.2}s on {} threads (KL {:.3})",
        t0.elapsed().as_secs_f64(),
        rayon::current_num_threads(),
        fit.kl
    );
}

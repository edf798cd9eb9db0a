use serde::Deserialize;

use super::*;
use crate::testutil::{minilm, real_stories};

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
/// `cargo test --release -p flow-stages encoder::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let Some(stories) = real_stories(256) else {
        return;
    };
    let Some(model) = minilm() else { return };
    let encoder = Encoder::load(DEFAULT_MODEL, &model, 256, &Device::Cpu).unwrap();
    let texts: Vec<String> = stories
        .iter()
        .map(|e| format!("{} {}", e.input, e.target))
        .collect();
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/toolkit/encoder/mpnet-fixture");
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

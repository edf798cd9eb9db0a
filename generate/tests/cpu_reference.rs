//! flow's CPU llama (`flow_generate::cpu`) against the exact model: the same
//! GGUF run by candle-transformers' llama with every weight dequantized to
//! f32 and f32 activations. Both quantized paths (flow's, and candle's stock
//! quantized one) round activations to 8 bits, so neither matches exactly;
//! flow must be at least as close as candle's, and agree on the most likely
//! token everywhere. A wrong q/k layout, rope or head grouping would be off
//! by whole units. A test binary of its own: it sets CANDLE_DEQUANTIZE_ALL.

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use flow_generate::cpu::{Cache, CpuLlama, Step};
use flow_models::{Format, ModelEnv, ModelSpec};

fn logits(model: &mut ModelWeights, tokens: &[u32], pos: usize) -> Vec<f32> {
    let x = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&x, pos)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Root mean square difference.
fn rms_diff(a: &[f32], b: &[f32]) -> f32 {
    (a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>() / a.len() as f32).sqrt()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

#[test]
fn the_cpu_llama_is_as_close_to_the_exact_model_as_candles_quantized_llama() {
    let spec = ModelSpec {
        name: Some("smollm2-135m-instruct".into()),
        format: Some(Format::Gguf),
        ..Default::default()
    };
    let m = match flow_models::resolve(&spec, &ModelEnv::from_env()) {
        Ok(m) => m,
        Err(e) if flow_models::offline_from_env() => {
            return eprintln!("skipped: offline and no copy of the model: {e}");
        }
        Err(e) => panic!("{e}"),
    };
    let tok = flow_models::load_tokenizer(&m).unwrap();
    let ids = tok
        .encode(
            "Tom found an old map in the attic. He decided to follow it to the lake, \
             where his grandfather had fished every summer.",
            false,
        )
        .unwrap()
        .get_ids()
        .to_vec();
    let path = m.weights.clone();
    let read = move || {
        let mut f = std::fs::File::open(&path).unwrap();
        let c = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
        (c, f)
    };
    let (c, mut f) = read();
    let ours = CpuLlama::from_gguf(&c, &mut f).unwrap();
    let mut quantized = ModelWeights::from_gguf(c, &mut f, &Device::Cpu).unwrap();
    // Read when candle builds its matrices (per thread, on first use).
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let exact = std::thread::spawn(move || {
        let (c, mut f) = read();
        ModelWeights::from_gguf(c, &mut f, &Device::Cpu).unwrap()
    })
    .join()
    .unwrap();
    let mut exact = exact;

    let (prompt, forced) = ids.split_at(ids.len() - 4);
    let mut cache = Cache::default();
    let (mut ours_total, mut stock_total) = (0f32, 0f32);
    for step in 0..=forced.len() {
        let (tokens, pos) = match step {
            0 => (prompt, 0),
            i => (&forced[i - 1..i], prompt.len() + i - 1),
        };
        let got = ours
            .forward(&mut [Step {
                cache: &mut cache,
                tokens,
            }])
            .unwrap()
            .remove(0);
        let want = logits(&mut exact, tokens, pos);
        let stock = logits(&mut quantized, tokens, pos);
        let (ours_off, stock_off) = (rms_diff(&got, &want), rms_diff(&stock, &want));
        eprintln!(
            "step {step}: rms logit difference to the exact model: flow {ours_off:.4}, \
             candle quantized {stock_off:.4}"
        );
        assert_eq!(
            argmax(&got),
            argmax(&want),
            "step {step}: another most likely token"
        );
        assert!(
            ours_off < 0.5,
            "step {step}: flow is off by {ours_off} (rms)"
        );
        ours_total += ours_off;
        stock_total += stock_off;
    }
    assert!(
        ours_total <= 1.1 * stock_total,
        "flow is off by {ours_total} (rms, summed over steps), candle's quantized llama by {stock_total}"
    );
}

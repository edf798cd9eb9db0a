//! Prompt-processing and generation speed of the local generator, and peak memory.
//!
//!   cargo run --release -p flow-generate --example bench -- [PROMPT_TOKENS] [GEN_TOKENS]
//!
//! Same protocol as `generate/bench/llama_cpp_bench.py`: one prompt of the given length
//! processed in one forward pass, then greedy generation token by token (EOS ignored).
//! Threads: candle's default (all cores; RAYON_NUM_THREADS to change).

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use flow_models::{Format, ModelEnv, ModelSpec};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n_prompt = args.first().copied().unwrap_or(128);
    let n_gen = args.get(1).copied().unwrap_or(128);
    let spec = ModelSpec {
        name: Some("smollm2-135m-instruct".into()),
        format: Some(Format::Gguf),
        ..Default::default()
    };
    let m = flow_models::resolve(&spec, &ModelEnv::from_env())?;
    let tok = flow_models::load_tokenizer(&m).map_err(anyhow::Error::msg)?;
    let text = "Once upon a time, in a small village by the sea, there lived an old fisherman \
                who told stories to the children every evening. "
        .repeat(16);
    let mut ids = tok
        .encode(text, false)
        .map_err(anyhow::Error::msg)?
        .get_ids()
        .to_vec();
    ids.truncate(n_prompt);
    let mut f = std::fs::File::open(&m.weights)?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut f)?;
    // FLOW_BENCH_NATIVE=1: the GGUF's own block types (the baseline: candle's Q4_1 kernel).
    let mut model = if std::env::var_os("FLOW_BENCH_NATIVE").is_some() {
        ModelWeights::from_gguf(content, &mut f, &Device::Cpu)?
    } else {
        flow_generate::load_weights(content, &mut f, &Device::Cpu)?
    };
    // Warm-up.
    let x = Tensor::new(&ids[..8], &Device::Cpu)?.unsqueeze(0)?;
    model.forward(&x, 0)?;
    model.clear_kv_cache();

    let t = Instant::now();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let logits = model.forward(&x, 0)?.squeeze(0)?;
    let pp = t.elapsed().as_secs_f64();
    let mut next = logits.argmax(0)?.to_scalar::<u32>()?;
    let t = Instant::now();
    for i in 0..n_gen {
        let x = Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward(&x, ids.len() + i)?.squeeze(0)?;
        next = logits.argmax(0)?.to_scalar::<u32>()?;
    }
    let tg = t.elapsed().as_secs_f64();
    println!(
        "candle: prompt {} tok {:.1} tok/s | gen {} tok {:.1} tok/s | peak RSS {:.0} MiB",
        ids.len(),
        ids.len() as f64 / pp,
        n_gen,
        n_gen as f64 / tg,
        peak_rss_mib()
    );
    Ok(())
}

//! Prompt-processing and generation speed of the local generator, and peak memory.
//!
//!   cargo run --release -p flow-generate --example bench -- [PROMPT_TOKENS] [GEN_TOKENS] [REPEATS]
//!
//! Same protocol as `generate/bench/llama_cpp_bench.py`: one prompt of the given length
//! processed in one forward pass into an empty cache, REPEATS times (default 5; the median
//! is reported, since one pass of a short prompt takes well under a second and this
//! machine's noise is that long), then greedy generation token by token (EOS ignored).
//! Threads: all cores (RAYON_NUM_THREADS to change). `FLOW_BENCH_CANDLE=1` runs
//! candle-transformers' quantized llama instead, as the baseline. Then batched decoding:
//! 4, 8 and 16 sequences one token each per pass (`FLOW_BENCH_SINGLE=1`: one stream only).

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use flow_generate::cpu::{Cache, CpuLlama, Step};
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
    let repeats = args.get(2).copied().unwrap_or(5).max(1);
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
    // FLOW_BENCH_CANDLE=1: candle-transformers' quantized llama on the same file (the baseline).
    if std::env::var_os("FLOW_BENCH_CANDLE").is_some() {
        let mut model = ModelWeights::from_gguf(content, &mut f, &Device::Cpu)?;
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
        report("candle-transformers", ids.len(), pp, n_gen, tg);
        return Ok(());
    }
    let model = CpuLlama::from_gguf(&content, &mut f)?;
    // Warm-up.
    model.forward(&mut [Step {
        cache: &mut Cache::default(),
        tokens: &ids[..8],
    }])?;

    let mut times = Vec::with_capacity(repeats);
    let mut last = None;
    for _ in 0..repeats {
        let mut cache = Cache::default();
        let t = Instant::now();
        let logits = model.forward(&mut [Step {
            cache: &mut cache,
            tokens: &ids,
        }])?;
        times.push(t.elapsed().as_secs_f64());
        last = Some((cache, logits));
    }
    times.sort_by(f64::total_cmp);
    let pp = times[times.len() / 2];
    let (mut cache, logits) = last.expect("at least one repeat");
    let mut next = argmax(&logits[0]);
    let t = Instant::now();
    for _ in 0..n_gen {
        let logits = model.forward(&mut [Step {
            cache: &mut cache,
            tokens: &[next],
        }])?;
        next = argmax(&logits[0]);
    }
    let tg = t.elapsed().as_secs_f64();
    report("flow", ids.len(), pp, n_gen, tg);

    // Batched decoding: `batch` sequences of the same prompt, one token each per pass
    // (FLOW_BENCH_SINGLE=1 skips it, for profiles of one stream).
    let batches: &[usize] = match std::env::var_os("FLOW_BENCH_SINGLE") {
        Some(_) => &[],
        None => &[4, 8, 16],
    };
    for &batch in batches {
        let mut caches: Vec<Cache> = (0..batch).map(|_| Cache::default()).collect();
        let mut steps: Vec<Step> = caches
            .iter_mut()
            .map(|c| Step {
                cache: c,
                tokens: &ids,
            })
            .collect();
        let logits = model.forward(&mut steps)?;
        let mut next: Vec<u32> = logits.iter().map(|l| argmax(l)).collect();
        let t = Instant::now();
        for _ in 0..n_gen {
            let mut steps: Vec<Step> = caches
                .iter_mut()
                .zip(&next)
                .map(|(c, t)| Step {
                    cache: c,
                    tokens: std::slice::from_ref(t),
                })
                .collect();
            let logits = model.forward(&mut steps)?;
            next = logits.iter().map(|l| argmax(l)).collect();
        }
        let tg = t.elapsed().as_secs_f64();
        println!(
            "flow batch {batch}: gen {} tok {:.1} tok/s | peak RSS {:.0} MiB",
            batch * n_gen,
            (batch * n_gen) as f64 / tg,
            peak_rss_mib()
        );
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn report(name: &str, n_prompt: usize, pp: f64, n_gen: usize, tg: f64) {
    println!(
        "{name}: prompt {n_prompt} tok {:.1} tok/s | gen {n_gen} tok {:.1} tok/s | peak RSS {:.0} MiB",
        n_prompt as f64 / pp,
        n_gen as f64 / tg,
        peak_rss_mib()
    );
}

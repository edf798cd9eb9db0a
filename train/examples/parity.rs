//! The Rust half of `parity/parity.py`: loads SmolLM2 from GGUF (or any
//! supported Hugging Face checkpoint folder with `--hf`), tokenizes
//! real stories, and writes everything the PyTorch + PEFT half needs to
//! repeat the same computation (token ids, the data order, the initial
//! adapter), plus its own results (base forward loss, training curve, test
//! loss, tokens/s, peak memory).
//!
//! cargo run --release -p flow-train --example parity -- \
//!     (--gguf SmolLM2-135M-Instruct.Q4_1.gguf | --hf CHECKPOINT_DIR) --stories stories.jsonl --out DIR \
//!     [--train 64] [--test 32] [--epochs 1] [--batch 8] [--lr 1e-4] [--seed 0]
//!     [--max-len 128] [--threads 2]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use flow_train::data::{self, Loss, Text};
use flow_train::lora::{Lora, LoraConfig};
use flow_train::model::Batch;
use flow_train::trainer::{self, epoch_plan, Monitor, TrainConfig};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad value for {name}")),
        None => default.with_context(|| format!("missing {name}")),
    }
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

struct Print;
impl Monitor for Print {
    fn step(&self, step: usize, total: usize, loss: f64, lr: f64) {
        eprintln!("  step {step}/{total} loss {loss:.5} lr {lr:.3e}");
    }
}

fn main() -> Result<()> {
    flow_train::limit_idle_spinning();
    let args: Vec<String> = std::env::args().collect();
    let weights: PathBuf = arg(&args, "--gguf", None).or_else(|_| arg(&args, "--hf", None))?;
    let stories: PathBuf = arg(&args, "--stories", None)?;
    let out: PathBuf = arg(&args, "--out", None)?;
    let n_train: usize = arg(&args, "--train", Some(64))?;
    let n_test: usize = arg(&args, "--test", Some(32))?;
    let epochs: usize = arg(&args, "--epochs", Some(1))?;
    let batch: usize = arg(&args, "--batch", Some(8))?;
    let lr: f64 = arg(&args, "--lr", Some(1e-4))?;
    let seed: u64 = arg(&args, "--seed", Some(0))?;
    let max_len: usize = arg(&args, "--max-len", Some(128))?;
    let threads: usize = arg(&args, "--threads", Some(2))?;
    // Off by default: dropout masks cannot match PyTorch's, so exact parity needs it off on both sides.
    let model_dropout: u8 = arg(&args, "--model-dropout", Some(0))?;
    std::fs::create_dir_all(&out)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;

    let dev = flow_train::device();
    let t0 = Instant::now();
    let loaded = flow_train::load(&weights, None, &dev)?;
    let load_s = t0.elapsed().as_secs_f64();
    let tok = &loaded.tokenizer;
    let model = loaded.model.as_ref();
    let base_name = weights
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();

    // ROCStories: input = first four sentences, target = the fifth.
    let text = std::fs::read_to_string(&stories)?;
    let mut texts = Vec::new();
    for line in text.lines().take(n_train + n_test) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let s: Vec<String> = v["sentences"]
            .as_array()
            .context("no sentences")?
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
        texts.push(Text {
            context: None,
            input: s[..4].join(" "),
            target: s[4].clone(),
        });
    }
    let encode = |t: &[Text]| -> Result<Vec<(Vec<u32>, Vec<bool>)>> {
        Ok(t.iter()
            .map(|x| data::encode(tok, x, Loss::Target, max_len))
            .collect::<Result<_, _>>()?)
    };
    let train = encode(&texts[..n_train])?;
    let test = encode(&texts[n_train..])?;

    let cfg = TrainConfig {
        lora: LoraConfig::default(),
        lr,
        epochs,
        batch_size: batch,
        seed,
        checkpoint_every: 0,
        model_dropout: model_dropout != 0,
        ..TrainConfig::default()
    };
    let plan: Vec<Vec<Vec<Vec<usize>>>> = (0..epochs)
        .map(|e| epoch_plan(&cfg, train.len(), e))
        .collect();

    let pad = tok.eos;
    // Forward parity: base model, first test batch, mean target loss and full logits' loss.
    let first: Vec<_> = test[..batch.min(test.len())].to_vec();
    let b = Batch::new(&first, pad, &dev)?;
    let (base_loss, logits_stats) = pool.install(|| -> Result<(f64, Vec<f64>)> {
        let s = flow_train::model::scalar(&model.loss_sum(&b, None, None)?)?;
        let logits = model.logits(&b.ids, None)?;
        let l0: Vec<f32> = logits.get(0)?.get(0)?.narrow(0, 0, 8)?.to_vec1()?;
        Ok((
            s / b.n_labels as f64,
            l0.into_iter().map(f64::from).collect(),
        ))
    })?;
    eprintln!("base loss on the first test batch: {base_loss:.6}");

    let lora = Lora::init(&model.targets(), &cfg.lora, seed, &dev)?;
    trainer::save_peft(&lora, &out.join("init_adapter"), &base_name)?;
    let (base_test_sum, base_test_n) =
        pool.install(|| trainer::eval_sum(model, None, &test, batch, pad, &trainer::Quiet))?;

    let report = pool.install(|| trainer::train(model, &lora, &train, &cfg, pad, None, &Print))?;
    let (test_sum, test_n) =
        pool.install(|| trainer::eval_sum(model, Some(&lora), &test, batch, pad, &trainer::Quiet))?;
    trainer::save_peft(&lora, &out.join("final_adapter"), &base_name)?;

    let tokens = serde_json::json!({
        "train": train.iter().map(|(i, f)| serde_json::json!({"ids": i, "target": f})).collect::<Vec<_>>(),
        "test": test.iter().map(|(i, f)| serde_json::json!({"ids": i, "target": f})).collect::<Vec<_>>(),
        "plan": plan,
        "pad": pad,
        "first_batch": batch.min(test.len()),
    });
    std::fs::write(out.join("tokens.json"), serde_json::to_string(&tokens)?)?;
    let res = serde_json::json!({
        "config": cfg,
        "load_s": load_s,
        "base_loss_first_batch": base_loss,
        "logits_first_token": logits_stats,
        "base_test_loss": base_test_sum / base_test_n as f64,
        "test_loss": test_sum / test_n as f64,
        "test_tokens": test_n,
        "losses": report.losses,
        "train_seconds": report.seconds,
        "train_tokens": report.tokens_run,
        "tokens_per_s": report.tokens_per_s(),
        "peak_rss_mb": peak_rss_mb(),
        "threads": threads,
    });
    std::fs::write(out.join("rust.json"), serde_json::to_string_pretty(&res)?)?;
    println!("{}", serde_json::to_string_pretty(&res)?);
    Ok(())
}

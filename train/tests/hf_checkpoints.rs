//! Hugging Face checkpoints of every supported architecture against
//! transformers and PEFT: tiny random models written by
//! `parity/make_fixtures.py` (llama with Llama 3 RoPE scaling, GPT-2, OPT
//! pre-norm, OPT post-norm with project_in/out), with transformers' logits
//! for the base model and for base + a PEFT adapter on PEFT's default
//! targets. Loading, the forward pass, PEFT names and PEFT's defaults must
//! all agree; every LoRA gradient must match finite differences.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use flow_train::lora::{Lora, LoraConfig};
use flow_train::model::CausalLm;
use flow_train::{hf, trainer};

mod common;

const FIXTURES: [&str; 4] = ["llama", "gpt2", "opt", "opt-postnorm"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Expected {
    ids: Tensor,
    base: Vec<f32>,
    adapter: Vec<f32>,
    targets: Vec<String>,
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows: Vec<Vec<u32>> = serde_json::from_value(j["ids"].clone()).unwrap();
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<u32> = rows.into_iter().flatten().collect();
    Expected {
        ids: Tensor::from_vec(flat, (b, t), &Device::Cpu).unwrap(),
        base: serde_json::from_value(j["base_logits"].clone()).unwrap(),
        adapter: serde_json::from_value(j["adapter_logits"].clone()).unwrap(),
        targets: serde_json::from_value(j["targets"].clone()).unwrap(),
    }
}

fn logits(model: &dyn CausalLm, ids: &Tensor, lora: Option<&Lora>) -> Vec<f32> {
    model
        .logits(ids, lora)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs_diff(model: &dyn CausalLm, ids: &Tensor, lora: Option<&Lora>, want: &[f32]) -> f32 {
    let got = logits(model, ids, lora);
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn logits_match_transformers_for_every_architecture() {
    for name in FIXTURES {
        let dev = Device::Cpu;
        let model = hf::load_model(&fixture(name), &dev, DType::F32).unwrap();
        let e = expected(name);
        let scale = e.base.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = max_abs_diff(model.as_ref(), &e.ids, None, &e.base);
        assert!(
            diff < 1e-5 * scale.max(1.0),
            "{name}: base logits differ from transformers by {diff} (scale {scale})"
        );
    }
}

#[test]
fn peft_adapters_load_and_match_peft_for_every_architecture() {
    for name in FIXTURES {
        let dev = Device::Cpu;
        let model = hf::load_model(&fixture(name), &dev, DType::F32).unwrap();
        let e = expected(name);
        let lora = trainer::load_peft(&fixture(name).join("adapter"), &dev).unwrap();
        lora.check_fits(&model.targets()).unwrap();
        // PEFT writes its target set in no particular order.
        let mut saved = lora.config.target_modules.clone();
        saved.sort();
        assert_eq!(saved, e.targets, "{name}");
        let diff = max_abs_diff(model.as_ref(), &e.ids, Some(&lora), &e.adapter);
        let moved = max_abs_diff(model.as_ref(), &e.ids, None, &e.adapter);
        assert!(
            diff < 1e-5,
            "{name}: adapter logits differ from PEFT by {diff}"
        );
        assert!(
            moved > 100.0 * diff.max(1e-7),
            "{name}: the adapter moves the logits by {moved}, too little to tell it from {diff}"
        );

        // A fresh adapter on the default targets is laid out as PEFT's.
        let fresh = Lora::init(&model.targets(), &LoraConfig::default(), 0, &dev).unwrap();
        let mut chosen = fresh.config.target_modules.clone();
        chosen.sort();
        assert_eq!(chosen, e.targets, "{name}");
        let mut want: Vec<String> = lora.named_vars().into_iter().map(|v| v.0).collect();
        let mut got: Vec<String> = fresh.named_vars().into_iter().map(|v| v.0).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{name}: PEFT tensor names");
    }
}

#[test]
fn an_adapter_of_another_architecture_is_refused() {
    let dev = Device::Cpu;
    let llama = hf::load_model(&fixture("llama"), &dev, DType::F32).unwrap();
    let gpt2_adapter = trainer::load_peft(&fixture("gpt2").join("adapter"), &dev).unwrap();
    let err = gpt2_adapter
        .check_fits(&llama.targets())
        .unwrap_err()
        .to_string();
    assert!(err.contains("another architecture"), "{err}");
    let opt = hf::load_model(&fixture("opt"), &dev, DType::F32).unwrap();
    let err = Lora::init(
        &opt.targets(),
        &LoraConfig {
            target_modules: vec!["c_attn".into()],
            ..LoraConfig::default()
        },
        0,
        &dev,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("c_attn") && err.contains("out_proj"), "{err}");
}

#[test]
fn every_lora_gradient_matches_finite_differences_for_every_architecture() {
    for name in FIXTURES {
        let model = hf::load_model(&fixture(name), &Device::Cpu, DType::F64).unwrap();
        let targets = model.targets();
        let all = LoraConfig {
            rank: 2,
            alpha: 4.0,
            dropout: 0.0,
            target_modules: targets.modules.iter().map(|m| m.path.to_string()).collect(),
        };
        let n = common::check_lora_gradients(model.as_ref(), &all);
        assert_eq!(n, targets.layers * targets.modules.len() * 2, "{name}");
    }
}

/// A checkpoint split into shards with an index loads as the single file.
#[test]
fn sharded_checkpoints_load_like_single_files() {
    let dev = Device::Cpu;
    let src = fixture("llama");
    let all = candle_core::safetensors::load(src.join("model.safetensors"), &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut map = serde_json::Map::new();
    let mut shards = [
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    ];
    for (i, (name, t)) in all.iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        map.insert(name.clone(), serde_json::Value::String(file));
        shards[i % 2].insert(name.clone(), t.clone());
    }
    for (i, shard) in shards.iter().enumerate() {
        let path = dir
            .path()
            .join(format!("model-0000{}-of-00002.safetensors", i + 1));
        candle_core::safetensors::save(shard, path).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();

    let e = expected("llama");
    let single = hf::load_model(&src, &dev, DType::F32).unwrap();
    let sharded = hf::load_model(dir.path(), &dev, DType::F32).unwrap();
    assert_eq!(
        logits(single.as_ref(), &e.ids, None),
        logits(sharded.as_ref(), &e.ids, None)
    );

    // A shard the index names but that is missing is an error naming it.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = hf::load_model(dir.path(), &dev, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

/// GPT-2's own dropout (0.1 in its config) acts while training, as in
/// PyTorch's training mode, reproducibly under a seed; never when
/// evaluating, and not when switched off.
#[test]
fn model_dropout_acts_only_while_training() {
    use flow_train::lora::Dropout;
    use flow_train::model::Batch;
    let dev = Device::Cpu;
    let model = hf::load_model(&fixture("gpt2"), &dev, DType::F32).unwrap();
    let batch = Batch::new(&common::seqs(4, 96, 1), 0, &dev).unwrap();
    let loss = |d: Option<&mut Dropout>| -> f32 {
        model
            .loss_sum(&batch, None, d)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let eval = loss(None);
    let off = loss(Some(&mut Dropout::new(0.0, false, 5)));
    let on = loss(Some(&mut Dropout::new(0.0, true, 5)));
    let again = loss(Some(&mut Dropout::new(0.0, true, 5)));
    assert_eq!(eval, off);
    assert_ne!(eval, on);
    assert_eq!(on, again);
}

//! Hostile model files fail training's loaders with an error naming the file
//! and the field, never a panic or an abort: GGUF hyperparameters that do
//! not match the tensors, config.json counts beyond the checkpoint's
//! tensors; and a bounded fuzz run of both loaders (`FLOW_FUZZ_SECS`,
//! `FLOW_FUZZ_ITERS`, `FLOW_FUZZ_SEED`: see `flow_models::guard::fuzz`).

use std::path::{Path, PathBuf};

use candle_core::Device;
use flow_models::guard::fuzz::{self, Budget, Mutator};
use rand::Rng;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `b` with the u32 value of metadata `key` set to `v`.
fn with_meta_u32(mut b: Vec<u8>, key: &str, v: u32) -> Vec<u8> {
    let k = key.as_bytes();
    let i = b.windows(k.len()).position(|w| w == k).unwrap() + k.len() + 4;
    b[i..i + 4].copy_from_slice(&v.to_le_bytes());
    b
}

fn load_err(path: &Path) -> String {
    match flow_train::load(path, None, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn the_tiny_gguf_trains_and_hostile_hyperparameters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    std::fs::write(&p, fuzz::tiny_llama_gguf()).unwrap();
    let loaded = flow_train::load(&p, None, &Device::Cpu).unwrap();
    assert_eq!(loaded.model.vocab_size(), 263);
    for (key, words) in [
        (
            "llama.block_count",
            "`llama.block_count` = 4294967295 but the file holds 2 blocks",
        ),
        (
            "llama.rope.dimension_count",
            "= 4294967295 but a head is 8 wide",
        ),
        ("llama.context_length", "= 4294967295 (must be 1 to"),
        ("llama.attention.head_count", "does not divide"),
        ("general.alignment", "must be a power of two"),
    ] {
        std::fs::write(&p, with_meta_u32(fuzz::tiny_llama_gguf(), key, u32::MAX)).unwrap();
        let err = load_err(&p);
        assert!(
            err.contains(&format!("model file {}", p.display())) && err.contains(words),
            "{key}: {err}"
        );
    }
}

/// A copy of the `name` fixture checkpoint, with `config` edited.
fn checkpoint(dir: &Path, name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixture(name).join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir.join("model.safetensors")
}

#[test]
fn config_json_counts_beyond_the_checkpoint_are_refused() {
    for (name, key, v, words) in [
        (
            "llama",
            "num_hidden_layers",
            4294967295u64,
            "`num_hidden_layers` = 4294967295 but the checkpoint holds 2 layers",
        ),
        ("llama", "num_attention_heads", 0, "must be 1 to"),
        (
            "llama",
            "vocab_size",
            u64::MAX,
            "no tensor of the checkpoint",
        ),
        ("gpt2", "n_layer", 1 << 40, "but the checkpoint holds"),
        ("gpt2", "n_embd", 1 << 40, "no tensor of the checkpoint"),
        ("opt", "max_position_embeddings", u64::MAX, "at most"),
        ("opt", "ffn_dim", 1 << 33, "no tensor of the checkpoint"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let w = checkpoint(dir.path(), name, |c| c[key] = v.into());
        let err = load_err(&w);
        assert!(
            err.contains("config.json") && err.contains(words),
            "{name} {key}: {err}"
        );
    }
}

#[test]
fn a_tokenizer_padding_to_2_pow_40_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = checkpoint(dir.path(), "llama", |_| {});
    let p = dir.path().join("tokenizer.json");
    let mut tk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    tk["padding"] = serde_json::json!({
        "strategy": {"Fixed": 1u64 << 40}, "direction": "Right", "pad_to_multiple_of": null,
        "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>",
    });
    std::fs::write(&p, tk.to_string()).unwrap();
    let err = load_err(&w);
    assert!(
        err.contains("tokenizer.json") && err.contains("`padding.strategy.Fixed` = 1099511627776"),
        "{err}"
    );
}

#[test]
fn hostile_safetensors_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = checkpoint(dir.path(), "llama", |_| {});
    let mut b = std::fs::read(&w).unwrap();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&w, &b).unwrap();
    let err = load_err(&w);
    assert!(
        err.contains("model.safetensors") && err.contains("header length 18446744073709551615"),
        "{err}"
    );
}

#[test]
fn fuzz_gguf_training_load() {
    let seed = fuzz::tiny_llama_gguf();
    let (hot, fields) = fuzz::gguf_fields(&seed);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fuzz.gguf");
    let r = fuzz::run(
        "train-gguf",
        Budget::from_env(5.0),
        |m: &mut Mutator| m.mutate(&seed, hot, &fields),
        |b| {
            std::fs::write(&p, b).unwrap();
            flow_train::load(&p, None, &Device::Cpu).is_ok()
        },
    );
    assert!(r.inputs > 0);
}

#[test]
fn fuzz_hf_checkpoint_load() {
    const NAMES: [&str; 3] = ["llama", "gpt2", "opt"];
    let dirs: Vec<tempfile::TempDir> = NAMES.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let mut seeds = Vec::new();
    for (name, dir) in NAMES.iter().zip(&dirs) {
        let w = checkpoint(dir.path(), name, |_| {});
        let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        seeds.push((std::fs::read(&w).unwrap(), config, w));
    }
    // An input: the fixture's index, then which file was mutated, then it.
    let r = fuzz::run(
        "train-hf",
        Budget::from_env(5.0),
        |m: &mut Mutator| {
            let i = m.rng.random_range(0..NAMES.len());
            let (weights, config, _) = &seeds[i];
            let mut out = vec![i as u8];
            match m.rng.random_bool(0.3) {
                true => {
                    out.push(b'c');
                    out.extend(m.mutate_json(config).into_bytes());
                }
                false => {
                    out.push(b'w');
                    out.extend(m.mutate_safetensors(weights));
                }
            }
            out
        },
        |b| {
            let (weights, config, w) = &seeds[b[0] as usize];
            let dir = w.parent().unwrap();
            let (new_weights, new_config): (&[u8], &[u8]) = match b[1] {
                b'c' => (weights, &b[2..]),
                _ => (&b[2..], config.as_bytes()),
            };
            std::fs::write(w, new_weights).unwrap();
            std::fs::write(dir.join("config.json"), new_config).unwrap();
            flow_train::load(w, None, &Device::Cpu).is_ok()
        },
    );
    assert!(r.inputs > 0);
}

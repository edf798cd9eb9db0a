//! Hostile encoder checkpoints fail `embed`'s load with an error naming the
//! file and the field, never a panic or an abort: before the checks,
//! `num_hidden_layers` = 4294967295 aborted on a failed allocation (the
//! MPNet encoder reserves its layers up front), `num_attention_heads` = 0
//! divided by zero, and a `pad_token_id` past the positions underflowed.

use std::path::Path;

use candle_core::Device;
use flow_models::{Format, ResolvedModel, TokenizerSource};
use flow_stages::toolkit::encoder::Encoder;

/// A copy of the tiny MPNet fixture with `config.json` edited; no tokenizer,
/// so a checkpoint that passes every check fails on the tokenizer.
fn checkpoint(dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> ResolvedModel {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/toolkit/encoder/mpnet-fixture");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    ResolvedModel {
        name: "tiny-mpnet".into(),
        weights: dir.join("model.safetensors"),
        tokenizer: TokenizerSource::File(dir.join("tokenizer.json")),
        format: Format::Safetensors,
        arch: None,
        source: "path".into(),
    }
}

fn load_err(m: &ResolvedModel) -> String {
    match Encoder::load("tiny-mpnet", m, 64, &Device::Cpu) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_fixture_passes_the_checks() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(&checkpoint(dir.path(), |_| {}));
    assert!(err.contains("tokenizer"), "{err}");
}

#[test]
fn hostile_configs_are_refused() {
    for (key, v, words) in [
        (
            "num_hidden_layers",
            serde_json::json!(4294967295u64),
            "`num_hidden_layers` = 4294967295 but the checkpoint holds 2 layers",
        ),
        ("num_attention_heads", serde_json::json!(0), "must be 1 to"),
        (
            "vocab_size",
            serde_json::json!(u64::MAX),
            "no tensor of the checkpoint",
        ),
        (
            "pad_token_id",
            serde_json::json!(1_000_000),
            "has positions for (0)",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let err = load_err(&checkpoint(dir.path(), |c| c[key] = v.clone()));
        assert!(err.contains(words), "{key}: {err}");
    }
}

#[test]
fn a_hostile_safetensors_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = checkpoint(dir.path(), |_| {});
    let mut b = std::fs::read(&m.weights).unwrap();
    b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&m.weights, b).unwrap();
    let err = load_err(&m);
    assert!(
        err.contains("model.safetensors") && err.contains("header length 1099511627776"),
        "{err}"
    );
}

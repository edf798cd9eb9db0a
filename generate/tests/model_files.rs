//! Hostile GGUF files fail the local generator's load with an error naming
//! the file and the field, never a panic or an abort (before the checks,
//! `block_count` or `rope.dimension_count` = 0xFFFFFFFF aborted on a failed
//! allocation, `general.alignment = 0` panicked in candle's reader); and a
//! bounded fuzz run of the load (`FLOW_FUZZ_SECS`, `FLOW_FUZZ_ITERS`,
//! `FLOW_FUZZ_SEED`: see `flow_models::guard::fuzz`).

use std::path::Path;

use flow_generate::LocalGenerator;
use flow_models::guard::fuzz::{self, Budget, Mutator};
use flow_models::{Format, ResolvedModel, TokenizerSource};

fn resolved(path: &Path) -> ResolvedModel {
    ResolvedModel {
        name: "tiny".into(),
        weights: path.to_path_buf(),
        tokenizer: TokenizerSource::GgufEmbedded,
        format: Format::Gguf,
        arch: Some("llama".into()),
        source: "path".into(),
    }
}

fn load(path: &Path) -> flow_generate::Result<LocalGenerator> {
    LocalGenerator::load(&resolved(path), Some("test".into()))
}

fn with_meta_u32(mut b: Vec<u8>, key: &str, v: u32) -> Vec<u8> {
    let k = key.as_bytes();
    let i = b.windows(k.len()).position(|w| w == k).unwrap() + k.len() + 4;
    b[i..i + 4].copy_from_slice(&v.to_le_bytes());
    b
}

#[test]
fn the_tiny_gguf_loads_and_hostile_hyperparameters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    std::fs::write(&p, fuzz::tiny_llama_gguf()).unwrap();
    let g = load(&p).unwrap();
    assert_eq!(g.tokenizer().get_vocab_size(true), 263);
    for (key, v, words) in [
        (
            "llama.block_count",
            u32::MAX,
            "`llama.block_count` = 4294967295 but the file holds 2 blocks",
        ),
        (
            "llama.rope.dimension_count",
            u32::MAX,
            "`llama.rope.dimension_count` = 4294967295 but a head is 8 wide",
        ),
        ("llama.attention.head_count_kv", 0, "does not divide"),
        ("llama.embedding_length", u32::MAX, "is 32 wide"),
        ("general.alignment", 0, "`general.alignment` = 0"),
    ] {
        std::fs::write(&p, with_meta_u32(fuzz::tiny_llama_gguf(), key, v)).unwrap();
        let err = match load(&p) {
            Ok(_) => panic!("{key} = {v} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("model file {}", p.display())) && err.contains(words),
            "{key}: {err}"
        );
    }
}

#[test]
fn fuzz_local_generator_load() {
    let seed = fuzz::tiny_llama_gguf();
    let (hot, fields) = fuzz::gguf_fields(&seed);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fuzz.gguf");
    let r = fuzz::run(
        "generate-gguf",
        Budget::from_env(5.0),
        |m: &mut Mutator| m.mutate(&seed, hot, &fields),
        |b| {
            std::fs::write(&p, b).unwrap();
            load(&p).is_ok()
        },
    );
    assert!(r.inputs > 0);
}

#[test]
fn stacked_projections_of_different_widths_are_an_error() {
    // blk.0.attn_k.weight is 16 rows of 32: make it 8 rows of 64 (the same bytes).
    let mut b = fuzz::tiny_llama_gguf();
    let name = b"blk.0.attn_k.weight";
    let mut prefixed = (name.len() as u64).to_le_bytes().to_vec();
    prefixed.extend_from_slice(name);
    let at = b
        .windows(prefixed.len())
        .position(|w| w == prefixed)
        .unwrap()
        + prefixed.len();
    assert_eq!(b[at..at + 4], 2u32.to_le_bytes());
    b[at + 4..at + 12].copy_from_slice(&64u64.to_le_bytes());
    b[at + 12..at + 20].copy_from_slice(&8u64.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    std::fs::write(&p, b).unwrap();
    let err = match load(&p) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("different widths [32, 64, 32]"), "{err}");
}

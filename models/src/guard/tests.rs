//! Hostile model files fail with an error naming the field, never a panic or
//! an abort; and a bounded fuzz run of the guarded readers.
//!
//! Before these checks, `general.alignment = 0` panicked in candle's reader
//! (`position.div_ceil(0)`: attempt to divide by zero), and `block_count` or
//! `rope.dimension_count` = 0xFFFFFFFF aborted on a failed allocation in the
//! CPU generator (`Vec::with_capacity(n_layer)` of ~4G layers; rope tables of
//! 2G frequencies per position) and in training's model builders.

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::Device;
use rand::Rng as _;

use super::fuzz::{self, Budget, Mutator};
use super::*;

const P: &str = "/models/tiny.gguf";

fn path() -> &'static Path {
    Path::new(P)
}

/// The offset of the value of metadata `key` (after its key and type).
fn value_at(b: &[u8], key: &str) -> usize {
    let k = key.as_bytes();
    let i = b
        .windows(k.len())
        .position(|w| w == k)
        .unwrap_or_else(|| panic!("no `{key}` in the file"));
    i + k.len() + 4
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn with_meta_u32(key: &str, v: u32) -> Vec<u8> {
    let mut b = fuzz::tiny_llama_gguf();
    let at = value_at(&b, key);
    put_u32(&mut b, at, v);
    b
}

fn header_err(b: &[u8]) -> FileError {
    check_gguf_reader(Cursor::new(b), path()).expect_err("the check must fail")
}

/// The error of reading `b` and checking its llama hyperparameters.
fn hparams_err(b: &[u8]) -> FileError {
    let c = read_gguf_from(&mut Cursor::new(b), path()).expect("the header is valid");
    check_llama_hparams(&c, path()).expect_err("the hyperparameters are not")
}

fn assert_names(e: &FileError, field: &str, words: &[&str]) {
    let msg = e.to_string();
    assert_eq!(e.field(), Some(field), "{msg}");
    assert!(msg.starts_with(&format!("model file {P}: ")), "{msg}");
    for w in words {
        assert!(msg.contains(w), "`{w}` not in: {msg}");
    }
}

#[test]
fn the_tiny_gguf_passes_and_candle_reads_it() {
    let b = fuzz::tiny_llama_gguf();
    let s = check_gguf_reader(Cursor::new(&b), path()).unwrap();
    assert_eq!((s.version, s.alignment), (2, 32));
    assert_eq!(s.tensors.len(), 2 + 9 * fuzz::TINY.n_layer);
    let c = read_gguf_from(&mut Cursor::new(&b), path()).unwrap();
    assert_eq!(c.tensor_data_offset, s.data_offset);
    let h = check_llama_hparams(&c, path()).unwrap();
    let t = &fuzz::TINY;
    assert_eq!(
        (h.n_layer, h.n_embd, h.n_head, h.n_kv_head, h.n_ff),
        (t.n_layer, t.n_embd, t.n_head, t.n_kv_head, t.n_ff)
    );
    assert_eq!((h.head_dim, h.rope_dim, h.context), (8, Some(8), Some(64)));
    let mut r = Cursor::new(&b);
    for name in c.tensor_infos.keys() {
        c.tensor(&mut r, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
    }
    // The header-field walker of the fuzz harness agrees on the header's end.
    let (end, _) = fuzz::gguf_fields(&b);
    assert_eq!(s.data_offset, (end as u64).div_ceil(32) * 32);
}

#[test]
fn block_count_0xffffffff_names_the_field_and_the_blocks_present() {
    let e = hparams_err(&with_meta_u32("llama.block_count", u32::MAX));
    assert_names(
        &e,
        "metadata `llama.block_count`",
        &["`llama.block_count` = 4294967295 but the file holds 2 blocks"],
    );
    let e = hparams_err(&with_meta_u32("llama.block_count", 1));
    assert_names(&e, "metadata `llama.block_count`", &["= 1 but"]);
}

#[test]
fn rope_dimension_count_0xffffffff_is_refused() {
    let e = hparams_err(&with_meta_u32("llama.rope.dimension_count", u32::MAX));
    assert_names(
        &e,
        "metadata `llama.rope.dimension_count`",
        &["4294967295", "a head is 8 wide"],
    );
    let e = hparams_err(&with_meta_u32("llama.rope.dimension_count", 7));
    assert_names(&e, "metadata `llama.rope.dimension_count`", &["= 7"]);
}

#[test]
fn alignment_zero_or_not_a_power_of_two_is_refused() {
    for a in [0, 3, 48] {
        let e = header_err(&with_meta_u32("general.alignment", a));
        assert_names(
            &e,
            "metadata `general.alignment`",
            &[&format!("`general.alignment` = {a}"), "power of two"],
        );
    }
    // A power of two that puts the data past the end fails on the tensors.
    let e = header_err(&with_meta_u32("general.alignment", 1 << 31));
    assert!(e.field().unwrap().starts_with("tensor `"), "{e}");
}

#[test]
fn other_hyperparameters_are_checked_against_the_tensors() {
    let cases: [(&str, u32, &str); 9] = [
        ("llama.attention.head_count", 0, "does not divide"),
        ("llama.attention.head_count", u32::MAX, "does not divide"),
        ("llama.attention.head_count", 5, "does not divide"),
        ("llama.attention.head_count_kv", 3, "does not divide the 4"),
        ("llama.embedding_length", u32::MAX, "is 32 wide"),
        ("llama.feed_forward_length", u32::MAX, "has 64 rows"),
        ("llama.context_length", u32::MAX, "must be 1 to"),
        ("llama.vocab_size", u32::MAX, "rows"),
        (
            "tokenizer.ggml.eos_token_id",
            u32::MAX,
            "the vocabulary has",
        ),
    ];
    for (key, v, words) in cases {
        let e = hparams_err(&with_meta_u32(key, v));
        assert_names(&e, &format!("metadata `{key}`"), &[words]);
    }
}

#[test]
fn huge_counts_and_lengths_are_refused_before_anything_is_allocated() {
    let seed = fuzz::tiny_llama_gguf();
    // The tensor and metadata counts.
    for (at, field) in [(8, "tensor count"), (16, "metadata count")] {
        for v in [u64::MAX, 1 << 40, 0xffff_ffff] {
            let mut b = seed.clone();
            put_u64(&mut b, at, v);
            assert_names(&header_err(&b), field, &[&v.to_string()]);
        }
    }
    // A string value's length.
    let mut b = seed.clone();
    let at = value_at(&b, "general.name");
    put_u64(&mut b, at, u64::MAX);
    assert_names(&header_err(&b), "metadata `general.name`", &["a string of"]);
    let mut b = seed.clone();
    put_u64(&mut b, at, 1 << 20);
    assert_names(
        &header_err(&b),
        "metadata `general.name`",
        &["needs 1048576 bytes", "the file ends"],
    );
    // An array's length.
    let mut b = seed.clone();
    let at = value_at(&b, "tokenizer.ggml.tokens") + 4;
    put_u64(&mut b, at, 0xffff_ffff);
    assert_names(
        &header_err(&b),
        "metadata `tokenizer.ggml.tokens`",
        &["4294967295"],
    );
    let mut b = seed.clone();
    put_u64(&mut b, at, 1 << 22);
    assert_names(
        &header_err(&b),
        "metadata `tokenizer.ggml.tokens`",
        &["an array of 4194304 strings"],
    );
    // A key's length.
    let mut b = seed.clone();
    put_u64(&mut b, 24, 1 << 33);
    assert_names(
        &header_err(&b),
        "metadata key #0",
        &["a string of 8589934592"],
    );
}

/// A tensor's name and the offset of its dimension count.
fn first_tensor(b: &[u8]) -> (usize, String) {
    let s = check_gguf_reader(Cursor::new(b), path()).unwrap();
    let name = s.tensors.keys().next().unwrap().clone();
    let key = name.as_bytes();
    // The name, after its length, in the tensor index.
    let mut prefixed = (key.len() as u64).to_le_bytes().to_vec();
    prefixed.extend_from_slice(key);
    let i = b
        .windows(prefixed.len())
        .position(|w| w == prefixed)
        .unwrap();
    (i + prefixed.len(), name)
}

#[test]
fn tensor_entries_are_checked() {
    let seed = fuzz::tiny_llama_gguf();
    let (at, name) = first_tensor(&seed);
    let n_dims = u32::from_le_bytes(seed[at..at + 4].try_into().unwrap()) as usize;
    let field = format!("tensor `{name}`");
    // Too many dimensions.
    let mut b = seed.clone();
    put_u32(&mut b, at, 5);
    assert_names(&header_err(&b), &field, &["5 dimensions"]);
    // Dimensions whose product overflows.
    let mut b = seed.clone();
    for d in 0..n_dims {
        put_u64(&mut b, at + 4 + 8 * d, 1 << 40);
    }
    assert_names(&header_err(&b), &field, &["overflow"]);
    // A zero dimension.
    let mut b = seed.clone();
    put_u64(&mut b, at + 4, 0);
    assert_names(&header_err(&b), &field, &["dimension of 0"]);
    // An unknown type.
    let ty_at = at + 4 + 8 * n_dims;
    let mut b = seed.clone();
    put_u32(&mut b, ty_at, 77);
    assert_names(&header_err(&b), &field, &["unknown ggml type 77"]);
    // Data past the end.
    for off in [1 << 20, u64::MAX - 3] {
        let mut b = seed.clone();
        put_u64(&mut b, ty_at + 4, off);
        assert_names(&header_err(&b), &field, &["past the end of the file"]);
    }
}

#[test]
fn truncated_files_fail_at_every_length() {
    let seed = fuzz::tiny_llama_gguf();
    let (header_end, _) = fuzz::gguf_fields(&seed);
    let mut lengths: Vec<usize> = (0..header_end).step_by(7).collect();
    lengths.extend((header_end..seed.len()).step_by(401));
    for n in lengths {
        let e = header_err(&seed[..n]);
        assert!(e.field().is_some(), "length {n}: {e}");
    }
    assert_names(&header_err(&seed[..3]), "magic", &["needs 4 bytes"]);
    assert_names(&header_err(b"GGUF\x09\0\0\0"), "version", &["version 9"]);
}

#[test]
fn deeply_nested_arrays_are_refused() {
    let mut v = Value::Array(vec![Value::U8(1)]);
    for _ in 0..MAX_DEPTH + 2 {
        v = Value::Array(vec![v]);
    }
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &[("deep", &v)], &[]).unwrap();
    let e = header_err(out.get_ref());
    assert_names(&e, "metadata `deep`", &["nested more than"]);
}

#[test]
fn gguf_metadata_reports_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    std::fs::write(&p, with_meta_u32("general.alignment", 0)).unwrap();
    match crate::gguf_metadata(&p) {
        Err(crate::ModelError::File(e)) => {
            assert_eq!(e.field(), Some("metadata `general.alignment`"));
            assert_eq!(e.path(), p);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let err = crate::gguf_tokenizer(&p).unwrap_err().to_string();
    assert!(
        err.contains("bad.gguf") && err.contains("general.alignment"),
        "{err}"
    );
}

// ---------------------------------------------------------- safetensors ---

fn st_err(b: &[u8]) -> FileError {
    check_safetensors_bytes(b, path()).expect_err("the check must fail")
}

/// The tiny safetensors file with its header replaced by `f(header)`.
fn with_header(f: impl Fn(&str) -> String) -> Vec<u8> {
    let (b, _) = fuzz::tiny_safetensors();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let text = f(std::str::from_utf8(&b[8..8 + n]).unwrap());
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&b[8 + n..]);
    out
}

#[test]
fn the_tiny_safetensors_passes_and_candle_loads_it() {
    let (b, config) = fuzz::tiny_safetensors();
    let s = check_safetensors_bytes(&b, path()).unwrap();
    assert_eq!(s.tensors.len(), 8);
    let loaded = candle_core::safetensors::load_buffer(&b, &Device::Cpu).unwrap();
    assert_eq!(loaded.len(), 8);
    check_config_json(&config, s.shapes(), path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    std::fs::write(&p, &b).unwrap();
    assert_eq!(check_safetensors_file(&p).unwrap().tensors, s.tensors);
}

#[test]
fn hostile_safetensors_headers_are_refused() {
    let (seed, _) = fuzz::tiny_safetensors();
    // The header length.
    for v in [u64::MAX, 1 << 40, seed.len() as u64 - 7] {
        let mut b = seed.clone();
        put_u64(&mut b, 0, v);
        assert_names(
            &st_err(&b),
            "header length",
            &[&format!("header length {v}")],
        );
    }
    assert_names(&st_err(&seed[..5]), "header length", &["5 bytes"]);
    // Not JSON.
    let b = with_header(|h| h.replacen('{', "[", 1));
    assert_names(&st_err(&b), "header", &["does not parse"]);
    let e = "model.embed_tokens.weight";
    let field = format!("tensor `{e}`");
    // Offsets past the data section.
    let b = with_header(|h| h.replace("\"data_offsets\":[0,512]", "\"data_offsets\":[0,99999]"));
    assert_names(&st_err(&b), &field, &["not within the data section"]);
    let b = with_header(|h| {
        h.replace(
            "\"data_offsets\":[0,512]",
            "\"data_offsets\":[0,18446744073709551615]",
        )
    });
    assert_names(&st_err(&b), &field, &["not within the data section"]);
    // A shape whose size overflows.
    let b = with_header(|h| {
        h.replace(
            "\"shape\":[16,8]",
            "\"shape\":[1099511627776,1099511627776,1099511627776]",
        )
    });
    assert_names(&st_err(&b), &field, &["overflows"]);
    // A shape that does not match its bytes.
    let b = with_header(|h| h.replace("\"shape\":[16,8]", "\"shape\":[16,9]"));
    assert_names(&st_err(&b), &field, &["hold 512 bytes"]);
    let b = with_header(|h| h.replace("\"shape\":[16,8]", "\"shape\":[16,-8]"));
    assert_names(
        &st_err(&b),
        &field,
        &["not a list of non-negative integers"],
    );
    // An unknown dtype.
    let b = with_header(|h| h.replacen("\"F32\"", "\"Q4\"", 1));
    assert!(st_err(&b).to_string().contains("unknown dtype `Q4`"));
    // Overlapping tensors (a renamed copy of an entry).
    let b = with_header(|h| {
        h.replacen(
            "\"ids\":",
            "\"ids2\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},\"ids\":",
            1,
        )
    });
    assert!(st_err(&b).to_string().contains("data_offsets start at"));
    // Bytes left over after the last tensor.
    let mut b = seed.clone();
    b.extend_from_slice(&[0; 8]);
    assert_names(&st_err(&b), "data_offsets", &["data section is"]);
}

#[test]
fn config_json_values_are_bounded_by_the_tensors() {
    let (b, config) = fuzz::tiny_safetensors();
    let s = check_safetensors_bytes(&b, path()).unwrap();
    let check = |k: &str, v: serde_json::Value| {
        let mut c = config.clone();
        c[k] = v;
        check_config_json(&c, s.shapes(), path())
    };
    let e = check("num_hidden_layers", 4294967295u64.into()).unwrap_err();
    assert_names(
        &e,
        "`num_hidden_layers`",
        &["`num_hidden_layers` = 4294967295 but the checkpoint holds 2 layers"],
    );
    assert_names(
        &check("num_attention_heads", 0.into()).unwrap_err(),
        "`num_attention_heads`",
        &["must be 1 to"],
    );
    assert_names(
        &check("hidden_size", u64::MAX.into()).unwrap_err(),
        "`hidden_size`",
        &["18446744073709551615", "no tensor"],
    );
    assert_names(
        &check("max_position_embeddings", (1u64 << 40).into()).unwrap_err(),
        "`max_position_embeddings`",
        &["at most"],
    );
    assert_names(
        &check("vocab_size", (-1).into()).unwrap_err(),
        "`vocab_size`",
        &["non-negative integer"],
    );
    check("num_key_value_heads", serde_json::Value::Null).unwrap();
    check("num_hidden_layers", 1.into()).unwrap();
}

// ------------------------------------------------------- tokenizer.json ---

#[test]
fn tokenizer_padding_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    let model = crate::ResolvedModel {
        name: "t".into(),
        weights: dir.path().join("model.safetensors"),
        tokenizer: crate::TokenizerSource::File(p.clone()),
        format: crate::Format::Safetensors,
        arch: None,
        source: "path".into(),
    };
    let write = |padding: serde_json::Value| {
        let j = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": padding, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[PAD]": 0, "a": 1}, "unk_token": "[PAD]"},
        });
        std::fs::write(&p, j.to_string()).unwrap();
    };
    let padding = |strategy: serde_json::Value, multiple: serde_json::Value| {
        serde_json::json!({
            "strategy": strategy, "direction": "Right", "pad_to_multiple_of": multiple,
            "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]",
        })
    };
    write(padding(
        serde_json::json!({"Fixed": 8}),
        serde_json::Value::Null,
    ));
    let tk = crate::load_tokenizer(&model).unwrap();
    assert_eq!(tk.encode("a a", false).unwrap().get_ids().len(), 8);
    for (pad, field) in [
        (
            padding(
                serde_json::json!({"Fixed": 1u64 << 40}),
                serde_json::Value::Null,
            ),
            "`padding.strategy.Fixed`",
        ),
        (
            padding(
                serde_json::json!("BatchLongest"),
                serde_json::json!(u64::MAX),
            ),
            "`padding.pad_to_multiple_of`",
        ),
    ] {
        write(pad);
        match crate::load_tokenizer(&model) {
            Err(crate::ModelError::File(e)) => {
                assert_eq!(e.field(), Some(field), "{e}");
                assert!(e.to_string().contains("tokenizer.json"), "{e}");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}

// ----------------------------------------------------------------- fuzz ---

/// Reads `b` as the guarded GGUF path does: the header check and candle's
/// reader, the llama hyperparameters, every tensor (dequantized) and the
/// tokenizer. True when all of it succeeded.
fn guarded_gguf_load(b: &[u8], file: &Path) -> bool {
    let c = match read_gguf_from(&mut Cursor::new(b), file) {
        Ok(c) => c,
        Err(_) => return false,
    };
    let mut ok = check_llama_hparams(&c, file).is_ok();
    let mut r = Cursor::new(b);
    for name in c.tensor_infos.keys() {
        ok &= c
            .tensor(&mut r, name, &Device::Cpu)
            .and_then(|t| t.dequantize(&Device::Cpu))
            .is_ok();
    }
    std::fs::write(file, b).unwrap();
    ok & crate::gguf_tokenizer(file).is_ok()
}

#[test]
fn fuzz_gguf_reader() {
    let seed = fuzz::tiny_llama_gguf();
    let (hot, fields) = fuzz::gguf_fields(&seed);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fuzz.gguf");
    assert!(guarded_gguf_load(&seed, &file));
    let r = fuzz::run(
        "gguf",
        Budget::from_env(8.0),
        |m: &mut Mutator| m.mutate(&seed, hot, &fields),
        |b| guarded_gguf_load(b, &file),
    );
    assert!(r.inputs > 0);
}

#[test]
fn fuzz_safetensors_reader() {
    let (seed, config) = fuzz::tiny_safetensors();
    let config_text = config.to_string();
    let r = fuzz::run(
        "safetensors",
        Budget::from_env(5.0),
        |m: &mut Mutator| {
            // One input in four is a mutated config.json for the seed weights,
            // marked by a leading `{`.
            match m.rng.random_bool(0.25) {
                true => m.mutate_json(&config_text).into_bytes(),
                false => m.mutate_safetensors(&seed),
            }
        },
        |b| {
            if b.first() == Some(&b'{') {
                let s = check_safetensors_bytes(&seed, path()).unwrap();
                return match serde_json::from_slice::<serde_json::Value>(b) {
                    Ok(c) => check_config_json(&c, s.shapes(), path()).is_ok(),
                    Err(_) => false,
                };
            }
            let s = match check_safetensors_bytes(b, path()) {
                Ok(s) => s,
                Err(_) => return false,
            };
            let loaded = candle_core::safetensors::load_buffer(b, &Device::Cpu);
            loaded.is_ok() && check_config_json(&config, s.shapes(), path()).is_ok()
        },
    );
    assert!(r.inputs > 0);
}

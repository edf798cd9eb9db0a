//! Training and generation tokenize a GGUF alike: the trainer's tokenizer
//! of a GGUF is `flow_models`' (the one generation uses), which follows
//! `tokenizer.ggml.pre` as llama.cpp does. (Training once built its own,
//! always splitting digits apart as SmolLM2's `smollm` does, so a Llama 3
//! GGUF was trained on other token ids than it generated with.)

use candle_core::Device;
use flow_models::guard::fuzz;

/// [`fuzz::tiny_llama_gguf`] with `tokenizer.ggml.pre` = `pre` and merges
/// that build multi-digit and contraction tokens (in place of its own four,
/// so the vocabulary keeps its size and the embedding its shape).
fn tiny_gguf_with_pre(pre: &str) -> Vec<u8> {
    use candle_core::quantized::gguf_file::{self, Value};
    let seed = fuzz::tiny_llama_gguf();
    let mut r = std::io::Cursor::new(&seed);
    let content = gguf_file::Content::read(&mut r).unwrap();
    let merges = ["1 2", "12 3", "' s", "Ġ 1"];
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let mut tokens: Vec<String> = content.metadata["tokenizer.ggml.tokens"]
        .to_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_string().unwrap().clone())
        .collect();
    let n = tokens.len();
    for (t, m) in tokens[n - merges.len()..].iter_mut().zip(merges) {
        *t = m.replace(' ', "");
    }
    let mut metadata: Vec<(String, Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in metadata.iter_mut() {
        match k.as_str() {
            "tokenizer.ggml.pre" => *v = Value::String(pre.into()),
            "tokenizer.ggml.tokens" => *v = strings(tokens.clone()),
            "tokenizer.ggml.merges" => *v = strings(merges.map(String::from).to_vec()),
            _ => {}
        }
    }
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = content
        .tensor_infos
        .keys()
        .map(|name| {
            let t = content.tensor(&mut r, name, &Device::Cpu).unwrap();
            (name.clone(), t)
        })
        .collect();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<_> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md, &ts).unwrap();
    out.into_inner()
}

/// Training and generation tokenize a GGUF alike: the trainer's tokenizer
/// is `flow_models`' (the one generation uses), which follows
/// `tokenizer.ggml.pre` as llama.cpp does. Llama 3's pre-tokenizer keeps up
/// to three digits together and GPT-2's (`gpt2`, or no `pre`) a whole
/// number, where SmolLM2's (`smollm`) splits every digit.
#[test]
fn training_tokenizes_a_gguf_as_generation_does() {
    let text = "In 2023, 123 dogs' owner's 12 cats met 1234 more. IT'S 5 o'clock";
    let dir = tempfile::tempdir().unwrap();
    // Whether `123` stays one pre-token (and so becomes the one token `123`).
    for (pre, digits_together) in [("llama-bpe", true), ("gpt2", true), ("smollm", false)] {
        let p = dir.path().join(format!("{pre}.gguf"));
        std::fs::write(&p, tiny_gguf_with_pre(pre)).unwrap();
        let trained = flow_train::load(&p, None, &Device::Cpu).unwrap().tokenizer;
        let spec = flow_models::ModelSpec {
            path: Some(p.clone()),
            format: Some(flow_models::Format::Gguf),
            ..Default::default()
        };
        let env = flow_models::ModelEnv {
            base_dir: dir.path().to_path_buf(),
            models_dir: None,
            download_dir: None,
            offline: true,
        };
        let resolved = flow_models::resolve(&spec, &env).unwrap();
        let generating = flow_models::load_tokenizer(&resolved).unwrap();
        let train_ids = trained.encode(text).unwrap();
        let gen_ids = generating.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(
            train_ids, gen_ids,
            "`{pre}`: training and generation differ"
        );
        let id_123 = generating.token_to_id("123").unwrap();
        assert_eq!(
            train_ids.contains(&id_123),
            digits_together,
            "`{pre}`: {train_ids:?}"
        );
    }
}

/// The same on the real SmolLM2-135M-Instruct GGUF (`smollm`), the default
/// model, found through the resolver as generation finds it. Offline with no
/// copy the test is skipped with the reason, unless `FLOW_REQUIRE_DATA` (or
/// `CI`) says the model must be there.
#[test]
fn training_tokenizes_smollm2_as_generation_does() {
    let spec = flow_models::ModelSpec {
        name: Some("smollm2-135m-instruct".into()),
        format: Some(flow_models::Format::Gguf),
        ..Default::default()
    };
    let resolved = match flow_models::resolve(&spec, &flow_models::ModelEnv::from_env()) {
        Ok(m) => m,
        Err(e) if flow_models::offline_from_env() => {
            // A failure instead where the model must be there.
            flow_testkit::skip_or_fail!(&format!("no copy of SmolLM2 and offline: {e}"));
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let generating = flow_models::load_tokenizer(&resolved).unwrap();
    let trained = flow_train::load(&resolved.weights, None, &Device::Cpu)
        .unwrap()
        .tokenizer;
    for text in [
        "Once upon a time, in 1999, Lily's 3 cats didn't eat 12345 fish.",
        "<|im_start|>user\nHow's it going?<|im_end|>\n  two  spaces\tand a tab",
        "Café, naïve façade — déjà vu! 日本語 🎉 x=3.14159, y'all",
    ] {
        let gen_ids = generating.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(trained.encode(text).unwrap(), gen_ids, "{text:?}");
    }
}

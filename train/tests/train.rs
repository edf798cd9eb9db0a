//! Tests on a tiny random llama: gradients against finite differences,
//! kill-and-resume, the PEFT format, the frozen-weight linear.

use std::cell::Cell;

mod common;
use common::seqs;

use candle_core::{DType, Device, Tensor};
use flow_train::llama::{Config, Llama, MODULE_PATHS};
use flow_train::lora::{Lora, LoraConfig};
use flow_train::ops;
use flow_train::trainer::{self, Monitor, Quiet, Schedule, TrainConfig};

fn all_modules() -> LoraConfig {
    LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        target_modules: MODULE_PATHS.iter().map(|s| s.to_string()).collect(),
    }
}

/// Every LoRA tensor (on every projection) gets a non-zero gradient equal
/// to a central finite difference of the loss, in f64. This would fail if
/// any op on the path (norms, RoPE, softmax, SiLU, GQA, cross-entropy)
/// dropped its gradient.
#[test]
fn every_lora_gradient_is_nonzero_and_matches_finite_differences() {
    let cfg = Config::tiny();
    let model = Llama::random(cfg.clone(), 1, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let n = common::check_lora_gradients(&model, &all_modules());
    assert_eq!(n, cfg.num_hidden_layers * MODULE_PATHS.len() * 2);
}

#[test]
fn frozen_linear_matches_matmul_and_its_input_gradient() {
    let dev = Device::Cpu;
    let x =
        candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 7), &dev).unwrap()).unwrap();
    let w = Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap();
    let y1 = ops::frozen_linear(x.as_tensor(), &w).unwrap();
    let y2 = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
    let d: f32 = (&y1 - &y2)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d < 1e-5);
    let g1 = y1.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = y2.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let a = g1.get(x.as_tensor()).unwrap();
    let b = g2.get(x.as_tensor()).unwrap();
    let d: f32 = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d < 1e-4, "{d}");
}

fn tiny_train_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        lora: LoraConfig {
            dropout: 0.1,
            ..LoraConfig::default()
        },
        lr: 1e-2,
        epochs,
        batch_size: 4,
        grad_accum: 2,
        seed: 11,
        checkpoint_every: 1,
        schedule: Schedule::Linear,
        ..TrainConfig::default()
    }
}

struct StopAfter {
    steps: Cell<usize>,
    limit: usize,
}

impl Monitor for StopAfter {
    fn step(&self, _: usize, _: usize, _: f64, _: f64) {
        self.steps.set(self.steps.get() + 1);
    }
    fn stop(&self) -> bool {
        self.steps.get() >= self.limit
    }
}

fn final_state(lora: &Lora) -> Vec<f32> {
    lora.named_vars()
        .iter()
        .flat_map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

/// A run stopped after 3 steps (checkpoint in the work folder) and resumed
/// by a fresh process-like call ends exactly where an uninterrupted run does.
#[test]
fn killed_training_resumes_to_the_same_result() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let model = Llama::random(cfg.clone(), 5, &dev).unwrap();
    let data = seqs(20, cfg.vocab_size as u32, 6);
    let tc = tiny_train_config(2);

    let lora_a = Lora::init(&cfg.targets(), &tc.lora, 7, &dev).unwrap();
    let full = trainer::train(&model, &lora_a, &data, &tc, 0, None, &Quiet).unwrap();
    assert_eq!(full.losses.len(), full.steps);
    assert!(full.steps >= 5, "{}", full.steps);

    let dir = tempfile::tempdir().unwrap();
    let lora_b = Lora::init(&cfg.targets(), &tc.lora, 7, &dev).unwrap();
    let stop = StopAfter {
        steps: Cell::new(0),
        limit: 3,
    };
    let err = trainer::train(&model, &lora_b, &data, &tc, 0, Some(dir.path()), &stop).unwrap_err();
    assert!(err.is_stopped(), "{err}");
    assert!(matches!(
        err,
        flow_train::TrainError::Stopped(trainer::Stopped)
    ));
    // A new process: fresh adapter init, state from the work folder.
    let lora_c = Lora::init(&cfg.targets(), &tc.lora, 7, &dev).unwrap();
    let resumed = trainer::train(&model, &lora_c, &data, &tc, 0, Some(dir.path()), &Quiet).unwrap();
    assert_eq!(resumed.resumed_from, 3);
    assert_eq!(resumed.steps_run, full.steps - 3);
    assert_eq!(resumed.losses, full.losses);
    assert_eq!(final_state(&lora_c), final_state(&lora_a));
    let eval = |l: &Lora| trainer::eval_sum(&model, Some(l), &data, 4, 0, &Quiet).unwrap();
    assert_eq!(eval(&lora_c), eval(&lora_a));
}

/// A replicate's seed drives the adapter's init and the data order (as `train_lora` passes
/// it): the same seed reproduces the trained adapter bit for bit, another seed changes it.
#[test]
fn seeds_change_the_adapter_and_the_same_seed_reproduces_it() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let model = Llama::random(cfg.clone(), 5, &dev).unwrap();
    let data = seqs(16, cfg.vocab_size as u32, 6);
    let trained = |seed: u64| {
        let mut tc = tiny_train_config(1);
        tc.seed = seed;
        let lora = Lora::init(&cfg.targets(), &tc.lora, seed, &dev).unwrap();
        trainer::train(&model, &lora, &data, &tc, 0, None, &Quiet).unwrap();
        final_state(&lora)
    };
    let a = trained(1);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(
        bits(&a),
        bits(&trained(1)),
        "the same seed reproduces bit for bit"
    );
    assert_ne!(
        bits(&a),
        bits(&trained(2)),
        "another seed trains another adapter"
    );
}

#[test]
fn training_lowers_the_loss_on_a_tiny_model() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let model = Llama::random(cfg.clone(), 8, &dev).unwrap();
    let data = seqs(16, cfg.vocab_size as u32, 9);
    let mut tc = tiny_train_config(5);
    tc.lora.dropout = 0.0;
    tc.lr = 3e-2;
    let lora = Lora::init(&cfg.targets(), &tc.lora, 1, &dev).unwrap();
    let (before, n) = trainer::eval_sum(&model, Some(&lora), &data, 4, 0, &Quiet).unwrap();
    trainer::train(&model, &lora, &data, &tc, 0, None, &Quiet).unwrap();
    let (after, m) = trainer::eval_sum(&model, Some(&lora), &data, 4, 0, &Quiet).unwrap();
    assert_eq!(n, m);
    assert!(after < before * 0.95, "{before} -> {after}");
}

#[test]
fn peft_export_round_trips() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let model = Llama::random(cfg.clone(), 1, &dev).unwrap();
    let mut lc = all_modules();
    lc.target_modules = vec!["q_proj".into(), "v_proj".into(), "down_proj".into()];
    let lora = Lora::init(&cfg.targets(), &lc, 3, &dev).unwrap();
    for ad in lora.adapters.values() {
        let b = Tensor::randn(0f32, 0.1, ad.b.shape(), &dev).unwrap();
        ad.b.set(&b).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    trainer::save_peft(&lora, dir.path(), "tiny").unwrap();
    let cfg_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    assert_eq!(cfg_json["r"], 2);
    assert_eq!(cfg_json["lora_alpha"], 4.0);
    let names =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &dev).unwrap();
    assert!(names.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert!(names.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    assert_eq!(names.len(), 2 * 3 * cfg.num_hidden_layers);

    let back = trainer::load_peft(dir.path(), &dev).unwrap();
    assert_eq!(back.config, lora.config);
    assert_eq!(final_state(&back), final_state(&lora));
    let data = seqs(4, cfg.vocab_size as u32, 2);
    let a = trainer::eval_sum(&model, Some(&lora), &data, 4, 0, &Quiet).unwrap();
    let b = trainer::eval_sum(&model, Some(&back), &data, 4, 0, &Quiet).unwrap();
    assert_eq!(a, b);
}

#[test]
fn learning_rate_schedules() {
    let mut c = TrainConfig::default();
    assert_eq!(c.lr_at(0, 10), 1e-4);
    assert!((c.lr_at(5, 10) - 5e-5).abs() < 1e-12);
    c.warmup_steps = 2;
    assert_eq!(c.lr_at(0, 10), 0.0);
    assert!((c.lr_at(1, 10) - 5e-5).abs() < 1e-12);
    assert_eq!(c.lr_at(2, 10), 1e-4);
    c.schedule = Schedule::Constant;
    assert_eq!(c.lr_at(9, 10), 1e-4);
}

/// `max_steps` trains exactly that many optimizer steps, cycling through
/// the data in epochs: 20 sequences in micro-batches of 4, 2 per step, are
/// 3 steps an epoch, so 7 steps are two epochs and one step of a third. A
/// budget of two full epochs is the 2-epoch run, bit for bit (same data
/// order, same schedule).
#[test]
fn max_steps_trains_exactly_that_many_steps() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let model = Llama::random(cfg.clone(), 5, &dev).unwrap();
    let data = seqs(20, cfg.vocab_size as u32, 6);
    let run = |tc: &TrainConfig| {
        let lora = Lora::init(&cfg.targets(), &tc.lora, 7, &dev).unwrap();
        let report = trainer::train(&model, &lora, &data, tc, 0, None, &Quiet).unwrap();
        (report, final_state(&lora))
    };
    let mut tc = tiny_train_config(1);
    assert_eq!(tc.steps_per_epoch(data.len()), 3);
    for n in [1, 2, 7] {
        tc.max_steps = Some(n);
        assert_eq!(tc.total_steps(data.len()), n);
        let (report, _) = run(&tc);
        assert_eq!((report.steps, report.steps_run), (n, n));
        let steps: Vec<usize> = report.losses.iter().map(|l| l.0).collect();
        assert_eq!(steps, (1..=n).collect::<Vec<_>>());
    }
    tc.max_steps = Some(6);
    let (budget, a) = run(&tc);
    let (epochs, b) = run(&tiny_train_config(2));
    assert_eq!(epochs.steps, 6);
    assert_eq!(budget.losses, epochs.losses);
    assert_eq!(a, b);
}

/// A run with `max_steps` stopped inside its partial last epoch resumes to
/// the uninterrupted result.
#[test]
fn max_steps_resumes_across_epochs() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let model = Llama::random(cfg.clone(), 5, &dev).unwrap();
    let data = seqs(20, cfg.vocab_size as u32, 6);
    let mut tc = tiny_train_config(1);
    tc.max_steps = Some(8);
    let lora_a = Lora::init(&cfg.targets(), &tc.lora, 7, &dev).unwrap();
    let full = trainer::train(&model, &lora_a, &data, &tc, 0, None, &Quiet).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lora_b = Lora::init(&cfg.targets(), &tc.lora, 7, &dev).unwrap();
    let stop = StopAfter {
        steps: Cell::new(0),
        limit: 7,
    };
    assert!(trainer::train(&model, &lora_b, &data, &tc, 0, Some(dir.path()), &stop).is_err());
    let lora_c = Lora::init(&cfg.targets(), &tc.lora, 7, &dev).unwrap();
    let resumed = trainer::train(&model, &lora_c, &data, &tc, 0, Some(dir.path()), &Quiet).unwrap();
    assert_eq!((resumed.resumed_from, resumed.steps_run), (7, 1));
    assert_eq!(resumed.losses, full.losses);
    assert_eq!(final_state(&lora_c), final_state(&lora_a));
}

/// Per-token losses are what `eval_sum` sums (the same tokens, the same
/// total), and splitting off each sequence's last scored token as its end
/// token keeps the identity with-end sum = text sum + end loss.
#[test]
fn token_losses_add_up_to_eval_sum_and_split_off_the_end_token() {
    use flow_train::data::Scored;
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let model = Llama::random(cfg.clone(), 3, &dev).unwrap();
    let data = seqs(9, cfg.vocab_size as u32, 4);
    let per = trainer::token_losses(&model, None, &data, 4, 0, &Quiet).unwrap();
    let (sum, count) = trainer::eval_sum(&model, None, &data, 4, 0, &Quiet).unwrap();
    assert_eq!(per.len(), data.len());
    for (losses, (ids, target)) in per.iter().zip(&data) {
        assert_eq!(losses.len(), (1..ids.len()).filter(|&j| target[j]).count());
        assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0));
    }
    let total: f64 = per.iter().flatten().sum();
    assert_eq!(per.iter().map(Vec::len).sum::<usize>(), count);
    assert!((total - sum).abs() <= 1e-5 * sum, "{total} vs {sum}");
    for losses in &per {
        let s = Scored::of(losses, true);
        let last = *losses.last().unwrap();
        assert_eq!(s.end, Some(last));
        assert_eq!(s.text_tokens + 1, losses.len());
        let (with_end, n) = s.with_end();
        assert_eq!(n, losses.len());
        assert!((with_end - (s.text_sum + last)).abs() < 1e-12);
        assert!((with_end - losses.iter().sum::<f64>()).abs() < 1e-9);
    }
}

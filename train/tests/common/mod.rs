//! Helpers shared by the trainer's integration tests.

use candle_core::{DType, Device, Tensor};
use flow_train::lora::{Lora, LoraConfig};
use flow_train::model::{Batch, CausalLm};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` random sequences of 4-11 tokens, the tail of each a target.
pub fn seqs(n: usize, vocab: u32, seed: u64) -> Vec<(Vec<u32>, Vec<bool>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(4..12);
            let split = rng.random_range(1..len - 1);
            let ids: Vec<u32> = (0..len).map(|_| rng.random_range(1..vocab)).collect();
            let flags = (0..len).map(|i| i >= split).collect();
            (ids, flags)
        })
        .collect()
}

/// Checks, in f64, that every LoRA tensor of `lora_cfg` on `model` (loaded
/// in f64) gets a non-zero gradient equal to a central finite difference of
/// the loss. Returns the number of tensors checked.
pub fn check_lora_gradients(model: &dyn CausalLm, lora_cfg: &LoraConfig) -> usize {
    let dev = Device::Cpu;
    let lora = Lora::init_dtype(&model.targets(), lora_cfg, 2, &dev, DType::F64).unwrap();
    // B starts at zero (PEFT's init), which makes A's gradient zero: use a random B.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for ad in lora.adapters.values() {
        let n = ad.b.elem_count();
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-0.5..0.5)).collect();
        ad.b.set(&Tensor::from_vec(v, ad.b.shape(), &dev).unwrap())
            .unwrap();
    }
    let batch = Batch::new(&seqs(3, model.vocab_size() as u32, 4), 0, &dev).unwrap();
    let loss_of = |lora: &Lora| -> f64 {
        let s = model.loss_sum(&batch, Some(lora), None).unwrap();
        s.to_scalar::<f64>().unwrap() / batch.n_labels as f64
    };
    let loss =
        (model.loss_sum(&batch, Some(&lora), None).unwrap() / batch.n_labels as f64).unwrap();
    let grads = loss.backward().unwrap();
    let vars = lora.named_vars();
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let gv: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        let norm: f64 = gv.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(norm > 1e-8, "{name}: zero gradient");
        let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        // Check the two largest entries of the gradient plus one random entry.
        let mut idx: Vec<usize> = (0..gv.len()).collect();
        idx.sort_by(|a, b| gv[*b].abs().total_cmp(&gv[*a].abs()));
        let mut check = vec![idx[0], idx[1.min(idx.len() - 1)]];
        check.push(rng.random_range(0..gv.len()));
        for i in check {
            let h = 1e-5;
            let mut plus = orig.clone();
            plus[i] += h;
            var.set(&Tensor::from_vec(plus, var.shape(), &dev).unwrap())
                .unwrap();
            let lp = loss_of(&lora);
            let mut minus = orig.clone();
            minus[i] -= h;
            var.set(&Tensor::from_vec(minus, var.shape(), &dev).unwrap())
                .unwrap();
            let lm = loss_of(&lora);
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), &dev).unwrap())
                .unwrap();
            let fd = (lp - lm) / (2.0 * h);
            let err = (fd - gv[i]).abs();
            assert!(
                err <= 1e-6 + 1e-4 * gv[i].abs().max(fd.abs()),
                "{name}[{i}]: backward {} vs finite difference {fd}",
                gv[i]
            );
        }
    }
    vars.len()
}

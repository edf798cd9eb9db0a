//! Speed of the quantized matrix-vector products of `flow_generate::cpu`
//! (decoding: one activation row), in GB/s of weights read, per matrix shape.
//!
//!   cargo run --release -p flow-generate --example matmul_bench

use std::time::Instant;

use flow_generate::cpu::{Acts, Format, QMatrix};

fn main() {
    // SmolLM2-135M's shapes: q+k+v, o, gate+up, down, the output layer (Q8_0).
    let shapes = [
        ("qkv", 960, 576, Format::Q4_1),
        ("o", 576, 576, Format::Q4_1),
        ("gate_up", 3072, 576, Format::Q4_1),
        ("down", 576, 1536, Format::Q4_1),
        ("output", 49152, 576, Format::Q8_0),
    ];
    for (name, rows, cols, format) in shapes {
        // 30 copies, as the model's 30 layers: together larger than the caches.
        let copies = if name == "output" { 1 } else { 30 };
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let q8 = QMatrix::quantize_q8_0(rows, cols, &values);
        let m: Vec<QMatrix> = (0..copies)
            .map(|_| match format {
                Format::Q8_0 => q8.clone(),
                f => QMatrix::from_ggml(f, rows, cols, &vec![0x35u8; rows * cols / 32 * 20]),
            })
            .collect();
        let mut acts = Acts::default();
        acts.quantize(&values[..cols], cols);
        let mut out = vec![0f32; rows];
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            for w in &m {
                w.matmul(&acts, &mut out);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let bytes = (m[0].size_bytes() * copies * reps) as f64;
        println!(
            "{name:8} {rows}x{cols}: {:.1} us per product, {:.1} GB/s",
            secs / (reps * copies) as f64 * 1e6,
            bytes / secs / 1e9
        );
    }
}

use super::*;
use rand::{Rng, SeedableRng};

fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Raw GGML blocks of each 4-bit format with random contents.
fn random_blocks(format: Format, n_blocks: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..n_blocks {
        out.extend(f16::from_f32(rng.random_range(0.001f32..0.05)).to_le_bytes());
        if format == Format::Q4_1 {
            out.extend(f16::from_f32(rng.random_range(-0.2f32..0.2)).to_le_bytes());
        }
        let n = if format == Format::Q8_0 { 32 } else { 16 };
        out.extend((0..n).map(|_| rng.random::<u8>()));
    }
    out
}

fn naive(w: &[f32], x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let m = x.len() / cols;
    let mut out = vec![0f32; m * rows];
    for i in 0..m {
        for r in 0..rows {
            out[i * rows + r] = (0..cols).map(|c| w[r * cols + c] * x[i * cols + c]).sum();
        }
    }
    out
}

#[test]
fn rounding_is_f32_round() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let halves = (-300..=300).map(|i| i as f32 * 0.5);
    let near_halves = (-300..=300).flat_map(|i| {
        let h = i as f32 * 0.5;
        [h.next_up(), h.next_down()]
    });
    let random = (0..10_000).map(|_| rng.random_range(-130.0f32..130.0));
    for x in halves
        .chain(near_halves)
        .chain(random)
        .chain([0.0, -0.0, 1e9, -1e9])
    {
        assert_eq!(round_half_away(x), x.round() as i32, "{x}");
    }
}

#[test]
fn every_format_multiplies_like_its_dequantized_values() {
    let (rows, cols, m) = (67, 128, 5);
    let x = random_values(m * cols, 1);
    let mut acts = Acts::default();
    acts.quantize(&x, cols);
    for (seed, format) in [Format::Q4_0, Format::Q4_1, Format::Q8_0]
        .into_iter()
        .enumerate()
    {
        let bytes = random_blocks(format, rows * cols / BLOCK, seed as u64);
        let w = QMatrix::from_ggml(format, rows, cols, &bytes);
        let expected = naive(&w.dequantize(), &x, rows, cols);
        let mut out = vec![0f32; m * rows];
        w.matmul(&acts, &mut out);
        let scale = expected.iter().fold(0f32, |a, v| a.max(v.abs()));
        let worst = out
            .iter()
            .zip(&expected)
            .fold(0f32, |a, (o, e)| a.max((o - e).abs()));
        // 8-bit activations: about 1/254 of each block's largest value.
        assert!(
            worst <= 0.01 * scale,
            "{format:?}: error {worst} vs scale {scale}"
        );
        assert!(scale > 0.1, "{format:?}: degenerate test data");
    }
}

#[test]
fn simd_kernels_agree_with_the_portable_ones() {
    let cols = 256;
    let k = cols / BLOCK;
    let mut acts = Acts::default();
    acts.quantize(&random_values(cols, 7), cols);
    let a = &acts.blocks;
    let kern = kernels();
    for seed in 0..20 {
        let q40 = blocks_from_bytes(&random_blocks(Format::Q4_0, k, seed));
        let q41 = blocks_from_bytes(&random_blocks(Format::Q4_1, k, seed));
        let q80 = blocks_from_bytes(&random_blocks(Format::Q8_0, k, seed));
        let (w40, w41, w80) = (q40.as_slice(), q41.as_slice(), q80.as_slice());
        for (got, want) in [
            ((kern.q4_0.one)(w40, a), scalar::dot_q4_0(w40, a)),
            ((kern.q4_1.one)(w41, a), scalar::dot_q4_1(w41, a)),
            ((kern.q8_0.one)(w80, a), scalar::dot_q8_0(w80, a)),
            ((kern.q4_0.four)([w40; 4], a)[3], scalar::dot_q4_0(w40, a)),
            ((kern.q4_1.four)([w41; 4], a)[2], scalar::dot_q4_1(w41, a)),
            ((kern.q8_0.four)([w80; 4], a)[1], scalar::dot_q8_0(w80, a)),
        ] {
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }
}

#[test]
fn pairs_of_activation_rows_give_exactly_what_single_rows_give() {
    let cols = 256;
    let k = cols / BLOCK;
    let mut acts = Acts::default();
    acts.quantize(&random_values(2 * cols, 9), cols);
    let (a0, a1) = acts.blocks.split_at(k);
    let kern = kernels();
    let q41: Vec<BlockQ4_1> = blocks_from_bytes(&random_blocks(Format::Q4_1, 4 * k, 5));
    let w41: [&[BlockQ4_1]; 4] = [0, 1, 2, 3].map(|r| &q41[r * k..(r + 1) * k]);
    let q80: Vec<BlockQ8_0> = blocks_from_bytes(&random_blocks(Format::Q8_0, 4 * k, 6));
    let w80: [&[BlockQ8_0]; 4] = [0, 1, 2, 3].map(|r| &q80[r * k..(r + 1) * k]);
    let q40: Vec<BlockQ4_0> = blocks_from_bytes(&random_blocks(Format::Q4_0, 4 * k, 7));
    let w40: [&[BlockQ4_0]; 4] = [0, 1, 2, 3].map(|r| &q40[r * k..(r + 1) * k]);
    assert_eq!(
        (kern.q4_1.four2)(w41, [a0, a1]),
        [(kern.q4_1.four)(w41, a0), (kern.q4_1.four)(w41, a1)]
    );
    assert_eq!(
        (kern.q8_0.four2)(w80, [a0, a1]),
        [(kern.q8_0.four)(w80, a0), (kern.q8_0.four)(w80, a1)]
    );
    assert_eq!(
        (kern.q4_0.four2)(w40, [a0, a1]),
        [(kern.q4_0.four)(w40, a0), (kern.q4_0.four)(w40, a1)]
    );
}

#[test]
fn a_row_gives_the_same_product_alone_and_in_a_batch() {
    let (rows, cols) = (300, 64);
    let w = QMatrix::from_ggml(
        Format::Q4_1,
        rows,
        cols,
        &random_blocks(Format::Q4_1, rows * 2, 3),
    );
    let x = random_values(9 * cols, 4);
    let mut all = Acts::default();
    all.quantize(&x, cols);
    let mut out = vec![0f32; 9 * rows];
    w.matmul(&all, &mut out);
    for i in 0..9 {
        let mut one = Acts::default();
        one.quantize(&x[i * cols..(i + 1) * cols], cols);
        let mut o = vec![0f32; rows];
        w.matmul(&one, &mut o);
        assert_eq!(o, out[i * rows..(i + 1) * rows], "row {i}");
    }
}

#[test]
fn stacking_keeps_rows_and_meets_mixed_formats_in_q8_0() {
    let cols = 64;
    let a = QMatrix::from_ggml(Format::Q4_1, 3, cols, &random_blocks(Format::Q4_1, 6, 1));
    let b = QMatrix::from_ggml(Format::Q4_1, 2, cols, &random_blocks(Format::Q4_1, 4, 2));
    let c = QMatrix::from_ggml(Format::Q8_0, 2, cols, &random_blocks(Format::Q8_0, 4, 3));
    let same = QMatrix::stack(vec![a.clone(), b.clone()]);
    assert_eq!((same.rows(), same.format()), (5, Format::Q4_1));
    assert_eq!(same.dequantize(), [a.dequantize(), b.dequantize()].concat());
    let mixed = QMatrix::stack(vec![a.clone(), c.clone()]);
    assert_eq!((mixed.rows(), mixed.format()), (5, Format::Q8_0));
    let want = [a.dequantize(), c.dequantize()].concat();
    // Q8_0 rounds each value by at most half a step of its block's scale.
    let half_step = want.iter().fold(0f32, |a, v| a.max(v.abs())) / 254.0;
    for (g, w) in mixed.dequantize().iter().zip(&want) {
        assert!((g - w).abs() <= half_step + 1e-6, "{g} vs {w}");
    }
}

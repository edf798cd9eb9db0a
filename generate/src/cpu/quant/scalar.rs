//! Portable kernels; also the reference the SIMD ones are tested against.

use super::*;

pub fn dot_q4_0(w: &[BlockQ4_0], a: &[ActBlock]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(w, a)| {
            let s: i32 = unpack_nibbles(&w.qs)
                .iter()
                .zip(a.qs)
                .map(|(&x, y)| (x as i32 - 8) * y as i32)
                .sum();
            s as f32 * w.d.to_f32() * a.d
        })
        .sum()
}

pub fn dot_q4_1(w: &[BlockQ4_1], a: &[ActBlock]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(w, a)| {
            let s: i32 = unpack_nibbles(&w.qs)
                .iter()
                .zip(a.qs)
                .map(|(&x, y)| x as i32 * y as i32)
                .sum();
            s as f32 * w.d.to_f32() * a.d + w.m.to_f32() * a.s
        })
        .sum()
}

pub fn dot_q8_0(w: &[BlockQ8_0], a: &[ActBlock]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(w, a)| {
            let s: i32 =
                w.qs.iter()
                    .zip(a.qs)
                    .map(|(&x, y)| x as i32 * y as i32)
                    .sum();
            s as f32 * w.d.to_f32() * a.d
        })
        .sum()
}

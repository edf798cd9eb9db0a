//! Weight matrices in GGML's block formats (Q4_0, Q4_1, Q8_0), activations
//! quantized to 8 bits, and their products: the hot path of CPU generation.
//!
//! Each product of a weight row with an activation row is computed by the same
//! code whatever the number of rows, so a sequence's numbers do not depend on
//! what it is batched with.

use half::f16;

use super::pool::{parallel, parallel_split, SendPtr};

pub const BLOCK: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_0 {
    d: f16,
    qs: [u8; BLOCK / 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_1 {
    d: f16,
    m: f16,
    qs: [u8; BLOCK / 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0 {
    d: f16,
    qs: [i8; BLOCK],
}

/// 32 activations as `d * qs[i]`; `s = d * sum(qs)` serves the blocks with
/// an offset (Q4_1). Scales stay f32: activations are quantized once per
/// product, so their precision is cheap to keep.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ActBlock {
    d: f32,
    s: f32,
    qs: [i8; BLOCK],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// A weight matrix, row-major: `rows` outputs of `cols` inputs each.
#[derive(Clone, Debug)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

#[derive(Clone, Debug)]
enum Blocks {
    Q4_0(Vec<BlockQ4_0>),
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
}

/// The block formats a [`QMatrix`] keeps as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q8_0,
}

/// Reinterprets raw GGML blocks (as stored in a GGUF file) as `T`s.
fn blocks_from_bytes<T: Copy>(bytes: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    assert_eq!(bytes.len() % size, 0, "a partial block");
    let n = bytes.len() / size;
    let mut out = Vec::<T>::with_capacity(n);
    // SAFETY: T is a repr(C) block of plain bytes and f16s (every bit pattern
    // valid); the destination holds n * size bytes and is aligned for T.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr() as *mut u8, n * size);
        out.set_len(n);
    }
    out
}

/// 32 values as `d * q` with `q` in -127..=127 (GGML's Q8_0 rounding).
fn quantize_block(x: &[f32]) -> (f32, [i8; BLOCK]) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    // A subnormal scale has an infinite inverse (garbage weights, found by fuzzing the
    // model loader): such a block is zero at any precision that matters.
    let id = if d.is_normal() { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; BLOCK];
    for (q, v) in qs.iter_mut().zip(x) {
        *q = round_half_away(v * id) as i8;
    }
    (d, qs)
}

/// `x.round()` (halves away from zero, GGML's `roundf`) for |x| < 2^31, in
/// instructions that vectorize: `f32::round` is a libm call per value, and
/// quantizing a prompt's activations spent 1.8% of prompt processing there.
/// Exact: the fraction `x - trunc(x)` of a float is representable.
#[inline]
fn round_half_away(x: f32) -> i32 {
    let t = x as i32;
    let f = x - t as f32;
    t + (f >= 0.5) as i32 - (f <= -0.5) as i32
}

/// A 4-bit block's 32 values in element order: GGML keeps elements 0..15 in
/// the low nibbles and 16..31 in the high ones.
fn unpack_nibbles(qs: &[u8; BLOCK / 2]) -> [u8; BLOCK] {
    let mut out = [0u8; BLOCK];
    for (j, &b) in qs.iter().enumerate() {
        out[j] = b & 0x0F;
        out[j + BLOCK / 2] = b >> 4;
    }
    out
}

impl QMatrix {
    /// A matrix from GGML blocks of `format` (the bytes of a GGUF tensor).
    pub fn from_ggml(format: Format, rows: usize, cols: usize, bytes: &[u8]) -> Self {
        assert_eq!(cols % BLOCK, 0, "columns must be a multiple of {BLOCK}");
        let blocks = match format {
            Format::Q4_0 => Blocks::Q4_0(blocks_from_bytes(bytes)),
            Format::Q4_1 => Blocks::Q4_1(blocks_from_bytes(bytes)),
            Format::Q8_0 => Blocks::Q8_0(blocks_from_bytes(bytes)),
        };
        let m = QMatrix { rows, cols, blocks };
        assert_eq!(m.n_blocks(), rows * cols / BLOCK, "tensor size");
        m
    }

    /// A matrix quantized to Q8_0 from f32 values (formats kept as they are
    /// elsewhere: F16, F32, k-quants).
    pub fn quantize_q8_0(rows: usize, cols: usize, values: &[f32]) -> Self {
        assert_eq!(cols % BLOCK, 0, "columns must be a multiple of {BLOCK}");
        assert_eq!(values.len(), rows * cols);
        let blocks = values
            .chunks_exact(BLOCK)
            .map(|x| {
                let (d, qs) = quantize_block(x);
                BlockQ8_0 {
                    d: f16::from_f32(d),
                    qs,
                }
            })
            .collect();
        QMatrix {
            rows,
            cols,
            blocks: Blocks::Q8_0(blocks),
        }
    }

    /// The matrices' rows one after the other (q, k and v as one product).
    /// Mixed formats meet in Q8_0.
    pub fn stack(parts: Vec<QMatrix>) -> Self {
        let cols = parts[0].cols;
        assert!(
            parts.iter().all(|p| p.cols == cols),
            "stacked widths differ"
        );
        let rows = parts.iter().map(|p| p.rows).sum();
        let same = parts.iter().all(|p| p.format() == parts[0].format());
        if !same {
            let values: Vec<f32> = parts.iter().flat_map(|p| p.dequantize()).collect();
            return QMatrix::quantize_q8_0(rows, cols, &values);
        }
        let mut it = parts.into_iter();
        let mut first = it.next().expect("at least one part");
        for p in it {
            match (&mut first.blocks, p.blocks) {
                (Blocks::Q4_0(a), Blocks::Q4_0(b)) => a.extend(b),
                (Blocks::Q4_1(a), Blocks::Q4_1(b)) => a.extend(b),
                (Blocks::Q8_0(a), Blocks::Q8_0(b)) => a.extend(b),
                _ => unreachable!("formats checked above"),
            }
        }
        first.rows = rows;
        first
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn format(&self) -> Format {
        match self.blocks {
            Blocks::Q4_0(_) => Format::Q4_0,
            Blocks::Q4_1(_) => Format::Q4_1,
            Blocks::Q8_0(_) => Format::Q8_0,
        }
    }

    fn n_blocks(&self) -> usize {
        match &self.blocks {
            Blocks::Q4_0(b) => b.len(),
            Blocks::Q4_1(b) => b.len(),
            Blocks::Q8_0(b) => b.len(),
        }
    }

    /// Bytes the weights take.
    pub fn size_bytes(&self) -> usize {
        match &self.blocks {
            Blocks::Q4_0(b) => std::mem::size_of_val(b.as_slice()),
            Blocks::Q4_1(b) => std::mem::size_of_val(b.as_slice()),
            Blocks::Q8_0(b) => std::mem::size_of_val(b.as_slice()),
        }
    }

    /// One row as f32 (an embedding lookup).
    pub fn row_f32(&self, row: usize, out: &mut [f32]) {
        let bpr = self.cols / BLOCK;
        let range = row * bpr..(row + 1) * bpr;
        match &self.blocks {
            Blocks::Q4_0(b) => {
                b[range]
                    .iter()
                    .zip(out.chunks_exact_mut(BLOCK))
                    .for_each(|(b, o)| {
                        let d = b.d.to_f32();
                        for (o, q) in o.iter_mut().zip(unpack_nibbles(&b.qs)) {
                            *o = (q as i32 - 8) as f32 * d;
                        }
                    })
            }
            Blocks::Q4_1(b) => {
                b[range]
                    .iter()
                    .zip(out.chunks_exact_mut(BLOCK))
                    .for_each(|(b, o)| {
                        let (d, m) = (b.d.to_f32(), b.m.to_f32());
                        for (o, q) in o.iter_mut().zip(unpack_nibbles(&b.qs)) {
                            *o = q as f32 * d + m;
                        }
                    })
            }
            Blocks::Q8_0(b) => {
                b[range]
                    .iter()
                    .zip(out.chunks_exact_mut(BLOCK))
                    .for_each(|(b, o)| {
                        let d = b.d.to_f32();
                        for (o, q) in o.iter_mut().zip(b.qs) {
                            *o = q as f32 * d;
                        }
                    })
            }
        }
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, o) in out.chunks_exact_mut(self.cols).enumerate() {
            self.row_f32(r, o);
        }
        out
    }

    /// `out[i * rows + r] = <row r, activation row i>` for every activation row.
    pub fn matmul(&self, x: &Acts, out: &mut [f32]) {
        assert_eq!(x.cols, self.cols, "activation width");
        assert_eq!(out.len(), x.rows * self.rows, "output size");
        let k = self.cols / BLOCK;
        match &self.blocks {
            Blocks::Q4_0(w) => matmul_with(w, k, self.rows, x, out, kernels().q4_0),
            Blocks::Q4_1(w) => matmul_with(w, k, self.rows, x, out, kernels().q4_1),
            Blocks::Q8_0(w) => matmul_with(w, k, self.rows, x, out, kernels().q8_0),
        }
    }
}

/// Activation rows quantized for [`QMatrix::matmul`].
#[derive(Default)]
pub struct Acts {
    rows: usize,
    cols: usize,
    blocks: Vec<ActBlock>,
}

impl Acts {
    /// Quantizes `x` (rows of `cols` values), reusing this buffer; a prompt's
    /// rows in parallel (serial, they were 4% of prompt processing while the
    /// other threads waited).
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        assert_eq!(cols % BLOCK, 0, "columns must be a multiple of {BLOCK}");
        self.rows = x.len() / cols;
        self.cols = cols;
        let n = x.len() / BLOCK;
        let empty = ActBlock {
            d: 0.0,
            s: 0.0,
            qs: [0; BLOCK],
        };
        self.blocks.clear();
        self.blocks.resize(n, empty);
        let quantize = |i: usize| {
            let (d, qs) = quantize_block(&x[i * BLOCK..(i + 1) * BLOCK]);
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            ActBlock {
                d,
                s: d * sum as f32,
                qs,
            }
        };
        if self.rows < 2 {
            for (i, b) in self.blocks.iter_mut().enumerate() {
                *b = quantize(i);
            }
            return;
        }
        let out = SendPtr::new(&mut self.blocks);
        parallel_split(n, cols / BLOCK, |part| {
            // SAFETY: the parts are disjoint and inside the buffer.
            part.for_each(|i| unsafe { *out.at(i) = quantize(i) })
        });
    }
}

type Dot<W> = fn(&[W], &[ActBlock]) -> f32;
type Dot4<W> = fn([&[W]; 4], &[ActBlock]) -> [f32; 4];
type Dot42<W> = fn([&[W]; 4], [&[ActBlock]; 2]) -> [[f32; 4]; 2];

fn matmul_with<W: Sync>(w: &[W], k: usize, n: usize, x: &Acts, out: &mut [f32], dots: Dots<W>) {
    // Bands of weight rows small enough to stay in L1 while every activation
    // row passes over them.
    let band = 32;
    let out_ptr = SendPtr::new(out);
    let row = |r: usize| &w[r * k..(r + 1) * k];
    // Activation rows in pairs (each weight block unpacked once for both),
    // weight rows in fours. Every kernel sums a row's blocks in the same
    // order, so a row's result does not depend on its neighbours.
    let work = |rows: std::ops::Range<usize>| {
        let quads = rows.start..rows.start + (rows.len() / 4) * 4;
        // SAFETY: (i, r) belongs to this band only; out has x.rows * n slots.
        let put = |i: usize, r: usize, v: f32| unsafe { *out_ptr.at(i * n + r) = v };
        let act = |i: usize| &x.blocks[i * k..(i + 1) * k];
        let mut i = 0;
        while i + 2 <= x.rows {
            for r in quads.clone().step_by(4) {
                let v = (dots.four2)(
                    [row(r), row(r + 1), row(r + 2), row(r + 3)],
                    [act(i), act(i + 1)],
                );
                (0..4).for_each(|j| {
                    put(i, r + j, v[0][j]);
                    put(i + 1, r + j, v[1][j]);
                });
            }
            i += 2;
        }
        if i < x.rows {
            for r in quads.clone().step_by(4) {
                let v = (dots.four)([row(r), row(r + 1), row(r + 2), row(r + 3)], act(i));
                (0..4).for_each(|j| put(i, r + j, v[j]));
            }
        }
        for i in 0..x.rows {
            for r in quads.end..rows.end {
                put(i, r, (dots.one)(row(r), act(i)));
            }
        }
    };
    let bands = |rows: std::ops::Range<usize>| {
        (rows.start..rows.end)
            .step_by(band)
            .for_each(|b| work(b..(b + band).min(rows.end)))
    };
    if n * x.rows * k < 4096 {
        bands(0..n)
    } else if x.rows == 1 {
        // Decoding reads each weight once: one contiguous stretch per thread
        // keeps the hardware prefetchers streaming.
        parallel_split(n, 4, bands)
    } else {
        parallel(n.div_ceil(band), |b| {
            work(b * band..((b + 1) * band).min(n))
        })
    }
}

/// The kernels of one weight format.
struct Dots<W: 'static> {
    one: Dot<W>,
    four: Dot4<W>,
    four2: Dot42<W>,
}

impl<W> Clone for Dots<W> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<W> Copy for Dots<W> {}

struct Kernels {
    q4_0: Dots<BlockQ4_0>,
    q4_1: Dots<BlockQ4_1>,
    q8_0: Dots<BlockQ8_0>,
}

/// The fastest kernels this CPU runs (checked once).
fn kernels() -> &'static Kernels {
    static K: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU has the features these kernels are compiled for.
            return Kernels {
                q4_0: Dots {
                    one: |w, a| unsafe { avx2::dot_q4_0(w, a) },
                    four: |w, a| unsafe { avx2::dot4_q4_0(w, a) },
                    four2: |w, a| unsafe { avx2::dot42_q4_0(w, a) },
                },
                q4_1: Dots {
                    one: |w, a| unsafe { avx2::dot_q4_1(w, a) },
                    four: |w, a| unsafe { avx2::dot4_q4_1(w, a) },
                    four2: |w, a| unsafe { avx2::dot42_q4_1(w, a) },
                },
                q8_0: Dots {
                    one: |w, a| unsafe { avx2::dot_q8_0(w, a) },
                    four: |w, a| unsafe { avx2::dot4_q8_0(w, a) },
                    four2: |w, a| unsafe { avx2::dot42_q8_0(w, a) },
                },
            };
        }
        Kernels {
            q4_0: Dots {
                one: scalar::dot_q4_0,
                four: |w, a| w.map(|w| scalar::dot_q4_0(w, a)),
                four2: |w, a| a.map(|a| w.map(|w| scalar::dot_q4_0(w, a))),
            },
            q4_1: Dots {
                one: scalar::dot_q4_1,
                four: |w, a| w.map(|w| scalar::dot_q4_1(w, a)),
                four2: |w, a| a.map(|a| w.map(|w| scalar::dot_q4_1(w, a))),
            },
            q8_0: Dots {
                one: scalar::dot_q8_0,
                four: |w, a| w.map(|w| scalar::dot_q8_0(w, a)),
                four2: |w, a| a.map(|a| w.map(|w| scalar::dot_q8_0(w, a))),
            },
        }
    })
}

pub mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(test)]
mod tests;

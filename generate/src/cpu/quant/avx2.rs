//! The kernels for x86-64 CPUs with AVX2, FMA and F16C (checked at run time).

use super::*;
use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// f16 to f32 in one instruction (`half` would call out of the loop).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f32_of(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// The 32 nibbles of a block as bytes 0..15 in element order (low
/// nibbles are elements 0..15, high nibbles 16..31).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    let q = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(q, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
    _mm256_set_m128i(hi, lo)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load(qs: &[i8; 32]) -> __m256i {
    _mm256_loadu_si256(qs.as_ptr() as *const __m256i)
}

/// Sum of 32 products of unsigned (< 128) by signed bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(x, y);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// A weight block's 32 values as bytes, ready for `maddubs` (which takes
/// one unsigned operand): unsigned values as they are; signed ones as
/// their magnitudes, with the signs moved onto the activations.
#[derive(Clone, Copy)]
struct WeightBytes {
    unsigned: __m256i,
    signs: Option<__m256i>,
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn signed(x: __m256i) -> WeightBytes {
    WeightBytes {
        unsigned: _mm256_sign_epi8(x, x),
        signs: Some(x),
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unsigned(x: __m256i) -> WeightBytes {
    WeightBytes {
        unsigned: x,
        signs: None,
    }
}

/// The 8 partial sums of the block's 32 integer products.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prod(w: WeightBytes, a: &ActBlock) -> __m256 {
    prod_loaded(w, load(&a.qs))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prod_loaded(w: WeightBytes, y: __m256i) -> __m256 {
    let y = match w.signs {
        Some(s) => _mm256_sign_epi8(y, s),
        None => y,
    };
    dot_u8_i8(w.unsigned, y)
}

/// How many quads of weight rows ahead the decoding kernel prefetches
/// (1 to 4 measured here; 2 was at least as fast as the others).
const PREFETCH_QUADS: usize = 2;

/// Software prefetch of the weight rows to come, for decoding (one
/// activation row; with more, tried on prompts and batches, it did not
/// help measurably). A product then streams its weights from DRAM once; the four rows of a quad are contiguous, and so
/// are the quads after it, but four interleaved short rows (a few hundred
/// bytes each) defeat the hardware prefetchers. With block `b` of this quad
/// the same share of a later quad is asked for. Prefetches never fault, so
/// the address may run past the matrix.
struct Ahead {
    base: *const i8,
    stride: usize,
}

impl Ahead {
    #[inline(always)]
    fn new<B>(first_row: &[B]) -> Self {
        let stride = 4 * std::mem::size_of::<B>();
        Ahead {
            base: (first_row.as_ptr() as *const i8)
                .wrapping_add(PREFETCH_QUADS * first_row.len() * stride),
            stride,
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn fetch(&self, block: usize) {
        let p = self.base.wrapping_add(block * self.stride);
        let mut line = 0;
        while line < self.stride {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line));
            line += 64;
        }
    }
}

/// For one block format: `<w, a>` for one weight row; for four weight
/// rows against one activation row (decoding); and for four weight rows
/// against two activation rows (prompts: each weight block is unpacked
/// once for both). Every output has its own accumulator (one row: two),
/// so consecutive fused multiply-adds do not wait on each other.
/// `$unpack`: the block's bytes; `$off`: its constant term (Q4_1's
/// offset times the activations' sum, else 0); `$offsets`: the sums of
/// `$off` over a row for four rows at once, added in the same order and
/// rounded the same way (the pairs kernel must equal the single-row one
/// bit for bit).
macro_rules! kernels {
    ($one:ident, $four:ident, $four2:ident, $B:ty,
     |$w:ident| $unpack:expr, |$wo:ident, $ao:ident| $off:expr, $offsets:path) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $one(w: &[$B], a: &[ActBlock]) -> f32 {
            let a = &a[..w.len()];
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut off = [0f32; 2];
            for (i, ($w, ab)) in w.iter().zip(a).enumerate() {
                let d = _mm256_set1_ps(f32_of($w.d) * ab.d);
                acc[i % 2] = _mm256_fmadd_ps(d, prod($unpack, ab), acc[i % 2]);
                let ($wo, $ao) = ($w, ab);
                off[i % 2] += $off;
            }
            hsum(_mm256_add_ps(acc[0], acc[1])) + off[0] + off[1]
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $four(w: [&[$B]; 4], a: &[ActBlock]) -> [f32; 4] {
            let n = w[0].len();
            let w = w.map(|w| &w[..n]);
            let a = &a[..n];
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut off = [0f32; 4];
            let ahead = Ahead::new(w[0]);
            for b in 0..n {
                ahead.fetch(b);
                let ab = &a[b];
                for r in 0..4 {
                    let $w = &w[r][b];
                    let d = _mm256_set1_ps(f32_of($w.d) * ab.d);
                    acc[r] = _mm256_fmadd_ps(d, prod($unpack, ab), acc[r]);
                    let ($wo, $ao) = ($w, ab);
                    off[r] += $off;
                }
            }
            [0, 1, 2, 3].map(|r| hsum(acc[r]) + off[r])
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $four2(w: [&[$B]; 4], a: [&[ActBlock]; 2]) -> [[f32; 4]; 2] {
            let n = w[0].len();
            let w = w.map(|w| &w[..n]);
            let a = a.map(|a| &a[..n]);
            // Weight rows outer, activation rows inner: one unpacked weight
            // block is live at a time, so the eight accumulators, the two
            // activation blocks and the constants fit the 16 registers (with
            // all four blocks unpacked first, LLVM spilled to the stack). The
            // constant terms are summed after, in their own loop.
            let mut acc = [[_mm256_setzero_ps(); 4]; 2];
            let wp = w.map(|w| w.as_ptr());
            let ap = a.map(|a| a.as_ptr());
            for b in 0..n {
                // SAFETY: every slice was cut to n blocks above.
                let ab = [&*ap[0].add(b), &*ap[1].add(b)];
                let y = [load(&ab[0].qs), load(&ab[1].qs)];
                for r in 0..4 {
                    let $w = &*wp[r].add(b);
                    let bytes = $unpack;
                    let dw = f32_of($w.d);
                    for j in 0..2 {
                        let d = _mm256_set1_ps(dw * ab[j].d);
                        acc[j][r] = _mm256_fmadd_ps(d, prod_loaded(bytes, y[j]), acc[j][r]);
                    }
                }
            }
            let off = $offsets(w, a);
            // Loops, not `map`: a closure would not inherit the target features.
            let mut out = [[0f32; 4]; 2];
            for j in 0..2 {
                for r in 0..4 {
                    out[j][r] = hsum(acc[j][r]) + off[j][r];
                }
            }
            out
        }
    };
}

kernels!(
    dot_q8_0,
    dot4_q8_0,
    dot42_q8_0,
    BlockQ8_0,
    |w| signed(_mm256_loadu_si256(w.qs.as_ptr() as *const __m256i)),
    |_w, _a| 0.0,
    no_offsets
);
kernels!(
    dot_q4_0,
    dot4_q4_0,
    dot42_q4_0,
    BlockQ4_0,
    |w| signed(_mm256_sub_epi8(nibbles(&w.qs), _mm256_set1_epi8(8))),
    |_w, _a| 0.0,
    no_offsets
);
kernels!(
    dot_q4_1,
    dot4_q4_1,
    dot42_q4_1,
    BlockQ4_1,
    |w| unsigned(nibbles(&w.qs)),
    |w, a| f32_of(w.m) * a.s,
    q4_1_offsets
);

/// What the single-row kernels add for a format without constant terms:
/// `0.0` per block, which sums to `0.0`.
fn no_offsets<B>(_w: [&[B]; 4], _a: [&[ActBlock]; 2]) -> [[f32; 4]; 2] {
    [[0.0; 4]; 2]
}

/// Q4_1's constant terms `m * s` of four weight rows against two activation
/// rows, summed over the blocks in order from 0.0 with a separate multiply
/// and add: what `dot4_q4_1` does per row in scalars, four lanes at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_offsets(w: [&[BlockQ4_1]; 4], a: [&[ActBlock]; 2]) -> [[f32; 4]; 2] {
    let mut off = [_mm_setzero_ps(); 2];
    for b in 0..a[0].len() {
        let m = _mm_cvtph_ps(_mm_set_epi16(
            0,
            0,
            0,
            0,
            w[3][b].m.to_bits() as i16,
            w[2][b].m.to_bits() as i16,
            w[1][b].m.to_bits() as i16,
            w[0][b].m.to_bits() as i16,
        ));
        for j in 0..2 {
            off[j] = _mm_add_ps(off[j], _mm_mul_ps(m, _mm_set1_ps(a[j][b].s)));
        }
    }
    let mut out = [[0f32; 4]; 2];
    for j in 0..2 {
        _mm_storeu_ps(out[j].as_mut_ptr(), off[j]);
    }
    out
}

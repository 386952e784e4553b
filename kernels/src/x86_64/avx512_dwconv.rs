//! `dw16c2-avx512-vnni`: depthwise convolution on AVX-512, 16 channels per zmm (two
//! chunks of 8), kernel columns in pairs, summed with `vpdpwssd` (see
//! [`crate::dwconv`] for the pair rows and packed weights).
//!
//! ```text
//!  per output column, per pair of chunks (16 channels):
//!      acc = Σ over kernel rows kh, column pairs j:
//!            vpdpwssd(acc, pair row kh at position ow·sw + 2j·dw, weights (kh, j))
//!      → 16 i32 lanes, acc + x0·(w0 − wzp) + x1·(w1 − wzp) each: exact
//!      (+ bias − zp·Σ(w − wzp), then Float requantization, fused; narrowed with
//!      vpmovdb, stored whole or under a mask at the channel tail)
//!  building a pair row, per pair of chunks, along the positions inside the row:
//!      vpmovzxbd x[iw], vpmovzxbd x[iw + dw] (16 bytes each) → vpslld 16, vpord
//!      → store
//! ```
//!
//! The pair rows use [`lane_at`]'s 16-lane layout, so one aligned-or-not zmm load
//! brings one tap of 16 channels. An odd last chunk of a block runs the same code on
//! ymm (AVX-512 VL). `vpdpwssd` (not the saturating `vpdpwssds`) adds both i16
//! products of a lane to the i32 accumulator with wrapping, as `vpmaddwd` + `vpaddd`
//! do: each product is exact in i32 and their sum (±130050) too, so the result is the
//! AVX2 kernel's, bit for bit.
//!
//! With symmetric weights (every zero point 0) and 5 kernel columns or more, the rows
//! hold quads instead ([`DwKernel::with_quads`]): 4 taps per lane as u8 bytes
//! against the i8 weights, summed with `vpdpbusd` (the wrapping form), 2 quads per
//! 5×5 kernel row instead of 3 pairs; each pair row is turned into a quad row in
//! place after it is built (`P[p] | P[p + 2·dw] << 8`).
//!
//! 3×3 and 5×5 kernels run instances with the kernel size fixed at compile time, so
//! the loops over taps unroll and the weights stay in registers; other sizes run the
//! same body with run-time bounds.

use std::arch::x86_64::*;

use crate::dwconv::{BuildArgs, DwKernel, FastRun, FloatOut, LANES, RowArgs, RowOut, build_with, lane_at, lane_runs};

/// The AVX-512 depthwise kernel, or `None` if this CPU lacks any of AVX-512 F, BW, VL,
/// VNNI or AVX2.
pub fn dw_kernel() -> Option<&'static DwKernel> {
    if crate::registry::AVX512_VNNI.cpu_supports() { Some(&KERNEL) } else { None }
}

// Private: handed out only by `dw_kernel()`, after detection.
static KERNEL: DwKernel = {
    // SAFETY: both functions read and write only through their checked arguments, and
    // run only after `dw_kernel()` detected every feature they are compiled for.
    unsafe { DwKernel::new("dw16c2-avx512-vnni", build, row).with_fused_float().with_wide_vectors().with_quads() }
};

/// # Safety
/// AVX-512 F/BW/VL/VNNI and AVX2 must be available; the arguments satisfy `BuildArgs`
/// (checked by the caller).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn build(args: BuildArgs<'_>) {
    let (chunks, span, offset) = (args.chunks, args.span, args.quad_offset);
    let dst = build_with(args, true, |run| {
        run.check();
        let FastRun { x0, x1, pixel0, pixel1, dst, positions, lanes, step } = run;
        let (x0, x1, dst) = (x0.as_ptr(), x1.as_ptr(), dst.as_mut_ptr());
        if lanes == 2 * LANES {
            for k in 0..positions {
                // SAFETY: the features are enabled here; position `k` reads 16 bytes at
                // `k · pixel0` of `x0` and at `k · pixel1` of `x1` and writes 16 lanes at
                // `k · step` of `dst`, all in bounds (`FastRun::check`); unaligned.
                unsafe {
                    let a = _mm512_cvtepu8_epi32(_mm_loadu_si128(x0.add(k * pixel0).cast()));
                    let b = _mm512_cvtepu8_epi32(_mm_loadu_si128(x1.add(k * pixel1).cast()));
                    _mm512_storeu_si512(dst.add(k * step).cast(), _mm512_or_si512(a, _mm512_slli_epi32::<16>(b)));
                }
            }
        } else {
            for k in 0..positions {
                // SAFETY: as above, for 8 bytes and 8 lanes.
                unsafe {
                    let a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(x0.add(k * pixel0).cast()));
                    let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(x1.add(k * pixel1).cast()));
                    _mm256_storeu_si256(dst.add(k * step).cast(), _mm256_or_si256(a, _mm256_slli_epi32::<16>(b)));
                }
            }
        }
    });
    if offset == 0 {
        return;
    }
    let formed = span.saturating_sub(offset);
    for (at, lanes) in lane_runs(true, chunks, span) {
        let run = &mut dst[at..][..span * lanes];
        let p = run.as_mut_ptr();
        // Position k's lanes at `k · lanes`, its partner's at `(k + offset) · lanes`,
        // both below `span · lanes` (k < formed = span − offset): within `run`.
        // SAFETY: the features are enabled here; every access is in bounds as above
        // (unaligned). Ascending k reads each partner (k + offset > k) before that
        // position is rewritten.
        unsafe {
            if lanes == 2 * LANES {
                for k in 0..formed {
                    let lo = _mm512_loadu_si512(p.add(k * lanes).cast());
                    let hi = _mm512_loadu_si512(p.add((k + offset) * lanes).cast());
                    _mm512_storeu_si512(p.add(k * lanes).cast(), _mm512_or_si512(lo, _mm512_slli_epi32::<8>(hi)));
                }
            } else {
                for k in 0..formed {
                    let lo = _mm256_loadu_si256(p.add(k * lanes).cast());
                    let hi = _mm256_loadu_si256(p.add((k + offset) * lanes).cast());
                    _mm256_storeu_si256(p.add(k * lanes).cast(), _mm256_or_si256(lo, _mm256_slli_epi32::<8>(hi)));
                }
            }
        }
    }
}

/// # Safety
/// As [`build`], for `RowArgs`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn row(args: RowArgs<'_>) {
    // SAFETY: forwarded; each instance is the same body.
    unsafe {
        match (args.row_at.len(), args.pairs, args.quads) {
            (3, 2, false) => row_with::<false>(args, 3, 2),
            (5, 3, false) => row_with::<false>(args, 5, 3),
            (kh, pairs, false) => row_with::<false>(args, kh, pairs),
            (3, 1, true) => row_with::<true>(args, 3, 1),
            (5, 2, true) => row_with::<true>(args, 5, 2),
            (kh, quads, true) => row_with::<true>(args, kh, quads),
        }
    }
}

/// One vector width: 16 lanes (a pair of chunks) or 8 (a lone chunk).
trait Lanes: Copy {
    /// Lanes per vector.
    const N: usize;
    /// Weights of a tap: `N / 8` chunks' 8 lanes, `chunk_stride` lanes apart.
    unsafe fn load_w(w: *const i32, chunk_stride: usize) -> Self;
    unsafe fn load(p: *const i32) -> Self;
    unsafe fn zero() -> Self;
    /// `acc + Σ` of the two i16 products of each lane, wrapping.
    unsafe fn dp(acc: Self, x: Self, w: Self) -> Self;
    /// `acc + Σ` of the four u8 × i8 products of each lane, wrapping.
    unsafe fn dp4(acc: Self, x: Self, w: Self) -> Self;
    /// Wrapping i32 sums.
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn store(self, p: *mut i32);
    /// `self · scale` (`self` already holds the bias) clamped, rounded, plus the zero
    /// point, stored as the
    /// first `n` bytes at `dst`.
    unsafe fn quantize(self, scale: *const f32, f: &FloatOut<'_>, dst: *mut u8, n: usize);
}

impl Lanes for __m512i {
    const N: usize = 16;

    #[inline(always)]
    unsafe fn load_w(w: *const i32, chunk_stride: usize) -> Self {
        // SAFETY: the caller's contract (features, and both chunks' lanes readable).
        unsafe {
            let lo = _mm512_castsi256_si512(_mm256_loadu_si256(w.cast()));
            _mm512_inserti64x4::<1>(lo, _mm256_loadu_si256(w.add(chunk_stride).cast()))
        }
    }

    #[inline(always)]
    unsafe fn load(p: *const i32) -> Self {
        // SAFETY: the caller's contract.
        unsafe { _mm512_loadu_si512(p.cast()) }
    }

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller's contract.
        unsafe { _mm512_setzero_si512() }
    }

    #[inline(always)]
    unsafe fn dp(acc: Self, x: Self, w: Self) -> Self {
        // SAFETY: the caller's contract.
        unsafe { _mm512_dpwssd_epi32(acc, x, w) }
    }

    #[inline(always)]
    unsafe fn dp4(acc: Self, x: Self, w: Self) -> Self {
        // SAFETY: the caller's contract. The wrapping form, never `vpdpbusds`.
        unsafe { _mm512_dpbusd_epi32(acc, x, w) }
    }

    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        // SAFETY: the caller's contract.
        unsafe { _mm512_add_epi32(a, b) }
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut i32) {
        // SAFETY: the caller's contract.
        unsafe { _mm512_storeu_si512(p.cast(), self) }
    }

    #[inline(always)]
    unsafe fn quantize(self, scale: *const f32, f: &FloatOut<'_>, dst: *mut u8, n: usize) {
        // SAFETY: the caller's contract: 16 scales readable, `n` bytes writable.
        unsafe {
            // The AVX2 kernel's operations, lane for lane: (bias + acc) as f32 · scale,
            // clamped, rounded to nearest even (the default MXCSR mode, as the
            // reference's f32 arithmetic), plus the zero point; already in the output
            // type's range, so vpmovdb's truncation is exact for u8 and i8.
            let x = _mm512_mul_ps(_mm512_cvtepi32_ps(self), _mm512_loadu_ps(scale));
            let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(f.lo)), _mm512_set1_ps(f.hi));
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(x), _mm512_set1_epi32(f.zero_point));
            // vpmovdb to a register, then a plain store (or a masked one at the channel
            // tail): vpmovdb straight to memory is far slower on Zen 4.
            let bytes = _mm512_cvtepi32_epi8(q);
            if n >= 16 {
                _mm_storeu_si128(dst.cast(), bytes);
            } else {
                _mm_mask_storeu_epi8(dst.cast(), (1u16 << n) - 1, bytes);
            }
        }
    }
}

impl Lanes for __m256i {
    const N: usize = 8;

    #[inline(always)]
    unsafe fn load_w(w: *const i32, _: usize) -> Self {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_si256(w.cast()) }
    }

    #[inline(always)]
    unsafe fn load(p: *const i32) -> Self {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller's contract.
        unsafe { _mm256_setzero_si256() }
    }

    #[inline(always)]
    unsafe fn dp(acc: Self, x: Self, w: Self) -> Self {
        // SAFETY: the caller's contract.
        unsafe { _mm256_dpwssd_epi32(acc, x, w) }
    }

    #[inline(always)]
    unsafe fn dp4(acc: Self, x: Self, w: Self) -> Self {
        // SAFETY: the caller's contract. The wrapping form, never `vpdpbusds`.
        unsafe { _mm256_dpbusd_epi32(acc, x, w) }
    }

    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        // SAFETY: the caller's contract.
        unsafe { _mm256_add_epi32(a, b) }
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut i32) {
        // SAFETY: the caller's contract.
        unsafe { _mm256_storeu_si256(p.cast(), self) }
    }

    #[inline(always)]
    unsafe fn quantize(self, scale: *const f32, f: &FloatOut<'_>, dst: *mut u8, n: usize) {
        // SAFETY: the caller's contract: 8 scales readable, `n` bytes writable.
        unsafe {
            let x = _mm256_mul_ps(_mm256_cvtepi32_ps(self), _mm256_loadu_ps(scale));
            let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(f.lo)), _mm256_set1_ps(f.hi));
            let q = _mm256_add_epi32(_mm256_cvtps_epi32(x), _mm256_set1_epi32(f.zero_point));
            let bytes = _mm256_cvtepi32_epi8(q);
            if n >= 8 {
                _mm_storel_epi64(dst.cast(), bytes);
            } else {
                _mm_mask_storeu_epi8(dst.cast(), (1u16 << n) - 1, bytes);
            }
        }
    }
}

/// # Safety
/// As [`row`], with `kernel_rows == args.row_at.len()`, `pairs == args.pairs` and
/// `QUADS == args.quads`.
#[inline(always)]
unsafe fn row_with<const QUADS: bool>(mut args: RowArgs<'_>, kernel_rows: usize, pairs: usize) {
    let chunks = args.chunks;
    for chunk in (0..chunks & !1).step_by(2) {
        // SAFETY: forwarded (chunks `chunk` and `chunk + 1` exist).
        unsafe { chunk_cols::<__m512i, QUADS>(&mut args, chunk, kernel_rows, pairs) };
    }
    if chunks % 2 == 1 {
        // SAFETY: forwarded (chunk `chunks − 1` exists).
        unsafe { chunk_cols::<__m256i, QUADS>(&mut args, chunks - 1, kernel_rows, pairs) };
    }
}

/// The columns of chunks `chunk..chunk + V::N / 8`.
///
/// # Safety
/// As [`row_with`], with those chunks in the block (laid out by [`lane_at`]).
#[inline(always)]
unsafe fn chunk_cols<V: Lanes, const QUADS: bool>(
    args: &mut RowArgs<'_>,
    chunk: usize,
    kernel_rows: usize,
    pairs: usize,
) {
    let RowArgs { pair_rows, row_at, span, weights, stride, pair_step, chunks, col0, cols, .. } = *args;
    let out = &mut args.out;
    let rows = pair_rows.as_ptr();
    // `RowArgs::check` proved: `row_at[kh] + chunks · span · 8 ≤ pair_rows.len()` and
    // every read position `< span`, so (by `lane_at`) every V::N lanes read from a
    // position of these chunks; weights of `chunks · KH · pairs · 8` lanes;
    // accumulators of `(cols − 1) · stride + chunks · 8` lanes, or the fused output's
    // bias and scale of `chunks · 8` lanes and a window of `cols` × `channels` bytes,
    // of which these chunks store only the real channels (the mask).
    // SAFETY: the features are available (the contract); every (unaligned) access is
    // in bounds as above.
    unsafe {
        let chunk_stride = kernel_rows * pairs * LANES;
        let w = weights.as_ptr().add(chunk * chunk_stride);
        let mut wv = [V::zero(); 16];
        let held = (kernel_rows * pairs).min(16);
        for (t, v) in wv.iter_mut().enumerate().take(held) {
            *v = V::load_w(w.add(t * LANES), chunk_stride);
        }
        let bias = match &*out {
            RowOut::Float(f) => V::load(f.bias.as_ptr().add(chunk * LANES)),
            RowOut::Acc { .. } => V::zero(),
        };
        // Lanes from one position to the next.
        let pos = V::N;
        let base = lane_at(V::N > LANES, chunks, span, chunk, col0 * stride);
        // This chunk's first read position in each kernel row's pair row.
        let mut row_ptr = [rows; 16];
        for (p, &at) in row_ptr.iter_mut().zip(row_at) {
            *p = rows.add(at + base);
        }
        for i in 0..cols {
            let step = i * stride * pos;
            // Two sums (even and odd taps) halve the chain of dependent `vpdpwssd`;
            // the bias (0 for the accumulators) starts one: wrapping adds commute.
            let mut sums = [bias, V::zero()];
            for kh in 0..kernel_rows {
                let r = if kh < 16 { row_ptr[kh] } else { rows.add(row_at[kh] + base) }.add(step);
                for j in 0..pairs {
                    let t = kh * pairs + j;
                    let wt = if t < 16 { wv[t] } else { V::load_w(w.add(t * LANES), chunk_stride) };
                    let x = V::load(r.add(j * pair_step * pos));
                    sums[t % 2] = if QUADS { V::dp4(sums[t % 2], x, wt) } else { V::dp(sums[t % 2], x, wt) };
                }
            }
            let sum = V::add(sums[0], sums[1]);
            match out {
                RowOut::Acc { acc, stride: acc_stride } => {
                    sum.store(acc.as_mut_ptr().add(i * *acc_stride + chunk * LANES))
                }
                RowOut::Float(f) => {
                    let n = f.out.cols().saturating_sub(chunk * LANES).min(V::N);
                    if n > 0 {
                        let dst = f.out.as_mut_ptr().add(i * f.out.stride() + chunk * LANES);
                        sum.quantize(f.scale.as_ptr().add(chunk * LANES), f, dst, n);
                    }
                }
            }
        }
    }
}

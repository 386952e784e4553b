//! `dw8c2-avx2-madd`: depthwise convolution on AVX2, 8 channels per ymm, kernel
//! columns in pairs (see [`crate::dwconv`] for the pair rows and packed weights).
//!
//! ```text
//!  per output column, per chunk of 8 channels:
//!      acc = Σ over kernel rows kh, column pairs j:
//!            vpmaddwd(pair row kh at position ow·sw + 2j·dw, weights (kh, j))
//!      → 8 i32 lanes, x0·(w0 − wzp) + x1·(w1 − wzp) each: exact
//!      (+ bias − zp·Σ(w − wzp), then Float requantization, fused)
//!  building a pair row, per position and chunk of 8 channels:
//!      vmovq x[iw], vmovq x[iw + dw] → vpunpcklbw → vpmovzxbw → store
//! ```
//!
//! 3×3 and 5×5 kernels run instances with the kernel size fixed at compile time, so
//! the loops over taps unroll and the weights stay in registers; other sizes run the
//! same body with run-time bounds.

use std::arch::x86_64::*;

use crate::dwconv::{BuildArgs, DwKernel, FastRun, LANES, RowArgs, RowOut, build_with};

/// The AVX2 depthwise kernel, or `None` if this CPU lacks AVX2.
pub fn dw_kernel() -> Option<&'static DwKernel> {
    if crate::registry::AVX2.cpu_supports() { Some(&KERNEL) } else { None }
}

// Private: handed out only by `dw_kernel()`, after detection.
static KERNEL: DwKernel = {
    // SAFETY: both functions read and write only through their checked arguments, and
    // run only after `dw_kernel()` detected AVX2.
    unsafe { DwKernel::new("dw8c2-avx2-madd", build, row).with_fused_float() }
};

/// # Safety
/// AVX2 must be available; the arguments satisfy `BuildArgs` (checked by the caller).
#[target_feature(enable = "avx2")]
unsafe fn build(args: BuildArgs<'_>) {
    build_with(args, false, |run| {
        run.check();
        let FastRun { x0, x1, pixel0, pixel1, dst, positions, step, .. } = run;
        let (x0, x1, dst) = (x0.as_ptr(), x1.as_ptr(), dst.as_mut_ptr());
        for k in 0..positions {
            // Position `k` reads 8 bytes at `k · pixel0` of `x0` and at `k · pixel1` of
            // `x1` and writes 8 lanes at `k · step` of `dst` (lanes = 8: no pairs here).
            // SAFETY: AVX2 is enabled here; every access above is in bounds
            // (`FastRun::check`); loads and stores are unaligned.
            unsafe {
                let a = _mm_loadl_epi64(x0.add(k * pixel0).cast());
                let b = _mm_loadl_epi64(x1.add(k * pixel1).cast());
                let pairs = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b));
                _mm256_storeu_si256(dst.add(k * step).cast(), pairs);
            }
        }
    });
}

/// # Safety
/// AVX2 must be available; the arguments satisfy `RowArgs` (checked by the caller).
#[target_feature(enable = "avx2")]
unsafe fn row(args: RowArgs<'_>) {
    // SAFETY: forwarded; each instance is the same body.
    unsafe {
        match (args.row_at.len(), args.pairs) {
            (3, 2) => row_with(args, 3, 2),
            (5, 3) => row_with(args, 5, 3),
            (kh, pairs) => row_with(args, kh, pairs),
        }
    }
}

/// # Safety
/// As [`row`], with `kernel_rows == args.row_at.len()` and `pairs == args.pairs`.
#[inline(always)]
unsafe fn row_with(args: RowArgs<'_>, kernel_rows: usize, pairs: usize) {
    let RowArgs { pair_rows, row_at, span, weights, stride, pair_step, chunks, col0, cols, out, .. } = args;
    let rows = pair_rows.as_ptr();
    // The fused output's constants, or the accumulators.
    let (acc, acc_stride, mut fused) = match out {
        RowOut::Acc { acc, stride } => (acc.as_mut_ptr(), stride, None),
        RowOut::Float(f) => (std::ptr::null_mut(), 0, Some(f)),
    };
    let (lo, hi) = fused.as_ref().map_or((0.0, 0.0), |f| (f.lo, f.hi));
    let zp = fused.as_ref().map_or(0, |f| f.zero_point);
    // SAFETY: AVX2 is available (this function's contract).
    let (lo, hi, zp) = unsafe { (_mm256_set1_ps(lo), _mm256_set1_ps(hi), _mm256_set1_epi32(zp)) };
    for chunk in 0..chunks {
        // `RowArgs::check` proved: `row_at[kh] + chunks · span · 8 ≤ pair_rows.len()` and
        // every read position `< span`; weights of `chunks · KH · pairs · 8` lanes;
        // accumulators of `(cols − 1) · stride + chunks · 8` lanes, or the fused output's
        // bias and scale of `chunks · 8` lanes and a window of `cols` × `channels` bytes,
        // of which a chunk stores all 8 only when all 8 are real channels.
        // SAFETY: AVX2 is available; every (unaligned) access is in bounds as above.
        unsafe {
            let w = weights.as_ptr().add(chunk * kernel_rows * pairs * LANES);
            let mut wv = [_mm256_setzero_si256(); 16];
            let held = (kernel_rows * pairs).min(16);
            for (t, v) in wv.iter_mut().enumerate().take(held) {
                *v = _mm256_loadu_si256(w.add(t * LANES).cast());
            }
            let (bias, scale) = match &fused {
                Some(f) => (
                    _mm256_loadu_si256(f.bias.as_ptr().add(chunk * LANES).cast()),
                    _mm256_loadu_ps(f.scale.as_ptr().add(chunk * LANES)),
                ),
                None => (_mm256_setzero_si256(), _mm256_setzero_ps()),
            };
            // This chunk's first read position in each kernel row's pair row.
            let mut row_ptr = [rows; 16];
            for (p, &at) in row_ptr.iter_mut().zip(row_at) {
                *p = rows.add(at + (chunk * span + col0 * stride) * LANES);
            }
            for i in 0..cols {
                let step = i * stride * LANES;
                let mut sum = _mm256_setzero_si256();
                for kh in 0..kernel_rows {
                    let r = if kh < 16 {
                        row_ptr[kh]
                    } else {
                        rows.add(row_at[kh] + (chunk * span + col0 * stride) * LANES)
                    }
                    .add(step);
                    for j in 0..pairs {
                        let t = kh * pairs + j;
                        let wt = if t < 16 { wv[t] } else { _mm256_loadu_si256(w.add(t * LANES).cast()) };
                        let x = _mm256_loadu_si256(r.add(j * pair_step * LANES).cast());
                        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(x, wt));
                    }
                }
                match &mut fused {
                    None => _mm256_storeu_si256(acc.add(i * acc_stride + chunk * LANES).cast(), sum),
                    Some(f) => {
                        // (acc + bias) as f32 · scale, clamped, rounded to nearest even
                        // (the default MXCSR mode, as the reference's f32 arithmetic),
                        // plus the zero point; then narrowed, already in range.
                        let x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(sum, bias)), scale);
                        let x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
                        let q = _mm256_add_epi32(_mm256_cvtps_epi32(x), zp);
                        let q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
                        let q8 = if f.signed { _mm_packs_epi16(q16, q16) } else { _mm_packus_epi16(q16, q16) };
                        let (out_stride, channels) = (f.out.stride(), f.out.cols());
                        let dst = f.out.as_mut_ptr().add(i * out_stride + chunk * LANES);
                        let n = channels.saturating_sub(chunk * LANES).min(LANES);
                        if n == LANES {
                            _mm_storel_epi64(dst.cast(), q8);
                        } else {
                            let mut bytes = [0u8; 16];
                            _mm_storeu_si128(bytes.as_mut_ptr().cast(), q8);
                            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, n);
                        }
                    }
                }
            }
        }
    }
}

//! `dw8c2-avx2-madd`: depthwise convolution on AVX2, 8 channels per ymm, kernel
//! columns in pairs (see [`crate::dwconv`] for the pair rows and packed weights).
//!
//! ```text
//!  per output column, per chunk of 8 channels:
//!      acc = Σ over kernel rows kh, column pairs j:
//!            vpmaddwd(pair row kh at position ow·sw + 2j·dw, weights (kh, j))
//!      → 8 i32 lanes, (x0 − zp)(w0 − wzp) + (x1 − zp)(w1 − wzp) each: exact
//!  building a pair row, per position and chunk of 8 channels:
//!      vmovq x[iw], vmovq x[iw + dw] → vpunpcklbw → vpmovzxbw → vpsubw zp → store
//! ```
//!
//! 3×3 and 5×5 kernels run instances with the kernel size fixed at compile time, so
//! the loops over taps unroll and the weights stay in registers; other sizes run the
//! same body with run-time bounds.

use std::arch::x86_64::*;

use crate::dwconv::{BuildArgs, DwKernel, LANES, RowArgs, build_with};

/// The AVX2 depthwise kernel, or `None` if this CPU lacks AVX2.
pub fn dw_kernel() -> Option<&'static DwKernel> {
    if is_x86_feature_detected!("avx2") { Some(&KERNEL) } else { None }
}

// Private: handed out only by `dw_kernel()`, after detection.
static KERNEL: DwKernel = {
    // SAFETY: both functions read and write only through their checked arguments, and
    // run only after `dw_kernel()` detected AVX2.
    unsafe { DwKernel::new("dw8c2-avx2-madd", build, row) }
};

/// # Safety
/// AVX2 must be available; the arguments satisfy `BuildArgs` (checked by the caller).
#[target_feature(enable = "avx2")]
unsafe fn build(args: BuildArgs<'_>) {
    let zp = _mm256_set1_epi16(i16::from(args.zero_point));
    build_with(args, |x0, x1, lanes| {
        assert!(x0.len() >= LANES && x1.len() >= LANES && lanes.len() >= LANES);
        // SAFETY: AVX2 is enabled here; the three slices hold 8 values each (asserted),
        // and the loads and the store are unaligned.
        unsafe {
            let a = _mm_loadl_epi64(x0.as_ptr().cast());
            let b = _mm_loadl_epi64(x1.as_ptr().cast());
            let pairs = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b)), zp);
            _mm256_storeu_si256(lanes.as_mut_ptr().cast(), pairs);
        }
    })
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
    let RowArgs { pair_rows, row_at, span, weights, stride, dilation, chunks, col0, cols, acc, acc_stride, .. } = args;
    let rows = pair_rows.as_ptr();
    let out = acc.as_mut_ptr();
    for chunk in 0..chunks {
        // SAFETY: `RowArgs::check` proved, for every kernel row, `row_at[kh] + chunks ·
        // span · 8 ≤ pair_rows.len()` and every read position `< span`; the weights
        // hold `chunks · KH · pairs · 8` lanes; `acc` holds `(cols − 1) · acc_stride +
        // chunks · 8` lanes. All accesses are unaligned loads and stores.
        unsafe {
            let w = weights.as_ptr().add(chunk * kernel_rows * pairs * LANES);
            let mut wv = [_mm256_setzero_si256(); 16];
            let held = (kernel_rows * pairs).min(16);
            for (t, v) in wv.iter_mut().enumerate().take(held) {
                *v = _mm256_loadu_si256(w.add(t * LANES).cast());
            }
            for i in 0..cols {
                let first = (col0 + i) * stride;
                let mut sum = _mm256_setzero_si256();
                for kh in 0..kernel_rows {
                    let r = rows.add(row_at[kh] + (chunk * span + first) * LANES);
                    for j in 0..pairs {
                        let t = kh * pairs + j;
                        let wt = if t < 16 { wv[t] } else { _mm256_loadu_si256(w.add(t * LANES).cast()) };
                        let x = _mm256_loadu_si256(r.add(2 * j * dilation * LANES).cast());
                        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(x, wt));
                    }
                }
                _mm256_storeu_si256(out.add(i * acc_stride + chunk * LANES).cast(), sum);
            }
        }
    }
}

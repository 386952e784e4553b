//! The AVX2 output stage for the common case, Float requantization to u8 or i8: the
//! zero-point correction, bias, scale, clamp, rounding and narrowing of 8 columns in
//! a handful of vector instructions, straight from the accumulators to the output.
//! Every other stage goes through the portable epilogue.
//!
//! ```text
//!  v = acc + (a_zp·col_offset + bias) − b_zp·row_sum     wrapping i32, as the reference
//!  q = cvt(clamp(f32(v) · scale, min − zp, max − zp)) + zp
//!      (vcvtps2dq rounds half to even in the default MXCSR mode, as the reference's
//!       f32 arithmetic does; the clamp bounds are integers, so q stays in [min, max])
//!  → vpackssdw → vpackuswb / vpacksswb → 8 bytes
//! ```

use std::arch::x86_64::*;

use super::columns::{CHUNK, Columns};
use crate::output::{EpilogueArgs, OutData, Param, Requant, Scheme, epilogue_scalar};

/// The epilogue: Float to u8/i8 here, everything else portable.
///
/// # Safety
/// AVX2 must be available, and `args` must pass `EpilogueArgs::check`.
pub(crate) unsafe fn epilogue(args: EpilogueArgs<'_>) {
    match args.stage.requant {
        Some(r @ Requant { scheme: Scheme::Float { scale }, .. }) if !matches!(args.out, OutData::I32(_)) => {
            // SAFETY: forwarded from this function's contract.
            unsafe { float(args, r, scale) }
        }
        _ => epilogue_scalar(args),
    }
}

/// # Safety
/// As [`epilogue`], with a Float stage and u8 or i8 output.
#[target_feature(enable = "avx2")]
unsafe fn float(args: EpilogueArgs<'_>, r: Requant<'_>, scale: Param<'_, f32>) {
    let any_b_zp = args.zero_points.b_zp[..args.cols].iter().any(|&z| z != 0);
    let signed = matches!(args.out, OutData::I8(_));
    // SAFETY: forwarded; each instance is the same body with its branches resolved.
    unsafe {
        match (signed, any_b_zp) {
            (false, false) => float_with::<false, false>(args, r, scale),
            (false, true) => float_with::<false, true>(args, r, scale),
            (true, false) => float_with::<true, false>(args, r, scale),
            (true, true) => float_with::<true, true>(args, r, scale),
        }
    }
}

/// # Safety
/// As [`float`]; `SIGNED` says the output is i8, `B_ZP` that some weight zero point of
/// the block is nonzero.
#[inline(always)]
unsafe fn float_with<const SIGNED: bool, const B_ZP: bool>(
    args: EpilogueArgs<'_>,
    r: Requant<'_>,
    scale: Param<'_, f32>,
) {
    let EpilogueArgs { acc, acc_stride, rows, cols, row_sums, zero_points: zp, stage, mut out } = args;
    let out_stride = out.stride();
    let out_ptr = match &mut out {
        OutData::U8(o) => o.as_mut_ptr(),
        OutData::I8(o) => o.as_mut_ptr().cast::<u8>(),
        OutData::I32(_) => unreachable!("checked by the caller"),
    };
    let mut columns = Columns::new();
    let mut tail = [0i32; 8];
    let mut bytes = [0u8; 16];
    // SAFETY: AVX2 is available (this function's contract).
    let (lo, hi, out_zp) = unsafe {
        (
            _mm256_set1_ps((r.min - r.zero_point) as f32),
            _mm256_set1_ps((r.max - r.zero_point) as f32),
            _mm256_set1_epi32(r.zero_point),
        )
    };
    for c0 in (0..cols).step_by(CHUNK) {
        let width = CHUNK.min(cols - c0);
        // What depends on the column alone, once per chunk; lanes past `width` are 0.
        columns.fill(&zp, &stage, scale, c0, width, CHUNK);
        let (terms, scales, b_zps) = (&columns.terms, &columns.scales, &columns.b_zps);
        let whole = width / 8 * 8;
        for row in 0..rows {
            let acc_row = &acc[row * acc_stride + c0..][..width];
            // Reads: 8 lanes of `acc_row` at `j + 8 ≤ whole ≤ width` (the tail from its
            // copy); `terms`, `scales`, `b_zps` hold CHUNK ≥ j + 8 lanes. Stores: at most
            // `width` bytes from `row · out_stride + c0`, inside the output window by
            // `EpilogueArgs::check` (at least `rows × cols`).
            // SAFETY: AVX2 is available; every access is in bounds as listed above.
            unsafe {
                let rs = _mm256_set1_epi32(if B_ZP { row_sums[row] } else { 0 });
                let one = |v: __m256i, j: usize| {
                    let v = _mm256_add_epi32(v, _mm256_loadu_si256(terms.as_ptr().add(j).cast()));
                    let v = if B_ZP {
                        _mm256_sub_epi32(v, _mm256_mullo_epi32(_mm256_loadu_si256(b_zps.as_ptr().add(j).cast()), rs))
                    } else {
                        v
                    };
                    let x = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_loadu_ps(scales.as_ptr().add(j)));
                    let x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
                    let q = _mm256_add_epi32(_mm256_cvtps_epi32(x), out_zp);
                    let q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
                    if SIGNED { _mm_packs_epi16(q16, q16) } else { _mm_packus_epi16(q16, q16) }
                };
                let dst = out_ptr.add(row * out_stride + c0);
                for j in (0..whole).step_by(8) {
                    let q8 = one(_mm256_loadu_si256(acc_row.as_ptr().add(j).cast()), j);
                    _mm_storel_epi64(dst.add(j).cast(), q8);
                }
                if whole < width {
                    let n = width - whole;
                    tail[..n].copy_from_slice(&acc_row[whole..]);
                    let q8 = one(_mm256_loadu_si256(tail.as_ptr().cast()), whole);
                    _mm_storeu_si128(bytes.as_mut_ptr().cast(), q8);
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.add(whole), n);
                }
            }
        }
    }
}

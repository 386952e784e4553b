//! The AVX-512 output stage for Float requantization to u8 or i8: AVX2's
//! ([`super::avx2_epilogue`]) at 16 columns per vector, with the row's last columns
//! read and written under a mask instead of through a copy. Every other stage goes
//! through the portable epilogue.
//!
//! ```text
//!  v = acc + (a_zp·col_offset + bias) − b_zp·row_sum     wrapping i32, as the reference
//!  q = cvt(clamp(f32(v) · scale, min − zp, max − zp)) + zp      (ties to even)
//!  → vpmovdb (q is already within [min, max] ⊆ the output type, so truncating to the
//!    low byte is exact, for u8 and i8 alike), masked at the row's end
//! ```
//!
//! The operations are the AVX2 stage's, lane for lane, so both give the same bytes.

use std::arch::x86_64::*;

use crate::output::{EpilogueArgs, OutData, Param, Requant, Scheme, epilogue_scalar};

/// Columns whose correction terms are computed at a time (on the stack).
const CHUNK: usize = 64;

/// The epilogue: Float to u8/i8 here, everything else portable.
///
/// # Safety
/// AVX-512 F must be available, and `args` must pass `EpilogueArgs::check`.
pub(crate) unsafe fn epilogue(args: EpilogueArgs<'_>) {
    match args.stage.requant {
        Some(r @ Requant { scheme: Scheme::Float { scale }, .. }) if !matches!(args.out, OutData::I32(_)) => {
            let any_b_zp = args.zero_points.b_zp[..args.cols].iter().any(|&z| z != 0);
            // SAFETY: forwarded from this function's contract.
            unsafe { if any_b_zp { float::<true>(args, r, scale) } else { float::<false>(args, r, scale) } }
        }
        _ => epilogue_scalar(args),
    }
}

/// # Safety
/// As [`epilogue`], with a Float stage and u8 or i8 output; `B_ZP` says that some weight
/// zero point of the block is nonzero.
#[target_feature(enable = "avx512f")]
unsafe fn float<const B_ZP: bool>(args: EpilogueArgs<'_>, r: Requant<'_>, scale: Param<'_, f32>) {
    let EpilogueArgs { acc, acc_stride, rows, cols, row_sums, zero_points: zp, stage, mut out, out_stride } = args;
    let out_ptr = match &mut out {
        OutData::U8(o) => o.as_mut_ptr(),
        OutData::I8(o) => o.as_mut_ptr().cast::<u8>(),
        OutData::I32(_) => unreachable!("checked by the caller"),
    };
    let mut terms = [0i32; CHUNK];
    let mut scales = [0f32; CHUNK];
    let mut b_zps = [0i32; CHUNK];
    let lo = _mm512_set1_ps((r.min - r.zero_point) as f32);
    let hi = _mm512_set1_ps((r.max - r.zero_point) as f32);
    let out_zp = _mm512_set1_epi32(r.zero_point);
    for c0 in (0..cols).step_by(CHUNK) {
        let width = CHUNK.min(cols - c0);
        // What depends on the column alone, once per chunk; lanes past `width` stay 0.
        for j in 0..CHUNK {
            let real = j < width;
            let offset = if real { zp.col_offsets[c0 + j].wrapping_mul(zp.a_zp) } else { 0 };
            terms[j] = match stage.bias {
                Some(b) if real => offset.wrapping_add(b[c0 + j]),
                _ => offset,
            };
            scales[j] = if real { scale.at(c0 + j) } else { 0.0 };
            b_zps[j] = if real { zp.b_zp[c0 + j] } else { 0 };
        }
        for row in 0..rows {
            let acc_row = &acc[row * acc_stride + c0..][..width];
            let rs = _mm512_set1_epi32(if B_ZP { row_sums[row] } else { 0 });
            let dst = out_ptr.wrapping_add(row * out_stride + c0);
            for j in (0..width).step_by(16) {
                // Lanes j.. of this row that exist: all 16, or the row's last few.
                let mask: __mmask16 = if width - j >= 16 { !0 } else { (1u16 << (width - j)) - 1 };
                // Reads: `mask` lanes of `acc_row` from j (within `width`); `terms`,
                // `scales`, `b_zps` hold CHUNK ≥ j + 16 lanes. Stores: `mask` bytes from
                // `row · out_stride + c0 + j`, inside the output by `EpilogueArgs::check`
                // (`(rows − 1) · out_stride + cols` values).
                // SAFETY: AVX-512 F is enabled here; every access is in bounds as listed
                // above (masked lanes are neither read nor written).
                unsafe {
                    let v = _mm512_maskz_loadu_epi32(mask, acc_row.as_ptr().add(j));
                    let v = _mm512_add_epi32(v, _mm512_loadu_si512(terms.as_ptr().add(j).cast()));
                    let v = if B_ZP {
                        _mm512_sub_epi32(v, _mm512_mullo_epi32(_mm512_loadu_si512(b_zps.as_ptr().add(j).cast()), rs))
                    } else {
                        v
                    };
                    let x = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_loadu_ps(scales.as_ptr().add(j)));
                    let x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
                    let q = _mm512_add_epi32(_mm512_cvtps_epi32(x), out_zp);
                    _mm512_mask_cvtepi32_storeu_epi8(dst.add(j).cast(), mask, q);
                }
            }
        }
    }
}

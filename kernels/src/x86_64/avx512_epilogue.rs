//! The AVX-512 output stage for Float requantization to u8 or i8: AVX2's
//! ([`super::avx2_epilogue`]) at 16 columns per vector, with a row's last columns read
//! and written under a mask instead of through a copy. The AVX-512 VNNI kernel applies
//! it to each tile's sums in registers ([`Float16::quantize`]); [`epilogue`] applies it
//! to a block of accumulators (K = 0, and other kernels' tests). Every other stage goes
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
//!
//! The kernel's fused stage has a cheaper form for the common case, every scale within
//! (−1, 1): `cvtps2dq` cannot then overflow, so the float clamps go, and the zero point
//! and the clamp are applied after rounding, in integers, on 64 columns at once
//! ([`rounded`], [`IntClamp`]), without a branch: 3 operations per 16 columns plus 9
//! per 64, against 5–6 plus 4. With the tile's rows unrolled so that its sums stay in
//! registers, +14% on a 1×1 convolution over 24 channels and +9% over 64 (AMD EPYC,
//! Zen 4).

use std::arch::x86_64::*;

use super::columns::{ByteClamp, CHUNK, Columns, fused_scale, out_bytes};
use crate::output::{EpilogueArgs, Param, Requant, epilogue_scalar};

impl Columns {
    /// `a_zp · col_offset + bias` of columns `j..j + 16`.
    ///
    /// # Safety
    /// AVX-512 F.
    #[inline(always)]
    pub(super) unsafe fn terms(&self, j: usize) -> __m512i {
        let lanes = &self.terms[j..j + 16];
        // SAFETY: AVX-512 F (the contract); 16 lanes, sliced just above.
        unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) }
    }
}

/// The stage's constants, as vectors.
#[derive(Clone, Copy)]
pub(super) struct Float16 {
    lo: __m512,
    hi: __m512,
    zero_point: __m512i,
}

impl Float16 {
    /// # Safety
    /// AVX-512 F.
    #[inline(always)]
    pub(super) unsafe fn new(r: &Requant<'_>) -> Float16 {
        // SAFETY: AVX-512 F (the contract).
        unsafe {
            Float16 {
                lo: _mm512_set1_ps((r.min - r.zero_point) as f32),
                hi: _mm512_set1_ps((r.max - r.zero_point) as f32),
                zero_point: _mm512_set1_epi32(r.zero_point),
            }
        }
    }

    /// (With `TERMS` false, `v` already holds the columns' terms: sums that started
    /// from [`Columns::terms`]. With `LOW` false the low clamp is left out: the result
    /// may lie below `min`, for a caller whose saturating store clamps it there.)
    /// The output values (each within `[min, max]`) of sums `v` in columns
    /// `j..j + 16` of `cols`, in a row whose activations sum to `row_sum`.
    ///
    /// # Safety
    /// AVX-512 F, and `j + 16 ≤ CHUNK`.
    #[inline(always)]
    pub(super) unsafe fn quantize<const B_ZP: bool, const TERMS: bool, const LOW: bool>(
        self,
        v: __m512i,
        cols: &Columns,
        j: usize,
        row_sum: __m512i,
    ) -> __m512i {
        // SAFETY: AVX-512 F (the contract), and j + 16 ≤ CHUNK.
        unsafe {
            let x = scaled::<B_ZP, TERMS>(v, cols, j, row_sum);
            let x = if LOW { _mm512_max_ps(x, self.lo) } else { x };
            let x = _mm512_min_ps(x, self.hi);
            _mm512_add_epi32(_mm512_cvtps_epi32(x), self.zero_point)
        }
    }
}

/// `f32(v + terms − b_zp · row_sum) · scale` of columns `j..j + 16` of `cols` (with
/// `TERMS` false, `v` already holds the terms; with `B_ZP` false, the weight zero
/// points are all 0): the Float stage before its clamp and rounding.
///
/// # Safety
/// AVX-512 F, and `j + 16 ≤ CHUNK`.
#[inline(always)]
unsafe fn scaled<const B_ZP: bool, const TERMS: bool>(
    v: __m512i,
    cols: &Columns,
    j: usize,
    row_sum: __m512i,
) -> __m512 {
    assert!(j + 16 <= CHUNK);
    // SAFETY: AVX-512 F (the contract); the three loads read lanes j..j + 16 of arrays
    // of CHUNK (asserted just above).
    unsafe {
        let v = if TERMS { _mm512_add_epi32(v, _mm512_loadu_si512(cols.terms.as_ptr().add(j).cast())) } else { v };
        let v = if B_ZP {
            _mm512_sub_epi32(v, _mm512_mullo_epi32(_mm512_loadu_si512(cols.b_zps.as_ptr().add(j).cast()), row_sum))
        } else {
            v
        };
        _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_loadu_ps(cols.scales.as_ptr().add(j)))
    }
}

/// `round_ties_even(f32(v − b_zp · row_sum) · scale)` of sums `v` that started from
/// the columns' terms, in columns `j..j + 16` of `cols`: exact in i32 when every
/// scale of the columns is below 1 in magnitude (`columns::scales_below_one`), since
/// then `|f32(v) · scale| < 2^31` (`f32(v)` is at most 2^31, and the largest f32
/// below 1 is 1 − 2^−24), so `cvtps2dq` never leaves i32. The zero point and the
/// clamp then follow in integers ([`IntClamp`]).
///
/// # Safety
/// AVX-512 F, and `j + 16 ≤ CHUNK`.
#[inline(always)]
pub(super) unsafe fn rounded<const B_ZP: bool>(v: __m512i, cols: &Columns, j: usize, row_sum: __m512i) -> __m512i {
    // SAFETY: forwarded from this function's contract.
    unsafe { _mm512_cvtps_epi32(scaled::<B_ZP, false>(v, cols, j, row_sum)) }
}

/// The zero point and the clamp of the Float stage on rounded values ([`rounded`]), in
/// integers, four vectors (64 columns) at a time, without a branch ([`ByteClamp`]
/// says why it is exact).
#[derive(Clone, Copy)]
pub(super) struct IntClamp {
    zero_point: __m512i,
    min: __m512i,
    max: __m512i,
    flip: __m512i,
    order: __m512i,
}

impl IntClamp {
    /// # Safety
    /// AVX-512 F/BW; `r` fits the output type (i8 if `signed`, else u8).
    #[inline(always)]
    pub(super) unsafe fn new(r: &Requant<'_>, signed: bool) -> IntClamp {
        let c = ByteClamp::new(r, signed);
        // SAFETY: AVX-512 F/BW (the contract); the order is 16 i32.
        unsafe {
            IntClamp {
                zero_point: _mm512_set1_epi16(c.zero_point),
                min: _mm512_set1_epi8(c.min as i8),
                max: _mm512_set1_epi8(c.max as i8),
                flip: _mm512_set1_epi8(c.flip as i8),
                order: _mm512_loadu_si512(PACKED_ORDER.as_ptr().cast()),
            }
        }
    }

    /// The output bytes of rounded values `t[0..NU]` (16 columns each; the bytes of
    /// `NU..4` are left undefined), in column order.
    ///
    /// # Safety
    /// AVX-512 F/BW.
    #[inline(always)]
    pub(super) unsafe fn bytes<const NU: usize>(self, t: [__m512i; 4]) -> __m512i {
        // SAFETY: AVX-512 F/BW (the contract).
        unsafe {
            let lo = _mm512_adds_epi16(_mm512_packs_epi32(t[0], t[1]), self.zero_point);
            let hi = if NU > 2 { _mm512_adds_epi16(_mm512_packs_epi32(t[2], t[3]), self.zero_point) } else { lo };
            let b = _mm512_min_epu8(_mm512_max_epu8(_mm512_packus_epi16(lo, hi), self.min), self.max);
            _mm512_permutexvar_epi32(self.order, _mm512_xor_si512(b, self.flip))
        }
    }
}

/// Where the bytes of four vectors lie after two rounds of packing: per 128-bit lane
/// L, the bytes of vectors 0..4 at columns 4L..4L + 4 (`vpackssdw` and `vpack[su]swb`
/// work within lanes); output dword `i` is vector `i / 4`'s piece `i % 4`.
pub(super) const PACKED_ORDER: [i32; 16] = {
    let mut order = [0; 16];
    let mut i = 0;
    while i < 16 {
        order[i] = (4 * (i % 4) + i / 4) as i32;
        i += 1;
    }
    order
};

/// The lanes of a vector starting at column `j` that are below `width`.
pub(super) fn mask_below(width: usize, j: usize) -> __mmask16 {
    match width.saturating_sub(j) {
        n if n >= 16 => !0,
        n => (1u16 << n) - 1,
    }
}

/// The epilogue: Float to u8/i8 here, everything else portable.
///
/// # Safety
/// AVX-512 F must be available, and `args` must pass `EpilogueArgs::check`.
pub(crate) unsafe fn epilogue(args: EpilogueArgs<'_>) {
    match fused_scale(&args.stage, &args.out) {
        Some((r, scale)) => {
            let any_b_zp = args.zero_points.b_zp[..args.cols].iter().any(|&z| z != 0);
            // SAFETY: forwarded from this function's contract.
            unsafe { if any_b_zp { float::<true>(args, r, scale) } else { float::<false>(args, r, scale) } }
        }
        None => epilogue_scalar(args),
    }
}

/// # Safety
/// As [`epilogue`], with a Float stage and u8 or i8 output; `B_ZP` says that some weight
/// zero point of the block is nonzero.
#[target_feature(enable = "avx512f")]
unsafe fn float<const B_ZP: bool>(args: EpilogueArgs<'_>, r: Requant<'_>, scale: Param<'_, f32>) {
    let EpilogueArgs { acc, acc_stride, rows, cols, row_sums, zero_points, stage, mut out } = args;
    let out_stride = out.stride();
    let out_ptr = out_bytes(&mut out).expect("u8 or i8 output (checked by the caller)");
    let mut columns = Columns::new();
    // SAFETY: AVX-512 F is enabled here.
    let k = unsafe { Float16::new(&r) };
    for c0 in (0..cols).step_by(CHUNK) {
        let width = CHUNK.min(cols - c0);
        columns.fill(&zero_points, &stage, scale, c0, width, CHUNK);
        for row in 0..rows {
            let acc_row = &acc[row * acc_stride + c0..][..width];
            let rs = _mm512_set1_epi32(if B_ZP { row_sums[row] } else { 0 });
            let dst = out_ptr.wrapping_add(row * out_stride + c0);
            for j in (0..width).step_by(16) {
                let mask = mask_below(width, j);
                // Reads: `mask` lanes of `acc_row` from j (within `width`). Stores: `mask`
                // bytes from `row · out_stride + c0 + j`, inside the output window by
                // `EpilogueArgs::check` (at least `rows × cols`).
                // SAFETY: AVX-512 F is enabled here; every access is in bounds as listed
                // above (masked lanes are neither read nor written), and j + 16 ≤ CHUNK.
                unsafe {
                    let v = _mm512_maskz_loadu_epi32(mask, acc_row.as_ptr().add(j));
                    let q = k.quantize::<B_ZP, true, true>(v, &columns, j, rs);
                    _mm512_mask_cvtepi32_storeu_epi8(dst.add(j).cast(), mask, q);
                }
            }
        }
    }
}

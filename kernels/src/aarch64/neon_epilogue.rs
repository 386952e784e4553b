//! The NEON output stage, shared by the three AArch64 kernels and applied to each tile
//! as soon as its sums are complete (`Kernel::block_with_stage`): the zero-point
//! correction, bias, requantization (every scheme), clamp and narrowing of 4 columns
//! at a time, straight from the sums to the output. (Their block-wide epilogue, which
//! only a GEMM with K = 0 reaches, is the scalar one.)
//!
//! ```text
//!  v = acc + (a_zp·col_offset + bias) − b_zp·row_sum        add, mls: wrapping i32
//!
//!  Float:           q = cvtn(clamp(scvtf(v) · scale, min − zp, max − zp)) + zp
//!                   (scvtf and fcvtns round to nearest, ties to even, as the
//!                   reference's f32 arithmetic does; no fused multiply-add)
//!  TFLite double:   y = sqrdmulh(v << left, multiplier)     (= gemmlowp's
//!                   SaturatingRoundingDoublingHighMul, bit for bit)
//!    ties away:     q = srshl(sqadd(y, (y & −right) >> 31), −right)
//!                   (srshl rounds ties up; the −1 on negative y turns that into ties
//!                   away from zero, gemmlowp's RoundingDivideByPOT)
//!    ties up:       q = srshl(y, −right)
//!  TFLite single:   q = sqxtn(srshl(smull(v, multiplier), −(31 − shift)))   (64-bit)
//!  then             q = clamp(sqadd(q, zp), min, max) → xtn → xtn   (4 bytes)
//! ```
//!
//! `srshl` by a negative amount is a rounding right shift computed without
//! intermediate overflow, which is what the reference's 64-bit arithmetic does.

use std::arch::aarch64::*;

use crate::output::{EpilogueArgs, OutData, OutputStage, Requant, Rounding, Scheme, ZeroPoints};

/// How one vector of corrected accumulators becomes requantized values.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No requantization: i32 output.
    Raw,
    Float,
    TiesAway,
    HalfUp,
    Single,
}

impl Kind {
    fn of(stage: &OutputStage<'_>) -> Kind {
        match stage.requant.map(|r| r.scheme) {
            None => Kind::Raw,
            Some(Scheme::Float { .. }) => Kind::Float,
            Some(Scheme::FixedPoint { rounding: Rounding::DoubleTiesAway, .. }) => Kind::TiesAway,
            Some(Scheme::FixedPoint { rounding: Rounding::DoubleHalfUp, .. }) => Kind::HalfUp,
            Some(Scheme::FixedPoint { rounding: Rounding::Single, .. }) => Kind::Single,
        }
    }
}

/// Whether some weight zero point of the block's columns is nonzero (then the row
/// sums take part in the correction).
fn any_b_zp(args: &EpilogueArgs<'_>) -> bool {
    args.zero_points.b_zp[..args.cols].iter().any(|&z| z != 0)
}

/// The output zero point and clamp bounds.
#[derive(Clone, Copy)]
struct Bounds {
    zero_point: i32,
    min: i32,
    max: i32,
}

impl Bounds {
    fn of(r: &Requant<'_>) -> Bounds {
        Bounds { zero_point: r.zero_point, min: r.min, max: r.max }
    }
}

/// Lanes of the per-column values: one column panel (4 or 8 columns).
const N: usize = 8;

/// The per-column values of one column panel, lanes past its real columns zero.
struct Columns {
    /// `a_zp·col_offset + bias`, wrapping.
    terms: [i32; N],
    b_zp: [i32; N],
    /// Float: the scale's bits. Fixed point: the multiplier.
    multiplier: [i32; N],
    /// Double rounding: the left shift. Single: −(31 − shift).
    left: [i32; N],
    /// Double rounding: −(right shift).
    neg_right: [i32; N],
}

impl Columns {
    fn new() -> Columns {
        Columns { terms: [0; N], b_zp: [0; N], multiplier: [0; N], left: [0; N], neg_right: [0; N] }
    }

    /// Columns `c0..c0 + width` of the block (`width ≤ N`), into lanes `0..width`; the
    /// other lanes are zeroed.
    fn fill(&mut self, zp: &ZeroPoints<'_>, stage: &OutputStage<'_>, c0: usize, width: usize) {
        let (scale, multiplier, shift) = match stage.requant.map(|r| r.scheme) {
            Some(Scheme::Float { scale }) => (Some(scale), None, None),
            Some(Scheme::FixedPoint { multiplier, shift, .. }) => (None, Some(multiplier), Some(shift)),
            None => (None, None, None),
        };
        let single =
            matches!(stage.requant.map(|r| r.scheme), Some(Scheme::FixedPoint { rounding: Rounding::Single, .. }));
        for j in 0..N {
            let c = c0 + j;
            let real = j < width;
            let offset = if real { zp.col_offsets[c].wrapping_mul(zp.a_zp) } else { 0 };
            self.terms[j] = match stage.bias {
                Some(b) if real => offset.wrapping_add(b[c]),
                _ => offset,
            };
            self.b_zp[j] = if real { zp.b_zp[c] } else { 0 };
            let s = match shift {
                Some(s) if real => s.at(c),
                _ => 0,
            };
            self.multiplier[j] = match (scale, multiplier) {
                (Some(sc), _) if real => sc.at(c).to_bits() as i32,
                (_, Some(m)) if real => m.at(c),
                _ => 0,
            };
            self.left[j] = if single { s - 31 } else { s.max(0) };
            self.neg_right[j] = -((-s).max(0));
        }
    }
}

/// Loads 4 i32 from `v[j..]`.
///
/// # Safety
/// `j + 4 ≤ N`.
#[inline(always)]
unsafe fn lane4(v: &[i32; N], j: usize) -> int32x4_t {
    debug_assert!(j + 4 <= N);
    // SAFETY: the caller keeps j + 4 within the array.
    unsafe { vld1q_s32(v.as_ptr().add(j)) }
}

/// The requantized values (before the output zero point) of 4 corrected
/// accumulators at columns `j..j + 4` of the panel.
///
/// # Safety
/// `j + 4 ≤ N`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn requantize<const KIND: u8>(v: int32x4_t, cols: &Columns, j: usize, r: Bounds) -> int32x4_t {
    // SAFETY: forwarded from this function's contract.
    let (m, left, neg_right) = unsafe { (lane4(&cols.multiplier, j), lane4(&cols.left, j), lane4(&cols.neg_right, j)) };
    let zp = vdupq_n_s32(r.zero_point);
    if KIND == Kind::Float as u8 {
        let lo = vdupq_n_f32((r.min - r.zero_point) as f32);
        let hi = vdupq_n_f32((r.max - r.zero_point) as f32);
        let x = vmulq_f32(vcvtq_f32_s32(v), vreinterpretq_f32_s32(m));
        // The bounds are integers, so the rounded value stays within [min, max].
        return vaddq_s32(vcvtnq_s32_f32(vminq_f32(vmaxq_f32(x, lo), hi)), zp);
    }
    let q = if KIND == Kind::Single as u8 {
        // 64-bit products, one rounding shift by 31 − shift (in `left`, negated).
        let lo = vrshlq_s64(vmull_s32(vget_low_s32(v), vget_low_s32(m)), vmovl_s32(vget_low_s32(left)));
        let hi = vrshlq_s64(vmull_high_s32(v, m), vmovl_high_s32(left));
        vcombine_s32(vqmovn_s64(lo), vqmovn_s64(hi))
    } else {
        let y = vqrdmulhq_s32(vshlq_s32(v, left), m);
        if KIND == Kind::TiesAway as u8 {
            let fixup = vshrq_n_s32::<31>(vandq_s32(y, neg_right));
            vrshlq_s32(vqaddq_s32(y, fixup), neg_right)
        } else {
            vrshlq_s32(y, neg_right)
        }
    };
    // Saturation keeps any value past i32 beyond the clamp bounds, as the reference's
    // 64-bit sum would be.
    vminq_s32(vmaxq_s32(vqaddq_s32(q, zp), vdupq_n_s32(r.min)), vdupq_n_s32(r.max))
}

/// The output stage of a kernel that applies it to each tile in registers (see
/// `Kernel::block_with_stage`): what is fixed for the call, with raw pointers to the
/// output.
pub(crate) struct FusedStage<'a> {
    zero_points: ZeroPoints<'a>,
    stage: OutputStage<'a>,
    row_sums: &'a [i32],
    cols: usize,
    kind: Kind,
    b_zp: bool,
    bounds: Bounds,
    out_i32: *mut i32,
    out_bytes: *mut u8,
    out_stride: usize,
}

impl<'a> FusedStage<'a> {
    /// Takes over the output of `args`, which `EpilogueArgs::check_output` accepted.
    pub(crate) fn new(args: EpilogueArgs<'a>) -> FusedStage<'a> {
        let (kind, b_zp) = (Kind::of(&args.stage), any_b_zp(&args));
        let bounds = args.stage.requant.as_ref().map_or(Bounds { zero_point: 0, min: 0, max: 0 }, Bounds::of);
        let EpilogueArgs { cols, row_sums, zero_points, stage, mut out, .. } = args;
        let out_stride = out.stride();
        let (out_i32, out_bytes) = match &mut out {
            OutData::I32(o) => (o.as_mut_ptr(), std::ptr::null_mut()),
            OutData::U8(o) => (std::ptr::null_mut(), o.as_mut_ptr()),
            OutData::I8(o) => (std::ptr::null_mut(), o.as_mut_ptr().cast::<u8>()),
        };
        FusedStage { zero_points, stage, row_sums, cols, kind, b_zp, bounds, out_i32, out_bytes, out_stride }
    }

    /// The stage of the columns `c0..c0 + nr` (`nr ≤ 8`) of one column panel.
    pub(crate) fn panel(&self, c0: usize, nr: usize) -> PanelStage<'_> {
        let width = self.cols.saturating_sub(c0).min(nr);
        let mut cols = Columns::new();
        cols.fill(&self.zero_points, &self.stage, c0, width);
        PanelStage {
            cols,
            width,
            out_i32: self.out_i32.wrapping_add(c0),
            out_bytes: self.out_bytes.wrapping_add(c0),
            fused: self,
        }
    }
}

/// The output stage of one column panel: its columns' values, and where its output
/// starts.
pub(crate) struct PanelStage<'a> {
    cols: Columns,
    /// Real columns of the panel (the stage may end inside it).
    width: usize,
    out_i32: *mut i32,
    out_bytes: *mut u8,
    fused: &'a FusedStage<'a>,
}

impl PanelStage<'_> {
    /// Corrects, requantizes and stores a tile's sums: `rows[r][v]` holds output row
    /// `row0 + r`, columns `4v..4v + 4` of the panel; the stores stop at the stage's
    /// last column. One call per tile, the scheme matched once.
    ///
    /// # Safety
    /// NEON; rows `row0..row0 + rows.len()` among the stage's rows, `vectors ≤ 2`. The
    /// output then holds every element stored (`EpilogueArgs::check_output` checked
    /// the stage's rows and columns).
    #[target_feature(enable = "neon")]
    pub(crate) unsafe fn store_tile(&self, row0: usize, rows: &[[int32x4_t; 2]], vectors: usize) {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            match self.fused.kind {
                Kind::Raw => self.store_rows::<{ Kind::Raw as u8 }>(row0, rows, vectors),
                Kind::Float => self.store_rows::<{ Kind::Float as u8 }>(row0, rows, vectors),
                Kind::TiesAway => self.store_rows::<{ Kind::TiesAway as u8 }>(row0, rows, vectors),
                Kind::HalfUp => self.store_rows::<{ Kind::HalfUp as u8 }>(row0, rows, vectors),
                Kind::Single => self.store_rows::<{ Kind::Single as u8 }>(row0, rows, vectors),
            }
        }
    }

    /// [`PanelStage::store_tile`] for one scheme.
    ///
    /// # Safety
    /// As [`PanelStage::store_tile`].
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn store_rows<const KIND: u8>(&self, row0: usize, rows: &[[int32x4_t; 2]], vectors: usize) {
        for (r, row) in rows.iter().enumerate() {
            for (v, &sums) in row.iter().enumerate().take(vectors) {
                // SAFETY: forwarded from this function's contract; 4v + 4 ≤ 8.
                unsafe { self.store4::<KIND>(row0 + r, 4 * v, sums) };
            }
        }
    }

    /// Columns `c..c + 4` of the panel in output row `row`.
    ///
    /// # Safety
    /// NEON; `row` among the stage's rows, `c + 4 ≤ 8`.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn store4<const KIND: u8>(&self, row: usize, c: usize, sums: int32x4_t) {
        if c >= self.width {
            return;
        }
        let n = (self.width - c).min(4);
        let f = self.fused;
        let at = row * f.out_stride + c;
        // SAFETY: c + 4 ≤ 8 lanes of the column arrays; the row sums hold the stage's
        // rows; every store covers `n` elements of row `row` from column `c` of the
        // panel, inside the output (this function's contract).
        unsafe {
            let mut v = vaddq_s32(sums, lane4(&self.cols.terms, c));
            if f.b_zp {
                v = vmlsq_s32(v, lane4(&self.cols.b_zp, c), vdupq_n_s32(f.row_sums[row]));
            }
            if KIND == Kind::Raw as u8 {
                if n == 4 {
                    vst1q_s32(self.out_i32.add(at), v);
                } else {
                    let mut vals = [0i32; 4];
                    vst1q_s32(vals.as_mut_ptr(), v);
                    std::ptr::copy_nonoverlapping(vals.as_ptr(), self.out_i32.add(at), n);
                }
                return;
            }
            let q = requantize::<KIND>(v, &self.cols, c, f.bounds);
            // Within [min, max] ⊂ the output type: plain narrowing, 4 bytes.
            let q16 = vmovn_s32(q);
            let bytes = vget_lane_u32::<0>(vreinterpret_u32_s8(vmovn_s16(vcombine_s16(q16, q16))));
            if n == 4 {
                self.out_bytes.add(at).cast::<u32>().write_unaligned(bytes);
            } else {
                std::ptr::copy_nonoverlapping(bytes.to_le_bytes().as_ptr(), self.out_bytes.add(at), n);
            }
        }
    }
}

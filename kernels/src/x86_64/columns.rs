//! What the fused Float stages of the x86 kernels prepare per column, written once:
//! the columns' terms, scales and weight zero points for a panel ([`Columns`]), and
//! the conditions under which a stage is fused.

use crate::output::{OutData, OutputStage, Param, Requant, Scheme, ZeroPoints};

/// Columns whose per-column values are prepared at a time (on the stack).
pub(super) const CHUNK: usize = 64;

/// The stage's values that depend on the column alone, for up to [`CHUNK`] columns
/// from some first column; lanes past the real columns hold 0.
pub(super) struct Columns {
    /// `a_zp · col_offset + bias`, wrapping.
    pub(super) terms: [i32; CHUNK],
    pub(super) scales: [f32; CHUNK],
    pub(super) b_zps: [i32; CHUNK],
}

impl Columns {
    pub(super) const fn new() -> Columns {
        Columns { terms: [0; CHUNK], scales: [0.0; CHUNK], b_zps: [0; CHUNK] }
    }

    /// Columns `c0..c0 + width` in the first `lanes` entries (`width ≤ lanes ≤ CHUNK`,
    /// and the columns within the stage's). Inlined, so that its loops are compiled
    /// with the caller's AVX2 or AVX-512 (else SSE2, without a 32-bit multiply).
    #[inline(always)]
    pub(super) fn fill(
        &mut self,
        zp: &ZeroPoints<'_>,
        stage: &OutputStage<'_>,
        scale: Param<'_, f32>,
        c0: usize,
        width: usize,
        lanes: usize,
    ) {
        // One loop per value, without a branch per column (the AVX-512 VNNI kernel
        // fills each panel's 48 columns once per strip of rows, which for a GEMV is
        // once per 48 columns of work): the same values as column by column.
        let (terms, scales, b_zps) = (&mut self.terms[..lanes], &mut self.scales[..lanes], &mut self.b_zps[..lanes]);
        let offsets = &zp.col_offsets[c0..c0 + width];
        for (t, &o) in terms.iter_mut().zip(offsets) {
            *t = o.wrapping_mul(zp.a_zp);
        }
        if let Some(b) = stage.bias {
            for (t, &b) in terms.iter_mut().zip(&b[c0..c0 + width]) {
                *t = t.wrapping_add(b);
            }
        }
        match scale {
            Param::Tensor(v) => scales[..width].fill(v),
            Param::Channel(v) => scales[..width].copy_from_slice(&v[c0..c0 + width]),
        }
        b_zps[..width].copy_from_slice(&zp.b_zp[c0..c0 + width]);
        terms[width..].fill(0);
        scales[width..].fill(0.0);
        b_zps[width..].fill(0);
    }
}

/// Whether the scales of columns `0..cols` all lie strictly within (−1, 1) (NaN does
/// not): see `avx512_epilogue::rounded`.
pub(super) fn scales_below_one(scale: Param<'_, f32>, cols: usize) -> bool {
    match scale {
        Param::Tensor(s) => s.abs() < 1.0,
        // A fold rather than `all`, which stops at the first failure (one at a time).
        Param::Channel(v) => v.iter().take(cols).fold(true, |ok, s| ok & (s.abs() < 1.0)),
    }
}

/// The stage's scale, when it is one this module fuses: Float to u8 or i8.
pub(super) fn fused_scale<'a>(stage: &OutputStage<'a>, out: &OutData<'_>) -> Option<(Requant<'a>, Param<'a, f32>)> {
    match stage.requant {
        Some(r @ Requant { scheme: Scheme::Float { scale }, .. }) if !matches!(out, OutData::I32(_)) => {
            Some((r, scale))
        }
        _ => None,
    }
}

/// The output as bytes (u8, or i8 stored as its bit pattern), if it is not i32.
pub(super) fn out_bytes(out: &mut OutData<'_>) -> Option<*mut u8> {
    match out {
        OutData::U8(o) => Some(o.as_mut_ptr()),
        OutData::I8(o) => Some(o.as_mut_ptr().cast::<u8>()),
        OutData::I32(_) => None,
    }
}

/// The output zero point and clamp of a Float stage as the integer clamps of the fused
/// stages apply them to rounded values `t` (`avx512_epilogue::IntClamp`,
/// `avx2_fused`): the saturating pack to i16, a saturating `+ zero_point` in i16, the
/// saturating pack to u8, then `max(min)`, `min(max)` on u8 and `^ flip`. The result is
/// `clamp(t + zp, min, max)` exactly, for any i32 `t`:
/// - `t` within i16: `sat16(t + zp)` then the u8 saturation is the u8 saturation of
///   `t + zp` (u8 lies within i16);
/// - `t > 32767`: `32767 + zp` saturates to 255, as `t + zp` does; `t < −32768`
///   likewise to 0 (`zp ≤ 255`);
///
/// and a clamp to `[min, max]` after the u8 saturation is the clamp of `t + zp`. An
/// i8 output is computed as u8 with 128 added to its zero point and clamp, then
/// flipped back (`b ^ 0x80` is the bit pattern of `b − 128`).
#[derive(Clone, Copy, Debug)]
pub(super) struct ByteClamp {
    /// The zero point, plus 128 for i8 output.
    pub(super) zero_point: i16,
    /// The clamp, plus 128 for i8 output.
    pub(super) min: u8,
    pub(super) max: u8,
    /// 0x80 for i8 output, else 0.
    pub(super) flip: u8,
}

impl ByteClamp {
    /// The clamp of `r`, whose zero point and clamp fit the output type (i8 if
    /// `signed`, else u8).
    pub(super) fn new(r: &Requant<'_>, signed: bool) -> ByteClamp {
        let offset = if signed { 128 } else { 0 };
        ByteClamp {
            zero_point: (r.zero_point + offset) as i16,
            min: (r.min + offset) as u8,
            max: (r.max + offset) as u8,
            flip: offset as u8,
        }
    }

    /// Whether the clamp or the flip does anything: not for u8 output over its whole
    /// range, which the saturating pack gives.
    pub(super) fn needed(&self) -> bool {
        (self.min, self.max, self.flip) != (0, 255, 0)
    }
}

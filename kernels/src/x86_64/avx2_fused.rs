//! The Float stage to u8/i8 fused into the tiles of the 8-lane dot4 kernels (AVX2's
//! exact kernel and its `vpmaddubsw` fast path, AVX-VNNI), on packed and indirect
//! blocks, where every scale lies within (−1, 1): each tile's sums (plus the earlier K
//! blocks', on a packed block's last K block) are requantized in registers and only
//! the output bytes are stored, instead of the accumulators being written and read
//! back by [`super::avx2_epilogue`] (which still runs every other case).
//!
//! ```text
//!  per row, per vector of 8 columns (the sums started from a_zp·col_offset + bias):
//!      t = cvtps2dq(f32(sums − b_zp·row_sum) · scale)   exact in i32: |scale| < 1
//!  per row, two vectors:
//!      vpackssdw, + zp (vpaddsw), vpackuswb, clamp (vpmaxub, vpminub), ^ flip
//!      → vpermd to column order → 8 or 16 bytes
//! ```
//!
//! The integer clamp is the AVX-512 kernel's ([`ByteClamp`]): exact for any i32 `t`,
//! i8 output computed as u8 shifted by 128 and flipped back.

use std::arch::x86_64::*;

use super::columns::{ByteClamp, Columns, fused_scale, out_bytes, scales_below_one};
use super::dot4_tile::{self, Dot4, PackedA, Panels, Sink, TileA};
use crate::kernel::{BlockArgs, IndirectArgs};
use crate::output::{EpilogueArgs, OutData, OutputStage, Param, Requant, ZeroPoints};

/// A [`Dot4`] vector of 8 i32 lanes in one ymm register.
pub(super) trait Lanes8: Dot4 {
    /// The lanes: 8 i32 sums, one per column.
    ///
    /// # Safety
    /// The CPU has `Self`'s features (as for every [`Dot4`] method).
    unsafe fn ymm(self) -> __m256i;

    /// The vector whose sums are these lanes.
    ///
    /// # Safety
    /// As [`Lanes8::ymm`].
    unsafe fn from_ymm(v: __m256i) -> Self;
}

/// Whether the staged entry points fuse `stage` into the tiles ([`fusion`]); every
/// other stage `Kernel` runs after the block, through the accumulators and the AVX2
/// epilogue, without calling them.
pub(super) fn fuses(stage: &EpilogueArgs<'_>) -> bool {
    fusion(stage).is_some()
}

/// The stage fused into the tiles, or `None` where it runs after the block: Float to
/// u8/i8 with every scale within (−1, 1).
fn fusion<'s>(stage: &EpilogueArgs<'s>) -> Option<(Requant<'s>, Param<'s, f32>)> {
    fused_scale(&stage.stage, &stage.out).filter(|&(_, scale)| scales_below_one(scale, stage.cols))
}

/// A packed block of a dot4 kernel with 8-lane vectors, the output stage fused into
/// each tile (adding the earlier K blocks' sums where `args.accumulate`). A stage
/// that [`fuses`] refuses panics: `Kernel` does not call this for one.
///
/// # Safety
/// The CPU has `V`'s features (AVX2 at least), and the caller is compiled with them
/// (this function is inlined into it); `args` satisfies [`BlockArgs`] for a kernel
/// with tile `MR × NV·8` and A packed in `V::A_BYTES` per row and k-group (checked by
/// `Kernel::block_with_stage`), and `stage` passes `EpilogueArgs::check_output`, its
/// rows the block's and its columns within it.
#[inline(always)]
pub(super) unsafe fn block_staged<V: Lanes8, const MR: usize, const NV: usize>(
    args: BlockArgs<'_>,
    stage: EpilogueArgs<'_>,
) {
    let fused = fusion(&stage).expect("a fused stage (`fuses`, checked by `Kernel`)");
    let BlockArgs { a, b, b_panel_stride, row_panels, rows, col_panels, cols, kgroups, acc, acc_stride, accumulate } =
        args;
    let panels = Panels { a: PackedA::<false> { a, kgroups }, b, b_panel_stride, row_panels, rows, col_panels, cols };
    let prior = if accumulate { Some(&*acc) } else { None };
    // SAFETY: forwarded from this function's contract.
    unsafe { staged::<V, _, MR, NV>(panels, prior, acc_stride, stage, fused) }
}

/// An indirect block of a dot4 kernel with 8-lane vectors, the output stage fused into
/// each tile; as [`block_staged`].
///
/// # Safety
/// The CPU has `V`'s features (AVX2 at least), and the caller is compiled with them
/// (this function is inlined into it); `args` satisfies [`IndirectArgs`] for a kernel
/// with tile `MR × NV·8` (checked by `Kernel::indirect_with_stage`), and `stage` passes
/// `EpilogueArgs::check_output`, its rows the block's and its columns within it.
#[inline(always)]
pub(super) unsafe fn indirect_staged<V: Lanes8, const MR: usize, const NV: usize>(
    args: IndirectArgs<'_>,
    stage: EpilogueArgs<'_>,
) {
    let fused = fusion(&stage).expect("a fused stage (`fuses`, checked by `Kernel`)");
    let IndirectArgs { a, b, b_panel_stride, rows, col_panels, cols, .. } = args;
    let panels = Panels::indirect::<MR>(a, b, b_panel_stride, rows, col_panels, cols);
    // SAFETY: forwarded from this function's contract.
    unsafe { staged::<V, _, MR, NV>(panels, None, 0, stage, fused) }
}

/// Every tile of a block with the stage fused into it ([`fusion`] holds), adding
/// `prior` (the earlier K blocks' sums) where given.
///
/// # Safety
/// The CPU has `V`'s features (AVX2 at least), and the caller is compiled with them;
/// the panels hold what [`BlockArgs`] (or [`IndirectArgs`]) says for this kernel;
/// `prior`, where given, holds the block's accumulators with `acc_stride`; `stage`
/// passes `EpilogueArgs::check_output`, its rows are the block's and its columns within
/// it.
#[inline(always)]
unsafe fn staged<V: Lanes8, A: TileA, const MR: usize, const NV: usize>(
    panels: Panels<'_, A>,
    prior: Option<&[i32]>,
    acc_stride: usize,
    mut stage: EpilogueArgs<'_>,
    (r, scale): (Requant<'_>, Param<'_, f32>),
) {
    let out_stride = stage.out.stride();
    let signed = matches!(stage.out, OutData::I8(_));
    let out = out_bytes(&mut stage.out).expect("u8 or i8 output (fused_scale)");
    let EpilogueArgs { cols, row_sums, zero_points, stage: output, .. } = stage;
    let c = ByteClamp::new(&r, signed);
    // SAFETY: AVX2 (the contract).
    let (zero_point, min, max, flip) = unsafe {
        (
            _mm256_set1_epi16(c.zero_point),
            _mm256_set1_epi8(c.min as i8),
            _mm256_set1_epi8(c.max as i8),
            _mm256_set1_epi8(c.flip as i8),
        )
    };
    macro_rules! fused {
        ($b_zp:literal, $clamp:literal) => {
            Fused8::<NV, $b_zp, $clamp> {
                prior,
                acc_stride,
                out,
                out_stride,
                cols,
                row_sums,
                zero_points,
                output,
                scale,
                columns: Columns::new(),
                col0: 0,
                width: 0,
                zero_point,
                min,
                max,
                flip,
            }
        };
    }
    // SAFETY: forwarded from this function's contract: the panels are the block's, and
    // `Fused8` writes only the stage's rows and columns (see its `tile`).
    unsafe {
        match (zero_points.some_b_zp(cols), c.needed()) {
            (false, false) => dot4_tile::block_into::<V, MR, NV, _, _>(panels, &mut fused!(false, false)),
            (false, true) => dot4_tile::block_into::<V, MR, NV, _, _>(panels, &mut fused!(false, true)),
            (true, false) => dot4_tile::block_into::<V, MR, NV, _, _>(panels, &mut fused!(true, false)),
            (true, true) => dot4_tile::block_into::<V, MR, NV, _, _>(panels, &mut fused!(true, true)),
        }
    }
}

/// The fused stage of [`staged`]. `B_ZP`: some weight zero point of the
/// block is nonzero; `CLAMP`: the clamp and the i8 flip are needed (else the output is
/// u8 over its whole range, which the saturating pack gives).
struct Fused8<'a, const NV: usize, const B_ZP: bool, const CLAMP: bool> {
    /// The earlier K blocks' sums, where the block is not the first.
    prior: Option<&'a [i32]>,
    acc_stride: usize,
    out: *mut u8,
    out_stride: usize,
    cols: usize,
    row_sums: &'a [i32],
    zero_points: ZeroPoints<'a>,
    output: OutputStage<'a>,
    scale: Param<'a, f32>,
    /// The current column panel's values, from column `col0`.
    columns: Columns,
    col0: usize,
    /// The panel's real columns.
    width: usize,
    /// The output zero point (plus 128 for i8), as i16.
    zero_point: __m256i,
    /// The clamp (plus 128 for i8), as u8.
    min: __m256i,
    max: __m256i,
    /// 0x80 for i8 output, else 0.
    flip: __m256i,
}

impl<const NV: usize, const B_ZP: bool, const CLAMP: bool> Fused8<'_, NV, B_ZP, CLAMP> {
    /// The output bytes of one row's sums in the current panel's first `NU ≤ 2`
    /// vectors.
    ///
    /// # Safety
    /// AVX2; `row` is a row of the stage, and the panel has real columns.
    #[inline(always)]
    unsafe fn row<V: Lanes8, const NU: usize>(&self, row: usize, cr: &[V; NU]) {
        let cols = &self.columns;
        // Loads: lanes `8v..8v + 8` (v < NU ≤ 2) of `Columns`' arrays of CHUNK = 64.
        // Store: `width` bytes of row `row` from column `col0`, all below `cols`, so
        // inside the output window (`EpilogueArgs::check_output`: at least `rows × cols`).
        // SAFETY: AVX2 (the contract); every access is in bounds as listed above.
        unsafe {
            let rs = _mm256_set1_epi32(if B_ZP { self.row_sums[row] } else { 0 });
            let mut t = [_mm256_setzero_si256(); 2];
            for (v, cv) in cr.iter().enumerate().take(2) {
                let sums = cv.ymm();
                let sums = match self.prior {
                    Some(prior) => {
                        let at = row * self.acc_stride + self.col0 + 8 * v;
                        _mm256_add_epi32(sums, _mm256_loadu_si256(prior.as_ptr().add(at).cast()))
                    }
                    None => sums,
                };
                let sums = if B_ZP {
                    let b_zps = _mm256_loadu_si256(cols.b_zps.as_ptr().add(8 * v).cast());
                    _mm256_sub_epi32(sums, _mm256_mullo_epi32(b_zps, rs))
                } else {
                    sums
                };
                let x = _mm256_mul_ps(_mm256_cvtepi32_ps(sums), _mm256_loadu_ps(cols.scales.as_ptr().add(8 * v)));
                t[v] = _mm256_cvtps_epi32(x);
            }
            // Per 128-bit lane: words t0[0..4], t1[0..4] | t0[4..8], t1[4..8]; then the
            // same as bytes, twice; dwords 0, 4, 1, 5 are the columns in order.
            let words = _mm256_adds_epi16(_mm256_packs_epi32(t[0], t[1]), self.zero_point);
            let bytes = _mm256_packus_epi16(words, words);
            let bytes = if CLAMP {
                _mm256_xor_si256(_mm256_min_epu8(_mm256_max_epu8(bytes, self.min), self.max), self.flip)
            } else {
                bytes
            };
            let ordered =
                _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0)));
            let dst = self.out.add(row * self.out_stride + self.col0);
            match self.width {
                16 => _mm_storeu_si128(dst.cast(), ordered),
                8 => _mm_storel_epi64(dst.cast(), ordered),
                n => {
                    let mut tail = [0u8; 16];
                    _mm_storeu_si128(tail.as_mut_ptr().cast(), ordered);
                    std::ptr::copy_nonoverlapping(tail.as_ptr(), dst, n);
                }
            }
        }
    }
}

impl<V: Lanes8, const NV: usize, const B_ZP: bool, const CLAMP: bool> Sink<V, NV> for Fused8<'_, NV, B_ZP, CLAMP> {
    #[inline(always)]
    unsafe fn panel(&mut self, jp: usize) {
        self.col0 = jp * NV * 8;
        self.width = self.cols.saturating_sub(self.col0).min(NV * 8);
        self.columns.fill(&self.zero_points, &self.output, self.scale, self.col0, self.width, NV * 8);
    }

    /// The sums start from the columns' terms (`a_zp · col_offset + bias`).
    #[inline(always)]
    unsafe fn start<const NU: usize>(&self) -> [V; NU] {
        std::array::from_fn(|v| {
            let lanes = &self.columns.terms[8 * v..8 * v + 8];
            // SAFETY: AVX2 (the trait's contract); 8 lanes, sliced just above.
            unsafe { V::from_ymm(_mm256_loadu_si256(lanes.as_ptr().cast())) }
        })
    }

    #[inline(always)]
    unsafe fn tile<const R: usize, const NU: usize>(&mut self, row0: usize, c: &[[V; NU]; R]) {
        assert!(NU <= 2, "at most two vectors per panel");
        if let Some(prior) = self.prior {
            assert!(prior.len() >= (row0 + R - 1) * self.acc_stride + self.col0 + NU * 8, "accumulator tile");
        }
        if self.width == 0 {
            return; // no column of this panel is the stage's: nothing to store
        }
        // Row by row, unrolled (R ≤ 8), so that the sums stay in registers.
        macro_rules! rows {
            ($($r:literal)*) => {$(
                if $r < R {
                    // SAFETY: forwarded from this function's contract; row `row0 + r` is
                    // a row of the block, and the panel has real columns.
                    unsafe { self.row(row0 + $r, &c[$r]) };
                }
            )*};
        }
        rows!(0 1 2 3 4 5 6 7);
    }
}

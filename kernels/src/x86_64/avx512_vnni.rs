//! AVX-512 VNNI: `8x48c4-avx512vnni`, `vpdpbusd` on zmm, exact for every input.
//!
//! `vpdpbusd` multiplies u8 by i8 and adds four products to an i32 lane with a
//! wrapping add (the non-saturating form; `vpdpbusds` would clamp where the reference
//! wraps), so one instruction is exact for any activations and weights, and there is no
//! fast path to choose. The body is the shared one of `super::dot4_tile`:
//!
//! ```text
//!  per k-group (4 k):  B → 3 × vmovdqu64 zmm (48 columns × 4 k)
//!                      per row r < 8: vpbroadcastd zmm ← A[r][k0..4]
//!                                     3 × vpdpbusd acc[r][0..3], bcast, B[0..3]
//!  registers: 24 accumulators + 3 B + broadcasts, of 32 zmm
//! ```
//!
//! The tile and K-group are those of FBGEMM's AVX-512 VNNI kernel (8 × 48, 4 k per
//! group). On the last K block, the output stage (`super::avx512_epilogue`) runs on
//! each tile's sums in registers (Float requantization to u8/i8; other stages run
//! after the block, over its accumulators), and only the output bytes are stored: a
//! row's three vectors packed to 48 bytes (`vpackssdw`, `vpack[su]swb`, `vpermd`) and
//! written by one masked store, which on small K (a 1×1 convolution over 24 channels)
//! costs noticeably less than three truncating `vpmovdb` stores (+4–8% measured on an
//! AMD EPYC, Zen 4). The same kernel reads a convolution's input in place
//! ([`crate::indirect`]).

use std::arch::x86_64::*;

use super::avx512_epilogue::{Float16, IntClamp, PACKED_ORDER, rounded};
use super::columns::{Columns, fused_scale, out_bytes, scales_below_one};
use super::dot4_tile::{self, Dot4, PackedA, Panels, RowA, Sink, TileA};
use crate::kernel::{BlockArgs, Blocking, IndirectArgs, Kernel, Tile};
use crate::output::{EpilogueArgs, OutData, OutputStage, Param, ZeroPoints};

const TILE: Tile = Tile::new(8, 48, 4);
// A B panel slice of 512 × 48 (24 KiB) stays in L1 (48 KiB on Ice Lake and later
// servers) while the block's row panels (8 × 512, 4 KiB each) stream from L2; the
// 128 × 480 accumulators (240 KiB) stay in L2. mc = 128 takes M = 128 (a transformer's
// token block) in one row block, so B is read once. Measured on a Sapphire Rapids-class
// Xeon against 96 × 512 × 960 and others (mc 32–128, kc 384–1024, nc 480–1920): the
// differences were within the machine's noise (±5%) except for M = 128 (+5–9%).
const BLOCKING: Blocking = Blocking { mc: 128, kc: 512, nc: 480 };
/// The wide tile, for column counts that are multiples of 64 rather than 48 (64, 256,
/// 512 channels): 6 × 4 accumulators + 4 B + a broadcast in 32 zmm.
const WIDE_TILE: Tile = Tile::new(6, 64, 4);
const WIDE_BLOCKING: Blocking = Blocking { mc: 120, kc: 512, nc: 512 };
/// The narrow tile, on the AMX tier's weights (panels of 32 columns, `c4`): the
/// products too small for AMX's 32-row tiles run on it, from the same packing
/// (`crate::registry::AMX_INT8`): 8 × 2 accumulators + 2 B + a broadcast (the shared
/// `Dot4` body's tiles have at most 8 rows).
const NARROW_TILE: Tile = Tile::new(8, 32, 4);
const NARROW_BLOCKING: Blocking = Blocking { mc: 128, kc: 512, nc: 480 };
// Within the scratch bound (`crate::driver::GEMM_SCRATCH_BYTES`): one block of packed
// A ≤ 64 KiB, accumulators ≤ 256 KiB.
const _: () = assert!(BLOCKING.mc * BLOCKING.kc <= 64 << 10 && BLOCKING.mc * BLOCKING.nc <= 64 << 10);
const _: () =
    assert!(WIDE_BLOCKING.mc * WIDE_BLOCKING.kc <= 64 << 10 && WIDE_BLOCKING.mc * WIDE_BLOCKING.nc <= 64 << 10);
const _: () =
    assert!(NARROW_BLOCKING.mc * NARROW_BLOCKING.kc <= 64 << 10 && NARROW_BLOCKING.mc * NARROW_BLOCKING.nc <= 64 << 10);

/// Whether this CPU has AVX-512 F/BW/VL with VNNI (and AVX2, which packing uses and
/// every such CPU has): the tier's one list, in the registry.
fn detected() -> bool {
    crate::registry::AVX512_VNNI.cpu_supports()
}

/// The kernel (`8x48c4`), or `None` if this CPU lacks AVX-512 F/BW/VL with VNNI.
pub fn kernel() -> Option<&'static Kernel> {
    if detected() { Some(&KERNEL) } else { None }
}

/// The wide kernel (`6x64c4`), for N that fills 64-column panels better than 48-column
/// ones, or `None` if this CPU lacks AVX-512 F/BW/VL with VNNI.
pub fn wide_kernel() -> Option<&'static Kernel> {
    if detected() { Some(&WIDE) } else { None }
}

/// The narrow kernel (`8x32c4`), for the AMX tier's small products (on its weights),
/// or `None` if this CPU lacks AVX-512 F/BW/VL with VNNI.
pub fn narrow_kernel() -> Option<&'static Kernel> {
    if detected() { Some(&NARROW) } else { None }
}

// Private: handed out only by `kernel()`, `wide_kernel()` and `narrow_kernel()`, after
// detection.
static KERNEL: Kernel = {
    // SAFETY: the entry points touch memory only through the slices they get (checked
    // by `Kernel::block`/`epilogue`), and run only after `kernel()` detected the
    // features they are compiled for.
    unsafe {
        Kernel::new("8x48c4-avx512vnni", TILE, BLOCKING, block::<8, 3>, epilogue)
            .with_a_packing(super::pack_avx2::pack_4x1, super::pack_avx2::row_sum)
            .with_staged_block(block_staged::<8, 3>)
            .with_indirect(indirect::<8, 3>, Some(indirect_staged::<8, 3>))
            .with_row(row::<8, 3>, Some(row_staged::<8, 3>))
            .with_nibble_row(row_nibbles::<8, 3>, Some(row_nibbles_staged::<8, 3>))
            .with_nibble_block(block_nibbles::<8, 3>, Some(block_nibbles_staged::<8, 3>))
            .with_fusion_when(fuses)
    }
};

static WIDE: Kernel = {
    // SAFETY: as for `KERNEL`, after `wide_kernel()` detected the same features.
    unsafe {
        Kernel::new("6x64c4-avx512vnni", WIDE_TILE, WIDE_BLOCKING, block::<6, 4>, epilogue)
            .with_a_packing(super::pack_avx2::pack_4x1, super::pack_avx2::row_sum)
            .with_staged_block(block_staged::<6, 4>)
            .with_indirect(indirect::<6, 4>, Some(indirect_staged::<6, 4>))
            .with_row(row::<6, 4>, Some(row_staged::<6, 4>))
            .with_nibble_row(row_nibbles::<6, 4>, Some(row_nibbles_staged::<6, 4>))
            .with_nibble_block(block_nibbles::<6, 4>, Some(block_nibbles_staged::<6, 4>))
            .with_fusion_when(fuses)
    }
};

static NARROW: Kernel = {
    // SAFETY: as for `KERNEL`, after `narrow_kernel()` detected the same features.
    unsafe {
        Kernel::new("8x32c4-avx512vnni", NARROW_TILE, NARROW_BLOCKING, block::<8, 2>, epilogue)
            .with_a_packing(super::pack_avx2::pack_4x1, super::pack_avx2::row_sum)
            .with_staged_block(block_staged::<8, 2>)
            .with_indirect(indirect::<8, 2>, Some(indirect_staged::<8, 2>))
            .with_row(row::<8, 2>, Some(row_staged::<8, 2>))
            .with_nibble_row(row_nibbles::<8, 2>, Some(row_nibbles_staged::<8, 2>))
            .with_nibble_block(block_nibbles::<8, 2>, Some(block_nibbles_staged::<8, 2>))
            .with_fusion_when(fuses)
    }
};

/// Whether the staged entry points fuse `stage` into the tiles: Float to u8/i8
/// (`fused_scale`).
fn fuses(stage: &EpilogueArgs<'_>) -> bool {
    fused_scale(&stage.stage, &stage.out).is_some()
}

/// # Safety
/// AVX-512 F/BW/VL with VNNI must be available, and the buffers must satisfy
/// [`BlockArgs`] for this kernel (checked by `Kernel::block`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn block<const MR: usize, const NV: usize>(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { dot4_tile::block::<Zmm, MR, NV>(args) }
}

/// # Safety
/// As [`block`], for `args` satisfying [`IndirectArgs`] (checked by
/// `Kernel::indirect_block`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn indirect<const MR: usize, const NV: usize>(args: IndirectArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { dot4_tile::indirect_block::<Zmm, MR, NV>(args) }
}

/// The last K block of a block, with the output stage fused into each tile: Float to
/// u8/i8 ([`fuses`]; `Kernel::block_with_stage` runs every other stage after the
/// block, without calling this).
///
/// # Safety
/// As [`block`]; `stage` passes `EpilogueArgs::check_output`, and its rows are the
/// block's and its columns within the block's (checked by `Kernel::block_with_stage`).
/// A stage that [`fuses`] refuses panics.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn block_staged<const MR: usize, const NV: usize>(args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
    let BlockArgs { a, b, b_panel_stride, row_panels, rows, col_panels, cols, kgroups, acc, acc_stride, accumulate } =
        args;
    let panels = Panels { a: PackedA::<false> { a, kgroups }, b, b_panel_stride, row_panels, rows, col_panels, cols };
    let prior = if accumulate { Some(&*acc) } else { None };
    // SAFETY: forwarded from this function's contract.
    unsafe { staged::<_, MR, NV>(panels, prior, acc_stride, stage) }
}

/// # Safety
/// As [`block`], for `args` satisfying [`BlockArgs`] for one densely packed row
/// (checked by `Kernel::row_block`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row<const MR: usize, const NV: usize>(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { dot4_tile::row_block::<Zmm, MR, NV>(args) }
}

/// A block of one densely packed row (the GEMV) with the output stage fused into each
/// tile, as [`block_staged`] (see `Kernel::row_with_stage`).
///
/// # Safety
/// As [`row`]; `stage` as for [`block_staged`] (checked by `Kernel::row_with_stage`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_staged<const MR: usize, const NV: usize>(args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
    let BlockArgs { a, b, b_panel_stride, col_panels, cols, kgroups, acc, acc_stride, accumulate, .. } = args;
    let panels =
        Panels { a: RowA::<false> { a, kgroups }, b, b_panel_stride, row_panels: 1, rows: 1, col_panels, cols };
    let prior = if accumulate { Some(&*acc) } else { None };
    // SAFETY: forwarded from this function's contract.
    unsafe { staged::<_, MR, NV>(panels, prior, acc_stride, stage) }
}

/// A block against 4-bit weights, unpacked in registers (see
/// `Kernel::with_nibble_block`).
///
/// # Safety
/// As [`block`], for 4-bit B (checked by `Kernel::nibble_block`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn block_nibbles<const MR: usize, const NV: usize>(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { dot4_tile::nibble_block::<Zmm, MR, NV>(args) }
}

/// [`block_nibbles`] with the output stage fused into each tile, as [`block_staged`].
///
/// # Safety
/// As [`block_nibbles`]; `stage` as for [`block_staged`] (checked by
/// `Kernel::nibble_block_with_stage`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn block_nibbles_staged<const MR: usize, const NV: usize>(args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
    let BlockArgs { a, b, b_panel_stride, row_panels, rows, col_panels, cols, kgroups, acc, acc_stride, accumulate } =
        args;
    let panels = Panels { a: PackedA::<true> { a, kgroups }, b, b_panel_stride, row_panels, rows, col_panels, cols };
    let prior = if accumulate { Some(&*acc) } else { None };
    // SAFETY: forwarded from this function's contract.
    unsafe { staged::<_, MR, NV>(panels, prior, acc_stride, stage) }
}

/// A block of one densely packed row against 4-bit weights, unpacked in registers
/// (see `Kernel::with_nibble_row`).
///
/// # Safety
/// As [`row`], for 4-bit B (checked by `Kernel::nibble_row_block`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_nibbles<const MR: usize, const NV: usize>(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { dot4_tile::row_nibbles_block::<Zmm, MR, NV>(args) }
}

/// [`row_nibbles`] with the output stage fused into each tile, as [`row_staged`].
///
/// # Safety
/// As [`row_nibbles`]; `stage` as for [`block_staged`] (checked by
/// `Kernel::nibble_row_with_stage`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_nibbles_staged<const MR: usize, const NV: usize>(args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
    let BlockArgs { a, b, b_panel_stride, col_panels, cols, kgroups, acc, acc_stride, accumulate, .. } = args;
    let panels = Panels { a: RowA::<true> { a, kgroups }, b, b_panel_stride, row_panels: 1, rows: 1, col_panels, cols };
    let prior = if accumulate { Some(&*acc) } else { None };
    // SAFETY: forwarded from this function's contract.
    unsafe { staged::<_, MR, NV>(panels, prior, acc_stride, stage) }
}

/// An indirect block with the output stage fused into each tile, as [`block_staged`]
/// (see `Kernel::indirect_with_stage`).
///
/// # Safety
/// As [`indirect`]; `stage` as for [`block_staged`] (checked by
/// `Kernel::indirect_with_stage`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn indirect_staged<const MR: usize, const NV: usize>(args: IndirectArgs<'_>, stage: EpilogueArgs<'_>) {
    let IndirectArgs { a, b, b_panel_stride, rows, col_panels, cols, acc_stride, .. } = args;
    let panels = Panels::indirect::<MR>(a, b, b_panel_stride, rows, col_panels, cols);
    // SAFETY: forwarded from this function's contract.
    unsafe { staged::<_, MR, NV>(panels, None, acc_stride, stage) }
}

/// Every tile of a block with the Float stage fused into it (`fused_scale` holds),
/// adding `prior` (the earlier K blocks' sums) where given.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL with VNNI and the caller is compiled with them; the
/// panels hold what [`BlockArgs`] says for this kernel; `prior`, where given, holds the
/// block's accumulators with `acc_stride`; `stage` passes
/// `EpilogueArgs::check_output`, its rows are the block's and its columns within it.
#[inline(always)]
unsafe fn staged<A: TileA, const MR: usize, const NV: usize>(
    panels: Panels<'_, A>,
    prior: Option<&[i32]>,
    acc_stride: usize,
    mut stage: EpilogueArgs<'_>,
) {
    let (r, scale) = fused_scale(&stage.stage, &stage.out).expect("a fused stage (`fuses`, checked by `Kernel`)");
    let out_stride = stage.out.stride();
    let signed = matches!(stage.out, OutData::I8(_));
    let saturate_low = !signed && r.min == 0 && r.zero_point >= 0;
    let out = out_bytes(&mut stage.out).expect("u8 or i8 output (fused_scale)");
    let EpilogueArgs { cols, row_sums, zero_points, stage: output, .. } = stage;
    // SAFETY: AVX-512 F/BW are enabled in the caller.
    let (float, int) = unsafe { (Float16::new(&r), IntClamp::new(&r, signed)) };
    macro_rules! fused {
        ($b_zp:literal, $int:literal) => {
            Fused::<NV, $b_zp, $int> {
                prior,
                acc_stride,
                out,
                out_stride,
                signed,
                saturate_low,
                cols,
                row_sums,
                zero_points,
                output,
                scale,
                float,
                int,
                columns: Columns::new(),
                col0: 0,
                mask: 0,
            }
        };
    }
    let b_zp = zero_points.some_b_zp(cols);
    let int_clamp = scales_below_one(scale, cols);
    // SAFETY: forwarded from this function's contract: the panels are the block's, and
    // `Fused` writes only the stage's rows and columns (see its `tile`).
    unsafe {
        match (b_zp, int_clamp) {
            (false, true) => dot4_tile::block_into::<Zmm, MR, NV, _, _>(panels, &mut fused!(false, true)),
            (true, true) => dot4_tile::block_into::<Zmm, MR, NV, _, _>(panels, &mut fused!(true, true)),
            (false, false) => dot4_tile::block_into::<Zmm, MR, NV, _, _>(panels, &mut fused!(false, false)),
            (true, false) => dot4_tile::block_into::<Zmm, MR, NV, _, _>(panels, &mut fused!(true, false)),
        }
    }
}

/// The Float stage applied to each tile's sums (plus the earlier K blocks' sums from
/// `prior`), storing output bytes. `B_ZP`: some weight zero point of the block is
/// nonzero. `INT`: every scale of the block lies within (−1, 1), so the zero point and
/// the clamp are applied in integers after rounding ([`IntClamp`]), else in floats
/// before it ([`Float16`]).
struct Fused<'a, const NV: usize, const B_ZP: bool, const INT: bool> {
    prior: Option<&'a [i32]>,
    acc_stride: usize,
    out: *mut u8,
    out_stride: usize,
    /// i8 output (else u8).
    signed: bool,
    /// u8 output clamped below at 0, with a zero point ≥ 0: the float low clamp is
    /// left out, since a value below it stays below 0 through `cvtps2dq` and the zero
    /// point (at worst `i32::MIN + zp`), and the saturating packs store it as 0.
    saturate_low: bool,
    cols: usize,
    row_sums: &'a [i32],
    zero_points: ZeroPoints<'a>,
    output: OutputStage<'a>,
    scale: Param<'a, f32>,
    float: Float16,
    int: IntClamp,
    /// The current column panel's values, from column `col0`.
    columns: Columns,
    col0: usize,
    /// The panel's real columns, as one bit per output byte.
    mask: __mmask64,
}

impl<const NV: usize, const B_ZP: bool, const INT: bool> Fused<'_, NV, B_ZP, INT> {
    /// The output bytes of one row's sums (the earlier K blocks' included) in the
    /// current panel's first `NU` vectors, by [`rounded`] and [`IntClamp`] (`INT`).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW; `row` is a row of the stage, and the panel has real
    /// columns (`mask` ≠ 0).
    #[inline(always)]
    unsafe fn int_row<const NU: usize>(&self, row: usize, cr: &[Zmm; NU]) {
        // SAFETY: AVX-512 F/BW (the contract). Store: the `mask` bytes of row `row` from
        // column `col0`, all below `cols`, so inside the output window
        // (`EpilogueArgs::check_output`: at least `rows × cols`).
        unsafe {
            let rs = _mm512_set1_epi32(if B_ZP { self.row_sums[row] } else { 0 });
            let mut t = [_mm512_setzero_si512(); 4];
            for (v, cv) in cr.iter().enumerate() {
                t[v] = rounded::<B_ZP>(cv.0, &self.columns, v * 16, rs);
            }
            let dst = self.out.add(row * self.out_stride + self.col0);
            _mm512_mask_storeu_epi8(dst.cast(), self.mask, self.int.bytes::<NU>(t));
        }
    }
}

impl<const NV: usize, const B_ZP: bool, const INT: bool> Sink<Zmm, NV> for Fused<'_, NV, B_ZP, INT> {
    #[inline(always)]
    unsafe fn panel(&mut self, jp: usize) {
        self.col0 = jp * NV * 16;
        let width = self.cols.saturating_sub(self.col0).min(NV * 16);
        self.columns.fill(&self.zero_points, &self.output, self.scale, self.col0, width, NV * 16);
        self.mask = if width >= 64 { !0 } else { (1u64 << width) - 1 };
    }

    /// The sums start from the columns' terms (`a_zp · col_offset + bias`), which the
    /// stage would otherwise add to each vector.
    #[inline(always)]
    unsafe fn start<const NU: usize>(&self) -> [Zmm; NU] {
        // SAFETY: AVX-512 F (the trait's contract); NU ≤ NV ≤ 4 vectors of the panel's
        // columns, within `Columns`' CHUNK.
        std::array::from_fn(|v| Zmm(unsafe { self.columns.terms(v * 16) }))
    }

    #[inline(always)]
    unsafe fn tile<const R: usize, const NU: usize>(&mut self, row0: usize, c: &[[Zmm; NU]; R]) {
        if let Some(prior) = self.prior {
            assert!(prior.len() >= (row0 + R - 1) * self.acc_stride + self.col0 + NV * 16, "accumulator tile");
        }
        if self.mask == 0 {
            return; // no column of this panel is the stage's: nothing to store
        }
        if INT {
            let mut c = *c;
            if let Some(prior) = self.prior {
                for (r, cr) in c.iter_mut().enumerate() {
                    for (v, cv) in cr.iter_mut().enumerate() {
                        let at = (row0 + r) * self.acc_stride + self.col0 + v * 16;
                        // SAFETY: AVX-512 F (the trait's contract); 16 values of `prior`
                        // at `at`, in bounds by the assert above.
                        *cv = Zmm(unsafe { _mm512_add_epi32(cv.0, _mm512_loadu_si512(prior.as_ptr().add(at).cast())) });
                    }
                }
            }
            // Row by row, unrolled (R ≤ 8), so that the sums stay in registers.
            macro_rules! rows {
                ($($r:literal)*) => {$(
                    if $r < R {
                        // SAFETY: forwarded from this function's contract; row `row0 + r`
                        // is a row of the block.
                        unsafe { self.int_row(row0 + $r, &c[$r]) };
                    }
                )*};
            }
            rows!(0 1 2 3 4 5 6 7);
            return;
        }
        for (r, cr) in c.iter().enumerate() {
            let row = row0 + r;
            // Reads of `prior`: 16 values at `row · acc_stride + col0 + 16v`, in bounds by
            // the assert above. Store: the `mask` bytes of row `row` (a row of the stage:
            // the block's rows are the stage's) from column `col0`, all below `cols`, so
            // inside the output window (`EpilogueArgs::check_output`: at least
            // `rows × cols`); a panel without real columns returned above, before any
            // address was formed.
            // SAFETY: the CPU has AVX-512 F/BW (the trait's contract); every access is
            // in bounds as listed just above.
            unsafe {
                let rs = _mm512_set1_epi32(if B_ZP { self.row_sums[row] } else { 0 });
                let mut q = [_mm512_setzero_si512(); 4];
                for (v, cv) in cr.iter().enumerate() {
                    let at = row * self.acc_stride + self.col0 + v * 16;
                    let sums = match self.prior {
                        Some(prior) => _mm512_add_epi32(cv.0, _mm512_loadu_si512(prior.as_ptr().add(at).cast())),
                        None => cv.0,
                    };
                    let (f, cols) = (self.float, &self.columns);
                    q[v] = if self.saturate_low {
                        f.quantize::<B_ZP, false, false>(sums, cols, v * 16, rs)
                    } else {
                        f.quantize::<B_ZP, false, true>(sums, cols, v * 16, rs)
                    };
                }
                let dst = self.out.add(row * self.out_stride + self.col0);
                if NU == 1 {
                    // vpmovdb truncates: values below 0 (left by `saturate_low`) first
                    // go to 0.
                    let q0 = if self.saturate_low { _mm512_max_epi32(q[0], _mm512_setzero_si512()) } else { q[0] };
                    _mm512_mask_cvtepi32_storeu_epi8(dst.cast(), self.mask as __mmask16, q0);
                    continue;
                }
                // Each q is within the output type's range ([min, max]), so the
                // saturating packs are exact: i32 → i16 → u8 or i8, then the pieces in
                // column order and one masked store of the row's bytes.
                let lo = _mm512_packs_epi32(q[0], q[1]);
                let hi = _mm512_packs_epi32(q[2], q[3]);
                let bytes = if self.signed { _mm512_packs_epi16(lo, hi) } else { _mm512_packus_epi16(lo, hi) };
                let bytes = _mm512_permutexvar_epi32(_mm512_loadu_si512(PACKED_ORDER.as_ptr().cast()), bytes);
                _mm512_mask_storeu_epi8(dst.cast(), self.mask, bytes);
            }
        }
    }
}

/// # Safety
/// AVX-512 F must be available, and `args` must pass `EpilogueArgs::check` (checked by
/// `Kernel::epilogue`).
unsafe fn epilogue(args: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { super::avx512_epilogue::epilogue(args) }
}

/// 16 i32 lanes, accumulated with `vpdpbusd`.
#[derive(Clone, Copy)]
struct Zmm(__m512i);

impl Dot4 for Zmm {
    const LANES: usize = 16;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller runs with AVX-512 F (the trait's contract).
        Zmm(unsafe { _mm512_setzero_si512() })
    }

    #[inline(always)]
    unsafe fn load_b(p: *const i8) -> Self {
        // SAFETY: AVX-512 F, and 64 readable bytes at `p` (the trait's contract).
        Zmm(unsafe { _mm512_loadu_si512(p.cast()) })
    }

    #[inline(always)]
    unsafe fn load_b_nibbles(p: *const i8) -> (Self, Self) {
        // SAFETY: AVX-512 F/BW, and 64 readable bytes at `p` (the trait's contract).
        // The high nibbles: a 16-bit shift brings each byte's into its low half, the
        // mask drops what the shift brought over from the next byte.
        unsafe {
            let v = _mm512_loadu_si512(p.cast());
            let mask = _mm512_set1_epi8(0x0f);
            (Zmm(_mm512_and_si512(v, mask)), Zmm(_mm512_and_si512(_mm512_srli_epi16::<4>(v), mask)))
        }
    }

    #[inline(always)]
    unsafe fn splat_a(p: *const u8) -> Self {
        // SAFETY: AVX-512 F, and 4 readable bytes at `p` (the trait's contract).
        Zmm(unsafe { _mm512_set1_epi32(p.cast::<i32>().read_unaligned()) })
    }

    #[inline(always)]
    unsafe fn dot(self, a: Self, b: Self) -> Self {
        // SAFETY: AVX-512 VNNI (the trait's contract). The wrapping form, never
        // `_mm512_dpbusds_epi32`.
        Zmm(unsafe { _mm512_dpbusd_epi32(self.0, a.0, b.0) })
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        // SAFETY: AVX-512 F (the trait's contract).
        Zmm(unsafe { _mm512_add_epi32(self.0, other.0) })
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut i32, accumulate: bool) {
        // SAFETY: AVX-512 F, and 16 writable i32 at `p` (the trait's contract);
        // unaligned access.
        unsafe {
            let v = if accumulate { _mm512_add_epi32(_mm512_loadu_si512(p.cast()), self.0) } else { self.0 };
            _mm512_storeu_si512(p.cast(), v);
        }
    }
}

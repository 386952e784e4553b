//! AArch64 kernels, one module per tier:
//!
//! | module | kernel | needs |
//! |---|---|---|
//! | [`neon`] | `4x4c16-neon-mull`, fast path `4x4c16-neon-mlal` | ARMv8.0 NEON |
//! | [`neon_dotprod`] | `8x8c4-neon-sdot` | the dot-product extension (`sdot`) |
//! | [`neon_i8mm`] | `8x8c8-neon-usmmla` | the int8 matrix-multiply extension (`usmmla`) |
//!
//! All three share the NEON output stage of [`neon_epilogue`], which they apply to each
//! tile in registers on the last K block (`Kernel::block_with_stage`). On stable Rust the
//! dot-product and matrix-multiply intrinsics are unstable, so those two kernels issue
//! their one multiply instruction through `asm!`, inside functions compiled with the
//! feature enabled, and reachable only after it was detected.

pub mod neon;
pub mod neon_dotprod;
pub mod neon_epilogue;
pub mod neon_i8mm;

use std::arch::aarch64::*;

use neon_epilogue::PanelStage;

/// Where a tile's sums go: added to (or stored in) its accumulators, or, on the last K
/// block of a fused call, through the output stage to the output.
#[derive(Clone, Copy)]
pub(crate) struct Out<'s> {
    /// The tile's accumulators: row `r`, column `c` at `acc + r · acc_stride + c`.
    pub acc: *mut i32,
    pub acc_stride: usize,
    /// Add the accumulators to the sums (every K block but the first).
    pub accumulate: bool,
    /// The output stage of the tile's column panel, on the last K block of a fused
    /// call; the accumulators are then read (if `accumulate`) but not written.
    pub stage: Option<&'s PanelStage<'s>>,
    /// The tile's first row among the stage's rows.
    pub row0: usize,
}

impl Out<'_> {
    /// Delivers a tile's sums, `rows[r][v]` holding row `r`, columns `4v..4v + 4`:
    /// added to (or stored in) its accumulators, or, with a stage, through the stage
    /// to the output, in one call per tile.
    ///
    /// # Safety
    /// NEON; the accumulators hold `rows.len() ≤ 8` rows of `4·V ≤ 8` columns; with a
    /// stage, rows `row0..row0 + rows.len()` are among its rows.
    #[inline(always)]
    pub unsafe fn finish<const V: usize>(self, rows: &[[int32x4_t; V]]) {
        // SAFETY: NEON is part of the target (the function's contract); a constant.
        let zero = unsafe { vdupq_n_s32(0) };
        let mut staged = [[zero; 2]; 8];
        for (r, row) in rows.iter().enumerate() {
            for (v, &sums) in row.iter().enumerate() {
                // SAFETY: row r, columns 4v..4v + 4 of the accumulators (the contract);
                // NEON loads and stores need no alignment beyond the element's.
                unsafe {
                    let at = self.acc.add(r * self.acc_stride + 4 * v);
                    let value = if self.accumulate { vaddq_s32(vld1q_s32(at), sums) } else { sums };
                    match self.stage {
                        None => vst1q_s32(at, value),
                        Some(_) => staged[r][v] = value,
                    }
                }
            }
        }
        if let Some(stage) = self.stage {
            // SAFETY: the stage's rows include these (the contract), V ≤ 2.
            unsafe { stage.store_tile(self.row0, &staged[..rows.len()], V) }
        }
    }
}

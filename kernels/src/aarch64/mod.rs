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
    /// Delivers the sums of row `r`, columns `c..c + 4` of the tile.
    ///
    /// # Safety
    /// NEON; the accumulators hold row `r`, columns `c..c + 4`; with a stage, row
    /// `row0 + r` is one of its rows and `c + 4 ≤ 8`.
    #[inline(always)]
    pub unsafe fn put4(self, r: usize, c: usize, sums: int32x4_t) {
        // SAFETY: the caller guarantees the accumulators and the stage's row (NEON
        // loads and stores need no alignment beyond the element's).
        unsafe {
            let at = self.acc.add(r * self.acc_stride + c);
            let value = if self.accumulate { vaddq_s32(vld1q_s32(at), sums) } else { sums };
            match self.stage {
                None => vst1q_s32(at, value),
                Some(stage) => stage.store4(self.row0 + r, c, value),
            }
        }
    }
}

//! AArch64 kernels, one module per tier:
//!
//! | module | kernel | needs |
//! |---|---|---|
//! | [`neon`] | `4x4c16-neon-mull`, fast path `4x4c16-neon-mlal` | ARMv8.0 NEON |
//! | [`neon_dotprod`] | `8x8c4-neon-sdot` | the dot-product extension (`sdot`) |
//! | [`neon_i8mm`] | `8x8c8-neon-usmmla` | the int8 matrix-multiply extension (`usmmla`) |
//!
//! All three share the NEON output stage of [`neon_epilogue`]. On stable Rust the
//! dot-product and matrix-multiply intrinsics are unstable, so those two kernels issue
//! their one multiply instruction through `asm!`, inside functions compiled with the
//! feature enabled, and reachable only after it was detected.

pub mod neon;
pub mod neon_dotprod;
pub mod neon_epilogue;
pub mod neon_i8mm;

use std::arch::aarch64::*;

/// Where a tile's rows of accumulators go, and whether they add to what is there.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    pub acc: *mut i32,
    pub accumulate: bool,
}

impl Out {
    /// `acc[offset..][..4] += sums` (wrapping), or `= sums`.
    ///
    /// # Safety
    /// 4 writable i32 at `acc + offset`.
    #[inline(always)]
    pub unsafe fn put4(self, offset: usize, sums: int32x4_t) {
        // SAFETY: the caller guarantees 4 writable i32 there; NEON loads and stores
        // need no alignment beyond the element's.
        unsafe {
            let at = self.acc.add(offset);
            let value = if self.accumulate { vaddq_s32(vld1q_s32(at), sums) } else { sums };
            vst1q_s32(at, value);
        }
    }
}

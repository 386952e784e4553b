//! AArch64 kernels, one module per tier:
//!
//! | module | kernel | needs |
//! |---|---|---|
//! | [`neon`] | `4x4c16-neon-mull`, fast path `4x4c16-neon-mlal` | ARMv8.0 NEON |
//! | [`neon_dotprod`] | `8x8c4-neon-sdot` | the dot-product extension (`sdot`) |
//! | [`neon_i8mm`] | `8x8c8-neon-usmmla` | the int8 matrix-multiply extension (`usmmla`) |
//!
//! All three share the NEON output stage of [`neon_epilogue`], which they apply to each
//! tile as soon as its sums are complete on the last K block
//! (`Kernel::block_with_stage`). On stable Rust the
//! dot-product and matrix-multiply intrinsics are unstable, so those two kernels issue
//! their one multiply instruction through `asm!`, inside functions compiled with the
//! feature enabled, and reachable only after it was detected.

/// Runs a tile function's `$group!(g, b_vectors)` over the `$kgroups` k-groups of its
/// B panel at `$b`, `$v` vectors of 16 weights per group: 8-bit weights as loaded
/// ([`load_b`]), or with `$nib` 4-bit ones, two groups per room unpacked in registers
/// ([`load_b_nibbles`]; `$kgroups` is then even). The tile function's contract must
/// promise that panel.
macro_rules! for_each_b_group {
    ($nib:expr, $b:expr, $kgroups:expr, $v:literal, $group:ident) => {
        if $nib {
            for room in 0..$kgroups / 2 {
                // SAFETY: this room of two groups lies within the panel (the tile
                // function's contract).
                let (even, odd) = unsafe { $crate::aarch64::load_b_nibbles::<$v>($b.add(room * 16 * $v)) };
                $group!(2 * room, even);
                $group!(2 * room + 1, odd);
            }
        } else {
            for g in 0..$kgroups {
                // SAFETY: group g lies within the panel (the tile function's contract).
                $group!(g, unsafe { $crate::aarch64::load_b::<$v>($b.add(g * 16 * $v)) });
            }
        }
    };
}

pub mod neon;
pub mod neon_dotprod;
pub mod neon_epilogue;
pub mod neon_i8mm;

use std::arch::aarch64::*;

use neon_epilogue::{FusedStage, PanelStage};

use crate::kernel::{BlockArgs, Tile};
use crate::output::EpilogueArgs;

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

/// The `V` vectors of 16 weights at `b`: one k-group of an 8-bit B panel.
///
/// # Safety
/// `b` is valid for reads of `16 · V` bytes.
#[inline(always)]
pub(crate) unsafe fn load_b<const V: usize>(b: *const i8) -> [int8x16_t; V] {
    // SAFETY: NEON is part of the target; a constant.
    let mut v = [unsafe { vdupq_n_s8(0) }; V];
    for (i, v) in v.iter_mut().enumerate() {
        // SAFETY: bytes 16i..16i + 16 of the group (the function's contract).
        *v = unsafe { vld1q_s8(b.add(16 * i)) };
    }
    v
}

/// The two k-groups that a room of `16 · V` bytes of 4-bit weights holds
/// (`PackedB::try_new_nibbles`), unpacked in registers: the even group from the low
/// nibbles (a mask), the odd one from the high nibbles (a shift), each weight in
/// `[0, 15]` as it is in the 8-bit layout.
///
/// # Safety
/// `room` is valid for reads of `16 · V` bytes.
#[inline(always)]
pub(crate) unsafe fn load_b_nibbles<const V: usize>(room: *const i8) -> ([int8x16_t; V], [int8x16_t; V]) {
    // SAFETY: forwarded from this function's contract.
    let bytes = unsafe { load_b::<V>(room) };
    // SAFETY: NEON is part of the target; register operations only.
    unsafe {
        let mask = vdupq_n_s8(0x0f);
        let low = bytes.map(|v| vandq_s8(v, mask));
        let high = bytes.map(|v| vreinterpretq_s8_u8(vshrq_n_u8::<4>(vreinterpretq_u8_s8(v))));
        (low, high)
    }
}

/// One tile of a block, as [`for_each_tile`] hands it to a kernel.
pub(crate) struct TileJob<'s> {
    /// The tile's panel of packed A: `kgroups` groups of `mr × kg` values.
    pub a: *const u8,
    /// The tile's panel of packed B: `kgroups` groups of `nr × kg` values, or for
    /// 4-bit weights `kgroups / 2` rooms of that many bytes (see [`load_b_nibbles`]).
    pub b: *const i8,
    pub kgroups: usize,
    /// Real rows of the panel (1..=mr).
    pub rows: usize,
    /// Where its sums go.
    pub out: Out<'s>,
}

/// The loop every NEON kernel runs over a block (see [`BlockArgs`]): B panels outer
/// (one stays in L1), A panels inner, panels without real rows skipped. With a stage
/// (the last K block of a fused call), each tile's sums go through the output stage
/// of its column panel to the output.
///
/// Every [`TileJob`] it hands out is sound for a tile function of `tile`'s layout: its
/// panels hold `kgroups` groups (sliced here; with `nibbles`, B holds 4-bit weights,
/// half as many bytes) and its `out` covers `rows` rows of `nr` accumulators at
/// `acc_stride` (asserted here), and the stage's rows.
#[inline(always)]
pub(crate) fn for_each_tile(
    tile: Tile,
    nibbles: bool,
    args: BlockArgs<'_>,
    stage: Option<EpilogueArgs<'_>>,
    mut run: impl FnMut(TileJob<'_>),
) {
    let Tile { mr, nr, kg, .. } = tile;
    let BlockArgs { a, b, b_panel_stride, row_panels, rows, col_panels, kgroups, acc, acc_stride, accumulate, .. } =
        args;
    let a_panel_bytes = kgroups * mr * kg;
    let fused = stage.map(FusedStage::new);
    for jp in 0..col_panels {
        let panel = fused.as_ref().map(|f| f.panel(jp * nr, nr));
        let b_panel = &b[jp * b_panel_stride..][..kgroups * nr * kg / if nibbles { 2 } else { 1 }];
        for ip in 0..row_panels {
            let a_panel = &a[ip * a_panel_bytes..][..a_panel_bytes];
            let real_rows = rows.saturating_sub(ip * mr).min(mr);
            if real_rows == 0 {
                continue; // a panel with no real rows: nothing to compute
            }
            let acc_tile = &mut acc[ip * mr * acc_stride + jp * nr..];
            assert!(acc_tile.len() >= (real_rows - 1) * acc_stride + nr, "accumulator tile");
            let out = Out { acc: acc_tile.as_mut_ptr(), acc_stride, accumulate, stage: panel.as_ref(), row0: ip * mr };
            run(TileJob { a: a_panel.as_ptr(), b: b_panel.as_ptr(), kgroups, rows: real_rows, out });
        }
    }
}

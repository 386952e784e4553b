//! ARMv8.0 NEON: `4x4c16-neon-mull`, exact for every input, and its fast path
//! `4x4c16-neon-mlal`, exact when no weight is −128.
//!
//! NEON has no u8 × i8 multiply, so A is packed flipped (`a ^ 0x80 = a − 128` as an
//! i8, [`AFormat::FlippedI8`]) and the driver moves the 128 into the zero point. Both
//! paths read the same packing, 16 k per group:
//!
//! ```text
//!  A group: [row 0: k0..16][row 1: k0..16][row 2][row 3]        4 × 16 B (flipped)
//!  B group: [col 0: k0..16][col 1: k0..16][col 2][col 3]        4 × 16 B
//!
//!  per (row r, column c), acc[r][c] is 4 i32 lanes:
//!    mull (exact): smull  t0.8h, a.8b,  b.8b      products of k 0..8, each |·| ≤ 2^14
//!                  smull2 t1.8h, a.16b, b.16b     products of k 8..16
//!                  sadalp acc.4s, t0.8h           pairs of products into i32
//!                  sadalp acc.4s, t1.8h           4 instructions per 16 MACs
//!    mlal (fast):  smull  t.8h, a.8b, b.8b
//!                  smlal2 t.8h, a.16b, b.16b      two products per i16 lane: exact
//!                  sadalp acc.4s, t.8h            when |b| ≤ 127, since then
//!                                                 |(a−128)·b| ≤ 128·127 and two sum
//!                                                 to at most 32512 < 2^15;
//!                                                 3 instructions per 16 MACs
//!  end of tile:    addp, addp, addp → [c0 c1 c2 c3] per row
//! ```
//!
//! The tile is 4 × 4: 16 accumulators, 4 A and 4 B registers and the products fit in
//! the 32 vector registers. A panel with fewer real rows runs the instance for that
//! many rows.

use std::arch::aarch64::*;

use super::{Out, for_each_tile};
use crate::kernel::{AFormat, BlockArgs, Blocking, FastWhen, Kernel, Tile};
use crate::output::{EpilogueArgs, epilogue_scalar};

const MR: usize = 4;
const NR: usize = 4;
const KG: usize = 16;
const TILE: Tile = Tile::new(MR, NR, KG);
// 64 × 512 A bytes (32 KiB) and 512 × 4 B bytes per panel (2 KiB) fit the L1/L2 of
// Cortex-A57/A76-class cores; accumulators 64 × 512 i32 (128 KiB) stay in L2.
const BLOCKING: Blocking = Blocking { mc: 64, kc: 512, nc: 512 };

/// The exact kernel with its fast path, or `None` if this CPU lacks NEON.
pub fn kernel() -> Option<&'static Kernel> {
    if crate::registry::NEON.cpu_supports() { Some(&EXACT) } else { None }
}

// Private: handed out only by `kernel()`, after detection. The fast path computes the
// same accumulators whenever no weight is −128, which is when no i16 lane can
// overflow.
static EXACT: Kernel = {
    // SAFETY: the entry points touch memory only through the slices they get (checked
    // by `Kernel::block`/`epilogue`), and run only after `kernel()` detected NEON.
    unsafe {
        let fast = Kernel::new("4x4c16-neon-mlal", TILE, BLOCKING, block_mlal, epilogue_scalar)
            .with_a_format(AFormat::FlippedI8)
            .with_staged_block(block_mlal_staged)
            .with_nibble_block(block_mlal_nibbles, Some(block_mlal_nibbles_staged));
        Kernel::new("4x4c16-neon-mull", TILE, BLOCKING, block_mull, epilogue_scalar)
            .with_a_format(AFormat::FlippedI8)
            .with_staged_block(block_mull_staged)
            .with_fast_path(fast, FastWhen::NoMinWeight)
    }
};

/// # Safety
/// NEON must be available, and the buffers must satisfy [`BlockArgs`] for this
/// kernel (checked by `Kernel::block`).
unsafe fn block_mull(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { block::<false, false>(args, None) }
}

/// [`block_mull`] on the last K block, with the output stage fused into each tile.
///
/// # Safety
/// As [`block_mull`], and `stage` passed `EpilogueArgs::check_output` for the
/// block's rows (checked by `Kernel::block_with_stage`).
unsafe fn block_mull_staged(args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { block::<false, false>(args, Some(stage)) }
}

/// # Safety
/// As [`block_mull`], and no weight of the block is −128.
unsafe fn block_mlal(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { block::<true, false>(args, None) }
}

/// [`block_mlal`] with the output stage fused into each tile.
///
/// # Safety
/// As [`block_mull_staged`], and no weight of the block is −128.
unsafe fn block_mlal_staged(args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { block::<true, false>(args, Some(stage)) }
}

/// [`block_mlal`] against 4-bit weights (`Kernel::with_nibble_block`), which are never
/// −128.
///
/// # Safety
/// As [`block`] with `NIB`.
unsafe fn block_mlal_nibbles(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { block::<true, true>(args, None) }
}

/// [`block_mlal_staged`] against 4-bit weights.
///
/// # Safety
/// As [`block_mull_staged`], for 4-bit weights.
unsafe fn block_mlal_nibbles_staged(args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { block::<true, true>(args, Some(stage)) }
}

/// Every tile of the block: B panels outer (one stays in L1), A panels inner. `NIB`:
/// B holds 4-bit weights.
///
/// # Safety
/// As [`block_mull`] (`!MLAL`) or [`block_mlal`], checked by `Kernel::nibble_block`
/// for 4-bit weights with `NIB`.
#[target_feature(enable = "neon")]
unsafe fn block<const MLAL: bool, const NIB: bool>(args: BlockArgs<'_>, stage: Option<EpilogueArgs<'_>>) {
    for_each_tile(TILE, NIB, args, stage, |t| {
        // SAFETY: NEON is enabled here, with MLAL only where the contract allows it;
        // `for_each_tile` hands out panels and outputs that fit this layout.
        unsafe {
            match t.rows {
                4 => tile::<4, MLAL, NIB>(t.a.cast(), t.b, t.kgroups, t.out),
                3 => tile::<3, MLAL, NIB>(t.a.cast(), t.b, t.kgroups, t.out),
                2 => tile::<2, MLAL, NIB>(t.a.cast(), t.b, t.kgroups, t.out),
                1 => tile::<1, MLAL, NIB>(t.a.cast(), t.b, t.kgroups, t.out),
                _ => unreachable!("a panel has at most MR real rows"),
            }
        }
    });
}

/// `Σ_g A[r, g] · B[g]` for the first `R` rows of a panel, delivered to `out`; with
/// `NIB`, B's groups come two per room of 4-bit weights, unpacked in registers.
///
/// # Safety
/// NEON; `a` holds `kgroups` groups of 64 bytes, `b` as many (or, with `NIB`,
/// `kgroups / 2` rooms of 64 bytes, `kgroups` even), `out` takes `R` rows of 4
/// columns; with `MLAL`, no weight is −128.
#[target_feature(enable = "neon")]
unsafe fn tile<const R: usize, const MLAL: bool, const NIB: bool>(
    a: *const i8,
    b: *const i8,
    kgroups: usize,
    out: Out<'_>,
) {
    let mut c = [[vdupq_n_s32(0); NR]; R];
    // One k-group: each row's 16 activations against the four columns.
    macro_rules! group {
        ($g:expr, $bv:expr) => {{
            let bv: [int8x16_t; NR] = $bv;
            let ag = a.wrapping_add($g * MR * KG);
            for (r, cr) in c.iter_mut().enumerate() {
                // SAFETY: row r < R ≤ MR of group g (the function's contract).
                let av = unsafe { vld1q_s8(ag.add(r * KG)) };
                let a_lo = vget_low_s8(av);
                for (cell, &bj) in cr.iter_mut().zip(&bv) {
                    if MLAL {
                        let pairs = vmlal_high_s8(vmull_s8(a_lo, vget_low_s8(bj)), av, bj);
                        *cell = vpadalq_s16(*cell, pairs);
                    } else {
                        *cell = vpadalq_s16(*cell, vmull_s8(a_lo, vget_low_s8(bj)));
                        *cell = vpadalq_s16(*cell, vmull_high_s8(av, bj));
                    }
                }
            }
        }};
    }
    for_each_b_group!(NIB, b, kgroups, 4, group);
    // Each row's four columns, folded from their four lanes each.
    let rows = c.map(|cr| [vpaddq_s32(vpaddq_s32(cr[0], cr[1]), vpaddq_s32(cr[2], cr[3]))]);
    // SAFETY: R rows of 4 columns (the function's contract).
    unsafe { out.finish(&rows) };
}

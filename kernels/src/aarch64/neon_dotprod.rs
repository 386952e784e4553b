//! NEON with the dot-product extension: `8x8c4-neon-sdot`, exact for every input.
//!
//! `sdot` multiplies signed by signed, so A is packed flipped (`a − 128` as an i8,
//! [`AFormat::FlippedI8`]) and the driver moves the 128 into the zero point. One
//! `sdot` by element adds, for one row and four columns, the four products of a
//! k-group into each column's i32 lane: products are at most 2^14 in magnitude, so
//! nothing saturates or wraps but the running i32 sum, as in the reference.
//!
//! ```text
//!  A group: [r0: k0..4][r1][r2][r3] | [r4][r5][r6][r7]      a_lo, a_hi  (2 × 16 B)
//!  B group: [c0: k0..4][c1][c2][c3] | [c4][c5][c6][c7]      b_lo, b_hi  (2 × 16 B)
//!
//!  for r in 0..8:  sdot acc[r][0].4s, b_lo.16b, a_{lo,hi}.4b[r % 4]   columns 0–3
//!                  sdot acc[r][1].4s, b_hi.16b, a_{lo,hi}.4b[r % 4]   columns 4–7
//!  16 sdot (512 MACs) per 4 loads of 16 B; 16 accumulators of 32 registers
//! ```
//!
//! This is ruy's 8 × 8 dot-product tile. A panel with fewer real rows runs the
//! instance for that many rows (GEMV runs one row, not eight).

use std::arch::aarch64::*;
use std::arch::asm;

use super::{Out, for_each_tile};
use crate::kernel::{AFormat, BlockArgs, Blocking, Kernel, Tile};
use crate::output::{EpilogueArgs, epilogue_scalar};

const MR: usize = 8;
const NR: usize = 8;
const KG: usize = 4;
const TILE: Tile = Tile::new(MR, NR, KG);
// As for the other NEON kernels: 64 × 512 A bytes, 512 × 8 B bytes per panel slice,
// 64 × 512 i32 accumulators.
const BLOCKING: Blocking = Blocking { mc: 64, kc: 512, nc: 512 };

/// The kernel, or `None` if this CPU lacks the dot-product extension.
pub fn kernel() -> Option<&'static Kernel> {
    if crate::registry::NEON_DOTPROD.cpu_supports() { Some(&KERNEL) } else { None }
}

// Private: handed out only by `kernel()`, after detection.
static KERNEL: Kernel = {
    // SAFETY: the entry points touch memory only through the slices they get (checked
    // by `Kernel::block`/`epilogue`), and run only after `kernel()` detected dotprod.
    unsafe {
        Kernel::new("8x8c4-neon-sdot", TILE, BLOCKING, block_only, epilogue_scalar)
            .with_a_format(AFormat::FlippedI8)
            .with_staged_block(block_staged)
            .with_nibble_block(block_nibbles, Some(block_nibbles_staged))
    }
};

/// # Safety
/// As [`block`], without a stage.
unsafe fn block_only(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { block::<false>(args, None) }
}

/// [`block`] on the last K block, with the output stage fused into each tile.
///
/// # Safety
/// As [`block`], and `stage` passed `EpilogueArgs::check_output` for the block's rows
/// (checked by `Kernel::block_with_stage`).
unsafe fn block_staged(args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { block::<false>(args, Some(stage)) }
}

/// [`block_only`] against 4-bit weights (`Kernel::with_nibble_block`).
///
/// # Safety
/// As [`block`] with `NIB`.
unsafe fn block_nibbles(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { block::<true>(args, None) }
}

/// [`block_staged`] against 4-bit weights.
///
/// # Safety
/// As [`block_staged`], for 4-bit weights.
unsafe fn block_nibbles_staged(args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { block::<true>(args, Some(stage)) }
}

/// Every tile of the block: B panels outer (one stays in L1), A panels inner; with a
/// stage, each tile's sums go through it to the output. `NIB`: B holds 4-bit weights.
///
/// # Safety
/// NEON and dotprod must be available, and the buffers must satisfy [`BlockArgs`]
/// for this kernel (checked by `Kernel::block`, or `Kernel::nibble_block` with `NIB`).
#[target_feature(enable = "neon,dotprod")]
unsafe fn block<const NIB: bool>(args: BlockArgs<'_>, stage: Option<EpilogueArgs<'_>>) {
    for_each_tile(TILE, NIB, args, stage, |t| {
        // SAFETY: dotprod is enabled here; `for_each_tile` hands out panels and
        // outputs that fit this layout.
        unsafe {
            match t.rows {
                8 => tile::<8, NIB>(t.a.cast(), t.b, t.kgroups, t.out),
                7 => tile::<7, NIB>(t.a.cast(), t.b, t.kgroups, t.out),
                6 => tile::<6, NIB>(t.a.cast(), t.b, t.kgroups, t.out),
                5 => tile::<5, NIB>(t.a.cast(), t.b, t.kgroups, t.out),
                4 => tile::<4, NIB>(t.a.cast(), t.b, t.kgroups, t.out),
                3 => tile::<3, NIB>(t.a.cast(), t.b, t.kgroups, t.out),
                2 => tile::<2, NIB>(t.a.cast(), t.b, t.kgroups, t.out),
                1 => tile::<1, NIB>(t.a.cast(), t.b, t.kgroups, t.out),
                _ => unreachable!("a panel has at most MR real rows"),
            }
        }
    });
}

/// `acc += b · a[lane]` by the dot-product instruction: each i32 lane `j` of `acc`
/// gains `Σ_{t<4} b[4j + t] · a[4·lane + t]`, all signed bytes.
macro_rules! sdot {
    ($acc:expr, $b:expr, $a:expr, $lane:literal) => {
        // SAFETY: `sdot` only reads and writes the registers named; the enclosing
        // function is compiled with dotprod and reached only after its detection.
        unsafe {
            asm!(
                "sdot {acc:v}.4s, {b:v}.16b, {a:v}.4b[{lane}]",
                acc = inout(vreg) $acc,
                b = in(vreg) $b,
                a = in(vreg) $a,
                lane = const $lane,
                options(pure, nomem, nostack, preserves_flags),
            )
        }
    };
}

/// `acc[r][0..8] += Σ_g A[r, g] · B[g]` for the first `R` rows of a panel; with `NIB`,
/// B's groups come two per room of 4-bit weights, unpacked in registers.
///
/// # Safety
/// NEON and dotprod; `a` holds `kgroups` groups of 32 bytes, `b` as many (or, with
/// `NIB`, `kgroups / 2` rooms of 32 bytes, `kgroups` even), `out` takes `R` rows of 8
/// columns.
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile<const R: usize, const NIB: bool>(a: *const i8, b: *const i8, kgroups: usize, out: Out<'_>) {
    let mut c = [[vdupq_n_s32(0); 2]; MR];
    // One k-group: both halves of B against each row's four activations, broadcast by
    // lane.
    macro_rules! group {
        ($g:expr, $bv:expr) => {{
            let [b_lo, b_hi] = $bv;
            // SAFETY: group g lies within the panel (the function's contract); the
            // second half of A is read only when some row of it is real.
            let (a_lo, a_hi) = unsafe {
                let ag = a.add($g * MR * KG);
                (vld1q_s8(ag), if R > 4 { vld1q_s8(ag.add(16)) } else { vdupq_n_s8(0) })
            };
            macro_rules! row {
                ($r:literal, $a:ident, $lane:literal) => {
                    if R > $r {
                        sdot!(c[$r][0], b_lo, $a, $lane);
                        sdot!(c[$r][1], b_hi, $a, $lane);
                    }
                };
            }
            row!(0, a_lo, 0);
            row!(1, a_lo, 1);
            row!(2, a_lo, 2);
            row!(3, a_lo, 3);
            row!(4, a_hi, 0);
            row!(5, a_hi, 1);
            row!(6, a_hi, 2);
            row!(7, a_hi, 3);
        }};
    }
    for_each_b_group!(NIB, b, kgroups, 2, group);
    // SAFETY: R rows of 8 columns (the function's contract).
    unsafe { out.finish(&c[..R]) };
}

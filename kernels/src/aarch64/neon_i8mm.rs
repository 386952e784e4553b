//! NEON with the int8 matrix-multiply extension: `8x8c8-neon-usmmla`, exact for every
//! input.
//!
//! `usmmla` multiplies u8 by s8 natively, so A is packed as it is. One instruction
//! multiplies a 2 × 8 block of A (two rows, 8 k) by an 8 × 2 block of B (8 k, two
//! columns) and adds the 2 × 2 result to four i32 lanes: 32 MACs. Products are at most
//! 255·128 and eight of them at most 2^18, so only the running i32 sum wraps, as in
//! the reference.
//!
//! ```text
//!  A group: [r0: k0..8][r1: k0..8] [r2 r3] [r4 r5] [r6 r7]     a01 a23 a45 a67 (4 × 16 B)
//!  B group: [c0: k0..8][c1: k0..8] [c2 c3] [c4 c5] [c6 c7]     b01 b23 b45 b67 (4 × 16 B)
//!
//!  usmmla acc[p][q].4s, a(2p,2p+1).16b, b(2q,2q+1).16b       p, q in 0..4
//!    → acc[p][q] = [r2p·c2q, r2p·c2q+1, r2p+1·c2q, r2p+1·c2q+1]
//!  16 usmmla (1024 MACs) per 8 loads of 16 B; 16 accumulators
//!  end of tile: trn1/trn2 on 64-bit lanes → rows 2p and 2p+1, 4 columns at a time
//! ```
//!
//! The packing is the generic one with K-groups of 8: a pair of rows (or columns) is
//! 16 contiguous bytes, exactly the operand `usmmla` takes. A panel with fewer real
//! rows computes only the row pairs it needs.

use std::arch::aarch64::*;
use std::arch::asm;

use super::{Out, for_each_tile};
use crate::kernel::{BlockArgs, Blocking, Kernel, Tile};
use crate::output::{EpilogueArgs, epilogue_scalar};

const MR: usize = 8;
const NR: usize = 8;
const KG: usize = 8;
const TILE: Tile = Tile::new(MR, NR, KG);
// As for the other NEON kernels: 64 × 512 A bytes, 512 × 8 B bytes per panel slice,
// 64 × 512 i32 accumulators.
const BLOCKING: Blocking = Blocking { mc: 64, kc: 512, nc: 512 };

/// The kernel, or `None` if this CPU lacks the int8 matrix-multiply or the dot-product
/// extension (the tier's list in the registry).
pub fn kernel() -> Option<&'static Kernel> {
    if crate::registry::NEON_I8MM.cpu_supports() { Some(&KERNEL) } else { None }
}

// Private: handed out only by `kernel()`, after detection.
static KERNEL: Kernel = {
    // SAFETY: the entry points touch memory only through the slices they get (checked
    // by `Kernel::block`/`epilogue`), and run only after `kernel()` detected i8mm.
    unsafe {
        Kernel::new("8x8c8-neon-usmmla", TILE, BLOCKING, block_only, epilogue_scalar)
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
/// NEON and i8mm must be available, and the buffers must satisfy [`BlockArgs`] for
/// this kernel (checked by `Kernel::block`, or `Kernel::nibble_block` with `NIB`).
#[target_feature(enable = "neon,i8mm")]
unsafe fn block<const NIB: bool>(args: BlockArgs<'_>, stage: Option<EpilogueArgs<'_>>) {
    for_each_tile(TILE, NIB, args, stage, |t| {
        // SAFETY: i8mm is enabled here; `for_each_tile` hands out panels and outputs
        // that fit this layout.
        unsafe {
            match t.rows {
                8 => tile::<8, NIB>(t.a, t.b, t.kgroups, t.out),
                7 => tile::<7, NIB>(t.a, t.b, t.kgroups, t.out),
                6 => tile::<6, NIB>(t.a, t.b, t.kgroups, t.out),
                5 => tile::<5, NIB>(t.a, t.b, t.kgroups, t.out),
                4 => tile::<4, NIB>(t.a, t.b, t.kgroups, t.out),
                3 => tile::<3, NIB>(t.a, t.b, t.kgroups, t.out),
                2 => tile::<2, NIB>(t.a, t.b, t.kgroups, t.out),
                1 => tile::<1, NIB>(t.a, t.b, t.kgroups, t.out),
                _ => unreachable!("a panel has at most MR real rows"),
            }
        }
    });
}

/// `acc += a · bᵀ` by the matrix-multiply instruction: `a` holds two rows of 8 u8,
/// `b` two columns of 8 s8, `acc` the 2 × 2 i32 result, row-major.
macro_rules! usmmla {
    ($acc:expr, $a:expr, $b:expr) => {
        // SAFETY: `usmmla` only reads and writes the registers named; the enclosing
        // function is compiled with i8mm and reached only after its detection.
        unsafe {
            asm!(
                "usmmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) $acc,
                a = in(vreg) $a,
                b = in(vreg) $b,
                options(pure, nomem, nostack, preserves_flags),
            )
        }
    };
}

/// `acc[r][0..8] += Σ_g A[r, g] · B[g]` for the first `R` rows of a panel; with `NIB`,
/// B's groups come two per room of 4-bit weights, unpacked in registers.
///
/// # Safety
/// NEON and i8mm; `a` holds `kgroups` groups of 64 bytes, `b` as many (or, with `NIB`,
/// `kgroups / 2` rooms of 64 bytes, `kgroups` even), `out` takes `R` rows of 8 columns.
#[target_feature(enable = "neon,i8mm")]
unsafe fn tile<const R: usize, const NIB: bool>(a: *const u8, b: *const i8, kgroups: usize, out: Out<'_>) {
    let mut c = [[vdupq_n_s32(0); 4]; 4];
    // One k-group: each pair of rows against the four pairs of columns.
    macro_rules! group {
        ($g:expr, $bv:expr) => {{
            let bv: [int8x16_t; 4] = $bv;
            let ag = a.wrapping_add($g * MR * KG);
            macro_rules! pair {
                ($p:literal) => {
                    if R > 2 * $p {
                        // SAFETY: rows 2p and 2p + 1 of group g: row 2p is real, and
                        // the pair lies within the panel, whose rows are padded to MR.
                        let ap = unsafe { vld1q_u8(ag.add(16 * $p)) };
                        usmmla!(c[$p][0], ap, bv[0]);
                        usmmla!(c[$p][1], ap, bv[1]);
                        usmmla!(c[$p][2], ap, bv[2]);
                        usmmla!(c[$p][3], ap, bv[3]);
                    }
                };
            }
            pair!(0);
            pair!(1);
            pair!(2);
            pair!(3);
        }};
    }
    for_each_b_group!(NIB, b, kgroups, 4, group);
    // Row 2p is the low half of each 2 × 2 block of pair p, row 2p + 1 the high half.
    let mut rows = [[vdupq_n_s32(0); 2]; MR];
    for (p, cp) in c.iter().enumerate().take(R.div_ceil(2)) {
        let (q0, q1) = (vreinterpretq_s64_s32(cp[0]), vreinterpretq_s64_s32(cp[1]));
        let (q2, q3) = (vreinterpretq_s64_s32(cp[2]), vreinterpretq_s64_s32(cp[3]));
        rows[2 * p] = [vreinterpretq_s32_s64(vtrn1q_s64(q0, q1)), vreinterpretq_s32_s64(vtrn1q_s64(q2, q3))];
        rows[2 * p + 1] = [vreinterpretq_s32_s64(vtrn2q_s64(q0, q1)), vreinterpretq_s32_s64(vtrn2q_s64(q2, q3))];
    }
    // SAFETY: R rows of 8 columns (the function's contract).
    unsafe { out.finish(&rows[..R]) };
}

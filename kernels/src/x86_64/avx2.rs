//! AVX2: `6x8c4-avx2-madd`, exact for every input, and its fast path
//! `6x8c4-avx2-maddubs`, exact when no pair sum leaves i16.
//!
//! Both read the same packed B: panels of 8 columns, K in groups of 4, i8
//! (`[k-group][column 0..8][k 0..4]`, 32 bytes per group). They differ in A and in the
//! multiply:
//!
//! ```text
//!  madd (exact):   A packed as i16: per row and k-group, 4 values = 8 bytes.
//!                  B group → two vpmovsxbw: columns 0–3 and 4–7, each 4 k, as i16.
//!                  A row   → vpbroadcastq: [a0 a1 a2 a3] × 4.
//!                  vpmaddwd → per column two i32 lanes, (k0,k1) and (k2,k3):
//!                  |a·b| ≤ 255·128, a pair sum ≤ 65280: exact. vpaddd wraps, as the
//!                  reference does. A horizontal add per tile folds the two lanes.
//!
//!  maddubs (fast): A packed as u8: per row and k-group, 4 bytes.
//!                  A row → vpbroadcastd; vpmaddubsw (u8 × i8 → i16 pair sums,
//!                  saturating), then vpmaddwd with ones → one i32 per column.
//!                  Exact only when every pair sum fits in i16: activations ≤ 127,
//!                  or weights with |w0| + |w1| ≤ 128 per pair (the driver checks).
//! ```
//!
//! The fast path runs the kernel body shared with the VNNI kernels
//! ([`super::dot4_tile`]), its 4-deep dot product spelled `vpmaddubsw` + `vpmaddwd`.
//!
//! The tile is 6 rows × 8 columns: six accumulator rows of one (fast) or two (exact)
//! ymm registers, which leaves room for B and the broadcast in 16 registers. Rows of a
//! panel past the block's last real row are not computed: a panel of one real row
//! runs the 1-row instance of the same code, so small M pays only for its rows. M = 1
//! (GEMV) takes both kernels' one-row entries (`Kernel::with_row`): A packed as one
//! dense row rather than a 6-row panel of 5 padding rows.

use std::arch::x86_64::*;

use super::dot4_tile::{self, Dot4};
use crate::kernel::{AFormat, BlockArgs, Blocking, FastWhen, IndirectArgs, Kernel, Tile};
use crate::output::EpilogueArgs;

const MR: usize = 6;
const NR: usize = 8;
const KG: usize = 4;
const TILE: Tile = Tile { mr: MR, nr: NR, kg: KG };
// A block of 48 × 512 activations (24 KiB as u8, 48 KiB as i16) stays in L1/L2; a B
// panel slice of 512 × 8 (4 KiB) stays in L1 while every row panel of the block streams
// by; the 48 × 1024 accumulators (192 KiB) stay in L2. Chosen by measurement on the
// suite (mc 24–144, kc 256–1024, nc 512–1024 tried; differences within ±5%).
const BLOCKING: Blocking = Blocking { mc: 48, kc: 512, nc: 1024 };

/// The exact kernel with its fast path, or `None` if this CPU lacks AVX2.
pub fn kernel() -> Option<&'static Kernel> {
    if is_x86_feature_detected!("avx2") { Some(&EXACT) } else { None }
}

// Private: handed out only by `kernel()`, after detection. The fast path computes the
// same accumulators whenever every pair sum fits in i16, which is exactly when
// `vpmaddubsw` does not saturate.
static EXACT: Kernel = {
    // SAFETY: the entry points touch memory only through the slices they get (checked
    // by `Kernel::block`/`epilogue`), and run only after `kernel()` detected AVX2.
    unsafe {
        let fast = Kernel::new("6x8c4-avx2-maddubs", TILE, BLOCKING, block_maddubs, epilogue)
            .with_indirect(indirect_maddubs, Some(indirect_maddubs_staged))
            .with_row(row_maddubs, None);
        Kernel::new("6x8c4-avx2-madd", TILE, BLOCKING, block_madd, epilogue)
            .with_a_format(AFormat::I16)
            .with_row(row_madd, None)
            .with_fast_path(fast, FastWhen::PairSumsFitI16)
    }
};

/// # Safety
/// AVX2 must be available, and `args` must pass `EpilogueArgs::check` (checked by
/// `Kernel::epilogue`).
unsafe fn epilogue(args: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { super::avx2_epilogue::epilogue(args) }
}

/// # Safety
/// AVX2 must be available, and the buffers must satisfy [`BlockArgs`] for a kernel
/// with i16 A (checked by `Kernel::block`).
unsafe fn block_madd(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { block_madd_tiles(args) }
}

/// # Safety
/// As [`block_madd`], with u8 A, and every pair sum of the block fitting in i16.
#[target_feature(enable = "avx2")]
unsafe fn block_maddubs(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; AVX2 is enabled here, and the
    // shared body is inlined into this function.
    unsafe { dot4_tile::block::<PairSums, MR, 1>(args) }
}

/// # Safety
/// As [`block_maddubs`], for `args` satisfying [`IndirectArgs`] (checked by
/// `Kernel::indirect_block`).
#[target_feature(enable = "avx2")]
unsafe fn indirect_maddubs(args: IndirectArgs<'_>) {
    // SAFETY: forwarded from this function's contract; AVX2 is enabled here, and the
    // shared body is inlined into this function.
    unsafe { dot4_tile::indirect_block::<PairSums, MR, 1>(args) }
}

/// An indirect block with the output stage fused into each tile where it can be (see
/// [`super::avx2_fused`]).
///
/// # Safety
/// As [`indirect_maddubs`]; `stage` passes `EpilogueArgs::check_output`, its rows are
/// the block's and its columns within it (checked by `Kernel::indirect_with_stage`).
#[target_feature(enable = "avx2")]
unsafe fn indirect_maddubs_staged(args: IndirectArgs<'_>, stage: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract; AVX2 is enabled here, and the
    // shared body is inlined into this function.
    unsafe { super::avx2_fused::indirect_staged::<PairSums, MR, 1>(args, stage) }
}

/// # Safety
/// As [`block_maddubs`], for `args` satisfying [`BlockArgs`] for one densely packed
/// row (checked by `Kernel::row_block`).
#[target_feature(enable = "avx2")]
unsafe fn row_maddubs(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; AVX2 is enabled here, and the
    // shared body is inlined into this function.
    unsafe { dot4_tile::row_block::<PairSums, MR, 1>(args) }
}

/// `vpmaddubsw` then `vpmaddwd` with ones: a 4-deep dot product per i32 lane that is
/// exact only when each pair sum `a0·b0 + a1·b1` fits in i16 (else it saturates).
#[derive(Clone, Copy)]
struct PairSums(__m256i);

impl super::avx2_fused::Lanes8 for PairSums {
    #[inline(always)]
    fn ymm(self) -> __m256i {
        self.0
    }

    #[inline(always)]
    fn from_ymm(v: __m256i) -> Self {
        PairSums(v)
    }
}

impl Dot4 for PairSums {
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller runs on a CPU with AVX2 (the trait's contract).
        PairSums(unsafe { _mm256_setzero_si256() })
    }

    #[inline(always)]
    unsafe fn load_b(p: *const i8) -> Self {
        // SAFETY: AVX2, and 32 readable bytes at `p` (the trait's contract).
        PairSums(unsafe { _mm256_loadu_si256(p.cast()) })
    }

    #[inline(always)]
    unsafe fn splat_a(p: *const u8) -> Self {
        // SAFETY: AVX2, and 4 readable bytes at `p` (the trait's contract).
        PairSums(unsafe { _mm256_set1_epi32(p.cast::<i32>().read_unaligned()) })
    }

    #[inline(always)]
    unsafe fn dot(self, a: Self, b: Self) -> Self {
        // SAFETY: AVX2 (the trait's contract).
        unsafe {
            let pairs = _mm256_maddubs_epi16(a.0, b.0);
            PairSums(_mm256_add_epi32(self.0, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))))
        }
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        // SAFETY: AVX2 (the trait's contract).
        PairSums(unsafe { _mm256_add_epi32(self.0, other.0) })
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut i32, accumulate: bool) {
        // SAFETY: AVX2, and 8 writable i32 at `p` (the trait's contract).
        unsafe { Out { acc: p, accumulate }.row(0, self.0) }
    }
}

/// Every tile of the block: B panels outer (one stays in L1), A panels inner.
///
/// # Safety
/// As [`block_madd`].
#[target_feature(enable = "avx2")]
unsafe fn block_madd_tiles(args: BlockArgs<'_>) {
    let BlockArgs { a, b, b_panel_stride, row_panels, rows, col_panels, kgroups, acc, acc_stride, accumulate, .. } =
        args;
    let a_panel_bytes = kgroups * MR * KG * 2;
    for jp in 0..col_panels {
        let b_panel = &b[jp * b_panel_stride..][..kgroups * NR * KG];
        for ip in 0..row_panels {
            let a_panel = &a[ip * a_panel_bytes..][..a_panel_bytes];
            let real_rows = rows.saturating_sub(ip * MR).min(MR);
            let acc_tile = &mut acc[ip * MR * acc_stride + jp * NR..];
            assert!(acc_tile.len() >= (real_rows.max(1) - 1) * acc_stride + NR, "accumulator tile");
            let (ap, bp, cp) = (a_panel.as_ptr(), b_panel.as_ptr(), Out { acc: acc_tile.as_mut_ptr(), accumulate });
            // SAFETY: AVX2 is enabled here; the panels hold `kgroups` groups of this
            // kernel's layout (sliced just above) and the accumulator tile holds
            // `real_rows` rows of NR values at `acc_stride` (asserted just above).
            unsafe {
                match real_rows {
                    6 => tile_madd::<6>(ap, MR * KG * 2, bp, kgroups, cp, acc_stride),
                    5 => tile_madd::<5>(ap, MR * KG * 2, bp, kgroups, cp, acc_stride),
                    4 => tile_madd::<4>(ap, MR * KG * 2, bp, kgroups, cp, acc_stride),
                    3 => tile_madd::<3>(ap, MR * KG * 2, bp, kgroups, cp, acc_stride),
                    2 => tile_madd::<2>(ap, MR * KG * 2, bp, kgroups, cp, acc_stride),
                    1 => tile_madd::<1>(ap, MR * KG * 2, bp, kgroups, cp, acc_stride),
                    _ => {} // a panel with no real rows: nothing to compute
                }
            }
        }
    }
}

/// Every panel of a block of one row packed densely (`kgroups × 4` i16: the GEMV's A,
/// see `Kernel::with_row`), exact.
///
/// # Safety
/// AVX2 must be available, and the buffers must satisfy [`BlockArgs`] for one densely
/// packed row of i16 A (checked by `Kernel::row_block`).
#[target_feature(enable = "avx2")]
unsafe fn row_madd(args: BlockArgs<'_>) {
    let BlockArgs { a, b, b_panel_stride, col_panels, kgroups, acc, acc_stride, accumulate, .. } = args;
    let row = &a[..kgroups * KG * 2];
    for jp in 0..col_panels {
        let b_panel = &b[jp * b_panel_stride..][..kgroups * NR * KG];
        let acc_tile = &mut acc[jp * NR..][..NR];
        let (ap, bp, cp) = (row.as_ptr(), b_panel.as_ptr(), Out { acc: acc_tile.as_mut_ptr(), accumulate });
        // SAFETY: AVX2 is enabled here; the row holds `kgroups` groups of 4 i16 at 8
        // bytes each and the panel `kgroups` groups of this kernel's layout, and the
        // accumulator tile is one row of NR values (all sliced just above).
        unsafe { tile_madd::<1>(ap, KG * 2, bp, kgroups, cp, acc_stride) };
    }
}

/// `acc[r][0..8] += Σ_g A[r, g] · B[g]` for the first `R` rows of a panel, exact.
///
/// # Safety
/// AVX2; `a` holds `kgroups` groups of `R` rows × 4 i16 (8 bytes a row), each group
/// `a_group` bytes after the last, `b` holds `kgroups` groups of 32 bytes, and
/// `acc.acc` holds `R` rows of 8 i32 at `acc_stride`.
#[target_feature(enable = "avx2")]
unsafe fn tile_madd<const R: usize>(
    a: *const u8,
    a_group: usize,
    b: *const i8,
    kgroups: usize,
    acc: Out,
    acc_stride: usize,
) {
    // lo[r]: columns 0–3, hi[r]: columns 4–7; two lanes per column, (k0,k1) and (k2,k3).
    let mut lo = [_mm256_setzero_si256(); R];
    let mut hi = [_mm256_setzero_si256(); R];
    for g in 0..kgroups {
        // SAFETY: group g lies within the panels (the function's contract); unaligned
        // loads of 16 bytes of B and 8 bytes per row of A.
        unsafe {
            let bg = b.add(g * NR * KG);
            let b_lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(bg.cast()));
            let b_hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(bg.add(16).cast()));
            let ag = a.add(g * a_group);
            for r in 0..R {
                let a4 = _mm256_set1_epi64x(ag.add(r * KG * 2).cast::<i64>().read_unaligned());
                lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(a4, b_lo));
                hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(a4, b_hi));
            }
        }
    }
    for r in 0..R {
        // hadd → [c0 c1 c4 c5 | c2 c3 c6 c7]; the permute puts the columns in order.
        let sums = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(lo[r], hi[r]));
        // SAFETY: row r < R of the accumulator tile (the function's contract).
        unsafe { acc.row(r * acc_stride, sums) };
    }
}

/// Where a tile's rows go, and whether they add to what is there.
#[derive(Clone, Copy)]
struct Out {
    acc: *mut i32,
    accumulate: bool,
}

impl Out {
    /// `acc[offset..][..8] += sums` (wrapping), or `= sums`.
    ///
    /// # Safety
    /// AVX2; 8 writable i32 at `acc + offset`.
    #[target_feature(enable = "avx2")]
    unsafe fn row(self, offset: usize, sums: __m256i) {
        // SAFETY: the caller guarantees 8 writable i32 there; unaligned access.
        unsafe {
            let row = self.acc.add(offset).cast::<__m256i>();
            let value = if self.accumulate { _mm256_add_epi32(_mm256_loadu_si256(row), sums) } else { sums };
            _mm256_storeu_si256(row, value);
        }
    }
}

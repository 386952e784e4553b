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
//! Both run the kernel body shared with the VNNI kernels (`super::dot4_tile`): the
//! fast path with its 4-deep dot product spelled `vpmaddubsw` + `vpmaddwd`
//! (`PairSums`), the exact kernel with two registers of pair sums per 8 columns
//! (`PairsI16`, A packed 8 bytes a row and group). Both fuse the Float stage into
//! their tiles (`avx2_fused`); the fast path also reads A in place (indirect
//! convolution). The exact kernel does not: widening u8 in registers (`vpmovzxbw` per
//! row and group) made every convolution and GEMM of the suite 10–20% slower than
//! packing i16 once (Zen 4), the gathering included.
//!
//! The tile is 6 rows × 8 columns: six accumulator rows of one (fast) or two (exact)
//! ymm registers, which leaves room for B and the broadcast in 16 registers. Rows of a
//! panel past the block's last real row are not computed: a panel of one real row
//! runs the 1-row instance of the same code, so small M pays only for its rows. M = 1
//! (GEMV) takes both kernels' one-row entries (`Kernel::with_row`): A packed as one
//! dense row rather than a 6-row panel of 5 padding rows.

use std::arch::x86_64::*;

use super::avx2_fused::Lanes8;
use super::dot4_tile::{self, Dot4};
use crate::kernel::{AFormat, BlockArgs, Blocking, FastWhen, IndirectArgs, Kernel, Tile};
use crate::output::EpilogueArgs;

const MR: usize = 6;
const NR: usize = 8;
const KG: usize = 4;
const TILE: Tile = Tile::new(MR, NR, KG);
// A block of 48 × 512 activations (24 KiB as u8, 48 KiB as i16) stays in L1/L2; a B
// panel slice of 512 × 8 (4 KiB) stays in L1 while every row panel of the block streams
// by; the 48 × 1024 accumulators (192 KiB) stay in L2. Chosen by measurement on the
// suite (mc 24–144, kc 256–1024, nc 512–1024 tried; differences within ±5%).
const BLOCKING: Blocking = Blocking { mc: 48, kc: 512, nc: 1024 };

/// The exact kernel with its fast path, or `None` if this CPU lacks AVX2.
pub fn kernel() -> Option<&'static Kernel> {
    if crate::registry::AVX2.cpu_supports() { Some(&EXACT) } else { None }
}

// Private: handed out only by `kernel()`, after detection. The fast path computes the
// same accumulators whenever every pair sum fits in i16, which is exactly when
// `vpmaddubsw` does not saturate.
static EXACT: Kernel = {
    // SAFETY: the entry points touch memory only through the slices they get (checked
    // by `Kernel::block`/`epilogue`), and run only after `kernel()` detected AVX2.
    unsafe {
        let fast = Kernel::new("6x8c4-avx2-maddubs", TILE, BLOCKING, block_maddubs, epilogue)
            .with_a_packing(super::pack_avx2::pack_4x1, super::pack_avx2::row_sum)
            .with_staged_block(block_maddubs_staged)
            .with_indirect(indirect_maddubs, Some(indirect_maddubs_staged))
            .with_row(row_maddubs, None)
            .with_nibble_row(row_nibbles_maddubs, None)
            .with_nibble_block(block_nibbles_maddubs, None)
            .with_fusion_when(super::avx2_fused::fuses);
        Kernel::new("6x8c4-avx2-madd", TILE, BLOCKING, block_madd, epilogue)
            .with_a_format(AFormat::I16)
            .with_a_packing(super::pack_avx2::pack_4x2, super::pack_avx2::row_sum)
            .with_staged_block(block_madd_staged)
            .with_row(row_madd, None)
            .with_fusion_when(super::avx2_fused::fuses)
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
#[target_feature(enable = "avx2")]
unsafe fn block_madd(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; AVX2 is enabled here, and the
    // shared body is inlined into this function.
    unsafe { dot4_tile::block::<PairsI16, MR, 1>(args) }
}

/// A block with the output stage fused into each tile where it can be (see
/// [`super::avx2_fused`]).
///
/// # Safety
/// As [`block_madd`]; `stage` passes `EpilogueArgs::check_output`, its rows are the
/// block's and its columns within it (checked by `Kernel::block_with_stage`).
#[target_feature(enable = "avx2")]
unsafe fn block_madd_staged(args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract; AVX2 is enabled here, and the
    // shared body is inlined into this function.
    unsafe { super::avx2_fused::block_staged::<PairsI16, MR, 1>(args, stage) }
}

/// # Safety
/// As [`block_madd`], with u8 A, and every pair sum of the block fitting in i16.
#[target_feature(enable = "avx2")]
unsafe fn block_maddubs(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; AVX2 is enabled here, and the
    // shared body is inlined into this function.
    unsafe { dot4_tile::block::<PairSums, MR, 1>(args) }
}

/// [`block_maddubs`] with the output stage fused into each tile where it can be.
///
/// # Safety
/// As [`block_madd_staged`], with u8 A, and every pair sum of the block fitting in
/// i16.
#[target_feature(enable = "avx2")]
unsafe fn block_maddubs_staged(args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract; AVX2 is enabled here, and the
    // shared body is inlined into this function.
    unsafe { super::avx2_fused::block_staged::<PairSums, MR, 1>(args, stage) }
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

/// A block against 4-bit weights, unpacked in registers; exact whatever the
/// activations, as [`row_nibbles_maddubs`].
///
/// # Safety
/// As [`block_maddubs`], for 4-bit B (checked by `Kernel::nibble_block`).
#[target_feature(enable = "avx2")]
unsafe fn block_nibbles_maddubs(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; AVX2 is enabled here, and the
    // shared body is inlined into this function.
    unsafe { dot4_tile::nibble_block::<PairSums, MR, 1>(args) }
}

/// A block of one densely packed row against 4-bit weights, unpacked in registers;
/// exact whatever the activations (a pair sum is at most 255 · 15 · 2 < 2^15).
///
/// # Safety
/// As [`row_maddubs`], for 4-bit B (checked by `Kernel::nibble_row_block`).
#[target_feature(enable = "avx2")]
unsafe fn row_nibbles_maddubs(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; AVX2 is enabled here, and the
    // shared body is inlined into this function.
    unsafe { dot4_tile::row_nibbles_block::<PairSums, MR, 1>(args) }
}

/// `vpmaddubsw` then `vpmaddwd` with ones: a 4-deep dot product per i32 lane that is
/// exact only when each pair sum `a0·b0 + a1·b1` fits in i16 (else it saturates).
#[derive(Clone, Copy)]
struct PairSums(__m256i);

impl Lanes8 for PairSums {
    #[inline(always)]
    unsafe fn ymm(self) -> __m256i {
        self.0
    }

    #[inline(always)]
    unsafe fn from_ymm(v: __m256i) -> Self {
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
    unsafe fn load_b_nibbles(p: *const i8) -> (Self, Self) {
        // SAFETY: AVX2, and 32 readable bytes at `p` (the trait's contract). The high
        // nibbles: a 16-bit shift brings each byte's into its low half, the mask drops
        // what the shift brought over from the next byte.
        unsafe {
            let v = _mm256_loadu_si256(p.cast());
            let mask = _mm256_set1_epi8(0x0f);
            (PairSums(_mm256_and_si256(v, mask)), PairSums(_mm256_and_si256(_mm256_srli_epi16::<4>(v), mask)))
        }
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

/// Every panel of a block of one row packed densely (`kgroups × 4` i16: the GEMV's A,
/// see `Kernel::with_row`), exact.
///
/// # Safety
/// AVX2 must be available, and the buffers must satisfy [`BlockArgs`] for one densely
/// packed row of i16 A (checked by `Kernel::row_block`).
#[target_feature(enable = "avx2")]
unsafe fn row_madd(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; AVX2 is enabled here, and the
    // shared body is inlined into this function.
    unsafe { dot4_tile::row_block::<PairsI16, MR, 1>(args) }
}

/// The exact dot product on A packed as i16: 8 columns in two registers, `lo` columns
/// 0–3 and `hi` columns 4–7, each column's sum in two i32 lanes, (k0,k1) and (k2,k3),
/// folded into one when the sums are taken ([`Lanes8::ymm`]).
#[derive(Clone, Copy)]
struct PairsI16 {
    lo: __m256i,
    hi: __m256i,
}

impl Lanes8 for PairsI16 {
    /// hadd → [c0 c1 c4 c5 | c2 c3 c6 c7]; the permute puts the columns in order.
    #[inline(always)]
    unsafe fn ymm(self) -> __m256i {
        // SAFETY: AVX2 (the trait's contract).
        unsafe { _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(self.lo, self.hi)) }
    }

    /// Columns 0–3 into `lo` and 4–7 into `hi`, each in the first lane of its pair
    /// and 0 in the second, which [`Self::ymm`] folds back.
    #[inline(always)]
    unsafe fn from_ymm(v: __m256i) -> Self {
        // SAFETY: AVX2 (the trait's contract).
        unsafe {
            PairsI16 {
                lo: _mm256_cvtepu32_epi64(_mm256_castsi256_si128(v)),
                hi: _mm256_cvtepu32_epi64(_mm256_extracti128_si256::<1>(v)),
            }
        }
    }
}

impl Dot4 for PairsI16 {
    const LANES: usize = 8;
    const A_BYTES: usize = 8;
    // 12 accumulators, 2 of B and the broadcast fill the 16 registers.
    const UNROLL: usize = 1;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller runs on a CPU with AVX2 (the trait's contract).
        let z = unsafe { _mm256_setzero_si256() };
        PairsI16 { lo: z, hi: z }
    }

    /// The group's 8 columns × 4 k widened to i16: columns 0–3 in `lo`, 4–7 in `hi`.
    #[inline(always)]
    unsafe fn load_b(p: *const i8) -> Self {
        // SAFETY: AVX2, and 32 readable bytes at `p` (the trait's contract).
        unsafe {
            PairsI16 {
                lo: _mm256_cvtepi8_epi16(_mm_loadu_si128(p.cast())),
                hi: _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16).cast())),
            }
        }
    }

    /// A row's 4 i16 in every 64-bit lane (in `lo`, which [`Dot4::dot`] reads).
    #[inline(always)]
    unsafe fn splat_a(p: *const u8) -> Self {
        // SAFETY: AVX2, and 8 readable bytes at `p` (the trait's contract: A_BYTES).
        let a = unsafe { _mm256_set1_epi64x(p.cast::<i64>().read_unaligned()) };
        PairsI16 { lo: a, hi: a }
    }

    /// `vpmaddwd`: `|a·b| ≤ 255·128`, so a pair sum ≤ 65,280 in magnitude: exact.
    #[inline(always)]
    unsafe fn dot(self, a: Self, b: Self) -> Self {
        // SAFETY: AVX2 (the trait's contract).
        unsafe {
            PairsI16 {
                lo: _mm256_add_epi32(self.lo, _mm256_madd_epi16(a.lo, b.lo)),
                hi: _mm256_add_epi32(self.hi, _mm256_madd_epi16(a.lo, b.hi)),
            }
        }
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        // SAFETY: AVX2 (the trait's contract).
        unsafe { PairsI16 { lo: _mm256_add_epi32(self.lo, other.lo), hi: _mm256_add_epi32(self.hi, other.hi) } }
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut i32, accumulate: bool) {
        // SAFETY: AVX2, and 8 writable i32 at `p` (the trait's contract).
        unsafe { Out { acc: p, accumulate }.row(0, self.ymm()) }
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

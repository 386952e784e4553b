//! AVX-VNNI: `6x16c4-avxvnni`, the VEX-encoded `vpdpbusd` on ymm (Alder Lake and
//! later, Zen 5), exact for every input.
//!
//! The same instruction as AVX-512 VNNI at half the width, wrapping in i32 as the
//! reference does (never the saturating `vpdpbusds`). The body is the shared one of
//! `super::dot4_tile`:
//!
//! ```text
//!  per k-group (4 k):  B → 2 × vmovdqu ymm (16 columns × 4 k)
//!                      per row r < 6: vpbroadcastd ymm ← A[r][k0..4]
//!                                     2 × vpdpbusd acc[r][0..2], bcast, B[0..2]
//!  registers: 12 accumulators + 2 B + 1 broadcast, of 16 ymm
//! ```
//!
//! The output stage is the AVX2 one, run per strip of accumulators.

use std::arch::x86_64::*;

use super::dot4_tile::{self, Dot4};
use crate::kernel::{BlockArgs, Blocking, IndirectArgs, Kernel, Tile};
use crate::output::EpilogueArgs;

const MR: usize = 6;
const NV: usize = 2;
const TILE: Tile = Tile::new(MR, NV * 8, 4);
// A B panel slice of 512 × 16 (8 KiB) stays in L1 while the row panels (6 × 512, 3 KiB
// each) stream from L2; the 48 × 1024 accumulators (192 KiB) stay in L2. As AVX2's.
const BLOCKING: Blocking = Blocking { mc: 48, kc: 512, nc: 1024 };
// Within the scratch bound (`crate::driver::GEMM_SCRATCH_BYTES`): one block of packed
// A ≤ 64 KiB, accumulators ≤ 256 KiB.
const _: () = assert!(BLOCKING.mc * BLOCKING.kc <= 64 << 10 && BLOCKING.mc * BLOCKING.nc <= 64 << 10);

/// The kernel, or `None` if this CPU lacks AVX-VNNI or AVX2.
pub fn kernel() -> Option<&'static Kernel> {
    if crate::registry::AVX_VNNI.cpu_supports() { Some(&KERNEL) } else { None }
}

// Private: handed out only by `kernel()`, after detection.
static KERNEL: Kernel = {
    // SAFETY: the entry points touch memory only through the slices they get (checked
    // by `Kernel::block`/`epilogue`), and run only after `kernel()` detected the
    // features they are compiled for.
    unsafe {
        Kernel::new("6x16c4-avxvnni", TILE, BLOCKING, block, epilogue)
            .with_a_packing(super::pack_avx2::pack_4x1, super::pack_avx2::row_sum)
            .with_staged_block(block_staged)
            .with_indirect(indirect, Some(indirect_staged))
            .with_row(row, None)
            .with_nibble_row(row_nibbles, None)
            .with_nibble_block(block_nibbles, None)
            .with_fusion_when(super::avx2_fused::fuses)
    }
};

/// # Safety
/// AVX2 and AVX-VNNI must be available, and the buffers must satisfy [`BlockArgs`]
/// for this kernel (checked by `Kernel::block`).
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn block(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { dot4_tile::block::<Ymm, MR, NV>(args) }
}

/// [`block`] with the output stage fused into each tile where it can be (see
/// [`super::avx2_fused`]).
///
/// # Safety
/// As [`block`]; `stage` passes `EpilogueArgs::check_output`, its rows are the block's
/// and its columns within it (checked by `Kernel::block_with_stage`).
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn block_staged(args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { super::avx2_fused::block_staged::<Ymm, MR, NV>(args, stage) }
}

/// # Safety
/// As [`block`], for `args` satisfying [`IndirectArgs`] (checked by
/// `Kernel::indirect_block`).
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn indirect(args: IndirectArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { dot4_tile::indirect_block::<Ymm, MR, NV>(args) }
}

/// An indirect block with the output stage fused into each tile where it can be (see
/// [`super::avx2_fused`]).
///
/// # Safety
/// As [`indirect`]; `stage` passes `EpilogueArgs::check_output`, its rows are the
/// block's and its columns within it (checked by `Kernel::indirect_with_stage`).
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn indirect_staged(args: IndirectArgs<'_>, stage: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { super::avx2_fused::indirect_staged::<Ymm, MR, NV>(args, stage) }
}

/// # Safety
/// As [`block`], for `args` satisfying [`BlockArgs`] for one densely packed row
/// (checked by `Kernel::row_block`).
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn row(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { dot4_tile::row_block::<Ymm, MR, NV>(args) }
}

/// A block against 4-bit weights, unpacked in registers.
///
/// # Safety
/// As [`block`], for 4-bit B (checked by `Kernel::nibble_block`).
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn block_nibbles(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { dot4_tile::nibble_block::<Ymm, MR, NV>(args) }
}

/// A block of one densely packed row against 4-bit weights, unpacked in registers.
///
/// # Safety
/// As [`row`], for 4-bit B (checked by `Kernel::nibble_row_block`).
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn row_nibbles(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { dot4_tile::row_nibbles_block::<Ymm, MR, NV>(args) }
}

/// # Safety
/// AVX2 must be available, and `args` must pass `EpilogueArgs::check` (checked by
/// `Kernel::epilogue`).
unsafe fn epilogue(args: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { super::avx2_epilogue::epilogue(args) }
}

/// 8 i32 lanes, accumulated with the VEX `vpdpbusd`.
#[derive(Clone, Copy)]
struct Ymm(__m256i);

impl super::avx2_fused::Lanes8 for Ymm {
    #[inline(always)]
    unsafe fn ymm(self) -> __m256i {
        self.0
    }

    #[inline(always)]
    unsafe fn from_ymm(v: __m256i) -> Self {
        Ymm(v)
    }
}

impl Dot4 for Ymm {
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller runs with AVX2 (the trait's contract).
        Ymm(unsafe { _mm256_setzero_si256() })
    }

    #[inline(always)]
    unsafe fn load_b(p: *const i8) -> Self {
        // SAFETY: AVX2, and 32 readable bytes at `p` (the trait's contract).
        Ymm(unsafe { _mm256_loadu_si256(p.cast()) })
    }

    #[inline(always)]
    unsafe fn load_b_nibbles(p: *const i8) -> (Self, Self) {
        // SAFETY: AVX2, and 32 readable bytes at `p` (the trait's contract). The high
        // nibbles: a 16-bit shift brings each byte's into its low half, the mask drops
        // what the shift brought over from the next byte.
        unsafe {
            let v = _mm256_loadu_si256(p.cast());
            let mask = _mm256_set1_epi8(0x0f);
            (Ymm(_mm256_and_si256(v, mask)), Ymm(_mm256_and_si256(_mm256_srli_epi16::<4>(v), mask)))
        }
    }

    #[inline(always)]
    unsafe fn splat_a(p: *const u8) -> Self {
        // SAFETY: AVX2, and 4 readable bytes at `p` (the trait's contract).
        Ymm(unsafe { _mm256_set1_epi32(p.cast::<i32>().read_unaligned()) })
    }

    #[inline(always)]
    unsafe fn dot(self, a: Self, b: Self) -> Self {
        // SAFETY: AVX-VNNI (the trait's contract). The wrapping form, never the
        // saturating `_mm256_dpbusds_avx_epi32`.
        Ymm(unsafe { _mm256_dpbusd_avx_epi32(self.0, a.0, b.0) })
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        // SAFETY: AVX2 (the trait's contract).
        Ymm(unsafe { _mm256_add_epi32(self.0, other.0) })
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut i32, accumulate: bool) {
        // SAFETY: AVX2, and 8 writable i32 at `p` (the trait's contract).
        unsafe {
            let v = if accumulate { _mm256_add_epi32(_mm256_loadu_si256(p.cast()), self.0) } else { self.0 };
            _mm256_storeu_si256(p.cast(), v);
        }
    }
}

//! AVX-512 VNNI: `8x48c4-avx512vnni`, `vpdpbusd` on zmm, exact for every input.
//!
//! `vpdpbusd` multiplies u8 by i8 and adds four products to an i32 lane with a
//! wrapping add (the non-saturating form; `vpdpbusds` would clamp where the reference
//! wraps), so one instruction is exact for any activations and weights, and there is no
//! fast path to choose. The body is the shared one of [`super::dot4_tile`]:
//!
//! ```text
//!  per k-group (4 k):  B → 3 × vmovdqu64 zmm (48 columns × 4 k)
//!                      per row r < 8: vpbroadcastd zmm ← A[r][k0..4]
//!                                     3 × vpdpbusd acc[r][0..3], bcast, B[0..3]
//!  registers: 24 accumulators + 3 B + broadcasts, of 32 zmm
//! ```
//!
//! The tile and K-group are those of FBGEMM's AVX-512 VNNI kernel (8 × 48, 4 k per
//! group). The output stage ([`super::avx512_epilogue`]) runs per strip of
//! accumulators after the last K block, while they are in cache.

use std::arch::x86_64::*;

use super::dot4_tile::{self, Dot4};
use crate::kernel::{BlockArgs, Blocking, Kernel, Tile};
use crate::output::EpilogueArgs;

const MR: usize = 8;
const NV: usize = 3;
const TILE: Tile = Tile { mr: MR, nr: NV * 16, kg: 4 };
// A B panel slice of 512 × 48 (24 KiB) stays in L1 (48 KiB on Ice Lake and later
// servers) while the block's row panels (8 × 512, 4 KiB each) stream from L2; the
// 96 × 960 accumulators (360 KiB) stay in L2.
const BLOCKING: Blocking = Blocking { mc: 128, kc: 512, nc: 480 };

/// The kernel, or `None` if this CPU lacks AVX-512 F/BW/VL with VNNI (or AVX2, which
/// packing uses and every such CPU has).
pub fn kernel() -> Option<&'static Kernel> {
    let detected = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx2");
    if detected { Some(&KERNEL) } else { None }
}

// Private: handed out only by `kernel()`, after detection.
static KERNEL: Kernel = {
    // SAFETY: the entry points touch memory only through the slices they get (checked
    // by `Kernel::block`/`epilogue`), and run only after `kernel()` detected the
    // features they are compiled for.
    unsafe { Kernel::new("8x48c4-avx512vnni", TILE, BLOCKING, block, epilogue) }
};

/// # Safety
/// AVX-512 F/BW/VL with VNNI must be available, and the buffers must satisfy
/// [`BlockArgs`] for this kernel (checked by `Kernel::block`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn block(args: BlockArgs<'_>) {
    // SAFETY: forwarded from this function's contract; the shared body is inlined here,
    // where the features are enabled.
    unsafe { dot4_tile::block::<Zmm, MR, NV>(args) }
}

/// # Safety
/// AVX-512 F must be available, and `args` must pass `EpilogueArgs::check` (checked by
/// `Kernel::epilogue`).
unsafe fn epilogue(args: EpilogueArgs<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { super::avx512_epilogue::epilogue(args) }
}

/// 16 i32 lanes, accumulated with `vpdpbusd`.
#[derive(Clone, Copy)]
struct Zmm(__m512i);

impl Dot4 for Zmm {
    const LANES: usize = 16;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller runs with AVX-512 F (the trait's contract).
        Zmm(unsafe { _mm512_setzero_si512() })
    }

    #[inline(always)]
    unsafe fn load_b(p: *const i8) -> Self {
        // SAFETY: AVX-512 F, and 64 readable bytes at `p` (the trait's contract).
        Zmm(unsafe { _mm512_loadu_si512(p.cast()) })
    }

    #[inline(always)]
    unsafe fn splat_a(p: *const u8) -> Self {
        // SAFETY: AVX-512 F, and 4 readable bytes at `p` (the trait's contract).
        Zmm(unsafe { _mm512_set1_epi32(p.cast::<i32>().read_unaligned()) })
    }

    #[inline(always)]
    unsafe fn dot(self, a: Self, b: Self) -> Self {
        // SAFETY: AVX-512 VNNI (the trait's contract). The wrapping form, never
        // `_mm512_dpbusds_epi32`.
        Zmm(unsafe { _mm512_dpbusd_epi32(self.0, a.0, b.0) })
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut i32, accumulate: bool) {
        // SAFETY: AVX-512 F, and 16 writable i32 at `p` (the trait's contract);
        // unaligned access.
        unsafe {
            let v = if accumulate { _mm512_add_epi32(_mm512_loadu_si512(p.cast()), self.0) } else { self.0 };
            _mm512_storeu_si512(p.cast(), v);
        }
    }
}

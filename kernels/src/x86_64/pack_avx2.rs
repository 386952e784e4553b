//! The AVX2 packers of A for the x86 kernels' K-groups of 4 (`Kernel::with_a_packing`):
//! the u8 layout of AVX2's fast path and the VNNI kernels (`pack_4x1`) and the widened
//! i16 layout of AVX2's exact kernel (`pack_4x2`), with their row sums by `vpsadbw`.
//! Each has the layout of the portable packer (`crate::pack::packer`), which the
//! `pack_formats` test checks for every kernel's packer. Only kernels whose tier
//! requires AVX2 carry them (`crate::registry`).

use crate::pack::{PackA, byte_sum, pack_a_with};

/// [`pack_a_with`] for the AVX2 kernel's format, compiled for AVX2 (the row sums and
/// the widening vectorize with it).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn pack_4x2(args: PackA<'_, '_>) {
    use std::arch::x86_64::*;
    // Four k-groups of a row at a time: 16 bytes widened to 16 i16 by one vpmovzxbw,
    // then each group's 8 bytes stored to its slot, `stride` bytes apart.
    let four = |src: &[u8], dst: &mut [u8], at: usize, stride: usize| {
        assert!(src.len() >= 16 && dst.len() >= at + 3 * stride + 8);
        // SAFETY: AVX2 is enabled in this function; the load reads 16 bytes of `src` and
        // the four 8-byte stores end at or before `at + 3 · stride + 8 ≤ dst.len()`
        // (asserted); all unaligned.
        unsafe {
            let wide = _mm256_cvtepu8_epi16(_mm_loadu_si128(src.as_ptr().cast()));
            let (lo, hi) = (_mm256_castsi256_si128(wide), _mm256_extracti128_si256::<1>(wide));
            let d = dst.as_mut_ptr().add(at);
            _mm_storel_epi64(d.cast(), lo);
            _mm_storel_epi64(d.add(stride).cast(), _mm_unpackhi_epi64(lo, lo));
            _mm_storel_epi64(d.add(2 * stride).cast(), hi);
            _mm_storel_epi64(d.add(3 * stride).cast(), _mm_unpackhi_epi64(hi, hi));
        }
    };
    pack_a_with::<4, 2, false>(args, Some(four), |src| {
        // SAFETY: AVX2 is enabled in this function (the closure inherits it).
        unsafe { row_sum(src) }
    })
}

/// [`pack_a_with`] for the u8 format with K-groups of 4 (AVX2's fast path, the VNNI
/// kernels), compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn pack_4x1(args: PackA<'_, '_>) {
    // Four k-groups of a row at a time: two 8-byte loads, four 4-byte stores to their
    // slots, `stride` bytes apart (one bounds check per four groups, not per group).
    let four = |src: &[u8], dst: &mut [u8], at: usize, stride: usize| {
        assert!(src.len() >= 16 && dst.len() >= at + 3 * stride + 4);
        let lo = u64::from_le_bytes(src[..8].try_into().expect("8 bytes"));
        let hi = u64::from_le_bytes(src[8..16].try_into().expect("8 bytes"));
        for (i, group) in [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32].into_iter().enumerate() {
            let d = dst.as_mut_ptr().wrapping_add(at + i * stride).cast::<u32>();
            // SAFETY: `at + i · stride + 4 ≤ at + 3 · stride + 4 ≤ dst.len()` (asserted
            // above); unaligned store.
            unsafe { d.write_unaligned(group.to_le()) };
        }
    };
    pack_a_with::<4, 1, false>(args, Some(four), |src| {
        // SAFETY: AVX2 is enabled in this function (the closure inherits it).
        unsafe { row_sum(src) }
    })
}

/// `Σ src`, wrapping in u32: the sum of every byte, 32 at a time with `vpsadbw`.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn row_sum(src: &[u8]) -> u32 {
    use std::arch::x86_64::*;
    let chunks = src.chunks_exact(32);
    let rest = byte_sum(chunks.remainder());
    let zero = _mm256_setzero_si256();
    let mut sums = zero; // four u64 lanes: no lane can overflow for any slice length
    for chunk in chunks {
        // SAFETY: `chunk` holds 32 bytes; unaligned load.
        let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) };
        sums = _mm256_add_epi64(sums, _mm256_sad_epu8(v, zero));
    }
    let pair = _mm_add_epi64(_mm256_castsi256_si128(sums), _mm256_extracti128_si256::<1>(sums));
    let total = (_mm_cvtsi128_si64(pair) as u64).wrapping_add(_mm_extract_epi64::<1>(pair) as u64);
    // The low 32 bits of the exact sum are the u32 wrapping sum.
    (total as u32).wrapping_add(rest)
}

//! 4-bit weights decoded to i8 with AVX-512BW, for AMX, which decodes them a block at
//! a time ([`crate::pack::PackedB::decode_nibbles`]) or a K step at a time inside its
//! tile loop (`crate::amx::block`): 64 bytes of nibbles, two
//! k-groups' worth, per load, masked and shifted into two 64-byte stores. The
//! portable decoder (`crate::pack::decode_pairs`) does the same a byte at a time,
//! about 4× slower on the AMX tier's 16 × 4096 × 4096 int4 GEMM, where decoding was
//! most of the time.

use std::arch::x86_64::*;

/// [`crate::pack::decode_pairs`] (pairs of `group`-byte k-groups, the first in the
/// low nibbles of `src`, the second in the high ones, into consecutive groups of
/// `out`; a last odd group from the low nibbles), 64 bytes at a time where `group`
/// is a whole number of vectors.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn decode_pairs(src: &[i8], out: &mut [i8], group: usize) {
    const V: usize = 64;
    if group == 0 || !group.is_multiple_of(V) {
        return crate::pack::decode_pairs(src, out, group);
    }
    let pairs = (out.len() / (2 * group)).min(src.len() / group);
    let mask = _mm512_set1_epi8(0x0f);
    for (pair, src) in out[..pairs * 2 * group].chunks_exact_mut(2 * group).zip(src.chunks_exact(group)) {
        let (low, high) = pair.split_at_mut(group);
        for ((lo, hi), s) in low.chunks_exact_mut(V).zip(high.chunks_exact_mut(V)).zip(src.chunks_exact(V)) {
            // SAFETY: `s`, `lo` and `hi` hold 64 bytes each (`chunks_exact`); unaligned
            // load and stores.
            unsafe {
                let v = _mm512_loadu_si512(s.as_ptr().cast());
                _mm512_storeu_si512(lo.as_mut_ptr().cast(), _mm512_and_si512(v, mask));
                _mm512_storeu_si512(hi.as_mut_ptr().cast(), _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask));
            }
        }
    }
    // A last odd group (low nibbles only), or whatever `out` holds past the pairs.
    crate::pack::decode_pairs(&src[pairs * group..], &mut out[pairs * 2 * group..], group);
}

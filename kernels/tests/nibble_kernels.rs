//! 4-bit weights through every kernel's loop nest, with tiny cache blocks as well as
//! the kernel's own, against the reference on the same weights unpacked. Every kernel
//! but AMX's unpacks the nibbles in registers (`Kernel::with_nibble_block`), which this
//! file also checks; AMX loads its tiles from memory, so its weights are decoded one
//! block at a time.

use qgemm_kernels::pack::{BLayout, PackedB};
mod common;

use common::{Problem, Rng, blocked_kernels, check_against_reference, gemm_kernels};

/// A weight in `[0, 15]`: either end or anything between.
fn nibble(rng: &mut Rng, ends: bool) -> i8 {
    if ends { [0, 15][rng.below(2)] } else { rng.below(16) as i8 }
}

#[test]
fn every_kernel_on_4_bit_weights_matches_the_reference() {
    let mut rng = Rng(0x4b17_0f0f_1234_5678);
    let exact_halves: Vec<&str> = gemm_kernels().iter().filter(|k| k.fast_path().is_some()).map(|k| k.name()).collect();
    for kernel in blocked_kernels() {
        let t = kernel.tile();
        for case in 0..if cfg!(miri) { 3 } else { 40 } {
            let m = 1 + rng.below(3 * t.mr + 3);
            let n = 1 + rng.below(3 * t.nr + 3);
            let k = rng.below(9 * t.k_step() + 5);
            let extremes = case % 4 == 0;
            let stride = k + rng.below(3);
            let a: Vec<u8> = (0..m * stride).map(|_| if extremes { 255 } else { rng.next() as u8 }).collect();
            let b: Vec<i8> = (0..k * n).map(|_| nibble(&mut rng, extremes)).collect();
            let a_zp = if extremes { 0 } else { rng.next() as u8 };
            let layout = if rng.below(2) == 0 { BLayout::KxN } else { BLayout::NxK };
            let per_column = rng.below(2) == 0;
            let b_zp: Vec<i8> = (0..if per_column { n } else { 1 }).map(|_| nibble(&mut rng, true)).collect();
            let packed = PackedB::try_new_nibbles(t, &b, layout, k, n, &b_zp).unwrap();
            assert!(packed.is_nibbles());
            // The kernel that runs them unpacks them in registers (AMX's decodes a step
            // at a time in its tile loop up to 32 rows, a block at a time above); the exact
            // half of a kernel with a fast path (AVX2's madd, NEON's mull) is never
            // chosen for 4-bit weights, whose fast path is always exact.
            let selected = kernel.for_block(&packed, || u8::MAX);
            assert!(
                selected.has_nibble_block()
                    || selected.name().contains("amx")
                    || (kernel.fast_path().is_none() && exact_halves.contains(&kernel.name())),
                "{} decodes 4-bit weights instead of unpacking them in registers",
                selected.name()
            );

            let bias: Vec<i32> = (0..n).map(|_| rng.next() as i32 >> 8).collect();
            let problem = Problem { m, n, k, a: &a, stride, a_zp, b: &b, layout, b_zp: &b_zp, packed: &packed };
            check_against_reference(&kernel, &problem, &bias, -6);
        }
    }
}

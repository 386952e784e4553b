//! The kernels' indirect entry ([`Kernel::indirect_block`]): A read in place through
//! offsets into an input and a pad buffer, against a scalar product of the same rows,
//! over runs of every length class (whole K-groups and not), one to four runs, row and
//! column tails; and the bounds check that keeps the safe entry in bounds.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::{Rng, gemm_kernels};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::{IndirectA, IndirectArgs, Kernel};

/// Every kernel this CPU runs that reads A in place (a fast path counts), with whether
/// it is exact for full-range activations (else only for activations ≤ 127).
fn indirect_kernels() -> Vec<(Kernel, bool)> {
    let mut kernels = Vec::new();
    for kernel in gemm_kernels() {
        if kernel.has_indirect() {
            kernels.push((kernel, true));
        } else if let Some(fast) = kernel.fast_path().filter(Kernel::has_indirect) {
            // A fast path is exact where its test holds: activations ≤ 127 always do.
            if !kernels.iter().any(|(k, _): &(Kernel, bool)| k.name() == fast.name()) {
                kernels.push((fast, false));
            }
        }
    }
    kernels
}

#[test]
fn indirect_blocks_match_the_product_of_their_runs() {
    let mut rng = Rng(0x1d1e_c7ed_0ff5_e7a5);
    let kernels = indirect_kernels();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert!(!kernels.is_empty(), "the AVX2 fast path reads A in place");
    }
    for (kernel, full_range) in kernels {
        let t = kernel.tile();
        for trial in 0..if cfg!(miri) { 3 } else { 80 } {
            let segments = 1 + rng.below(4);
            let run_len = 1 + rng.below(40);
            let seg_groups = run_len.div_ceil(4);
            let run_bytes = seg_groups * 4;
            let rows = 1 + rng.below(3 * t.mr + 2);
            let n = 1 + rng.below(3 * t.nr + 3);
            let top = if full_range { 256 } else { 128 };
            let byte = |rng: &mut Rng| (rng.next() % top) as u8;
            let input: Vec<u8> = (0..160 + rng.below(64)).map(|_| byte(&mut rng)).collect();
            let pad: Vec<u8> = (0..run_bytes * (1 + rng.below(4))).map(|_| byte(&mut rng)).collect();
            // Extremes on some trials: A = 255 (or 127) against −128 and 127.
            let extreme = trial % 5 == 0;
            let (input, pad) = if extreme {
                (vec![(top - 1) as u8; input.len()], vec![(top - 1) as u8; pad.len()])
            } else {
                (input, pad)
            };
            let offsets: Vec<usize> = (0..rows * segments)
                .map(|_| {
                    if rng.below(4) == 0 {
                        input.len() + rng.below(pad.len() - run_bytes + 1)
                    } else {
                        rng.below(input.len() - run_bytes + 1)
                    }
                })
                .collect();
            let kp = segments * run_bytes;
            let b: Vec<i8> =
                (0..n * kp).map(|i| if extreme { [-128, 127][(i / 3) % 2] } else { rng.next() as i8 }).collect();
            let packed = PackedB::try_new(t, &b, BLayout::NxK, kp, n, &[0]).unwrap();
            let col_panels = n.div_ceil(t.nr);
            let acc_stride = col_panels * t.nr;
            let mut acc = vec![i32::MIN; rows.div_ceil(t.mr) * t.mr * acc_stride];
            kernel.indirect_block(IndirectArgs {
                a: IndirectA { input: &input, pad: &pad, offsets: &offsets, segments, seg_groups },
                b: packed.data(),
                b_panel_stride: packed.panel_stride(),
                rows,
                col_panels,
                cols: n,
                acc: &mut acc,
                acc_stride,
            });
            for r in 0..rows {
                // Row r of A: its runs' `run_bytes` bytes, in order.
                let a_row: Vec<u8> = offsets[r * segments..(r + 1) * segments]
                    .iter()
                    .flat_map(|&o| {
                        let run = if o < input.len() { &input[o..] } else { &pad[o - input.len()..] };
                        run[..run_bytes].to_vec()
                    })
                    .collect();
                for c in 0..n {
                    let want = (0..kp)
                        .fold(0i32, |s, k| s.wrapping_add(i32::from(a_row[k]).wrapping_mul(i32::from(b[c * kp + k]))));
                    assert_eq!(
                        acc[r * acc_stride + c],
                        want,
                        "{} trial {trial}: row {r}, column {c} of {rows} × {n}, {segments} runs of {run_len}",
                        kernel.name()
                    );
                }
            }
        }
    }
}

/// A run that would read past its buffer is refused before the kernel runs.
#[test]
fn runs_outside_their_buffer_panic() {
    for (kernel, _) in indirect_kernels() {
        let t = kernel.tile();
        let b = vec![1i8; t.nr * 8];
        let packed = PackedB::try_new(t, &b, BLayout::NxK, 8, t.nr, &[0]).unwrap();
        let (input, pad) = (vec![7u8; 40], vec![9u8; 8]);
        // Runs of two K-groups (8 bytes): the last fitting offsets are 32 and 40 + 0.
        for bad in [33, 39, 40 + 1, 40 + 8, usize::MAX] {
            let mut acc = vec![0i32; t.mr * t.nr];
            let offsets = [0, bad];
            let result = catch_unwind(AssertUnwindSafe(|| {
                kernel.indirect_block(IndirectArgs {
                    a: IndirectA { input: &input, pad: &pad, offsets: &offsets, segments: 1, seg_groups: 2 },
                    b: packed.data(),
                    b_panel_stride: packed.panel_stride(),
                    rows: 2,
                    col_panels: 1,
                    cols: t.nr,
                    acc: &mut acc,
                    acc_stride: t.nr,
                });
            }));
            assert!(result.is_err(), "{}: offset {bad} was accepted", kernel.name());
        }
        // The last fitting offsets are accepted.
        let mut acc = vec![0i32; t.mr * t.nr];
        kernel.indirect_block(IndirectArgs {
            a: IndirectA { input: &input, pad: &pad, offsets: &[32, 40], segments: 1, seg_groups: 2 },
            b: packed.data(),
            b_panel_stride: packed.panel_stride(),
            rows: 2,
            col_panels: 1,
            cols: t.nr,
            acc: &mut acc,
            acc_stride: t.nr,
        });
        assert_eq!(acc[0], 7 * 8);
        assert_eq!(acc[t.nr], 9 * 8);
    }
}

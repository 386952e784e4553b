//! The AVX2 kernel's two paths at the boundaries where the driver switches between
//! them: the fast path (`vpmaddubsw`) exact up to its bounds and wrong past them, and
//! the driver taking the exact path wherever the fast one could saturate.
#![cfg(target_arch = "x86_64")]

use qgemm_kernels::driver::{GemmArgs, gemm};
use qgemm_kernels::output::{OutData, OutView, OutputStage};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::rows::Rows;
use qgemm_kernels::x86_64::avx2;
use qgemm_kernels::{Blocking, Kernel};
use qgemm_reference as reference;

/// The AVX2 kernel, or `None` (and a note) where the CPU lacks AVX2.
fn avx2_kernel() -> Option<Kernel> {
    let kernel = avx2::kernel().copied();
    if kernel.is_none() {
        eprintln!("no AVX2 on this CPU: nothing to test");
    }
    kernel
}

/// Tiny blocks, so that a problem spans many blocks and each chooses its own path.
fn tiny(kernel: Kernel) -> Kernel {
    let t = kernel.tile();
    kernel.with_blocking(Blocking { mc: t.mr, kc: t.k_step(), nc: t.nr })
}

/// `Σ_k (a − a_zp)·b` as i32, from `kernel` through the driver.
fn run(kernel: &Kernel, a: &[u8], a_zp: u8, m: usize, b: &PackedB) -> Vec<i32> {
    let mut out = vec![0i32; m * b.n()];
    let args = GemmArgs {
        m,
        a: Rows::Matrix { data: a, stride: b.k() },
        a_zp,
        b,
        stage: OutputStage { bias: None, requant: None },
        columns: 0..b.n(),
        out: OutData::I32(OutView::new(&mut out, m, b.n(), b.n())),
    };
    gemm(kernel, args);
    out
}

fn expected(a: &[u8], a_zp: u8, m: usize, b_kxn: &[i8], k: usize, n: usize) -> Vec<i32> {
    let zp = reference::Channelwise::PerTensor(0);
    reference::gemm_accumulators(&reference::GemmProblem {
        m,
        n,
        k,
        a,
        a_row_stride: k,
        a_zero_point: a_zp,
        b: b_kxn,
        b_layout: reference::WeightLayout::KxN,
        b_zero_point: &zp,
    })
}

/// K×N weights whose aligned pairs along K are `pairs[j % pairs.len()]`, column by
/// column shifted so that every column sees every pair.
fn paired_weights(k: usize, n: usize, pairs: &[(i8, i8)]) -> Vec<i8> {
    let mut b = vec![0i8; k * n];
    for kk in 0..k {
        for nn in 0..n {
            let (w0, w1) = pairs[(kk / 2 + nn) % pairs.len()];
            b[kk * n + nn] = if kk % 2 == 0 { w0 } else { w1 };
        }
    }
    b
}

const M: usize = 13;
const K: usize = 37; // odd: the last pair is (w, padding)
const N: usize = 19;

fn pack(b: &[i8], kernel: &Kernel) -> PackedB {
    PackedB::try_new(kernel.tile(), b, BLayout::KxN, K, N, &[0]).unwrap()
}

#[test]
fn fast_path_is_exact_up_to_its_bounds() {
    let Some(kernel) = avx2_kernel() else { return };
    let fast = kernel.fast_path().expect("the AVX2 kernel has a fast path");
    // Activations at 127 against the most negative pair: 127·(−256) = −32512.
    let b = paired_weights(K, N, &[(-128, -128), (127, 127), (-128, 127)]);
    let a = vec![127u8; M * K];
    assert_eq!(run(&fast, &a, 0, M, &pack(&b, &kernel)), expected(&a, 0, M, &b, K, N));
    // Activations at 255 against pairs with |w0| + |w1| = 128: 255·128 = 32640.
    let b = paired_weights(K, N, &[(-128, 0), (0, -128), (64, -64), (127, 1), (-1, -127), (-64, -64)]);
    let a = vec![255u8; M * K];
    let packed = pack(&b, &kernel);
    assert!(packed.pair_sums_fit_i16());
    assert_eq!(run(&fast, &a, 0, M, &packed), expected(&a, 0, M, &b, K, N));
}

#[test]
fn fast_path_saturates_past_its_bounds() {
    // Why the driver checks: 129·(−128) · 2 = −33024 does not fit in i16.
    let Some(kernel) = avx2_kernel() else { return };
    let fast = kernel.fast_path().unwrap();
    let b = paired_weights(K, N, &[(-128, -128)]);
    for value in [129u8, 255] {
        let a = vec![value; M * K];
        assert_ne!(run(&fast, &a, 0, M, &pack(&b, &kernel)), expected(&a, 0, M, &b, K, N), "a = {value}");
    }
}

#[test]
fn driver_takes_the_exact_path_where_the_fast_one_would_saturate() {
    let Some(kernel) = avx2_kernel() else { return };
    // Weights that allow saturation; activations 7-bit except one 255 per chosen block
    // position, so that neighbouring blocks take different paths.
    let b = paired_weights(K, N, &[(-128, -128), (127, -128), (-128, 127)]);
    let packed = pack(&b, &kernel);
    assert!(!packed.pair_sums_fit_i16());
    for big in [0, 5, K + 3, 7 * K + 20, M * K - 1] {
        let mut a = vec![127u8; M * K];
        a[big] = 255;
        for k in [kernel, tiny(kernel)] {
            assert_eq!(run(&k, &a, 3, M, &packed), expected(&a, 3, M, &b, K, N), "{} 255 at {big}", k.name());
        }
    }
    // One pair at |w0| + |w1| = 129 is enough to rule the fast path out for A = 255.
    let b = paired_weights(K, N, &[(-128, 0), (64, -64), (-128, -1)]);
    let packed = pack(&b, &kernel);
    assert!(!packed.pair_sums_fit_i16());
    let a = vec![255u8; M * K];
    for k in [kernel, tiny(kernel)] {
        assert_eq!(run(&k, &a, 0, M, &packed), expected(&a, 0, M, &b, K, N), "{}", k.name());
    }
}

#[test]
fn every_path_is_exact_on_data_both_could_take() {
    let Some(kernel) = avx2_kernel() else { return };
    let b = paired_weights(K, N, &[(-128, 0), (100, 28), (-1, -127)]);
    let packed = pack(&b, &kernel);
    assert!(packed.pair_sums_fit_i16());
    let mut seed = 0x1234_5678_9abc_def0u64;
    let a: Vec<u8> = (0..M * K)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let want = expected(&a, 200, M, &b, K, N);
    for k in [kernel, kernel.without_fast_path(), kernel.fast_path().unwrap(), tiny(kernel)] {
        assert_eq!(run(&k, &a, 200, M, &packed), want, "{}", k.name());
    }
}

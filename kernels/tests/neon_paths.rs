//! The ARMv8.0 NEON kernel's two paths at the boundary where the driver switches
//! between them: the fast path (`smull` + `smlal2`, two products per i16 lane) exact
//! whenever no weight is −128 and wrong when one is, and the driver taking the exact
//! path (`smull` + `smull2`) wherever a −128 weight appears.
#![cfg(target_arch = "aarch64")]

mod common;

use common::Rng;
use qgemm_kernels::aarch64::neon;
use qgemm_kernels::driver::{GemmArgs, gemm};
use qgemm_kernels::output::{OutData, OutView, OutputStage};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::rows::Rows;
use qgemm_kernels::{Blocking, Kernel};
use qgemm_reference as reference;

const M: usize = 9;
const K: usize = 45; // two groups of 16 and a tail of 13
const N: usize = 11;

fn neon_kernel() -> Kernel {
    *neon::kernel().expect("NEON is part of every AArch64 CPU this crate targets")
}

/// Tiny blocks, so that a problem spans many blocks.
fn tiny(kernel: Kernel) -> Kernel {
    let t = kernel.tile();
    kernel.with_blocking(Blocking { mc: t.mr, kc: t.k_step(), nc: t.nr })
}

/// `Σ_k (a − a_zp)·b` as i32, from `kernel` through the driver.
fn run(kernel: &Kernel, a: &[u8], a_zp: u8, b: &PackedB) -> Vec<i32> {
    let mut out = vec![0i32; M * N];
    let args = GemmArgs {
        m: M,
        a: Rows::Matrix { data: a, stride: K },
        a_zp,
        b,
        stage: OutputStage { bias: None, requant: None },
        columns: 0..N,
        out: OutData::I32(OutView::new(&mut out, M, N, N)),
    };
    gemm(kernel, args);
    out
}

fn expected(a: &[u8], a_zp: u8, b_kxn: &[i8]) -> Vec<i32> {
    let zp = reference::Channelwise::PerTensor(0);
    reference::gemm_accumulators(&reference::GemmProblem {
        m: M,
        n: N,
        k: K,
        a,
        a_row_stride: K,
        a_zero_point: a_zp,
        b: b_kxn,
        b_layout: reference::WeightLayout::KxN,
        b_zero_point: &zp,
    })
}

fn pack(b: &[i8]) -> PackedB {
    PackedB::try_new(neon_kernel().tile(), b, BLayout::KxN, K, N, &[0]).unwrap()
}

/// Weights cycling through `values`, shifted per column.
fn weights(values: &[i8]) -> Vec<i8> {
    (0..K * N).map(|i| values[(i / N + i % N) % values.len()]).collect()
}

#[test]
fn fast_path_is_exact_up_to_its_bound() {
    let kernel = neon_kernel();
    let fast = kernel.fast_path().expect("the NEON kernel has a fast path");
    // A = 0 flips to −128: (−128)·(−127) · 2 = 32512, the largest pair sum that fits.
    for values in [&[-127i8][..], &[127], &[-127, 127, -127, -127, 0, 1]] {
        let b = weights(values);
        let packed = pack(&b);
        assert!(packed.excludes_i8_min());
        for a_value in [0u8, 255, 1, 128] {
            let a = vec![a_value; M * K];
            assert_eq!(run(&fast, &a, 0, &packed), expected(&a, 0, &b), "a = {a_value}, b = {values:?}");
        }
    }
}

#[test]
fn fast_path_wraps_past_its_bound() {
    // Why the driver checks: A = 0 flips to −128, and (−128)·(−128) · 2 = 32768 does
    // not fit in an i16 lane.
    let kernel = neon_kernel();
    let fast = kernel.fast_path().unwrap();
    let b = weights(&[-128]);
    let a = vec![0u8; M * K];
    assert_ne!(run(&fast, &a, 0, &pack(&b)), expected(&a, 0, &b));
}

#[test]
fn driver_takes_the_exact_path_where_a_weight_is_min() {
    let kernel = neon_kernel();
    let fast = kernel.fast_path().unwrap();
    // One column with −128 at k and k + 8 of one 16-group: the two products `smlal2`
    // adds into one i16 lane. Against A = 0 (flipped −128) they sum to 32768, so the
    // fast path goes wrong on exactly this data; the driver must not take it.
    for (kk, nn) in [(0, 0), (19, N / 2), (36, N - 1)] {
        let mut b = weights(&[-127, -127, 127]);
        b[kk * N + nn] = -128;
        b[(kk + 8) * N + nn] = -128;
        let packed = pack(&b);
        assert!(!packed.excludes_i8_min());
        let mut a = vec![0u8; M * K];
        a[(kk + 1) % (M * K)] = 255;
        let want = expected(&a, 0, &b);
        assert_ne!(run(&fast, &a, 0, &packed), want, "the data must break the fast path");
        for k in [kernel, tiny(kernel)] {
            assert_eq!(run(&k, &a, 0, &packed), want, "{} −128 pair at k {kk}, column {nn}", k.name());
        }
    }
}

#[test]
fn every_path_is_exact_on_data_both_could_take() {
    let kernel = neon_kernel();
    let mut rng = Rng(0x5eed_0a0c_4a1d_0007);
    let b: Vec<i8> = (0..K * N).map(|_| (rng.below(255) as i32 - 127) as i8).collect();
    let packed = pack(&b);
    assert!(packed.excludes_i8_min());
    let a: Vec<u8> = (0..M * K).map(|_| rng.next() as u8).collect();
    for a_zp in [0, 128, 255] {
        let want = expected(&a, a_zp, &b);
        for k in [kernel, kernel.without_fast_path(), kernel.fast_path().unwrap(), tiny(kernel)] {
            assert_eq!(run(&k, &a, a_zp, &packed), want, "{} a_zp {a_zp}", k.name());
        }
    }
}

//! Every kernel wraps its i32 sums inside a single block, as the reference does.
//!
//! The driver splits K into blocks of at most `kc` (512 or less) and adds the blocks'
//! sums with a wrapping add, so through the usual blockings no tile ever sums more than
//! 512 · 255 · 128 ≈ 2^24, and a kernel that saturated its lanes (`vpdpbusds` instead
//! of `vpdpbusd`, say) would pass every other suite. Here each kernel runs with one K
//! block of 70 000, on data whose sums leave i32 within the block in both directions.

mod common;

use common::gemm_kernels;
use qgemm_kernels::driver::{GemmArgs, gemm};
use qgemm_kernels::output::{OutData, OutView, OutputStage};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::rows::Rows;
use qgemm_kernels::{Blocking, Kernel};
use qgemm_reference as reference;

const K: usize = 70_000; // 255 · 128 · K > 2^31: the sums wrap

fn accumulators(kernel: &Kernel, a: &[u8], m: usize, b_kxn: &[i8], n: usize) -> Vec<i32> {
    let b = PackedB::try_new(kernel.tile(), b_kxn, BLayout::KxN, K, n, &[0]).unwrap();
    let mut out = vec![0i32; m * n];
    let args = GemmArgs {
        m,
        a: Rows::Matrix { data: a, stride: K },
        a_zp: 0,
        b: &b,
        stage: OutputStage { bias: None, requant: None },
        columns: 0..n,
        out: OutData::I32(OutView::new(&mut out, m, n, n)),
    };
    gemm(kernel, args);
    out
}

#[test]
fn sums_wrap_within_one_k_block() {
    for kernel in gemm_kernels() {
        let t = kernel.tile();
        // One tile and one K block: the whole sum stays in the tile's registers.
        let one_block = kernel.with_blocking(Blocking { mc: t.mr, kc: K.div_ceil(t.k_step()) * t.k_step(), nc: t.nr });
        let (m, n) = (t.mr, t.nr);
        // Activations 255 in every row; weights −128 in even columns (the sum falls
        // below i32::MIN) and 127 in odd ones (above i32::MAX at 70 000 · 255 · 127).
        let a = vec![255u8; m * K];
        let b: Vec<i8> = (0..K * n).map(|i| if i % n % 2 == 0 { -128 } else { 127 }).collect();
        let zp = reference::Channelwise::PerTensor(0);
        let want = reference::gemm_accumulators(&reference::GemmProblem {
            m,
            n,
            k: K,
            a: &a,
            a_row_stride: K,
            a_zero_point: 0,
            b: &b,
            b_layout: reference::WeightLayout::KxN,
            b_zero_point: &zp,
        });
        assert!(want[0] > 0 && want[1] < 0, "the reference's sums wrapped");
        let got = accumulators(&one_block, &a, m, &b, n);
        assert!(
            got == want,
            "{}: sums differ from the wrapping reference: {:?} vs {:?}",
            kernel.name(),
            &got[..2],
            &want[..2]
        );
        println!("{}: K = {K} in one block, sums wrapped as the reference's", kernel.name());
    }
}

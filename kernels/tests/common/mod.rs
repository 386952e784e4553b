//! What the kernel-level tests share.

use qgemm_kernels::driver::{GemmArgs, gemm};
use qgemm_kernels::output::{OutData, OutView, OutputStage, Param, Requant, Rounding, Scheme};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::rows::Rows;
use qgemm_kernels::{Blocking, Kernel, portable};
use qgemm_reference as reference;

/// xorshift64*: deterministic data without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[allow(dead_code)] // not every test file draws bounded values
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every GEMM kernel this CPU runs, with its own blocking (those with a fast path also
/// without it), and the AMX tier's loop nest on the scalar model of the tiles
/// (`32x32c4-amx-model`), which runs everywhere: natively, that is; under miri, where
/// each of its `tdpbusd` costs seconds, `amx_model.rs` runs it on one product instead.
#[allow(dead_code)] // not every test file runs every kernel
pub fn gemm_kernels() -> Vec<Kernel> {
    #[allow(unused_mut)]
    let mut kernels = vec![*portable::kernel()];
    if !cfg!(miri) {
        kernels.push(*qgemm_kernels::amx::model_kernel());
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = qgemm_kernels::x86_64::avx2::kernel() {
        kernels.extend([*avx2, avx2.without_fast_path()]);
    }
    #[cfg(target_arch = "x86_64")]
    {
        use qgemm_kernels::x86_64::{avx_vnni, avx512_vnni};
        kernels.extend(avx_vnni::kernel().copied());
        kernels.extend(avx512_vnni::kernel().copied());
        kernels.extend(avx512_vnni::wide_kernel().copied());
        kernels.extend(avx512_vnni::narrow_kernel().copied());
        kernels.extend(qgemm_kernels::x86_64::amx_int8::kernel().copied());
    }
    #[cfg(target_arch = "aarch64")]
    {
        use qgemm_kernels::aarch64::{neon, neon_dotprod, neon_i8mm};
        if let Some(neon) = neon::kernel() {
            kernels.extend([*neon, neon.without_fast_path()]);
        }
        kernels.extend(neon_dotprod::kernel().copied());
        kernels.extend(neon_i8mm::kernel().copied());
    }
    kernels
}

/// [`gemm_kernels`], each with its own blocking and two tiny ones, so that small
/// problems cross every block boundary.
#[allow(dead_code)] // not every test file runs the blocked loop nest
pub fn blocked_kernels() -> Vec<Kernel> {
    gemm_kernels()
        .into_iter()
        .flat_map(|base| {
            let t = base.tile();
            [
                base,
                base.with_blocking(Blocking { mc: t.mr, kc: t.k_step(), nc: t.nr }),
                base.with_blocking(Blocking { mc: 2 * t.mr, kc: 3 * t.k_step(), nc: 2 * t.nr }),
            ]
        })
        .collect()
}

/// A GEMM problem: `m × k` activations at `stride`, and the `k × n` weights `b`
/// (in `layout`) with their zero points (one, or one per column) as `packed` holds
/// them.
#[allow(dead_code)]
pub struct Problem<'p> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: &'p [u8],
    pub stride: usize,
    pub a_zp: u8,
    pub b: &'p [i8],
    pub layout: BLayout,
    pub b_zp: &'p [i8],
    pub packed: &'p PackedB,
}

/// Runs `kernel` on `p` twice, into i32 with `bias` and into u8 through a fixed-point
/// stage whose shift is `shift`, and compares each output with the reference's.
#[allow(dead_code)]
pub fn check_against_reference(kernel: &Kernel, p: &Problem<'_>, bias: &[i32], shift: i32) {
    let Problem { m, n, k, a, stride, a_zp, b, layout, b_zp, packed } = *p;
    let ref_zp = match b_zp {
        [zp] if n != 1 => reference::Channelwise::PerTensor(*zp),
        _ => reference::Channelwise::PerChannel(b_zp.to_vec()),
    };
    let problem = reference::GemmProblem {
        m,
        n,
        k,
        a,
        a_row_stride: stride,
        a_zero_point: a_zp,
        b,
        b_layout: match layout {
            BLayout::KxN => reference::WeightLayout::KxN,
            BLayout::NxK => reference::WeightLayout::NxK,
        },
        b_zero_point: &ref_zp,
    };
    let label = format!("{} m={m} n={n} k={k} {layout:?} zero points {}", kernel.name(), b_zp.len());
    let run = |stage: OutputStage<'_>, out: OutData<'_>| {
        let args = GemmArgs { m, a: Rows::Matrix { data: a, stride }, a_zp, b: packed, stage, columns: 0..n, out };
        gemm(kernel, args);
    };

    // i32 output with bias.
    let mut out = vec![0i32; m * n];
    run(OutputStage { bias: Some(bias), requant: None }, OutData::I32(OutView::new(&mut out, m, n, n)));
    let stage = reference::OutputStage::new(Some(bias.to_vec()), None);
    let expected = reference::gemm(&problem, &stage, reference::OutputType::I32);
    assert_eq!(reference::OutputData::I32(out), expected, "{label}");

    // u8 output, fixed point (the fused stage where the kernel has one).
    let mut out = vec![0u8; m * n];
    let requant = Requant {
        scheme: Scheme::FixedPoint {
            rounding: Rounding::DoubleTiesAway,
            multiplier: Param::Tensor(1 << 30),
            shift: Param::Tensor(shift),
        },
        zero_point: 100,
        min: 3,
        max: 250,
    };
    run(OutputStage { bias: None, requant: Some(requant) }, OutData::U8(OutView::new(&mut out, m, n, n)));
    let stage = reference::OutputStage::requantized(reference::Requantize::from_i32(
        reference::Requantization::FixedPoint(reference::FixedPointParams::new(
            reference::Channelwise::PerTensor(1 << 30),
            reference::Channelwise::PerTensor(shift),
        )),
        100,
        3,
        250,
    ));
    let expected = reference::gemm(&problem, &stage, reference::OutputType::U8);
    assert_eq!(reference::OutputData::U8(out), expected, "{label}");
}

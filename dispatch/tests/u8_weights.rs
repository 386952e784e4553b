//! u8 weights with u8 zero points (MLAS's U8U8): every ISA, both layouts, per-tensor
//! and per-column zero points at both ends, extremes (A = 255 against W = 0 and 255),
//! GEMM and convolution, against accumulators computed here directly from the u8
//! values (`Σ (a − a_zp)(w − w_zp)` in i64, then wrapped), then the reference's
//! output stage.

mod common;

use common::{Rng, run_into};
use qgemm::reference::{self, OutputData};
use qgemm::{
    Activations, Channelwise, Conv2dParams, ConvInput, ConvWeights, OutputStage, OutputType, PackedConvWeights,
    PackedWeights, Requantization, Requantize, WeightLayout, Weights,
};

/// `Σ_k (a − a_zp)(w − w_zp)` for a dense M×K `a` and K×N `w`, wrapped to i32.
fn accumulators(a: &[u8], a_zp: u8, w_kxn: &[u8], zp: &Channelwise<u8>, m: usize, k: usize, n: usize) -> Vec<i32> {
    let mut acc = vec![0i32; m * n];
    for r in 0..m {
        for c in 0..n {
            let sum: i64 = (0..k)
                .map(|kk| {
                    (i64::from(a[r * k + kk]) - i64::from(a_zp)) * (i64::from(w_kxn[kk * n + c]) - i64::from(zp.at(c)))
                })
                .sum();
            acc[r * n + c] = sum as i32;
        }
    }
    acc
}

#[test]
fn u8_weights_equal_the_direct_sums_on_every_isa() {
    let mut rng = Rng::new(0x08u64);
    for (m, n, k) in [(1, 40, 300), (7, 33, 70), (20, 16, 129), (3, 5, 70_000)] {
        for (i, layout) in [WeightLayout::KxN, WeightLayout::NxK].into_iter().enumerate() {
            let extremes = i == 0 && k == 70_000;
            let a: Vec<u8> = (0..m * k).map(|_| if extremes { 255 } else { rng.u8() }).collect();
            let w: Vec<u8> = (0..k * n).map(|j| if extremes { [0, 255][j % 2] } else { rng.u8() }).collect();
            let zp: Channelwise<u8> = match (m + i) % 3 {
                0 => Channelwise::PerTensor(if extremes { 0 } else { 255 }),
                1 => Channelwise::PerTensor(128),
                _ => (0..n).map(|c| [0u8, 255, 7][c % 3]).collect::<Vec<u8>>().into(),
            };
            let a_zp = if extremes { 0 } else { rng.u8() };
            let held: Vec<u8> = match layout {
                WeightLayout::KxN => w.clone(),
                WeightLayout::NxK => (0..n * k).map(|j| w[(j % k) * n + j / k]).collect(),
            };
            let acc = accumulators(&a, a_zp, &w, &zp, m, k, n);
            let bias: Vec<i32> = (0..n).map(|_| rng.next_u64() as i32 >> 8).collect();
            let r = Requantize::u8(Requantization::float(1.0 / 4096.0), 100).with_clamp(3, 250);
            let stages = [
                (OutputType::I32, OutputStage::i32().with_bias(bias.clone())),
                (OutputType::U8, OutputStage::requantized(r).with_bias(bias)),
            ];
            for (out, stage) in stages {
                let expected = reference::apply_output_stage(&acc, n, &stage, out);
                for &isa in qgemm::available_isas() {
                    let weights = Weights::new(&held, layout, k, n).with_zero_point(zp.clone());
                    let packed = PackedWeights::for_isa(isa, weights).unwrap();
                    let options = qgemm::Options::new().with_threads(2);
                    let (got, gaps) = run_into(out, m, n, n + 1, |c| {
                        qgemm::gemm_with(&Activations::new(&a, m, k, a_zp), &packed, &stage, c, &options)
                    });
                    assert!(got == expected && gaps, "{isa}: {m}x{n}x{k} {layout:?} {zp:?} {out:?}");
                }
            }
        }
    }
}

#[test]
fn u8_conv_weights_equal_the_i8_ones_shifted() {
    // A convolution with u8 weights w and zero point z equals one with i8 weights
    // w − 128 and zero point z − 128 (whose exactness every other suite checks),
    // through the reference, on every path.
    let mut rng = Rng::new(0xc08);
    let shapes = [
        Conv2dParams::new([1, 7, 6, 8], 12, [3, 3]).with_padding(1, 1, 1, 1),
        Conv2dParams::new([1, 9, 9, 16], 16, [3, 3]).with_padding(1, 1, 1, 1).with_groups(16),
        Conv2dParams::new([1, 5, 5, 12], 6, [1, 1]).with_groups(3),
    ];
    for p in shapes {
        let len = p.out_channels * p.kernel_height * p.kernel_width * p.in_channels / p.groups;
        let w: Vec<u8> = (0..len).map(|_| rng.u8()).collect();
        let zp: Vec<u8> = (0..p.out_channels).map(|c| [0u8, 255, 128, 3][c % 4]).collect();
        let input: Vec<u8> = (0..p.batch * p.in_height * p.in_width * p.in_channels).map(|_| rng.u8()).collect();
        let shifted: Vec<i8> = w.iter().map(|&x| (i16::from(x) - 128) as i8).collect();
        let shifted_zp: Vec<i8> = zp.iter().map(|&z| (i16::from(z) - 128) as i8).collect();
        let problem = reference::Conv2dProblem {
            params: p,
            input: &input,
            input_zero_point: 9,
            weights: &shifted,
            weight_zero_point: &Channelwise::PerChannel(shifted_zp),
        };
        let expected = reference::conv2d(&problem, &OutputStage::i32(), OutputType::I32);
        let rows = p.batch * p.out_height().unwrap() * p.out_width().unwrap();
        for &isa in qgemm::available_isas() {
            let weights = ConvWeights::new(&w, &p).with_zero_point(zp.clone());
            let packed = PackedConvWeights::for_isa(isa, weights).unwrap();
            let options = qgemm::Options::new().with_isa(isa);
            let (got, _) = run_into(OutputType::I32, rows, p.out_channels, p.out_channels, |c| {
                qgemm::conv2d_with(&ConvInput::new(&input, 9), &packed, &p, &OutputStage::i32(), c, &options)
            });
            assert!(got == expected, "{isa}: {p:?}");
            assert!(matches!(got, OutputData::I32(_)));
        }
    }
}

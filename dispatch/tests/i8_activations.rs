//! i8 activations with an i8 zero point (s8 × s8, as ONNX Runtime and XNNPACK take
//! them): every ISA, strides, thread counts, every output type, zero points at both
//! ends, extremes (A = −128 and 127 against B = −128 and 127) and K = 70,000, against
//! accumulators computed here directly from the i8 values, then the reference's output
//! stage. Also with u8 weights (s8 × u8).

mod common;

use common::{Rng, dequantize_for, run_into};
use qgemm::reference;
use qgemm::{
    Activations, Channelwise, Options, OutputStage, OutputType, PackedWeights, Requantization, Requantize, Weights,
};

/// `Σ_k (a − a_zp)(w − w_zp)` in i64, wrapped to i32; `a` has rows `stride` apart.
fn direct(a: &[i8], stride: usize, a_zp: i8, w: &[i64], w_zp: &[i64], (m, k, n): (usize, usize, usize)) -> Vec<i32> {
    (0..m * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            (0..k).map(|kk| (i64::from(a[r * stride + kk]) - i64::from(a_zp)) * (w[kk * n + c] - w_zp[c])).sum::<i64>()
                as i32
        })
        .collect()
}

#[test]
fn i8_activations_equal_the_direct_sums_on_every_isa() {
    let mut rng = Rng::new(0x5858);
    for (m, n, k, stride_gap) in
        [(1, 40, 300, 0), (7, 33, 70, 5), (40, 16, 129, 0), (65, 70, 520, 3), (2, 5, 70_000, 0)]
    {
        let stride = k + stride_gap;
        let extremes = k == 70_000;
        let a: Vec<i8> = (0..m * stride).map(|i| if extremes { [-128, 127][i % 2] } else { rng.i8() }).collect();
        let a_zp = if extremes { 0 } else { [-128, 127, 0, rng.i8()][m % 4] };
        for unsigned_weights in [false, true] {
            let w: Vec<i64> = (0..k * n)
                .map(|i| match (extremes, unsigned_weights) {
                    (true, false) => [-128, 127][(i / n) % 2],
                    (true, true) => [0, 255][(i / n) % 2],
                    (false, false) => i64::from(rng.i8()),
                    (false, true) => i64::from(rng.u8()),
                })
                .collect();
            let w_zp: Vec<i64> =
                (0..n).map(|c| if unsigned_weights { [0, 255, 128][c % 3] } else { [-128, 127, 0][c % 3] }).collect();
            let acc = direct(&a, stride, a_zp, &w, &w_zp, (m, k, n));
            let bias: Vec<i32> = (0..n).map(|_| rng.next_u64() as i32 >> 6).collect();
            let stages = [
                (OutputType::I32, OutputStage::i32().with_bias(bias.clone())),
                (
                    OutputType::I8,
                    OutputStage::requantized(Requantize::i8(Requantization::float(1.0 / 8192.0), -7))
                        .with_bias(bias.clone()),
                ),
                (
                    OutputType::U8,
                    OutputStage::requantized(Requantize::u8(Requantization::float(3.0e-5), 128).with_relu()),
                ),
                (OutputType::F32, OutputStage::dequantized(dequantize_for(&mut rng, n, true, true))),
            ];
            for (out, stage) in stages {
                let expected = reference::apply_output_stage(&acc, n, &stage, out);
                for &isa in qgemm::available_isas() {
                    let packed = if unsigned_weights {
                        let wu: Vec<u8> = w.iter().map(|&x| x as u8).collect();
                        let zp: Vec<u8> = w_zp.iter().map(|&z| z as u8).collect();
                        PackedWeights::for_isa(isa, Weights::kxn(&wu, k, n).with_zero_point(zp))
                    } else {
                        let wi: Vec<i8> = w.iter().map(|&x| x as i8).collect();
                        let zp: Vec<i8> = w_zp.iter().map(|&z| z as i8).collect();
                        PackedWeights::for_isa(
                            isa,
                            Weights::kxn(&wi, k, n).with_zero_point(Channelwise::PerChannel(zp)),
                        )
                    }
                    .unwrap();
                    for threads in [1, 3] {
                        let acts = Activations::i8(&a, m, k, a_zp).with_row_stride(stride);
                        let options = Options::new().with_threads(threads);
                        let (got, gaps) =
                            run_into(out, m, n, n + 2, |c| qgemm::gemm_with(&acts, &packed, &stage, c, &options));
                        assert!(
                            got == expected && gaps,
                            "{isa}, {threads} threads: {m}x{n}x{k} stride {stride}, a_zp {a_zp}, u8 weights {unsigned_weights}, {out:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn i8_conv_input_equals_the_reference_on_every_path() {
    // i8 input x with zero point z is the u8 input x + 128 with zero point z + 128: the
    // reference on that form is the oracle. Every shape runs the GEMMs (pointwise or
    // im2col), never the depthwise kernels or the in-place indirect path.
    use common::ConvCase;
    use qgemm::{Conv2dParams, Conv2dTasks, ConvInput, ConvPath, OutputMatrix, Partition, Workspace};
    let mut rng = Rng::new(0xc58);
    let shapes = [
        Conv2dParams::new([1, 7, 6, 8], 12, [3, 3]).with_padding(1, 1, 1, 1),
        Conv2dParams::new([2, 5, 6, 16], 24, [1, 1]),
        Conv2dParams::new([1, 9, 8, 8], 12, [1, 1]).with_stride(2, 2).with_padding(1, 0, 0, 1),
        Conv2dParams::new([1, 9, 9, 16], 16, [3, 3]).with_padding(1, 1, 1, 1).with_groups(16),
        Conv2dParams::new([1, 8, 7, 12], 6, [3, 2]).with_dilation(2, 1).with_groups(3),
    ];
    for params in shapes {
        let mut case = ConvCase::random(&mut rng, params);
        case.out = OutputType::I8;
        let all = common::schemes(&mut rng, params.out_channels, true, 100);
        let scheme = all[rng.below(all.len())].clone();
        case.stage.requantize = Some(common::requantize_for(&mut rng, scheme, OutputType::I8));
        let expected = case.expected();
        let signed: Vec<i8> = case.input.iter().map(|&x| (x ^ 0x80) as i8).collect();
        let zp = (case.input_zp ^ 0x80) as i8;
        let rows = params.batch * params.out_height().unwrap() * params.out_width().unwrap();
        let oc = params.out_channels;
        for &isa in qgemm::available_isas() {
            let packed = case.packed(isa);
            let input = ConvInput::i8(&signed, zp);
            for threads in [1, 3] {
                let options = Options::new().with_threads(threads).with_isa(isa);
                let (got, gaps) = run_into(OutputType::I8, rows, oc, oc + 1, |c| {
                    qgemm::conv2d_in(&input, &packed, &params, &case.stage, c, &options, &mut Workspace::new())
                });
                assert!(got == expected && gaps, "{isa}, {threads} threads: {params:?}");
            }
            let mut out = vec![0i8; rows * oc];
            let partition = Partition::auto(1);
            let tasks = Conv2dTasks::new(
                &input,
                &packed,
                &params,
                &case.stage,
                OutputMatrix::i8(&mut out, rows, oc),
                &partition,
            )
            .unwrap();
            assert!(matches!(tasks.path(), ConvPath::Im2col | ConvPath::Pointwise), "{isa}: {:?}", tasks.path());
        }
    }
}

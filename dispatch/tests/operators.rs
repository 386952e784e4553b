//! The operators (`Linear`, `Conv2d`): created once, run many times, on every ISA,
//! against the reference byte for byte; reshaped; shared by threads; and their errors,
//! at creation and at each run, leave the output untouched.

mod common;

use common::{ConvCase, GemmCase, Rng, requantize_for, run_into, schemes};
use qgemm::reference::{self, Conv2dProblem};
use qgemm::{
    Conv2d, Conv2dParams, ErrorKind, Linear, Options, OutputMatrix, OutputStage, OutputType, PackedConvWeights,
    PackedWeights, WeightLayout, Weights, Workspace,
};

#[test]
fn operators_and_packed_weights_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Linear>();
    send_sync::<Conv2d>();
    send_sync::<PackedWeights>();
    send_sync::<PackedConvWeights>();
    fn send<T: Send>() {}
    send::<Workspace>();
}

fn linear_for(case: &GemmCase, isa: qgemm::Isa) -> qgemm::Result<Linear> {
    let weights = Weights::new(&case.b, case.layout, case.k, case.n).with_zero_point(case.b_zp.clone());
    Linear::new(PackedWeights::for_isa(isa, weights)?, case.a_zp, case.stage.clone(), case.out)
}

#[test]
fn linear_equals_the_reference_on_every_isa() {
    let mut rng = Rng::new(0x11ea4);
    let mut workspace = Workspace::new();
    for (m, n, k) in [(1, 17, 33), (7, 40, 70), (33, 9, 260), (64, 64, 64)] {
        for out in [OutputType::U8, OutputType::I8, OutputType::I32] {
            let mut case = GemmCase::random(&mut rng, m, n, k).with_layout(WeightLayout::NxK);
            case.stage.bias = Some((0..n).map(|_| rng.next_u64() as i32 >> 12).collect());
            if out != OutputType::I32 {
                let all = schemes(&mut rng, n, true, k);
                let scheme = all[rng.below(all.len())].clone();
                case = case.with_output(out, Some(requantize_for(&mut rng, scheme, out)));
            }
            let expected = case.expected();
            for &isa in qgemm::available_isas() {
                for threads in [1, 3] {
                    let linear = linear_for(&case, isa).unwrap();
                    let linear = linear.with_options(Options::new().with_threads(threads)).unwrap();
                    assert_eq!((linear.in_features(), linear.out_features()), (k, n));
                    let (got, gaps) = run_into(out, m, n, n + 3, |c| linear.run(&case.a, m, c, &mut workspace));
                    assert_eq!(got, expected, "{isa}, {threads} threads: {m}x{n}x{k} {out:?}");
                    assert!(gaps);
                }
            }
        }
    }
}

#[test]
fn one_linear_serves_several_threads_at_once() {
    let mut rng = Rng::new(0x5a4ed);
    let (m, n, k) = (24, 48, 200);
    let all = schemes(&mut rng, n, false, k);
    let scheme = all[rng.below(all.len())].clone();
    let requantize = requantize_for(&mut rng, scheme, OutputType::U8);
    let case = GemmCase::random(&mut rng, m, n, k).with_output(OutputType::U8, Some(requantize));
    let expected = case.expected();
    let linear = linear_for(&case, qgemm::selected_isa().unwrap()).unwrap();
    std::thread::scope(|s| {
        for t in 0..3 {
            let (linear, case, expected) = (&linear, &case, &expected);
            s.spawn(move || {
                let mut workspace = Workspace::new();
                for _ in 0..20 {
                    let (got, _) = run_into(OutputType::U8, m, n, n, |c| linear.run(&case.a, m, c, &mut workspace));
                    assert_eq!(&got, expected, "thread {t}");
                }
            });
        }
    });
}

#[test]
fn linear_errors_at_creation_and_at_each_run() {
    let b = [1i8; 6];
    let packed = || PackedWeights::new(Weights::kxn(&b, 2, 3)).unwrap();
    // Creation checks the stage against N and the output type.
    let e = Linear::new(packed(), 0u8, OutputStage::i32().with_bias([1, 2]), OutputType::I32).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BufferLength, "{e}");
    let e = Linear::new(packed(), 0u8, OutputStage::i32(), OutputType::U8).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutputType, "{e}");
    let e = Linear::new(packed(), 0u8, OutputStage::i32(), OutputType::I32)
        .unwrap()
        .with_options(Options::new().with_threads(0))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Threads, "{e}");
    // Each run checks the input length and the output's type and shape.
    let linear = Linear::new(packed(), 0u8, OutputStage::i32(), OutputType::I32).unwrap();
    let mut ws = Workspace::new();
    let mut c = [7i32; 6];
    let e = linear.run(&[1; 5], 2, OutputMatrix::i32(&mut c, 2, 3), &mut ws).unwrap_err();
    assert!(e.kind() == ErrorKind::BufferLength && e.to_string().contains("in_features = 2"), "{e}");
    let e = linear.run(&[1; 4], 2, OutputMatrix::i32(&mut c, 2, 2), &mut ws).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WeightsMismatch, "{e}");
    assert_eq!(c, [7; 6], "nothing written on error");
    let mut c8 = [7u8; 6];
    let e = linear.run(&[1; 4], 2, OutputMatrix::u8(&mut c8, 2, 3), &mut ws).unwrap_err();
    assert!(e.kind() == ErrorKind::OutputType && e.to_string().contains("produces i32 output"), "{e}");
    assert_eq!(c8, [7; 6]);
    linear.run(&[1; 4], 2, OutputMatrix::i32(&mut c, 2, 3), &mut ws).unwrap();
    assert_eq!(c, [2; 6]);
}

fn conv_expected(case: &ConvCase, params: Conv2dParams, input: &[u8]) -> reference::OutputData {
    let problem = Conv2dProblem {
        params,
        input,
        input_zero_point: case.input_zp,
        weights: &case.weights,
        weight_zero_point: &case.weight_zp,
    };
    reference::conv2d(&problem, &case.stage, case.out)
}

#[test]
fn conv2d_equals_the_reference_on_every_isa_and_after_reshaping() {
    let mut rng = Rng::new(0xc0a7);
    let shapes = [
        Conv2dParams::new([1, 7, 6, 8], 12, [3, 3]).with_padding(1, 1, 1, 1),
        Conv2dParams::new([1, 9, 8, 16], 16, [3, 3]).with_stride(2, 2).with_padding(1, 1, 1, 1).with_groups(16),
        Conv2dParams::new([1, 5, 5, 12], 6, [1, 1]).with_groups(3),
        Conv2dParams::new([2, 4, 5, 9], 7, [2, 3]).with_dilation(1, 2).with_padding(0, 2, 1, 2),
    ];
    let mut workspace = Workspace::new();
    for params in shapes {
        let mut case = ConvCase::random(&mut rng, params);
        let oc = params.out_channels;
        case.stage.bias = Some((0..oc).map(|_| rng.next_u64() as i32 >> 10).collect());
        case.out = OutputType::U8;
        let all = schemes(&mut rng, oc, true, 100);
        let scheme = all[rng.below(all.len())].clone();
        case.stage.requantize = Some(requantize_for(&mut rng, scheme, OutputType::U8));
        for &isa in qgemm::available_isas() {
            let mut conv = Conv2d::new(case.packed(isa), params, case.input_zp, case.stage.clone(), case.out)
                .unwrap()
                .with_options(Options::new().with_threads(2))
                .unwrap();
            for (batch, h, w) in [(params.batch, params.in_height, params.in_width), (3, 11, 6), (1, 3, 4)] {
                conv.reshape(batch, h, w).unwrap();
                let p = *conv.params();
                let input: Vec<u8> = (0..batch * h * w * p.in_channels).map(|_| rng.u8()).collect();
                let [n, oh, ow, c] = conv.output_shape();
                assert_eq!([n, oh, ow, c], [batch, p.out_height().unwrap(), p.out_width().unwrap(), oc]);
                let rows = n * oh * ow;
                let (got, gaps) = run_into(case.out, rows, oc, oc + 1, |o| conv.run(&input, o, &mut workspace));
                assert_eq!(got, conv_expected(&case, p, &input), "{isa}: {p:?}");
                assert!(gaps);
            }
        }
    }
}

#[test]
fn conv2d_errors_at_creation_reshape_and_run() {
    let params = Conv2dParams::new([1, 5, 5, 4], 2, [3, 3]);
    let w = vec![1i8; 2 * 9 * 4];
    let packed = || PackedConvWeights::new(qgemm::ConvWeights::new(&w, &params)).unwrap();
    let e = Conv2d::new(packed(), params.with_groups(2), 0u8, OutputStage::i32(), OutputType::I32).unwrap_err();
    assert!(e.kind() == ErrorKind::WeightsMismatch && e.to_string().contains("groups = 2"), "{e}");
    let e = Conv2d::new(packed(), params, 0u8, OutputStage::i32().with_bias([1, 2, 3]), OutputType::I32).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BufferLength, "{e}");
    let mut conv = Conv2d::new(packed(), params, 0u8, OutputStage::i32(), OutputType::I32).unwrap();
    // A 3×3 kernel does not fit a 2×2 image: the operator keeps its shape.
    let e = conv.reshape(1, 2, 2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConvOutputSize, "{e}");
    assert_eq!(conv.output_shape(), [1, 3, 3, 2]);
    let mut ws = Workspace::new();
    let mut out = [9i32; 18];
    let e = conv.run(&[1; 99], OutputMatrix::i32(&mut out, 9, 2), &mut ws).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BufferLength, "{e}");
    let mut out8 = [9u8; 18];
    let e = conv.run(&[1; 100], OutputMatrix::u8(&mut out8, 9, 2), &mut ws).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutputType, "{e}");
    assert_eq!((out, out8), ([9; 18], [9; 18]), "nothing written on error");
    conv.run(&[1; 100], OutputMatrix::i32(&mut out, 9, 2), &mut ws).unwrap();
    assert_eq!(out, [36; 18]);
}

#[test]
fn a_linear_layer_on_i8_input() {
    // i8 inputs x with zero point z give the same bytes as u8 inputs x + 128 with zero
    // point z + 128, on every ISA; checked against the reference on the u8 form.
    let mut rng = Rng::new(0x1158);
    let (m, n, k) = (9, 24, 100);
    let all = schemes(&mut rng, n, true, k);
    let scheme = all[rng.below(all.len())].clone();
    let r = requantize_for(&mut rng, scheme, OutputType::I8);
    let case = GemmCase::random(&mut rng, m, n, k).with_output(OutputType::I8, Some(r));
    let expected = case.expected();
    let signed: Vec<i8> = case.a.iter().map(|&x| (x ^ 0x80) as i8).collect();
    let zp = (case.a_zp ^ 0x80) as i8;
    send_sync_i8();
    for &isa in qgemm::available_isas() {
        let weights = Weights::new(&case.b, case.layout, k, n).with_zero_point(case.b_zp.clone());
        let linear: Linear<i8> =
            Linear::new(PackedWeights::for_isa(isa, weights).unwrap(), zp, case.stage.clone(), OutputType::I8).unwrap();
        assert_eq!(linear.input_zero_point(), zp);
        let (got, _) = run_into(OutputType::I8, m, n, n, |c| linear.run(&signed, m, c, &mut Workspace::new()));
        assert_eq!(got, expected, "{isa}");
    }
}

fn send_sync_i8() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Linear<i8>>();
}

#[test]
fn a_conv_operator_on_i8_input() {
    let mut rng = Rng::new(0xc0a8);
    let params = Conv2dParams::new([1, 7, 6, 8], 12, [3, 3]).with_padding(1, 1, 1, 1);
    let case = ConvCase::random(&mut rng, params);
    let expected = case.expected();
    let signed: Vec<i8> = case.input.iter().map(|&x| (x ^ 0x80) as i8).collect();
    let zp = (case.input_zp ^ 0x80) as i8;
    for &isa in qgemm::available_isas() {
        let conv: Conv2d<i8> = Conv2d::new(case.packed(isa), params, zp, case.stage.clone(), case.out).unwrap();
        let [n, oh, ow, oc] = conv.output_shape();
        let (got, _) = run_into(case.out, n * oh * ow, oc, oc, |o| conv.run(&signed, o, &mut Workspace::new()));
        assert_eq!(got, expected, "{isa}");
    }
}

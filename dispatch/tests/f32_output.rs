//! f32 output (`OutputStage::dequantized`): `f32(acc)·scale[n] + bias[n]` on every ISA,
//! every GEMM and convolution path and thread count, equal to the reference bit for
//! bit (signed zeros, subnormals and infinities included), and its errors.

mod common;

use common::{ConvCase, GemmCase, Rng, dequantize_for, first_mismatch};
use qgemm::{
    Activations, Conv2dParams, Dequantize, ErrorKind, OutputMatrix, OutputStage, OutputType, PackedWeights, Weights,
};

#[test]
fn gemm_f32_output_equals_the_reference_on_every_isa() {
    let mut rng = Rng::new(0xf32);
    for (m, n, k) in [(1, 37, 300), (9, 16, 5), (33, 70, 129), (64, 48, 1000), (5, 3, 0)] {
        for (per_channel, f32_bias, i32_bias) in [(false, false, false), (true, true, false), (true, false, true)] {
            let mut case = GemmCase::random(&mut rng, m, n, k).with_output(OutputType::F32, None);
            case.stage.dequantize = Some(dequantize_for(&mut rng, n, per_channel, f32_bias));
            if i32_bias {
                case.stage.bias = Some((0..n).map(|_| rng.next_u64() as i32).collect());
            }
            case.out_stride = n + 2;
            case.check(&format!("f32 {m}x{n}x{k}"));
        }
    }
}

#[test]
fn extreme_accumulators_and_every_conv_path_in_f32() {
    let mut rng = Rng::new(0xe47);
    // A = 255 against B = −128 with K = 70,000: the accumulators wrap, and the f32
    // conversion rounds values far past 2^24.
    let (m, n, k) = (3, 20, 70_000);
    let mut case = GemmCase::random(&mut rng, m, n, k).with_output(OutputType::F32, None);
    case.a.fill(255);
    case.a_zp = 0;
    case.b.iter_mut().enumerate().for_each(|(i, b)| *b = if i % 3 == 0 { 127 } else { -128 });
    case.b_zp = qgemm::Channelwise::PerTensor(0);
    case.stage.dequantize = Some(Dequantize::new(0.75f32).with_bias(vec![0.5; n]));
    case.check("extreme f32");

    let shapes = [
        Conv2dParams::new([1, 9, 8, 16], 24, [3, 3]).with_padding(1, 1, 1, 1),
        Conv2dParams::new([1, 7, 9, 24], 40, [1, 1]),
        Conv2dParams::new([2, 6, 5, 8], 12, [1, 1]).with_stride(2, 2),
        Conv2dParams::new([1, 9, 9, 32], 32, [3, 3]).with_padding(1, 1, 1, 1).with_groups(32),
        Conv2dParams::new([1, 8, 7, 12], 6, [3, 2]).with_groups(3),
    ];
    for params in shapes {
        let mut case = ConvCase::random(&mut rng, params);
        case.out = OutputType::F32;
        case.stage.dequantize = Some(dequantize_for(&mut rng, params.out_channels, true, true));
        case.check(&format!("f32 conv {params:?}"));
    }
}

#[test]
fn the_linear_operator_writes_f32() {
    let mut rng = Rng::new(0x11f3);
    let (m, n, k) = (6, 10, 40);
    let mut case = GemmCase::random(&mut rng, m, n, k).with_output(OutputType::F32, None);
    case.stage.dequantize = Some(dequantize_for(&mut rng, n, true, true));
    let expected = case.expected();
    let packed = PackedWeights::new(Weights::kxn(&case.b, k, n).with_zero_point(case.b_zp.clone())).unwrap();
    let linear = qgemm::Linear::new(packed, case.a_zp, case.stage.clone(), OutputType::F32).unwrap();
    let (got, gaps) =
        common::run_into(OutputType::F32, m, n, n, |c| linear.run(&case.a, m, c, &mut qgemm::Workspace::new()));
    assert!(got == expected && gaps, "{}", first_mismatch(&got, &expected, n));
}

#[test]
fn f32_output_errors() {
    let b = [1i8; 6];
    let packed = PackedWeights::new(Weights::kxn(&b, 2, 3)).unwrap();
    let a = [1u8; 4];
    let mut c = [7.0f32; 6];
    let run = |stage: &OutputStage, c: &mut [f32]| {
        qgemm::gemm(&Activations::new(&a, 2, 2, 0), &packed, stage, OutputMatrix::f32(c, 2, 3)).unwrap_err()
    };
    let e = run(&OutputStage::i32(), &mut c);
    assert!(e.kind() == ErrorKind::OutputType && e.to_string().contains("does not dequantize"), "{e}");
    let e = run(&OutputStage::dequantized(Dequantize::new(f32::NAN)), &mut c);
    assert!(e.kind() == ErrorKind::Scale && e.to_string().contains("dequantize.scale[0] = NaN"), "{e}");
    let e = run(&OutputStage::dequantized(Dequantize::new(1.0f32).with_bias(vec![0.0; 2])), &mut c);
    assert_eq!(e.kind(), ErrorKind::BufferLength, "{e}");
    let e = run(&OutputStage::dequantized(Dequantize::new(1.0f32).with_bias(vec![0.0, f32::INFINITY, 0.0])), &mut c);
    assert!(e.kind() == ErrorKind::Scale && e.to_string().contains("dequantize.bias[1] = inf"), "{e}");
    assert_eq!(c, [7.0; 6], "nothing written on error");
    // A dequantizing stage with u8 output, and a requantizing one with f32 output.
    let mut c8 = [0u8; 6];
    let stage = OutputStage::dequantized(Dequantize::new(1.0f32));
    let e = qgemm::gemm(&Activations::new(&a, 2, 2, 0), &packed, &stage, OutputMatrix::u8(&mut c8, 2, 3)).unwrap_err();
    assert!(e.kind() == ErrorKind::OutputType && e.to_string().contains("dequantizes to f32"), "{e}");
    let r = qgemm::Requantize::u8(qgemm::Requantization::float(1.0), 0);
    let e = run(&OutputStage::requantized(r), &mut c);
    assert_eq!(e.kind(), ErrorKind::OutputType, "{e}");
}

#[test]
fn an_operator_checks_its_dequantization_at_creation() {
    let packed = PackedWeights::new(Weights::kxn(&[1i8; 6], 2, 3)).unwrap();
    let stage = OutputStage::dequantized(Dequantize::new(vec![1.0f32, f32::NAN, 1.0]));
    let e = qgemm::Linear::new(packed, 0u8, stage, OutputType::F32).unwrap_err();
    assert!(e.kind() == ErrorKind::Scale && e.to_string().contains("dequantize.scale[1] = NaN"), "{e}");
}

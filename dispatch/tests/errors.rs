//! Every invalid argument is an `Err` of the right kind, with a message naming the
//! parameter and its value, and the output is left untouched.

#![allow(clippy::too_many_arguments)]

use qgemm::{
    Activations, Channelwise, Conv2dParams, ConvInput, ConvWeights, ErrorKind, FixedPointParams, Isa, Options,
    OutputMatrix, OutputStage, PackedConvWeights, PackedWeights, Requantization, Requantize, Weights,
};

const M: usize = 3;
const K: usize = 5;
const N: usize = 4;

fn packed() -> PackedWeights {
    let b = [3i8; K * N];
    PackedWeights::for_isa(Isa::Portable, Weights::kxn(&b, K, N)).unwrap()
}

fn fixed(multiplier: i32, shift: i32) -> Requantization {
    Requantization::FixedPoint(FixedPointParams::new(Channelwise::PerTensor(multiplier), Channelwise::PerTensor(shift)))
}

fn u8_stage(scheme: Requantization, zero_point: i32, min: i32, max: i32) -> OutputStage {
    OutputStage::requantized(Requantize::from_i32(scheme, zero_point, min, max))
}

fn valid_u8_stage() -> OutputStage {
    u8_stage(fixed(1 << 30, -3), 128, 0, 255)
}

/// Runs a u8 GEMM with the given pieces into a sentinel-filled output, and checks that
/// it fails with `kind`, names `needle`, and leaves the output as it was.
fn expect_u8_error(
    kind: ErrorKind,
    needle: &str,
    a: Activations<'_>,
    b: &PackedWeights,
    stage: &OutputStage,
    out_len: usize,
    out_rows: usize,
    out_cols: usize,
    out_stride: usize,
    options: Options,
) {
    let mut out = vec![0xa5u8; out_len];
    let c = OutputMatrix::u8(&mut out, out_rows, out_cols).with_row_stride(out_stride);
    let e = qgemm::gemm_with(&a, b, stage, c, &options).expect_err("invalid call must fail");
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.to_string().contains(needle), "message {e:?} should mention {needle:?}");
    assert!(out.iter().all(|&x| x == 0xa5), "the output was written on error: {e}");
}

fn gemm_error(kind: ErrorKind, needle: &str, stage: &OutputStage) {
    let a = [130u8; M * K];
    expect_u8_error(
        kind,
        needle,
        Activations::new(&a, M, K, 128),
        &packed(),
        stage,
        M * N,
        M,
        N,
        N,
        Options::default(),
    );
}

#[test]
fn a_valid_call_succeeds() {
    // The baseline the error cases below depart from.
    let a = [130u8; M * K];
    let mut out = vec![0u8; M * N];
    qgemm::gemm(&Activations::new(&a, M, K, 128), &packed(), &valid_u8_stage(), OutputMatrix::u8(&mut out, M, N))
        .unwrap();
    // Σ 2·3 over K = 5 is 30; 30·2^-4 rounds to 2; + 128.
    assert_eq!(out, vec![130u8; M * N]);
}

#[test]
fn wrong_dimensions() {
    let b = packed();
    let a = [0u8; 4 * 6];
    let stage = valid_u8_stage();
    // A's K differs from the weights'.
    expect_u8_error(
        ErrorKind::WeightsMismatch,
        "K = 6",
        Activations::new(&a, 4, 6, 0),
        &b,
        &stage,
        16,
        4,
        N,
        N,
        Options::default(),
    );
    // The output's N differs from the weights'.
    expect_u8_error(
        ErrorKind::WeightsMismatch,
        "N = 5",
        Activations::new(&a, 4, K, 0),
        &b,
        &stage,
        20,
        4,
        5,
        5,
        Options::default(),
    );
    // Row counts disagree.
    expect_u8_error(
        ErrorKind::Dimension,
        "M = 4",
        Activations::new(&a, 4, K, 0),
        &b,
        &stage,
        12,
        3,
        N,
        N,
        Options::default(),
    );
}

#[test]
fn wrong_strides() {
    let b = packed();
    let a = [0u8; 64];
    let stage = valid_u8_stage();
    let short_a = Activations::new(&a, M, K, 0).with_row_stride(K - 1);
    expect_u8_error(ErrorKind::Stride, "row stride 4", short_a, &b, &stage, 64, M, N, N, Options::default());
    let a_ok = Activations::new(&a, M, K, 0);
    expect_u8_error(ErrorKind::Stride, "row stride 3", a_ok, &b, &stage, 64, M, N, N - 1, Options::default());
}

#[test]
fn wrong_buffer_lengths() {
    let b = packed();
    let stage = valid_u8_stage();
    // A one element short, with and without a stride.
    let a = [0u8; M * K - 1];
    expect_u8_error(
        ErrorKind::BufferLength,
        "A:",
        Activations::new(&a, M, K, 0),
        &b,
        &stage,
        12,
        M,
        N,
        N,
        Options::default(),
    );
    let a = [0u8; 2 * 7 + K - 1];
    let strided = Activations::new(&a, M, K, 0).with_row_stride(7);
    expect_u8_error(ErrorKind::BufferLength, "needs 19", strided, &b, &stage, 12, M, N, N, Options::default());
    // Output one element short, dense and strided.
    let a = [0u8; M * K];
    let dense = Activations::new(&a, M, K, 0);
    expect_u8_error(ErrorKind::BufferLength, "output:", dense, &b, &stage, M * N - 1, M, N, N, Options::default());
    expect_u8_error(ErrorKind::BufferLength, "needs 16", dense, &b, &stage, 15, M, N, 6, Options::default());

    // Weights one value short or long.
    for len in [K * N - 1, K * N + 1] {
        let w = vec![0i8; len];
        let e = PackedWeights::new(Weights::nxk(&w, N, K)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BufferLength, "{e}");
        assert!(e.to_string().contains(&format!("{len} values")), "{e}");
    }
    // Per-column zero points, bias and per-channel parameters of the wrong count.
    let w = [0i8; K * N];
    let e = PackedWeights::new(Weights::kxn(&w, K, N).with_zero_point(Channelwise::PerChannel(vec![0; N + 1])))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BufferLength);
    assert!(e.to_string().contains("weight zero_point: 5"), "{e}");

    let mut stage = valid_u8_stage();
    stage.bias = Some(vec![1; N - 1]);
    gemm_error(ErrorKind::BufferLength, "bias: 3", &stage);
    let stage = u8_stage(
        Requantization::FixedPointHalfUp(FixedPointParams::new(
            Channelwise::PerChannel(vec![1 << 30; N + 2]),
            Channelwise::PerTensor(0),
        )),
        0,
        0,
        255,
    );
    gemm_error(ErrorKind::BufferLength, "requantize.multiplier: 6", &stage);
    let stage = u8_stage(Requantization::Float { scale: Channelwise::PerChannel(vec![1.0; N - 1]) }, 0, 0, 255);
    gemm_error(ErrorKind::BufferLength, "requantize.scale: 3", &stage);
}

#[test]
fn size_products_that_overflow() {
    let w = [0i8; 8];
    let e = PackedWeights::new(Weights::kxn(&w, usize::MAX / 2, 3)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overflow, "{e}");
    // K·N fits, but padding N up to the tile does not.
    let e = PackedWeights::new(Weights::kxn(&[] as &[i8], 0, usize::MAX)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overflow, "{e}");

    // K = 0 makes K·N = 0 for any N, but the per-column data of an absurd N cannot be
    // allocated: an error, not an abort. (Miri stops the program at a request it cannot
    // satisfy instead of failing it, so this case runs natively only.)
    if !cfg!(miri) {
        let e = PackedWeights::new(Weights::nxk(&[] as &[i8], 1 << 60, 0)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfMemory, "{e}");
    }

    // A with absurd rows: (rows − 1)·stride overflows.
    let b = packed();
    let a = [0u8; 16];
    let huge = Activations::new(&a, usize::MAX / 2, K, 0).with_row_stride(K);
    let mut out = [0u8; 4];
    let e = qgemm::gemm(&huge, &b, &valid_u8_stage(), OutputMatrix::u8(&mut out, usize::MAX / 2, N)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overflow, "{e}");
    assert_eq!(out, [0; 4]);

    // isize::MAX rows that do not overflow the product still fail on length.
    let huge = Activations::new(&a, isize::MAX as usize / K, K, 0);
    let e =
        qgemm::gemm(&huge, &b, &valid_u8_stage(), OutputMatrix::u8(&mut out, isize::MAX as usize / K, N)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BufferLength, "{e}");

    // A convolution whose input size overflows.
    let params = Conv2dParams::new([usize::MAX / 4, 1 << 20, 1 << 20, 1], 1, [1, 1]);
    let weights = conv_weights_for(&params);
    let e = qgemm::conv2d(
        &ConvInput::new(&[0u8; 4], 0),
        &weights,
        &params,
        &OutputStage::default(),
        OutputMatrix::i32(&mut [0i32; 4], 4, 1),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overflow, "{e}");
}

#[test]
fn multipliers_and_shifts_out_of_range() {
    for m in [1, (1 << 30) - 1, -1, i32::MIN] {
        for scheme in [
            fixed(m, 0),
            Requantization::FixedPointSingleRounding(FixedPointParams::new(
                Channelwise::PerChannel(vec![1 << 30, m, 1 << 30, 1 << 30]),
                Channelwise::PerTensor(0),
            )),
        ] {
            gemm_error(
                ErrorKind::Multiplier,
                &format!("= {m} is neither 0 nor in [2^30, 2^31)"),
                &u8_stage(scheme, 0, 0, 255),
            );
        }
    }
    for s in [31, -32, i32::MAX, i32::MIN] {
        gemm_error(ErrorKind::Shift, &format!("shift[0] = {s}"), &u8_stage(fixed(1 << 30, s), 0, 0, 255));
    }
    let per_channel = Requantization::FixedPointHalfUp(FixedPointParams::new(
        Channelwise::PerTensor(1 << 30),
        Channelwise::PerChannel(vec![0, 0, 0, 40]),
    ));
    gemm_error(ErrorKind::Shift, "shift[3] = 40", &u8_stage(per_channel, 0, 0, 255));
}

#[test]
fn scales_that_are_not_finite_and_positive() {
    for s in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, -1.0] {
        let stage = u8_stage(Requantization::Float { scale: Channelwise::PerTensor(s) }, 0, 0, 255);
        gemm_error(ErrorKind::Scale, &format!("scale[0] = {s}"), &stage);
        let stage =
            u8_stage(Requantization::Float { scale: Channelwise::PerChannel(vec![1.0, 1.0, s, 1.0]) }, 0, 0, 255);
        gemm_error(ErrorKind::Scale, "scale[2]", &stage);
    }
    for real in [f64::NAN, f64::INFINITY, -1.0, -1e-300] {
        assert_eq!(qgemm::quantize_multiplier(real).unwrap_err().kind(), ErrorKind::Scale);
    }
    assert_eq!(qgemm::quantize_multiplier(2f64.powi(30)).unwrap_err().kind(), ErrorKind::Shift);
    assert_eq!(qgemm::quantize_bias(f32::NAN, 1.0, 1.0).unwrap_err().kind(), ErrorKind::Scale);
    assert_eq!(qgemm::quantize_bias(1.0, 0.0, 1.0).unwrap_err().kind(), ErrorKind::Scale);
    assert_eq!(qgemm::quantize_bias(1.0, 1e30, 1e30).unwrap_err().kind(), ErrorKind::Scale);
}

#[test]
fn clamps_and_zero_points() {
    gemm_error(ErrorKind::Clamp, "min = 200 is greater than max = 100", &u8_stage(fixed(1 << 30, 0), 0, 200, 100));
    gemm_error(ErrorKind::Clamp, "clamp [-1, 255]", &u8_stage(fixed(1 << 30, 0), 0, -1, 255));
    gemm_error(ErrorKind::Clamp, "clamp [0, 256]", &u8_stage(fixed(1 << 30, 0), 0, 0, 256));
    gemm_error(ErrorKind::ZeroPoint, "zero_point = 256", &u8_stage(fixed(1 << 30, 0), 256, 0, 255));
    gemm_error(ErrorKind::ZeroPoint, "zero_point = -1", &u8_stage(fixed(1 << 30, 0), -1, 0, 255));
    // An i8 output takes i8 ranges.
    let a = [0u8; M * K];
    let mut out = [7i8; M * N];
    let stage = u8_stage(fixed(1 << 30, 0), 0, 0, 200);
    let e =
        qgemm::gemm(&Activations::new(&a, M, K, 0), &packed(), &stage, OutputMatrix::i8(&mut out, M, N)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Clamp);
    assert!(e.to_string().contains("i8 range [-128, 127]"), "{e}");
    assert_eq!(out, [7; M * N]);
}

#[test]
fn stage_that_does_not_fit_the_output_type() {
    gemm_error(ErrorKind::OutputType, "no requantization", &OutputStage::default());
    let a = [0u8; M * K];
    let mut out = [9i32; M * N];
    let e =
        qgemm::gemm(&Activations::new(&a, M, K, 0), &packed(), &valid_u8_stage(), OutputMatrix::i32(&mut out, M, N))
            .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutputType);
    assert_eq!(out, [9; M * N]);
}

#[test]
fn weights_packed_for_another_isa_or_an_unavailable_isa() {
    let a = [0u8; M * K];
    let b = packed();
    // An ISA this CPU cannot run, or that this build has no kernel for.
    let missing = *Isa::ALL.iter().find(|i| !qgemm::available_isas().contains(i)).expect("some ISA is missing");
    let options = Options::new().with_isa(missing);
    expect_u8_error(
        ErrorKind::WeightsMismatch,
        &format!("options.isa = {missing}, but the weights were packed for portable"),
        Activations::new(&a, M, K, 0),
        &b,
        &valid_u8_stage(),
        M * N,
        M,
        N,
        N,
        options,
    );
    let e = PackedWeights::for_isa(missing, Weights::kxn(&[0i8; 4], 2, 2)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::IsaUnavailable);
    assert!(e.to_string().contains(missing.name()), "{e}");
    let e = qgemm::force_isa(Some(missing)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::IsaUnavailable);
    // Zero threads.
    expect_u8_error(
        ErrorKind::Threads,
        "threads = 0",
        Activations::new(&a, M, K, 0),
        &b,
        &valid_u8_stage(),
        M * N,
        M,
        N,
        N,
        Options::new().with_threads(0),
    );
    // Thread counts past MAX_THREADS: an error, never an overflow or a wrapped count.
    for threads in [usize::MAX, 1 << 62, qgemm::MAX_THREADS + 1] {
        expect_u8_error(
            ErrorKind::Threads,
            "above the most accepted (4096)",
            Activations::new(&a, M, K, 0),
            &b,
            &valid_u8_stage(),
            M * N,
            M,
            N,
            N,
            Options::new().with_threads(threads),
        );
        let stage = valid_u8_stage();
        let mut c = vec![0u8; M * N];
        let partition = qgemm::Partition::auto(threads);
        let e = qgemm::GemmTasks::new(
            &Activations::new(&a, M, K, 0),
            &b,
            &stage,
            OutputMatrix::u8(&mut c, M, N),
            &partition,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Threads, "{e}");
    }
}

fn conv_weights_for(p: &Conv2dParams) -> PackedConvWeights {
    let w = vec![1i8; p.out_channels * p.kernel_height * p.kernel_width * (p.in_channels / p.groups)];
    PackedConvWeights::for_isa(Isa::Portable, ConvWeights::new(&w, p)).unwrap()
}

/// Runs an i32 conv into a sentinel-filled output and checks the error and the output.
fn conv_error(kind: ErrorKind, needle: &str, params: &Conv2dParams, weights: &PackedConvWeights, input_len: usize) {
    let input = vec![1u8; input_len];
    let mut out = vec![-7i32; 64];
    let rows = match (params.out_height(), params.out_width()) {
        (Some(h), Some(w)) => params.batch * h * w,
        _ => 1,
    };
    let c = OutputMatrix::i32(&mut out[..rows * params.out_channels], rows, params.out_channels);
    let e = qgemm::conv2d(&ConvInput::new(&input, 0), weights, params, &OutputStage::default(), c)
        .expect_err("invalid conv must fail");
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.to_string().contains(needle), "message {e:?} should mention {needle:?}");
    assert!(out.iter().all(|&x| x == -7), "the output was written on error: {e}");
}

#[test]
fn conv_errors() {
    let good = Conv2dParams::new([1, 4, 4, 4], 2, [3, 3]).with_padding(1, 1, 1, 1);
    let weights = conv_weights_for(&good);
    let len = 4 * 4 * 4;
    // Output size zero: the kernel is larger than the padded input.
    let too_big = Conv2dParams::new([1, 2, 2, 4], 2, [3, 3]);
    conv_error(ErrorKind::ConvOutputSize, "padded input is only 2", &too_big, &weights, 16);
    let dilated = good.with_dilation(3, 1);
    conv_error(ErrorKind::ConvOutputSize, "spans 7", &dilated, &weights, len);
    // Zero strides, dilations and groups; channels that groups do not divide.
    conv_error(ErrorKind::Dimension, "stride_width = 0", &good.with_stride(1, 0), &weights, len);
    conv_error(ErrorKind::Dimension, "dilation_height = 0", &good.with_dilation(0, 1), &weights, len);
    conv_error(ErrorKind::Dimension, "groups = 0", &good.with_groups(0), &weights, len);
    conv_error(ErrorKind::Dimension, "groups = 3 does not divide in_channels = 4", &good.with_groups(3), &weights, len);
    // Only the channel count that groups does not divide is named (4 divides 4).
    let out_only = Conv2dParams::new([1, 2, 2, 4], 6, [1, 1]).with_groups(4);
    conv_error(ErrorKind::Dimension, "groups = 4 does not divide out_channels = 6", &out_only, &weights, 16);
    // Input length off by one.
    conv_error(ErrorKind::BufferLength, "63 values", &good, &weights, len - 1);
    conv_error(ErrorKind::BufferLength, "65 values", &good, &weights, len + 1);
    // Weights packed for another shape.
    // The message names each parameter that differs, never an internal type.
    let other = Conv2dParams::new([1, 4, 4, 4], 2, [1, 1]);
    let both = "kernel_height = 1 (the weights have 3), kernel_width = 1 (the weights have 3)";
    conv_error(ErrorKind::WeightsMismatch, both, &other, &weights, len);
    let grouped = good.with_groups(2);
    conv_error(ErrorKind::WeightsMismatch, "groups = 2 (the weights have 1)", &grouped, &weights, len);
    // Conv weights with the wrong length or a group count that does not divide.
    let e = PackedConvWeights::new(ConvWeights::new(
        &[0i8; 10],
        &Conv2dParams::new([1, 3, 3, 4], 2, [3, 3]).with_groups(1),
    ))
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BufferLength);
    let e = PackedConvWeights::new(ConvWeights::new(
        &[0i8; 18],
        &Conv2dParams::new([1, 3, 3, 3], 2, [3, 3]).with_groups(2),
    ))
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Dimension);
    // OIHW weights one value short: the message names the layout and its dimensions.
    let e = PackedConvWeights::new(
        ConvWeights::new(&[0i8; 71], &Conv2dParams::new([1, 3, 3, 4], 2, [3, 3]).with_groups(1))
            .with_layout(qgemm::FilterLayout::Oihw),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BufferLength);
    assert!(e.to_string().contains("OIHW [2, 4, 3, 3]"), "{e}");
    // `path` validates like the call itself.
    assert_eq!(weights.path(&other).unwrap_err().kind(), ErrorKind::WeightsMismatch);
    assert_eq!(weights.path(&good.with_stride(0, 1)).unwrap_err().kind(), ErrorKind::Dimension);
    let path = weights.path(&good).unwrap();
    assert!(matches!(path, qgemm::ConvPath::Im2col | qgemm::ConvPath::Indirect), "{path:?}");
    // A rejected call through a workspace writes nothing and leaves the workspace usable.
    let input = vec![1u8; len];
    let mut workspace = qgemm::Workspace::new();
    let mut out = vec![-7i32; 40];
    let e = qgemm::conv2d_in(
        &ConvInput::new(&input[..len - 1], 0),
        &weights,
        &good,
        &OutputStage::default(),
        OutputMatrix::i32(&mut out, 16, 2),
        &qgemm::Options::default(),
        &mut workspace,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BufferLength);
    assert!(out.iter().all(|&v| v == -7));
    qgemm::conv2d_in(
        &ConvInput::new(&input, 0),
        &weights,
        &good,
        &OutputStage::default(),
        OutputMatrix::i32(&mut out, 16, 2),
        &qgemm::Options::default(),
        &mut workspace,
    )
    .unwrap();
    // An output of the wrong shape.
    let input = vec![1u8; len];
    let mut out = vec![-7i32; 40];
    let e = qgemm::conv2d(
        &ConvInput::new(&input, 0),
        &weights,
        &good,
        &OutputStage::default(),
        OutputMatrix::i32(&mut out, 20, 2),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Dimension);
    assert!(e.to_string().contains("16×2"), "{e}");
    assert!(out.iter().all(|&x| x == -7));
}

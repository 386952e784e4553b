//! Every convolution path against the reference, byte for byte, on every ISA here:
//! dense 1×1 GEMMs, taps gathered while packing (general KH×KW, strided and padded
//! 1×1, groups), the depthwise kernels (3×3, 5×5 and other sizes, any stride,
//! dilation and multiplier, channel tails, column tiles), batches, both weight
//! layouts, padding larger than the kernel, every output type and scheme, 1–3
//! threads, and one workspace reused across all of it. Each case also asserts which
//! path it takes, so a change in the dispatch cannot silently leave a path untested.
//! Then the scratch bound, asserted over shapes built to stress it.

mod common;

use common::{ConvCase, Rng, WEIGHT_FILLS, Want, lay_out, requantize_for, schemes, weights_kxn};
use qgemm::{
    Activations, Channelwise, Conv2dParams, FilterLayout, OutputMatrix, OutputStage, OutputType, PackedWeights,
    SCRATCH_BYTES_PER_THREAD, WeightLayout, Weights, Workspace,
};

const DW: Want = Want::DW;
const PW: Want = Want::PW;
const IM: Want = Want::IM;
const IN: Want = Want::IN;

fn cases() -> Vec<(&'static str, Want, Conv2dParams)> {
    let p = Conv2dParams::new;
    vec![
        // Dense 1×1: the input is A (read in place on the VNNI tiers).
        ("1x1", PW, p([1, 5, 7, 16], 24, [1, 1])),
        ("1x1 batch 2, groups 2", Want::PW_ONLY, p([2, 4, 3, 12], 10, [1, 1]).with_groups(2)),
        // 1×1 at other strides and with padding: rows borrowed in place.
        ("1x1 stride 2", IN, p([1, 9, 8, 8], 12, [1, 1]).with_stride(2, 2)),
        ("1x1 stride (1,3) padded", IN, p([2, 5, 10, 6], 7, [1, 1]).with_stride(1, 3).with_padding(1, 2, 0, 1)),
        ("1x1 padding 3 (larger than the kernel)", IN, p([1, 3, 4, 5], 6, [1, 1]).with_padding(3, 3, 3, 3)),
        ("1x1 groups 3 stride 2", IM, p([1, 7, 7, 9], 6, [1, 1]).with_stride(2, 2).with_groups(3)),
        // General kernels, taps gathered while packing.
        ("3x3 pad 1", IN, p([1, 8, 8, 8], 16, [3, 3]).with_padding(1, 1, 1, 1)),
        ("3x3 C=64, K crosses a K block", IN, p([1, 6, 5, 64], 20, [3, 3]).with_padding(1, 1, 1, 1)),
        ("7x7 s2 p3, C=3 (conv1-like)", IN, p([1, 17, 15, 3], 9, [7, 7]).with_stride(2, 2).with_padding(3, 3, 3, 3)),
        ("3x3 pad 5 (larger than the kernel)", IN, p([1, 4, 3, 5], 7, [3, 3]).with_padding(5, 5, 4, 6)),
        ("5x2 dilation (2,3)", IN, p([1, 13, 12, 4], 5, [5, 2]).with_dilation(2, 3).with_padding(1, 2, 3, 0)),
        ("3x3 stride (2,1), batch 3", IN, p([3, 7, 6, 5], 9, [3, 3]).with_stride(2, 1).with_padding(1, 1, 1, 1)),
        ("3x3 groups 4", IN, p([1, 6, 6, 16], 12, [3, 3]).with_padding(1, 1, 1, 1).with_groups(4)),
        ("grouped 3x3, 2 in / 4 out per group", IM, p([2, 5, 5, 6], 12, [3, 3]).with_groups(3)),
        ("kernel larger than the input", IN, p([1, 3, 2, 4], 5, [5, 4]).with_padding(2, 1, 2, 1)),
        // Indirect runs: kernel rows whose last K-group passes the input's end (copied),
        // a vertical dilation (kernel rows apart), taps of 8 channels per group with
        // padding on every side wider than the kernel, and 1×1 runs at a stride.
        ("7x7 C=3 unpadded: runs end at the input's end", IN, p([1, 9, 9, 3], 4, [7, 7])),
        ("3x3 dilation (2,1), C=8", IN, p([2, 9, 7, 8], 20, [3, 3]).with_dilation(2, 1).with_padding(2, 1, 0, 1)),
        (
            "3x3 groups 2 of 8, stride 2, padding 4",
            IN,
            p([1, 7, 8, 16], 10, [3, 3]).with_stride(2, 2).with_padding(4, 4, 3, 5).with_groups(2),
        ),
        ("5x5 C=5 stride (2,3), batch 2", IN, p([2, 11, 13, 5], 50, [5, 5]).with_stride(2, 3).with_padding(2, 0, 1, 2)),
        ("1x7 C=12 pad (0,3)", IN, p([1, 6, 9, 12], 52, [1, 7]).with_padding(0, 3, 0, 3)),
        // Kernel rows of 3 × 24000 channels: one tile's runs do not fit the indirect
        // scratch, so the taps are gathered.
        ("3x3 C=24000 (too deep to run indirectly)", IM, p([1, 3, 3, 24000], 3, [3, 3]).with_padding(1, 1, 1, 1)),
        // Depthwise.
        ("dw 3x3 s1 p1", DW, p([1, 9, 9, 16], 16, [3, 3]).with_padding(1, 1, 1, 1).with_groups(16)),
        (
            "dw 3x3 s2, C=13 (channel tail)",
            DW,
            p([1, 10, 11, 13], 13, [3, 3]).with_stride(2, 2).with_padding(1, 0, 1, 1).with_groups(13),
        ),
        ("dw 5x5 s1 p2", DW, p([1, 8, 9, 24], 24, [5, 5]).with_padding(2, 2, 2, 2).with_groups(24)),
        (
            "dw 5x5 s2, batch 2",
            DW,
            p([2, 11, 10, 8], 8, [5, 5]).with_stride(2, 2).with_padding(2, 2, 2, 2).with_groups(8),
        ),
        (
            "dw 3x3 dilation 2",
            DW,
            p([1, 12, 12, 9], 9, [3, 3]).with_dilation(2, 2).with_padding(2, 2, 2, 2).with_groups(9),
        ),
        (
            "dw 3x3 dilation (3,2) stride (1,2)",
            DW,
            p([1, 12, 13, 8], 8, [3, 3]).with_dilation(3, 2).with_stride(1, 2).with_groups(8),
        ),
        ("dw multiplier 2", DW, p([1, 7, 7, 6], 12, [3, 3]).with_padding(1, 1, 1, 1).with_groups(6)),
        (
            "dw multiplier 3, 5x5 s2",
            DW,
            p([1, 11, 10, 5], 15, [5, 5]).with_stride(2, 2).with_padding(2, 2, 2, 2).with_groups(5),
        ),
        ("dw 7x7 (generic size)", DW, p([1, 10, 9, 17], 17, [7, 7]).with_padding(3, 3, 3, 3).with_groups(17)),
        ("dw 1x4 (even width)", DW, p([1, 5, 9, 8], 8, [1, 4]).with_padding(0, 1, 0, 2).with_groups(8)),
        ("dw 4x1", DW, p([1, 9, 5, 8], 8, [4, 1]).with_padding(2, 0, 1, 0).with_groups(8)),
        ("dw C=1", DW, p([1, 6, 7, 1], 1, [3, 3]).with_padding(1, 1, 1, 1).with_groups(1)),
        (
            "dw padding 4 (larger than the kernel)",
            DW,
            p([1, 4, 5, 8], 8, [3, 3]).with_padding(4, 4, 4, 3).with_groups(8),
        ),
        ("dw 3x3 batch 3, C=40", DW, p([3, 6, 6, 40], 40, [3, 3]).with_padding(1, 1, 1, 1).with_groups(40)),
        ("dw kernel larger than the input", DW, p([1, 2, 3, 8], 8, [5, 5]).with_padding(2, 2, 2, 2).with_groups(8)),
        // Around the 16-lane vectors of the AVX-512 kernel: pairs of chunks, a lone
        // chunk, a whole chunk beside the channel tail.
        ("dw 3x3 C=144 (mbv2-like)", DW, p([1, 6, 7, 144], 144, [3, 3]).with_padding(1, 1, 1, 1).with_groups(144)),
        (
            "dw 3x3 s3, C=33",
            DW,
            p([2, 8, 9, 33], 33, [3, 3]).with_stride(3, 3).with_padding(1, 2, 1, 0).with_groups(33),
        ),
        ("dw 1x7, C=17", DW, p([1, 4, 11, 17], 17, [1, 7]).with_padding(0, 3, 0, 3).with_groups(17)),
        ("dw 7x1 multiplier 2, C=12", DW, p([1, 10, 4, 12], 24, [7, 1]).with_padding(3, 0, 3, 0).with_groups(12)),
        // A depthwise kernel too tall for the pair-row cache runs as grouped GEMMs.
        ("dw 257x1 (grouped GEMMs)", IM, p([1, 257, 2, 3], 3, [257, 1]).with_groups(3)),
    ]
}

#[test]
fn each_case_takes_its_path() {
    for (label, path, params) in cases() {
        let case = ConvCase::random(&mut Rng::new(1), params);
        for &isa in qgemm::available_isas() {
            let packed = case.packed(isa);
            assert_eq!(packed.path(&params).unwrap(), path.on(&packed), "{label} on {isa}");
        }
    }
}

/// Every case, both layouts, every output type and scheme (per tensor and per channel),
/// with a bias and a strided output, at 1–3 threads, all through one workspace.
#[test]
fn every_path_matches_the_reference() {
    let mut rng = Rng::new(61);
    let mut workspace = Workspace::new();
    for (label, _, params) in cases() {
        let oc = params.out_channels;
        let k = params.kernel_height * params.kernel_width * params.in_channels / params.groups;
        let base = ConvCase::random(&mut rng, params);
        let mut variants = vec![base.clone()];
        for per_channel in [false, true] {
            for (i, scheme) in schemes(&mut rng, oc, per_channel, k).into_iter().enumerate() {
                let mut case = base.clone();
                case.stage.bias = Some((0..oc).map(|_| (rng.next_u64() as i32) >> 14).collect());
                case.out = if (i + per_channel as usize).is_multiple_of(2) { OutputType::U8 } else { OutputType::I8 };
                case.stage.requantize = Some(requantize_for(&mut rng, scheme, case.out));
                case.out_stride = oc + i;
                variants.push(case);
            }
        }
        // The same variants on 7-bit activations, where AVX2 reads the input in place
        // through its fast path (`6x8c4-avx2-maddubs`) with the stage fused.
        let seven_bit: Vec<ConvCase> = variants.iter().map(|c| c.clone().seven_bit()).collect();
        variants.extend(seven_bit);
        for (v, mut case) in variants.into_iter().enumerate() {
            let expected = case.expected();
            for layout in [FilterLayout::Ohwi, FilterLayout::Oihw] {
                case.layout = layout;
                for &isa in qgemm::available_isas() {
                    for threads in [1, 2, 3] {
                        let (got, gaps_ok) = case.run_in(isa, threads, &mut workspace);
                        assert!(
                            got == expected,
                            "{label} (variant {v}, {layout:?}, {isa}, {threads} threads, out {:?}, stage {:?}): {}",
                            case.out,
                            case.stage,
                            common::first_mismatch(&got, &expected, oc)
                        );
                        assert!(gaps_ok, "{label}: wrote between output rows");
                    }
                }
            }
        }
    }
}

/// Full-range extremes on every path: A = 255 (and the zero points at both ends)
/// against weight patterns of −128 and 127.
#[test]
fn every_path_on_extreme_data() {
    let mut rng = Rng::new(62);
    let shapes = [
        Conv2dParams::new([1, 5, 5, 32], 16, [3, 3]).with_padding(1, 1, 1, 1),
        Conv2dParams::new([1, 4, 4, 40], 9, [1, 1]),
        Conv2dParams::new([1, 6, 6, 24], 24, [3, 3]).with_stride(2, 2).with_padding(1, 1, 1, 1).with_groups(24),
        Conv2dParams::new([1, 7, 7, 16], 16, [5, 5]).with_padding(2, 2, 2, 2).with_groups(16),
        Conv2dParams::new([1, 5, 6, 33], 33, [3, 3]).with_padding(1, 1, 1, 1).with_groups(33),
    ];
    for params in shapes {
        let oc = params.out_channels;
        let k = params.kernel_height * params.kernel_width * params.in_channels / params.groups;
        for fill in WEIGHT_FILLS {
            for (input_zp, weight_zp) in [(0u8, -128i8), (255, 127), (0, 127), (255, -128)] {
                let mut case = ConvCase::random(&mut rng, params);
                case.input.fill(255);
                case.input_zp = input_zp;
                case.weight_zp = Channelwise::PerTensor(weight_zp);
                case.weights = lay_out(&weights_kxn(&mut rng, k, oc, fill), k, oc, WeightLayout::NxK);
                case.check(&format!("{params:?}: A = 255 against {fill:?}, zps {input_zp}/{weight_zp}"));
                // The fused Float output of the depthwise kernels, on the same data.
                let scheme = schemes(&mut rng, oc, true, k).pop().expect("Float is last");
                case.out = OutputType::U8;
                case.stage = OutputStage::requantized(requantize_for(&mut rng, scheme, case.out));
                case.check(&format!("{params:?}: Float output, A = 255 against {fill:?}"));
            }
        }
    }
}

/// The fused Float stages at their corners, on paths that fuse it (indirect on the
/// VNNI tiers and, with 7-bit data, on AVX2; depthwise): sums far outside i16 after
/// scaling (huge biases, scales just below 1, where the stage rounds first and clamps
/// in integers), scales of 1 and more (the float clamp, or no fusion), every output
/// type, zero points at both ends and narrow clamps, per tensor and per channel.
#[test]
fn fused_stages_at_their_corners() {
    let mut rng = Rng::new(63);
    let shapes = [
        Conv2dParams::new([1, 6, 5, 16], 20, [3, 3]).with_padding(1, 1, 1, 1),
        Conv2dParams::new([1, 5, 7, 24], 40, [1, 1]),
        Conv2dParams::new([1, 7, 7, 16], 16, [5, 5]).with_padding(2, 2, 2, 2).with_groups(16),
    ];
    let biases = [i32::MAX, i32::MIN, 1 << 30, -(1 << 30), 40_000, -40_000, 33_000, -33_000];
    for params in shapes {
        let oc = params.out_channels;
        for seven_bit in [false, true] {
            let mut case = ConvCase::random(&mut rng, params);
            if seven_bit {
                case = case.seven_bit();
            }
            case.stage.bias =
                Some((0..oc).map(|j| biases[j % biases.len()] ^ (rng.next_u64() as i32 & 0xff)).collect());
            for scale in [0.999_999_9f32, 0.75, 0.5, 1.0, 3.0, 1e-6] {
                let per_channel: Vec<f32> = (0..oc).map(|j| [scale, 0.25, 0.999][j % 3]).collect();
                for scale in [Channelwise::PerTensor(scale), Channelwise::PerChannel(per_channel)] {
                    for (out, zp, min, max) in [
                        (OutputType::U8, 0, 0, 255),
                        (OutputType::U8, 255, 0, 255),
                        (OutputType::U8, 128, 130, 200),
                        (OutputType::I8, -128, -128, 127),
                        (OutputType::I8, 127, -5, 100),
                    ] {
                        let scheme = qgemm::Requantization::Float { scale: scale.clone() };
                        case.out = out;
                        case.stage.requantize = Some(qgemm::Requantize::from_i32(scheme, zp, min, max));
                        case.check(&format!(
                            "{params:?} 7-bit {seven_bit}, scale {scale:?}, {out:?} zp {zp} [{min}, {max}]"
                        ));
                    }
                }
            }
        }
    }
}

/// Runs `params` with random data on every ISA at 1 and 2 threads, each in a fresh
/// workspace, checks the result, and returns the most scratch any thread held.
fn conv_scratch(params: Conv2dParams) -> usize {
    let mut rng = Rng::new(63);
    let mut case = ConvCase::random(&mut rng, params);
    case.out = OutputType::U8;
    let scheme = schemes(&mut rng, params.out_channels, false, 9).pop().expect("Float");
    case.stage.requantize = Some(requantize_for(&mut rng, scheme, case.out));
    let expected = case.expected();
    let mut peak = 0;
    for &isa in qgemm::available_isas() {
        for threads in [1, 2] {
            let mut workspace = Workspace::new();
            let (got, _) = case.run_in(isa, threads, &mut workspace);
            assert!(got == expected, "{params:?} on {isa}");
            peak = peak.max(workspace.max_thread_heap_size());
        }
    }
    peak
}

/// The documented bound, [`SCRATCH_BYTES_PER_THREAD`] (1 MiB), holds on shapes built
/// to push each buffer to its limit: huge K (packed A one K block at a time), wide
/// images with many channels (depthwise column tiles and channel blocks), tall
/// kernels, big images, and a GEMM with K = 20000.
#[test]
fn scratch_stays_within_the_bound() {
    assert_eq!(SCRATCH_BYTES_PER_THREAD, 1 << 20);
    let p = Conv2dParams::new;
    let shapes = [
        // K = 3·3·1024 = 9216: more than a row block of packed A may hold at once.
        p([1, 6, 6, 1024], 24, [3, 3]).with_padding(1, 1, 1, 1),
        // A 1×1 over 6000 channels, strided: K = 6000 through borrowed rows.
        p([1, 5, 5, 6000], 16, [1, 1]).with_stride(2, 2),
        // Depthwise, 2048 channels × 260 columns: blocks of 32 channels.
        p([1, 6, 260, 2048], 2048, [3, 3]).with_padding(1, 1, 1, 1).with_groups(2048),
        // Depthwise, 3 channels on a 40000-pixel-wide row, dilated 5×5: column tiles.
        p([1, 7, 40000, 3], 3, [5, 5]).with_dilation(1, 3).with_padding(2, 6, 2, 6).with_groups(3),
        // A depthwise kernel 200 rows tall.
        p([1, 220, 8, 16], 16, [200, 3]).with_groups(16),
        // A big image through im2col (indirect on the VNNI tiers).
        p([1, 300, 300, 16], 32, [3, 3]).with_padding(1, 1, 1, 1),
        // Indirect kernel rows of 3 × 4096 channels: row blocks of 8 pixels, every run a
        // copy at the borders.
        p([1, 4, 5, 4096], 16, [3, 3]).with_padding(1, 1, 1, 1),
        // Indirect taps of 3000 channels (groups 2), padding everywhere.
        p([1, 5, 4, 6000], 6, [3, 3]).with_padding(2, 2, 2, 2).with_groups(2),
    ];
    for params in shapes {
        let peak = conv_scratch(params);
        assert!(peak > 0 && peak <= SCRATCH_BYTES_PER_THREAD, "{params:?}: {peak} bytes of scratch per thread");
    }

    let (m, k, n) = (64, 20000, 64);
    let a: Vec<u8> = (0..m * k).map(|i| (i * 7) as u8).collect();
    let b: Vec<i8> = (0..k * n).map(|i| (i * 13) as i8).collect();
    let zp = Channelwise::PerTensor(3);
    let mut out = vec![0i32; m * n];
    let mut workspace = Workspace::new();
    for &isa in qgemm::available_isas() {
        let packed = PackedWeights::for_isa(isa, Weights::kxn(&b, k, n).with_zero_point(zp.clone())).unwrap();
        let acts = Activations::new(&a, m, k, 9);
        let options = qgemm::Options::new().with_isa(isa);
        qgemm::gemm_in(
            &acts,
            &packed,
            &OutputStage::default(),
            OutputMatrix::i32(&mut out, m, n),
            &options,
            &mut workspace,
        )
        .unwrap();
        assert!(workspace.max_thread_heap_size() <= SCRATCH_BYTES_PER_THREAD, "GEMM K = {k} on {isa}");
    }
}

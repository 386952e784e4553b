//! Every ISA in `available_isas()` against the reference, byte for byte: all tails
//! of every kernel's tile, strides, zero-point classes, extreme data, every
//! requantization scheme and its corner cases, clamps, output types, and convolution.

mod common;

use common::{ConvCase, GemmCase, Rng, WEIGHT_FILLS, WeightFill, lay_out, requantize_for, schemes, weights_kxn};
use qgemm::{Channelwise, Conv2dParams, FixedPointParams, Isa, OutputType, Requantization, Requantize, WeightLayout};

/// The tile shapes of every kernel that runs here.
fn tiles() -> Vec<(Isa, qgemm::KernelInfo)> {
    qgemm::available_isas().iter().map(|&isa| (isa, isa.kernel_info().expect("available ISAs have kernels"))).collect()
}

/// Sizes 0/1 through several multiples of `unit`, with every tail near each multiple.
fn sizes_around(unit: usize, multiples: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=unit + 1).collect();
    for j in 2..=multiples {
        v.extend([j * unit - 1, j * unit, j * unit + 1]);
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Picks one output configuration per case, so that the sweep covers i32, u8 and i8
/// outputs and all four schemes without multiplying its size.
fn vary_output(rng: &mut Rng, case: GemmCase) -> GemmCase {
    let n = case.n;
    let k = case.k;
    let mut case = case;
    case.stage.bias =
        if rng.below(2) == 0 { Some((0..n).map(|_| (rng.next_u64() as i32) >> 4).collect()) } else { None };
    match rng.below(3) {
        0 => case,
        i => {
            let out = if i == 1 { OutputType::U8 } else { OutputType::I8 };
            let per_channel = rng.below(2) == 0;
            let all = schemes(rng, n, per_channel, k);
            let scheme = all[rng.below(all.len())].clone();
            let requantize = requantize_for(rng, scheme, out);
            case.with_output(out, Some(requantize))
        }
    }
}

#[test]
fn every_tail_of_m_n_and_k() {
    let mut rng = Rng::new(1);
    for (isa, t) in tiles() {
        let ms = sizes_around(t.mr, 3);
        let ns = sizes_around(t.nr, 3);
        let ks: Vec<usize> = std::iter::once(0).chain(sizes_around(t.k_group, 4)).collect();
        for &m in &ms {
            for &n in &ns {
                for &k in &ks {
                    let case = GemmCase::random(&mut rng, m, n, k);
                    let layout = if rng.below(2) == 0 { WeightLayout::KxN } else { WeightLayout::NxK };
                    let case = vary_output(&mut rng, case.with_layout(layout));
                    case.check(&format!("tails of {}", t.name));
                }
            }
        }
        let _ = isa;
    }
}

#[test]
fn gemv_and_small_m() {
    // M = 1 runs the kernels' one-row path (A packed as a dense row, K split over
    // partial sums); M = 2 and 3 the row panels beside it. K and N tails, extreme data,
    // every zero-point class, every scheme and output type.
    let mut rng = Rng::new(12);
    for m in [1, 2, 3] {
        for k in [1, 3, 5, 63, 65, 4097] {
            for n in [1, 15, 17, 47, 49, 4095] {
                let layout = if rng.below(2) == 0 { WeightLayout::KxN } else { WeightLayout::NxK };
                let mut case = GemmCase::random(&mut rng, m, n, k);
                if rng.below(3) == 0 {
                    case.a = vec![255; m * k];
                    let fill = rng.pick(&WEIGHT_FILLS);
                    case.b = weights_kxn(&mut rng, k, n, fill);
                }
                let case = vary_output(&mut rng, case.with_layout(layout));
                case.check("gemv and small M");
            }
        }
    }
    let (k, n) = (301, 53);
    let mut per_column: Vec<i8> = (0..n).map(|_| rng.i8()).collect();
    per_column[..2].copy_from_slice(&[-128, 127]);
    let zps = [
        Channelwise::PerTensor(0),
        Channelwise::PerTensor(-128),
        Channelwise::PerTensor(127),
        Channelwise::PerChannel(vec![0; n]),
        Channelwise::PerChannel(per_column),
    ];
    for b_zp in zps {
        for fill in [WeightFill::Random, WeightFill::Alternating] {
            let mut case = GemmCase::random(&mut rng, 1, n, k);
            case.b = weights_kxn(&mut rng, k, n, fill);
            case.b_zp = b_zp.clone();
            case.clone().check("gemv, i32");
            for per_channel in [false, true] {
                for scheme in schemes(&mut rng, n, per_channel, k) {
                    for out in [OutputType::U8, OutputType::I8] {
                        let requantize = requantize_for(&mut rng, scheme.clone(), out);
                        let mut case = case.clone().with_output(out, Some(requantize));
                        case.stage.bias = Some((0..n).map(|_| (rng.next_u64() as i32) >> 8).collect());
                        case.check("gemv, every scheme");
                    }
                }
            }
        }
    }
}

#[test]
fn depths_and_sizes_across_cache_blocks() {
    // The default blocking is in the hundreds; these cross several KC, MC and NC
    // blocks with tails. (The kernels crate also runs tiny blockings.)
    let mut rng = Rng::new(2);
    for (m, n, k) in
        [(70, 40, 513), (3, 600, 1030), (130, 33, 129), (1, 1, 4099), (65, 513, 3), (17, 1100, 300), (200, 70, 64)]
    {
        for layout in [WeightLayout::KxN, WeightLayout::NxK] {
            let case = GemmCase::random(&mut rng, m, n, k).with_layout(layout);
            let case = vary_output(&mut rng, case);
            case.check("across cache blocks");
        }
    }
}

#[test]
fn strides_larger_than_the_rows() {
    let mut rng = Rng::new(3);
    for (m, n, k) in [(1, 1, 1), (5, 7, 9), (9, 33, 17), (16, 64, 64), (33, 65, 31)] {
        for (a_extra, out_extra) in [(1, 0), (0, 1), (5, 3), (64, 100)] {
            let mut case = GemmCase::random(&mut rng, m, n, k).with_a_stride(&mut rng, k + a_extra);
            case.out_stride = n + out_extra;
            let case = vary_output(&mut rng, case);
            case.check("strides");
        }
    }
}

#[test]
fn zero_point_classes() {
    let mut rng = Rng::new(4);
    let (m, n, k) = (9, 35, 21);
    for a_zp in [0u8, 1, 128, 255] {
        let per_tensor = [-128i8, -1, 0, 1, 127].map(Channelwise::PerTensor);
        let mut per_column: Vec<i8> = (0..n).map(|_| rng.i8()).collect();
        per_column[0] = -128;
        per_column[1] = 127;
        per_column[n - 1] = -128;
        let mut zps: Vec<Channelwise<i8>> = per_tensor.to_vec();
        zps.push(Channelwise::PerChannel(per_column));
        zps.push(Channelwise::PerChannel(vec![0; n]));
        for b_zp in zps {
            for layout in [WeightLayout::KxN, WeightLayout::NxK] {
                let mut case = GemmCase::random(&mut rng, m, n, k).with_layout(layout);
                case.a_zp = a_zp;
                case.b_zp = b_zp.clone();
                case.check("zero points");
                let case = vary_output(&mut rng, case);
                case.check("zero points, varied output");
            }
        }
    }
}

#[test]
fn extreme_data() {
    let mut rng = Rng::new(5);
    // A = 255 everywhere against every weight pattern; K = 70000 makes the i32 sum
    // wrap (255·128·70000 > 2^31).
    for &(m, n, k) in &[(5, 33, 64), (4, 32, 1023), (3, 3, 70_000)] {
        for fill in WEIGHT_FILLS {
            for a_zp in [0u8, 255, 128] {
                for b_zp in [Channelwise::PerTensor(0i8), Channelwise::PerTensor(-128), Channelwise::PerTensor(127)] {
                    let b = weights_kxn(&mut rng, k, n, fill);
                    let mut case = GemmCase::random(&mut rng, m, n, k);
                    case.a = vec![255; m * k];
                    case.b = b;
                    case.a_zp = a_zp;
                    case.b_zp = b_zp;
                    case.check(&format!("A = 255 against {fill:?}"));
                }
            }
        }
    }
    // Alternating A extremes against paired weight extremes.
    let (m, n, k) = (6, 40, 130);
    let mut case = GemmCase::random(&mut rng, m, n, k);
    case.a = (0..m * k).map(|i| if (i / 2) % 2 == 0 { 255 } else { 0 }).collect();
    case.b = weights_kxn(&mut rng, k, n, WeightFill::Pairs);
    case.a_zp = 0;
    case.b_zp = Channelwise::PerTensor(0);
    case.check("A alternating 255/0 against paired extremes");
}

#[test]
fn both_sides_of_the_fast_path_boundaries() {
    // Kernels with a `vpmaddubsw` fast path take it per block when the activations are
    // all ≤ 127 or when every aligned weight pair has |w0| + |w1| ≤ 128; a wrong
    // choice shows up against these extremes. Every ISA must be exact on all of them.
    let mut rng = Rng::new(11);
    let (m, n, k) = (50, 37, 1100); // several row and K blocks, tails everywhere
    let weight_pairs: [(&str, [(i8, i8); 3]); 4] = [
        ("pair sums of 256", [(-128, -128), (127, 127), (-128, 127)]),
        ("pair sums of exactly 128", [(-128, 0), (64, -64), (-1, -127)]),
        ("one pair sum of 129", [(-128, 0), (64, -64), (-128, -1)]),
        ("pair sums of 128 and 255", [(127, 1), (127, -128), (0, 0)]),
    ];
    type Fill = fn(usize, &mut Rng) -> u8;
    let activations: [(&str, Fill); 5] = [
        ("A = 127", |_, _| 127),
        ("A = 128", |_, _| 128),
        ("A = 255", |_, _| 255),
        ("random A ≤ 127", |_, rng| rng.u8() >> 1),
        ("A ≤ 127 but one 255 per row", |i, rng| if i % 1100 == 517 { 255 } else { rng.u8() >> 1 }),
    ];
    for (wname, pairs) in weight_pairs {
        let mut b = vec![0i8; k * n];
        for kk in 0..k {
            for nn in 0..n {
                let (w0, w1) = pairs[(kk / 2 + nn) % pairs.len()];
                b[kk * n + nn] = if kk % 2 == 0 { w0 } else { w1 };
            }
        }
        for (aname, fill) in activations {
            let mut case = GemmCase::random(&mut rng, m, n, k);
            case.a = (0..m * k).map(|i| fill(i, &mut rng)).collect();
            case.b = b.clone();
            case.a_zp = 0;
            case.b_zp = Channelwise::PerTensor(0);
            case.check(&format!("{aname} against {wname}, i32"));
            let scale = Requantization::Float { scale: Channelwise::PerTensor(1.0 / 4096.0) };
            let requantize = Requantize::from_i32(scale, 128, 0, 255);
            case.a_zp = 100;
            let case = case.with_output(OutputType::U8, Some(requantize));
            case.check(&format!("{aname} against {wname}, u8"));
        }
    }
}

#[test]
fn each_scheme_per_tensor_and_per_channel_with_clamps() {
    let mut rng = Rng::new(6);
    let (m, n, k) = (11, 37, 45);
    for per_channel in [false, true] {
        for out in [OutputType::U8, OutputType::I8] {
            for scheme in schemes(&mut rng, n, per_channel, k) {
                let (lo, hi) = out.range();
                let zp = lo + 100;
                for (min, max) in [(lo, hi), (zp, hi), (zp, zp + 6), (lo + 7, lo + 7), (hi, hi), (lo, lo)] {
                    let mut case = GemmCase::random(&mut rng, m, n, k);
                    case.stage.bias = Some((0..n).map(|_| (rng.next_u64() as i32) >> 12).collect());
                    let requantize = Requantize::from_i32(scheme.clone(), zp, min, max);
                    let case = case.with_output(out, Some(requantize));
                    case.check(&format!("{} per_channel={per_channel} clamp [{min}, {max}]", scheme.name()));
                }
            }
        }
    }
}

/// Accumulator values that probe the roundings of every scheme at `shift` (with
/// multiplier 2^30, i.e. one half): exact ties of the final shift, positive and
/// negative, their neighbours, values beyond 2^24, and the i32 extremes.
fn probe_accumulators(shift: i32) -> Vec<i32> {
    let mut v = vec![0, 1, -1, 2, -2, 3, -3, i32::MAX, i32::MIN, i32::MIN + 1, (1 << 24) + 1, -(1 << 24) - 1];
    v.extend([(1 << 24) + 3, 16_777_217 * 3, -16_777_219, 1 << 30, -(1 << 30), 0x4000_0001, -0x3fff_ffff]);
    let r = (-shift).max(0) as u32;
    if (1..=29).contains(&r) {
        for q in [0i64, 1, 2, 5, -1, -2, -6] {
            // Double rounding: x/2 is exact, then q·2^r + 2^(r−1) is a tie of the shift.
            let tie = 2 * ((q << r) + (1i64 << (r - 1)));
            // Single rounding: x·2^30 / 2^(31+r) = x / 2^(r+1) is a tie when x = (2q+1)·2^r.
            let single_tie = (2 * q + 1) << r;
            for x in [tie, tie - 1, tie + 1, single_tie, single_tie - 1, single_tie + 1] {
                if let Ok(x) = i32::try_from(x) {
                    v.push(x);
                }
            }
        }
    }
    v
}

/// Runs accumulator values through the whole GEMM: K = 1 with A = a_zp makes every
/// product zero, so the biased accumulator is exactly the bias, one value per column.
fn check_accumulators(label: &str, accs: &[i32], scheme: Requantization, out: OutputType) {
    let n = accs.len();
    let mut rng = Rng::new(n as u64);
    let mut case = GemmCase::random(&mut rng, 2, n, 1);
    case.a = vec![77, 77];
    case.a_zp = 77;
    case.stage.bias = Some(accs.to_vec());
    let (lo, hi) = out.range();
    for (zp, min, max) in [(lo + 128, lo, hi), (lo + 3, lo, hi), (hi - 3, lo + 1, hi - 1)] {
        let requantize = Requantize::from_i32(scheme.clone(), zp, min, max);
        case.clone().with_output(out, Some(requantize)).check(label);
    }
}

#[test]
fn fixed_point_corners_every_shift_and_multiplier() {
    let multipliers = [0, 1 << 30, (1 << 30) + 1, 1_518_500_250, i32::MAX - 1, i32::MAX];
    for shift in -31..=30 {
        let accs = probe_accumulators(shift);
        for &m in &multipliers {
            let per_tensor = FixedPointParams::new(Channelwise::PerTensor(m), Channelwise::PerTensor(shift));
            for scheme in [
                Requantization::FixedPoint(per_tensor.clone()),
                Requantization::FixedPointHalfUp(per_tensor.clone()),
                Requantization::FixedPointSingleRounding(per_tensor),
            ] {
                for out in [OutputType::U8, OutputType::I8] {
                    check_accumulators(&format!("{} m={m} shift={shift}", scheme.name()), &accs, scheme.clone(), out);
                }
            }
        }
    }
    // Per channel: every shift and several multipliers side by side in one call.
    let accs: Vec<i32> = (-31..=30).flat_map(|s| probe_accumulators(s).into_iter().take(12)).collect();
    let n = accs.len();
    let shifts: Vec<i32> = (0..n).map(|j| -31 + (j % 62) as i32).collect();
    let mults: Vec<i32> = (0..n).map(|j| multipliers[j % multipliers.len()]).collect();
    let per_channel = FixedPointParams::new(Channelwise::PerChannel(mults), Channelwise::PerChannel(shifts));
    for scheme in [
        Requantization::FixedPoint(per_channel.clone()),
        Requantization::FixedPointHalfUp(per_channel.clone()),
        Requantization::FixedPointSingleRounding(per_channel),
    ] {
        check_accumulators(&format!("{} per channel", scheme.name()), &accs, scheme, OutputType::U8);
    }
}

#[test]
fn left_shift_that_wraps() {
    // shift = 30 shifts 2^30·x left: anything beyond ±1 wraps before the high multiply.
    let accs = [1, 2, 3, -1, -2, 5, 1 << 20, -(1 << 20), i32::MAX, i32::MIN, 0x1234_5678];
    for shift in [1, 2, 17, 29, 30] {
        let p = FixedPointParams::new(Channelwise::PerTensor((1 << 30) + 12345), Channelwise::PerTensor(shift));
        check_accumulators("wrapping left shift", &accs, Requantization::FixedPoint(p.clone()), OutputType::I8);
        check_accumulators("wrapping left shift", &accs, Requantization::FixedPointHalfUp(p.clone()), OutputType::U8);
        check_accumulators("wrapping left shift", &accs, Requantization::FixedPointSingleRounding(p), OutputType::U8);
    }
}

#[test]
fn float_corners() {
    // Ties of the final rounding (scale 0.5 and odd accumulators), accumulators beyond
    // 2^24 where the f32 conversion rounds, huge and tiny scales.
    let mut accs: Vec<i32> = (-9..=9).collect();
    accs.extend([(1 << 24) + 1, (1 << 24) + 3, -(1 << 24) - 1, i32::MAX, i32::MIN, 33_554_435, -33_554_435]);
    accs.extend([253, 255, 257, -255, -257, 511, -511]);
    // 201·2^-25 turns 2^24 (the f32 of 2^24 + 1) into the exact tie 100.5, which a
    // wider product of the unrounded accumulator would push to 101.
    let tie_after_conversion = 201.0 * 2f32.powi(-25);
    let tie_negative = 99.0 * 2f32.powi(-25);
    for scale in
        [0.5f32, 1.5, 1.0, 0.25, 1e-9, 3.0e38, f32::MIN_POSITIVE, 1.0 / 3.0, tie_after_conversion, tie_negative]
    {
        for out in [OutputType::U8, OutputType::I8] {
            check_accumulators(
                &format!("Float scale={scale}"),
                &accs,
                Requantization::Float { scale: Channelwise::PerTensor(scale) },
                out,
            );
        }
    }
    let n = accs.len();
    let scales: Vec<f32> = (0..n).map(|j| [0.5f32, 1.5, 2.5e-7, 1.0 / 1024.0][j % 4]).collect();
    check_accumulators(
        "Float per channel",
        &accs,
        Requantization::Float { scale: Channelwise::PerChannel(scales) },
        OutputType::U8,
    );
}

#[test]
fn zero_sized_dimensions() {
    let mut rng = Rng::new(7);
    // M = 0 and N = 0 do nothing; K = 0 gives the bias alone, then requantized.
    for (m, n, k) in [(0, 5, 3), (4, 0, 3), (0, 0, 0), (3, 5, 0), (1, 33, 0)] {
        let case = GemmCase::random(&mut rng, m, n, k);
        let case = vary_output(&mut rng, case);
        case.check("zero-sized");
    }
}

fn conv_params() -> Vec<(&'static str, Conv2dParams)> {
    vec![
        ("1x1 pointwise", Conv2dParams::new([1, 5, 7, 16], 24, [1, 1])),
        ("1x1 stride 2", Conv2dParams::new([1, 9, 8, 8], 12, [1, 1]).with_stride(2, 2)),
        ("1x1 padded", Conv2dParams::new([1, 4, 4, 5], 6, [1, 1]).with_padding(1, 0, 2, 1)),
        ("3x3 pad 1", Conv2dParams::new([1, 8, 8, 8], 16, [3, 3]).with_padding(1, 1, 1, 1)),
        ("3x3 stride 2", Conv2dParams::new([2, 9, 11, 3], 10, [3, 3]).with_stride(2, 2)),
        ("3x3 stride (1,2)", Conv2dParams::new([1, 7, 9, 4], 5, [3, 3]).with_stride(1, 2).with_padding(1, 1, 1, 1)),
        ("dilation 2", Conv2dParams::new([1, 10, 10, 4], 7, [3, 3]).with_dilation(2, 2).with_padding(2, 2, 2, 2)),
        ("dilation (3,1)", Conv2dParams::new([1, 12, 6, 3], 5, [2, 3]).with_dilation(3, 1)),
        ("asymmetric padding", Conv2dParams::new([1, 6, 5, 3], 4, [3, 2]).with_padding(0, 2, 3, 1)),
        ("groups 2", Conv2dParams::new([1, 6, 6, 8], 12, [3, 3]).with_padding(1, 1, 1, 1).with_groups(2)),
        ("groups 3, stride 2", Conv2dParams::new([2, 7, 7, 9], 6, [3, 3]).with_stride(2, 2).with_groups(3)),
        ("depthwise 3x3", Conv2dParams::new([1, 9, 9, 16], 16, [3, 3]).with_padding(1, 1, 1, 1).with_groups(16)),
        (
            "depthwise x2 5x5 s2",
            Conv2dParams::new([1, 11, 10, 6], 12, [5, 5]).with_stride(2, 2).with_padding(2, 2, 2, 2).with_groups(6),
        ),
        ("kernel larger than the input", Conv2dParams::new([1, 3, 2, 4], 5, [5, 4]).with_padding(2, 1, 2, 1)),
        (
            "kernel 7x7 stride 2 pad 3",
            Conv2dParams::new([1, 15, 15, 3], 8, [7, 7]).with_stride(2, 2).with_padding(3, 3, 3, 3),
        ),
        ("batch 3", Conv2dParams::new([3, 5, 4, 6], 33, [3, 3]).with_padding(1, 1, 1, 1)),
        ("1x1 with many channels", Conv2dParams::new([1, 3, 3, 70], 65, [1, 1])),
        ("empty batch", Conv2dParams::new([0, 4, 4, 3], 5, [3, 3])),
        // Found by the conv2d fuzz target: the grouped 1×1 path offset an empty output.
        ("empty batch, grouped 1x1", Conv2dParams::new([0, 4, 4, 4], 6, [1, 1]).with_groups(2)),
    ]
}

#[test]
fn conv_paths() {
    let mut rng = Rng::new(8);
    for (label, params) in conv_params() {
        let oc = params.out_channels;
        let base = ConvCase::random(&mut rng, params);
        base.check(label);
        // With bias and each scheme, u8 and i8 outputs, and a strided output.
        for (i, scheme) in schemes(&mut rng, oc, true, 9 * params.in_channels).into_iter().enumerate() {
            let mut case = base.clone();
            case.stage.bias = Some((0..oc).map(|_| (rng.next_u64() as i32) >> 14).collect());
            case.out = if i % 2 == 0 { OutputType::U8 } else { OutputType::I8 };
            case.stage.requantize = Some(requantize_for(&mut rng, scheme, case.out));
            case.out_stride = oc + i;
            case.check(label);
        }
    }
}

#[test]
fn conv_extreme_data() {
    let mut rng = Rng::new(9);
    let params = Conv2dParams::new([1, 6, 6, 32], 16, [3, 3]).with_padding(1, 1, 1, 1);
    for fill in WEIGHT_FILLS {
        for input_zp in [0u8, 255] {
            let mut case = ConvCase::random(&mut rng, params);
            case.input.fill(255);
            case.input_zp = input_zp;
            // OHWI with the pattern along the innermost (channel) axis.
            let k = 9 * 32;
            case.weights = lay_out(&weights_kxn(&mut rng, k, 16, fill), k, 16, WeightLayout::NxK);
            case.check(&format!("conv A = 255 against {fill:?}"));
        }
    }
}
